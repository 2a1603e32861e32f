"""``DatasetSpec``: one validated entry of ``manifests/datasets/*.yaml`` (or ``$BOBX_MANIFESTS``).

A manifest entry looks like::

    cifar100:
      format: cifar                 # the reader (see FORMATS)
      splits: [train, test]
      num_classes: 100
      root_env: BOBX_DATA_CIFAR100  # where the data lives; --data-root overrides
      options: {variant: cifar100}  # reader options, checked against the reader's keys
      description: ...

Optional fields: ``multilabel`` (false), ``task`` (classification | retrieval | detection),
``class_subset`` (a list of IN-1k indices or ``imagenet_a`` / ``imagenet_r``),
``extra_splits`` (splits extracted only when asked for by name, e.g. digits' ``all``, a
union of the others that no evaluator needs), ``aliases`` (short names every command
accepts, e.g. ``[roxford]`` for ``roxford5k``; the store and the records always use the
canonical name).
Every reader also accepts the option ``root``: a default data directory, relative to
the YAML file, used when neither ``--data-root`` nor ``root_env`` gives one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from featcache.catalog import (
    FrozenMap,
    alias_problems,
    check_known_fields,
    load_entries,
    load_valid,
    manifest_problem,
    thaw,
)
from featcache.errors import BobxError, UnknownNameError, suggest
from featcache.names import validate_name

TASKS = ("classification", "retrieval", "detection")
_ENV_PATTERN = re.compile(r"[A-Z_][A-Z0-9_]*")
_FOLDER_OPTIONS = (
    "subdir",
    "split_dirs",
    "classes",
    "labelled",
    "extensions",
    "split_fractions",
    "split_seed",
)

#: reader name -> (module in featcache.datasets, function, option keys it accepts).
FORMATS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "folder": ("folders", "read_folder", _FOLDER_OPTIONS),
    "eurosat": ("folders", "read_eurosat", _FOLDER_OPTIONS),
    "csv": (
        "tables",
        "read_csv",
        (
            "file",
            "files",
            "path_column",
            "label_column",
            "split_column",
            "label_columns",
            "labels_column",
            "label_separator",
            "classes",
            "image_dir",
            "subdir",
        ),
    ),
    "chexpert": ("tables", "read_chexpert", ("uncertain", "frontal_only", "files", "subdir")),
    "cifar": ("cifar", "read_cifar", ("variant", "label", "subdir")),
    "flowers102": ("tables", "read_flowers102", ("subdir",)),
    "fgvc_aircraft": ("tables", "read_fgvc_aircraft", ("annotation_level", "subdir")),
    "visda": ("tables", "read_visda", ("split_dirs", "subdir")),
    "cub200": ("tables", "read_cub200", ("subdir",)),
    "imagenet": ("folders", "read_imagenet", ("class_index", "val_labels", "split_dirs", "subdir")),
    "imagenet_a": ("folders", "read_imagenet_wnids", ("subdir",)),
    "imagenet_r": ("folders", "read_imagenet_wnids", ("subdir",)),
    "imagenet_sketch": ("folders", "read_imagenet_wnids", ("subdir",)),
    "imagenet_v2": ("folders", "read_imagenet_v2", ("subdir",)),
    "revisited": ("revisited", "read_revisited", ("gnd_file", "image_dir", "ext", "subdir")),
    "webdataset": ("webdataset", "read_webdataset", ("shards", "classes")),
    "digits": ("digits", "read_digits", ("size", "resample")),
    "coco": (
        "detection",
        "read_coco",
        (
            "annotations",
            "images",
            "file_name_from",
            "masks",
            "style",
            "on_bad_annotation",
            "subdir",
        ),
    ),
    "voc": (
        "detection",
        "read_voc",
        (
            "annotation_dir",
            "image_dir",
            "list_file",
            "classes",
            "ignore_classes",
            "on_bad_annotation",
            "subdir",
        ),
    ),
    "cityscapes": (
        "detection",
        "read_cityscapes",
        ("classes", "resize", "on_bad_annotation", "subdir"),
    ),
}
#: Formats that need no data root.
BUILTIN_FORMATS = ("digits",)
#: Formats whose splits carry boxes (``task: detection``, read by ``bobx detect``).
DETECTION_FORMATS = ("coco", "voc", "cityscapes")

#: Enumerated option values, by (format, key); "*" applies to every format.
_OPTION_CHOICES: dict[tuple[str, str], tuple[Any, ...]] = {
    ("cifar", "variant"): ("cifar10", "cifar100"),
    ("cifar", "label"): ("fine", "coarse"),
    ("chexpert", "uncertain"): ("ones", "zeros"),
    ("chexpert", "frontal_only"): (True, False),
    ("fgvc_aircraft", "annotation_level"): ("variant", "family", "manufacturer"),
    ("imagenet", "class_index"): ("folders", "canonical"),
    ("digits", "resample"): ("nearest", "bilinear", "bicubic"),
    ("*", "labelled"): (True, False),
    ("*", "on_bad_annotation"): ("error", "skip"),
    ("coco", "file_name_from"): ("file_name", "coco_url"),
    ("coco", "masks"): (True, False),
    ("coco", "style"): ("coco", "lvis"),
}

_FIELDS = (
    "format",
    "splits",
    "extra_splits",
    "num_classes",
    "multilabel",
    "task",
    "root_env",
    "class_subset",
    "options",
    "description",
    "aliases",
)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as the catalog describes it; derive variants with ``dataclasses.replace``."""

    name: str
    format: str
    splits: tuple[str, ...]
    num_classes: int | None
    multilabel: bool = False
    task: str = "classification"
    root_env: str | None = None
    class_subset: tuple[int, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=FrozenMap)
    description: str = ""
    source: str = ""
    extra_splits: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.options, FrozenMap):
            object.__setattr__(self, "options", FrozenMap(self.options))
        object.__setattr__(self, "splits", tuple(self.splits))
        object.__setattr__(self, "extra_splits", tuple(self.extra_splits))
        object.__setattr__(self, "aliases", tuple(self.aliases))
        if self.class_subset is not None:
            object.__setattr__(self, "class_subset", tuple(int(k) for k in self.class_subset))

    @property
    def default_splits(self) -> tuple[str, ...]:
        """What ``bobx extract`` computes without ``--split``: every split the evaluators
        use, i.e. all but the :attr:`extra_splits`."""
        return tuple(s for s in self.splits if s not in self.extra_splits)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (lists for tuples)."""
        return {
            "name": self.name,
            "format": self.format,
            "splits": list(self.splits),
            "extra_splits": list(self.extra_splits),
            "num_classes": self.num_classes,
            "multilabel": self.multilabel,
            "task": self.task,
            "root_env": self.root_env,
            "class_subset": None if self.class_subset is None else list(self.class_subset),
            "options": thaw(self.options),
            "description": self.description,
            "source": self.source,
            "aliases": list(self.aliases),
        }


_problem = partial(manifest_problem, "dataset")


def spec_from_fields(name: str, fields: Mapping[str, Any]) -> DatasetSpec:
    """Validate raw manifest fields into a :class:`DatasetSpec` (ManifestError on a problem)."""
    source = str(fields.get("_source", "<python>"))
    validate_name(name, "dataset")
    check_known_fields(fields, _FIELDS, source=source, kind="dataset", name=name)
    fmt = fields.get("format")
    if fmt not in FORMATS:
        near = suggest(str(fmt), FORMATS)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise _problem(
            source, name, f"unknown format {fmt!r}.{hint} Formats: {', '.join(sorted(FORMATS))}."
        )
    splits = _names(fields, "splits", "split", source, name)
    if not splits:
        raise _problem(source, name, "'splits' must be a non-empty list of split names.")
    if len(set(splits)) != len(splits):
        raise _problem(source, name, "'splits' lists a split twice.")
    extra_splits = fields.get("extra_splits") or []
    if not isinstance(extra_splits, list) or not set(extra_splits) < set(splits):
        raise _problem(
            source, name, "'extra_splits' must list some (not all) of the dataset's splits."
        )
    num_classes = fields.get("num_classes")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise _problem(source, name, "'num_classes' must be a positive integer or null.")
    multilabel = fields.get("multilabel", False)
    if not isinstance(multilabel, bool):
        raise _problem(source, name, "'multilabel' must be true or false.")
    task = fields.get("task", "detection" if fmt in DETECTION_FORMATS else "classification")
    if task not in TASKS:
        raise _problem(source, name, f"'task' must be one of {', '.join(TASKS)}, not {task!r}.")
    if (task == "detection") != (fmt in DETECTION_FORMATS):
        raise _problem(
            source,
            name,
            f"'task: detection' goes with the formats {', '.join(DETECTION_FORMATS)} "
            f"(this entry has format {fmt!r} and task {task!r}).",
        )
    root_env = fields.get("root_env")
    if root_env is not None and (
        not isinstance(root_env, str) or not _ENV_PATTERN.fullmatch(root_env)
    ):
        raise _problem(
            source,
            name,
            f"'root_env' {root_env!r} is not an environment variable "
            "name (upper-case letters, digits, '_').",
        )
    options = fields.get("options") or {}
    if not isinstance(options, dict):
        raise _problem(source, name, "'options' must be a mapping.")
    allowed = (*FORMATS[fmt][2], "root")
    for key in options:
        if key not in allowed:
            near = suggest(str(key), allowed)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise _problem(
                source,
                name,
                f"option {key!r} is not known to the {fmt!r} reader"
                f"{hint}; it accepts {', '.join(allowed)}.",
            )
    for key, value in options.items():
        choices = _OPTION_CHOICES.get((fmt, key)) or _OPTION_CHOICES.get(("*", key))
        if choices is not None and value not in choices:
            raise _problem(
                source,
                name,
                f"option {key!r} must be one of {', '.join(map(str, choices))}, not {value!r}.",
            )
    fractions = options.get("split_fractions")
    if fractions is not None and (
        not isinstance(fractions, dict)
        or set(fractions) != set(splits)
        or not all(isinstance(v, int | float) and 0 < v <= 1 for v in fractions.values())
        or abs(sum(fractions.values()) - 1) > 1e-9
    ):
        raise _problem(
            source,
            name,
            "'split_fractions' must map every split to a fraction in (0, 1], summing to 1.",
        )
    if fmt == "revisited" and not set(splits) <= {"database", "query"}:
        raise _problem(source, name, "the revisited reader has splits 'database' and 'query'.")
    class_subset = _class_subset(fields.get("class_subset"), source, name)
    description = fields.get("description", "")
    if not isinstance(description, str):
        raise _problem(source, name, "'description' must be a string.")
    aliases = _names(fields, "aliases", "dataset alias", source, name)
    return DatasetSpec(
        name=name,
        format=fmt,
        splits=tuple(splits),
        num_classes=num_classes,
        multilabel=multilabel,
        task=task,
        root_env=root_env,
        class_subset=class_subset,
        options=FrozenMap(options),
        description=" ".join(description.split()),
        source=source,
        extra_splits=tuple(extra_splits),
        aliases=tuple(aliases),
    )


def _names(fields: Mapping[str, Any], key: str, kind: str, source: str, name: str) -> list[str]:
    """A manifest field holding a list of valid names (missing: empty)."""
    raw = fields.get(key) or []
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise _problem(source, name, f"{key!r} must be a list of names.")
    try:
        for value in raw:
            validate_name(value, kind)
    except BobxError as exc:
        raise _problem(source, name, str(exc)) from exc
    return raw


def _class_subset(raw: Any, source: str, name: str) -> tuple[int, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        from featcache.datasets import imagenet_info

        if raw not in imagenet_info.SUBSETS:
            raise _problem(
                source,
                name,
                f"'class_subset' {raw!r} is not one of "
                f"{', '.join(imagenet_info.SUBSETS)} or a list of indices.",
            )
        try:
            return imagenet_info.subset_indices(raw)
        except BobxError:
            return None  # derived from the folders present when the split is opened
    if not isinstance(raw, list) or not all(
        isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in raw
    ):
        raise _problem(source, name, "'class_subset' must be a list of class indices.")
    if raw != sorted(set(raw)):
        raise _problem(source, name, "'class_subset' must be ascending without repeats.")
    return tuple(raw)


def load_specs() -> tuple[dict[str, DatasetSpec], list[str]]:
    """Every valid spec by name, and the problems of the invalid ones (aliases included)."""
    specs, problems = load_valid("datasets", spec_from_fields)
    entries_aliases = [(s.name, s.aliases, s.source) for s in specs.values()]
    return specs, problems + alias_problems(entries_aliases, specs, "dataset")


def _aliases(entries: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """alias -> dataset name, read from the raw entries (first owner wins)."""
    out: dict[str, str] = {}
    for name, fields in entries.items():
        raw = fields.get("aliases")
        for alias in raw if isinstance(raw, list) else []:
            if isinstance(alias, str) and alias not in entries:
                out.setdefault(alias, name)
    return out


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec named ``name`` (or one of its aliases: ``roxford`` -> ``roxford5k``);
    UnknownNameError with near misses when there is none."""
    entries = load_entries("datasets")
    aliases = _aliases(entries)
    if name not in entries and name in aliases:
        name = aliases[name]
    if name not in entries:
        raise UnknownNameError(
            "dataset",
            name,
            [*entries, *aliases],
            hint="Run `bobx datasets` to list them; add your own with YAML in $BOBX_MANIFESTS.",
        )
    return spec_from_fields(name, entries[name])


def list_dataset_specs() -> list[DatasetSpec]:
    """All specs, sorted by name (ManifestError on the first invalid entry)."""
    entries = load_entries("datasets")
    return [spec_from_fields(name, entries[name]) for name in sorted(entries)]


def validate_dataset_manifests() -> list[str]:
    """Problems in the dataset manifests (empty when all are valid); reads no data."""
    specs, problems = load_specs()
    if "digits" not in specs and not any("'digits'" in p for p in problems):
        problems.append("The built-in 'digits' dataset (the offline default) is missing.")
    return problems


def spec_root_default(spec: DatasetSpec) -> Path | None:
    """``options.root`` resolved against the directory of the spec's YAML file."""
    raw = spec.options.get("root")
    if raw is None:
        return None
    path = Path(str(raw)).expanduser()
    if not path.is_absolute() and spec.source and Path(spec.source).exists():
        path = Path(spec.source).parent / path
    return path

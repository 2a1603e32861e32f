"""The backbone catalog: ``manifests/backbones/*.yaml`` (and ``$BOBX_MANIFESTS``) as frozen specs.

A manifest entry names where a backbone's code and weights come from and the metadata
the paper's analyses need::

    dino_vitb_in1k:
      source: timm                    # timm | open_clip | checkpoint | diffusers
      model: vit_base_patch16_224     # timm architecture / open_clip model name
      tag: dino                       # timm pretrained tag / open_clip pretrained tag
      arch: ViT-B/16
      family: vit                     # vit | cnn | hierarchical_transformer
      method: dino
      style: self-supervised          # see STYLES
      pretrain_data: ImageNet-1k
      pretrain_images: 1281167
      params_m: 85.8
      resolution: 224
      feature: pooled                 # pooled | cls | patch_mean | block:<i>
      feature_dim: 768
      aliases: [dino_vitb]

``source: checkpoint`` entries give ``url`` + ``sha256`` of a published file and a
``key_map`` (see :data:`KEY_MAPS`) that converts its keys into the timm ``model``.
``random_init_of: <name>`` derives the random-initialised baseline of an architecture
with :func:`dataclasses.replace`. Nothing here imports torch: listing and validating
the catalog is cheap; :mod:`featcache.models` builds the networks.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from featcache.catalog import (
    FrozenMap,
    alias_problems,
    check_known_fields,
    load_entries,
    manifest_problem,
    thaw,
)
from featcache.errors import BobxError, ManifestError, UnknownNameError, suggest
from featcache.names import validate_name

SOURCES = ("timm", "open_clip", "checkpoint", "diffusers")
STYLES = ("supervised", "self-supervised", "vision-language", "generative", "depth", "random")
FAMILIES = ("vit", "cnn", "hierarchical_transformer")
#: Key layouts :mod:`featcache.models` converts into timm's (``auto`` = unwrap + strip prefixes).
KEY_MAPS = ("auto", "mocov3", "dino", "vicreg", "vicregl_convnext", "midas_swinv2")
#: Preprocessing fields a manifest may override (timm data-config names).
PREPROCESS_KEYS = ("mean", "std", "interpolation", "crop_pct", "crop_mode")
#: Feature points: the pooled output, the class token, the mean of the patch tokens, or the
#: output of block/stage ``i`` (timm / open_clip ``forward_intermediates`` indices: ViT
#: blocks; CNN stages, where 0 is the stem; negative counts from the end), spatially averaged.
FEATURE_PATTERN = re.compile(r"pooled|cls|patch_mean|block:-?\d+")

_FIELDS = (
    "source", "model", "tag", "hf_hub_id", "url", "sha256", "key_map", "model_kwargs",
    "preprocess", "arch", "family", "method", "style", "pretrain_data", "pretrain_images",
    "params_m", "resolution", "feature", "feature_dim", "available", "unavailable_reason",
    "aliases", "paper", "notes", "seed", "random_init_of",
)  # fmt: skip
#: Fields a ``random_init_of`` entry may set itself (everything else comes from its base).
_DERIVED_FIELDS = (
    "random_init_of", "aliases", "paper", "notes", "seed", "available", "unavailable_reason",
)  # fmt: skip
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone of the catalog; derive variants with :func:`dataclasses.replace`."""

    name: str
    source: str
    model: str
    tag: str | None = None
    hf_hub_id: str | None = None
    url: str | None = None
    sha256: str | None = None
    key_map: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=FrozenMap)
    preprocess: Mapping[str, Any] = field(default_factory=FrozenMap)
    arch: str = ""
    family: str = "cnn"
    method: str = "supervised"
    style: str = "supervised"
    pretrain_data: str | None = None
    pretrain_images: int | None = None
    params_m: float | None = None
    resolution: int | None = None
    feature: str = "pooled"
    feature_dim: int | None = None
    available: bool = True
    unavailable_reason: str | None = None
    aliases: tuple[str, ...] = ()
    paper: tuple[str, ...] = ()
    notes: str = ""
    seed: int = 0
    random_init_of: str | None = None
    source_file: str = ""

    def __post_init__(self) -> None:
        for name in ("model_kwargs", "preprocess"):
            value = getattr(self, name)
            if not isinstance(value, FrozenMap):
                object.__setattr__(self, name, FrozenMap(value or {}))
        object.__setattr__(self, "aliases", tuple(self.aliases))
        object.__setattr__(self, "paper", tuple(self.paper))

    @property
    def is_random(self) -> bool:
        """A random-initialised baseline: its natural weights are a seeded random init."""
        return self.style == "random"

    @property
    def library_name(self) -> str:
        """``arch.tag`` for timm, ``model/tag`` for open_clip, ``model`` otherwise."""
        if self.source == "timm" and self.tag:
            return f"{self.model}.{self.tag}"
        if self.source == "open_clip" and self.tag:
            return f"{self.model}/{self.tag}"
        return self.model

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                value = thaw(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def identity(self) -> dict[str, Any]:
        """The fields that change the bytes of extracted features (part of the cache key).

        Names, aliases and descriptive metadata are left out: renaming a backbone or
        fixing its parameter count does not invalidate its features."""
        return {
            "source": self.source,
            "model": self.model,
            "tag": self.tag,
            "hf_hub_id": self.hf_hub_id,
            "url": self.url,
            "sha256": self.sha256,
            "key_map": self.key_map,
            "model_kwargs": thaw(self.model_kwargs),
            "preprocess": thaw(self.preprocess),
            "resolution": self.resolution,
            "random": self.is_random,
        }


_problem = partial(manifest_problem, "backbone")


def _opt_str(fields: Mapping[str, Any], key: str, source: str, name: str) -> str | None:
    value = fields.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise _problem(source, name, f"{key!r} must be a non-empty string or null.")
    return value


def _str_list(fields: Mapping[str, Any], key: str, source: str, name: str) -> tuple[str, ...]:
    value = fields.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _problem(source, name, f"{key!r} must be a list of strings.")
    return tuple(value)


def _availability(fields: Mapping[str, Any], source: str, name: str) -> tuple[bool, str | None]:
    """``available`` (default true) and ``unavailable_reason``, required when not available."""
    available = fields.get("available", True)
    if not isinstance(available, bool):
        raise _problem(source, name, "'available' must be true or false.")
    reason = _opt_str(fields, "unavailable_reason", source, name)
    if not available and not reason:
        raise _problem(source, name, "an unavailable backbone needs 'unavailable_reason'.")
    return available, reason


def _check_choice(value: Any, choices: Sequence[str], key: str, source: str, name: str) -> str:
    if value not in choices:
        near = suggest(str(value), choices)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise _problem(
            source, name, f"{key!r} must be one of {', '.join(choices)}, not {value!r}.{hint}"
        )
    return str(value)


def check_feature(feature: str, *, where: str = "feature") -> str:
    """Return ``feature`` if it is a valid feature point, else raise UnknownNameError."""
    if not isinstance(feature, str) or not FEATURE_PATTERN.fullmatch(feature):
        raise UnknownNameError(
            where,
            str(feature),
            ("pooled", "cls", "patch_mean", "block:<i>"),
            hint="Use pooled, cls, patch_mean or block:<i> (output of block/stage i, "
            "spatially averaged; negative i counts from the end).",
        )
    return feature


def _seed(fields: Mapping[str, Any], source: str, name: str) -> int:
    seed = fields.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _problem(source, name, "'seed' must be a non-negative integer.")
    return seed


def _aliases(fields: Mapping[str, Any], source: str, name: str) -> tuple[str, ...]:
    aliases = _str_list(fields, "aliases", source, name)
    for alias in aliases:
        try:
            validate_name(alias, "backbone alias")
        except BobxError as exc:
            raise _problem(source, name, str(exc)) from exc
    return aliases


def spec_from_fields(name: str, fields: Mapping[str, Any]) -> BackboneSpec:
    """Validate raw manifest fields of a non-derived entry into a :class:`BackboneSpec`."""
    source_file = str(fields.get("_source", "<python>"))
    validate_name(name, "backbone")
    check_known_fields(fields, _FIELDS, source=source_file, kind="backbone", name=name)
    src = _check_choice(fields.get("source"), SOURCES, "source", source_file, name)
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise _problem(source_file, name, "'model' (the library's model name) is required.")
    url, sha256 = _opt_str(fields, "url", source_file, name), fields.get("sha256")
    key_map = _opt_str(fields, "key_map", source_file, name)
    if src == "checkpoint":
        if not url or not url.startswith("https://"):
            raise _problem(source_file, name, "a checkpoint entry needs an https:// 'url'.")
        key_map = key_map or "auto"
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.fullmatch(sha256)):
        raise _problem(source_file, name, "'sha256' must be 64 lower-case hex digits or null.")
    if key_map is not None:
        _check_choice(key_map, KEY_MAPS, "key_map", source_file, name)
    model_kwargs = fields.get("model_kwargs") or {}
    if not isinstance(model_kwargs, dict):
        raise _problem(source_file, name, "'model_kwargs' must be a mapping.")
    preprocess = fields.get("preprocess") or {}
    if not isinstance(preprocess, dict):
        raise _problem(source_file, name, "'preprocess' must be a mapping.")
    for key in preprocess:
        _check_choice(key, PREPROCESS_KEYS, "preprocess key", source_file, name)
    family = _check_choice(fields.get("family", "cnn"), FAMILIES, "family", source_file, name)
    style = _check_choice(fields.get("style"), STYLES, "style", source_file, name)
    method = fields.get("method", "random" if style == "random" else "supervised")
    if not isinstance(method, str) or not method:
        raise _problem(source_file, name, "'method' must be a non-empty string.")
    pretrain_images = fields.get("pretrain_images")
    if pretrain_images is not None and (
        isinstance(pretrain_images, bool)
        or not isinstance(pretrain_images, int)
        or pretrain_images < 0
    ):
        raise _problem(source_file, name, "'pretrain_images' must be a count of images or null.")
    params_m = fields.get("params_m")
    if params_m is not None and (
        isinstance(params_m, bool) or not isinstance(params_m, int | float) or params_m <= 0
    ):
        raise _problem(source_file, name, "'params_m' must be a positive number or null.")
    for key in ("resolution", "feature_dim"):
        value = fields.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise _problem(source_file, name, f"{key!r} must be a positive integer or null.")
    feature = fields.get("feature", "pooled")
    try:
        check_feature(feature)
    except BobxError as exc:
        raise _problem(source_file, name, str(exc)) from exc
    available, reason = _availability(fields, source_file, name)
    if src == "diffusers" and available:
        raise _problem(
            source_file,
            name,
            "source 'diffusers' is not implemented; mark it available: false with the reason.",
        )
    seed = _seed(fields, source_file, name)
    aliases = _aliases(fields, source_file, name)
    notes = fields.get("notes", "")
    if not isinstance(notes, str):
        raise _problem(source_file, name, "'notes' must be a string.")
    return BackboneSpec(
        name=name,
        source=src,
        model=model,
        tag=_opt_str(fields, "tag", source_file, name),
        hf_hub_id=_opt_str(fields, "hf_hub_id", source_file, name),
        url=url,
        sha256=sha256,
        key_map=key_map,
        model_kwargs=FrozenMap(model_kwargs),
        preprocess=FrozenMap(preprocess),
        arch=str(fields.get("arch") or model),
        family=family,
        method=method,
        style=style,
        pretrain_data=_opt_str(fields, "pretrain_data", source_file, name),
        pretrain_images=pretrain_images,
        params_m=None if params_m is None else float(params_m),
        resolution=fields.get("resolution"),
        feature=feature,
        feature_dim=fields.get("feature_dim"),
        available=available,
        unavailable_reason=reason,
        aliases=aliases,
        paper=_str_list(fields, "paper", source_file, name),
        notes=" ".join(notes.split()),
        seed=seed,
        source_file=source_file,
    )


def random_variant(base: BackboneSpec, name: str, fields: Mapping[str, Any]) -> BackboneSpec:
    """The random-initialised baseline of ``base``'s architecture (same code and preprocessing)."""
    source_file = str(fields.get("_source", "<python>"))
    validate_name(name, "backbone")
    extra = sorted(set(fields) - set(_DERIVED_FIELDS) - {"_source"})
    if extra:
        raise _problem(
            source_file,
            name,
            f"a random_init_of entry may only set {', '.join(_DERIVED_FIELDS)}, not {extra[0]!r}.",
        )
    aliases = _aliases(fields, source_file, name)
    seed = _seed(fields, source_file, name)
    available, reason = _availability(fields, source_file, name)
    notes = fields.get("notes") or (
        f"Random initialisation (seed {seed}) of the {base.arch} architecture of {base.name}."
    )
    if not isinstance(notes, str):
        raise _problem(source_file, name, "'notes' must be a string.")
    return dataclasses.replace(
        base,
        name=name,
        # the architecture's library code, never the base's published weights
        source="timm" if base.source == "checkpoint" else base.source,
        url=None,
        sha256=None,
        key_map=None,
        hf_hub_id=None,
        method="random",
        style="random",
        pretrain_data=None,
        pretrain_images=0,
        aliases=aliases,
        paper=_str_list(fields, "paper", source_file, name),
        notes=" ".join(notes.split()),
        seed=seed,
        available=base.available and available,
        unavailable_reason=reason or base.unavailable_reason,
        random_init_of=base.name,
        source_file=source_file,
    )


def load_backbone_specs() -> tuple[dict[str, BackboneSpec], list[str]]:
    """Every valid spec by name, and the problems of the invalid entries."""
    specs: dict[str, BackboneSpec] = {}
    problems: list[str] = []
    try:
        entries = load_entries("backbones")
    except BobxError as exc:
        return specs, [str(exc)]
    derived = {n: f for n, f in entries.items() if "random_init_of" in f}
    for name, fields in entries.items():
        if name in derived:
            continue
        try:
            specs[name] = spec_from_fields(name, fields)
        except BobxError as exc:
            problems.append(str(exc))
    for name, fields in derived.items():
        base_name = fields["random_init_of"]
        source_file = str(fields.get("_source", "<python>"))
        base = specs.get(str(base_name))
        if base is None or base.random_init_of is not None:
            near = suggest(str(base_name), specs)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problems.append(
                str(
                    _problem(
                        source_file,
                        name,
                        f"random_init_of {base_name!r} is not a (non-derived) backbone{hint}.",
                    )
                )
            )
            continue
        try:
            specs[name] = random_variant(base, name, fields)
        except BobxError as exc:
            problems.append(str(exc))
    problems.extend(_alias_problems(specs))
    return specs, problems


def _alias_problems(specs: Mapping[str, BackboneSpec]) -> list[str]:
    entries = [(s.name, s.aliases, s.source_file) for s in specs.values()]
    return alias_problems(entries, specs, "backbone")


def _catalog() -> tuple[dict[str, BackboneSpec], dict[str, str]]:
    specs, problems = load_backbone_specs()
    if problems:
        raise ManifestError(
            problems[0]
            + (
                f" (and {len(problems) - 1} more problem(s); run `bobx validate`)"
                if len(problems) > 1
                else ""
            )
        )
    aliases = {a: s.name for s in specs.values() for a in s.aliases}
    return specs, aliases


def feature_slug(feature: str) -> str:
    """A feature point as a name suffix: ``cls``, ``patch_mean``, ``block:-2`` -> ``block-2``."""
    return check_feature(feature).replace(":", "")


def with_feature(spec: BackboneSpec, feature: str) -> BackboneSpec:
    """``spec`` reading another feature point, as its own backbone ``<name>@<feature>``
    (its features are stored beside, never over, the default ones)."""
    feature = check_feature(feature, where="feature point (--layer)")
    if feature == spec.feature:
        return spec
    base = spec.name.partition("@")[0]
    return dataclasses.replace(
        spec, name=f"{base}@{feature_slug(feature)}", feature=feature, aliases=()
    )


def get_backbone_spec(name: str | BackboneSpec) -> BackboneSpec:
    """The spec named ``name`` (a canonical name or an alias, optionally ``@<feature>`` such
    as ``dino_vitb@block-4``); UnknownNameError with near misses when there is none. A spec
    passes through unchanged."""
    if isinstance(name, BackboneSpec):
        return name
    base, at, suffix = name.partition("@")
    specs, aliases = _catalog()
    if base in specs or base in aliases:
        spec = specs[base] if base in specs else specs[aliases[base]]
        if not at:
            return spec
        match = re.fullmatch(r"(pooled|cls|patch_mean)|block(-?\d+)", suffix)
        if match is None:
            feature = check_feature(suffix, where=f"feature point of {name!r}")
        else:
            feature = match.group(1) or f"block:{match.group(2)}"
        return with_feature(spec, feature)
    raise UnknownNameError(
        "backbone",
        name,
        [*specs, *aliases],
        hint="Run `bobx backbones` to list them; add your own with YAML in $BOBX_MANIFESTS.",
    )


def list_backbone_specs(*, include_unavailable: bool = True) -> list[BackboneSpec]:
    """All specs sorted by name (ManifestError on the first invalid entry)."""
    specs, _ = _catalog()
    out = [specs[n] for n in sorted(specs)]
    return out if include_unavailable else [s for s in out if s.available]


def registry_problems(spec: BackboneSpec) -> list[str]:
    """Names of ``spec`` that the installed timm / open_clip do not know (imports them)."""
    where = f"{spec.source_file}: backbone {spec.name!r}"
    problems: list[str] = []
    if spec.source in ("timm", "checkpoint"):
        import timm

        if not timm.is_model(spec.model):
            near = suggest(spec.model, timm.list_models())
            hint = f" Did you mean {near[0]!r}?" if near else ""
            problems.append(f"{where}: timm {timm.__version__} has no model {spec.model!r}.{hint}")
        elif spec.tag and spec.source == "timm":
            full = f"{spec.model}.{spec.tag}"
            known = timm.list_pretrained(f"{spec.model}.*")
            if full not in known:
                near = suggest(full, known)
                hint = f" Did you mean {near[0]!r}?" if near else ""
                problems.append(
                    f"{where}: timm {timm.__version__} has no pretrained weights {full!r}.{hint}"
                )
    elif spec.source == "open_clip":
        import open_clip

        models = open_clip.list_models()
        if spec.model not in models:
            near = suggest(spec.model, models)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            problems.append(f"{where}: open_clip has no model {spec.model!r}.{hint}")
        elif spec.tag and spec.tag not in open_clip.list_pretrained_tags_by_model(spec.model):
            tags = open_clip.list_pretrained_tags_by_model(spec.model)
            problems.append(
                f"{where}: open_clip has no pretrained tag {spec.tag!r} for "
                f"{spec.model!r} (known: {', '.join(tags) or 'none'})."
            )
    return problems


def validate_backbone_manifests(*, check_registries: bool = True) -> list[str]:
    """Problems in the backbone manifests (empty when all are valid); runs no model.

    Checks every field, the aliases, ``random_init_of`` links, and (unless
    ``check_registries`` is false) that each timm / open_clip name exists in the
    installed libraries' registries."""
    specs, problems = load_backbone_specs()
    if check_registries:
        for spec in specs.values():
            if spec.source != "diffusers":
                problems.extend(registry_problems(spec))
    return problems


def validate_manifests(*, check_registries: bool = True) -> dict[str, dict[str, Any]]:
    """Every manifest checked, by kind (``bobx validate``): ``{"backbones": {"count": n,
    "problems": [...]}, "datasets": {...}, "recipes": {...}, "suites": {...}}``. Reads no
    data, runs no model."""
    from featcache.datasets import validate_dataset_manifests
    from featcache.datasets.spec import load_specs
    from featcache.jobs.recipes import load_recipes, validate_recipe_manifests
    from featcache.suites import validate_suite_manifests

    return {
        "backbones": {
            "count": len(load_backbone_specs()[0]),
            "problems": validate_backbone_manifests(check_registries=check_registries),
        },
        "datasets": {"count": len(load_specs()[0]), "problems": validate_dataset_manifests()},
        "recipes": {"count": len(load_recipes()[0]), "problems": validate_recipe_manifests()},
        "suites": validate_suite_manifests(),
    }

"""Suites: a benchmark grid as YAML (``manifests/suites/*.yaml``), expanded into work items.

A suite names backbones x datasets x evaluations (and heavy jobs); ``bobx plan`` lists
its work items, ``bobx run`` executes the missing ones on an executor
(:mod:`featcache.executors`). A YAML file holds ``{name: fields}`` like the other
catalogs (packaged files, then ``$BOBX_MANIFESTS/suites/``)::

    digits:
      description: The demo grid on the built-in digits.
      backbones: [rand_resnet18, rand_efficientnet_b0]
      extract: {batch_size: 64}             # keyword arguments of featcache.extract.extract
      grids:
        - datasets: [digits]
          evaluate:
            knn: {k: [10, 20]}
            probe: {fractions: [full, 0.1]}  # one probe run each (and per seed); or shots
            calibrate: {}                    # every probe run of the grid
            retrieve: {}
          jobs:
            finetune: {recipe: bob_finetune}

A grid may override ``backbones`` and ``extract``, name ``splits`` per dataset (default:
the splits its evaluations read) and split every feature set into ``shards`` chunk-range
work items. Specs are frozen dataclasses, validated when loaded (``bobx validate`` checks
every suite): unknown fields, kinds, backbones, datasets and splits are refused with the
file, the entry and a near miss.

:func:`expand_suite` turns a suite into :class:`WorkItem` s, each with the ids of the
items it needs first (extraction before probe, probe before calibration). Items are
plain data; the functions that execute them live in :mod:`featcache.executors.items`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from featcache import provenance
from featcache.catalog import FrozenMap, check_known_fields, load_entries, manifest_problem, thaw
from featcache.errors import BobxError, ManifestError, UnknownNameError
from featcache.names import validate_name

#: Evaluations on cached features, in the order their items are listed.
EVALUATIONS = ("knn", "probe", "calibrate", "retrieve")
#: Heavy jobs (issues 11 and 12): run through their commands' library twins.
JOB_KINDS = ("finetune", "detect", "robustness", "speed")
#: Jobs that run once per backbone, and the dataset name their records carry
#: (``featcache.runners.speed.DATASET``: speed is timed on synthetic inputs).
BACKBONE_JOBS = {"speed": "synthetic"}
#: Options of ``extract:`` (keyword arguments of :func:`featcache.extract.extract`).
EXTRACT_OPTIONS = (
    "weights",
    "seed",
    "precision",
    "dtype",
    "batch_size",
    "limit",
    "layer",
    "query_crop",
    "chunk_rows",
    "on_bad_image",
    "data_root",
)
_SUITE_FIELDS = ("description", "backbones", "extract", "grids", "paper")
_GRID_FIELDS = ("backbones", "datasets", "splits", "extract", "shards", "evaluate", "jobs")
#: Each evaluation's options and their defaults (``None``: decided per dataset).
_EVAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "knn": {
        "k": [10, 20, 100, 200],
        "temperature": 0.07,
        "train_split": "train",
        "test_split": None,
    },
    "probe": {
        "fractions": ["full"],
        "shots": [],
        "seeds": [0],
        "protocol": "dinov2",
        "backend": "auto",
        "dtype": "float64",
        "train_split": "train",
        "test_split": None,
        "val_split": None,
        "eval_on": [],
    },
    "calibrate": {"runs": None, "n_bins": 15, "temperature_scale": False},
    "retrieve": {
        "protocol": ["easy", "medium", "hard"],
        "k": [1, 5, 10],
        "top_k": None,
        "query_crop": "bbx",
        "query_split": None,
        "gallery_split": None,
    },
}
#: Test splits tried in order when an evaluation does not name one (as the runners do).
TEST_SPLITS = ("test", "val", "real")

_problem = partial(manifest_problem, "suite")


@dataclass(frozen=True)
class Grid:
    """One block of a suite: every backbone x every dataset, the same evaluations."""

    backbones: tuple[str, ...]
    datasets: tuple[str, ...]
    extract: Mapping[str, Any] = field(default_factory=FrozenMap)
    splits: Mapping[str, Any] = field(default_factory=FrozenMap)  # dataset -> splits
    shards: int = 1
    evaluate: Mapping[str, Any] = field(default_factory=FrozenMap)  # kind -> options
    jobs: Mapping[str, Any] = field(default_factory=FrozenMap)  # kind -> options

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbones": list(self.backbones),
            "datasets": list(self.datasets),
            "extract": thaw(self.extract),
            "splits": thaw(self.splits),
            "shards": self.shards,
            "evaluate": thaw(self.evaluate),
            "jobs": thaw(self.jobs),
        }


@dataclass(frozen=True)
class SuiteSpec:
    """A validated suite; derive variants with ``dataclasses.replace``."""

    name: str
    grids: tuple[Grid, ...]
    description: str = ""
    paper: tuple[str, ...] = ()
    source: str = ""

    @property
    def backbones(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(b for g in self.grids for b in g.backbones))

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for g in self.grids for d in g.datasets))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "paper": list(self.paper),
            "grids": [g.to_dict() for g in self.grids],
            "source": self.source,
        }


# --------------------------------------------------------------------------- loading
def _names(value: Any, what: str, where: tuple[str, str]) -> list[str]:
    source, name = where
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _problem(source, name, f"'{what}' must be a non-empty list of names.")
    if len(set(value)) != len(value):
        raise _problem(source, name, f"'{what}' lists a name twice.")
    return value


def _mapping(value: Any, what: str, where: tuple[str, str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _problem(*where, f"'{what}' must be a mapping.")
    return dict(value)


def _check_extract(options: Mapping[str, Any], where: tuple[str, str]) -> None:
    check_known_fields(options, EXTRACT_OPTIONS, source=where[0], kind="suite", name=where[1])
    from featcache.extract import BAD_IMAGE_POLICIES, PRECISIONS

    choices = {
        "precision": PRECISIONS,
        "dtype": ("float16", "float32"),
        "on_bad_image": BAD_IMAGE_POLICIES,
        "query_crop": ("bbx", "none"),
    }
    for key, allowed in choices.items():
        if key in options and options[key] not in allowed:
            raise _problem(*where, f"extract {key} must be one of {', '.join(allowed)}.")
    for key in ("limit", "chunk_rows", "seed"):
        value = options.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < (0 if key == "seed" else 1)
        ):
            raise _problem(*where, f"extract {key} must be a positive integer.")
    batch = options.get("batch_size")
    if batch is not None and batch != "auto" and (not isinstance(batch, int) or batch < 1):
        raise _problem(*where, "extract batch_size must be a positive integer or auto.")


def _int_list(value: Any, what: str, where: tuple[str, str], *, minimum: int = 1) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value
    ):
        raise _problem(*where, f"{what} must be a list of integers >= {minimum}.")
    return value


def _evaluation(kind: str, raw: Any, where: tuple[str, str], catalogs: Catalogs) -> FrozenMap:
    """One evaluation's options with every default filled in."""
    if kind not in _EVAL_DEFAULTS:
        from featcache.errors import suggest

        near = suggest(kind, EVALUATIONS)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise _problem(
            *where, f"unknown evaluation {kind!r}{hint}; evaluations are {', '.join(EVALUATIONS)}."
        )
    options = _mapping(raw, kind, where)
    defaults = _EVAL_DEFAULTS[kind]
    if kind == "probe" and "shots" in options and "fractions" not in options:
        defaults = {**defaults, "fractions": []}  # shots alone: no full-data probe
    check_known_fields(options, tuple(defaults), source=where[0], kind="suite", name=where[1])
    out = {**defaults, **options}
    for key in ("train_split", "test_split", "val_split", "query_split", "gallery_split"):
        if out.get(key) is not None:
            try:
                validate_name(out[key], "split")
            except BobxError as exc:
                raise _problem(*where, f"{kind} {key}: {exc}") from exc
    if kind == "knn":
        out["k"] = _int_list(out["k"], "knn k", where)
        if not isinstance(out["temperature"], int | float) or out["temperature"] <= 0:
            raise _problem(*where, "knn temperature must be a positive number.")
    elif kind == "probe":
        fractions = out["fractions"]
        fractions = fractions if isinstance(fractions, list) else [fractions]
        for f in fractions:
            if f != "full" and (
                isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1
            ):
                raise _problem(*where, "probe fractions are 'full' or numbers in (0, 1].")
        out["fractions"] = ["full" if f in ("full", 1, 1.0) else float(f) for f in fractions]
        out["shots"] = _int_list(out["shots"], "probe shots", where)
        out["seeds"] = _int_list(out["seeds"], "probe seeds", where, minimum=0)
        if not out["fractions"] and not out["shots"]:
            raise _problem(*where, "probe needs at least one of fractions and shots.")
        if out["protocol"] not in ("dinov2", "clip_benchmark"):
            raise _problem(*where, "probe protocol must be dinov2 or clip_benchmark.")
        if out["backend"] not in ("auto", "sklearn", "torch", "cuml"):
            raise _problem(*where, "probe backend must be auto, sklearn, torch or cuml.")
        if out["dtype"] not in ("float64", "float32"):
            raise _problem(*where, "probe dtype must be float64 or float32.")
        out["eval_on"] = list(out["eval_on"] or [])
        for other in out["eval_on"]:
            catalogs.checked("dataset", other, where)
    elif kind == "calibrate":
        if out["runs"] is not None:
            runs = out["runs"] if isinstance(out["runs"], list) else [out["runs"]]
            for run in runs:
                validate_name(run, "probe run")
            out["runs"] = runs
        if not isinstance(out["n_bins"], int) or out["n_bins"] < 1:
            raise _problem(*where, "calibrate n_bins must be a positive integer.")
        if not isinstance(out["temperature_scale"], bool):
            raise _problem(*where, "calibrate temperature_scale must be true or false.")
    elif kind == "retrieve":
        protocols = out["protocol"] if isinstance(out["protocol"], list) else [out["protocol"]]
        if not protocols or not set(protocols) <= {"easy", "medium", "hard"}:
            raise _problem(*where, "retrieve protocol is a list of easy, medium, hard.")
        out["protocol"] = protocols
        out["k"] = _int_list(out["k"], "retrieve k", where)
        if out["top_k"] is not None:
            out["top_k"] = _int_list(out["top_k"], "retrieve top_k", where)[0]
        if out["query_crop"] not in ("bbx", "none"):
            raise _problem(*where, "retrieve query_crop must be bbx or none.")
    return FrozenMap(out)


class Catalogs:
    """The backbone and dataset catalogs, read once (each read parses every YAML file);
    pass one to :func:`suite_from_fields`, :func:`get_suite` and :func:`expand_suite`
    when several calls need them."""

    def __init__(self) -> None:
        from featcache.backbones import load_backbone_specs
        from featcache.datasets.spec import load_specs

        self.backbones, _ = load_backbone_specs()
        self.aliases = {a: s.name for s in self.backbones.values() for a in s.aliases}
        self.datasets, _ = load_specs()

    def backbone(self, name: str) -> Any:
        base = self.aliases.get(name, name)
        if base in self.backbones:
            return self.backbones[base]
        from featcache.backbones import get_backbone_spec

        return get_backbone_spec(name)  # ``name@feature``, or the error with near misses

    def dataset(self, name: str) -> Any:
        if name in self.datasets:
            return self.datasets[name]
        from featcache.datasets import get_dataset_spec

        return get_dataset_spec(name)  # the error: unknown (near misses) or invalid

    def checked(self, kind: str, name: str, where: tuple[str, str]) -> Any:
        """The spec, or a ManifestError naming the suite's file and entry."""
        try:
            return self.backbone(name) if kind == "backbone" else self.dataset(name)
        except BobxError as exc:
            raise _problem(*where, str(exc)) from exc


def _grid(
    raw: Any,
    index: int,
    backbones: list[str] | None,
    extract: dict[str, Any],
    where: tuple[str, str],
    catalogs: Catalogs,
) -> Grid:
    source, name = where
    here = (source, f"{name} grid {index}")
    if not isinstance(raw, dict):
        raise _problem(*here, "each grid must be a mapping.")
    check_known_fields(raw, _GRID_FIELDS, source=source, kind="suite", name=here[1])
    grid_backbones = raw.get("backbones", backbones)
    if grid_backbones is None:
        raise _problem(*here, "name 'backbones' in the suite or in the grid.")
    resolved = [
        catalogs.checked("backbone", b, here).name
        for b in _names(grid_backbones, "backbones", here)
    ]
    datasets = _names(raw.get("datasets"), "datasets", here)
    specs = {d: catalogs.checked("dataset", d, here) for d in datasets}
    options = {**extract, **_mapping(raw.get("extract"), "extract", here)}
    _check_extract(options, here)
    splits: dict[str, list[str]] = {}
    raw_splits = raw.get("splits")
    if raw_splits is not None:
        if isinstance(raw_splits, list):
            raw_splits = {d: raw_splits for d in datasets}
        for d, wanted in _mapping(raw_splits, "splits", here).items():
            if d not in specs:
                raise _problem(
                    *here, f"'splits' names {d!r}, which is not in this grid's datasets."
                )
            wanted = _names(wanted, f"splits of {d}", here)
            unknown = [s for s in wanted if s not in specs[d].splits]
            if unknown:
                raise _problem(
                    *here,
                    f"{d} has no split {unknown[0]!r}; its splits are {', '.join(specs[d].splits)}.",
                )
            splits[d] = wanted
    shards = raw.get("shards", 1)
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise _problem(*here, "'shards' must be a positive integer.")
    evaluate = {
        k: _evaluation(k, v, here, catalogs)
        for k, v in _mapping(raw.get("evaluate"), "evaluate", here).items()
    }
    jobs: dict[str, Any] = {}
    for kind, opts in _mapping(raw.get("jobs"), "jobs", here).items():
        if kind not in JOB_KINDS:
            from featcache.errors import suggest

            near = suggest(kind, JOB_KINDS)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise _problem(*here, f"unknown job {kind!r}{hint}; jobs are {', '.join(JOB_KINDS)}.")
        jobs[kind] = _mapping(opts, f"jobs.{kind}", here)
    if not evaluate and not jobs and raw.get("evaluate") is None and raw.get("jobs") is None:
        evaluate = {}  # extraction only: a grid may just fill the cache
    return Grid(
        backbones=tuple(resolved),
        datasets=tuple(datasets),
        extract=FrozenMap(options),
        splits=FrozenMap(splits),
        shards=shards,
        evaluate=FrozenMap(evaluate),
        jobs=FrozenMap(jobs),
    )


def suite_from_fields(
    name: str, fields: Mapping[str, Any], catalogs: Catalogs | None = None
) -> SuiteSpec:
    """Validate raw manifest fields into a :class:`SuiteSpec` (ManifestError on a problem).

    Backbones and datasets are checked against their catalogs (names only: no data,
    no weights)."""
    source = str(fields.get("_source", "<python>"))
    validate_name(name, "suite")
    where = (source, name)
    check_known_fields(fields, _SUITE_FIELDS, source=source, kind="suite", name=name)
    backbones = fields.get("backbones")
    if backbones is not None:
        backbones = _names(backbones, "backbones", where)
    extract = _mapping(fields.get("extract"), "extract", where)
    raw_grids = fields.get("grids")
    if not isinstance(raw_grids, list) or not raw_grids:
        raise _problem(source, name, "'grids' must be a non-empty list of grids.")
    catalogs = catalogs or Catalogs()
    grids = tuple(_grid(g, i, backbones, extract, where, catalogs) for i, g in enumerate(raw_grids))
    description = fields.get("description", "")
    if not isinstance(description, str):
        raise _problem(source, name, "'description' must be a string.")
    paper = fields.get("paper", [])
    if not isinstance(paper, list) or not all(isinstance(p, str) for p in paper):
        raise _problem(source, name, "'paper' must be a list of references (table1, ...).")
    return SuiteSpec(
        name=name,
        grids=grids,
        description=" ".join(description.split()),
        paper=tuple(paper),
        source=source,
    )


def get_suite(name: str | SuiteSpec, catalogs: Catalogs | None = None) -> SuiteSpec:
    """The suite named ``name``; UnknownNameError with near misses when there is none."""
    if isinstance(name, SuiteSpec):
        return name
    entries = load_entries("suites")
    if name not in entries:
        raise UnknownNameError(
            "suite",
            name,
            entries,
            hint="Run `bobx plan` to list them; add your own YAML in $BOBX_MANIFESTS/suites.",
        )
    return suite_from_fields(name, entries[name], catalogs)


def list_suites() -> list[SuiteSpec]:
    """Every suite, sorted by name (ManifestError on the first invalid one)."""
    entries, catalogs = load_entries("suites"), Catalogs()
    return [suite_from_fields(n, entries[n], catalogs) for n in sorted(entries)]


def validate_suite_manifests() -> dict[str, Any]:
    """``{"count": valid suites, "problems": [...]}`` (``bobx validate``); reads no data.

    Each suite is also expanded into its work items, which checks that every
    evaluation finds the splits it reads."""
    try:
        entries = load_entries("suites")
    except BobxError as exc:
        return {"count": 0, "problems": [str(exc)]}
    valid, problems, catalogs = 0, [], Catalogs()
    for name, fields in entries.items():
        try:
            expand_suite(suite_from_fields(name, fields, catalogs), catalogs)
            valid += 1
        except BobxError as exc:
            source = str(fields.get("_source", "<python>"))
            text = str(exc)
            problems.append(
                text if text.startswith(source) else f"{source}: suite {name!r}: {text}"
            )
    return {"count": valid, "problems": problems}


# --------------------------------------------------------------------------- work items
@dataclass(frozen=True)
class WorkItem:
    """One unit of work: a feature set (or a chunk range of one), an evaluator run or a job.

    ``options`` are the keyword arguments of the library function the item calls
    (:mod:`featcache.executors.items`); ``needs`` the ids of the items that must be done
    first. The id ``<kind>/<backbone>/<dataset>/<variant>`` is made of validated names,
    so it is also the item's store key (failures) and lease name.
    """

    kind: str  # extract | knn | probe | calibrate | retrieve | job
    backbone: str  # the name features are stored under (``name@feature`` for a layer)
    dataset: str
    variant: str  # extract: the split (``split.shard-i-of-n`` for a chunk range)
    options: Mapping[str, Any] = field(default_factory=FrozenMap)
    needs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for what, value in (
            ("work item kind", self.kind),
            ("backbone", self.backbone),
            ("dataset", self.dataset),
            ("work item variant", self.variant),
        ):
            validate_name(value, what)
        if not isinstance(self.options, FrozenMap):
            object.__setattr__(self, "options", FrozenMap(self.options))

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.backbone}/{self.dataset}/{self.variant}"

    @property
    def parts(self) -> tuple[str, str, str, str]:
        """The id's names: the lease key's parts and the failures' folder."""
        return (self.kind, self.backbone, self.dataset, self.variant)

    @property
    def uses_accelerator(self) -> bool:
        """Extraction and jobs run the backbone (GPU work); evaluators are CPU work."""
        return self.kind in ("extract", "job")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkItem:
        """The inverse of :meth:`to_dict` (names validated again)."""
        return cls(
            kind=data["kind"],
            backbone=data["backbone"],
            dataset=data["dataset"],
            variant=data["variant"],
            options=FrozenMap(data.get("options") or {}),
            needs=tuple(data.get("needs") or ()),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "backbone": self.backbone,
            "dataset": self.dataset,
            "variant": self.variant,
            "options": thaw(self.options),
            "needs": list(self.needs),
        }


def _default_test_split(dspec: Any, wanted: str | None) -> str:
    if wanted:
        return wanted
    for name in TEST_SPLITS:
        if name in dspec.splits:
            return name
    raise ManifestError(
        f"{dspec.name} has none of the splits {', '.join(TEST_SPLITS)}; name test_split "
        "in the suite's evaluation (its splits are " + ", ".join(dspec.splits) + ")."
    )


def _retrieval_splits(dspec: Any, options: Mapping[str, Any]) -> tuple[str, ...]:
    """The splits ``run_retrieval`` reads for this dataset and these options."""
    if dspec.format == "revisited" and not options["query_split"] and not options["gallery_split"]:
        return ("query", "database")
    query, gallery = options["query_split"], options["gallery_split"]
    if query is None and gallery is None and {"query", "gallery"} <= set(dspec.splits):
        return ("query", "gallery")
    query = query or ("test" if "test" in dspec.splits else dspec.splits[0])
    return (query,) if gallery is None or gallery == query else (query, gallery)


def retrieval_variant(options: Mapping[str, Any], dspec: Any) -> str:
    """Item variant of a retrieval run: ``revisited-bbx`` or ``label-test`` (+ ``-top100``)."""
    if dspec.format == "revisited" and not options["query_split"] and not options["gallery_split"]:
        base = f"revisited-{options['query_crop']}"
    else:
        base = "label-" + "-".join(_retrieval_splits(dspec, options))
    return base + (f"-top{options['top_k']}" if options["top_k"] else "")


def knn_variant(options: Mapping[str, Any]) -> str:
    ks = "+".join(str(k) for k in options["k"])
    return f"k{ks}-t{options['temperature']:g}-{options['train_split']}"


def probe_runs(options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One entry per probe run: ``{"fraction", "shots", "seed", "run"}``."""
    from featcache.runners.classification import probe_run_name

    runs = []
    for seed in options["seeds"]:
        for f in options["fractions"]:
            fraction = None if f == "full" else float(f)
            runs.append({"fraction": fraction, "shots": None, "seed": seed})
        for k in options["shots"]:
            runs.append({"fraction": None, "shots": int(k), "seed": seed})
    for run in runs:
        run["run"] = probe_run_name(run["fraction"], run["shots"], run["seed"], options["protocol"])
    return runs


def _extract_items(
    grid: Grid, backbone: str, store_name: str, dspec: Any, split: str
) -> list[WorkItem]:
    """The items that extract one split: one per set, or ``grid.shards`` chunk ranges."""
    if split not in dspec.splits:
        raise ManifestError(
            f"{dspec.name} has no split {split!r} (its splits are {', '.join(dspec.splits)}); "
            "name the evaluation's splits in the suite."
        )
    items = []
    for shard in range(grid.shards):
        variant = split if grid.shards == 1 else f"{split}.shard-{shard}-of-{grid.shards}"
        options = {
            **thaw(grid.extract),
            "backbone": backbone,
            "dataset": dspec.name,
            "split": split,
            "shard_index": shard,
            "num_shards": grid.shards,
        }
        items.append(WorkItem("extract", store_name, dspec.name, variant, options))
    return items


def expand_suite(suite: SuiteSpec | str, catalogs: Catalogs | None = None) -> list[WorkItem]:
    """The suite's work items, each once, in an order where needs come first.

    Extraction items come from the grid's ``splits`` (all of a dataset's splits when
    the grid has no evaluation) and from what each evaluation reads."""
    from featcache.backbones import with_feature

    catalogs = catalogs or Catalogs()
    spec = get_suite(suite, catalogs)
    dataset_spec = catalogs.dataset
    items: dict[str, WorkItem] = {}

    def add(item: WorkItem) -> WorkItem:
        known = items.setdefault(item.id, item)
        if known != item:
            raise ManifestError(
                f"{spec.source}: suite {spec.name!r}: work item {item.id} is defined twice with "
                "different options (two grids extract the same set differently); make them agree."
            )
        return item

    for grid in spec.grids:
        layer = grid.extract.get("layer")
        for backbone in grid.backbones:
            bspec = catalogs.backbone(backbone)
            store_name = (with_feature(bspec, layer) if layer else bspec).name
            catalog_name = backbone.partition("@")[0] if layer else backbone

            def needs(
                *pairs: tuple[str, str],
                _grid: Grid = grid,
                _names: tuple[str, str] = (catalog_name, store_name),
            ) -> tuple[str, ...]:
                """Ids of the items extracting these (dataset, split) pairs (added to the plan)."""
                ids = [
                    add(item).id
                    for ds, split in pairs
                    for item in _extract_items(_grid, *_names, dataset_spec(ds), split)
                ]
                return tuple(dict.fromkeys(ids))

            for dataset in grid.datasets:
                dspec = dataset_spec(dataset)
                explicit = grid.splits.get(dataset, () if grid.evaluate else dspec.splits)
                needs(*((dataset, split) for split in explicit))
                _evaluation_items(grid, dspec, store_name, needs, add, dataset_spec)
                _job_items(grid, store_name, catalog_name, dataset, add, items)
    return _ordered(items)


def _evaluation_items(
    grid: Grid, dspec: Any, backbone: str, needs: Any, add: Any, dataset_spec: Any
) -> None:
    """Add the grid's evaluator items of one (backbone, dataset) through ``add``."""
    dataset = dspec.name
    probe_ids: dict[str, str] = {}
    for kind, options in grid.evaluate.items():
        if kind == "knn":
            test = _default_test_split(dspec, options["test_split"])
            add(
                WorkItem(
                    "knn",
                    backbone,
                    dataset,
                    knn_variant(options),
                    {
                        "ks": list(options["k"]),
                        "temperature": float(options["temperature"]),
                        "train_split": options["train_split"],
                        "test_split": test,
                    },
                    needs((dataset, options["train_split"]), (dataset, test)),
                )
            )
        elif kind == "probe":
            test = _default_test_split(dspec, options["test_split"])
            val = options["val_split"] or (
                "val" if "val" in dspec.splits and test != "val" else None
            )
            pairs = [(dataset, options["train_split"]), (dataset, test)] + (
                [(dataset, val)] if val else []
            )
            for other in options["eval_on"]:
                pairs.append((other, _default_test_split(dataset_spec(other), None)))
            for run in probe_runs(options):
                item = add(
                    WorkItem(
                        "probe",
                        backbone,
                        dataset,
                        run["run"],
                        {
                            "fraction": run["fraction"],
                            "shots": run["shots"],
                            "seed": run["seed"],
                            "protocol": options["protocol"],
                            "backend": options["backend"],
                            "dtype": options["dtype"],
                            "train_split": options["train_split"],
                            "test_split": test,
                            "val_split": val,
                            "eval_on": list(options["eval_on"]),
                        },
                        needs(*pairs),
                    )
                )
                probe_ids[run["run"]] = item.id
        elif kind == "retrieve":
            splits = _retrieval_splits(dspec, options)
            revisited = splits == ("query", "database") and dspec.format == "revisited"
            add(
                WorkItem(
                    "retrieve",
                    backbone,
                    dataset,
                    retrieval_variant(options, dspec),
                    {
                        "protocols": list(options["protocol"]),
                        "query_crop": options["query_crop"],
                        "ks": list(options["k"]),
                        "top_k": options["top_k"],
                        "query_split": None if revisited else splits[0],
                        "gallery_split": None if revisited or len(splits) == 1 else splits[1],
                    },
                    needs(*((dataset, s) for s in splits)),
                )
            )
    calibrate = grid.evaluate.get("calibrate")
    if calibrate is None:
        return
    runs = calibrate["runs"] if calibrate["runs"] is not None else list(probe_ids)
    if not runs:
        raise ManifestError(
            f"suite grid on {dataset}: calibrate reads stored probe predictions; add a probe "
            "evaluation to the grid or name calibrate's runs (e.g. runs: [full])."
        )
    for run_name in runs:
        suffix = f"-b{calibrate['n_bins']}" + ("-ts" if calibrate["temperature_scale"] else "")
        add(
            WorkItem(
                "calibrate",
                backbone,
                dataset,
                run_name + suffix,
                {
                    "run": run_name,
                    "n_bins": calibrate["n_bins"],
                    "temperature_scale": calibrate["temperature_scale"],
                },
                (probe_ids[run_name],) if run_name in probe_ids else (),
            )
        )


def _job_items(
    grid: Grid,
    backbone: str,
    catalog_name: str,
    dataset: str,
    add: Any,
    planned: Mapping[str, WorkItem],
) -> None:
    """The grid's jobs on one (backbone, dataset); a job's variant names its recipe (or a
    digest of its options). Jobs use the grid's extraction weights unless they name their
    own; ``speed`` runs once per backbone (on synthetic inputs, whatever the dataset); a
    robustness job needs the probe run (or fine-tuning) whose head it attacks."""
    jobs: dict[str, WorkItem] = {}
    for kind, options in grid.jobs.items():
        opts = thaw(options)
        recipe = opts.get("recipe")
        variant = str(recipe) if isinstance(recipe, str) else "default"
        if opts and set(opts) != {"recipe"}:
            variant += "-" + provenance.digest(opts)[:8]
        if "weights" in grid.extract and "weights" not in opts:
            opts["weights"] = grid.extract["weights"]
        ds = BACKBONE_JOBS.get(kind, dataset)
        jobs[kind] = WorkItem(
            "job",
            backbone,
            ds,
            f"{kind}.{variant}",
            {"job": kind, "backbone": catalog_name, **opts},
        )
    robustness = jobs.get("robustness")
    if robustness is not None:
        head = robustness.options.get("head", "probe")
        if head == "probe":
            wanted = f"probe/{backbone}/{dataset}/{robustness.options.get('run') or 'full'}"
            needs = (wanted,) if wanted in planned else ()
        else:
            needs = (jobs["finetune"].id,) if "finetune" in jobs else ()
        jobs["robustness"] = replace(robustness, needs=needs)
    for item in jobs.values():
        add(item)


def _ordered(items: Mapping[str, WorkItem]) -> list[WorkItem]:
    """Items with every need before its dependents (stable otherwise)."""
    done: dict[str, WorkItem] = {}

    def visit(item: WorkItem, path: tuple[str, ...]) -> None:
        if item.id in done:
            return
        if item.id in path:
            raise ManifestError(f"work items depend on each other in a cycle: {' -> '.join(path)}")
        for need in item.needs:
            if need in items:
                visit(items[need], (*path, item.id))
        done[item.id] = item

    for item in items.values():
        visit(item, ())
    return list(done.values())


__all__ = [
    "EVALUATIONS",
    "JOB_KINDS",
    "Grid",
    "SuiteSpec",
    "WorkItem",
    "expand_suite",
    "get_suite",
    "list_suites",
    "suite_from_fields",
    "validate_suite_manifests",
]

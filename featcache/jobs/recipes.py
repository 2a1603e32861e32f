"""Recipes: a job's hyperparameters as data, ``manifests/recipes/*.yaml`` (and ``$BOBX_MANIFESTS``).

A recipe is one named entry of a kind (``finetune``; the detection job adds its own)::

    bob:
      kind: finetune
      description: BoB appendix C.1, full data
      epochs: 100                       # fixed values: any field of the kind's schema
      optimizer: adamw
      grid:                             # swept fields: every combination is one run
        lr: [1.0e-3, 5.0e-4, 1.0e-4]
        weight_decay: [0.05, 1.0e-3]
      variants:                         # applied in order when the job's context matches
        - when: {random_init: true}     # context keys: see CONTEXT_KEYS
          grid: {lr: [1.0e-2, 5.0e-3, 1.0e-3, 5.0e-4, 1.0e-4]}
        - when: {family: cnn}
          optimizer: sgd                # a fixed value also drops the field from the grid
          layer_decay: null

Fields are checked against the kind's schema (:data:`SCHEMAS`: type, range, choices,
default), so a typo is a :class:`ManifestError` naming the file, entry and the near miss;
``bobx validate`` checks every recipe. :meth:`Recipe.resolve` turns a recipe, a job's
context and command-line overrides into the list of grid points, each a
:class:`~featcache.catalog.FrozenMap` of every field of the schema. An unknown override key
is an :class:`UnknownNameError` with near misses.

Adding a job kind: add its field table to :data:`SCHEMAS` (``{name: Field(...)}``) and
its recipes to a YAML file here; nothing else changes. Nothing in this module imports torch.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from featcache.catalog import FrozenMap, load_valid, manifest_problem, thaw
from featcache.errors import BobxError, ManifestError, UnknownNameError, suggest
from featcache.names import validate_name

_problem = partial(manifest_problem, "recipe")


@dataclass(frozen=True)
class Field:
    """One recipe field: its type, default, and the values it may take.

    ``type``: ``float`` | ``int`` | ``bool`` | ``str`` | ``floats`` (a list of floats of
    length ``length``). ``nullable`` allows ``null``; ``choices`` limits strings."""

    type: str
    default: Any
    doc: str = ""
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # min excluded (lr > 0)
    max_open: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False
    length: int | None = None

    def check(self, value: Any) -> Any:
        """``value`` normalised (ints as floats for float fields, lists as tuples), or a
        ValueError saying what is allowed."""
        if value is None:
            if self.nullable:
                return None
            raise ValueError(f"must not be null ({self.doc or self.type})")
        if self.type == "floats":
            if not isinstance(value, list | tuple) or (
                self.length is not None and len(value) != self.length
            ):
                raise ValueError(f"must be a list of {self.length or 'some'} numbers")
            return tuple(self._number(v, integer=False) for v in value)
        if self.type == "bool":
            if not isinstance(value, bool):
                raise ValueError("must be true or false")
            return value
        if self.type == "str":
            if not isinstance(value, str) or not value:
                raise ValueError("must be a non-empty string")
            if self.choices and value not in self.choices:
                near = suggest(value, self.choices)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ValueError(f"must be one of {', '.join(self.choices)}{hint}")
            return value
        return self._number(value, integer=self.type == "int")

    def _number(self, value: Any, *, integer: bool) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, not {value!r}")
        if integer and not float(value).is_integer():
            raise ValueError(f"must be an integer, not {value!r}")
        out: float | int = int(value) if integer else float(value)
        if not math.isfinite(out):
            raise ValueError("must be finite")
        low_bad = self.min is not None and (out <= self.min if self.min_open else out < self.min)
        high_bad = self.max is not None and (out >= self.max if self.max_open else out > self.max)
        if low_bad or high_bad:
            lo = "" if self.min is None else f"{'>' if self.min_open else '>='} {self.min:g}"
            hi = "" if self.max is None else f"{'<' if self.max_open else '<='} {self.max:g}"
            raise ValueError(f"must be {' and '.join(x for x in (lo, hi) if x)}, not {value!r}")
        return out


def _f(default: Any, doc: str, **kw: Any) -> Field:
    return Field("float", default, doc, **kw)


#: Optimizers passed to timm's ``create_optimizer_v2`` by name.
OPTIMIZERS = ("adamw", "sgd", "momentum", "adam", "lamb", "lars", "lion")

#: The fine-tuning schema: timm's training knobs (names as in timm's train.py where one exists).
FINETUNE_FIELDS: dict[str, Field] = {
    "epochs": Field("int", 100, "training epochs", min=1),
    "warmup_epochs": _f(5.0, "linear warm-up epochs (cosine after)", min=0),
    "batch_size": Field("int", 1024, "effective batch (gradient accumulation)", min=1),
    "optimizer": Field("str", "adamw", "timm optimizer name", choices=OPTIMIZERS),
    "lr": _f(1e-3, "peak learning rate", min=0, min_open=True),
    "weight_decay": _f(0.05, "weight decay", min=0),
    "momentum": _f(0.9, "SGD momentum", min=0, max=1, max_open=True),
    "layer_decay": _f(
        0.75, "layer-wise lr decay (null: none)", min=0, max=1, min_open=True, nullable=True
    ),
    "min_lr": _f(1e-6, "cosine floor", min=0),
    "warmup_lr": _f(1e-4, "learning rate at the start of warm-up", min=0),
    "clip_grad": _f(None, "gradient norm clip (null: none)", min=0, min_open=True, nullable=True),
    "drop_path_rate": _f(0.1, "stochastic depth", min=0, max=1, max_open=True),
    "label_smoothing": _f(0.1, "label smoothing", min=0, max=1, max_open=True),
    "mixup": _f(0.8, "mixup alpha (0: off)", min=0),
    "cutmix": _f(1.0, "CutMix alpha (0: off)", min=0),
    "mixup_prob": _f(1.0, "probability of mixing a batch", min=0, max=1),
    "mixup_switch_prob": _f(0.5, "probability of CutMix when both are on", min=0, max=1),
    "auto_augment": Field(
        "str", "rand-m9-mstd0.5-inc1", "timm auto-augment string (null: none)", nullable=True
    ),
    "color_jitter": _f(0.4, "colour jitter (timm turns it off under RandAugment)", min=0),
    "reprob": _f(0.25, "random erasing probability", min=0, max=1),
    "remode": Field("str", "pixel", "random erasing fill", choices=("pixel", "rand", "const")),
    "scale": Field("floats", (0.08, 1.0), "random-resized-crop area range", length=2),
    "hflip": _f(0.5, "horizontal flip probability", min=0, max=1),
    "interpolation": Field(
        "str",
        None,
        "resize interpolation (null: the model's)",
        choices=("bilinear", "bicubic", "nearest", "random"),
        nullable=True,
    ),
    "resolution": Field("int", None, "input size (null: the model's)", min=8, nullable=True),
    "eval_test_each_epoch": Field("bool", True, "test accuracy in the per-epoch curve"),
}


def _i(default: Any, doc: str, **kw: Any) -> Field:
    return Field("int", default, doc, **kw)


#: The detection schema (``bobx detect``): mmdetection's names where BoB's configs set them.
DETECTION_FIELDS: dict[str, Field] = {
    "epochs": _i(36, "training epochs (3x schedule)", min=1),
    "lr_steps": Field(
        "floats", (27.0, 33.0), "epochs after which the lr is multiplied by lr_decay"
    ),
    "lr_decay": _f(0.1, "step decay factor", min=0, max=1, min_open=True),
    "warmup_iters": _i(1000, "linear warm-up updates", min=0),
    "warmup_ratio": _f(0.001, "warm-up start lr / lr", min=0, max=1),
    "batch_size": _i(16, "effective batch (gradient accumulation)", min=1),
    "optimizer": Field("str", "adamw", "timm optimizer name", choices=OPTIMIZERS),
    "lr": _f(1e-4, "peak learning rate", min=0, min_open=True),
    "weight_decay": _f(0.05, "weight decay (not on norms and biases)", min=0),
    "momentum": _f(0.9, "SGD momentum", min=0, max=1, max_open=True),
    "clip_grad": _f(None, "gradient norm clip (null: none)", min=0, min_open=True, nullable=True),
    "train_aug": Field(
        "str",
        "multiscale",
        "multiscale: short side in [scale_min, scale_max] (step scale_step) + flip; "
        "lsj: large-scale jitter to lsj_size, scale 0.1-2.0, crop/pad + flip; flip; none",
        choices=("multiscale", "lsj", "flip", "none"),
    ),
    "scale_min": _i(480, "multi-scale: smallest training short side", min=8),
    "scale_max": _i(800, "multi-scale: largest training short side", min=8),
    "scale_step": _i(32, "multi-scale: step between short sides", min=1),
    "lsj_size": _i(1024, "large-scale jitter: square training size", min=8),
    "test_size": _i(800, "test short side", min=8),
    "max_size": _i(1333, "longest side (training and test)", min=8),
    "neck": Field(
        "str",
        "bob",
        "bob: FPN (ViTs: FPN on the last map); vitdet: ViTDet's simple pyramid for ViTs",
        choices=("bob", "vitdet"),
    ),
    "fpn_channels": _i(256, "neck width", min=1),
    "box_head_dim": _i(1024, "two-layer box head width", min=1),
    "rpn_batch_size": _i(256, "anchors sampled per image for the RPN loss", min=1),
    "roi_batch_size": _i(512, "proposals sampled per image for the box head", min=1),
    "rpn_pre_nms_train": _i(2000, "proposals per level before NMS (training)", min=1),
    "rpn_post_nms_train": _i(2000, "proposals kept after NMS (training)", min=1),
    "rpn_pre_nms_test": _i(1000, "proposals per level before NMS (test)", min=1),
    "rpn_post_nms_test": _i(1000, "proposals kept after NMS (test)", min=1),
    "score_thresh": _f(0.05, "test: minimum detection score", min=0, max=1),
    "nms_thresh": _f(0.5, "test: NMS IoU", min=0, max=1),
    "detections_per_img": _i(100, "test: detections per image (LVIS: 300)", min=1),
    "eval_each_epoch": Field("bool", False, "score the evaluation split after every epoch"),
}

#: Field tables by job kind.
SCHEMAS: dict[str, dict[str, Field]] = {"finetune": FINETUNE_FIELDS, "detection": DETECTION_FIELDS}
#: What a variant's ``when`` may test: the job's context, known before it runs.
CONTEXT_KEYS = ("family", "random_init", "fraction", "shots", "low_shot")
_TOP_LEVEL = ("kind", "description", "paper", "grid", "variants")


@dataclass(frozen=True)
class Variant:
    """Values (and grid) that replace the recipe's when the job's context matches ``when``."""

    when: FrozenMap
    values: FrozenMap = field(default_factory=FrozenMap)
    grid: FrozenMap = field(default_factory=FrozenMap)

    def matches(self, context: Mapping[str, Any]) -> bool:
        for key, want in self.when.items():
            have = context.get(key)
            options = want if isinstance(want, tuple) else (want,)
            if have not in options:
                return False
        return True


@dataclass(frozen=True)
class Recipe:
    """One recipe: fixed values (every schema field, defaults filled), the grid and the
    variants. Derive another with :func:`dataclasses.replace`; never mutate."""

    name: str
    kind: str
    values: FrozenMap
    grid: FrozenMap = field(default_factory=FrozenMap)
    variants: tuple[Variant, ...] = ()
    description: str = ""
    paper: tuple[str, ...] = ()
    source_file: str = ""

    @property
    def schema(self) -> dict[str, Field]:
        return SCHEMAS[self.kind]

    def identity(self) -> dict[str, Any]:
        """Everything that defines the recipe's numbers (its name and file excluded)."""
        return {
            "kind": self.kind,
            "values": thaw(self.values),
            "grid": thaw(self.grid),
            "variants": [
                {"when": thaw(v.when), "values": thaw(v.values), "grid": thaw(v.grid)}
                for v in self.variants
            ],
        }

    def resolve(
        self, context: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> list[FrozenMap]:
        """The grid points of this recipe for a job with ``context`` (see
        :data:`CONTEXT_KEYS`) after ``overrides`` (a field -> value, or a list of values to
        sweep). Each point holds every schema field; points follow the grid's field order."""
        context = dict(context or {})
        unknown = sorted(set(context) - set(CONTEXT_KEYS))
        if unknown:
            raise UnknownNameError("recipe context key", unknown[0], CONTEXT_KEYS)
        values, grid = dict(self.values), dict(self.grid)
        for variant in self.variants:
            if variant.matches(context):
                for key, value in variant.values.items():
                    values[key] = value
                    grid.pop(key, None)
                grid.update(variant.grid)
        for key, value in (overrides or {}).items():
            spec = self.schema.get(key)
            if spec is None:
                raise UnknownNameError(
                    f"{self.kind} recipe key",
                    key,
                    self.schema,
                    hint=f"Recipe fields are listed in featcache/jobs/recipes.py ({self.kind}).",
                )
            sweep = isinstance(value, list) and spec.type != "floats"
            try:
                checked = [spec.check(v) for v in value] if sweep else spec.check(value)
            except ValueError as exc:
                raise BobxError(f"Recipe override {key}={value!r}: {key} {exc}.") from exc
            if sweep:
                grid[key] = tuple(checked)
            else:
                values[key] = checked
                grid.pop(key, None)
        names = list(grid)
        points = []
        for combo in itertools.product(*(grid[n] for n in names)):
            point = dict(values)
            point.update(zip(names, combo, strict=True))
            points.append(FrozenMap(point))
        return points


def _field(schema: Mapping[str, Field], key: str, source: str, name: str, where: str) -> Field:
    spec = schema.get(key)
    if spec is None:
        near = suggest(str(key), schema)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise _problem(source, name, f"{where}unknown field {key!r}{hint}.")
    return spec


def _checked(spec: Field, key: str, value: Any, source: str, name: str, where: str) -> Any:
    try:
        return spec.check(value)
    except ValueError as exc:
        yaml_hint = ""
        if isinstance(value, str) and value.replace("e", "", 1).replace("-", "").isdigit():
            yaml_hint = " (YAML reads 1e-3 as text: write 1.0e-3)"
        raise _problem(source, name, f"{where}{key!r} {exc}{yaml_hint}.") from exc


def _check_values(
    raw: Mapping[str, Any], schema: Mapping[str, Field], source: str, name: str, where: str
) -> dict[str, Any]:
    return {
        key: _checked(_field(schema, key, source, name, where), key, value, source, name, where)
        for key, value in raw.items()
    }


def _check_grid(
    raw: Any, schema: Mapping[str, Field], source: str, name: str, where: str
) -> dict[str, tuple[Any, ...]]:
    if not isinstance(raw, Mapping):
        raise _problem(source, name, f"{where}'grid' must map fields to lists of values.")
    out = {}
    for key, values in raw.items():
        spec = _field(schema, key, source, name, where)
        if not isinstance(values, list) or not values:
            raise _problem(source, name, f"{where}grid {key!r} must be a non-empty list.")
        if len(set(map(repr, values))) != len(values):
            raise _problem(source, name, f"{where}grid {key!r} repeats a value.")
        out[key] = tuple(_checked(spec, key, v, source, name, where) for v in values)
    return out


def _check_when(raw: Any, source: str, name: str, where: str) -> FrozenMap:
    if not isinstance(raw, Mapping) or not raw:
        raise _problem(source, name, f"{where}'when' must be a non-empty mapping.")
    for key in raw:
        if key not in CONTEXT_KEYS:
            near = suggest(str(key), CONTEXT_KEYS)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise _problem(
                source,
                name,
                f"{where}'when' key {key!r}{hint} is not one of {', '.join(CONTEXT_KEYS)}.",
            )
    return FrozenMap(raw)


def point_label(points: Sequence[Mapping[str, Any]], point: Mapping[str, Any]) -> str:
    """``point``'s fields that vary across ``points`` (one grid), as ``k=v`` words: the
    short name of a sweep member in logs, runs and curves."""
    varying = [k for k in point if len({repr(p[k]) for p in points}) > 1]
    return " ".join(
        f"{k}={point[k]:g}" if isinstance(point[k], float) else f"{k}={point[k]}" for k in varying
    )


def recipe_from_fields(name: str, fields: Mapping[str, Any]) -> Recipe:
    """Validate one YAML entry into a :class:`Recipe` (ManifestError naming file and entry)."""
    source = str(fields.get("_source", "<python>"))
    validate_name(name, "recipe")
    kind = fields.get("kind")
    if kind not in SCHEMAS:
        near = suggest(str(kind), SCHEMAS)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise _problem(source, name, f"'kind' must be one of {', '.join(SCHEMAS)}{hint}.")
    schema = SCHEMAS[kind]
    raw = {k: v for k, v in fields.items() if k not in (*_TOP_LEVEL, "_source")}
    values = {k: spec.default for k, spec in schema.items()}
    values.update(_check_values(raw, schema, source, name, ""))
    grid = _check_grid(fields.get("grid") or {}, schema, source, name, "")
    variants_raw = fields.get("variants") or []
    if not isinstance(variants_raw, list):
        raise _problem(source, name, "'variants' must be a list of {when: ..., field: value}.")
    variants = []
    for i, item in enumerate(variants_raw):
        where = f"variant {i + 1}: "
        if not isinstance(item, Mapping):
            raise _problem(source, name, f"{where}must be a mapping with 'when'.")
        body = {k: v for k, v in item.items() if k not in ("when", "grid")}
        variants.append(
            Variant(
                when=_check_when(item.get("when"), source, name, where),
                values=FrozenMap(_check_values(body, schema, source, name, where)),
                grid=FrozenMap(_check_grid(item.get("grid") or {}, schema, source, name, where)),
            )
        )
    description = fields.get("description", "")
    paper = fields.get("paper") or []
    if not isinstance(description, str) or not isinstance(paper, list):
        raise _problem(source, name, "'description' must be a string and 'paper' a list.")
    return Recipe(
        name=name,
        kind=str(kind),
        values=FrozenMap(values),
        grid=FrozenMap(grid),
        variants=tuple(variants),
        description=" ".join(description.split()),
        paper=tuple(str(p) for p in paper),
        source_file=source,
    )


def load_recipes() -> tuple[dict[str, Recipe], list[str]]:
    """Every valid recipe by name, and the problems of the invalid entries."""
    return load_valid("recipes", recipe_from_fields)


def get_recipe(name: str | Recipe, kind: str | None = None) -> Recipe:
    """The recipe called ``name`` (of ``kind``, when given); UnknownNameError with near misses."""
    if isinstance(name, Recipe):
        recipe = name
    else:
        recipes, problems = load_recipes()
        if name not in recipes:
            bad = [p for p in problems if f"recipe {name!r}" in p]
            if bad:
                raise ManifestError(bad[0])
            known = [n for n, r in recipes.items() if kind is None or r.kind == kind]
            raise UnknownNameError(
                "recipe",
                name,
                known,
                hint="Recipes live in manifests/recipes/*.yaml (add yours under $BOBX_MANIFESTS).",
            )
        recipe = recipes[name]
    if kind is not None and recipe.kind != kind:
        raise UnknownNameError(
            f"{kind} recipe", recipe.name, hint=f"{recipe.name!r} is a {recipe.kind} recipe."
        )
    return recipe


def list_recipes(kind: str | None = None) -> list[Recipe]:
    recipes, _ = load_recipes()
    return [recipes[n] for n in sorted(recipes) if kind is None or recipes[n].kind == kind]


def validate_recipe_manifests() -> list[str]:
    """Problems in the recipe manifests (``bobx validate``); reads no data."""
    recipes, problems = load_recipes()
    for recipe in recipes.values():
        aa = recipe.values.get("auto_augment")
        texts = {aa, *(v.values.get("auto_augment") for v in recipe.variants)}
        for text in sorted(t for t in texts if t):
            problem = _auto_augment_problem(str(text))
            if problem:
                problems.append(str(_problem(recipe.source_file, recipe.name, problem)))
    return problems


def _auto_augment_problem(text: str) -> str | None:
    """Whether timm can parse an auto-augment string (imports timm's augment module only)."""
    from timm.data.auto_augment import (
        augment_and_mix_transform,
        auto_augment_transform,
        rand_augment_transform,
    )

    hparams = {"translate_const": 100, "img_mean": (124, 116, 104)}
    try:
        if text.startswith("rand"):
            rand_augment_transform(text, hparams)
        elif text.startswith("augmix"):
            augment_and_mix_transform(text, hparams)
        else:
            auto_augment_transform(text, hparams)
    except (AssertionError, ValueError, KeyError, IndexError) as exc:
        return f"timm cannot parse auto_augment {text!r} ({type(exc).__name__}: {exc})."
    return None


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value parsed as YAML (``lr=1e-3``,
    ``scale=[0.5,1.0]``, ``auto_augment=null``, ``lr=[1e-3,5e-4]`` sweeps)."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise BobxError(f"Expected key=value for a recipe override, got {item!r}.")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise BobxError(f"Recipe override {item!r}: cannot parse the value ({exc}).") from exc
    if isinstance(value, str):  # YAML reads 1e-3 as a string; numbers are numbers here
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value for c in ".eE") else int(value)
    if isinstance(value, list):
        value = [_number(v) for v in value]
    return key.strip(), value


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def overrides_from(items: Sequence[str] | None, **named: Any) -> dict[str, Any]:
    """Overrides from ``--set key=value`` items plus named options (``None`` = not given)."""
    out = dict(parse_override(i) for i in items or ())
    out.update({k: v for k, v in named.items() if v is not None})
    return out


__all__ = [
    "CONTEXT_KEYS",
    "DETECTION_FIELDS",
    "FINETUNE_FIELDS",
    "SCHEMAS",
    "Field",
    "Recipe",
    "Variant",
    "get_recipe",
    "list_recipes",
    "load_recipes",
    "overrides_from",
    "parse_override",
    "recipe_from_fields",
    "validate_recipe_manifests",
]

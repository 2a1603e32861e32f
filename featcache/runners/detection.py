"""Detection and instance segmentation jobs: ``bobx detect`` and ``bobx detect --eval-only``.

:func:`run_detection` resolves a detection recipe (``detect_bob`` for COCO / LVIS,
``detect_sim10k`` for Sim10k, ``detect_quick`` for CPU smoke runs) into grid points for
this backbone (its family chooses multi-scale training or large-scale jitter), builds
one :class:`~featcache.jobs.JobSpec` per point and runs them with
:func:`featcache.jobs.run_sweep`: every point is a resumable, leased run (checkpoints in
``jobs/<run_id>/``); the point with the best box AP on the evaluation split is selected
(BoB's practice on COCO, which has no other held-out split; a single-point recipe
selects trivially) and its records are written.

Records (values are fractions; the paper prints percent):

* task ``detection``: ``ap_box``, ``ap50_box``, ``ap75_box``, ``aps_box``, ``apm_box``,
  ``apl_box`` (LVIS adds ``apr_box`` / ``apc_box`` / ``apf_box``) on the dataset's
  evaluation split;
* task ``segmentation``: the same for ``_mask`` when the dataset has masks (Mask R-CNN);
* task ``ood_detection``: ``ap50`` of the categories both sets share on every ``--eval-on``
  dataset (Sim10k -> Cityscapes: car AP50), ``params.train`` = the training dataset.

``params`` hold what a user chose and every backbone shares (``protocol`` in scratch /
finetune / frozen, ``recipe`` and its digest, ``seed``, ``precision``, splits, recipe
overrides such as ``neck``, the reader's bad-annotation policy and counts), so backbones
run the same way rank in one setting. What depends on the backbone (its grid, the chosen
lr, the pyramid it resolved to, the run id) lives in the record's ``cache_key`` (the run
id), the run's ``jobs/<run_id>/`` objects, the ``detection_curve`` artifact and the
predictions artifact ``detection_predictions/<backbone>/<dataset>/<run_id>`` (a COCO
results ``predictions.json``; attrs: params, point, detector, body checksums).

:func:`score_predictions` scores a COCO results file from any other tool against a
dataset's ground truth and records it the same way.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featcache import provenance
from featcache.catalog import thaw
from featcache.errors import BobxError, DataError, UnknownNameError
from featcache.jobs import JobSpec, SweepOutcome, get_recipe, make_job, run_sweep
from featcache.jobs.recipes import Recipe, list_recipes, point_label
from featcache.records import Record, make_record
from featcache.store import Store

log = logging.getLogger(__name__)

KIND = "detection"
PREDICTIONS_KIND = "detection_predictions"
PREDICTIONS_FILE = "predictions.json"
#: Recipe fields that change what a run reports along the way, never its result: left out
#: of record params, so runs that differ only in them share a ranking setting.
REPORTING_FIELDS = ("eval_each_epoch",)
#: Recipe used when none is given, by training dataset (else ``detect_bob``).
DEFAULT_RECIPES = {"sim10k": "detect_sim10k", "lvis": "detect_lvis"}


class FrozenBackboneChanged(BobxError):
    """A ``frozen`` run's backbone weights or norm statistics moved (a bug, never data)."""


@dataclass
class DetectionResult:
    """What :func:`run_detection` did: the sweep (points, selection) and its records."""

    sweep: SweepOutcome
    recipe: str
    records: list[Record]
    select_metric: str

    @property
    def status(self) -> str:
        return self.sweep.status


def resolve_recipe(name: str | Recipe | None, dataset: str) -> Recipe:
    """A detection recipe: ``name`` itself, or ``detect_<name>`` (``--recipe bob``), or the
    dataset's default (:data:`DEFAULT_RECIPES`, else ``detect_bob``)."""
    if isinstance(name, Recipe):
        return get_recipe(name, KIND)
    if name is None:
        return get_recipe(DEFAULT_RECIPES.get(dataset, "detect_bob"), KIND)
    known = {r.name for r in list_recipes(KIND)}
    if name not in known and f"detect_{name}" in known:
        name = f"detect_{name}"
    return get_recipe(name, KIND)


def _eval_split(dspec: Any, train_split: str, eval_split: str | None) -> str | None:
    if eval_split:
        if eval_split not in dspec.splits:
            raise UnknownNameError("split", eval_split, dspec.splits)
        return eval_split
    for name in ("val", "test"):
        if name in dspec.splits and name != train_split:
            return name
    return None


def _parse_eval_on(item: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME=DATA_ROOT``."""
    name, sep, root = item.partition("=")
    return name.strip(), (root.strip() or None) if sep else None


def open_detection_split(
    dataset: str,
    split: str | None = None,
    *,
    data_root: str | Path | None = None,
    on_bad_annotation: str | None = None,
    limit: int | None = None,
) -> Any:
    """A :class:`~featcache.datasets.detection.DetectionSplit` of a ``task: detection``
    dataset (``split`` defaults to ``val``, else its last split); ``on_bad_annotation``
    overrides the manifest's policy."""
    import dataclasses

    from featcache.datasets import get_dataset_spec, open_split
    from featcache.datasets.detection import BAD_ANNOTATION_POLICIES, DetectionSplit

    dspec = get_dataset_spec(dataset)
    if dspec.task != "detection":
        detection = [s.name for s in _detection_specs()]
        raise UnknownNameError(
            "detection dataset",
            dataset,
            detection,
            hint=f"{dataset!r} is a {dspec.task} dataset; bobx detect reads task: detection ones.",
        )
    if on_bad_annotation is not None:
        if on_bad_annotation not in BAD_ANNOTATION_POLICIES:
            raise UnknownNameError(
                "bad-annotation policy", on_bad_annotation, BAD_ANNOTATION_POLICIES
            )
        options = {**dict(dspec.options), "on_bad_annotation": on_bad_annotation}
        dspec = dataclasses.replace(dspec, options=options)
    name = split or ("val" if "val" in dspec.splits else dspec.splits[-1])
    out = open_split(dspec, name, data_root=data_root, limit=limit)
    assert isinstance(out, DetectionSplit)
    return out


def _detection_specs() -> list[Any]:
    from featcache.datasets import list_dataset_specs

    return [s for s in list_dataset_specs() if s.task == "detection"]


def _split_identity(split: Any) -> dict[str, Any]:
    return {
        "dataset": split.dataset,
        "split": split.split,
        "ids_digest": split.ids_digest(),
        "ground_truth": split.ground_truth_digest(),
        "reader": dict(split.params),
    }


def _reader_params(split: Any) -> dict[str, Any]:
    """The reader's knobs and counts that belong in record params."""
    keys = ("on_bad_annotation", "skipped_annotations", "skipped_images", "limit")
    return {k: split.params[k] for k in keys if k in split.params}


def detection_records(
    metrics: Mapping[str, float],
    *,
    backbone: str,
    dataset: str,
    params: Mapping[str, Any],
    cache_key: str | None,
    eval_split: str | None,
    masks: bool,
    ood: Sequence[tuple[str, str]] = (),
) -> list[Record]:
    """Records of one finished run on ``dataset`` (see the module doc); NaN metrics (no
    ground truth of that size) are left out. ``eval_split``: where the ``detection`` /
    ``segmentation`` metrics were measured (None: none); ``ood``: ``(dataset, split)`` of
    each ``--eval-on`` set, whose ``<dataset>.ap50_box`` becomes an ``ood_detection`` record."""
    from evaluators.detection import HIGHER_IS_BETTER

    out: list[Record] = []

    def add(task: str, on: str, split: str, metric: str, value: float, **extra: Any) -> None:
        if math.isnan(value):
            return
        out.append(
            make_record(
                backbone=backbone,
                task=task,
                dataset=on,
                split=split,
                metric=metric,
                value=value,
                higher_is_better=HIGHER_IS_BETTER[metric],
                params={**params, **extra},
                cache_key=cache_key,
            )
        )

    if eval_split is not None:
        for name, value in metrics.items():
            if "." in name or name not in HIGHER_IS_BETTER:
                continue
            task = "segmentation" if name.endswith("_mask") else "detection"
            if task == "segmentation" and not masks:
                continue
            add(task, dataset, eval_split, name, value)
    for on, split in ood:
        value = metrics.get(f"{on}.ap50_box", math.nan)
        add("ood_detection", on, split, "ap50", value, train=dataset)
    return out


def run_detection(
    store: Store,
    backbone: str,
    dataset: str,
    *,
    protocol: str = "finetune",
    recipe: str | Recipe | None = None,
    eval_on: Sequence[str] = (),
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    weights: str = "pretrained",
    data_root: str | Path | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    on_bad_annotation: str | None = None,
    limit: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 2,
    num_workers: int | None = None,
    overwrite: bool = False,
    wait: bool = False,
    checkpoint_every_steps: int | None = None,
    lease_ttl_s: float | None = None,
) -> DetectionResult:
    """Train and evaluate a detector over ``backbone`` on ``dataset``; see the module doc.

    ``eval_on``: other detection datasets to score the trained model on (``NAME`` or
    ``NAME=DATA_ROOT``), recorded as ``ood_detection``. ``batch_size`` is the micro-batch
    (images per forward); the recipe's batch is reached by gradient accumulation.
    ``limit`` keeps the first N images of every split (smoke runs; recorded in params).
    """
    from featcache.backbones import get_backbone_spec
    from featcache.datasets import get_dataset_spec
    from featcache.detection.model import (
        PROTOCOLS,
        body_of,
        build_detector,
        state_checksum,
    )
    from featcache.detection.trainer import (
        DetectionData,
        DetectionTrainer,
        EvalSet,
        eval_set,
        resize_plan,
        train_rows,
    )
    from featcache.extract import (
        PRECISIONS,
        dataset_identity,
        default_workers,
        library_versions,
        resolve_device,
        set_threads,
    )

    if protocol not in PROTOCOLS:
        raise UnknownNameError("detection protocol", protocol, PROTOCOLS)
    if precision not in PRECISIONS:
        raise UnknownNameError("precision", precision, PRECISIONS)
    if batch_size < 1:
        raise DataError(f"--batch-size must be a positive number of images, got {batch_size}.")
    spec = get_backbone_spec(backbone)
    dspec = get_dataset_spec(dataset)
    rec = resolve_recipe(recipe, dataset)
    dev = resolve_device(device)
    train = open_detection_split(
        dataset, train_split, data_root=data_root, on_bad_annotation=on_bad_annotation, limit=limit
    )
    evals: list[EvalSet] = []
    main_split = _eval_split(dspec, train_split, eval_split)
    if main_split is not None:
        split = open_detection_split(
            dataset,
            main_split,
            data_root=data_root,
            on_bad_annotation=on_bad_annotation,
            limit=limit,
        )
        evals.append(eval_set(dataset, train, split, main=True))
    ood: list[tuple[str, str]] = []
    for item in eval_on:
        name, root = _parse_eval_on(item)
        if name == dataset:
            raise DataError(f"--eval-on {name} is the training dataset; name another one.")
        split = open_detection_split(name, None, data_root=root, limit=limit)
        evals.append(eval_set(name, train, split, main=False))
        ood.append((name, split.split))
    if not evals:
        raise DataError(
            f"{dataset} has no evaluation split besides {train_split!r}; pass --eval-split or "
            "--eval-on another dataset (Sim10k: --eval-on cityscapes)."
        )
    masks = bool(train.with_masks and main_split is not None and evals[0].split.with_masks)
    rows = train_rows(train)
    context = {"family": spec.family, "random_init": protocol == "scratch" or spec.is_random}
    overrides = dict(overrides or {})
    points = rec.resolve(context, overrides)
    params: dict[str, Any] = {
        "protocol": protocol,
        "recipe": rec.name,
        "recipe_digest": provenance.digest(rec.identity())[:16],
        "seed": seed,
        "precision": precision,
        "train_split": train_split,
        **_reader_params(train),
        **{
            k: thaw(v) if not isinstance(v, list) else v
            for k, v in overrides.items()
            if k not in REPORTING_FIELDS
        },
    }
    if len(points) > 1:
        params["selection"] = f"{dataset}/{main_split}" if main_split else f"{ood[0][0]}"
    weights_used = "random" if protocol == "scratch" else weights
    from featcache.models import plan_backbone

    plan = plan_backbone(spec, weights_used, seed=seed)
    jobs = []
    for point in points:
        identity = {
            "model": plan.identity(),
            "protocol": protocol,
            "dataset": dataset_identity(dspec),
            "train": {**_split_identity(train), "rows": provenance.digest([int(r) for r in rows])},
            "evals": [
                {**_split_identity(e.split), "categories": list(e.categories)} for e in evals
            ],
            "masks": masks,
            "seed": seed,
            "point": thaw(point),
            "micro_batch": batch_size,
            "precision": precision,
            "versions": library_versions(),
        }
        jobs.append(
            make_job(
                KIND,
                spec.name,
                dspec.name,
                identity,
                params=params,
                point=thaw(point),
                label=point_label(points, point),
            )
        )
    workers = default_workers(dev.type) if num_workers is None else max(0, int(num_workers))
    data = DetectionData(train, rows.tolist(), tuple(evals), masks)
    checks: dict[str, dict[str, Any]] = {}

    def make_trainer(job: JobSpec) -> DetectionTrainer:
        set_threads(dev)
        if dev.type == "cuda":  # image sizes vary: cuDNN's per-shape autotuning only costs
            import torch

            torch.backends.cudnn.benchmark = False
        p = job.point
        model, info = build_detector(
            spec,
            num_classes=train.num_classes,
            masks=masks,
            protocol=protocol,
            weights=weights_used,
            seed=seed,
            neck=p["neck"],
            min_size=resize_plan(p)["train"][0],
            max_size=resize_plan(p)["train"][1],
            fpn_channels=p["fpn_channels"],
            box_head_dim=p["box_head_dim"],
            rcnn_kwargs={
                "rpn_batch_size_per_image": p["rpn_batch_size"],
                "box_batch_size_per_image": p["roi_batch_size"],
                "rpn_pre_nms_top_n_train": p["rpn_pre_nms_train"],
                "rpn_post_nms_top_n_train": p["rpn_post_nms_train"],
                "rpn_pre_nms_top_n_test": p["rpn_pre_nms_test"],
                "rpn_post_nms_top_n_test": p["rpn_post_nms_test"],
                "box_score_thresh": p["score_thresh"],
                "box_nms_thresh": p["nms_thresh"],
                "box_detections_per_img": p["detections_per_img"],
            },
        )
        before = state_checksum(body_of(model))
        checks[job.run_id] = {"detector": info.to_dict(), "body_checksum_before": before}
        log.info("%s %s: %s", job.run_id, job.label, info)

        def on_predictions(es: EvalSet, rows_: list[dict[str, Any]]) -> None:
            after = state_checksum(body_of(trainer.model))
            checks[job.run_id]["body_checksum_after"] = after
            if protocol == "frozen" and after != before:
                raise FrozenBackboneChanged(
                    f"The frozen backbone of {job.run_id} changed during training "
                    f"(checksum {before[:12]} -> {after[:12]}); this is a bug: report it."
                )
            store.put_artifact(
                PREDICTIONS_KIND,
                job.backbone,
                es.split.dataset,
                job.run_id,
                {},
                {
                    **thaw(job.params),
                    "run_id": job.run_id,
                    "point": thaw(job.point),
                    "split": es.split.split,
                    "n_predictions": len(rows_),
                    **checks[job.run_id],
                },
                files={PREDICTIONS_FILE: json.dumps(rows_).encode()},
            )

        trainer = DetectionTrainer(
            model,
            data,
            p,
            image_mean=info.image_mean,
            device=dev,
            precision=precision,
            micro_batch=batch_size,
            num_workers=workers,
            seed=seed,
            on_predictions=on_predictions,
            log=log.info,
        )
        return trainer

    def records(job: JobSpec, metrics: Mapping[str, float]) -> list[Record]:
        return detection_records(
            metrics,
            backbone=job.backbone,
            dataset=job.dataset,
            params=thaw(job.params),
            cache_key=job.run_id,
            eval_split=main_split,
            masks=masks,
            ood=ood,
        )

    select = "ap_box" if main_split is not None else f"{ood[0][0]}.ap50_box"
    options: dict[str, Any] = {"checkpoint_every_steps": checkpoint_every_steps}
    if lease_ttl_s is not None:
        options["lease_ttl_s"] = lease_ttl_s
    sweep = run_sweep(
        store,
        jobs,
        make_trainer,
        select=select,
        records=records,
        overwrite=overwrite,
        wait=wait,
        **options,
    )
    return DetectionResult(sweep, rec.name, sweep.records, select)


# ---------------------------------------------------------------------------- eval only
def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """A COCO results file: a JSON list of ``{image_id, category_id, bbox | segmentation,
    score}`` rows (DataError naming the file when it is not one)."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"Predictions file {path} not found.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"Cannot read {path} as COCO results JSON: {exc}.") from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(
            f"{path} is not a COCO results file: expected a JSON list of "
            "{image_id, category_id, bbox, score} objects."
        )
    return rows


def score_predictions(
    store: Store,
    predictions: str | Path,
    dataset: str,
    *,
    backbone: str,
    split: str | None = None,
    data_root: str | Path | None = None,
    protocol: str = "finetune",
    trained_on: str | None = None,
    on_bad_annotation: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> list[Record]:
    """Score a COCO results file against ``dataset``'s ground truth and record it.

    Box metrics always, mask metrics when every row has a ``segmentation``. With
    ``trained_on`` the file is an out-of-distribution result: one ``ood_detection`` /
    ``ap50`` record with ``params.train``. The file is kept as the artifact
    ``detection_predictions/<backbone>/<dataset>/external-<sha256[:16]>``."""
    from evaluators.detection import coco_ap
    from featcache.names import validate_name

    validate_name(backbone, "backbone")
    rows = read_predictions(predictions)
    gt_split = open_detection_split(
        dataset, split, data_root=data_root, on_bad_annotation=on_bad_annotation
    )
    digest = provenance.sha256_file(Path(predictions))
    style = gt_split.eval_style
    metrics = coco_ap(gt_split.ground_truth, rows, iou_type="bbox", style=style)
    masks = bool(rows) and all(isinstance(r.get("segmentation"), dict) for r in rows)
    if masks:
        metrics.update(coco_ap(gt_split.ground_truth, rows, iou_type="segm", style=style))
    base = {
        "protocol": protocol,
        "source": "predictions_file",
        **_reader_params(gt_split),
        **dict(params or {}),
    }
    name = f"external-{digest[:16]}"
    common: dict[str, Any] = {"backbone": backbone, "params": base, "cache_key": f"sha256:{digest}"}
    if trained_on is not None:  # an out-of-distribution result: dataset is the target
        validate_name(trained_on, "dataset")
        recs = detection_records(
            {f"{dataset}.{k}": v for k, v in metrics.items()},
            dataset=trained_on,
            eval_split=None,
            masks=False,
            ood=[(dataset, gt_split.split)],
            **common,
        )
    else:
        recs = detection_records(
            metrics, dataset=dataset, eval_split=gt_split.split, masks=masks, **common
        )
    store.put_artifact(
        PREDICTIONS_KIND,
        backbone,
        dataset,
        name,
        {},
        {**base, "split": gt_split.split, "sha256": digest, "n_predictions": len(rows)},
        files={PREDICTIONS_FILE: Path(predictions).read_bytes()},
    )
    return store.add_records(recs)


__all__ = [
    "DEFAULT_RECIPES",
    "PREDICTIONS_FILE",
    "PREDICTIONS_KIND",
    "DetectionResult",
    "FrozenBackboneChanged",
    "detection_records",
    "open_detection_split",
    "read_predictions",
    "resolve_recipe",
    "run_detection",
    "score_predictions",
]

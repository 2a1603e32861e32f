"""End-to-end fine-tuning of a catalog backbone on a dataset: ``bobx finetune``.

:func:`run_finetune` resolves a recipe (``bob`` for full data, ``bob_lowshot`` for
``fraction`` / ``shots``, ``quick`` for CPU smoke runs) into grid points for this
backbone (its family and whether it is a random init choose BoB's grid), builds one
:class:`~featcache.jobs.JobSpec` per point and runs the grid with
:func:`featcache.jobs.run_sweep`: each point is its own resumable, leased run; the point
with the best validation top-1 (macro AUC for multi-label sets) is selected and its test
metrics are recorded.

Data: the training split minus, when the dataset has no official validation split, the
probe's seeded stratified 10 % holdout; low-shot subsets are drawn from what remains
with the probe's own function (:func:`evaluators.probe.training_rows`), so a backbone's
probe and fine-tune see exactly the same images.

Records: task ``classification``, metrics ``top1`` / ``top5`` (multi-label:
``macro_auc``) on the test split, ``params.protocol = "finetune"`` with every knob a
user chose (recipe and its digest, fraction / shots, seed, precision, overrides). What
depends on the backbone (its resolved grid, the chosen point, the run id) is kept out
of params, so every backbone run the same way shares one ranking setting, and lives in
the record's ``cache_key`` (the selected run id), the run's ``jobs/<run_id>/`` objects and
the ``finetune_curve`` artifact (per-epoch curve; attrs: the params, the point,
``selected``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featcache import provenance
from featcache.catalog import thaw
from featcache.errors import DataError, UnknownNameError
from featcache.jobs import JobSpec, SweepOutcome, get_recipe, make_job, run_sweep
from featcache.jobs.recipes import Recipe, point_label
from featcache.records import Record, make_record
from featcache.store import Store

log = logging.getLogger(__name__)

PROTOCOL = "finetune"
#: Test split names tried in order when none is given (ImageNet's test set is its val).
TEST_SPLITS = ("test", "val", "valid", "real")
HOLDOUT = 0.1


@dataclass
class FinetuneResult:
    """What :func:`run_finetune` did: the sweep (points, selection) and its records."""

    sweep: SweepOutcome
    recipe: str
    records: list[Record]
    select_metric: str = "val_top1"

    @property
    def status(self) -> str:
        return self.sweep.status


@dataclass
class _Splits:
    train: Any
    val: Any
    test: Any
    fit_rows: np.ndarray
    val_rows: np.ndarray
    selection: str
    num_classes: int
    multilabel: bool


def _test_split(dspec: Any, train_split: str, test_split: str | None) -> str:
    if test_split:
        return test_split
    for name in TEST_SPLITS:
        if name in dspec.splits and name != train_split:
            return name
    raise UnknownNameError(
        "test split",
        dspec.name,
        dspec.splits,
        hint=f"Pass --test-split; {dspec.name} has splits {', '.join(dspec.splits)}.",
    )


def _check_labels(split: Any, dataset: str) -> None:
    labels = split.labels
    if labels.ndim == 1 and len(labels) and (labels < 0).any():
        n = int((labels < 0).sum())
        if n == len(labels):
            raise DataError(
                f"{dataset}/{split.split} has no labels, and fine-tuning needs them; "
                "use a labelled dataset (see `bobx datasets`)."
            )
        raise DataError(
            f"{n} of {len(labels)} images of {dataset}/{split.split} are unlabelled; "
            "fine-tuning needs a label on every training and evaluation image."
        )


def prepare_splits(
    dspec: Any,
    *,
    data_root: str | Path | None = None,
    train_split: str = "train",
    test_split: str | None = None,
    val_split: str | None = None,
    seed: int = 0,
    fraction: float | None = None,
    shots: int | None = None,
) -> _Splits:
    """Open the splits and choose the rows: the probe's selection split and subsets."""
    from evaluators.probe import training_rows
    from featcache.datasets import open_split

    test_name = _test_split(dspec, train_split, test_split)
    official = val_split or (
        "val" if "val" in dspec.splits and "val" not in (test_name, train_split) else None
    )
    train = open_split(dspec, train_split, data_root=data_root)
    test = open_split(dspec, test_name, data_root=data_root)
    val = open_split(dspec, official, data_root=data_root) if official else train
    for split in {id(s): s for s in (train, val, test)}.values():
        _check_labels(split, dspec.name)
    multilabel = train.labels.ndim == 2
    fit_rows, holdout = training_rows(
        train.labels,
        official_val=official is not None,
        holdout=HOLDOUT,
        seed=seed,
        fraction=fraction,
        shots=shots,
    )
    val_rows = np.arange(len(val)) if holdout is None else holdout
    if multilabel:
        num_classes = int(train.labels.shape[1])
    else:
        seen = max(int(s.labels.max()) for s in (train, val, test) if len(s))
        num_classes = max(int(dspec.num_classes or 0), seen + 1)
    return _Splits(
        train,
        val,
        test,
        fit_rows,
        np.asarray(val_rows),
        "val" if official else "holdout",
        num_classes,
        multilabel,
    )


def _split_identity(split: Any, rows: np.ndarray | None = None) -> dict[str, Any]:
    out = {"split": split.split, "ids_digest": split.ids_digest(), "reader": dict(split.params)}
    if rows is not None:
        out["rows_digest"] = provenance.sha256_bytes(np.asarray(rows, np.int64).tobytes())
    return out


def finetune_jobs(
    plan: Any,
    dspec: Any,
    splits: _Splits,
    recipe: Recipe,
    *,
    fraction: float | None,
    shots: int | None,
    seed: int,
    overrides: Mapping[str, Any],
    precision: str,
    micro_batch: int,
    world_size: int = 1,
) -> list[JobSpec]:
    """One JobSpec per grid point of ``recipe`` for this backbone and dataset
    (``world_size``: torchrun processes, which see ``micro_batch`` images each)."""
    from featcache.extract import dataset_identity, library_versions

    context = {
        "family": plan.spec.family,
        "random_init": plan.weights.kind == "random",
        "fraction": fraction,
        "shots": shots,
        "low_shot": fraction is not None or shots is not None,
    }
    points = recipe.resolve(context, overrides)
    params = {
        "protocol": PROTOCOL,
        "recipe": recipe.name,
        "recipe_digest": provenance.digest(recipe.identity())[:16],
        "fraction": fraction,
        "shots": shots,
        "seed": seed,
        "precision": precision,
        "train_split": splits.train.split,
        "selection": splits.selection,
        **({"sampler": "probe"} if fraction is not None or shots is not None else {}),
        **{k: thaw(v) if not isinstance(v, list) else v for k, v in overrides.items()},
    }
    jobs = []
    for point in points:
        identity = {
            "model": plan.identity(),
            "dataset": dataset_identity(dspec),
            "train": _split_identity(splits.train, splits.fit_rows),
            "val": _split_identity(splits.val, splits.val_rows),
            "test": _split_identity(splits.test),
            "num_classes": splits.num_classes,
            "fraction": fraction,
            "shots": shots,
            "seed": seed,
            "point": thaw(point),
            "micro_batch": micro_batch,
            "world_size": world_size,
            "precision": precision,
            "versions": library_versions(),
        }
        jobs.append(
            make_job(
                PROTOCOL,
                plan.spec.name,
                dspec.name,
                identity,
                params=params,
                point=thaw(point),
                label=point_label(points, point),
            )
        )
    return jobs


def run_finetune(
    store: Store,
    backbone: str,
    dataset: str,
    *,
    recipe: str | Recipe | None = None,
    fraction: float | None = None,
    shots: int | None = None,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    weights: str = "pretrained",
    data_root: str | Path | None = None,
    train_split: str = "train",
    test_split: str | None = None,
    val_split: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
    num_workers: int | None = None,
    overwrite: bool = False,
    wait: bool = False,
    checkpoint_every_steps: int | None = None,
    deterministic: bool = False,
    lease_ttl_s: float | None = None,
) -> FinetuneResult:
    """Fine-tune ``backbone`` on ``dataset`` with a recipe's grid; see the module doc.

    ``batch_size`` is the micro-batch (images per forward, sized for memory); the
    recipe's ``batch_size`` (effective) is reached by gradient accumulation.
    ``precision="auto"``: bf16 autocast on a GPU that has it, else fp32 (the resolved
    value is what the run id and the records carry). ``overrides`` replace recipe values (a list sweeps the field). Launched by torchrun,
    every process trains its share through DistributedDataParallel and rank 0 writes."""
    from featcache.backbones import get_backbone_spec
    from featcache.datasets import get_dataset_spec
    from featcache.extract import PRECISIONS, default_workers, resolve_device, set_threads
    from featcache.jobs.distributed import from_env, setup
    from featcache.models import plan_backbone
    from featcache.training.classification import ClassificationData, ClassificationTrainer
    from featcache.training.model import finetune_classifier

    if precision not in (*PRECISIONS, "auto"):
        raise UnknownNameError("precision", precision, (*PRECISIONS, "auto"))
    if batch_size < 1:
        raise DataError(f"--batch-size must be a positive number of images, got {batch_size}.")
    spec = get_backbone_spec(backbone)
    dspec = get_dataset_spec(dataset)
    name = recipe or ("bob_lowshot" if fraction is not None or shots is not None else "bob")
    rec = get_recipe(name, "finetune")
    plan = plan_backbone(spec, weights)
    splits = prepare_splits(
        dspec,
        data_root=data_root,
        train_split=train_split,
        test_split=test_split,
        val_split=val_split,
        seed=seed,
        fraction=fraction,
        shots=shots,
    )
    ranks = from_env()
    dev = setup(ranks, resolve_device(device))
    if precision == "auto":
        import torch

        bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "bf16" if bf16 else "fp32"
    jobs = finetune_jobs(
        plan,
        dspec,
        splits,
        rec,
        fraction=fraction,
        shots=shots,
        seed=seed,
        overrides=dict(overrides or {}),
        precision=precision,
        micro_batch=batch_size,
        world_size=ranks.world,
    )
    if num_workers is None:  # the host's decode workers, shared by the processes
        workers = max(1, default_workers(dev.type) // ranks.world)
    else:
        workers = max(0, int(num_workers))
    data = ClassificationData(
        splits.train,
        splits.fit_rows,
        splits.val,
        splits.val_rows,
        splits.test,
        np.arange(len(splits.test)),
        splits.num_classes,
        splits.multilabel,
    )
    interpolation = str(plan.data_config.get("interpolation") or "bicubic")

    def make_trainer(job: JobSpec) -> ClassificationTrainer:
        set_threads(dev)
        model, info = finetune_classifier(
            plan,
            splits.num_classes,
            drop_path_rate=float(job.point["drop_path_rate"]),
            seed=seed,
        )
        log.info("%s %s: %s", job.run_id, job.label, info)
        return ClassificationTrainer(
            model,
            data,
            job.point,
            input_size=plan.input_size,
            eval_transform=plan.cpu_transform,
            interpolation=interpolation,
            device=dev,
            precision=precision,
            micro_batch=batch_size,
            num_workers=workers,
            seed=seed,
            deterministic=deterministic,
            ranks=ranks,
        )

    from evaluators.probe import HIGHER_IS_BETTER

    names = ("macro_auc",) if splits.multilabel else ("top1", "top5")

    def records(job: JobSpec, metrics: Mapping[str, float]) -> list[Record]:
        return [
            make_record(
                backbone=job.backbone,
                task="classification",
                dataset=job.dataset,
                split=splits.test.split,
                metric=metric,
                value=metrics[metric],
                higher_is_better=HIGHER_IS_BETTER[metric],
                params=dict(job.params),
                cache_key=job.run_id,
            )
            for metric in names
        ]

    options: dict[str, Any] = {"checkpoint_every_steps": checkpoint_every_steps}
    if lease_ttl_s is not None:
        options["lease_ttl_s"] = lease_ttl_s
    if len(splits.fit_rows) < 2:
        raise DataError(f"{dataset}: fewer than 2 training images after the holdout and subset.")
    select = "val_macro_auc" if splits.multilabel else "val_top1"
    sweep = run_sweep(
        store,
        jobs,
        make_trainer,
        select=select,
        records=records,
        overwrite=overwrite,
        wait=wait,
        ranks=ranks,
        **options,
    )
    return FinetuneResult(sweep, rec.name, sweep.records, select)


__all__ = ["PROTOCOL", "FinetuneResult", "finetune_jobs", "prepare_splits", "run_finetune"]

"""Adversarial robustness (BoB Table 19): ``bobx robustness``.

:func:`run_robustness` attacks backbone + head with untargeted l-inf PGD
(:mod:`featcache.training.attack`) on a dataset's test split and records top-1 under
attack per radius (task ``robustness``, metric ``top1``; the clean accuracy is the
record with ``eps: "0"``). The head is

* ``probe`` (default): the linear probe ``bobx probe`` stored
  (``artifacts/probe/<backbone>/<dataset>/<run>``), on the frozen feature extractor,
  no retraining. The features the probe was fitted on must come from this very backbone
  plan (weights and preprocessing), which is checked against the feature set's cache
  recipe;
* ``finetune``: a fine-tuned classifier of ``bobx finetune`` (the selected run of the
  newest full-data sweep, or ``run=RUN_ID``), loaded from its ``model.safetensors``.

The attack is itself a job (:func:`featcache.jobs.run_job`): leased, resumable batch by
batch, not rerun once finished (unless ``overwrite``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featcache import provenance
from featcache.errors import BobxError, DataError, UnknownNameError
from featcache.jobs import JobOutcome, JobSpec, JobState, list_sweeps, make_job, run_job
from featcache.records import Record, make_record
from featcache.store import Store

HEADS = ("probe", "finetune")
DEFAULT_EPS = ("1/255", "2/255")


@dataclass
class RobustnessResult:
    outcome: JobOutcome
    records: list[Record]

    @property
    def status(self) -> str:
        return self.outcome.status


@dataclass
class _Head:
    model: Any
    split: str
    identity: dict[str, Any]
    run: str  # probe run name, or the fine-tune recipe


def _probe_head(store: Store, plan: Any, dataset: str, run: str) -> _Head:
    from featcache.runners.classification import stored_probe
    from featcache.training.model import probe_classifier

    name = plan.spec.name
    arrays, attrs = stored_probe(
        store, name, dataset, run, otherwise=", or attack a fine-tuned model with --head finetune"
    )
    if attrs.get("multilabel"):
        raise DataError(f"{dataset} is multi-label; the PGD attack needs single-label data.")
    train_split = str((attrs.get("params") or {}).get("train_split", "train"))
    try:
        recipe = store.features(name, dataset, train_split).attrs.get("cache_recipe") or {}
    except BobxError:
        recipe = {}
    if recipe.get("model") and provenance.digest(recipe["model"]) != provenance.digest(
        plan.identity()
    ):
        raise DataError(
            f"The probe of {name}/{dataset} was fitted on features of other weights or "
            "preprocessing than this run would attack; pass the --weights the features were "
            "extracted with."
        )
    model = probe_classifier(
        plan, arrays["weights"], arrays["bias"], l2_normalize=bool(attrs.get("l2_normalized"))
    )
    identity = {
        "kind": "probe",
        "run": run,
        "weights": provenance.sha256_bytes(np.ascontiguousarray(arrays["weights"]).tobytes()),
        "bias": provenance.sha256_bytes(np.ascontiguousarray(arrays["bias"]).tobytes()),
        "l2_normalized": bool(attrs.get("l2_normalized")),
    }
    return _Head(model, str(attrs.get("test_split", "test")), identity, run)


def _finetune_head(store: Store, plan: Any, dataset: str, run: str | None) -> _Head:
    from featcache.training.model import finetune_classifier, load_classifier_weights

    name = plan.spec.name
    if run is None:
        sweeps = [
            s
            for s in list_sweeps(store, kind="finetune")
            if s.get("backbone") == name
            and s.get("dataset") == dataset
            and (s.get("params") or {}).get("fraction") is None
            and (s.get("params") or {}).get("shots") is None
        ]
        if not sweeps:
            raise BobxError(
                f"No finished full-data fine-tune of {name}/{dataset}; run `bobx finetune "
                f"--backbone {name} --dataset {dataset}` first (or pass --run RUN_ID)."
            )
        run = str(sweeps[-1]["selected"])
    state = JobState(store, run)
    job, done = state.job(), state.done()
    if job is None or done is None or not state.has_weights():
        raise BobxError(
            f"Run {run!r} is not a finished fine-tune with stored weights; see `bobx finetune`."
        )
    if job.get("kind") != "finetune" or job.get("dataset") != dataset:
        raise BobxError(f"Run {run!r} fine-tuned {job.get('dataset')!r}, not {dataset!r}.")
    ident = job["identity"]
    if provenance.digest(ident["model"]) != provenance.digest(plan.identity()):
        raise DataError(
            f"Run {run!r} fine-tuned other weights or preprocessing of {name}; pass the "
            "--weights it was fine-tuned from."
        )
    model, _ = finetune_classifier(plan, int(ident["num_classes"]))
    tensors, _ = state.get_weights()
    load_classifier_weights(model, tensors)
    recipe = str((job.get("params") or {}).get("recipe", "finetune"))
    return _Head(model, str(ident["test"]["split"]), {"kind": "finetune", "run_id": run}, recipe)


def run_robustness(
    store: Store,
    backbone: str,
    dataset: str,
    *,
    head: str = "probe",
    run: str | None = None,
    eps: Sequence[str] = DEFAULT_EPS,
    steps: int = 20,
    step_size: str = "eps/5",
    random_start: bool = False,
    limit: int | None = None,
    weights: str = "pretrained",
    data_root: str | Path | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 64,
    num_workers: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    wait: bool = False,
) -> RobustnessResult:
    """Clean and PGD top-1 of backbone + head on the test split, one record per eps.

    ``eps``: radii as strings (``"1/255"``); the clean accuracy (``"0"``) is always added.
    ``limit``: attack a seeded random subset of that many test images (recorded)."""
    from featcache.backbones import get_backbone_spec
    from featcache.datasets import get_dataset_spec, open_split
    from featcache.extract import (
        PRECISIONS,
        dataset_identity,
        default_workers,
        library_versions,
        resolve_device,
        set_threads,
    )
    from featcache.models import plan_backbone
    from featcache.training.attack import AttackRun, parse_eps, parse_step_size
    from featcache.training.classification import PRECISIONS as AUTOCAST

    if head not in HEADS:
        raise UnknownNameError("robustness head", head, HEADS)
    if precision not in PRECISIONS:
        raise UnknownNameError("precision", precision, PRECISIONS)
    if steps < 1 or batch_size < 1:
        raise BobxError("--steps and --batch-size must be positive.")
    radii = [parse_eps("0")] + [r for r in map(parse_eps, eps) if r[1] > 0]
    names = [r[0] for r in radii]
    if len(set(names)) != len(names):
        raise BobxError(f"--eps lists a radius twice: {', '.join(eps)}.")
    for _, value in radii[1:]:
        parse_step_size(step_size, value)  # fail before any work on a bad --step-size
    spec = get_backbone_spec(backbone)
    dspec = get_dataset_spec(dataset)
    plan = plan_backbone(spec, weights)
    chosen = (
        _probe_head(store, plan, dspec.name, run or "full")
        if head == "probe"
        else _finetune_head(store, plan, dspec.name, run)
    )
    split = open_split(dspec, chosen.split, data_root=data_root)
    labels = np.asarray(split.labels)
    if labels.ndim != 1 or bool((labels < 0).any()):
        raise DataError(
            f"{dspec.name}/{split.split} needs one label per image for the attack; it has "
            "multi-label or unlabelled images."
        )
    rows = np.arange(len(split))
    if limit is not None:
        if limit < 1:
            raise BobxError(f"--limit must be a positive number of images, got {limit}.")
        if limit < len(rows):
            rows = np.sort(np.random.default_rng([seed, 11]).choice(len(rows), limit, False))
    dev = resolve_device(device)
    workers = default_workers(dev.type) if num_workers is None else max(0, int(num_workers))
    params: dict[str, Any] = {
        "attack": "pgd",
        "norm": "linf",
        "steps": steps,
        "step_size": step_size,
        "random_start": random_start,
        "loss": "cross_entropy",
        "pixel_space": "[0,1]",
        "head": head,
        "head_run": chosen.run,
        "limit": limit,
        "seed": seed,
        "precision": precision,
    }
    identity = {
        "model": plan.identity(),
        "head": chosen.identity,
        "dataset": dataset_identity(dspec),
        "split": split.split,
        "ids_digest": split.ids_digest(),
        "rows": provenance.sha256_bytes(rows.astype(np.int64).tobytes()),
        "eps": names,
        **{k: v for k, v in params.items() if k not in ("head", "head_run")},
        "versions": library_versions(),
    }
    job = make_job("robustness", spec.name, dspec.name, identity, params=params)

    def make_trainer(j: JobSpec) -> AttackRun:
        set_threads(dev)
        return AttackRun(
            chosen.model,
            split,
            rows,
            transform=plan.cpu_transform,
            input_size=plan.input_size,
            eps=radii,
            steps=steps,
            step_size=step_size,
            random_start=random_start,
            batch_size=batch_size,
            device=dev,
            autocast_dtype=AUTOCAST[precision],
            num_workers=workers,
            seed=seed,
        )

    def records(j: JobSpec, metrics: Mapping[str, float]) -> list[Record]:
        out = []
        for name, value in radii:
            step = 0.0 if value == 0 else parse_step_size(step_size, value)
            out.append(
                make_record(
                    backbone=j.backbone,
                    task="robustness",
                    dataset=j.dataset,
                    split=split.split,
                    metric="top1",
                    value=metrics[f"top1@{name}"],
                    params={
                        **dict(j.params),
                        "eps": name,
                        "eps_value": value,
                        "step_size_value": step,
                    },
                    cache_key=j.run_id,
                )
            )
        return out

    outcome = run_job(
        store,
        job,
        make_trainer,
        records=records,
        overwrite=overwrite,
        wait=wait,
        checkpoint_every_steps=20,
        checkpoint_every_epochs=1,
    )
    return RobustnessResult(outcome, outcome.records)


__all__ = ["DEFAULT_EPS", "HEADS", "RobustnessResult", "run_robustness"]

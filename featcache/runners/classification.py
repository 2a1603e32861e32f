"""Classification on cached features: ``bobx knn``, ``bobx probe``, ``bobx calibrate``.

Records go under task ``classification`` (kNN and probe), ``ood_classification``
(a probe evaluated on another dataset through a class mapping) and ``calibration``.
``params`` hold every protocol knob; outcomes such as the chosen C live in the
probe's artifact (``artifacts/probe/<backbone>/<dataset>/<run>``), never in params,
so every backbone evaluated with the same knobs shares one ranking setting (the one
outcome in params, the probe's ``n_unconverged``, is an
:data:`evaluators.ranking.OUTCOME_PARAMS` key the ranking leaves out).

Backbone and dataset names are resolved like ``bobx extract`` resolves them
(:mod:`featcache.runners.names`); ``backbone=None`` means every backbone with complete
features of the dataset. Each runner has a ``*_skip_reason`` twin that says, without
computing anything, why a (backbone, dataset) pair cannot or need not run: what
:func:`featcache.runners.pending.run_pending` (a bare ``bobx probe``) reports.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from featcache import provenance
from featcache.errors import BobxError, DataError, UnknownNameError
from featcache.records import Record, make_record
from featcache.runners.names import resolve_backbones, resolve_dataset
from featcache.store import FeatureSet, Store

#: A backbone argument of a runner: one name, several, or None for every one with features.
Backbones = str | Sequence[str] | None
#: Rows per block when a search streams a feature set (chunk-aligned): few, large blocks,
#: each one search call (memory ~ one block: 96 MiB of 768-d fp16, twice that normalised).
SEARCH_BLOCK_ROWS = 65536

#: The probe protocol's name in records; the C grid is DINOv2's 10**linspace(-6, 5, 45).
PROBE_PROTOCOL = "dinov2_logreg"
CLIP_PROTOCOL = "clip_benchmark_adamw"
CLIP_WD_GRID_NAME = "logspace(-6,2,97) coarse-to-fine"
KNN_PROTOCOL = "dino_knn"


def pick_test_split(store: Store, backbone: str, dataset: str, test_split: str | None) -> str:
    """The requested split, else ``test``, else ``val`` (ImageNet's test set is its val)."""
    if test_split:
        return test_split
    have = store.complete_splits(backbone, dataset)
    for name in ("test", "val", "real"):
        if name in have:
            return name
    raise UnknownNameError(
        "test split",
        f"{backbone}/{dataset}",
        have,
        hint="Pass --test-split, or extract a test split.",
    )


def pair_key(*sets: FeatureSet) -> str:
    """Cache key of a result computed from several feature sets."""
    return provenance.digest([fs.cache_key for fs in sets])


def unlabelled(fs: FeatureSet) -> bool:
    """True when a set carries no labels (features imported without ``--labels``)."""
    labels = fs.labels()
    return bool(labels.size) and bool(np.all(labels == -1))


class Existing:
    """The store's records of one task, for "was this already evaluated?" questions.

    Two records match when backbone, dataset, split, metric, cache key and setting params
    (:func:`evaluators.ranking.setting_params`: outcome params left out) are equal."""

    def __init__(self, store: Store, task: str) -> None:
        from evaluators.ranking import setting_params

        df = store.results(task=task)
        self._seen = {
            (r.backbone, r.dataset, r.split, r.metric, setting_params(r.params), r.cache_key)
            for r in df.itertuples(index=False)
        }

    def has(
        self,
        backbone: str,
        dataset: str,
        split: str,
        metric: str,
        params: Mapping[str, Any],
        cache_key: str | None,
    ) -> bool:
        from evaluators.ranking import setting_params

        key = (backbone, dataset, split, metric, setting_params(dict(params)), cache_key)
        return key in self._seen


def metric_records(
    metrics: Mapping[str, Any],
    directions: Mapping[str, bool],
    *,
    names: Iterable[str],
    backbone: str,
    task: str,
    dataset: str,
    split: str,
    params: Mapping[str, Any],
    cache_key: str | None,
) -> list[Record]:
    """One record per metric name, direction read from the evaluator's table."""
    return [
        make_record(
            backbone=backbone,
            task=task,
            dataset=dataset,
            split=split,
            metric=name,
            value=float(metrics[name]),
            higher_is_better=directions[name],
            params=params,
            cache_key=cache_key,
        )
        for name in names
    ]


# --------------------------------------------------------------------------- kNN
def knn_params(k: int, temperature: float, train_split: str) -> dict[str, Any]:
    """The params of a kNN record for neighbour count ``k``."""
    return {
        "protocol": KNN_PROTOCOL,
        "k": int(k),
        "temperature": float(temperature),
        "train_split": train_split,
    }


def knn_skip_reason(
    store: Store,
    backbone: str,
    dataset: str,
    existing: Existing,
    *,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    train_split: str = "train",
    test_split: str | None = None,
    device: str = "cpu",
) -> str | None:
    """Why :func:`run_knn` would not run on this pair (None: it would)."""
    have = store.complete_splits(backbone, dataset)
    if train_split not in have:
        return f"no complete {train_split!r} split to search (kNN needs train and test)"
    try:
        test = store.features(
            backbone, dataset, pick_test_split(store, backbone, dataset, test_split)
        )
    except UnknownNameError:
        return "no test split (test, val or real) to classify"
    train = store.features(backbone, dataset, train_split)
    if train.multilabel:
        return "multi-label (kNN classification needs one label per image)"
    if unlabelled(train):
        return f"{train_split!r} has no labels (imported without --labels)"
    key = pair_key(train, test)
    params = [knn_params(k, temperature, train_split) for k in ks]
    if all(existing.has(backbone, dataset, test.split, "top1", p, key) for p in params):
        return "already evaluated with these knobs on these features"
    return None


def run_knn(
    store: Store,
    backbone: Backbones,
    dataset: str,
    *,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    train_split: str = "train",
    test_split: str | None = None,
    device: str = "cpu",
) -> list[Record]:
    """DINO weighted kNN of ``test_split`` against ``train_split``; records per k."""
    from evaluators.knn import HIGHER_IS_BETTER, knn_classify

    store.check_writable()  # a read-only or full store fails now, not after the work
    records: list[Record] = []
    dataset = resolve_dataset(store, dataset)
    for bb in resolve_backbones(store, backbone, dataset):
        train = store.features(bb, dataset, train_split)
        test = store.features(bb, dataset, pick_test_split(store, bb, dataset, test_split))
        if train.multilabel:
            raise DataError(
                f"{dataset} is multi-label; kNN classification needs one label per image."
            )
        test_x, test_y, _ = test.load()
        train_y, norms = train.labels(), train.norms()
        if train.n_invalid:  # masked rows must not vote: load only the valid ones
            train_x, train_y, _ = train.load()
            blocks: Any = train_x
            norms = norms[train.valid()]
        else:  # streamed as stored (fp16 read as float32 while normalising): ~ one chunk
            blocks = train.iter_blocks(block_rows=SEARCH_BLOCK_ROWS, dtype=None)
        out = knn_classify(
            blocks,
            train_y,
            test_x,
            test_y,
            ks=ks,
            temperature=temperature,
            device=device,
            train_norms=norms,
        )
        for k in ks:
            params = knn_params(k, temperature, train_split)
            records += [
                make_record(
                    backbone=bb,
                    task="classification",
                    dataset=dataset,
                    split=test.split,
                    metric=base,
                    value=float(out[f"{base}_k{k}"]),
                    higher_is_better=HIGHER_IS_BETTER.get(f"{base}_k{k}", True),
                    params=params,
                    cache_key=pair_key(train, test),
                )
                for base in ("top1", "top5")
            ]
    return store.add_records(records)


# --------------------------------------------------------------------------- probe
def probe_run_name(
    fraction: float | None, shots: int | None, seed: int, protocol: str = "dinov2"
) -> str:
    """Artifact name of a probe run: ``full``, ``frac0.01-seed0`` or ``shots10-seed0``,
    prefixed ``clip-`` for the CLIP_benchmark protocol (``clip-full``)."""
    prefix = "" if protocol == "dinov2" else "clip-"
    if fraction is not None:
        return f"{prefix}frac{fraction:g}-seed{seed}"
    if shots is not None:
        return f"{prefix}shots{shots}-seed{seed}"
    return prefix + ("full" if seed == 0 else f"full-seed{seed}")


def _probe_sets(
    store: Store,
    backbone: str,
    dataset: str,
    train_split: str,
    test_split: str | None,
    val_split: str | None,
) -> tuple[FeatureSet, FeatureSet, FeatureSet | None]:
    """The probe's (train, test, official val or None) feature sets."""
    train = store.features(backbone, dataset, train_split)
    test = store.features(backbone, dataset, pick_test_split(store, backbone, dataset, test_split))
    has_val = test.split != "val" and store.has_features(backbone, dataset, "val")
    official_val = val_split or ("val" if has_val else None)
    val = store.features(backbone, dataset, official_val) if official_val else None
    return train, test, val


def probe_params(
    *,
    protocol: str = "dinov2",
    selection: str,
    fraction: float | None = None,
    shots: int | None = None,
    seed: int = 0,
    backend: str = "auto",
    dtype: str = "float64",
    train_split: str = "train",
    c_grid: Sequence[float] | None = None,
    warm_start: bool = True,
    lr: float = 0.1,
    epochs: int = 10,
    batch_size: int = 64,
) -> dict[str, Any]:
    """The knobs of a probe record (``backend`` and ``dtype`` as the probe resolves them:
    ``auto`` runs the torch backend; the sklearn backend is float64 and always cold)."""
    if protocol == "clip_benchmark":
        return {
            "protocol": CLIP_PROTOCOL,
            "selection": selection,
            "fraction": fraction,
            "shots": shots,
            "seed": seed,
            "backend": "adamw",
            "dtype": "float32",
            "train_split": train_split,
            "wd_grid": CLIP_WD_GRID_NAME,
            "lr": lr,
            "epochs": epochs,
            "batch_size": batch_size,
        }
    backend = "torch" if backend == "auto" else backend
    torch = backend == "torch"
    return {
        "protocol": PROBE_PROTOCOL,
        "selection": selection,
        "fraction": fraction,
        "shots": shots,
        "seed": seed,
        "backend": backend,
        "dtype": dtype if torch else "float64",
        "train_split": train_split,
        "c_grid": "10**linspace(-6,5,45)" if c_grid is None else [float(c) for c in c_grid],
        "warm_start": bool(warm_start and torch),
    }


def probe_skip_reason(
    store: Store,
    backbone: str,
    dataset: str,
    existing: Existing,
    *,
    fraction: float | None = None,
    shots: int | None = None,
    seed: int = 0,
    backend: str = "auto",
    dtype: str = "float64",
    c_grid: Sequence[float] | None = None,
    train_split: str = "train",
    test_split: str | None = None,
    val_split: str | None = None,
    protocol: str = "dinov2",
    warm_start: bool = True,
    lr: float = 0.1,
    epochs: int = 10,
    batch_size: int = 64,
    **_: Any,
) -> str | None:
    """Why :func:`run_probe` would not run on this pair (None: it would)."""
    have = store.complete_splits(backbone, dataset)
    if train_split not in have:
        return f"no complete {train_split!r} split to train on (the probe needs train and test)"
    try:
        train, test, val = _probe_sets(store, backbone, dataset, train_split, test_split, val_split)
    except UnknownNameError as exc:
        return f"a split it needs is missing ({exc})"
    if unlabelled(train):
        return f"{train_split!r} has no labels (imported without --labels)"
    if protocol == "clip_benchmark" and train.multilabel:
        return "multi-label (the CLIP_benchmark probe is single-label)"
    params = probe_params(
        protocol=protocol,
        selection="holdout" if val is None else "val",
        fraction=fraction,
        shots=shots,
        seed=seed,
        backend=backend,
        dtype=dtype,
        train_split=train_split,
        c_grid=c_grid,
        warm_start=warm_start,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
    )
    metric = "macro_auc" if train.multilabel else "top1"
    used = [train, test] + ([val] if val is not None else [])
    if existing.has(backbone, dataset, test.split, metric, params, pair_key(*used)):
        return "already probed with these knobs on these features"
    return None


def run_probe(
    store: Store,
    backbone: Backbones,
    dataset: str,
    *,
    fraction: float | None = None,
    shots: int | None = None,
    seed: int = 0,
    backend: str = "auto",
    device: str = "cpu",
    dtype: str = "float64",
    c_grid: Sequence[float] | None = None,
    train_split: str = "train",
    test_split: str | None = None,
    val_split: str | None = None,
    eval_on: Sequence[str] = (),
    protocol: str = "dinov2",
    warm_start: bool = True,
    lr: float = 0.1,
    epochs: int = 10,
    batch_size: int = 64,
) -> list[Record]:
    """The linear probe (DINOv2 logistic regression, or ``protocol="clip_benchmark"``'s
    AdamW layer); keeps weights, test logits and the sweep (each C with its iterations,
    convergence and objective) as an artifact and evaluates the same probe on ``eval_on``
    datasets (out-of-distribution). A choice made among unconverged fits is warned about
    (:class:`evaluators.probe.ProbeConvergenceWarning`) and counted in the records'
    ``n_unconverged``."""
    from evaluators._search import l2_normalize
    from evaluators.probe import HIGHER_IS_BETTER, ProbeConvergenceWarning, linear_probe

    store.check_writable()  # a read-only or full store fails now, not after the work
    records: list[Record] = []
    clip = protocol == "clip_benchmark"
    dataset = resolve_dataset(store, dataset)
    eval_on = [resolve_dataset(store, d) for d in eval_on]
    for bb in resolve_backbones(store, backbone, dataset):
        train, test, val = _probe_sets(store, bb, dataset, train_split, test_split, val_split)
        tx, ty, _ = train.load()
        sx, sy, _ = test.load()
        vx, vy = val.load()[:2] if val is not None else (None, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ProbeConvergenceWarning)
            out = linear_probe(
                tx,
                ty,
                sx,
                sy,
                val_x=vx,
                val_y=vy,
                c_grid=c_grid,
                seed=seed,
                fraction=fraction,
                shots=shots,
                backend=backend,
                device=device,
                dtype=dtype,
                protocol=protocol,
                lr=lr,
                epochs=epochs,
                batch_size=batch_size,
                **({} if clip else {"warm_start": warm_start}),
            )
        run = probe_run_name(fraction, shots, seed, protocol)
        if out["convergence_warning"]:  # again, naming the backbone, dataset and run
            warnings.warn(
                f"{bb}/{dataset} ({run}): {out['convergence_warning']}",
                ProbeConvergenceWarning,
                stacklevel=2,
            )
        params = probe_params(
            protocol=protocol,
            selection=out["selection"],
            fraction=fraction,
            shots=shots,
            seed=seed,
            backend=out["backend"],
            dtype=out["dtype"],
            train_split=train_split,
            c_grid=c_grid,
            warm_start=out["warm_start"],
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
        )
        if not clip:
            params["n_unconverged"] = int(out["n_unconverged"])
        names = ["macro_auc"] if out["multilabel"] else ["top1", "top5", "mean_per_class_recall"]
        used = [train, test] + ([val] if val is not None else [])
        records += metric_records(
            out,
            HIGHER_IS_BETTER,
            names=names,
            backbone=bb,
            task="classification",
            dataset=dataset,
            split=test.split,
            params=params,
            cache_key=pair_key(*used),
        )
        weights, bias = np.asarray(out["weights"]), np.asarray(out["bias"])
        if vx is not None and vy is not None:
            sel_x, sel_y = vx, vy
        else:
            sel_x, sel_y = tx[out["val_indices"]], ty[out["val_indices"]]
        if out["l2_normalized"]:  # the probe's weights apply to normalised features
            sel_x = l2_normalize(sel_x)
        store.put_artifact(
            "probe",
            bb,
            dataset,
            run,
            {
                "weights": weights,
                "bias": bias,
                "test_logits": np.asarray(out["test_logits"]),
                "test_labels": sy,
                "val_logits": sel_x @ weights.T + bias,
                "val_labels": sel_y,
            },
            {
                "C": None if clip else float(out["C"]),
                "weight_decay": out["weight_decay"],
                "l2_normalized": bool(out["l2_normalized"]),
                "sweep": out["sweep"],
                "convergence_warning": out["convergence_warning"],
                "refit": {"n_iter": int(out["n_iter"]), "converged": out["converged"]},
                "params": params,
                "multilabel": bool(out["multilabel"]),
                "cache_key": pair_key(*used),
                "test_split": test.split,
            },
        )
        for other in eval_on:
            records += _evaluate_ood(
                store, bb, dataset, other, weights, bias, params, bool(out["l2_normalized"])
            )
    return store.add_records(records)


def _evaluate_ood(
    store: Store,
    backbone: str,
    trained_on: str,
    dataset: str,
    weights: np.ndarray,
    bias: np.ndarray,
    probe_params: Mapping[str, Any],
    l2_normalized: bool = False,
) -> list[Record]:
    """The probe trained on ``trained_on`` scored on ``dataset`` (ImageNet-A/-R: 200 logits)."""
    from evaluators._search import l2_normalize
    from evaluators.ood import HIGHER_IS_BETTER, evaluate_mapped

    fs = store.features(backbone, dataset, pick_test_split(store, backbone, dataset, None))
    x, y, _ = fs.load()
    subset = _class_subset(dataset)
    if weights.shape[1] != x.shape[1]:
        raise DataError(
            f"{backbone} features of {dataset} have dim {x.shape[1]}, the probe expects "
            f"{weights.shape[1]}; extract both datasets with the same backbone and layer."
        )
    if l2_normalized:
        x = l2_normalize(x)
    out = evaluate_mapped(x @ weights.T + bias, y, class_subset=subset)
    params = {
        **probe_params,
        "trained_on": trained_on,
        "class_subset": None if subset is None else len(subset),
    }
    return metric_records(
        out,
        HIGHER_IS_BETTER,
        names=("top1", "top5"),
        backbone=backbone,
        task="ood_classification",
        dataset=dataset,
        split=fs.split,
        params=params,
        cache_key=fs.cache_key,
    )


def _class_subset(dataset: str) -> tuple[int, ...] | None:
    """The class subset a dataset's manifest declares (ImageNet-A / -R), if any."""
    try:
        from featcache.datasets import get_dataset_spec

        return get_dataset_spec(dataset).class_subset
    except UnknownNameError:
        return None  # features imported for a dataset outside the catalog


# --------------------------------------------------------------------------- calibration
def calibration_params(*, n_bins: int, run: str, temperature_scale: bool) -> dict[str, Any]:
    """The knobs of a calibration record."""
    return {
        "n_bins": n_bins,
        "source": "probe",
        "probe_run": run,
        "temperature_scaled": temperature_scale,
    }


def calibration_skip_reason(
    store: Store,
    backbone: str,
    dataset: str,
    existing: Existing,
    *,
    run: str = "full",
    n_bins: int = 15,
    temperature_scale: bool = False,
    **_: Any,
) -> str | None:
    """Why :func:`run_calibration` would not run on this pair (None: it would)."""
    if run not in store.list_artifacts("probe", backbone, dataset):
        extra = " --protocol clip_benchmark" if run.startswith("clip-") else ""
        return f"no stored probe run {run!r} (run `bobx probe{extra}` first)"
    _, attrs = store.get_artifact("probe", backbone, dataset, run)
    if attrs.get("multilabel"):
        return "multi-label probe (calibration needs single-label predictions)"
    params = calibration_params(n_bins=n_bins, run=run, temperature_scale=temperature_scale)
    split = str(attrs.get("test_split", "test"))
    if existing.has(backbone, dataset, split, "ece", params, attrs.get("cache_key")):
        return "already calibrated with these knobs on this probe run"
    return None


def run_calibration(
    store: Store,
    backbone: Backbones,
    dataset: str,
    *,
    run: str = "full",
    n_bins: int = 15,
    temperature_scale: bool = False,
    plot: str | None = None,
) -> list[Record]:
    """ECE / NLL / Brier of a stored probe's test predictions (``bobx probe`` first)."""
    from evaluators.calibration import (
        HIGHER_IS_BETTER,
        calibration_metrics,
        fit_temperature,
        reliability_diagram,
        softmax,
    )

    store.check_writable()  # a read-only or full store fails now, not after the work
    records: list[Record] = []
    dataset = resolve_dataset(store, dataset)
    for bb in _probed_backbones(store, backbone, dataset):
        arrays, attrs = stored_probe(store, bb, dataset, run)
        if attrs.get("multilabel"):
            raise DataError(
                f"{dataset} is multi-label; calibration needs single-label predictions."
            )
        temperature = 1.0
        if temperature_scale:
            temperature = float(fit_temperature(arrays["val_logits"], arrays["val_labels"]))
        probs = softmax(arrays["test_logits"], temperature=temperature)
        out = calibration_metrics(probs, arrays["test_labels"], n_bins=n_bins)
        if plot:
            one = isinstance(backbone, str) and backbone != "all"
            path = plot if one else per_backbone_path(plot, bb)
            reliability_diagram(probs, arrays["test_labels"], path, n_bins=n_bins)
        params = calibration_params(n_bins=n_bins, run=run, temperature_scale=temperature_scale)
        recs = metric_records(
            out,
            HIGHER_IS_BETTER,
            names=("ece", "nll", "brier"),
            backbone=bb,
            task="calibration",
            dataset=dataset,
            split=str(attrs.get("test_split", "test")),
            params=params,
            cache_key=attrs.get("cache_key"),
        )
        records += recs
    return store.add_records(records)


def stored_probe(
    store: Store, backbone: str, dataset: str, run: str, *, otherwise: str = ""
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The probe artifact ``bobx probe`` kept (weights, logits), or a BobxError naming the
    command that makes it (``otherwise``: another way out, appended to the message)."""
    try:
        return store.get_artifact("probe", backbone, dataset, run)
    except UnknownNameError as exc:
        extra = " --protocol clip_benchmark" if run.startswith("clip-") else ""
        raise BobxError(
            f"No stored probe for {backbone}/{dataset} (run {run!r}); run `bobx probe "
            f"--backbone {backbone} --dataset {dataset}{extra}` first{otherwise}."
        ) from exc


def per_backbone_path(plot: str, backbone: str) -> str:
    """``out.png`` -> ``out-<backbone>.png`` (one diagram per backbone)."""
    stem, dot, ext = plot.rpartition(".")
    return f"{stem}-{backbone}.{ext}" if dot else f"{plot}-{backbone}"


def _probed_backbones(store: Store, backbone: Backbones, dataset: str) -> list[str]:
    """Backbones with a stored probe of ``dataset`` (``None`` / ``"all"``), else the names."""
    probed = sorted(
        bb
        for bb in store.objects.list_groups("artifacts/probe")
        if dataset in store.objects.list_groups(f"artifacts/probe/{bb}")
    )
    if backbone is None or backbone == "all" or (not isinstance(backbone, str) and not backbone):
        if not probed:
            raise BobxError(
                f"No stored probe of {dataset}; run `bobx probe --dataset {dataset}` first."
            )
        return probed
    from featcache.runners.names import canonical_backbone

    names = [backbone] if isinstance(backbone, str) else list(backbone)
    return [n if n in probed else canonical_backbone(n) for n in names]

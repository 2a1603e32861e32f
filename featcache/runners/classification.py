"""Classification on cached features: ``bobx knn``, ``bobx probe``, ``bobx calibrate``.

Records go under task ``classification`` (kNN and probe), ``ood_classification``
(a probe evaluated on another dataset through a class mapping) and ``calibration``.
``params`` hold every protocol knob; outcomes such as the chosen C live in the
probe's artifact (``artifacts/probe/<backbone>/<dataset>/<run>``), never in params,
so every backbone evaluated with the same knobs shares one ranking setting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from featcache import provenance
from featcache.errors import BobxError, DataError, UnknownNameError
from featcache.records import Record, make_record
from featcache.store import FeatureSet, Store

#: The probe protocol's name in records; the C grid is DINOv2's 10**linspace(-6, 5, 45).
PROBE_PROTOCOL = "dinov2_logreg"
CLIP_PROTOCOL = "clip_benchmark_adamw"
CLIP_WD_GRID_NAME = "logspace(-6,2,97) coarse-to-fine"
KNN_PROTOCOL = "dino_knn"


def resolve_backbones(store: Store, backbone: str, dataset: str) -> list[str]:
    """``backbone`` itself, or every backbone with a complete set of ``dataset`` for ``all``."""
    if backbone != "all":
        return [backbone]
    found = sorted(
        {
            i.backbone
            for i in store.list_features()
            if i.dataset == dataset and i.status == "complete"
        }
    )
    if not found:
        raise UnknownNameError(
            "dataset",
            dataset,
            {i.dataset for i in store.list_features()},
            hint="No backbone has complete features for it; run `bobx extract` first.",
        )
    return found


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
def run_knn(
    store: Store,
    backbone: str,
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
    for bb in resolve_backbones(store, backbone, dataset):
        train = store.features(bb, dataset, train_split)
        test = store.features(bb, dataset, pick_test_split(store, bb, dataset, test_split))
        if train.multilabel:
            raise DataError(
                f"{dataset} is multi-label; kNN classification needs one label per image."
            )
        test_x, test_y, _ = test.load()
        train_y = train.labels()
        if train.n_invalid:  # masked rows must not vote: load only the valid ones
            train_x, train_y, _ = train.load()
            blocks: Any = train_x
        else:
            blocks = train.iter_blocks()  # streamed: memory ~ one chunk + the top-k heap
        out = knn_classify(
            blocks, train_y, test_x, test_y, ks=ks, temperature=temperature, device=device
        )
        for k in ks:
            params = {
                "protocol": KNN_PROTOCOL,
                "k": int(k),
                "temperature": float(temperature),
                "train_split": train_split,
            }
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


def run_probe(
    store: Store,
    backbone: str,
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
    lr: float = 0.1,
    epochs: int = 10,
    batch_size: int = 64,
) -> list[Record]:
    """The linear probe (DINOv2 logistic regression, or ``protocol="clip_benchmark"``'s
    AdamW layer); keeps weights and test logits as an artifact and evaluates the same
    probe on ``eval_on`` datasets (out-of-distribution)."""
    from evaluators._search import l2_normalize
    from evaluators.probe import HIGHER_IS_BETTER, linear_probe

    store.check_writable()  # a read-only or full store fails now, not after the work
    records: list[Record] = []
    clip = protocol == "clip_benchmark"
    for bb in resolve_backbones(store, backbone, dataset):
        train = store.features(bb, dataset, train_split)
        test = store.features(bb, dataset, pick_test_split(store, bb, dataset, test_split))
        has_val = test.split != "val" and store.has_features(bb, dataset, "val")
        official_val = val_split or ("val" if has_val else None)
        val = store.features(bb, dataset, official_val) if official_val else None
        tx, ty, _ = train.load()
        sx, sy, _ = test.load()
        vx, vy = val.load()[:2] if val is not None else (None, None)
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
        )
        params: dict[str, Any] = {
            "protocol": CLIP_PROTOCOL if clip else PROBE_PROTOCOL,
            "selection": out["selection"],
            "fraction": fraction,
            "shots": shots,
            "seed": seed,
            "backend": out["backend"],
            "dtype": out["dtype"],
            "train_split": train_split,
        }
        if clip:
            params.update(wd_grid=CLIP_WD_GRID_NAME, lr=lr, epochs=epochs, batch_size=batch_size)
        else:
            params["c_grid"] = (
                "10**linspace(-6,5,45)" if c_grid is None else [float(c) for c in c_grid]
            )
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
        run = probe_run_name(fraction, shots, seed, protocol)
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
                "sweep": [[float(c), float(v)] for c, v in out["sweep"]],
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
def run_calibration(
    store: Store,
    backbone: str,
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
            path = plot if backbone != "all" else plot.replace(".png", f"-{bb}.png")
            reliability_diagram(probs, arrays["test_labels"], path, n_bins=n_bins)
        params = {
            "n_bins": n_bins,
            "source": "probe",
            "probe_run": run,
            "temperature_scaled": temperature_scale,
        }
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


def _probed_backbones(store: Store, backbone: str, dataset: str) -> list[str]:
    if backbone != "all":
        return [backbone]
    return sorted(
        bb
        for bb in store.objects.list_groups("artifacts/probe")
        if dataset in store.objects.list_groups(f"artifacts/probe/{bb}")
    )

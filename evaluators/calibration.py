"""Calibration metrics of a probabilistic classifier (BoB table 10).

Definitions (all computed in float64; probabilities given in fp16/fp32 are
converted first, and every row is renormalised to sum to 1, so rows that sum to
1 only up to rounding, e.g. fp16 softmax outputs, are accepted):

* ``top1``: fraction of samples whose arg-max class (ties -> smallest class
  index) is the label.
* ``ece``: expected calibration error with ``n_bins`` equal-width bins on the
  top-1 confidence ``p_max``: ``sum_b |b| / n * |acc(b) - conf(b)|``. A sample
  falls in bin ``i`` when ``i / n_bins <= p_max < (i + 1) / n_bins``; a confidence
  of exactly 1.0 (common with saturated float32 softmax) gets a bin of its own.
  This is torchmetrics' ``MulticlassCalibrationError(norm="l1")`` binning, so the
  numbers agree to rounding.
* ``nll``: mean cross-entropy ``-log p_y``, with ``p_y`` clipped to
  ``[eps, 1 - eps]`` (``eps`` of float64), as ``sklearn.metrics.log_loss`` does.
* ``brier``: multi-class Brier score, the mean over samples of
  ``sum_c (p_c - onehot(y)_c) ** 2`` (range 0..2; Brier's original definition,
  not the binary one-class version and not divided by the number of classes).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from evaluators._search import as_labels
from evaluators.errors import DataError, ShapeError

__all__ = [
    "HIGHER_IS_BETTER",
    "calibration_metrics",
    "fit_temperature",
    "reliability_bins",
    "reliability_diagram",
    "softmax",
]

#: Direction of every metric :func:`calibration_metrics` returns.
HIGHER_IS_BETTER: dict[str, bool] = {"ece": False, "nll": False, "brier": False, "top1": True}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64 (numerically stable).

    Shape: ``(n, C) -> (n, C)``.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ShapeError(f"logits must be 2-D (n_samples, n_classes), got shape {z.shape}.")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ShapeError(f"temperature must be a positive number, got {temperature!r}.")
    z = z / temperature
    z = z - np.max(z, axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs)
    y = np.asarray(labels)
    if p.ndim != 2 or not np.issubdtype(p.dtype, np.number):
        raise ShapeError(
            f"probs must be a 2-D float array (n, n_classes), got {p.shape} {p.dtype}."
        )
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ShapeError(
            f"labels must be 1-D with one entry per row of probs ({p.shape[0]}), got {y.shape}."
        )
    y = as_labels(y, "labels")
    if y.size and y.max() >= p.shape[1]:
        raise ShapeError(
            f"labels must lie in [0, {p.shape[1]}) (the columns of probs); got values "
            f"{int(y.min())}..{int(y.max())}. Map them to column indices first."
        )
    p = p.astype(np.float64)
    if p.shape[0] == 0:
        raise ShapeError("probs is empty; calibration needs at least one sample.")
    if not np.isfinite(p).all() or (p < 0).any():
        raise DataError(
            "probs must be finite and non-negative; pass probabilities "
            "(e.g. evaluators.calibration.softmax(logits)), not logits."
        )
    sums = p.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise DataError("a row of probs sums to 0; pass probabilities, not masks.")
    return p / sums, y


def reliability_bins(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> dict[str, Any]:
    """Per-bin statistics of the top-1 confidence (the data of a reliability diagram).

    Parameters
    ----------
    probs : array of shape (n, C)
    labels : int array of shape (n,)
    n_bins : int, keyword-only

    Returns
    -------
    dict
        ``"edges"`` (n_bins + 1,), and for the ``n_bins + 1`` bins (the last holds
        confidence exactly 1.0): ``"count"`` (int), ``"accuracy"``, ``"confidence"``
        (mean per bin, NaN where empty), each an ndarray of shape (n_bins + 1,).
    """
    if not (isinstance(n_bins, int | np.integer) and n_bins >= 1):
        raise ShapeError(f"n_bins must be a positive integer, got {n_bins!r}.")
    p, y = _check(probs, labels)
    return _bins(p, y, int(n_bins))


def _bins(p: np.ndarray, y: np.ndarray, n_bins: int) -> dict[str, Any]:
    conf = p.max(axis=1)
    correct = (np.argmax(p, axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges, conf, side="right") - 1  # [lo, hi); conf == 1 -> n_bins
    count = np.bincount(idx, minlength=n_bins + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=n_bins + 1) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins + 1) / count
    return {"edges": edges, "count": count, "accuracy": acc, "confidence": mean_conf}


def calibration_metrics(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> dict:
    """ECE, NLL, Brier score and top-1 accuracy (definitions in the module docstring).

    Parameters
    ----------
    probs : array of shape (n, C)
        Predicted class probabilities (any float dtype; rows are renormalised).
    labels : int array of shape (n,)
        True classes in ``[0, C)``.
    n_bins : int, keyword-only
        Number of equal-width confidence bins (protocol: 15).

    Returns
    -------
    dict
        ``{"ece", "nll", "brier", "top1"}``, floats; directions in
        :data:`HIGHER_IS_BETTER`.
    """
    if not (isinstance(n_bins, int | np.integer) and n_bins >= 1):
        raise ShapeError(f"n_bins must be a positive integer, got {n_bins!r}.")
    p, y = _check(probs, labels)
    n = p.shape[0]
    b = _bins(p, y, int(n_bins))
    full = b["count"] > 0
    ece = float(np.sum(b["count"][full] / n * np.abs(b["accuracy"][full] - b["confidence"][full])))
    eps = np.finfo(np.float64).eps
    p_true = np.clip(p[np.arange(n), y], eps, 1 - eps)
    onehot = np.zeros_like(p)
    onehot[np.arange(n), y] = 1.0
    return {
        "ece": ece,
        "nll": float(-np.mean(np.log(p_true))),
        "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
        "top1": float(np.mean(np.argmax(p, axis=1) == y)),
    }


def reliability_diagram(
    probs: np.ndarray, labels: np.ndarray, path: str | Path, *, n_bins: int = 15
) -> Path:
    """Write a reliability diagram (accuracy vs confidence per bin) to ``path``.

    The format follows the suffix of ``path`` (``.png``, ``.svg``, ``.pdf``).

    Bars show per-bin accuracy, the diagonal is perfect calibration, the gap to the
    bin's mean confidence is shaded; the title carries ECE and top-1. Shapes as in
    :func:`calibration_metrics`. Returns the written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = reliability_bins(probs, labels, n_bins=n_bins)
    m = calibration_metrics(probs, labels, n_bins=n_bins)
    edges = b["edges"]
    width = edges[1] - edges[0]
    acc = np.nan_to_num(b["accuracy"][:n_bins])
    conf = np.nan_to_num(b["confidence"][:n_bins])
    full = b["count"][:n_bins] > 0
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.bar(edges[:-1], acc, width=width, align="edge", edgecolor="black", label="accuracy")
    ax.bar(
        edges[:-1][full],
        (conf - acc)[full],
        bottom=acc[full],
        width=width,
        align="edge",
        color="red",
        alpha=0.3,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ECE {100 * m['ece']:.2f}%  top-1 {100 * m['top1']:.2f}%  ({n_bins} bins)")
    ax.legend(loc="upper left")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def fit_temperature(logits_val: np.ndarray, y_val: np.ndarray) -> float:
    """Temperature ``T > 0`` minimising the NLL of ``softmax(logits_val / T)``.

    The NLL is convex in ``1 / T``, so a bounded scalar search over ``log(1 / T)``
    in ``[-12, 12]`` finds the global minimum. Shapes: ``(n, C)``, ``(n,)``.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    z = np.asarray(logits_val, dtype=np.float64)
    if z.ndim != 2:
        raise ShapeError(f"logits_val must be 2-D (n, n_classes), got shape {z.shape}.")
    if not np.isfinite(z).all():
        raise DataError("logits_val holds NaN or infinite values.")
    _, y = _check(np.ones_like(z), y_val)
    z_true = z[np.arange(z.shape[0]), y]

    def nll(log_beta: float) -> float:
        beta = math.exp(log_beta)
        return float(np.mean(logsumexp(beta * z, axis=1) - beta * z_true))

    res = minimize_scalar(nll, bounds=(-12.0, 12.0), method="bounded", options={"xatol": 1e-10})
    return float(math.exp(-res.x))

"""Linear probes on frozen features: DINOv2 ``log_regression`` and CLIP_benchmark.

Protocol (``guide/protocols.md``), which is the default here:

* L2-regularised multinomial logistic regression fitted by L-BFGS, max_iter 1000,
  tol 1e-12, float64, with scikit-learn's objective
  ``sum_i CE(x_i W^T + b, y_i) + 1 / (2 C) * ||W||_F^2`` (bias not penalised);
  two classes use sklearn's binary parameterisation (one weight vector, sigmoid).
* C swept over the 45 values ``10 ** linspace(-6, 5, 45)``; C is chosen by top-1
  on the official validation split when given, otherwise on a seeded, stratified
  10 % holdout of train. Equal validation scores pick the smallest C (the first
  maximum, as DINOv2's metric tracker does).
* The final model is refitted with the chosen C on train + validation.

Documented choices and deviations:

* DINOv2 draws its 10 % holdout with ``torch.randperm``; bobx stratifies it by
  class (each class keeps at least one training item), as the BoB brief asks.
* Low-shot (``fraction`` / ``shots``) subsets are drawn from the train part
  *after* the holdout is removed, and the final model is refitted on the subset
  only: validation items used to choose C never enter training.
* Backends minimise the same objective. ``"sklearn"`` (the reference) fits
  ``LogisticRegression(solver="lbfgs")`` from scratch for every C. ``"torch"``
  evaluates loss and gradient with torch (CPU or CUDA; float64 by default,
  float32 optional) and drives scipy's L-BFGS-B with sklearn's settings (memory
  10, 50 line-search steps, ``gtol=tol``, ``ftol=64 * eps``), warm-starting each
  C along the ascending C path (the parabola through the three previous
  solutions, extrapolated in log C). Warm starts change where the optimiser
  starts, not the optimum; with ``dtype="float32"`` the ``ftol`` rule becomes
  ``eps(float32)``. ``"cuml"`` uses cuML's L-BFGS (GPU) when importable
  (``penalty_normalized=True``: sklearn's C).
* Convergence is reported, never hidden: each sweep point carries ``n_iter``,
  ``converged`` and the ``objective`` reached, ``n_unconverged`` counts the fits
  that stopped at ``max_iter``, and a :class:`ProbeConvergenceWarning` says when
  the chosen C, its runner-up or the refit did not converge. Where fits hit
  ``max_iter`` (large C on features that are nearly separable), warm starts
  reach lower objectives than cold ones, so the two paths can choose different
  C values; ``warm_start=False`` fits every C from zero, as DINOv2 and
  scikit-learn do.
* Features are not standardised (the protocol's objective is on raw features).
* ``sweep_patience`` (off by default) stops the sweep after that many C values
  in a row without a better validation score; a deviation, recorded in the result.

``protocol="clip_benchmark"`` instead trains an ``nn.Linear`` with AdamW on
L2-normalised features for each weight decay of CLIP_benchmark's coarse-to-fine
search (see :class:`_AdamWBackend` and :func:`_clip_sweep`); the split, low-shot
and refit rules above are shared.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluators._search import as_labels
from evaluators.errors import BobxError, ShapeError, UnavailableError, UnknownNameError

__all__ = [
    "BACKENDS",
    "CLIP_WD_GRID",
    "DEFAULT_C_GRID",
    "HIGHER_IS_BETTER",
    "PROTOCOLS",
    "ProbeConvergenceWarning",
    "classification_metrics",
    "linear_probe",
    "sample_fraction",
    "sample_shots",
    "stratified_holdout",
    "training_rows",
]

#: The DINOv2 sweep: 45 values of C, ``10 ** linspace(-6, 5, 45)``.
DEFAULT_C_GRID: np.ndarray = 10.0 ** np.linspace(-6, 5, 45)
BACKENDS = ("auto", "sklearn", "torch", "cuml")
#: ``"dinov2"``: L-BFGS logistic regression over a C grid (the default);
#: ``"clip_benchmark"``: AdamW linear layer over a coarse-to-fine weight-decay grid.
PROTOCOLS = ("dinov2", "clip_benchmark")
#: CLIP_benchmark's weight-decay grid, ``logspace(-6, 2, 97)``, and its coarse points.
CLIP_WD_GRID: np.ndarray = np.logspace(-6, 2, 97)
CLIP_WD_COARSE = tuple(range(0, 97, 16))  # indices 0, 16, ..., 96
_DTYPES = ("float64", "float32")
# Multiply-adds per logit evaluation (n * d * outputs) below which the torch backend
# runs single-threaded on the CPU (see _TorchBackend._runtime).
_SMALL_WORK = 1 << 23

#: Direction of every metric :func:`linear_probe` returns.
HIGHER_IS_BETTER: dict[str, bool] = {
    "top1": True,
    "top5": True,
    "mean_per_class_recall": True,
    "macro_auc": True,
    "val_top1": True,
    "val_macro_auc": True,
}


class ProbeError(BobxError):
    """Probe options that do not fit together or data a probe cannot be fitted on."""


class ProbeConvergenceWarning(UserWarning):
    """The C chosen by the sweep (or its runner-up, or the refit) stopped at ``max_iter``."""


# ------------------------------------------------------------------ sampling helpers


def _class_rng(seed: int, cls: int, stream: int) -> np.random.Generator:
    # One independent stream per (seed, class, purpose): a class's draw does not
    # depend on the other classes, so subsets are nested across fractions / shots.
    return np.random.default_rng([int(seed), int(cls), stream])


def sample_fraction(y: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Stratified subset keeping the label distribution.

    Each class ``c`` with ``n_c`` items contributes ``max(1, round(fraction * n_c))``
    items (round half up), drawn with a generator seeded by ``(seed, c)``, so the
    subset is deterministic per seed and nested: with the same seed the 1 % subset
    is contained in the 10 % subset.

    Shapes: ``y`` (n,) int -> sorted int64 indices into ``y``.
    """
    y = as_labels(y, "y")
    if not (isinstance(fraction, float | int) and 0 < fraction <= 1):
        raise ProbeError(f"fraction must be in (0, 1], got {fraction!r} (e.g. 0.01 for 1 %).")
    picks = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n_take = max(1, math.floor(fraction * idx.size + 0.5))
        picks.append(_class_rng(seed, c, 1).permutation(idx)[:n_take])
    return np.sort(np.concatenate(picks)) if picks else np.empty(0, np.int64)


def sample_shots(y: np.ndarray, shots: int, seed: int = 0) -> np.ndarray:
    """``shots`` items per class (all of a class's items if it has fewer).

    Deterministic per seed and nested across ``shots`` (same per-class streams as
    :func:`sample_fraction`). Shapes: ``y`` (n,) int -> sorted int64 indices.
    """
    y = as_labels(y, "y")
    if not (isinstance(shots, int | np.integer) and shots >= 1):
        raise ProbeError(f"shots must be a positive integer (items per class), got {shots!r}.")
    picks = [
        _class_rng(seed, c, 1).permutation(np.flatnonzero(y == c))[: int(shots)]
        for c in np.unique(y)
    ]
    return np.sort(np.concatenate(picks)) if picks else np.empty(0, np.int64)


def stratified_holdout(
    y: np.ndarray, holdout: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, holdout), stratified by class, seeded.

    Class ``c`` sends ``round(holdout * n_c)`` items (round half up) to the holdout
    but always keeps at least one in train. Multi-label ``y`` (n, L) gets a plain
    seeded random split of ``round(holdout * n)`` rows.

    Returns sorted int64 ``(train_idx, holdout_idx)``.
    """
    if not 0 < holdout < 1:
        raise ProbeError(f"holdout must be in (0, 1), got {holdout!r}; the protocol uses 0.1.")
    y = np.asarray(y)
    if y.ndim == 2:
        n = y.shape[0]
        perm = np.random.default_rng([int(seed), 0, 2]).permutation(n)
        n_val = math.floor(holdout * n + 0.5)
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    y = as_labels(y, "y")
    train, val = [], []
    for c in np.unique(y):
        perm = _class_rng(seed, c, 2).permutation(np.flatnonzero(y == c))
        n_val = min(math.floor(holdout * perm.size + 0.5), perm.size - 1)
        val.append(perm[:n_val])
        train.append(perm[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def training_rows(
    train_y: np.ndarray,
    *,
    official_val: bool,
    holdout: float = 0.1,
    seed: int = 0,
    fraction: float | None = None,
    shots: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows of train a model fits on, and the rows held out to choose its knobs.

    Without an official validation split, a seeded stratified ``holdout`` of train is set
    aside (:func:`stratified_holdout`); the low-shot subset (``fraction`` or ``shots``) is
    then drawn from what remains, so few-shot training never sees the items used for
    selection. The probe and the fine-tuning jobs both call this, so a backbone's probe
    and its fine-tune see the same images.

    Returns sorted int64 ``(fit_idx, holdout_idx)``; ``holdout_idx`` is None with an
    official validation split.
    """
    if fraction is not None and shots is not None:
        raise ProbeError("pass fraction or shots, not both.")
    if official_val:
        pool, val_idx = np.arange(np.asarray(train_y).shape[0]), None
    else:
        pool, val_idx = stratified_holdout(train_y, holdout, seed)
        if val_idx.size == 0:
            raise ProbeError(
                "the holdout is empty (too few training items per class); pass val_x/val_y "
                "or a larger holdout."
            )
    labels = np.asarray(train_y)[pool]
    if fraction is not None:
        return pool[sample_fraction(labels, fraction, seed)], val_idx
    if shots is not None:
        return pool[sample_shots(labels, shots, seed)], val_idx
    return pool, val_idx


def classification_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Test metrics of class scores: ``top1``, ``top5`` and ``mean_per_class_recall``
    for labels ``y`` (n,), or ``macro_auc`` for a 0/1 matrix ``y`` (n, L) (multi-label).

    Shapes: ``logits`` (n, C); the probe's own metric code, for scores from any model."""
    z, labels = np.asarray(logits, dtype=np.float64), np.asarray(y)
    if z.ndim != 2 or z.shape[0] != labels.shape[0]:
        raise ShapeError(f"logits {z.shape} do not match labels {labels.shape}.")
    if labels.ndim == 2:
        return {"macro_auc": _macro_auc(z, labels)}
    return _single_label_metrics(z, as_labels(labels, "y"))


# ------------------------------------------------------------------ problem encoding


@dataclass(frozen=True)
class _Task:
    """How labels map to model outputs.

    ``mode="softmax"``: K >= 3 fitted classes, ``targets`` compact class ids.
    ``mode="sigmoid"``: independent logistic outputs (binary: one output for the
    second fitted class; multi-label: one per label), ``targets`` (n, M) 0/1 floats.
    """

    mode: str
    n_out: int
    classes: np.ndarray  # original class id of each fitted class (single-label)
    multilabel: bool


def _encode(
    y: np.ndarray, multilabel: bool, binary_softmax: bool = False
) -> tuple[_Task, np.ndarray]:
    if multilabel:
        return _Task("sigmoid", y.shape[1], np.arange(y.shape[1]), True), y.astype(np.float64)
    classes = np.unique(y)
    if classes.size < 2:
        raise ProbeError(
            f"the training set holds a single class ({classes.tolist()}); a probe needs "
            "at least two. Check the labels or use a larger fraction / more shots."
        )
    compact = np.searchsorted(classes, y)
    if classes.size == 2 and not binary_softmax:
        return _Task("sigmoid", 1, classes, False), (compact == 1).astype(np.float64)[:, None]
    return _Task("softmax", classes.size, classes, False), compact


def _expand(task: _Task, w: np.ndarray, b: np.ndarray, n_classes: int, dim: int):
    """Model parameters -> (n_classes, D) weights and (n_classes,) bias, float64.

    Binary: row of the first fitted class is 0 (softmax of [0, z] equals the sigmoid
    of z). Classes absent from the fitted data get bias -inf (never predicted).
    """
    if task.multilabel:
        return w, b
    weights = np.zeros((n_classes, dim))
    bias = np.full(n_classes, -np.inf)
    if task.mode == "sigmoid":
        weights[task.classes[1]] = w[0]
        bias[task.classes[0]], bias[task.classes[1]] = 0.0, b[0]
    else:
        weights[task.classes] = w
        bias[task.classes] = b
    return weights, bias


# ------------------------------------------------------------------ metrics


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - np.max(z, axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _topk_hits(logits: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # ties -> smaller class id
    return (order == y[:, None]).any(axis=1)


def _single_label_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    if y.size == 0:
        return {"top1": math.nan, "top5": math.nan, "mean_per_class_recall": math.nan}
    pred = np.argmax(logits, axis=1)
    recalls = [float(np.mean(pred[y == c] == c)) for c in np.unique(y)]
    return {
        "top1": float(np.mean(pred == y)),
        "top5": float(np.mean(_topk_hits(logits, y, 5))),
        "mean_per_class_recall": float(np.mean(recalls)),
    }


def _macro_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Mean ROC AUC over labels that have both positives and negatives in ``y``."""
    from sklearn.metrics import roc_auc_score

    aucs = [
        roc_auc_score(y[:, j], scores[:, j])
        for j in range(y.shape[1])
        if 0 < y[:, j].sum() < y.shape[0]
    ]
    return float(np.mean(aucs)) if aucs else math.nan


# ------------------------------------------------------------------ backends


class _Fit:
    """One fitted model: weights (n_out, D), bias (n_out,), iterations, whether the solver
    stopped on its tolerance before ``max_iter`` (None: no such notion, AdamW's fixed
    schedule) and the objective reached (:func:`_objective`'s scale; None for AdamW)."""

    def __init__(
        self,
        w: np.ndarray,
        b: np.ndarray,
        n_iter: int,
        converged: bool | None,
        objective: float | None = None,
    ) -> None:
        self.w, self.b, self.n_iter, self.converged = w, b, n_iter, converged
        self.objective = objective


def _objective(x: np.ndarray, task: _Task, t: np.ndarray, C: float, w: np.ndarray, b: np.ndarray):
    """The L-BFGS objective per sample, float64, as scikit-learn's solver sees it:
    ``mean_i CE(x_i W^T + b, y_i) + ||W||^2 / (2 C n)`` (sigmoid outputs: the sum over
    outputs of each output's own objective; an output with a constant label and infinite
    bias contributes 0)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    finite = np.isfinite(b)
    z = x @ w[finite].T + b[finite]
    if task.mode == "softmax":
        top = z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]
        loss = float(np.sum(lse - z[np.arange(n), t]))
    else:
        y = t[:, finite]
        loss = float(np.sum(np.logaddexp(0.0, z) - y * z))
    return loss / n + float(np.sum(w[finite] ** 2)) / (2.0 * C * n)


class _SklearnBackend:
    """Reference: scikit-learn LogisticRegression(lbfgs), fresh fit per C, float64."""

    name = "sklearn"
    warm = False

    def __init__(self, *, max_iter: int, tol: float, device: str, dtype: str) -> None:
        if device != "cpu":
            raise ProbeError("backend='sklearn' runs on the CPU; use backend='torch' for cuda.")
        self.max_iter, self.tol = max_iter, tol

    def _estimator(self, C: float) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, solver="lbfgs", max_iter=self.max_iter, tol=self.tol)

    def fit(self, x: np.ndarray, task: _Task, t: np.ndarray, C: float, init: Any = None) -> _Fit:
        from sklearn.exceptions import ConvergenceWarning

        x = np.asarray(x, dtype=np.float64)
        cols = range(task.n_out) if task.mode == "sigmoid" else [None]
        ws, bs, iters = [], [], []
        for j in cols:
            target = t if j is None else t[:, j]
            if j is not None and target.min() == target.max():  # constant label column
                ws.append(np.zeros((1, x.shape[1])))
                bs.append(np.array([np.inf if target[0] > 0 else -np.inf]))
                iters.append(0)
                continue
            est = self._estimator(C)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                est.fit(x, target)
            ws.append(np.asarray(est.coef_, dtype=np.float64).reshape(-1, x.shape[1]))
            bs.append(np.asarray(est.intercept_, dtype=np.float64).reshape(-1))
            iters.append(int(np.max(est.n_iter_)))
        n_iter = max(iters)
        w, b = np.concatenate(ws), np.concatenate(bs)
        return _Fit(w, b, n_iter, n_iter < self.max_iter, _objective(x, task, t, C, w, b))


class _CumlBackend(_SklearnBackend):
    """cuML LogisticRegression (GPU L-BFGS), DINOv2's own choice; C passed as is."""

    name = "cuml"

    def __init__(self, *, max_iter: int, tol: float, device: str, dtype: str) -> None:
        try:
            import cuml.linear_model  # noqa: F401
        except ImportError as exc:
            raise UnavailableError(
                "backend='cuml' needs RAPIDS cuML (pip install bobx[gpu] on a CUDA machine); "
                "use backend='torch' instead."
            ) from exc
        self.max_iter, self.tol = max_iter, tol

    def _estimator(self, C: float) -> Any:
        from cuml.linear_model import LogisticRegression

        return LogisticRegression(
            C=C,
            max_iter=self.max_iter,
            tol=self.tol,
            linesearch_max_iter=50,
            output_type="numpy",
        )

    def fit(self, x: np.ndarray, task: _Task, t: np.ndarray, C: float, init: Any = None) -> _Fit:
        fit = super().fit(x, task, t, C)
        if fit.w.shape[1] != x.shape[1] and fit.w.shape[0] == x.shape[1]:  # (D, K) layout
            fit.w = fit.w.T
        return fit


def _cold_start(task: _Task, t: np.ndarray, dim: int) -> np.ndarray:
    """W = 0 and the bias at its optimum for W = 0 (log class frequencies).

    This is the exact solution as C -> 0, so the sweep's first (smallest) C starts
    next to its optimum instead of spending hundreds of iterations on the badly
    scaled bias-only directions. Same objective, only the starting point differs.
    """
    theta = np.zeros((task.n_out, dim + 1))
    if task.mode == "softmax":
        freq = np.bincount(t, minlength=task.n_out) / t.shape[0]
        theta[:, dim] = np.log(freq)
    else:
        p = np.clip(t.mean(axis=0), 1e-12, 1 - 1e-12)
        theta[:, dim] = np.log(p) - np.log1p(-p)
    return theta.ravel()


class _TorchBackend:
    """Loss/gradient in torch (CPU or CUDA), scipy L-BFGS-B with sklearn's settings.

    ``warm=True`` (the default): the sweep starts each C from the solution path (see
    :func:`_path_start`), its first C from :func:`_cold_start`. ``warm=False``: every fit
    starts from zero, as scikit-learn's and DINOv2's (cuML's) fits do."""

    name = "torch"

    def __init__(
        self, *, max_iter: int, tol: float, device: str, dtype: str, warm: bool = True
    ) -> None:
        self.warm = bool(warm)
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - torch is a dependency
            raise UnavailableError("backend='torch' needs torch; use backend='sklearn'.") from exc
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UnavailableError("device='cuda' was requested but no CUDA GPU is visible.")
        self.torch = torch
        self.device = torch.device(device)
        self.dtype = torch.float64 if dtype == "float64" else torch.float32
        # scipy's ftol: sklearn's 64 * eps in float64. In float32 the loss is only good to
        # ~eps(float32) relative, and 64 * eps(float32) stops visibly early at small C.
        self.ftol = (
            64 * np.finfo(np.float64).eps if dtype == "float64" else np.finfo(np.float32).eps
        )
        self.max_iter, self.tol = max_iter, tol
        self._x_src: np.ndarray | None = None  # kept alive so `is` identifies it
        self._x: Any = None

    def _tensor(self, x: np.ndarray) -> Any:
        if x is not self._x_src:  # the sweep refits on the same array: convert once
            self._x = self.torch.as_tensor(
                np.ascontiguousarray(x), dtype=self.dtype, device=self.device
            )
            self._x_src = x
        return self._x

    def fit(self, x: np.ndarray, task: _Task, t: np.ndarray, C: float, init: Any = None) -> _Fit:
        from scipy.optimize import minimize

        torch = self.torch
        X = self._tensor(x)
        n, dim = X.shape
        m = task.n_out
        if task.mode == "softmax":
            target = torch.as_tensor(t, dtype=torch.long, device=self.device)
        else:
            target = torch.as_tensor(t, dtype=self.dtype, device=self.device)
        cols = torch.arange(n, device=self.device)
        # samples per chunk: bounds the (m, chunk) logit matrix (the only O(n * m) buffer)
        chunk = max(1, (1 << (27 if self.device.type == "cuda" else 24)) // max(m, 1))
        reg = 1.0 / (C * n)

        def loss_grad(theta_np: np.ndarray) -> tuple[float, np.ndarray]:
            theta = torch.as_tensor(theta_np, device=self.device).to(self.dtype).view(m, dim + 1)
            W, b = theta[:, :dim], theta[:, dim:]
            loss = torch.zeros((), dtype=torch.float64, device=self.device)
            gW = gb = None
            for a in range(0, n, chunk):
                Xc = X[a : a + chunk]
                # class-major logits (m, chunk): W @ X^T runs ~1.9x faster than X @ W^T
                # in float64 on the CPU (MKL), and the gradient G^T X below reads G as is
                Z = torch.addmm(b, W, Xc.T)
                if task.mode == "softmax":
                    yc = target[a : a + chunk]
                    c = cols[: Z.shape[1]]
                    # CE = log sum_c e^(z_c - max) - (z_y - max); one exp pass serves the
                    # loss and the gradient softmax(z) - onehot(y)
                    Z -= Z.amax(dim=0, keepdim=True)
                    E = torch.exp(Z)
                    s = E.sum(dim=0)
                    loss += (torch.log(s) - Z[yc, c]).sum(dtype=torch.float64)
                    G = E.div_(s)
                    G[yc, c] -= 1.0
                else:
                    Yc = target[a : a + chunk].T
                    # log(1 + e^z) - y z, computed stably
                    sp = Z.clamp(min=0) + torch.log1p(torch.exp(-Z.abs()))
                    loss += (sp - Yc * Z).sum(dtype=torch.float64)
                    G = torch.sigmoid(Z).sub_(Yc)
                gW = G @ Xc if gW is None else gW.addmm_(G, Xc)
                gb = G.sum(dim=1) if gb is None else gb + G.sum(dim=1)
            assert gW is not None and gb is not None
            loss = loss / n + 0.5 * reg * (W.double() ** 2).sum()
            grad = torch.cat([gW / n + reg * W, (gb / n)[:, None]], dim=1)
            return float(loss), grad.double().cpu().numpy().ravel()

        if init is not None:
            x0 = np.asarray(init, np.float64).ravel()
        else:
            x0 = _cold_start(task, t, dim) if self.warm else np.zeros(m * (dim + 1))
        with self._runtime(n * dim * m):
            res = minimize(
                loss_grad,
                x0,
                jac=True,
                method="L-BFGS-B",
                options={
                    "maxiter": self.max_iter,
                    "maxls": 50,
                    "gtol": self.tol,
                    "ftol": float(self.ftol),
                },
            )
        theta = res.x.reshape(m, dim + 1)
        n_iter = int(res.nit)
        converged = n_iter < self.max_iter
        return _Fit(theta[:, :dim].copy(), theta[:, dim].copy(), n_iter, converged, float(res.fun))

    @contextlib.contextmanager
    def _runtime(self, work: int) -> Iterator[None]:
        """Thread pools for one fit; full float32 matmul precision on CUDA.

        scipy's L-BFGS-B does its vector updates with numpy's and scipy's own
        OpenBLAS pools while torch runs the matmuls in its pool. With several pools
        busy-waiting on the same cores, a float64 fit measured 3-4x slower on a
        2-core machine; the vector updates are tiny, so the BLAS pools get one
        thread. Small problems (an evaluation well under a millisecond) also run
        torch single-threaded: waking a pool costs more than it saves.
        """
        from threadpoolctl import threadpool_limits

        if self.device.type != "cpu":  # no TF32: gradients must be float32-exact
            precision = self.torch.get_float32_matmul_precision()
            self.torch.set_float32_matmul_precision("highest")
            try:
                with threadpool_limits(1, user_api="blas"):
                    yield
            finally:
                self.torch.set_float32_matmul_precision(precision)
            return
        before = self.torch.get_num_threads()
        if work < _SMALL_WORK:
            self.torch.set_num_threads(1)
        try:
            with threadpool_limits(1, user_api="blas"):
                yield
        finally:
            self.torch.set_num_threads(before)

    @staticmethod
    def init_from(fit: _Fit) -> np.ndarray:
        return np.concatenate([fit.w, fit.b[:, None]], axis=1)


class _AdamWBackend:
    """CLIP_benchmark's probe: ``nn.Linear`` trained with AdamW on mini-batches.

    Per fit: ``torch.manual_seed(seed)`` then the default ``nn.Linear`` init;
    AdamW (betas 0.9/0.999, eps 1e-8, decoupled weight decay on every parameter);
    mean cross-entropy; a cosine learning-rate schedule without warmup over
    ``epochs * ceil(n / batch_size)`` steps, set before each step; each epoch a
    fresh permutation drawn the way ``DataLoader(shuffle=True)`` draws it from
    the seeded global generator (last batch kept). The global torch RNG state is
    restored afterwards. Float32 throughout (CLIP_benchmark uses CUDA autocast).
    """

    name = "adamw"
    warm = False

    def __init__(self, *, lr: float, epochs: int, batch_size: int, seed: int, device: str) -> None:
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UnavailableError("device='cuda' was requested but no CUDA GPU is visible.")
        for name, value in (("lr", lr), ("epochs", epochs), ("batch_size", batch_size)):
            if not (np.isfinite(value) and value > 0):
                raise ProbeError(f"{name} must be positive, got {value!r}.")
        self.torch, self.device = torch, torch.device(device)
        self.lr, self.epochs, self.batch_size = float(lr), int(epochs), int(batch_size)
        self.seed = int(seed)

    def fit(self, x: np.ndarray, task: _Task, t: np.ndarray, wd: float, init: Any = None) -> _Fit:
        torch = self.torch
        n, dim = x.shape
        X = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=self.device)
        Y = torch.as_tensor(t, dtype=torch.long, device=self.device)
        per_epoch = math.ceil(n / self.batch_size)
        steps = self.epochs * per_epoch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            layer = torch.nn.Linear(dim, task.n_out).to(self.device)
            opt = torch.optim.AdamW(layer.parameters(), lr=self.lr, weight_decay=float(wd))
            loss_fn = torch.nn.CrossEntropyLoss()
            shuffle = torch.Generator()
            for epoch in range(self.epochs):
                # a DataLoader iterator draws its base seed, then its RandomSampler's seed
                torch.empty((), dtype=torch.int64).random_()
                shuffle.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
                order = torch.randperm(n, generator=shuffle).to(self.device)
                for i in range(per_epoch):
                    step = epoch * per_epoch + i
                    for group in opt.param_groups:
                        group["lr"] = 0.5 * (1 + math.cos(math.pi * step / steps)) * self.lr
                    batch = order[i * self.batch_size : (i + 1) * self.batch_size]
                    opt.zero_grad()
                    loss_fn(layer(X[batch]), Y[batch]).backward()
                    opt.step()
        w = layer.weight.detach().double().cpu().numpy()
        b = layer.bias.detach().double().cpu().numpy()
        return _Fit(w, b, steps, None)


def _point(key: str, value: float, score: float, fit: _Fit) -> dict[str, Any]:
    """One sweep point: the swept value, its validation score and how the fit ended."""
    return {
        key: float(value),
        "val_score": float(score),
        "n_iter": int(fit.n_iter),
        "converged": fit.converged,
        "objective": fit.objective,
    }


def _c_sweep(
    fit_one: Any, grid: np.ndarray, score: Any, *, warm: bool, patience: int | None
) -> tuple[tuple[float, float, _Fit], list[dict[str, Any]]]:
    """The DINOv2 sweep: C ascending, the first best validation score wins.

    Warm backends start each C from the solution path extrapolated in log C
    (:func:`_path_start`). ``patience`` stops after that many C values in a row
    without a better score. Returns ``((C, score, fit), points)``, one
    :func:`_point` per fitted C.
    """
    sweep: list[dict[str, Any]] = []
    best: tuple[float, float, _Fit] | None = None
    since_best = 0
    path: list[tuple[float, np.ndarray]] = []  # (log C, parameters) of the last three fits
    for C in grid:
        fit = fit_one(C, _path_start(path, math.log(C)) if warm else None)
        path = [*path[-2:], (math.log(C), _TorchBackend.init_from(fit))]
        value = score(fit)
        sweep.append(_point("C", C, value, fit))
        if best is None or value > best[1]:  # strict: ties keep the smaller C
            best, since_best = (float(C), value, fit), 0
        else:
            since_best += 1
            if patience is not None and since_best >= patience:
                break
    assert best is not None  # the grid is never empty (see _grid)
    return best, sweep


def _clip_sweep(
    fit_one: Any, score: Any
) -> tuple[int, list[dict[str, Any]], dict[int, tuple[float, _Fit]]]:
    """CLIP_benchmark's coarse-to-fine weight-decay search over :data:`CLIP_WD_GRID`.

    The 7 coarse points first, then ``[peak - s, peak, peak + s]`` (clipped to the
    grid) for ``s = 8, 4, 2, 1``. Within each round the first strictly better
    validation top-1 wins, starting from index 0 at accuracy 0, as in
    CLIP_benchmark's ``find_peak``. Fits are deterministic, so each index is
    fitted once and re-used when a round asks for it again.
    """
    done: dict[int, tuple[float, _Fit]] = {}
    sweep: list[dict[str, Any]] = []

    def find_peak(idxs: Sequence[int]) -> int:
        best_idx, best_acc = 0, 0.0
        for idx in idxs:
            if idx not in done:
                fit = fit_one(float(CLIP_WD_GRID[idx]))
                done[idx] = (score(fit), fit)
                sweep.append(_point("weight_decay", CLIP_WD_GRID[idx], done[idx][0], fit))
            if best_acc < done[idx][0]:
                best_idx, best_acc = idx, done[idx][0]
        return best_idx

    peak = find_peak(CLIP_WD_COARSE)
    span = 8
    while span > 0:
        peak = find_peak([max(peak - span, 0), peak, min(peak + span, CLIP_WD_GRID.size - 1)])
        span //= 2
    return peak, sweep, done  # index 0 is a coarse point: the peak is always fitted


_BACKEND_CLASSES: dict[str, type] = {
    "sklearn": _SklearnBackend,
    "torch": _TorchBackend,
    "cuml": _CumlBackend,
}


def _make_backend(backend: str, *, warm: bool = True, **kw: Any) -> Any:
    if backend not in BACKENDS:
        raise UnknownNameError("backend", backend, BACKENDS)
    if kw["dtype"] not in _DTYPES:
        raise UnknownNameError("dtype", kw["dtype"], _DTYPES)
    if backend == "auto":
        try:
            return _TorchBackend(warm=warm, **kw)
        except UnavailableError:
            if kw["device"] != "cpu":
                raise
            return _SklearnBackend(**kw)
    if backend == "torch":
        return _TorchBackend(warm=warm, **kw)
    return _BACKEND_CLASSES[backend](**kw)


# ------------------------------------------------------------------ the probe


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    val_x: np.ndarray | None = None,
    val_y: np.ndarray | None = None,
    c_grid: Sequence[float] | np.ndarray | None = None,
    holdout: float = 0.1,
    seed: int = 0,
    fraction: float | None = None,
    shots: int | None = None,
    backend: str = "auto",
    device: str = "cpu",
    dtype: str = "float64",
    max_iter: int = 1000,
    tol: float = 1e-12,
    num_classes: int | None = None,
    sweep_patience: int | None = None,
    warm_start: bool = True,
    protocol: str = "dinov2",
    lr: float = 0.1,
    epochs: int = 10,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Fit and evaluate a linear probe: DINOv2 logistic regression (default) or CLIP_benchmark.

    Parameters
    ----------
    train_x : array of shape (n_train, d)
    train_y : int array of shape (n_train,), or 0/1 array of shape (n_train, L)
        Class indices; a 2-D 0/1 matrix means multi-label (one-vs-rest, macro AUC).
    test_x : array of shape (n_test, d)
    test_y : array of shape (n_test,) or (n_test, L)
    val_x, val_y : official validation split, optional, keyword-only
        If given, C is chosen on it and the final model is refitted on train + val.
        Otherwise a seeded stratified ``holdout`` fraction of train is used.
    c_grid : sequence of float, keyword-only
        Values of C to sweep (sorted ascending, duplicates dropped). Default: the
        protocol's 45 values :data:`DEFAULT_C_GRID`.
    holdout : float, keyword-only
        Holdout fraction when no validation split is given (protocol: 0.1).
    seed : int, keyword-only
        Seeds the holdout and the low-shot sampling.
    fraction : float in (0, 1], optional, keyword-only
        Low-shot: train on a stratified fraction of the (post-holdout) train part,
        see :func:`sample_fraction`. Exclusive with ``shots``.
    shots : int, optional, keyword-only
        Few-shot: ``shots`` items per class, see :func:`sample_shots`.
    backend : {"auto", "sklearn", "torch", "cuml"}, keyword-only
        ``"auto"`` = ``"torch"`` (falls back to sklearn if torch is missing).
    device : str, keyword-only
        ``"cpu"`` or ``"cuda"`` (torch and cuML backends).
    dtype : {"float64", "float32"}, keyword-only
        Precision of the torch backend (protocol: float64). Ignored by sklearn.
    max_iter, tol : keyword-only
        L-BFGS iteration cap and gradient tolerance (protocol: 1000, 1e-12).
    num_classes : int, optional, keyword-only
        Defaults to 1 + the largest label seen (single-label).
    sweep_patience : int, optional, keyword-only
        Stop the sweep after this many C values without a better validation
        score (deviation from the protocol; default None = full sweep).
    warm_start : bool, keyword-only
        Torch backend: start each C from the solution path (default; fewer
        iterations, and lower objectives where fits hit ``max_iter``). False
        fits every C from zero, DINOv2's (and scikit-learn's) cold path.
    protocol : {"dinov2", "clip_benchmark"}, keyword-only
        ``"clip_benchmark"``: features are L2-normalised and a linear layer is
        trained with AdamW (``lr``, ``epochs``, ``batch_size``; defaults 0.1, 10,
        64 as in CLIP_benchmark) for each weight decay of its coarse-to-fine
        search over ``logspace(-6, 2, 97)`` (19 fits, fewer when points repeat),
        chosen on validation top-1; single-label only. ``backend``, ``dtype``,
        ``c_grid``, ``max_iter``, ``tol``, ``sweep_patience`` and ``warm_start``
        belong to the DINOv2 protocol and must stay at their defaults.
    lr, epochs, batch_size : keyword-only
        CLIP_benchmark protocol only.

    Returns
    -------
    dict
        Metrics (fractions in [0, 1]; directions in :data:`HIGHER_IS_BETTER`):
        single-label ``"top1"``, ``"top5"``, ``"mean_per_class_recall"`` on test and
        ``"val_top1"`` at the chosen C; multi-label ``"macro_auc"`` and
        ``"val_macro_auc"``.
        Model: ``"C"`` (float; None for CLIP_benchmark), ``"weight_decay"``
        (CLIP_benchmark's choice; None for DINOv2), ``"sweep"`` (one dict per
        fit, in fitting order: ``"C"`` or ``"weight_decay"``, ``"val_score"``
        (top-1, or macro AUC for multi-label), ``"n_iter"``, ``"converged"``
        (stopped on its tolerance before ``max_iter``; None for AdamW's fixed
        schedule) and ``"objective"`` (the L-BFGS objective reached, per sample:
        mean cross-entropy + ||W||^2 / (2 C n); None for AdamW)), ``"weights"``
        (n_classes, d) and ``"bias"`` (n_classes,) float64 ndarrays,
        ``"test_logits"`` and ``"test_probs"`` (n_test, n_classes) ndarrays
        (softmax, or per-label sigmoid for multi-label).
        Provenance: ``"selection"`` ("val" | "holdout"), ``"refit_on"``
        ("train+val" | "train subset"), ``"train_indices"`` (rows of train_x
        in the final fit), ``"val_indices"`` (holdout rows of train_x, or None),
        ``"n_fit"``, ``"n_val"``, ``"num_classes"``, ``"multilabel"``, ``"backend"``,
        ``"device"``, ``"dtype"``, ``"max_iter"``, ``"tol"``, ``"seed"``,
        ``"holdout"``, ``"fraction"``, ``"shots"``, ``"sweep_patience"``,
        ``"protocol"``, ``"l2_normalized"`` (True when the weights apply to
        L2-normalised features: CLIP_benchmark), ``"lr"``, ``"epochs"``,
        ``"batch_size"`` (the last three None for DINOv2), ``"warm_start"``
        (whether fits started from the solution path), ``"n_iter"`` (L-BFGS
        iterations or AdamW steps) and ``"converged"`` (final fit),
        ``"n_unconverged"`` (L-BFGS fits, sweep and refit, that stopped at
        ``max_iter``; None for CLIP_benchmark) and ``"convergence_warning"``
        (the message of the :class:`ProbeConvergenceWarning` issued when the
        chosen C, its runner-up or the refit did not converge; else None).
    """
    train_x, train_y, test_x, test_y, multilabel = _check_xy(train_x, train_y, test_x, test_y)
    if (val_x is None) != (val_y is None):
        raise ProbeError("pass both val_x and val_y, or neither (then a holdout of train is used).")
    if val_x is not None:
        val_x, val_y, _, _, ml_val = _check_xy(val_x, val_y, test_x, test_y, what="val")
        if ml_val != multilabel:
            raise ShapeError("val_y and train_y must both be 1-D labels or both 2-D 0/1 matrices.")
    if fraction is not None and shots is not None:
        raise ProbeError("pass fraction or shots, not both.")
    if multilabel and (fraction is not None or shots is not None):
        raise ProbeError("low-shot sampling is defined for single-label data only.")
    if sweep_patience is not None and sweep_patience < 1:
        raise ProbeError(f"sweep_patience must be a positive integer or None, got {sweep_patience}")
    if protocol not in PROTOCOLS:
        raise UnknownNameError("probe protocol", protocol, PROTOCOLS)
    clip = protocol == "clip_benchmark"
    n_classes = _n_classes(num_classes, multilabel, train_y, test_y, val_y)
    _check_protocol_knobs(
        protocol,
        backend=backend,
        dtype=dtype,
        c_grid=c_grid,
        max_iter=max_iter,
        tol=tol,
        sweep_patience=sweep_patience,
        warm_start=warm_start,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
    )
    if clip:
        if multilabel:
            raise ProbeError("protocol='clip_benchmark' is single-label; use protocol='dinov2'.")
        from evaluators._search import l2_normalize

        train_x, test_x = l2_normalize(train_x), l2_normalize(test_x)
        val_x = None if val_x is None else l2_normalize(val_x)
        model: Any = _AdamWBackend(
            lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, device=device
        )
    else:
        grid = _grid(c_grid)
        model = _make_backend(
            backend, warm=warm_start, max_iter=max_iter, tol=tol, device=device, dtype=dtype
        )

    # 1. the selection split; 2. the low-shot subset, drawn from the train part only
    fit_idx, val_idx = training_rows(
        train_y,
        official_val=val_x is not None,
        holdout=holdout,
        seed=seed,
        fraction=fraction,
        shots=shots,
    )
    if val_idx is not None:
        sel_x, sel_y = train_x[val_idx], train_y[val_idx]
    else:
        sel_x, sel_y = val_x, val_y
    low_shot = fraction is not None or shots is not None

    # 3. the sweep: C ascending (warm-started for backends that support it), or
    # CLIP_benchmark's coarse-to-fine weight decay
    fit_x = train_x if fit_idx.size == train_x.shape[0] else train_x[fit_idx]  # no copy
    task, target = _encode(train_y[fit_idx], multilabel, binary_softmax=clip)

    def val_score(fit: _Fit) -> float:
        w, b = _expand(task, fit.w, fit.b, n_classes, train_x.shape[1])
        return _val_score(sel_x @ w.T + b, sel_y, multilabel)

    if clip:
        peak, sweep, done = _clip_sweep(lambda wd: model.fit(fit_x, task, target, wd), val_score)
        best_C, best_val, best_fit = float(CLIP_WD_GRID[peak]), *done[peak]
    else:
        (best_C, best_val, best_fit), sweep = _c_sweep(
            lambda C, init: model.fit(fit_x, task, target, C, init),
            grid,
            val_score,
            warm=model.warm,
            patience=sweep_patience,
        )

    # 4. refit with the chosen C (train + val; low-shot: the subset only)
    if low_shot:
        final, final_idx, refit_on = best_fit, fit_idx, "train subset"
        n_fit = int(fit_idx.size)
    else:
        if val_idx is not None:
            final_idx = np.sort(np.concatenate([fit_idx, val_idx]))
            all_x, all_y = train_x[final_idx], train_y[final_idx]
        else:
            final_idx = fit_idx
            all_x = np.concatenate([fit_x, np.asarray(val_x, dtype=fit_x.dtype)])
            all_y = np.concatenate([train_y[fit_idx], val_y])
        task, target = _encode(all_y, multilabel, binary_softmax=clip)
        init = _TorchBackend.init_from(best_fit) if model.warm else None
        if model.warm and task.n_out != best_fit.w.shape[0]:
            init = None  # the validation data added a class
        final = model.fit(all_x, task, target, best_C, init)
        refit_on, n_fit = "train+val", int(all_x.shape[0])
    weights, bias = _expand(task, final.w, final.b, n_classes, train_x.shape[1])
    n_unconverged = warning = None
    if not clip:
        refit = [] if low_shot else [final.converged]
        n_unconverged = sum(not ok for ok in [*(p["converged"] for p in sweep), *refit])
        warning = _convergence_warning(sweep, best_C, refit, max_iter, n_unconverged)
        if warning:
            warnings.warn(warning, ProbeConvergenceWarning, stacklevel=2)

    logits = np.asarray(test_x, dtype=np.float64) @ weights.T + bias
    out: dict[str, Any] = {}
    if multilabel:
        probs = _sigmoid(logits)
        out["macro_auc"] = _macro_auc(logits, test_y)
        out["val_macro_auc"] = best_val
    else:
        probs = _softmax(logits)
        out.update(_single_label_metrics(logits, test_y))
        out["val_top1"] = best_val
    out.update(
        C=None if clip else best_C,
        weight_decay=best_C if clip else None,
        sweep=sweep,
        weights=weights,
        bias=bias,
        test_logits=logits,
        test_probs=probs,
        selection="holdout" if val_x is None else "val",
        refit_on=refit_on,
        train_indices=final_idx,
        val_indices=val_idx,
        n_fit=n_fit,
        n_val=int(sel_y.shape[0]),
        num_classes=n_classes,
        multilabel=multilabel,
        backend=model.name,
        device=device,
        dtype={"torch": dtype, "adamw": "float32"}.get(model.name, "float64"),
        max_iter=None if clip else max_iter,
        tol=None if clip else tol,
        seed=seed,
        holdout=holdout if val_x is None else None,
        fraction=fraction,
        shots=shots,
        sweep_patience=sweep_patience,
        protocol=protocol,
        l2_normalized=clip,
        lr=float(lr) if clip else None,
        epochs=int(epochs) if clip else None,
        batch_size=int(batch_size) if clip else None,
        warm_start=bool(model.warm),
        n_iter=final.n_iter,
        converged=final.converged,
        n_unconverged=n_unconverged,
        convergence_warning=warning,
    )
    return out


def _convergence_warning(
    sweep: list[dict[str, Any]],
    chosen: float,
    refit: list[bool | None],
    max_iter: int,
    n_unconverged: int,
) -> str | None:
    """One line when the choice rests on fits that stopped at ``max_iter``, else None.

    Checked: the chosen C, the runner-up (the best validation score among the other
    C values, the smaller C on ties) and the refit with the chosen C."""
    by_c = {p["C"]: p for p in sweep}
    others = [p for p in sweep if p["C"] != chosen]
    runner_up = max(others, key=lambda p: p["val_score"], default=None)  # first max: smaller C
    bad = []
    if not by_c[chosen]["converged"]:
        bad.append(f"the chosen C={chosen:.4g}")
    if runner_up is not None and not runner_up["converged"]:
        bad.append(f"the runner-up C={runner_up['C']:.4g}")
    if refit and not refit[0]:
        bad.append("the refit")
    if not bad:
        return None
    what = bad[0] if len(bad) == 1 else ", ".join(bad[:-1]) + " and " + bad[-1]
    return (
        f"linear probe: {what} stopped at max_iter={max_iter} without converging "
        f"({n_unconverged} unconverged fit(s) in all); the C choice rests on unconverged fits. "
        "See the README's note on probe convergence (warm_start=False / --no-warm-start "
        "reproduces DINOv2's cold path)."
    )


#: Keyword arguments of :func:`linear_probe` that only one protocol reads.
_PROTOCOL_KNOBS = {
    "dinov2": ("backend", "dtype", "c_grid", "max_iter", "tol", "sweep_patience", "warm_start"),
    "clip_benchmark": ("lr", "epochs", "batch_size"),
}


def _check_protocol_knobs(protocol: str, **given: Any) -> None:
    """Refuse knobs of the other protocol set away from their defaults (never ignored)."""
    defaults = linear_probe.__kwdefaults__
    assert defaults is not None
    for owner, names in _PROTOCOL_KNOBS.items():
        if owner == protocol:
            continue
        changed = [
            name
            for name in names
            if given[name] is not defaults[name]
            and (defaults[name] is None or given[name] != defaults[name])
        ]
        if changed:
            raise ProbeError(
                f"{', '.join(changed)} belong to the {owner} protocol; pass "
                f"protocol={owner!r} or drop them."
            )


def _path_start(path: list[tuple[float, np.ndarray]], log_c: float) -> np.ndarray | None:
    """Warm start for the next C: the solution path extrapolated in log C.

    The optimum moves smoothly with log C, so the polynomial through the last
    (up to three) solutions, evaluated at the next log C, starts much closer than
    the last solution alone. Measured on the 45-point protocol grid (5k x 768,
    100 classes): 1,454 L-BFGS iterations from the last solution, 922 with the
    line through two, 714 with the parabola through three. Only the start changes.
    """
    if not path:
        return None
    start = np.zeros_like(path[-1][1])
    for j, (lj, pj) in enumerate(path):  # Lagrange basis weights at log_c
        weight = math.prod((log_c - lm) / (lj - lm) for m, (lm, _) in enumerate(path) if m != j)
        start += weight * pj
    return start


def _val_score(logits: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
    if multilabel:
        return _macro_auc(logits, y)
    return float(np.mean(np.argmax(logits, axis=1) == y)) if y.size else math.nan


def _grid(c_grid: Any) -> np.ndarray:
    grid = DEFAULT_C_GRID if c_grid is None else np.asarray(c_grid, dtype=np.float64).ravel()
    if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise ProbeError(f"c_grid must hold positive finite values of C, got {c_grid!r}.")
    return np.unique(grid)


def _check_xy(x: Any, y: Any, tx: Any, ty: Any, what: str = "train"):
    x, tx = np.asarray(x), np.asarray(tx)
    y, ty = np.asarray(y), np.asarray(ty)
    for name, arr in ((f"{what}_x", x), ("test_x", tx)):
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
            raise ShapeError(
                f"{name} must be a 2-D float array (n, d), got {arr.shape} {arr.dtype}."
            )
        if not np.isfinite(arr).all():
            raise ShapeError(f"{name} holds NaN or infinite values; drop or re-extract those rows.")
    if x.shape[1] != tx.shape[1]:
        raise ShapeError(f"{what}_x has dimension {x.shape[1]} but test_x has {tx.shape[1]}.")
    for name, xa, ya in ((what, x, y), ("test", tx, ty)):
        if ya.shape[:1] != xa.shape[:1]:
            raise ShapeError(f"{name}_y has {ya.shape[:1]} rows but {name}_x has {xa.shape[0]}.")
    multilabel = y.ndim == 2
    if ty.ndim != y.ndim:
        raise ShapeError(f"{what}_y and test_y must both be 1-D labels or both 2-D 0/1 matrices.")
    if multilabel:
        for name, ya in ((f"{what}_y", y), ("test_y", ty)):
            if not np.isin(ya, (0, 1)).all():
                raise ShapeError(f"{name} is 2-D, so it must be a 0/1 multi-label matrix.")
        if y.shape[1] != ty.shape[1]:
            raise ShapeError(f"{what}_y has {y.shape[1]} labels but test_y has {ty.shape[1]}.")
        y, ty = y.astype(np.int64), ty.astype(np.int64)
    else:
        y, ty = as_labels(y, f"{what}_y"), as_labels(ty, "test_y")
    return x, y, tx, ty, multilabel


def _n_classes(num_classes: int | None, multilabel: bool, *ys: Any) -> int:
    if multilabel:
        return int(ys[0].shape[1])
    seen = max(int(y.max()) + 1 for y in ys if y is not None and y.size)
    if num_classes is None:
        return seen
    if seen > num_classes:
        raise ShapeError(f"labels go up to {seen - 1} but num_classes={num_classes}.")
    return int(num_classes)

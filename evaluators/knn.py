"""Weighted k-nearest-neighbour classification on frozen features (DINO / DINOv2).

Protocol (``guide/protocols.md``): L2-normalise train and test features, take the
top ``K = max(ks)`` training neighbours of every test item by dot product
(similarities ``s_1 >= ... >= s_K``), and for each ``k`` score class ``c`` by
``sum_{i <= k} exp(s_i / T) * [y_i == c]``. Defaults ``T = 0.07``,
``ks = (10, 20, 100, 200)``; report top-1 and top-5 micro accuracy.

Determinism: neighbours come from :func:`evaluators._search.exact_topk` (equal
similarities ordered by ascending training index); class scores are accumulated in
float64 in neighbour-rank order; equal class scores are ranked by ascending class
index (as ``np.argmax`` does).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from evaluators._search import as_labels, exact_topk
from evaluators.errors import ShapeError, UnknownNameError

__all__ = ["DEFAULT_KS", "HIGHER_IS_BETTER", "higher_is_better", "knn_classify", "metric_key"]

DEFAULT_KS = (10, 20, 100, 200)

#: Direction of every metric :func:`knn_classify` returns. Result keys are
#: ``f"{base}_k{k}"``; a key for a k not listed here has the direction of its base
#: (``"top1"`` or ``"top5"``), i.e. higher is better.
HIGHER_IS_BETTER: dict[str, bool] = {
    "top1": True,
    "top5": True,
    **{name: True for k in DEFAULT_KS for name in (f"top1_k{k}", f"top5_k{k}")},
}

# Test queries voted at once (bounds the (chunk, num_classes) float64 score matrix).
_VOTE_CHUNK = 4096


def metric_key(base: str, k: int) -> str:
    """Result key of a per-k metric, e.g. ``metric_key("top1", 20) == "top1_k20"``."""
    return f"{base}_k{int(k)}"


def higher_is_better(name: str) -> bool:
    """Direction of any metric name :func:`knn_classify` returns (``"top1_k37"`` -> True)."""
    base = name.split("_k", 1)[0]
    if base not in ("top1", "top5"):
        raise UnknownNameError("kNN metric", name, HIGHER_IS_BETTER)
    return HIGHER_IS_BETTER[base]


def knn_classify(
    train_x: np.ndarray | Iterable[np.ndarray],
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    num_classes: int | None = None,
    block_rows: int = 65536,
    device: str = "cpu",
    train_norms: np.ndarray | None = None,
) -> dict[str, Any]:
    """DINO weighted kNN accuracy of ``test_x`` against ``train_x``.

    Parameters
    ----------
    train_x : array of shape (n_train, d), or iterable of arrays of shape (n_i, d)
        Training features, any float dtype (fp16 is fine: search runs in float32).
        An iterable of row blocks (e.g. chunks read from a store) is streamed once;
        its rows, concatenated, must line up with ``train_y``.
    train_y : int array of shape (n_train,)
        Class indices in ``[0, num_classes)``.
    test_x : array of shape (n_test, d)
    test_y : int array of shape (n_test,)
    ks : sequence of int, keyword-only
        Neighbour counts to report. A ``k`` larger than ``n_train`` is clipped to
        ``n_train`` (recorded in ``ks_effective``, ``clipped`` and ``note``).
    temperature : float, keyword-only
        ``T`` in the weight ``exp(s / T)``.
    num_classes : int, optional, keyword-only
        Defaults to ``max(train_y.max(), test_y.max()) + 1``.
    block_rows : int, keyword-only
        Training rows searched at a time (memory bound), see ``exact_topk``.
    device : {"cpu", "cuda"}, keyword-only
        Where the neighbour search runs.
    train_norms : array of shape (n_train,), optional, keyword-only
        The training rows' L2 norms (``evaluators._search.row_norms``, as a store
        keeps them): the search then skips computing them. Same result as without.

    Returns
    -------
    dict
        ``"top1_k{k}"``, ``"top5_k{k}"`` (float, fraction in [0, 1]) for every
        requested ``k`` (keys use the requested k, even when clipped);
        ``"ks"`` (requested, list[int]), ``"ks_effective"`` (list[int], same order),
        ``"clipped"`` (bool), ``"note"`` (str, empty unless clipped),
        ``"temperature"``, ``"n_train"``, ``"n_test"``, ``"num_classes"``.
        Top-5 with fewer than 5 classes is top-``num_classes`` (always 1.0).
        Directions: :data:`HIGHER_IS_BETTER`.
    """
    ks_req = _check_ks(ks)
    if not np.isfinite(temperature) or temperature <= 0:
        raise ShapeError(f"temperature must be a positive number, got {temperature!r}.")
    train_y = as_labels(train_y, "train_y")
    test_y = as_labels(test_y, "test_y")
    test_x = np.asarray(test_x)
    if test_x.ndim != 2 or test_x.shape[0] != test_y.shape[0]:
        raise ShapeError(
            f"test_x must be (n_test, d) with n_test == len(test_y) == {test_y.shape[0]}, "
            f"got shape {test_x.shape}."
        )
    n_train = int(train_y.shape[0])
    if n_train == 0:
        raise ShapeError("train_y is empty; kNN needs at least one training item.")
    shape = getattr(train_x, "shape", None)
    if shape is not None and (len(shape) != 2 or shape[0] != n_train):
        raise ShapeError(
            f"train_x must be (n_train, d) with n_train == len(train_y) == {n_train}, "
            f"got shape {tuple(shape)}."
        )
    n_cls = _num_classes(num_classes, train_y, test_y)

    ks_eff = [min(k, n_train) for k in ks_req]
    seen = [0]
    database = train_x if shape is not None else _counted(train_x, seen)
    sims, idx = exact_topk(
        test_x,
        database,
        max(ks_eff),
        block_rows=block_rows,
        metric="cosine",
        device=device,
        db_norms=train_norms,
    )
    if shape is None and seen[0] != n_train:
        raise ShapeError(
            f"train_x yielded {seen[0]} rows but len(train_y) == {n_train}; "
            "make the feature blocks and the labels come from the same split."
        )

    correct1 = {k: 0 for k in set(ks_eff)}
    correct5 = {k: 0 for k in set(ks_eff)}
    top = min(5, n_cls)
    for a in range(0, test_y.shape[0], _VOTE_CHUNK):
        s = sims[a : a + _VOTE_CHUNK].astype(np.float64)
        w = np.exp(s / temperature)
        nbr_y = train_y[idx[a : a + _VOTE_CHUNK]]
        y = test_y[a : a + _VOTE_CHUNK]
        for k in correct1:
            scores = _class_scores(w[:, :k], nbr_y[:, :k], n_cls)
            # stable sort of -score: ties go to the smaller class index
            order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
            correct1[k] += int((order[:, 0] == y).sum())
            correct5[k] += int((order == y[:, None]).any(axis=1).sum())

    n_test = int(test_y.shape[0])
    out: dict[str, Any] = {}
    for k_r, k_e in zip(ks_req, ks_eff, strict=True):
        out[metric_key("top1", k_r)] = correct1[k_e] / n_test if n_test else float("nan")
        out[metric_key("top5", k_r)] = correct5[k_e] / n_test if n_test else float("nan")
    clipped = ks_eff != ks_req
    out.update(
        ks=ks_req,
        ks_effective=ks_eff,
        clipped=clipped,
        note=(
            f"k clipped to n_train={n_train} for k in "
            f"{[k for k in ks_req if k > n_train]}: fewer training items than neighbours."
            if clipped
            else ""
        ),
        temperature=float(temperature),
        n_train=n_train,
        n_test=n_test,
        num_classes=n_cls,
    )
    return out


def _counted(blocks: Iterable[np.ndarray], seen: list[int]) -> Iterable[np.ndarray]:
    for block in blocks:
        block = np.asarray(block)
        seen[0] += block.shape[0] if block.ndim else 0
        yield block


def _class_scores(w: np.ndarray, labels: np.ndarray, n_cls: int) -> np.ndarray:
    """Sum of weights per (row, class), accumulated in neighbour order. (m, k) -> (m, C)."""
    m = w.shape[0]
    flat = (np.arange(m, dtype=np.int64)[:, None] * n_cls + labels).ravel()
    return np.bincount(flat, weights=w.ravel(), minlength=m * n_cls).reshape(m, n_cls)


def _check_ks(ks: Sequence[int]) -> list[int]:
    try:
        out = [int(k) for k in ks]
    except TypeError as exc:
        raise ShapeError(f"ks must be a sequence of positive integers, got {ks!r}.") from exc
    if not out or any(k < 1 for k in out) or any(int(k) != k for k in ks):
        raise ShapeError(f"ks must be a non-empty sequence of positive integers, got {ks!r}.")
    return out


def _num_classes(num_classes: int | None, *ys: np.ndarray) -> int:
    seen = max((int(y.max()) + 1 for y in ys if y.size), default=0)
    if num_classes is None:
        return max(seen, 1)
    if seen > num_classes:
        raise ShapeError(
            f"labels go up to {seen - 1} but num_classes={num_classes}; "
            "pass the right num_classes or leave it as None."
        )
    return int(num_classes)

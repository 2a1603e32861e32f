"""Calibration metrics against torchmetrics, scikit-learn and plain-loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluators.calibration import (
    HIGHER_IS_BETTER,
    calibration_metrics,
    fit_temperature,
    reliability_bins,
    reliability_diagram,
    softmax,
)
from featcache.errors import DataError, ShapeError


def loop_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Bins [i/n, (i+1)/n) by explicit comparisons; confidence 1.0 in a bin of its own."""
    edges = [i / n_bins for i in range(n_bins + 1)]
    members: dict[int, list[tuple[float, float]]] = {}
    for p, y in zip(probs, labels, strict=True):
        conf = max(p)
        pred = list(p).index(conf)
        b = n_bins if conf >= 1.0 else next(i for i in range(n_bins) if conf < edges[i + 1])
        members.setdefault(b, []).append((conf, float(pred == y)))
    n = len(labels)
    total = 0.0
    for items in members.values():
        conf = sum(c for c, _ in items) / len(items)
        acc = sum(a for _, a in items) / len(items)
        total += len(items) / n * abs(acc - conf)
    return total


def loop_brier(probs: np.ndarray, labels: np.ndarray) -> float:
    return sum(
        sum((p[c] - (c == y)) ** 2 for c in range(len(p)))
        for p, y in zip(probs, labels, strict=True)
    ) / len(labels)


@pytest.fixture(scope="module")
def preds():
    rng = np.random.default_rng(0)
    n, c = 3000, 10
    logits = 1.5 * rng.standard_normal((n, c))
    labels = rng.integers(0, c, n)
    logits[np.arange(n), labels] += 2.0  # informative, over-confident in places
    probs = softmax(logits)
    # The edge case that separates binning conventions: confidence exactly 1.0 (wrong
    # here) next to under-confident rows in the top bin [14/15, 1). Merging the two
    # (as (lo, hi] binning does) would change the ECE.
    probs[:40] = 0.0
    probs[np.arange(40), (labels[:40] + 1) % c] = 1.0
    probs[40:90] = 0.05 / (c - 1)
    probs[np.arange(40, 90), labels[40:90]] = 0.95
    return probs, labels


def test_hand_computed_case():
    probs = np.array([[0.9, 0.1], [0.62, 0.38], [0.25, 0.75]])
    labels = np.array([0, 1, 1])
    out = calibration_metrics(probs, labels)
    # bins 13, 9, 11; accuracies 1, 0, 1 -> |1-.9| + |0-.62| + |1-.75| over 3
    assert out["ece"] == pytest.approx((0.1 + 0.62 + 0.25) / 3)
    assert out["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.38) + math.log(0.75)) / 3)
    assert out["brier"] == pytest.approx((0.02 + 2 * 0.62**2 + 2 * 0.25**2) / 3)
    assert out["top1"] == pytest.approx(2 / 3)
    assert set(out) == set(HIGHER_IS_BETTER) == {"ece", "nll", "brier", "top1"}
    assert not HIGHER_IS_BETTER["ece"] and HIGHER_IS_BETTER["top1"]


def test_ece_equals_torchmetrics_and_a_plain_loop(preds):
    import torch
    from torchmetrics.classification import MulticlassCalibrationError

    probs, labels = preds
    metric = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=15, norm="l1")
    expected = float(metric(torch.from_numpy(probs), torch.from_numpy(labels)))
    out = calibration_metrics(probs, labels, n_bins=15)
    assert out["ece"] == pytest.approx(expected, abs=1e-6)  # torchmetrics sums in float32
    assert out["ece"] == pytest.approx(loop_ece(probs, labels), abs=1e-12)
    assert 0.01 < out["ece"] < 0.5


def test_nll_equals_sklearn_log_loss_and_brier_a_plain_loop(preds):
    from sklearn.metrics import log_loss

    probs, labels = preds
    out = calibration_metrics(probs, labels)
    expected = log_loss(labels, probs, labels=list(range(probs.shape[1])))
    assert out["nll"] == pytest.approx(expected, rel=1e-12)
    assert out["brier"] == pytest.approx(loop_brier(probs, labels), rel=1e-12)
    assert out["top1"] == np.mean(np.argmax(probs, 1) == labels)


def test_unnormalised_and_fp16_rows_are_renormalised(preds):
    probs, labels = preds
    ref = calibration_metrics(probs, labels)
    scaled = calibration_metrics(probs * 3.0, labels)
    for key in ref:
        assert scaled[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-12)
    half = probs.astype(np.float16)
    got = calibration_metrics(half, labels)
    renorm = half.astype(np.float64) / half.astype(np.float64).sum(1, keepdims=True)
    assert got == pytest.approx(calibration_metrics(renorm, labels), rel=1e-12)
    assert got["nll"] == pytest.approx(ref["nll"], rel=1e-2)


def test_bad_inputs_raise_with_a_fix(preds):
    probs, labels = preds
    with pytest.raises(ShapeError, match=r"\[0, 10\)"):
        calibration_metrics(probs, np.where(labels == 0, 10, labels))
    with pytest.raises(ShapeError, match="negative"):
        calibration_metrics(probs, labels - 1)
    with pytest.raises(ShapeError, match="one entry per row"):
        calibration_metrics(probs, labels[:-1])
    with pytest.raises(DataError, match="not logits"):
        calibration_metrics(np.log(probs + 1e-3), labels)


def test_reliability_bins_and_diagram(preds, tmp_path):
    probs, labels = preds
    bins = reliability_bins(probs, labels)
    assert bins["count"].sum() == len(labels) and bins["count"][15] == 40
    full = bins["count"] > 0
    gap = np.abs(bins["accuracy"] - bins["confidence"])[full]
    ece = np.sum(bins["count"][full] / len(labels) * gap)
    assert ece == pytest.approx(calibration_metrics(probs, labels)["ece"])
    path = reliability_diagram(probs, labels, tmp_path / "sub" / "rel.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_softmax_matches_scipy():
    from scipy.special import softmax as sp_softmax

    z = np.random.default_rng(1).standard_normal((5, 7)).astype(np.float16) * 30
    np.testing.assert_allclose(softmax(z), sp_softmax(z.astype(np.float64), axis=1))
    np.testing.assert_allclose(softmax(z, 2.0), sp_softmax(z.astype(np.float64) / 2, axis=1))
    with pytest.raises(ShapeError, match="temperature"):
        softmax(z, 0.0)


def test_fit_temperature_recovers_a_known_scale():
    rng = np.random.default_rng(2)
    n, c = 20000, 8
    true = 1.5 * rng.standard_normal((n, c))
    p = softmax(true)
    labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1)  # y ~ softmax(true)
    t = fit_temperature(3.0 * true, labels)  # logits 3x too sharp
    assert t == pytest.approx(3.0, rel=0.05)

    def nll(temp: float) -> float:
        return calibration_metrics(softmax(3.0 * true, temp), labels)["nll"]

    assert nll(t) <= min(nll(t * 1.01), nll(t / 1.01))

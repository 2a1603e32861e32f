"""Class-mapped evaluation: ImageNet-A / -R use exactly their 200 logits."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.ood import (
    HIGHER_IS_BETTER,
    IMAGENET_A_CLASSES,
    IMAGENET_R_CLASSES,
    evaluate_mapped,
    restrict_logits,
)
from featcache.errors import ShapeError, UnknownNameError

SUBSETS = {"imagenet-a": IMAGENET_A_CLASSES, "imagenet-r": IMAGENET_R_CLASSES}


@pytest.mark.parametrize("name", sorted(SUBSETS))
def test_class_lists_are_200_sorted_unique_imagenet_ids(name):
    classes = SUBSETS[name]
    assert isinstance(classes, tuple) and len(classes) == 200
    assert list(classes) == sorted(set(classes))
    assert all(isinstance(c, int) and 0 <= c < 1000 for c in classes)


def test_class_lists_spot_checks_against_the_published_mappings():
    # natural-adv-examples thousand_k_to_200: 6 -> 0, 11 -> 1, ..., 988 -> 199
    assert IMAGENET_A_CLASSES[:3] == (6, 11, 13) and IMAGENET_A_CLASSES[-1] == 988
    # imagenet-r: n01443537 (goldfish, 1) is the first wnid, n12267677 (acorn, 988) the last
    assert IMAGENET_R_CLASSES[:3] == (1, 2, 4) and IMAGENET_R_CLASSES[-1] == 988
    assert IMAGENET_A_CLASSES != IMAGENET_R_CLASSES


def adversarial_logits(subset, n=64, seed=0):
    """1000-way logits whose global arg-max is never in ``subset``."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, 1000))
    outside = np.setdiff1d(np.arange(1000), subset)
    logits[:, outside] += 10.0
    assert not np.isin(logits.argmax(1), subset).any()
    return logits


@pytest.mark.parametrize("name", sorted(SUBSETS))
def test_restriction_uses_exactly_the_200_logits(name):
    subset = SUBSETS[name]
    logits = adversarial_logits(subset)
    sub, classes, pred = restrict_logits(logits, subset)
    assert sub.shape == (64, 200) and classes.tolist() == list(subset)
    # independent oracle: best class among the subset, by a loop
    oracle = [max(subset, key=lambda c, row=row: row[c]) for row in logits]
    assert pred.tolist() == oracle
    out = evaluate_mapped(logits, np.array(oracle), class_subset=subset)
    assert out["top1"] == 1.0 and out["num_classes_used"] == 200
    unmasked = evaluate_mapped(logits, np.array(oracle))
    assert unmasked["top1"] == 0.0 and unmasked["num_classes_used"] == 1000
    # the dataset's own 0..199 folder labels give the same answer
    folder = np.searchsorted(np.array(subset), oracle)
    same = evaluate_mapped(logits, folder, class_subset=subset, label_space="subset")
    assert same == out


def test_top5_within_the_subset_matches_a_loop():
    rng = np.random.default_rng(3)
    subset = list(IMAGENET_R_CLASSES)
    logits = adversarial_logits(subset, n=200, seed=4)
    labels = rng.choice(subset, size=200)
    out = evaluate_mapped(logits, labels, class_subset=subset)
    hits1 = hits5 = 0
    for row, y in zip(logits, labels, strict=True):
        ranked = sorted(subset, key=lambda c, row=row: (-row[c], c))
        hits1 += ranked[0] == y
        hits5 += y in ranked[:5]
    assert out["top1"] == hits1 / 200 and out["top5"] == hits5 / 200
    assert out["top1"] < out["top5"] < 1.0
    assert HIGHER_IS_BETTER == {"top1": True, "top5": True}


def test_hand_case_and_unsorted_subset():
    logits = np.array([[0.0, 5.0, 1.0, 2.0], [3.0, 9.0, 0.0, 1.0]])
    sub, classes, pred = restrict_logits(logits, [3, 0])
    assert classes.tolist() == [0, 3] and sub.tolist() == [[0.0, 2.0], [3.0, 1.0]]
    assert pred.tolist() == [3, 0]
    out = evaluate_mapped(logits, np.array([3, 3]), class_subset=(3, 0))
    assert out["top1"] == 0.5 and out["top5"] == 1.0 and out["class_subset"] == [0, 3]


def test_errors_say_how_to_fix():
    logits = adversarial_logits(IMAGENET_A_CLASSES, n=4)
    with pytest.raises(ShapeError, match="label_space='subset'"):
        evaluate_mapped(logits, np.array([0, 1, 2, 3]), class_subset=IMAGENET_A_CLASSES)
    with pytest.raises(ShapeError, match="1000-class"):
        restrict_logits(logits[:, :500], IMAGENET_A_CLASSES)
    with pytest.raises(ShapeError, match="duplicate"):
        restrict_logits(logits, [1, 1, 2])
    with pytest.raises(UnknownNameError, match="label_space"):
        evaluate_mapped(logits, np.zeros(4, int), label_space="folder")
    with pytest.raises(ShapeError, match="4 rows"):
        evaluate_mapped(logits, np.zeros(3, int))

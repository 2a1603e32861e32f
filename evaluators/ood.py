"""Out-of-distribution classification with a class mapping (BoB section 3.3).

ImageNet-A and ImageNet-R contain 200 of the 1000 ImageNet-1k classes. A classifier
trained on ImageNet-1k is evaluated on them by keeping only those 200 logits
(ascending class index) before the arg-max, and mapping the winner back to its
ImageNet-1k index; without the mask, error rates are far above the published
ones. ImageNet-Sketch and ImageNet-V2 use all 1000 classes (``class_subset=None``).

The class lists are the ImageNet-1k indices (0-based, in the standard sorted-wnid
order) of the datasets' 200 classes, as published by their authors:
``thousand_k_to_200`` / ``indices_in_1k`` in ``hendrycks/natural-adv-examples``
``eval.py`` (ImageNet-A) and ``imagenet_r_wnids`` matched against ``all_wnids``
in ``hendrycks/imagenet-r`` ``eval.py`` (ImageNet-R); both were cross-checked
against an independent copy (``_IMAGENET_A_LABELSET`` / ``_IMAGENET_R_LABELSET``).
Because the datasets' folders are the same wnids in sorted order, folder label
``j`` of ImageNet-A is ImageNet-1k class ``IMAGENET_A_CLASSES[j]`` (same for R).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from evaluators._search import as_labels
from evaluators.errors import ShapeError, UnknownNameError

__all__ = [
    "HIGHER_IS_BETTER",
    "IMAGENET_A_CLASSES",
    "IMAGENET_R_CLASSES",
    "evaluate_mapped",
    "restrict_logits",
]

#: Direction of every metric :func:`evaluate_mapped` returns.
HIGHER_IS_BETTER: dict[str, bool] = {"top1": True, "top5": True}

# fmt: off
IMAGENET_A_CLASSES: tuple[int, ...] = (
    6, 11, 13, 15, 17, 22, 23, 27, 30, 37, 39, 42, 47, 50, 57, 70, 71, 76, 79, 89, 90, 94, 96,
    97, 99, 105, 107, 108, 110, 113, 124, 125, 130, 132, 143, 144, 150, 151, 207, 234, 235, 254,
    277, 283, 287, 291, 295, 298, 301, 306, 307, 308, 309, 310, 311, 313, 314, 315, 317, 319,
    323, 324, 326, 327, 330, 334, 335, 336, 347, 361, 363, 372, 378, 386, 397, 400, 401, 402,
    404, 407, 411, 416, 417, 420, 425, 428, 430, 437, 438, 445, 456, 457, 461, 462, 470, 472,
    483, 486, 488, 492, 496, 514, 516, 528, 530, 539, 542, 543, 549, 552, 557, 561, 562, 569,
    572, 573, 575, 579, 589, 606, 607, 609, 614, 626, 627, 640, 641, 642, 643, 658, 668, 677,
    682, 684, 687, 701, 704, 719, 736, 746, 749, 752, 758, 763, 765, 768, 773, 774, 776, 779,
    780, 786, 792, 797, 802, 803, 804, 813, 815, 820, 823, 831, 833, 835, 839, 845, 847, 850,
    859, 862, 870, 879, 880, 888, 890, 897, 900, 907, 913, 924, 932, 933, 934, 937, 943, 945,
    947, 951, 954, 956, 957, 959, 971, 972, 980, 981, 984, 986, 987, 988,
)
IMAGENET_R_CLASSES: tuple[int, ...] = (
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94, 96, 97,
    99, 100, 105, 107, 113, 122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155, 160, 161,
    162, 163, 171, 172, 178, 187, 195, 199, 203, 207, 208, 219, 231, 232, 234, 235, 242, 245,
    247, 250, 251, 254, 259, 260, 263, 265, 267, 269, 276, 277, 281, 288, 289, 291, 292, 293,
    296, 299, 301, 308, 309, 310, 311, 314, 315, 319, 323, 327, 330, 334, 335, 337, 338, 340,
    341, 344, 347, 353, 355, 361, 362, 365, 366, 367, 368, 372, 388, 390, 393, 397, 401, 407,
    413, 414, 425, 428, 430, 435, 437, 441, 447, 448, 457, 462, 463, 469, 470, 471, 472, 476,
    483, 487, 515, 546, 555, 558, 570, 579, 583, 587, 593, 594, 596, 609, 613, 617, 621, 629,
    637, 657, 658, 701, 717, 724, 763, 768, 774, 776, 779, 780, 787, 805, 812, 815, 820, 824,
    833, 847, 852, 866, 875, 883, 889, 895, 907, 928, 931, 932, 933, 934, 936, 937, 943, 945,
    947, 948, 949, 951, 953, 954, 957, 963, 965, 967, 980, 981, 983, 988,
)
# fmt: on

_LABEL_SPACES = ("original", "subset")


def _subset(class_subset: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    classes = np.asarray(class_subset)
    if classes.ndim != 1 or classes.size == 0 or not np.issubdtype(classes.dtype, np.integer):
        raise ShapeError(
            "class_subset must be a non-empty 1-D sequence of integer class indices, "
            f"got {classes.shape} {classes.dtype}."
        )
    classes = np.sort(classes.astype(np.int64))
    if np.any(np.diff(classes) == 0):
        raise ShapeError("class_subset holds duplicate class indices.")
    if classes[0] < 0 or classes[-1] >= n_classes:
        raise ShapeError(
            f"class_subset indices must lie in [0, {n_classes}) (the logit columns); got "
            f"{int(classes[0])}..{int(classes[-1])}. Is this a 1000-class ImageNet classifier?"
        )
    return classes


def restrict_logits(
    logits: np.ndarray, class_subset: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the logits of ``class_subset`` and predict within them.

    Parameters
    ----------
    logits : array of shape (n, C)
        Scores of a C-way classifier (e.g. C = 1000 for ImageNet-1k).
    class_subset : sequence of S ints
        Original class indices to keep (any order; used in ascending order).

    Returns
    -------
    sub_logits : float array of shape (n, S)
        ``logits[:, classes]``; column ``j`` belongs to original class ``classes[j]``.
    classes : int64 array of shape (S,)
        The subset, ascending.
    predictions : int64 array of shape (n,)
        Arg-max within the subset (ties -> smaller class index), mapped back to the
        original index space: ``classes[argmax(sub_logits, axis=1)]``.
    """
    z = np.asarray(logits)
    if z.ndim != 2:
        raise ShapeError(f"logits must be 2-D (n_samples, n_classes), got shape {z.shape}.")
    classes = _subset(class_subset, z.shape[1])
    sub = z[:, classes]
    return sub, classes, classes[np.argmax(sub, axis=1)]


def evaluate_mapped(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    class_subset: Sequence[int] | np.ndarray | None = None,
    label_space: str = "original",
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy of a classifier restricted to ``class_subset``.

    Parameters
    ----------
    logits : array of shape (n, C)
    labels : int array of shape (n,)
    class_subset : sequence of ints, optional, keyword-only
        E.g. :data:`IMAGENET_A_CLASSES`; None uses all C classes.
    label_space : {"original", "subset"}, keyword-only
        ``"original"``: labels are indices into the C logits (ImageNet-1k ids) and
        must lie in the subset. ``"subset"``: labels index the ascending subset,
        i.e. the dataset's own 0..S-1 folder labels.

    Returns
    -------
    dict
        ``"top1"``, ``"top5"`` (fractions; top-5 over min(5, S) classes, ties ranked
        by smaller class index), ``"n"`` (samples), ``"num_classes_used"`` (S),
        ``"class_subset"`` (list of the classes used, or None).
    """
    z = np.asarray(logits)
    if z.ndim != 2:
        raise ShapeError(f"logits must be 2-D (n_samples, n_classes), got shape {z.shape}.")
    if label_space not in _LABEL_SPACES:
        raise UnknownNameError("label_space", label_space, _LABEL_SPACES)
    y = as_labels(labels, "labels")
    if y.shape[0] != z.shape[0]:
        raise ShapeError(f"labels has {y.shape[0]} entries but logits has {z.shape[0]} rows.")
    if class_subset is None:
        classes = np.arange(z.shape[1])
        sub = z
    else:
        sub, classes, _ = restrict_logits(z, class_subset)
    if label_space == "original":
        pos = np.searchsorted(classes, y)
        pos_ok = pos < classes.size
        inside = pos_ok & (classes[np.minimum(pos, classes.size - 1)] == y)
        if not inside.all():
            bad = np.unique(y[~inside])[:5].tolist()
            raise ShapeError(
                f"labels {bad} are not in class_subset. If the labels are the dataset's own "
                "0..S-1 folder indices, pass label_space='subset'."
            )
        target = pos
    else:
        if y.size and (y.min() < 0 or y.max() >= classes.size):
            raise ShapeError(f"label_space='subset' labels must lie in [0, {classes.size}).")
        target = y
    n = int(y.shape[0])
    if n == 0:
        top1 = top5 = float("nan")
    else:
        order = np.argsort(-sub, axis=1, kind="stable")[:, : min(5, classes.size)]
        top1 = float(np.mean(order[:, 0] == target))
        top5 = float(np.mean((order == target[:, None]).any(axis=1)))
    return {
        "top1": top1,
        "top5": top5,
        "n": n,
        "num_classes_used": int(classes.size),
        "class_subset": None if class_subset is None else classes.tolist(),
    }

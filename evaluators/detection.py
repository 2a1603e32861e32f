"""COCO average precision of boxes and instance masks (BoB section 3.2, Tables 11-13, 15).

Ground truth is a COCO-format dict (``images`` with ``id``/``width``/``height``,
``annotations`` with ``id``/``image_id``/``category_id``/``bbox`` ``[x, y, w, h]``/
``iscrowd``/``area`` and, for masks, ``segmentation`` polygons or RLE; ``categories``).
Predictions are COCO results: a list of dicts ``{image_id, category_id, bbox, score}``
(plus ``segmentation`` as RLE for masks), or the same as columns of arrays
(:func:`predictions_from_arrays`). :func:`coco_ap` returns plain floats:

* ``ap``: AP averaged over IoU 0.50:0.05:0.95, up to 100 detections per image;
* ``ap50`` / ``ap75``: AP at IoU 0.5 / 0.75;
* ``aps`` / ``apm`` / ``apl``: AP of small (area < 32^2), medium and large objects,

each suffixed ``_box`` (``iou_type="bbox"``) or ``_mask`` (``"segm"``). The numbers are
those of the COCO evaluation (``pycocotools``), computed by faster-coco-eval's C++ port
of it (the tests hold the two equal to 1e-9). Where the reference prints -1 (no ground
truth of the evaluated categories in an area range) the value is NaN; an empty set of
predictions scores 0 wherever there is ground truth. Mask AP ignores a prediction's
``bbox``, so object sizes come from the masks. ``style="lvis"`` runs the LVIS
protocol (federated negatives, 300 detections) and adds ``apr`` / ``apc`` / ``apf``.

Nothing here imports torch or the store; faster-coco-eval is imported on first use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from evaluators.errors import DataError, ShapeError, UnknownNameError

__all__ = [
    "AP_NAMES",
    "HIGHER_IS_BETTER",
    "IOU_TYPES",
    "coco_ap",
    "encode_masks",
    "metric_names",
    "predictions_from_arrays",
    "validate_ground_truth",
    "validate_predictions",
]

#: The summary entries, in the order of COCOeval's ``stats`` (AP part).
AP_NAMES: tuple[str, ...] = ("ap", "ap50", "ap75", "aps", "apm", "apl")
_LVIS_NAMES: tuple[str, ...] = ("apr", "apc", "apf")
#: ``iou_type`` -> metric suffix.
IOU_TYPES: dict[str, str] = {"bbox": "box", "segm": "mask"}
STYLES = ("coco", "lvis")

#: Direction of every metric :func:`coco_ap` returns (and ``ap50``, the OOD-detection record).
HIGHER_IS_BETTER: dict[str, bool] = {
    **{f"{n}_{s}": True for s in IOU_TYPES.values() for n in (*AP_NAMES, *_LVIS_NAMES)},
    "ap50": True,
}


def metric_names(iou_type: str = "bbox", *, style: str = "coco") -> tuple[str, ...]:
    """The keys :func:`coco_ap` returns for ``iou_type`` and ``style``."""
    suffix = _suffix(iou_type)
    names = AP_NAMES + (_LVIS_NAMES if style == "lvis" else ())
    return tuple(f"{n}_{suffix}" for n in names)


def _suffix(iou_type: str) -> str:
    if iou_type not in IOU_TYPES:
        raise UnknownNameError("COCO iou type", iou_type, IOU_TYPES)
    return IOU_TYPES[iou_type]


# ------------------------------------------------------------------------------ validation
def _finite_box(raw: Any, where: str) -> list[float]:
    if not isinstance(raw, list | tuple | np.ndarray) or len(raw) != 4:
        raise ShapeError(f"{where}: bbox must be [x, y, width, height], got {raw!r}.")
    box = [float(v) for v in raw]
    if not all(math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0:
        raise DataError(f"{where}: bbox {box} must be finite with width, height >= 0.")
    return box


def validate_ground_truth(ground_truth: Mapping[str, Any]) -> None:
    """Check a COCO-format ground-truth dict; DataError naming the first bad entry.

    Needs ``images`` (unique int ids), ``categories`` (unique int ids) and
    ``annotations`` (unique ids >= 1, since the evaluation uses 0 for "unmatched";
    known image and category; a finite ``bbox``)."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(ground_truth.get(key), list):
            raise DataError(f"Ground truth needs a list {key!r} (COCO instances format).")
    image_ids: set[int] = set()
    for img in ground_truth["images"]:
        if not isinstance(img, Mapping) or "id" not in img:
            raise DataError(f"Ground truth image entry {img!r} has no 'id'.")
        if img["id"] in image_ids:
            raise DataError(f"Ground truth lists image id {img['id']} twice.")
        image_ids.add(img["id"])
    categories = {c.get("id") for c in ground_truth["categories"] if isinstance(c, Mapping)}
    if len(categories) != len(ground_truth["categories"]):
        raise DataError("Ground truth categories need unique 'id's.")
    seen: set[Any] = set()
    for ann in ground_truth["annotations"]:
        where = f"ground-truth annotation {ann.get('id')!r} (image id {ann.get('image_id')!r})"
        if not isinstance(ann.get("id"), int | np.integer) or ann["id"] < 1:
            raise DataError(
                f"{where}: annotation ids must be integers >= 1 (COCO evaluation reads id 0 "
                "as 'unmatched'); renumber the annotations from 1."
            )
        if ann["id"] in seen:
            raise DataError(f"{where}: duplicate annotation id.")
        seen.add(ann["id"])
        if ann.get("image_id") not in image_ids:
            raise DataError(f"{where}: the image id is not in 'images'.")
        if ann.get("category_id") not in categories:
            raise DataError(f"{where}: unknown category id {ann.get('category_id')!r}.")
        _finite_box(ann.get("bbox"), where)


def validate_predictions(
    predictions: Sequence[Mapping[str, Any]],
    ground_truth: Mapping[str, Any],
    *,
    iou_type: str = "bbox",
) -> None:
    """Check COCO results against ``ground_truth``; DataError naming the first bad row.

    Every row needs a known ``image_id`` and ``category_id``, a finite ``score`` and a
    finite ``bbox`` (boxes); for masks an RLE ``segmentation`` whose ``size`` is its
    image's ``[height, width]``."""
    _suffix(iou_type)
    sizes = {img["id"]: (img.get("height"), img.get("width")) for img in ground_truth["images"]}
    categories = {c["id"] for c in ground_truth["categories"]}
    for i, row in enumerate(predictions):
        where = f"prediction {i} (image id {row.get('image_id')!r})"
        if row.get("image_id") not in sizes:
            raise DataError(
                f"{where}: the image id is not in the ground truth; predictions must use the "
                "dataset's image ids."
            )
        if row.get("category_id") not in categories:
            raise DataError(f"{where}: unknown category id {row.get('category_id')!r}.")
        score = row.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float | np.number):
            raise DataError(f"{where}: 'score' must be a number, got {score!r}.")
        if not math.isfinite(float(score)):
            raise DataError(f"{where}: 'score' is not finite ({score!r}).")
        if iou_type == "bbox" or "bbox" in row:
            _finite_box(row.get("bbox"), where)
        if iou_type == "segm":
            rle = row.get("segmentation")
            if not isinstance(rle, Mapping) or "counts" not in rle or "size" not in rle:
                raise DataError(
                    f"{where}: mask predictions need 'segmentation' as RLE "
                    "{'size': [h, w], 'counts': ...} (see encode_masks)."
                )
            if list(rle["size"]) != list(sizes[row["image_id"]]):
                raise ShapeError(
                    f"{where}: mask size {list(rle['size'])} is not the image's "
                    f"[height, width] {list(sizes[row['image_id']])}."
                )


# ------------------------------------------------------------------------------ arrays in
def predictions_from_arrays(
    image_ids: Sequence[int] | np.ndarray,
    boxes_xywh: np.ndarray,
    scores: Sequence[float] | np.ndarray,
    category_ids: Sequence[int] | np.ndarray,
    *,
    masks: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """COCO result rows from columns: ``image_ids (N,)``, ``boxes_xywh (N, 4)``,
    ``scores (N,)``, ``category_ids (N,)`` and optionally ``masks``, N RLE dicts."""
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    ids = np.asarray(image_ids).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    cats = np.asarray(category_ids).reshape(-1)
    n = len(boxes)
    if not (len(ids) == len(s) == len(cats) == n) or (masks is not None and len(masks) != n):
        raise ShapeError(
            f"Prediction columns differ in length: {len(ids)} image ids, {n} boxes, "
            f"{len(s)} scores, {len(cats)} categories"
            + ("" if masks is None else f", {len(masks)} masks")
            + "."
        )
    rows = []
    for k in range(n):
        row: dict[str, Any] = {
            "image_id": int(ids[k]),
            "category_id": int(cats[k]),
            "bbox": [float(v) for v in boxes[k]],
            "score": float(s[k]),
        }
        if masks is not None:
            row["segmentation"] = dict(masks[k])
        rows.append(row)
    return rows


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """Binary masks ``(N, H, W)`` (bool / uint8) as COCO RLE dicts with str ``counts``."""
    from faster_coco_eval.core import mask as mask_api

    arr = np.asarray(masks)
    if arr.ndim != 3:
        raise ShapeError(f"masks must be (N, H, W), got shape {arr.shape}.")
    if arr.shape[0] == 0:
        return []
    rles = mask_api.encode(np.asfortranarray(arr.transpose(1, 2, 0).astype(np.uint8)))
    out = []
    for rle in rles:
        counts = rle["counts"]
        out.append(
            {
                "size": [int(v) for v in rle["size"]],
                "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
            }
        )
    return out


# ------------------------------------------------------------------------------ metrics
def _quiet(*_: Any, **__: Any) -> None:
    return None


def _copy_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Shallow copies: the COCO API writes ``id`` / ``area`` / ``segmentation`` into rows."""
    return [dict(r) for r in rows]


def _ground_truth_copy(ground_truth: Mapping[str, Any]) -> dict[str, Any]:
    annotations = _copy_rows(ground_truth["annotations"])
    for ann in annotations:
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:  # box-only sets: the box area decides small / medium / large
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    out = {k: v for k, v in ground_truth.items() if k != "annotations"}
    out["images"] = _copy_rows(ground_truth["images"])
    out["categories"] = _copy_rows(ground_truth["categories"])
    out["annotations"] = annotations
    return out


def coco_ap(
    ground_truth: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    *,
    iou_type: str = "bbox",
    style: str = "coco",
    category_ids: Sequence[int] | None = None,
    image_ids: Sequence[int] | None = None,
    validate: bool = True,
) -> dict[str, float]:
    """COCO AP / AP50 / AP75 / APs / APm / APl of ``predictions`` against ``ground_truth``.

    ``predictions``: COCO result rows, or a mapping of columns ``image_id``, ``bbox``
    (N, 4 as x, y, w, h), ``score``, ``category_id`` [, ``segmentation``].
    ``category_ids`` / ``image_ids`` restrict the evaluation (e.g. to "car" for the
    Sim10k -> Cityscapes AP50). Returns ``{"ap_box": ..., ...}`` (see the module doc);
    the inputs are not modified.
    """
    suffix = _suffix(iou_type)
    if style not in STYLES:
        raise UnknownNameError("evaluation style", style, STYLES)
    if isinstance(predictions, Mapping):
        predictions = predictions_from_arrays(
            predictions["image_id"],
            predictions["bbox"],
            predictions["score"],
            predictions["category_id"],
            masks=predictions.get("segmentation"),
        )
    if validate:
        validate_ground_truth(ground_truth)
        validate_predictions(predictions, ground_truth, iou_type=iou_type)
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(_ground_truth_copy(ground_truth), print_function=_quiet)
    rows = _copy_rows(predictions)
    if iou_type == "segm":
        # Without a box, loadRes takes a row's area from its mask; with one, from the box,
        # which would move masks between small / medium / large (detectron2 drops it too).
        for row in rows:
            row.pop("bbox", None)
    dt = gt.loadRes(rows)
    evaluator = COCOeval_faster(gt, dt, iou_type, print_function=_quiet, lvis_style=style == "lvis")
    if style == "lvis":
        evaluator.params.maxDets = [300]
    if category_ids is not None:
        known = set(gt.getCatIds())
        for c in category_ids:
            if c not in known:
                raise UnknownNameError("category id", str(c), [str(k) for k in known])
        evaluator.params.catIds = sorted(int(c) for c in category_ids)
    if image_ids is not None:
        evaluator.params.imgIds = sorted(int(i) for i in image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = np.asarray(evaluator.stats, dtype=np.float64)
    names: list[str] = list(AP_NAMES)
    values = [float(v) for v in stats[: len(AP_NAMES)]]
    if style == "lvis":
        base = len(stats) - len(_LVIS_NAMES)
        names += list(_LVIS_NAMES)
        values += [float(v) for v in stats[base:]]
    return {f"{n}_{suffix}": (math.nan if v < 0 else v) for n, v in zip(names, values, strict=True)}

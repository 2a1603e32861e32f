"""COCO AP (evaluators/detection.py) against pycocotools, the reference implementation.

Ground truth and predictions are seeded and small: boxes with several categories, crowd
regions, objects of every size, polygons and RLE masks; predictions are the ground truth
jittered, relabelled, duplicated and with tied scores, plus false positives.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from pycocotools import mask as pc_mask

from evaluators.detection import (
    AP_NAMES,
    HIGHER_IS_BETTER,
    coco_ap,
    encode_masks,
    metric_names,
    predictions_from_arrays,
)
from evaluators.errors import DataError, ShapeError, UnknownNameError
from tests._coco import pycocotools_ap

SIZE = (160, 192)  # height, width


def _polygon(rng: np.random.Generator, x: float, y: float, w: float, h: float) -> list[float]:
    """A convex-ish polygon inside the box (8 vertices on an ellipse, jittered)."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, 8))
    xs = x + w / 2 + w / 2 * np.cos(angles) * rng.uniform(0.8, 1.0, 8)
    ys = y + h / 2 + h / 2 * np.sin(angles) * rng.uniform(0.8, 1.0, 8)
    return np.stack([xs, ys], 1).reshape(-1).tolist()


def make_ground_truth(seed: int = 0, n_images: int = 12) -> dict:
    rng = np.random.default_rng(seed)
    h, w = SIZE
    images = [
        {"id": 10 + i, "width": w, "height": h, "file_name": f"{i}.png"} for i in range(n_images)
    ]
    anns = []
    for img in images:
        for _ in range(int(rng.integers(0, 6))):
            side = float(rng.choice([12.0, 45.0, 180.0]))  # small, medium, large
            bw, bh = side * rng.uniform(0.7, 1.0), side * rng.uniform(0.7, 1.0) * h / w
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            poly = _polygon(rng, x, y, bw, bh)
            rle = pc_mask.merge(pc_mask.frPyObjects([poly], h, w))
            crowd = int(rng.random() < 0.08)
            seg = (
                {"size": rle["size"], "counts": rle["counts"].decode()} if crowd else [poly]
            )  # crowd regions come as RLE, as in COCO
            bx, by, bw2, bh2 = (float(v) for v in pc_mask.toBbox(rle))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img["id"],
                    "category_id": int(rng.choice([1, 2, 5])),
                    "bbox": [bx, by, bw2, bh2],
                    "area": float(pc_mask.area(rle)),
                    "iscrowd": crowd,
                    "segmentation": seg,
                }
            )
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 5, 7)]  # 7: no ground truth at all
    return {"images": images, "annotations": anns, "categories": cats}


def _mask_of(ann: dict, h: int, w: int) -> np.ndarray:
    seg = ann["segmentation"]
    rle = pc_mask.merge(pc_mask.frPyObjects(seg, h, w)) if isinstance(seg, list) else seg
    return pc_mask.decode(rle)


def perturbed_predictions(gt: dict, seed: int = 1, *, masks: bool = False) -> list[dict]:
    rng = np.random.default_rng(seed)
    h, w = SIZE
    rows = []
    for ann in gt["annotations"]:
        for _ in range(int(rng.integers(1, 3))):
            box = np.asarray(ann["bbox"]) + rng.normal(0, 0.08 * max(ann["bbox"][2:]), 4)
            box[2:] = np.abs(box[2:]) + 0.5
            cat = ann["category_id"] if rng.random() < 0.85 else int(rng.choice([1, 2, 5, 7]))
            score = float(np.round(rng.random(), 1))  # coarse scores: many ties
            row = {
                "image_id": ann["image_id"],
                "category_id": cat,
                "bbox": box.tolist(),
                "score": score,
            }
            if masks:
                m = _mask_of(ann, h, w)
                shift = rng.integers(-3, 4, 2)
                m = np.roll(m, tuple(int(s) for s in shift), axis=(0, 1))
                row["segmentation"] = encode_masks(m[None])[0]
            rows.append(row)
    for img in gt["images"][::3]:  # false positives
        x, y = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
        row = {"image_id": img["id"], "category_id": 2, "bbox": [x, y, 20.0, 18.0], "score": 0.55}
        if masks:
            m = np.zeros((h, w), np.uint8)
            m[int(y) : int(y) + 18, int(x) : int(x) + 20] = 1
            row["segmentation"] = encode_masks(m[None])[0]
        rows.append(row)
    return rows


def _perfect(gt: dict, score: float = 0.9) -> list[dict]:
    """Every non-crowd object predicted exactly."""
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": score,
        }
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]


def _as_list(metrics: dict, suffix: str) -> list[float]:
    return [
        -1.0 if math.isnan(metrics[f"{n}_{suffix}"]) else metrics[f"{n}_{suffix}"] for n in AP_NAMES
    ]


@pytest.mark.parametrize("seed", [0, 3])
def test_box_ap_equals_pycocotools(seed):
    gt = make_ground_truth(seed)
    rows = perturbed_predictions(gt, seed + 1)
    ours = coco_ap(gt, rows)
    ref = pycocotools_ap(gt, rows, "bbox")
    assert 0.05 < ours["ap_box"] < 0.95  # a real mix of hits and misses
    np.testing.assert_allclose(_as_list(ours, "box"), ref, rtol=0, atol=1e-9)


def test_mask_ap_equals_pycocotools():
    gt = make_ground_truth(5)
    rows = perturbed_predictions(gt, 6, masks=True)
    ours = coco_ap(gt, rows, iou_type="segm")
    ref = pycocotools_ap(gt, rows, "segm")
    assert 0.05 < ours["ap_mask"] < 0.95
    np.testing.assert_allclose(_as_list(ours, "mask"), ref, rtol=0, atol=1e-9)


def test_perfect_predictions_score_one_and_missing_sizes_are_nan():
    gt = make_ground_truth(2)
    perfect = _perfect(gt, 0.9)
    out = coco_ap(gt, perfect)
    assert all(
        out[k] == 1.0 for k in ("ap_box", "ap50_box", "ap75_box", "aps_box", "apm_box", "apl_box")
    )
    only_small = {**gt, "annotations": [a for a in gt["annotations"] if a["area"] < 32**2]}
    out = coco_ap(only_small, [p for p in perfect if p["bbox"][2] * p["bbox"][3] < 32**2])
    assert out["aps_box"] == 1.0 and math.isnan(out["apl_box"])  # the reference prints -1


def test_perfect_masks_score_one():
    gt = make_ground_truth(4)
    h, w = SIZE
    rows = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "segmentation": encode_masks(_mask_of(a, h, w)[None])[0],
            "score": 1.0,
        }
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    assert coco_ap(gt, rows, iou_type="segm")["ap_mask"] == 1.0


def test_empty_predictions_give_zeros():
    gt = make_ground_truth(0)
    for iou_type, suffix in (("bbox", "box"), ("segm", "mask")):
        out = coco_ap(gt, [], iou_type=iou_type)
        assert set(out) == {f"{n}_{suffix}" for n in AP_NAMES}
        assert all(v == 0.0 for v in out.values())
    assert coco_ap(
        gt, {"image_id": [], "bbox": np.zeros((0, 4)), "score": [], "category_id": []}
    ) == coco_ap(gt, [])


def test_columns_in_fp16_match_the_rows_they_describe():
    gt = make_ground_truth(1)
    rows = perturbed_predictions(gt, 2)
    boxes = np.asarray([r["bbox"] for r in rows], np.float16)  # what a half-precision model gives
    scores = np.asarray([r["score"] for r in rows], np.float16)
    ids = np.asarray([r["image_id"] for r in rows])
    cats = np.asarray([r["category_id"] for r in rows])
    columns = {"image_id": ids, "bbox": boxes, "score": scores, "category_id": cats}
    as_rows = predictions_from_arrays(
        ids, boxes.astype(np.float64), scores.astype(np.float64), cats
    )
    ours = coco_ap(gt, columns)
    assert ours == coco_ap(gt, as_rows)
    np.testing.assert_allclose(
        _as_list(ours, "box"), pycocotools_ap(gt, as_rows, "bbox"), atol=1e-9
    )


def test_restricting_to_one_category_is_its_ap():
    gt = make_ground_truth(7)
    rows = perturbed_predictions(gt, 8)
    only = {**gt, "annotations": [a for a in gt["annotations"] if a["category_id"] == 2]}
    ref = pycocotools_ap(only, [r for r in rows if r["category_id"] == 2], "bbox")
    ours = coco_ap(gt, rows, category_ids=[2])
    np.testing.assert_allclose(_as_list(ours, "box"), ref, atol=1e-9)
    with pytest.raises(UnknownNameError):
        coco_ap(gt, rows, category_ids=[99])


def test_inputs_are_not_modified():
    gt = make_ground_truth(0)
    rows = perturbed_predictions(gt, 1, masks=True)
    gt_copy, rows_copy = copy.deepcopy(gt), copy.deepcopy(rows)
    coco_ap(gt, rows)
    coco_ap(gt, rows, iou_type="segm")
    assert gt == gt_copy and rows == rows_copy


def test_lvis_style_perfect_predictions():
    gt = make_ground_truth(3)
    for img in gt["images"]:
        img["neg_category_ids"], img["not_exhaustive_category_ids"] = [], []
    for cat, freq in zip(gt["categories"], "rcfr", strict=True):
        cat["frequency"] = freq
    perfect = _perfect(gt, 0.5)
    out = coco_ap(gt, perfect, style="lvis")
    assert set(out) == set(metric_names("bbox", style="lvis"))
    assert out["ap_box"] == 1.0 and out["ap50_box"] == 1.0
    assert all(v == 1.0 or math.isnan(v) for v in out.values())


@pytest.mark.parametrize(
    ("change", "error", "needle"),
    [
        ({"image_id": 999}, DataError, "image id 999"),
        ({"category_id": 42}, DataError, "unknown category id 42"),
        ({"bbox": [1, 2, 3]}, ShapeError, "bbox"),
        ({"bbox": [1, 2, float("nan"), 3]}, DataError, "finite"),
        ({"score": float("inf")}, DataError, "score"),
        ({"score": "high"}, DataError, "score"),
    ],
)
def test_bad_predictions_are_named(change, error, needle):
    gt = make_ground_truth(0)
    rows = perturbed_predictions(gt, 1)
    rows[3] = {**rows[3], **change}
    with pytest.raises(error, match=needle) as info:
        coco_ap(gt, rows)
    assert "prediction 3" in str(info.value) and "\n" not in str(info.value)


def test_mask_predictions_need_rle_of_the_image_size():
    gt = make_ground_truth(0)
    rows = perturbed_predictions(gt, 1, masks=True)
    rows[0] = {**rows[0], "segmentation": encode_masks(np.ones((1, 10, 10), np.uint8))[0]}
    with pytest.raises(ShapeError, match="mask size"):
        coco_ap(gt, rows, iou_type="segm")
    rows[0] = {**rows[0], "segmentation": [[0, 0, 5, 0, 5, 5]]}
    with pytest.raises(DataError, match="RLE"):
        coco_ap(gt, rows, iou_type="segm")


def test_bad_ground_truth_is_named():
    gt = make_ground_truth(0)
    gt["annotations"][0]["id"] = 0
    with pytest.raises(DataError, match="renumber"):
        coco_ap(gt, [])
    gt = make_ground_truth(0)
    gt["annotations"][1]["image_id"] = 12345
    with pytest.raises(DataError, match="not in 'images'"):
        coco_ap(gt, [])


def test_directions_cover_every_metric():
    for iou_type in ("bbox", "segm"):
        for style in ("coco", "lvis"):
            assert all(HIGHER_IS_BETTER[m] for m in metric_names(iou_type, style=style))
    assert HIGHER_IS_BETTER["ap50"]
    with pytest.raises(UnknownNameError):
        metric_names("keypoints")

"""Detection readers (COCO json, VOC XML, Cityscapes polygons) on files the tests write,
their bad-annotation errors, and the torch dataset / augmentation over them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from featcache.datasets import get_dataset_spec, open_split, validate_dataset_manifests
from featcache.datasets.detection import DetectionSplit
from featcache.errors import DataError, ManifestError
from tests import _imagegen as gen

USER_SETS = """
shapes:
  format: coco
  splits: [train, val]
  num_classes: 3
  options: {annotations: "annotations/{split}.json", images: "images/{split}"}
shapes_skip:
  format: coco
  splits: [train, val]
  options: {annotations: "annotations/{split}.json", images: "images/{split}", on_bad_annotation: skip}
shapes_lvis:
  format: coco
  splits: [val]
  options: {annotations: lvis_val.json, file_name_from: coco_url, style: lvis}
voc_cars:
  format: voc
  splits: [train]
  options: {classes: [car], ignore_classes: [person]}
voc_strict:
  format: voc
  splits: [train]
  options: {classes: [car]}
voc_listed:
  format: voc
  splits: [trainval]
  options: {classes: [car], ignore_classes: [person], list_file: "ImageSets/Main/{split}.txt"}
city:
  format: cityscapes
  splits: [val]
  options: {classes: [car], resize: [128, 64]}
city_native:
  format: cityscapes
  splits: [val]
  options: {classes: [car]}
"""


@pytest.fixture
def manifests(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cfg"
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "det.yaml").write_text(USER_SETS)
    monkeypatch.setenv("BOBX_MANIFESTS", str(root))
    return root


@pytest.fixture
def shapes(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "shapes"
    return root, gen.make_coco_shapes(root, {"train": 6, "val": 4})


def _open(name: str, split: str, root: Path) -> DetectionSplit:
    out = open_split(get_dataset_spec(name), split, data_root=root)
    assert isinstance(out, DetectionSplit)
    return out


def _rewrite(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_packaged_detection_manifests_are_valid():
    assert validate_dataset_manifests() == []
    for name, n in (("coco", 80), ("lvis", 1203), ("sim10k", 1), ("cityscapes", 1)):
        spec = get_dataset_spec(name)
        assert spec.task == "detection" and spec.num_classes == n


def test_coco_reader_keeps_the_ground_truth(manifests, shapes):
    root, written = shapes
    split = _open("shapes", "val", root)
    gt = written["val"]
    assert len(split) == 4 and split.ids[0] == "images/val/img_0000.png"
    assert split.ground_truth["annotations"] == [
        {**a} for a in gt["annotations"]
    ]  # unchanged, ids and all
    assert split.classes == list(gen.SHAPE_CLASSES) and split.category_ids == [1, 2, 3]
    assert split.with_masks and split.eval_style == "coco"
    assert split.params["skipped_annotations"] == 0 and split.params["on_bad_annotation"] == "error"
    t = split.targets(0)
    first = [a for a in gt["annotations"] if a["image_id"] == 1]
    x, y, w, h = first[0]["bbox"]
    np.testing.assert_allclose(t["boxes"][0], [x, y, x + w, y + h], rtol=1e-6)
    assert t["labels"].tolist() == [a["category_id"] for a in first]
    assert split.load(0).size == (128, 128)
    head = split.head(2)
    assert len(head) == 2 and {a["image_id"] for a in head.ground_truth["annotations"]} <= {1, 2}
    assert head.params["limit"] == 2


def test_crowd_regions_stay_in_the_ground_truth_but_not_in_training(manifests, shapes):
    root, _ = shapes
    path = root / "annotations" / "val.json"
    _rewrite(path, lambda d: d["annotations"][0].update(iscrowd=1))
    split = _open("shapes", "val", root)
    image = split.ground_truth["annotations"][0]["image_id"]
    row = split.image_ids.index(image)
    n = len(split.annotations(row))
    assert len(split.targets(row)["labels"]) == n - 1


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d["annotations"][2].update(bbox=[10, 10, 0, 5]), "degenerate"),
        (
            lambda d: d["annotations"][2].update(bbox=[100, 100, 60, 20]),
            "outside the 128x128 image",
        ),
        (lambda d: d["annotations"][2].update(bbox=[1, 2, "x", 4]), "not finite"),
        (lambda d: d["annotations"][2].update(category_id=9), "unknown category id 9"),
    ],
)
def test_bad_coco_annotations_are_named_or_skipped(manifests, shapes, edit, needle):
    root, written = shapes
    path = root / "annotations" / "train.json"
    _rewrite(path, edit)
    image_id = written["train"]["annotations"][2]["image_id"]
    with pytest.raises(DataError, match=needle) as info:
        _open("shapes", "train", root)
    text = str(info.value)
    assert str(path) in text and f"image id {image_id}" in text and "\n" not in text
    assert "on_bad_annotation: skip" in text
    split = _open("shapes_skip", "train", root)
    assert split.params["skipped_annotations"] == 1
    assert len(split.ground_truth["annotations"]) == len(written["train"]["annotations"]) - 1


def test_a_box_a_pixel_out_is_kept_and_clipped_for_training(manifests, shapes):
    root, _ = shapes
    _rewrite(
        root / "annotations" / "val.json",
        lambda d: d["annotations"][0].update(bbox=[-0.5, 10, 20, 20]),
    )
    split = _open("shapes", "val", root)
    assert split.ground_truth["annotations"][0]["bbox"][0] == -0.5
    row = split.image_ids.index(split.ground_truth["annotations"][0]["image_id"])
    assert split.targets(row)["boxes"][:, 0].min() >= 0


def test_missing_coco_image_is_named_or_skipped(manifests, shapes):
    root, written = shapes
    (root / "images" / "train" / "img_0003.png").unlink()
    with pytest.raises(DataError, match=r"image id 4: missing image file .*img_0003.png"):
        _open("shapes", "train", root)
    split = _open("shapes_skip", "train", root)
    assert split.params["skipped_images"] == 1 and 4 not in split.image_ids
    assert all(a["image_id"] != 4 for a in split.ground_truth["annotations"])
    assert split.params["skipped_annotations"] == 0


def test_annotation_of_an_unlisted_image_is_named(manifests, shapes):
    root, _ = shapes
    _rewrite(root / "annotations" / "val.json", lambda d: d["annotations"][1].update(image_id=77))
    with pytest.raises(DataError, match="image id 77.*not in 'images'"):
        _open("shapes", "val", root)


def test_not_a_coco_file(manifests, shapes):
    root, _ = shapes
    (root / "annotations" / "val.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="not a COCO instances file"):
        _open("shapes", "val", root)
    (root / "annotations" / "val.json").write_text("{oops")
    with pytest.raises(DataError, match="not valid JSON"):
        _open("shapes", "val", root)


def test_lvis_names_images_by_coco_url(manifests, tmp_path):
    root = tmp_path / "lvis"
    gt = gen.make_coco_shapes(root, {"val2017": 3})["val2017"]
    (root / "val2017").mkdir()
    for img in gt["images"]:  # LVIS: images of the COCO folders, named through coco_url
        (root / "images" / "val2017" / img["file_name"]).rename(root / "val2017" / img["file_name"])
        img["coco_url"] = f"http://images.cocodataset.org/val2017/{img.pop('file_name')}"
        img["neg_category_ids"], img["not_exhaustive_category_ids"] = [], []
    for cat in gt["categories"]:
        cat["frequency"] = "f"
    (root / "lvis_val.json").write_text(json.dumps(gt))
    split = _open("shapes_lvis", "val", root)
    assert split.ids[0] == "val2017/img_0000.png" and split.eval_style == "lvis"
    assert split.load(2).size == (128, 128)


def test_voc_reader(manifests, tmp_path):
    root = tmp_path / "sim"
    written = gen.make_voc(root, 5)
    split = _open("voc_cars", "train", root)
    assert len(split) == 5 and split.ids[0] == "JPEGImages/3384000.jpg"
    assert split.params["ignored_objects"] == 5 and not split.with_masks
    for row, image in enumerate(written):
        np.testing.assert_array_equal(
            split.targets(row)["boxes"], np.asarray(image["cars"], np.float32)
        )
    assert split.load(0).size == (160, 96)
    n_cars = len(written[0]["cars"])  # the person comes after the cars
    with pytest.raises(
        DataError, match=rf"3384000.xml: image id 1 .*object {n_cars} has unknown category 'person'"
    ):
        _open("voc_strict", "train", root)


def test_voc_list_file_and_bad_boxes(manifests, tmp_path):
    root = tmp_path / "sim"
    gen.make_voc(root, 4, list_file="trainval")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("3384002\n3384000\n")
    split = _open("voc_listed", "trainval", root)
    assert split.ids == ["JPEGImages/3384002.jpg", "JPEGImages/3384000.jpg"]
    xml = root / "Annotations" / "3384002.xml"
    text = xml.read_text()
    first = text.index("<xmax>")
    xml.write_text(text[:first] + "<xmax>999</xmax>" + text[text.index("</xmax>", first) + 7 :])
    with pytest.raises(DataError, match=r"3384002.xml: image id 1 .*outside the 160x96 image"):
        _open("voc_listed", "trainval", root)
    xml.write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><annotation/>')
    with pytest.raises(DataError, match="DOCTYPE"):
        _open("voc_listed", "trainval", root)


def test_cityscapes_reader_scales_to_the_evaluation_size(manifests, tmp_path):
    root = tmp_path / "cs"
    written = gen.make_cityscapes(root, n_images=4)
    native = _open("city_native", "val", root)
    small = _open("city", "val", root)
    written = sorted(written, key=lambda w: w["rel"])  # the reader goes city by city
    assert small.ids == [w["rel"] for w in written]
    assert small.load(0).size == (128, 64) and native.load(0).size == (256, 128)
    assert small.params["resize"] == [128, 64]
    n_cars = sum(len(w["cars"]) for w in written)
    assert small.params["instances"] == n_cars and small.params["crowd_regions"] == 4
    crowd = [a for a in small.ground_truth["annotations"] if a["iscrowd"]]
    assert len(crowd) == 4  # cargroup polygons: ignored by the evaluation, not trained on
    assert len(small.targets(0)["labels"]) == len(written[0]["cars"])
    pts = np.asarray(written[0]["cars"][0], np.float64) + 0.5
    x1, y1 = pts.min(0)
    x2, y2 = pts.max(0)
    np.testing.assert_allclose(native.targets(0)["boxes"][0], [x1, y1, x2, y2])
    np.testing.assert_allclose(small.targets(0)["boxes"][0], np.array([x1, y1, x2, y2]) / 2)


def test_cityscapes_missing_image_and_short_polygon(manifests, tmp_path):
    root = tmp_path / "cs"
    written = gen.make_cityscapes(root, n_images=2)
    gt = sorted((root / "gtFine" / "val").rglob("*_polygons.json"))[0]
    doc = json.loads(gt.read_text())
    doc["objects"][1]["polygon"] = [[1, 1], [5, 5]]
    gt.write_text(json.dumps(doc))
    with pytest.raises(
        DataError, match=r"image id 1, object 1 \(car\): a polygon needs at least 3"
    ):
        _open("city", "val", root)
    (root / written[1]["rel"]).unlink()
    doc["objects"][1]["polygon"] = [[1, 1], [5, 5], [1, 9]]
    gt.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="image id 2: missing image file"):
        _open("city", "val", root)


def test_detection_formats_need_task_detection(tmp_path, monkeypatch):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "x.yaml").write_text(
        "bad_det:\n  format: coco\n  task: classification\n  splits: [val]\n"
    )
    monkeypatch.setenv("BOBX_MANIFESTS", str(tmp_path))
    with pytest.raises(ManifestError, match="task: detection"):
        get_dataset_spec("bad_det")


# ------------------------------------------------------------------------------ torch side
def test_dataset_gives_targets_and_masks(manifests, shapes):
    import torch

    from featcache.detection.data import DetectionDataset, collate, train_transforms

    root, _ = shapes
    split = _open("shapes", "val", root)
    image, target = DetectionDataset(split, masks=True)[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 128, 128)
    t = split.targets(1)
    np.testing.assert_allclose(target["boxes"].numpy(), t["boxes"])
    masks = target["masks"]
    assert masks.shape == (len(t["labels"]), 128, 128) and masks.dtype == torch.uint8
    for m, box in zip(masks.numpy(), t["boxes"], strict=True):  # each mask fills its box
        ys, xs = np.nonzero(m)
        assert abs(xs.min() - box[0]) <= 1.5 and abs(ys.max() + 1 - box[3]) <= 1.5
    images, targets = collate([DetectionDataset(split)[i] for i in range(2)])
    assert len(images) == len(targets) == 2 and "masks" not in targets[0]

    lsj = DetectionDataset(split, transforms=train_transforms("lsj", size=96), masks=True, seed=3)
    out1, out2 = lsj[0], lsj[0]
    assert out1[0].shape == (3, 96, 96) and torch.equal(out1[0], out2[0])  # seeded per sample
    assert out1[1]["masks"].shape[1:] == (96, 96)
    assert len(out1[1]["boxes"]) == len(out1[1]["labels"]) == len(out1[1]["masks"])
    lsj.epoch = 1
    assert not torch.equal(lsj[0][0], out1[0])


def test_image_size_must_match_its_annotation(manifests, shapes):
    from featcache.detection.data import DetectionDataset

    root, _ = shapes
    _rewrite(root / "annotations" / "val.json", lambda d: d["images"][0].update(width=200))
    split = _open("shapes", "val", root)
    with pytest.raises(DataError, match="is 128x128 but its annotations say 200x128"):
        DetectionDataset(split)[0]

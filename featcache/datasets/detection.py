"""Detection readers: COCO-format json, VOC XML (Sim10k) and Cityscapes polygons.

Each reader returns a :class:`DetectionSplit`: an :class:`ImageSplit` (rows load images
lazily; ids are paths relative to the dataset directory) that also carries the split's
ground truth in COCO format (``ground_truth``: ``images`` in row order with integer
``id``, ``file_name``, ``width``, ``height``; ``annotations`` with ``bbox`` as
``[x, y, w, h]`` in pixels, ``area``, ``iscrowd`` and, where the layout has them,
``segmentation`` polygons or RLE; ``categories``). Training code turns rows into
targets with :meth:`DetectionSplit.targets`; evaluation hands ``ground_truth`` to
:func:`evaluators.detection.coco_ap` unchanged.

Layouts (``<base>`` = the data root, or the sub-directory the reader finds):

* ``coco``: ``<base>/<annotations>`` (instances json) + ``<base>/<images>/<file_name>``.
  ``options.annotations`` / ``options.images`` are a mapping split -> path, or a
  template with ``{split}`` (defaults ``annotations/instances_{split}.json`` and
  ``{split}``). LVIS v1 names images by ``coco_url`` (``file_name_from: coco_url`` takes
  ``<dir>/<file>`` from it, e.g. ``val2017/000000397133.jpg``) and is evaluated with
  ``style: lvis``. ``masks: false`` ignores segmentations (box-only training).
* ``voc``: ``<base>/Annotations/<stem>.xml`` + ``<base>/JPEGImages/<filename>`` (Sim10k's
  published layout); the rows are ``options.list_file`` (a template with ``{split}``)
  when it exists, else every XML file, sorted. Objects named in ``classes`` become
  annotations, those in ``ignore_classes`` are dropped (counted); any other name is an
  unknown category. VOC's 1-based inclusive pixel boxes become ``[xmin - 1, ymin - 1,
  xmax, ymax]``, as detectron2 reads them.
* ``cityscapes``: ``<base>/gtFine/<split>/<city>/<stem>_gtFine_polygons.json`` +
  ``<base>/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png``. Polygons labelled with
  a class of ``classes`` become instances (box = the polygon's extent, vertices shifted
  by half a pixel as detectron2 does); ``<class>group`` polygons become crowd regions
  (ignored by the evaluation, never trained on). ``resize: [W, H]`` loads every image
  at that size and scales the ground truth with it (BoB evaluates at 1024x512).

Bad annotations (a box that is degenerate or lies outside its image by more than a
pixel, an unknown category, a missing image) raise a one-line DataError naming the
file and image id; with ``options.on_bad_annotation: skip`` they are dropped and
counted in ``params`` (``skipped_annotations``, ``skipped_images``). Boxes that stick
out of their image by up to a pixel are kept as written; training clips them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
from PIL import Image

from featcache import provenance
from featcache.datasets._common import ReadContext, find_base, read_text
from featcache.datasets.split import FileSource, ImageSplit, safe_relpath
from featcache.errors import DataError

#: How far (pixels) a box may stick out of its image before it counts as outside.
BOX_TOLERANCE = 1.0
BAD_ANNOTATION_POLICIES = ("error", "skip")
_SKIP_HINT = "fix the annotation, or drop such entries with on_bad_annotation: skip"


class DetectionSplit(ImageSplit):
    """The images of one detection split plus their COCO-format ground truth.

    Attributes (besides :class:`ImageSplit`'s):
        ground_truth: the split's COCO dict (``images`` in row order).
        image_ids: the COCO image id of each row.
        category_ids: COCO category id of contiguous label ``k + 1`` (0 = background).
        with_masks: every trainable annotation has a segmentation (Mask R-CNN applies).
        eval_style: ``coco`` or ``lvis``.
    """

    def __init__(
        self,
        ids: Sequence[str],
        source: Any,
        *,
        ground_truth: dict[str, Any],
        image_ids: Sequence[int],
        params: dict[str, Any],
        with_masks: bool,
        eval_style: str = "coco",
        dataset: str = "",
        split: str = "",
    ) -> None:
        categories = ground_truth["categories"]
        super().__init__(
            ids,
            np.full(len(ids), -1, np.int64),
            source,
            params=params,
            classes=[str(c.get("name", c["id"])) for c in categories],
            dataset=dataset,
            split=split,
        )
        self.ground_truth = ground_truth
        self.image_ids = [int(i) for i in image_ids]
        self.category_ids = [int(c["id"]) for c in categories]
        self.with_masks = with_masks
        self.eval_style = eval_style
        self._by_image: dict[int, list[dict[str, Any]]] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __repr__(self) -> str:
        n_ann = len(self.ground_truth["annotations"])
        return f"DetectionSplit({self.dataset}/{self.split}, n={len(self)}, annotations={n_ann})"

    def annotations(self, i: int) -> list[dict[str, Any]]:
        """The ground-truth annotations of row ``i``."""
        if self._by_image is None:
            index: dict[int, list[dict[str, Any]]] = {k: [] for k in self.image_ids}
            for ann in self.ground_truth["annotations"]:
                index[ann["image_id"]].append(ann)
            self._by_image = index
        return self._by_image[self.image_ids[i]]

    def image_size(self, i: int) -> tuple[int, int]:
        """``(width, height)`` of row ``i`` as the ground truth states it."""
        img = self.ground_truth["images"][i]
        return int(img["width"]), int(img["height"])

    def targets(self, i: int) -> dict[str, Any]:
        """Training targets of row ``i``: crowd regions left out, boxes clipped to the image.

        Returns ``boxes`` ``(K, 4)`` float32 x1, y1, x2, y2; ``labels`` ``(K,)`` int64
        contiguous (1..C); ``segmentations``: K COCO segmentations (polygons / RLE) when
        :attr:`with_masks`, else ``None``; ``image_id``; ``size`` (width, height)."""
        width, height = self.image_size(i)
        label_of = {c: k + 1 for k, c in enumerate(self.category_ids)}
        boxes, labels, segs = [], [], []
        for ann in self.annotations(i):
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x2 <= x1 or y2 <= y1:  # a sliver that clipping removed entirely
                continue
            boxes.append((x1, y1, x2, y2))
            labels.append(label_of[ann["category_id"]])
            segs.append(ann.get("segmentation"))
        return {
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, np.int64),
            "segmentations": segs if self.with_masks else None,
            "image_id": self.image_ids[i],
            "size": (width, height),
        }

    def trainable_rows(self) -> list[int]:
        """Rows with at least one non-crowd annotation (torchvision's references train on
        those only)."""
        return [i for i in range(len(self)) if len(self.targets(i)["labels"])]

    def ground_truth_digest(self) -> str:
        return str(provenance.digest(self.ground_truth))

    def head(self, limit: int | None) -> DetectionSplit:
        """The first ``limit`` rows with their ground truth."""
        if limit is None or limit >= len(self.ids):
            return self
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        keep = set(self.image_ids[:limit])
        gt = dict(self.ground_truth)
        gt["images"] = self.ground_truth["images"][:limit]
        gt["annotations"] = [a for a in self.ground_truth["annotations"] if a["image_id"] in keep]
        return DetectionSplit(
            self.ids[:limit],
            self._source,
            ground_truth=gt,
            image_ids=self.image_ids[:limit],
            params={**self.params, "limit": limit},
            with_masks=self.with_masks,
            eval_style=self.eval_style,
            dataset=self.dataset,
            split=self.split,
        )


class ResizedFileSource(FileSource):
    """Images under ``root`` loaded at a fixed ``(width, height)`` (bilinear)."""

    def __init__(self, root: str | Path, relpaths: Sequence[str], size: tuple[int, int]) -> None:
        super().__init__(root, relpaths)
        self.size = (int(size[0]), int(size[1]))

    def load(self, i: int) -> Image.Image:
        image = super().load(i)
        if image.size != self.size:
            image = image.resize(self.size, Image.Resampling.BILINEAR)
        return image


# ------------------------------------------------------------------------------ building
class _Builder:
    """Collects images and annotations, applying the bad-annotation policy."""

    def __init__(self, ctx: ReadContext, base: Path) -> None:
        self.ctx, self.base = ctx, base
        policy = ctx.option("on_bad_annotation", "error")
        if policy not in BAD_ANNOTATION_POLICIES:
            raise DataError(
                f"{ctx.where}: on_bad_annotation must be one of "
                f"{', '.join(BAD_ANNOTATION_POLICIES)}, not {policy!r}."
            )
        self.skip = policy == "skip"
        self.ids: list[str] = []
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.skipped_annotations = 0
        self.skipped_images = 0
        self.counts: dict[str, int] = {}

    def bad(self, message: str) -> None:
        """Raise (policy ``error``) or count a skipped annotation."""
        if not self.skip:
            raise DataError(f"{message}; {_SKIP_HINT}.")
        self.skipped_annotations += 1

    def missing_image(self, message: str) -> bool:
        """Whether the image file is missing (raising under policy ``error``)."""
        if not self.skip:
            raise DataError(f"{message}; {_SKIP_HINT}.")
        self.skipped_images += 1
        return True

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def box(
        self, x1: float, y1: float, x2: float, y2: float, width: int, height: int, where: str
    ) -> bool:
        """Whether the box is usable; reports a bad one through :meth:`bad`."""
        coords = (x1, y1, x2, y2)
        shown = "[" + ", ".join(f"{v:g}" for v in coords) + "]"
        if not all(math.isfinite(v) for v in coords):
            self.bad(f"{where}: box {shown} is not finite")
        elif x2 <= x1 or y2 <= y1:
            self.bad(f"{where}: box {shown} (x1, y1, x2, y2) is degenerate: width or height <= 0")
        elif (
            x1 < -BOX_TOLERANCE
            or y1 < -BOX_TOLERANCE
            or x2 > width + BOX_TOLERANCE
            or y2 > height + BOX_TOLERANCE
        ):
            self.bad(
                f"{where}: box {shown} (x1, y1, x2, y2) lies outside the {width}x{height} image"
            )
        else:
            return True
        return False

    def add_image(self, relpath: str, image: dict[str, Any]) -> None:
        self.ids.append(relpath)
        self.images.append(image)

    def add_annotation(self, ann: dict[str, Any]) -> None:
        ann["id"] = len(self.annotations) + 1 if "id" not in ann else ann["id"]
        self.annotations.append(ann)

    def finish(
        self,
        categories: list[dict[str, Any]],
        source: Any,
        *,
        with_masks: bool,
        eval_style: str = "coco",
        params: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> DetectionSplit:
        if not self.ids:
            raise DataError(
                f"{self.ctx.where}: no images found under {self.base}; check the data root."
            )
        gt: dict[str, Any] = {
            **dict(extra or {}),
            "images": self.images,
            "annotations": self.annotations,
            "categories": categories,
        }
        out_params: dict[str, Any] = {
            **dict(params or {}),
            "on_bad_annotation": "skip" if self.skip else "error",
            "skipped_annotations": self.skipped_annotations,
            "skipped_images": self.skipped_images,
            **self.counts,
        }
        return DetectionSplit(
            self.ids,
            source,
            ground_truth=gt,
            image_ids=[img["id"] for img in self.images],
            params=out_params,
            with_masks=with_masks,
            eval_style=eval_style,
            dataset=self.ctx.spec.name,
            split=self.ctx.split,
        )


def _split_path(ctx: ReadContext, key: str, default: str) -> str:
    """``options[key]`` for this split: a mapping split -> path, or a ``{split}`` template."""
    raw = ctx.option(key, default)
    where = f"{ctx.spec.source} options.{key}"
    if isinstance(raw, Mapping):
        if ctx.split not in raw:
            raise DataError(f"{where} has no entry for split {ctx.split!r}.")
        raw = raw[ctx.split]
    if not isinstance(raw, str):
        raise DataError(f"{where} must be a path or a mapping split -> path, not {raw!r}.")
    return safe_relpath(raw.replace("{split}", ctx.split), where=where)


def _categories(raw: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: 'categories' must be a non-empty list.")
    seen: set[int] = set()
    for cat in raw:
        if not isinstance(cat, Mapping) or not isinstance(cat.get("id"), int):
            raise DataError(f"{where}: category {cat!r} needs an integer 'id'.")
        if cat["id"] in seen:
            raise DataError(f"{where}: category id {cat['id']} is listed twice.")
        seen.add(cat["id"])
    return [dict(c) for c in raw]


def _header_size(path: Path, where: str) -> tuple[int, int]:
    """``(width, height)`` from the image header (no decoding)."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError as exc:
        raise DataError(f"Missing image {path} ({where}); check the data root.") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"Cannot read the header of image {path} ({where}): {exc}.") from exc


# ------------------------------------------------------------------------------------ COCO
def read_coco(ctx: ReadContext) -> DetectionSplit:
    """A COCO-format split (see the module docstring)."""
    ann_rel = _split_path(ctx, "annotations", "annotations/instances_{split}.json")
    base = find_base(ctx, (ctx.spec.name,), markers=(ann_rel,))
    ann_path = base / ann_rel
    images_rel = _split_path(ctx, "images", "{split}")
    try:
        doc = json.loads(read_text(ann_path, "annotation file"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{ann_path} is not valid JSON ({exc}); re-download it.") from exc
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DataError(
            f"{ann_path} is not a COCO instances file: expected lists 'images', "
            "'annotations' and 'categories'."
        )
    categories = _categories(doc["categories"], str(ann_path))
    known = {c["id"] for c in categories}
    from_url = ctx.option("file_name_from", "file_name") == "coco_url"
    use_masks = bool(ctx.option("masks", True))
    build = _Builder(ctx, base)
    kept: dict[int, dict[str, Any]] = {}
    listed: set[Any] = set()
    for img in doc["images"]:
        if not isinstance(img, Mapping) or not isinstance(img.get("id"), int):
            raise DataError(f"{ann_path}: image entry {str(img)[:80]} needs an integer 'id'.")
        image_id = img["id"]
        if image_id in listed:
            raise DataError(f"{ann_path}: image id {image_id} is listed twice.")
        listed.add(image_id)
        name = img.get("coco_url") if from_url else img.get("file_name")
        if not isinstance(name, str) or not name:
            key = "coco_url" if from_url else "file_name"
            raise DataError(f"{ann_path}: image id {image_id} has no {key!r}.")
        if from_url:
            name = "/".join(name.rstrip("/").split("/")[-2:])
            rel = safe_relpath(name, where=f"{ann_path} image id {image_id}")
        else:
            rel = safe_relpath(f"{images_rel}/{name}", where=f"{ann_path} image id {image_id}")
        path = base / rel
        if not path.is_file():
            build.missing_image(f"{ann_path}: image id {image_id}: missing image file {path}")
            continue
        entry = dict(img)
        if not (isinstance(img.get("width"), int) and isinstance(img.get("height"), int)):
            entry["width"], entry["height"] = _header_size(path, f"image id {image_id}")
        entry["file_name"] = rel
        kept[image_id] = entry
        build.add_image(rel, entry)
    ann_ids: set[Any] = set()
    for ann in doc["annotations"]:
        if not isinstance(ann, Mapping):
            raise DataError(f"{ann_path}: annotation {str(ann)[:80]} is not an object.")
        image_id = ann.get("image_id")
        where = f"{ann_path}: image id {image_id}, annotation {ann.get('id')}"
        if ann.get("id") in ann_ids or not isinstance(ann.get("id"), int) or ann["id"] < 1:
            raise DataError(f"{where}: annotation ids must be unique integers >= 1.")
        ann_ids.add(ann["id"])
        if image_id not in kept:
            if image_id in listed:
                continue  # its image was skipped (missing file)
            build.bad(f"{where}: the image id is not in 'images'")
            continue
        if ann.get("category_id") not in known:
            build.bad(f"{where}: unknown category id {ann.get('category_id')!r}")
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            build.bad(f"{where}: 'bbox' must be [x, y, width, height], got {bbox!r}")
            continue
        x, y, w, h = (float(v) if isinstance(v, int | float) else math.nan for v in bbox)
        img = kept[image_id]
        if not build.box(x, y, x + w, y + h, img["width"], img["height"], where):
            continue
        entry = dict(ann)
        if not use_masks:
            entry.pop("segmentation", None)
        entry.setdefault("iscrowd", 0)
        entry.setdefault("area", w * h)
        build.add_annotation(entry)
    with_masks = use_masks and all(
        a.get("segmentation") for a in build.annotations if not a.get("iscrowd", 0)
    )
    extra = {k: doc[k] for k in ("info", "licenses") if k in doc}
    return build.finish(
        categories,
        FileSource(base, build.ids),
        with_masks=with_masks,
        eval_style=str(ctx.option("style", "coco")),
        params={"annotations": ann_rel},
        extra=extra,
    )


# ------------------------------------------------------------------------------------- VOC
_DTD = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)


def parse_voc_xml(path: Path) -> ElementTree.Element:
    """A VOC annotation file's root element; documents with a DTD are refused (entity
    expansion attacks need one, and VOC files never have one)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"Missing annotation file {path}; check the data root.") from exc
    except OSError as exc:
        raise DataError(f"Cannot read annotation file {path}: {exc}.") from exc
    if _DTD.search(data):
        raise DataError(f"{path}: XML with a DOCTYPE / ENTITY declaration is refused.")
    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise DataError(f"{path} is not valid XML ({exc}); re-create it.") from exc


def _xml_number(node: ElementTree.Element | None, tag: str) -> float:
    text = None if node is None else node.findtext(tag)
    try:
        return float(text) if text is not None else math.nan
    except ValueError:
        return math.nan


def _voc_rows(ctx: ReadContext, base: Path, ann_dir: Path) -> list[str]:
    list_rel = ctx.option("list_file")
    if list_rel is not None:
        list_path = base / _split_path(ctx, "list_file", str(list_rel))
        if list_path.is_file():
            stems = [
                line.split()[0]
                for line in read_text(list_path, "list").splitlines()
                if line.strip()
            ]
            return [safe_relpath(s, where=str(list_path)) for s in stems]
    if not ann_dir.is_dir():
        raise DataError(f"{ctx.where}: no annotation directory {ann_dir}; check the data root.")
    return sorted(p.stem for p in ann_dir.glob("*.xml"))


def read_voc(ctx: ReadContext) -> DetectionSplit:
    """A VOC-XML detection split, e.g. Sim10k (see the module docstring)."""
    ann_name = safe_relpath(ctx.option("annotation_dir", "Annotations"), where="annotation_dir")
    img_name = safe_relpath(ctx.option("image_dir", "JPEGImages"), where="image_dir")
    base = find_base(ctx, (ctx.spec.name, "VOC2012"), markers=(ann_name,))
    classes = [str(c) for c in ctx.option("classes", ["car"])]
    ignore = {str(c) for c in ctx.option("ignore_classes", [])}
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(classes)]
    build = _Builder(ctx, base)
    ann_dir = base / ann_name
    for stem in _voc_rows(ctx, base, ann_dir):
        xml_path = ann_dir / f"{stem}.xml"
        image_id = len(build.images) + 1
        root = parse_voc_xml(xml_path)
        filename = root.findtext("filename") or f"{stem}.jpg"
        rel = safe_relpath(f"{img_name}/{filename.strip()}", where=str(xml_path))
        path = base / rel
        where = f"{xml_path}: image id {image_id} ({rel})"
        if not path.is_file():
            build.missing_image(f"{where}: missing image file {path}")
            continue
        size = root.find("size")
        width, height = _xml_number(size, "width"), _xml_number(size, "height")
        if not (width > 0 and height > 0):
            width, height = _header_size(path, where)
        width, height = int(width), int(height)
        build.add_image(rel, {"id": image_id, "file_name": rel, "width": width, "height": height})
        for k, obj in enumerate(root.iter("object")):
            name = (obj.findtext("name") or "").strip()
            if name in ignore:
                build.count("ignored_objects")
                continue
            if name not in classes:
                build.bad(f"{where}: object {k} has unknown category {name!r} (classes: {classes})")
                continue
            box = obj.find("bndbox")
            x1, y1 = _xml_number(box, "xmin") - 1, _xml_number(box, "ymin") - 1
            x2, y2 = _xml_number(box, "xmax"), _xml_number(box, "ymax")
            if not build.box(x1, y1, x2, y2, width, height, f"{where}, object {k}"):
                continue
            build.add_annotation(
                {
                    "image_id": image_id,
                    "category_id": classes.index(name) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    return build.finish(categories, FileSource(base, build.ids), with_masks=False)


# ------------------------------------------------------------------------------ Cityscapes
def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _cityscapes_files(gt_dir: Path) -> Iterator[Path]:
    for city in sorted(p for p in gt_dir.iterdir() if p.is_dir()):
        yield from sorted(city.glob("*_gtFine_polygons.json"))


def read_cityscapes(ctx: ReadContext) -> DetectionSplit:
    """Cityscapes instances from the gtFine polygons (see the module docstring)."""
    base = find_base(ctx, (ctx.spec.name, "cityscapes"), markers=("gtFine",))
    classes = [str(c) for c in ctx.option("classes", ["car"])]
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(classes)]
    resize = ctx.option("resize")
    if resize is not None and (
        not isinstance(resize, list | tuple)
        or len(resize) != 2
        or not all(isinstance(v, int) and v > 0 for v in resize)
    ):
        raise DataError(f"{ctx.spec.source}: options.resize must be [width, height] in pixels.")
    gt_dir = base / "gtFine" / ctx.split
    if not gt_dir.is_dir():
        raise DataError(f"{ctx.where}: no directory {gt_dir}; check the data root.")
    build = _Builder(ctx, base)
    for json_path in _cityscapes_files(gt_dir):
        stem = json_path.name[: -len("_gtFine_polygons.json")]
        rel = f"leftImg8bit/{ctx.split}/{json_path.parent.name}/{stem}_leftImg8bit.png"
        image_id = len(build.images) + 1
        where = f"{json_path}: image id {image_id}"
        if not (base / rel).is_file():
            build.missing_image(f"{where}: missing image file {base / rel}")
            continue
        try:
            doc = json.loads(read_text(json_path, "polygon file"))
            native_w, native_h = int(doc["imgWidth"]), int(doc["imgHeight"])
            objects = list(doc["objects"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"{where}: not a Cityscapes polygon file (imgWidth, imgHeight, objects): {exc}."
            ) from exc
        width, height = (int(resize[0]), int(resize[1])) if resize else (native_w, native_h)
        sx, sy = width / native_w, height / native_h
        build.add_image(rel, {"id": image_id, "file_name": rel, "width": width, "height": height})
        for k, obj in enumerate(objects):
            if not isinstance(obj, Mapping):
                raise DataError(f"{where}: object {k} is not a JSON object.")
            label = str(obj.get("label", ""))
            crowd = label.endswith("group") and label[: -len("group")] in classes
            if (label not in classes and not crowd) or obj.get("deleted"):
                continue
            try:
                pts = np.asarray(obj["polygon"], dtype=np.float64).reshape(-1, 2)
            except (KeyError, TypeError, ValueError):
                pts = np.zeros((0, 2))
            name = label[: -len("group")] if crowd else label
            obj_where = f"{where}, object {k} ({label})"
            if len(pts) < 3:
                build.bad(f"{obj_where}: a polygon needs at least 3 points")
                continue
            pts = (pts + 0.5) * (sx, sy)
            x1, y1 = pts.min(axis=0)
            x2, y2 = pts.max(axis=0)
            if not build.box(float(x1), float(y1), float(x2), float(y2), width, height, obj_where):
                continue
            build.count("crowd_regions" if crowd else "instances")
            build.add_annotation(
                {
                    "image_id": image_id,
                    "category_id": classes.index(name) + 1,
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "area": _polygon_area(pts),
                    "iscrowd": int(crowd),
                    "segmentation": [pts.reshape(-1).tolist()],
                }
            )
    params: dict[str, Any] = {"resize": list(resize) if resize else None}
    source = (
        ResizedFileSource(base, build.ids, tuple(resize)) if resize else FileSource(base, build.ids)
    )
    return build.finish(categories, source, with_masks=False, params=params)


__all__ = [
    "BAD_ANNOTATION_POLICIES",
    "BOX_TOLERANCE",
    "DetectionSplit",
    "ResizedFileSource",
    "parse_voc_xml",
    "read_cityscapes",
    "read_coco",
    "read_voc",
]

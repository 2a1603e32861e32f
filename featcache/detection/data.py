"""Detection data: a :class:`DetectionSplit` as a torch dataset of (image, target) pairs.

Images leave the workers as ``uint8`` ``(3, H, W)`` tensors (the engine moves them to
the device and scales them to [0, 1], as torchvision's detection models expect);
targets are torchvision's dicts: ``boxes`` (x1, y1, x2, y2 pixels), ``labels``
(1..C), ``masks`` ``(K, H, W)`` uint8 for Mask R-CNN, ``image_id``.

Augmentation uses ``torchvision.transforms.v2`` on ``tv_tensors`` (boxes and masks move
with the image):

* ``flip``: horizontal flip (p=0.5); multi-scale resizing is the model's own
  (``min_size`` as a range, torchvision's GeneralizedRCNNTransform);
* ``lsj``: large-scale jitter (Ghiasi et al. 2021, ViTDet): rescale so the image fits
  ``size`` x ``size`` times a factor in [0.1, 2.0], random crop / pad to ``size`` x
  ``size`` with the mean colour, flip, drop boxes the crop emptied;
* ``none``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from featcache.datasets.detection import DetectionSplit
from featcache.errors import DataError, UnknownNameError

AUGMENTATIONS = ("flip", "lsj", "none")
LSJ_SCALE = (0.1, 2.0)


def decode_masks(segmentations: Sequence[Any], width: int, height: int) -> np.ndarray:
    """COCO segmentations (polygons, RLE) as ``(K, H, W)`` uint8 masks."""
    from faster_coco_eval.core import mask as mask_api

    out = np.zeros((len(segmentations), height, width), np.uint8)
    for k, seg in enumerate(segmentations):
        if isinstance(seg, list):
            rle = mask_api.merge(mask_api.frPyObjects(seg, height, width))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            rle = mask_api.frPyObjects(seg, height, width)
        else:
            rle = seg
        out[k] = mask_api.decode(rle)
    return out


def train_transforms(aug: str, *, size: int | None = None, fill: Sequence[int] = (0, 0, 0)) -> Any:
    """The training augmentation ``aug`` (see the module docstring)."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    if aug == "none":
        return None
    if aug == "flip":
        return v2.RandomHorizontalFlip(0.5)
    if aug == "lsj":
        if not size:
            raise DataError("Large-scale jitter needs a size (the recipe's lsj_size).")
        return v2.Compose(
            [
                v2.ScaleJitter((size, size), scale_range=LSJ_SCALE),
                v2.RandomCrop(
                    (size, size),
                    pad_if_needed=True,
                    fill={tv_tensors.Image: tuple(int(v) for v in fill), "others": 0},
                ),
                v2.RandomHorizontalFlip(0.5),
                v2.SanitizeBoundingBoxes(),
            ]
        )
    raise UnknownNameError("augmentation", aug, AUGMENTATIONS)


class DetectionDataset(torch.utils.data.Dataset[tuple[torch.Tensor, dict[str, Any]]]):
    """Rows ``rows`` of ``split`` (all by default) as (uint8 image, target) pairs; ``masks``
    adds the instance masks (Mask R-CNN)."""

    def __init__(
        self,
        split: DetectionSplit,
        rows: Sequence[int] | None = None,
        *,
        transforms: Any = None,
        masks: bool = False,
        seed: int = 0,
    ) -> None:
        self.split = split
        self.rows = list(range(len(split))) if rows is None else list(rows)
        self.transforms = transforms
        self.masks = masks
        self.seed = int(seed)
        #: Augmentation of position ``k`` is seeded by (seed, epoch, k): the same in any
        #: worker, and after a resume.
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, dict[str, Any]]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2.functional import pil_to_tensor

        i = self.rows[k]
        image = self.split.load(i)
        t = self.split.targets(i)
        width, height = t["size"]
        if image.size != (width, height):
            raise DataError(
                f"{self.split.describe(i)} (image id {t['image_id']}) is {image.size[0]}x"
                f"{image.size[1]} but its annotations say {width}x{height}; fix the annotation "
                "file's width / height."
            )
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(t["boxes"]), format="XYXY", canvas_size=(height, width)
            ),
            "labels": torch.from_numpy(t["labels"]),
            "image_id": t["image_id"],
        }
        if self.masks:
            target["masks"] = tv_tensors.Mask(
                torch.from_numpy(decode_masks(t["segmentations"], width, height))
            )
        img = tv_tensors.Image(pil_to_tensor(image))
        if self.transforms is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hash((self.seed, self.epoch, k)) & 0x7FFFFFFF)
                img, target = self.transforms(img, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor).float()
        if "masks" in target:
            target["masks"] = target["masks"].as_subclass(torch.Tensor)
        return img.as_subclass(torch.Tensor), target


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[Any], list[Any]]:
    """Lists of images and targets (the R-CNNs batch images of different sizes themselves)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def epoch_batches(n: int, micro_batch: int, *, seed: int, epoch: int) -> list[list[int]]:
    """Epoch ``epoch``'s micro-batches of positions ``0..n-1``: a permutation seeded by
    ``(seed, epoch)`` cut into full micro-batches (the remainder is dropped), so any
    suffix of an epoch can be replayed exactly after a resume."""
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    return [order[i : i + micro_batch].tolist() for i in range(0, n - micro_batch + 1, micro_batch)]


def eval_batches(n: int, batch_size: int) -> list[list[int]]:
    """Positions ``0..n-1`` in order, in batches of ``batch_size`` (the last may be short)."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def make_loader(
    dataset: DetectionDataset,
    batches: Sequence[Sequence[int]],
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader[Any]:
    """A DataLoader over the given batches of dataset positions.

    It has a generator of its own: a DataLoader draws its workers' base seed when it
    starts, which from the global RNG would shift the model's own draws (RPN / RoI
    sampling) each time a resumed run opens a loader mid-epoch."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=[list(b) for b in batches],
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
    )

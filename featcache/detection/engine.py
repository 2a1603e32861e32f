"""What one detection epoch does, and what evaluating does: no store, no files.

:func:`train_one_epoch` runs the loop of torchvision's ``references/detection/engine.py``
(the model returns its loss dict in train mode; the losses are summed) with what a
BoB recipe adds: gradient accumulation up to the recipe's batch, bf16 / fp16 autocast
(a GradScaler for fp16), a per-update learning-rate schedule (timm's ``step_update``)
and gradient clipping; :func:`train_updates` is the same loop as a generator that
yields after every update (where a job checkpoints). A non-finite loss stops the run
with :class:`DivergedError`.

:func:`evaluate` runs the model in eval mode and returns COCO result rows (boxes as
``[x, y, w, h]``, category ids of the dataset, masks as RLE thresholded at 0.5), which
:func:`evaluators.detection.coco_ap` scores.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from featcache.errors import BobxError, UnknownNameError

PRECISIONS = ("fp32", "bf16", "fp16")
MASK_THRESHOLD = 0.5


class DivergedError(BobxError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochStats:
    """What one epoch of :func:`train_one_epoch` did."""

    updates: int = 0  # optimizer steps taken
    iterations: int = 0  # micro-batches seen
    images: int = 0
    seconds: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)  # summed, then mean per micro-batch

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def loss(self) -> float:
        return float(sum(self.losses.values()))


def autocast_dtype(precision: str) -> torch.dtype | None:
    """``None`` (fp32), ``torch.bfloat16`` or ``torch.float16``."""
    if precision not in PRECISIONS:
        raise UnknownNameError("precision", precision, PRECISIONS)
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(
    images: Sequence[torch.Tensor],
    targets: Sequence[Mapping[str, Any]] | None,
    device: torch.device,
) -> tuple[list[torch.Tensor], list[dict[str, Any]] | None]:
    """uint8 images -> float [0, 1] on ``device``; target tensors moved along."""
    out = [img.to(device, non_blocking=True).float().div_(255) for img in images]
    if targets is None:
        return out, None
    moved = [
        {
            k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in t.items()
        }
        for t in targets
    ]
    return out, moved


def train_updates(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[Sequence[torch.Tensor], Sequence[Mapping[str, Any]]]],
    *,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    accum_steps: int = 1,
    scheduler: Any = None,
    start_update: int = 0,
    clip_grad_norm: float | None = None,
    stats: EpochStats | None = None,
) -> Iterator[int]:
    """Train on ``batches``, yielding the update count after every optimizer step.

    ``accum_steps`` micro-batches make one update (each loss divided accordingly);
    ``scheduler.step_update(n)`` follows update ``n`` (counted from ``start_update``, so
    a resumed run continues its schedule). A trailing partial accumulation is stepped
    too. ``stats`` (optional) accumulates images, micro-batches and summed losses."""
    device = torch.device(device)
    dtype = autocast_dtype(precision)
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    stats = EpochStats() if stats is None else stats
    model.train()
    optimizer.zero_grad(set_to_none=True)
    pending, update = 0, start_update
    for images, targets in batches:
        imgs, tgts = to_device(images, targets, device)
        with _autocast(device, dtype):
            loss_dict = model(imgs, tgts)
        loss = sum(loss_dict.values())
        value = float(loss.detach())
        if not math.isfinite(value):
            parts = ", ".join(f"{k}={float(v):.4g}" for k, v in loss_dict.items())
            raise DivergedError(
                f"Detection loss is {value} at update {update} ({parts}); lower the learning "
                "rate, use --precision bf16 instead of fp16, or check the annotations."
            )
        scaled = loss / accum_steps
        (scaled if scaler is None else scaler.scale(scaled)).backward()
        pending += 1
        stats.iterations += 1
        stats.images += len(imgs)
        for k, v in loss_dict.items():
            stats.losses[k] = stats.losses.get(k, 0.0) + float(v.detach())
        if pending == accum_steps:
            _step(optimizer, scaler, clip_grad_norm)
            pending, update = 0, update + 1
            stats.updates += 1
            if scheduler is not None:
                scheduler.step_update(num_updates=update)
            yield update
    if pending:
        _step(optimizer, scaler, clip_grad_norm)
        update += 1
        stats.updates += 1
        if scheduler is not None:
            scheduler.step_update(num_updates=update)
        yield update


def _step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    clip_grad_norm: float | None,
) -> None:
    if scaler is not None:
        if clip_grad_norm:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(_params(optimizer), clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        if clip_grad_norm:
            nn.utils.clip_grad_norm_(_params(optimizer), clip_grad_norm)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[Sequence[torch.Tensor], Sequence[Mapping[str, Any]]]],
    *,
    log: Callable[[str], None] | None = None,
    log_every: int = 20,
    **options: Any,
) -> EpochStats:
    """One pass over ``batches`` (options: those of :func:`train_updates`); the mean
    losses per micro-batch, images and throughput in an :class:`EpochStats`."""
    stats = EpochStats()
    device = torch.device(options.get("device", "cpu"))
    start = time.perf_counter()
    for update in train_updates(model, optimizer, batches, stats=stats, **options):
        if log is not None and log_every and update % log_every == 0:
            rate = stats.images / (time.perf_counter() - start)
            log(f"update {update}: loss {stats.loss / stats.iterations:.4f} ({rate:.1f} img/s)")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.seconds = time.perf_counter() - start
    stats.losses = {k: v / max(stats.iterations, 1) for k, v in stats.losses.items()}
    return stats


def _params(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for group in optimizer.param_groups:
        yield from group["params"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Sequence[torch.Tensor], Sequence[Mapping[str, Any]]]],
    *,
    category_ids: Sequence[int],
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    masks: bool = False,
) -> list[dict[str, Any]]:
    """COCO result rows for every image of ``loader`` (targets give the image ids).

    ``category_ids[k - 1]`` is the dataset's id of the model's label ``k``."""
    from evaluators.detection import encode_masks, predictions_from_arrays

    device = torch.device(device)
    dtype = autocast_dtype(precision)
    model.eval()
    rows: list[dict[str, Any]] = []
    cats = np.asarray(category_ids, dtype=np.int64)
    for images, targets in loader:
        imgs, _ = to_device(images, None, device)
        with _autocast(device, dtype):
            outputs = model(imgs)
        for target, out in zip(targets, outputs, strict=True):
            boxes = out["boxes"].float().cpu().numpy()
            if not len(boxes):
                continue
            xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
            labels = out["labels"].cpu().numpy()
            rle = None
            if masks:
                binary = (out["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy()
                rle = encode_masks(binary)
            rows += predictions_from_arrays(
                np.full(len(boxes), int(target["image_id"])),
                xywh,
                out["scores"].float().cpu().numpy(),
                cats[labels - 1],
                masks=rle,
            )
    return rows

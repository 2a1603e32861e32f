"""A detection training run as a resumable :class:`featcache.jobs.Trainer` (no store inside).

:class:`DetectionTrainer` wires one recipe point (``featcache.jobs.recipes.DETECTION_FIELDS``)
to the pieces of this package, as mmdetection's configs for BoB do:

* optimizer: timm's ``create_optimizer_v2`` (AdamW; no weight decay on norms and biases),
  over the parameters that train (a frozen body has none);
* schedule: timm's ``MultiStepLRScheduler`` counted in updates: ``warmup_iters`` linear
  warm-up from ``warmup_ratio x lr``, then ``x lr_decay`` after each epoch of ``lr_steps``;
* batches: each epoch a permutation seeded by ``(seed, epoch)`` cut into micro-batches,
  ``accum`` micro-batches per update so that ``micro x accum`` is the recipe's batch (on
  a small set, what one epoch holds); each image's augmentation is seeded by its place
  in the epoch (:mod:`.data`), and the model's own draws (multi-scale size, RPN / RoI
  sampling) come from the torch RNG the checkpoint saves, so a resumed run repeats the
  very updates an uninterrupted one makes (bit-identical on CPU);
* resizing: multi-scale (short side ``scale_min..scale_max``), large-scale jitter at
  ``lsj_size`` or a fixed size while training, ``test_size`` / ``max_size`` at test.

:meth:`evaluate` scores every evaluation set (:class:`EvalSet`): the trained dataset's own
(all COCO metrics, boxes and masks) and any ``--eval-on`` set (box metrics over the
categories both share, matched by name: ``cityscapes.ap50_box`` is Sim10k -> Cityscapes).
``on_predictions(name, rows)`` receives each set's COCO result rows, for the caller to keep.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from featcache.datasets.detection import DetectionSplit
from featcache.detection.data import (
    DetectionDataset,
    epoch_batches,
    eval_batches,
    make_loader,
    train_transforms,
)
from featcache.detection.engine import EpochStats, autocast_dtype, evaluate, train_updates
from featcache.detection.model import set_sizes
from featcache.errors import DataError
from featcache.jobs.driver import EpochEnd, Step
from featcache.training.classification import updates_plan


@dataclass(frozen=True)
class EvalSet:
    """An evaluation split and how the model's labels map onto its categories.

    ``categories[k - 1]`` is this split's category id for model label ``k`` (-1: the
    split has no such category). ``main`` marks the trained dataset's own split."""

    name: str
    split: DetectionSplit
    categories: tuple[int, ...]
    main: bool = False

    @property
    def shared(self) -> list[int]:
        return sorted(c for c in self.categories if c >= 0)


def eval_set(name: str, train: DetectionSplit, split: DetectionSplit, *, main: bool) -> EvalSet:
    """``split`` as an evaluation set for a model trained on ``train`` (categories matched
    by name; DataError when they share none)."""
    by_name = {str(c.get("name")): int(c["id"]) for c in split.ground_truth["categories"]}
    cats = tuple(by_name.get(str(c.get("name")), -1) for c in train.ground_truth["categories"])
    if all(c < 0 for c in cats):
        raise DataError(
            f"{split.dataset}/{split.split} shares no category name with {train.dataset} "
            f"({', '.join(train.classes or [])}); it cannot evaluate this detector."
        )
    return EvalSet(name, split, cats, main)


@dataclass(frozen=True)
class DetectionData:
    """What a run trains on (rows of ``train``) and evaluates on."""

    train: DetectionSplit
    train_rows: Sequence[int]
    evals: tuple[EvalSet, ...]
    masks: bool


def resize_plan(point: Mapping[str, Any]) -> dict[str, Any]:
    """Training short sides / longest side and test sizes of a recipe point."""
    aug = point["train_aug"]
    if aug == "multiscale":
        sizes = list(range(point["scale_min"], point["scale_max"] + 1, point["scale_step"]))
        train = (sizes or [point["scale_max"]], point["max_size"])
    elif aug == "lsj":  # the crop is already lsj_size square: the model must not rescale it
        train = ([point["lsj_size"]], point["lsj_size"])
    else:
        train = ([point["test_size"]], point["max_size"])
    return {"train": train, "test": ([point["test_size"]], point["max_size"])}


class DetectionTrainer:
    """Train a detector on ``data`` with one recipe ``point`` (see the module doc).

    ``micro_batch``: images per forward (memory); ``point["batch_size"]`` is reached by
    gradient accumulation."""

    def __init__(
        self,
        model: nn.Module,
        data: DetectionData,
        point: Mapping[str, Any],
        *,
        image_mean: Sequence[float],
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        micro_batch: int = 2,
        num_workers: int = 0,
        seed: int = 0,
        on_predictions: Callable[[EvalSet, list[dict[str, Any]]], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import MultiStepLRScheduler

        if not len(data.train_rows):
            raise DataError(
                f"{data.train.dataset}/{data.train.split} has no image with a trainable "
                "(non-crowd) annotation."
            )
        self.point, self.data, self.seed = dict(point), data, int(seed)
        self.device = torch.device(device)
        self.precision = precision
        self.dtype = autocast_dtype(precision)
        self.num_workers, self.on_predictions, self.log = num_workers, on_predictions, log
        self.plan = updates_plan(len(data.train_rows), point["batch_size"], micro_batch, even=False)
        self.epochs = int(point["epochs"])
        self.sizes = resize_plan(point)
        torch.manual_seed(self.seed)  # the model's own draws start here
        self.model = model.to(self.device)
        p = self.point
        self.optimizer = create_optimizer_v2(
            self.model,
            opt=p["optimizer"],
            lr=p["lr"],
            weight_decay=p["weight_decay"],
            momentum=p["momentum"],
        )
        upe = self.plan["updates_per_epoch"]
        self.scheduler = MultiStepLRScheduler(
            self.optimizer,
            decay_t=[round(e * upe) for e in p["lr_steps"]],
            decay_rate=p["lr_decay"],
            warmup_t=p["warmup_iters"],
            warmup_lr_init=p["lr"] * p["warmup_ratio"],
            t_in_epochs=False,
        )
        fp16 = self.dtype is torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type) if fp16 else None
        fill = tuple(int(round(255 * m)) for m in image_mean)
        self.train_set = DetectionDataset(
            data.train,
            data.train_rows,
            transforms=train_transforms(
                "flip" if p["train_aug"] == "multiscale" else p["train_aug"],
                size=p["lsj_size"],
                fill=fill,
            ),
            masks=data.masks,
            seed=self.seed,
        )
        self.epoch = self.micro = self.step = 0
        self.loss_sums: dict[str, float] = {}
        self._final: tuple[dict[str, float], dict[str, list[dict[str, Any]]]] | None = None

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": rng,
            "position": [self.epoch, self.micro, self.step],
            "loss_sums": dict(self.loss_sums),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.epoch, self.micro, self.step = (int(v) for v in state["position"])
        self.loss_sums = {str(k): float(v) for k, v in state["loss_sums"].items()}
        self._final = None

    # -- training ---------------------------------------------------------------------
    def run(self) -> Iterator[Step | EpochEnd]:
        """Train from the current position; yields after every update and every epoch."""
        micro, accum = self.plan["micro_batch"], self.plan["accum_steps"]
        n_micro = self.plan["updates_per_epoch"] * accum
        cuda = self.device.type == "cuda"
        while self.epoch < self.epochs:
            set_sizes(self.model, *self.sizes["train"])
            self.train_set.epoch = self.epoch
            batches = epoch_batches(
                len(self.data.train_rows), micro, seed=self.seed, epoch=self.epoch
            )
            loader = make_loader(
                self.train_set,
                batches[self.micro : n_micro],
                num_workers=self.num_workers,
                pin_memory=cuda,
            )
            stats = EpochStats()
            start = time.perf_counter()
            for update in train_updates(
                self.model,
                self.optimizer,
                loader,
                device=self.device,
                precision=self.precision,
                scaler=self.scaler,
                accum_steps=accum,
                scheduler=self.scheduler,
                start_update=self.step,
                clip_grad_norm=self.point["clip_grad"],
                stats=stats,
            ):
                self.step = update
                self.micro += accum
                for k, v in stats.losses.items():
                    self.loss_sums[k] = self.loss_sums.get(k, 0.0) + v
                stats.losses.clear()
                yield Step(self.step, self.epoch)
            seconds = time.perf_counter() - start
            row: dict[str, float] = {
                "train_loss": sum(self.loss_sums.values()) / max(1, n_micro),
                "lr": max(g["lr"] for g in self.optimizer.param_groups),
                "images_per_s": stats.images / seconds if seconds > 0 else math.nan,
            }
            row.update({f"train_{k}": v / max(1, n_micro) for k, v in self.loss_sums.items()})
            last = self.epoch + 1 == self.epochs
            if self.point["eval_each_epoch"] or last:
                metrics, predictions = self._score()
                for es in self.data.evals:
                    key = "ap_box" if es.main else f"{es.name}.ap50_box"
                    row[f"val_{key}" if es.main else key] = metrics.get(key, math.nan)
                if last:
                    self._final = (metrics, predictions)
            if self.log is not None:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items())
                self.log(f"epoch {self.epoch + 1}/{self.epochs}: {shown}")
            self.epoch += 1
            self.micro = 0
            self.loss_sums = {}
            yield EpochEnd(self.epoch - 1, self.step, row)

    # -- evaluation -------------------------------------------------------------------
    def predict(self, es: EvalSet) -> list[dict[str, Any]]:
        """COCO result rows of the model on ``es`` (categories of ``es``'s split)."""
        set_sizes(self.model, *self.sizes["test"])
        dataset = DetectionDataset(es.split)
        batch = max(1, self.plan["micro_batch"])
        loader = make_loader(
            dataset,
            eval_batches(len(dataset), batch),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        rows = evaluate(
            self.model,
            loader,
            category_ids=[c if c >= 0 else -1 for c in es.categories],
            device=self.device,
            precision=self.precision,
            masks=self.data.masks and es.main,
        )
        return [r for r in rows if r["category_id"] >= 0]

    def _score(self) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
        from evaluators.detection import coco_ap

        metrics: dict[str, float] = {}
        predictions: dict[str, list[dict[str, Any]]] = {}
        for es in self.data.evals:
            rows = self.predict(es)
            predictions[es.name] = rows
            gt, style = es.split.ground_truth, es.split.eval_style
            if es.main:
                metrics.update(coco_ap(gt, rows, iou_type="bbox", style=style))
                if self.data.masks:
                    metrics.update(coco_ap(gt, rows, iou_type="segm", style=style))
            else:
                box = coco_ap(gt, rows, iou_type="bbox", category_ids=es.shared, style=style)
                metrics.update({f"{es.name}.{k}": v for k, v in box.items()})
        self.model.train()
        return metrics, predictions

    def evaluate(self) -> dict[str, float]:
        """The final metrics of every evaluation set (see the module doc)."""
        if self._final is None:
            self._final = self._score()
        metrics, predictions = self._final
        if self.on_predictions is not None:
            for es in self.data.evals:
                self.on_predictions(es, predictions[es.name])
        return dict(metrics)

    def weights(self) -> Mapping[str, torch.Tensor]:
        return self.model.state_dict()


def train_rows(split: DetectionSplit) -> np.ndarray:
    """Rows with at least one non-crowd annotation (torchvision's references train on
    those only)."""
    return np.asarray(split.trainable_rows(), dtype=np.int64)


__all__ = [
    "DetectionData",
    "DetectionTrainer",
    "EvalSet",
    "eval_set",
    "resize_plan",
    "train_rows",
]

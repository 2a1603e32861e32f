"""The image-classification fine-tuning loop, readable alone (no store inside).

:class:`ClassificationTrainer` implements :class:`featcache.jobs.Trainer` with timm's
training parts, as timm's ``train.py`` wires them:

* optimizer: ``create_optimizer_v2`` (``layer_decay`` groups layers by the model's
  ``group_matcher``; no weight decay on biases and norms);
* schedule: ``create_scheduler_v2("cosine")`` stepped per update, warm-up as a prefix
  (``warmup_epochs`` of linear warm-up from ``warmup_lr``, then cosine to ``min_lr``
  over the remaining epochs, as MAE's fine-tuning does);
* data: ``create_transform(is_training=True, auto_augment=..., use_prefetcher=True)`` on
  the CPU (uint8 out); on the device normalisation, then timm's ``RandomErasing``,
  then ``Mixup`` / CutMix (as timm's prefetching loader and train loop do);
* loss: ``SoftTargetCrossEntropy`` under mixup, else ``LabelSmoothingCrossEntropy``
  (or plain cross-entropy); multi-label: ``BCEWithLogitsLoss`` (mixup off);
* stochastic depth: ``drop_path_rate`` at model creation (:mod:`featcache.training.model`).

Performance: autocast in bf16 / fp16 (a ``GradScaler`` for fp16), channels_last,
pinned memory and non-blocking copies on CUDA, gradient accumulation to the recipe's
effective batch, loss kept on the device (no per-step host sync).

Determinism: an epoch is a seeded permutation cut into fixed micro-batches
(:mod:`featcache.training.data`), each sample's augmentation seeded by its key; the
state (:meth:`state_dict`) holds model, optimizer, scheduler, scaler, the Python /
NumPy / torch (and CUDA) RNG states and the position, so a resumed run continues with
the very same update. On CPU a resumed run ends bit-identical to an uninterrupted one;
on CUDA, cuDNN / atomics make runs differ in the last bits (``deterministic=True``
asks torch for deterministic kernels, slower).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from featcache.errors import BobxError
from featcache.jobs.distributed import Ranks, all_sum, gather
from featcache.jobs.driver import EpochEnd, Step
from featcache.training.data import (
    SeededImages,
    check_batch,
    epoch_batches,
    eval_batches,
    loader,
)
from featcache.training.model import ImageClassifier

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ClassificationData:
    """What the loop trains and evaluates on: rows of ImageSplits (labels inside them)."""

    train: Any  # ImageSplit
    train_rows: np.ndarray
    val: Any
    val_rows: np.ndarray
    test: Any
    test_rows: np.ndarray
    num_classes: int
    multilabel: bool = False


def updates_plan(
    n_train: int, batch_size: int, micro_batch: int, *, even: bool, world: int = 1
) -> dict[str, int]:
    """Micro-batch (per process), accumulation steps and updates per epoch.

    ``micro_batch`` is capped so that ``world`` processes together take at most the
    effective ``batch_size`` and at most ``n_train`` images; mixup needs an even
    micro-batch (``even``). ``accum = round(batch_size / (micro * world))``; when an epoch
    holds fewer micro-batches than one update needs, the update takes what there is.
    """
    micro = max(1, min(micro_batch, batch_size // world, n_train // world))
    if even and micro > 1:
        micro -= micro % 2
    step = micro * world  # images per micro-step, all processes together
    n_micro = n_train // step
    accum = max(1, min(round(batch_size / step), n_micro))
    return {
        "micro_batch": micro,
        "accum_steps": accum,
        "updates_per_epoch": n_micro // accum,
        "batch_size_effective": step * accum,
        "world_size": world,
    }


def _numpy_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached]


def _set_numpy_state(state: Sequence[Any]) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


class ClassificationTrainer:
    """Fine-tune ``model`` on ``data`` with one recipe point (see the module doc).

    ``point``: the resolved recipe values (:data:`featcache.jobs.recipes.FINETUNE_FIELDS`).
    ``micro_batch``: images per forward (memory); the recipe's ``batch_size`` is reached
    by gradient accumulation."""

    def __init__(
        self,
        model: ImageClassifier,
        data: ClassificationData,
        point: Mapping[str, Any],
        *,
        input_size: tuple[int, int, int],
        eval_transform: Any,
        interpolation: str = "bicubic",
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        micro_batch: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        deterministic: bool = False,
        ranks: Ranks | None = None,
    ) -> None:
        from timm.data import Mixup, create_transform
        from timm.data.random_erasing import RandomErasing
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        self.point, self.data, self.seed = dict(point), data, int(seed)
        self.ranks = ranks or Ranks()
        self.device = torch.device(device)
        self.autocast_dtype = PRECISIONS[precision]
        self.num_workers, self.eval_transform = num_workers, eval_transform
        self.input_size: tuple[int, int, int] = (
            int(input_size[0]),
            int(input_size[1]),
            int(input_size[2]),
        )
        cuda = self.device.type == "cuda"
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if cuda:
            torch.backends.cudnn.benchmark = not deterministic
        p = self.point
        mixing = not data.multilabel and p["mixup_prob"] > 0 and (p["mixup"] > 0 or p["cutmix"] > 0)
        world = self.ranks.world
        self.plan = updates_plan(
            len(data.train_rows), p["batch_size"], micro_batch, even=mixing, world=world
        )
        self.epochs = int(p["epochs"])

        # the run's streams start here (dropout, drop path, mixing); one per process
        stream = self.seed + 1000 * self.ranks.rank
        torch.manual_seed(stream)
        random.seed(stream)
        np.random.seed(stream)
        self.model = model.to(self.device)
        if cuda:
            self.model.channels_last = True
            self.model.to(memory_format=torch.channels_last)
        self.train_logits: Any = self.model.logits
        if self.ranks.active:  # gradients averaged over the processes
            from torch.nn.parallel import DistributedDataParallel

            self.train_logits = DistributedDataParallel(
                _Logits(self.model), device_ids=[self.device.index] if cuda else None
            )
        self.optimizer = create_optimizer_v2(
            self.model.net,
            opt=p["optimizer"],
            lr=p["lr"],
            weight_decay=p["weight_decay"],
            momentum=p["momentum"],
            layer_decay=p["layer_decay"],
        )
        upe = self.plan["updates_per_epoch"]
        warmup = round(p["warmup_epochs"] * upe)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer,
            sched="cosine",
            num_epochs=max(1, self.epochs * upe - warmup),
            warmup_epochs=warmup,
            warmup_lr=p["warmup_lr"],
            min_lr=p["min_lr"],
            warmup_prefix=True,
            step_on_epochs=False,
            updates_per_epoch=1,  # the schedule counts updates
        )
        fp16 = self.autocast_dtype is torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type) if fp16 else None
        self.train_transform = create_transform(
            input_size=self.input_size,
            is_training=True,
            use_prefetcher=True,  # uint8 out; normalise and erase on the device
            scale=tuple(p["scale"]),
            hflip=p["hflip"],
            color_jitter=p["color_jitter"],
            auto_augment=p["auto_augment"],
            interpolation=p["interpolation"] or interpolation,
            mean=tuple(float(v) for v in model.mean.flatten()),
            std=tuple(float(v) for v in model.std.flatten()),
        )
        self.erasing = (
            RandomErasing(p["reprob"], mode=p["remode"], device=self.device.type)
            if p["reprob"] > 0
            else None
        )
        self.mixup = None
        if data.multilabel:
            self.criterion: torch.nn.Module = torch.nn.BCEWithLogitsLoss()
        elif mixing:
            self.mixup = Mixup(
                mixup_alpha=p["mixup"],
                cutmix_alpha=p["cutmix"],
                prob=p["mixup_prob"],
                switch_prob=p["mixup_switch_prob"],
                label_smoothing=p["label_smoothing"],
                num_classes=data.num_classes,
            )
            self.criterion = SoftTargetCrossEntropy()
        elif p["label_smoothing"] > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=p["label_smoothing"])
        else:
            self.criterion = torch.nn.CrossEntropyLoss()
        self.train_images = SeededImages(
            data.train, data.train_rows, self.train_transform, self.input_size, seed=self.seed
        )
        self.epoch = self.micro = self.step = 0
        self.loss_sum = torch.zeros((), device=self.device)
        self.final: dict[str, float] | None = None

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The resumable state; under torchrun a collective (every rank's RNG streams and
        loss sum are gathered, so each rank resumes its own)."""
        rng: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": _numpy_state(),
            "torch": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        mine = {"rng": rng, "loss_sum": self.loss_sum.detach().cpu()}
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "ranks": gather(mine, self.ranks),
            "position": [self.epoch, self.micro, self.step],
            "final": self.final,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        per_rank = state["ranks"]
        if len(per_rank) != self.ranks.world:
            raise BobxError(
                f"This checkpoint was written by {len(per_rank)} processes; resume it with "
                f"as many (torchrun --nproc-per-node {len(per_rank)})."
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        mine = per_rank[self.ranks.rank]
        rng = mine["rng"]
        random.setstate(rng["python"])
        _set_numpy_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.epoch, self.micro, self.step = (int(v) for v in state["position"])
        self.loss_sum = mine["loss_sum"].to(self.device)
        self.final = state.get("final")

    # -- training ---------------------------------------------------------------------
    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        return x, (y.float() if self.data.multilabel else y)

    def _autocast(self) -> Any:
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        )

    def run(self) -> Iterator[Step | EpochEnd]:
        """Train from the current position; yields after every update and every epoch."""
        micro, accum = self.plan["micro_batch"], self.plan["accum_steps"]
        n_micro = self.plan["updates_per_epoch"] * accum
        model, opt, clip = self.model, self.optimizer, self.point["clip_grad"]
        rank, world = self.ranks.rank, self.ranks.world
        while self.epoch < self.epochs:
            model.train()
            keys = [  # this process's share of each micro-step
                batch[rank * micro : (rank + 1) * micro]
                for batch in epoch_batches(
                    len(self.data.train_rows), micro * world, seed=self.seed, epoch=self.epoch
                )[self.micro : n_micro]
            ]
            batches = loader(
                self.train_images,
                keys,
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
            )
            for x, y, errors in batches:
                check_batch(errors, "fine-tuning")
                x, y = self._to_device(x, y)
                xn = model.normalize(x)
                if self.erasing is not None:
                    xn = self.erasing(xn)
                if self.mixup is not None:
                    xn, y = self.mixup(xn, y)
                last = (self.micro + 1) % accum == 0
                sync = contextlib.nullcontext()
                if not last and self.ranks.active:  # gradients travel once per update
                    sync = self.train_logits.no_sync()
                with sync:
                    with self._autocast():
                        loss = self.criterion(self.train_logits(xn).float(), y)
                    self.loss_sum += loss.detach()
                    scaled = loss / accum
                    (scaled if self.scaler is None else self.scaler.scale(scaled)).backward()
                self.micro += 1
                if self.micro % accum:
                    continue
                if self.scaler is not None:
                    self.scaler.unscale_(opt)
                if clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                if self.scaler is None:
                    opt.step()
                else:
                    self.scaler.step(opt)
                    self.scaler.update()
                opt.zero_grad(set_to_none=True)
                self.step += 1
                self.scheduler.step_update(num_updates=self.step)
                yield Step(self.step, self.epoch)
            total = all_sum(self.loss_sum.clone(), self.ranks)
            row = {
                "train_loss": float(total) / max(1, n_micro * world),
                "lr": max(g["lr"] for g in opt.param_groups),
            }
            last = self.epoch + 1 == self.epochs
            val = self._metrics(self.data.val, self.data.val_rows)
            row[self.select_metric] = val[self._main]
            test = None
            if last or self.point["eval_test_each_epoch"]:
                test = self._metrics(self.data.test, self.data.test_rows)
                row[f"test_{self._main}"] = test[self._main]
            if last and test is not None:
                self.final = {**{f"val_{k}": v for k, v in val.items()}, **test}
            self.epoch += 1
            self.micro = 0
            self.loss_sum = torch.zeros((), device=self.device)
            yield EpochEnd(self.epoch - 1, self.step, row)

    @property
    def _main(self) -> str:
        return "macro_auc" if self.data.multilabel else "top1"

    @property
    def select_metric(self) -> str:
        """The validation metric a sweep selects on."""
        return f"val_{self._main}"

    # -- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, split: Any, rows: np.ndarray) -> np.ndarray:
        """Logits (n, C) of ``rows`` of ``split`` through the model's eval transform
        (under torchrun each process scores every world-th row; all get all logits)."""
        rank, world = self.ranks.rank, self.ranks.world
        mine = np.arange(rank, len(rows), world)
        images = SeededImages(split, np.asarray(rows)[mine], self.eval_transform, self.input_size)
        self.model.eval()
        out = []
        batch = max(1, 2 * self.plan["micro_batch"])
        for x, _, errors in loader(
            images,
            eval_batches(len(mine), batch),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        ):
            check_batch(errors, "evaluation")
            with self._autocast():
                out.append(self.model(x.to(self.device, non_blocking=True)).float().cpu())
        width = self.data.num_classes
        logits = torch.cat(out).numpy() if out else np.zeros((0, width), np.float32)
        if not self.ranks.active:
            return logits
        merged = np.zeros((len(rows), width), np.float32)
        for r, part in enumerate(gather(logits, self.ranks)):
            merged[np.arange(r, len(rows), world)] = part
        return merged

    def _metrics(self, split: Any, rows: np.ndarray) -> dict[str, float]:
        from evaluators.probe import classification_metrics

        if len(rows) == 0:
            return {self._main: math.nan}
        return classification_metrics(self.predict(split, rows), split.labels[rows])

    def evaluate(self) -> dict[str, float]:
        """Validation (``val_*``) and test metrics of the trained model."""
        if self.final is None:
            val = self._metrics(self.data.val, self.data.val_rows)
            test = self._metrics(self.data.test, self.data.test_rows)
            self.final = {**{f"val_{k}": v for k, v in val.items()}, **test}
        return dict(self.final)

    def weights(self) -> Mapping[str, torch.Tensor]:
        return self.model.state_dict()


class _Logits(torch.nn.Module):
    """``model.logits`` as a module's forward, for DistributedDataParallel to wrap."""

    def __init__(self, model: ImageClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(x)


__all__ = ["ClassificationData", "ClassificationTrainer", "updates_plan"]

"""Benchmark: training images/s of bobx's fine-tuning job against a plain timm training loop.

Both contenders train the same timm model (random init, new 10-class head) on the same
images (the training rows of ``digits``, or ``--dataset``), with the same recipe point
(``quick`` unless ``--recipe``), batch size, precision, device, decode workers and torch
threads:

* **bobx** — :func:`featcache.runners.finetune.run_finetune` end to end into a fresh
  local store: the lease and its heartbeat, seeded per-sample augmentation, on-device
  normalisation / erasing / mixup, a checkpoint every epoch (model, optimizer, RNG...),
  the curve artifact, records;
* **plain timm loop** — what timm's ``train.py`` does: ``timm.create_model`` (same
  ``drop_path_rate``), ``create_transform(is_training=True)`` normalising on the CPU, a
  shuffling ``DataLoader`` (``drop_last``), ``create_optimizer_v2`` (layer decay),
  ``create_scheduler_v2`` stepped per update, timm's loss, ``loss.backward()``,
  ``optimizer.step()``; nothing written anywhere.

Each rate is images trained over the wall time of the training epochs, evaluation
excluded (bobx evaluates validation every epoch; that time is measured and subtracted;
checkpoint and curve writes stay in). The contenders alternate for ``--rounds`` rounds
after a one-epoch warm-up of each (the machine is shared); the script prints each
round's ratio, their median and the ratio of the best rounds, and the same for images
per CPU-second (process and loader workers; steadier than wall time when other jobs
share the cores). Target: bobx >= 0.95x.

    python benchmarks/bench_finetune.py                 # CPU: resnet10t @64, fp32, batch 32
    python benchmarks/bench_finetune.py --gpu           # CUDA: vit_small @224, bf16, batch 128
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (the loaders'
    worker processes end with each epoch)."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def bobx_rate(args: argparse.Namespace, manifests: Path, store_dir: Path) -> dict[str, float]:
    """Fine-tune through bobx; returns training images/s with evaluation time removed."""
    import featcache
    from featcache.runners.finetune import run_finetune
    from featcache.training.classification import ClassificationTrainer

    timer = {"run": 0.0, "eval": 0.0, "images": 0.0, "cpu": 0.0, "eval_cpu": 0.0}
    run, metrics = ClassificationTrainer.run, ClassificationTrainer._metrics

    def timed_run(self: ClassificationTrainer) -> Any:
        t0, c0 = time.perf_counter(), cpu_seconds()
        yield from run(self)
        _sync(self.device)
        timer["run"] += time.perf_counter() - t0
        timer["cpu"] += cpu_seconds() - c0
        timer["images"] += (
            self.epochs * self.plan["updates_per_epoch"] * self.plan["batch_size_effective"]
        )

    def timed_metrics(self: ClassificationTrainer, split: Any, rows: Any) -> Any:
        t0, c0 = time.perf_counter(), cpu_seconds()
        try:
            return metrics(self, split, rows)
        finally:
            timer["eval"] += time.perf_counter() - t0
            timer["eval_cpu"] += cpu_seconds() - c0

    ClassificationTrainer.run = timed_run  # type: ignore[method-assign]
    ClassificationTrainer._metrics = timed_metrics  # type: ignore[method-assign]
    os.environ["BOBX_MANIFESTS"] = str(manifests)
    try:
        result = run_finetune(
            featcache.open_store(str(store_dir)),
            "bench_model",
            args.dataset,
            recipe=args.recipe,
            overrides=dict(args.point),
            weights="random",
            data_root=args.data_root,
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
            num_workers=args.workers,
        )
    finally:
        ClassificationTrainer.run, ClassificationTrainer._metrics = run, metrics  # type: ignore[method-assign]
    train_s = timer["run"] - timer["eval"]
    return {
        "images_per_s": timer["images"] / train_s,
        "images_per_cpu_s": timer["images"] / (timer["cpu"] - timer["eval_cpu"]),
        "train_s": train_s,
        "eval_s": timer["eval"],
        "top1": result.records[0].value,
    }


def plain_rate(args: argparse.Namespace, manifests: Path) -> dict[str, float]:
    """timm's train.py loop on the same rows, model, recipe point and settings."""
    import timm
    import torch
    from timm.data import Mixup, create_transform
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    from featcache.datasets import get_dataset_spec
    from featcache.runners.finetune import prepare_splits

    os.environ["BOBX_MANIFESTS"] = str(manifests)
    p = args.point
    splits = prepare_splits(get_dataset_spec(args.dataset), data_root=args.data_root)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(
        args.model, num_classes=splits.num_classes, drop_path_rate=p["drop_path_rate"],
        **({"img_size": args.resolution} if "vit" in args.model else {}),
    )  # fmt: skip
    model.to(device)
    cfg = timm.data.resolve_model_data_config(model)
    transform = create_transform(
        input_size=(3, args.resolution, args.resolution),
        is_training=True,
        scale=tuple(p["scale"]),
        hflip=p["hflip"],
        color_jitter=p["color_jitter"],
        auto_augment=p["auto_augment"],
        interpolation=p["interpolation"] or cfg.get("interpolation", "bicubic"),
        mean=cfg["mean"],
        std=cfg["std"],
        re_prob=p["reprob"],
        re_mode=p["remode"],
    )
    split, rows = splits.train, splits.fit_rows

    class Rows(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> Any:
            return transform(split.load(int(rows[i]))), int(split.labels[rows[i]])

    loader = torch.utils.data.DataLoader(
        Rows(),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )
    optimizer = create_optimizer_v2(
        model, opt=p["optimizer"], lr=p["lr"], weight_decay=p["weight_decay"],
        layer_decay=p["layer_decay"],
    )  # fmt: skip
    updates = len(loader)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=args.epochs, warmup_epochs=p["warmup_epochs"],
        warmup_lr=p["warmup_lr"], min_lr=p["min_lr"], step_on_epochs=False,
        updates_per_epoch=updates,
    )  # fmt: skip
    mixup = None
    if p["mixup"] > 0 or p["cutmix"] > 0:
        mixup = Mixup(
            mixup_alpha=p["mixup"], cutmix_alpha=p["cutmix"], prob=p["mixup_prob"],
            switch_prob=p["mixup_switch_prob"], label_smoothing=p["label_smoothing"],
            num_classes=splits.num_classes,
        )  # fmt: skip
        criterion: Any = SoftTargetCrossEntropy()
    else:
        criterion = LabelSmoothingCrossEntropy(smoothing=p["label_smoothing"])
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    model.train()
    t0, c0, images, n_update = time.perf_counter(), cpu_seconds(), 0, 0
    for _ in range(args.epochs):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            if mixup is not None:
                x, y = mixup(x, y)
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            n_update += 1
            scheduler.step_update(num_updates=n_update)
            images += len(x)
    _sync(device)
    seconds = time.perf_counter() - t0
    del loader  # its workers end: their CPU time is counted
    return {
        "images_per_s": images / seconds,
        "images_per_cpu_s": images / (cpu_seconds() - c0),
        "train_s": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="CUDA defaults (vit_small, bf16)")
    parser.add_argument("--model", default=None, help="timm model (default resnet10t / vit_small)")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--recipe", default="quick")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--precision", default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="skip the 1-epoch warm-up"
    )
    args = parser.parse_args()
    gpu = args.gpu
    args.model = args.model or ("vit_small_patch16_224" if gpu else "resnet10t")
    args.resolution = args.resolution or (224 if gpu else 64)
    args.batch_size = args.batch_size or (128 if gpu else 32)
    args.precision = args.precision or ("bf16" if gpu else "fp32")
    args.device = "cuda" if gpu else "cpu"
    cores = len(os.sched_getaffinity(0))
    args.workers = args.workers if args.workers is not None else (max(1, cores - 2) if gpu else 1)

    import torch

    if not gpu and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(cores)
    from featcache.jobs import get_recipe

    family = "vit" if "vit" in args.model else "cnn"
    # one grid point (the recipe's first for this family), the same for both contenders
    args.point = get_recipe(args.recipe).resolve(
        {"family": family, "random_init": True},
        {"epochs": args.epochs, "batch_size": args.batch_size},
    )[0]
    kwargs = f"\n  model_kwargs: {{img_size: {args.resolution}}}" if family == "vit" else ""
    with tempfile.TemporaryDirectory() as tmp:
        manifests = Path(tmp) / "manifests"
        (manifests / "backbones").mkdir(parents=True)
        (manifests / "backbones" / "bench.yaml").write_text(
            f"bench_model:\n  source: timm\n  model: {args.model}\n  resolution: {args.resolution}"
            f"\n  family: {family}\n  style: random{kwargs}\n"
        )
        print(
            f"model {args.model} @{args.resolution}, {args.dataset}, recipe {args.recipe}, "
            f"batch {args.batch_size}, {args.precision} on {args.device}, {args.epochs} epochs, "
            f"{args.workers} workers, {torch.get_num_threads()} torch threads; "
            f"load {os.getloadavg()[0]:.1f}"
        )
        if args.warmup:  # imports, allocator growth, page cache: not part of either rate
            warm = argparse.Namespace(**{**vars(args), "epochs": 1})
            warm.point = get_recipe(args.recipe).resolve(
                {"family": family, "random_init": True},
                {"epochs": 1, "batch_size": args.batch_size},
            )[0]
            plain_rate(warm, manifests)
            bobx_rate(warm, manifests, Path(tmp) / "warmup")
        plains, ours_, ratios, cpu_ratios = [], [], [], []
        for r in range(args.rounds):
            first, second = ("plain", "bobx") if r % 2 == 0 else ("bobx", "plain")
            got = {}
            for who in (first, second):
                if who == "plain":
                    got[who] = plain_rate(args, manifests)
                else:
                    got[who] = bobx_rate(args, manifests, Path(tmp) / f"store{r}")
            plain, ours = got["plain"], got["bobx"]
            plains.append(plain["images_per_s"])
            ours_.append(ours["images_per_s"])
            ratios.append(ours["images_per_s"] / plain["images_per_s"])
            cpu_ratios.append(ours["images_per_cpu_s"] / plain["images_per_cpu_s"])
            print(
                f"round {r + 1}: plain timm {plain['images_per_s']:8.1f} img/s   bobx "
                f"{ours['images_per_s']:8.1f} img/s (eval {ours['eval_s']:.1f} s excluded, "
                f"top-1 {ours['top1']:.3f})   ratio {ratios[-1]:.3f}   per CPU-second: "
                f"{plain['images_per_cpu_s']:.1f} vs {ours['images_per_cpu_s']:.1f} = "
                f"{cpu_ratios[-1]:.3f}   load {os.getloadavg()[0]:.1f}"
            )
    best = max(ours_) / max(plains)
    print(
        f"bobx fine-tune loop vs plain timm loop: median of {len(ratios)} paired rounds "
        f"{statistics.median(ratios):.3f}x, best vs best {max(ours_):.1f} / {max(plains):.1f} "
        f"img/s = {best:.3f}x (target >= 0.95x); images per CPU-second (steadier on a shared "
        f"machine): median {statistics.median(cpu_ratios):.3f}x"
    )


if __name__ == "__main__":
    main()

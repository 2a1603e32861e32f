"""Benchmark: bobx's detection training loop and COCO evaluation against their baselines.

1. **Training throughput.** The same torchvision Mask R-CNN over a catalog backbone
   (``featcache.detection.model.build_detector``), the same in-memory batches of
   generated shapes (uint8 images + targets, decoded once), the same AdamW: bobx's
   ``featcache.detection.engine.train_one_epoch`` (autocast, accumulation, timm
   per-update schedule, loss checks) against the loop of torchvision's
   ``references/detection/engine.py`` written plainly here (images to the device, loss
   dict summed, ``.item()`` logged every iteration, a per-iteration warm-up LambdaLR,
   backward, step). Both start from the same weights and RNG state each round; the
   rounds alternate and the median img/s of each is compared (target >= 0.95x).
2. **Evaluation time.** COCO box AP of predictions for 5,000 images (COCO val2017's
   size; 80 categories, ~7 objects per image, ``--dets`` detections per image):
   ``evaluators.detection.coco_ap`` (faster-coco-eval, input validation included)
   against plain pycocotools (``COCO`` + ``loadRes`` + ``COCOeval``); the metrics are
   checked equal. ``--segm`` adds mask AP (RLE predictions, polygon ground truth).

    python benchmarks/bench_detect.py                  # CPU: rand_resnet18, 320 px, fp32
    python benchmarks/bench_detect.py --skip-train     # only the evaluation part
    python benchmarks/bench_detect.py --gpu            # CUDA: rand_resnet50, 640 px, bf16
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------ training
def make_batches(size: int, n_images: int, batch: int) -> list[tuple[list[Any], list[Any]]]:
    """Generated shapes (the tests' COCO-format set) at ``size`` px, decoded once."""
    from featcache.datasets import get_dataset_spec, open_split
    from featcache.detection.data import DetectionDataset, collate
    from tests import _imagegen as gen

    root = Path(tempfile.mkdtemp(prefix="bench_detect_"))
    gen.make_coco_shapes(root, {"train": n_images}, size=size, max_objects=6)
    split = open_split(get_dataset_spec("coco_format"), "train", data_root=root)
    data = DetectionDataset(split, masks=True)
    items = [data[i] for i in range(len(data))]
    return [collate(items[i : i + batch]) for i in range(0, len(items) - batch + 1, batch)]


def reference_loop(model, optimizer, batches, device, precision: str, scaler) -> None:  # type: ignore[no-untyped-def]
    """torchvision's references/detection train_one_epoch, plainly: what a user runs."""
    import torch

    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: min(1.0, 0.001 + it / max(1, len(batches)))
    )
    model.train()
    for images, targets in batches:
        images = [img.to(device).float() / 255 for img in images]
        targets = [
            {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
            for t in targets
        ]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss_dict = model(images, targets)
            losses = sum(loss for loss in loss_dict.values())
        loss_value = losses.item()
        if not math.isfinite(loss_value):
            raise SystemExit(f"Loss is {loss_value}, stopping training")
        optimizer.zero_grad()
        if scaler is not None:
            scaler.scale(losses).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            losses.backward()
            optimizer.step()
        warmup.step()


def bobx_loop(model, optimizer, batches, device, precision: str, scaler) -> None:  # type: ignore[no-untyped-def]
    from timm.scheduler import MultiStepLRScheduler

    from featcache.detection.engine import train_one_epoch

    lr = optimizer.param_groups[0]["lr"]
    scheduler = MultiStepLRScheduler(
        optimizer,
        decay_t=[10**9],
        warmup_t=len(batches),
        warmup_lr_init=lr * 1e-3,
        t_in_epochs=False,
    )
    train_one_epoch(
        model,
        optimizer,
        batches,
        device=device,
        precision=precision,
        scaler=scaler,
        scheduler=scheduler,
    )


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from featcache.detection.model import build_detector

    device = torch.device("cuda" if args.gpu else "cpu")
    batches = make_batches(args.size, args.iters * args.batch, args.batch)
    model0, info = build_detector(
        args.backbone,
        num_classes=3,
        masks=True,
        weights="random",
        min_size=args.size,
        max_size=args.size,
    )
    model0.to(device)
    n_images = sum(len(b[0]) for b in batches)
    times: dict[str, list[float]] = {"torchvision reference loop": [], "bobx train_one_epoch": []}
    loops = {"torchvision reference loop": reference_loop, "bobx train_one_epoch": bobx_loop}
    for r in range(args.rounds + 1):  # round 0 warms up (allocator, cuDNN, lazy imports)
        order = list(loops.items()) if r % 2 == 0 else list(loops.items())[::-1]
        for name, loop in order:  # alternate who goes first: load drifts between them
            model = copy.deepcopy(model0)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
            scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
            torch.manual_seed(0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loop(model, optimizer, batches, device, args.precision, scaler)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r:
                times[name].append(n_images / (time.perf_counter() - start))
    rates = {k: statistics.median(v) for k, v in times.items()}
    ratio = rates["bobx train_one_epoch"] / rates["torchvision reference loop"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"training (load {load:.1f}): {args.backbone} Mask R-CNN ({info.pyramid}), {n_images} images of "
        f"{args.size} px per round, batch {args.batch}, {args.precision}, {device.type}, "
        f"{args.rounds} rounds"
    )
    for name, rate in rates.items():
        print(
            f"  {name:28s} {rate:8.2f} img/s   (rounds: {', '.join(f'{t:.2f}' for t in times[name])})"
        )
    print(f"  ratio bobx / reference: {ratio:.3f}x (target >= 0.95x)")
    return {"rates": rates, "ratio": ratio}


# ------------------------------------------------------------------------------ evaluation
def make_eval_data(n_images: int, dets: int, seed: int, segm: bool) -> tuple[dict, list[dict]]:
    """COCO-like ground truth (640x480, 80 categories, ~7 objects per image) and
    predictions: every object found twice with jitter, plus false positives."""
    from evaluators.detection import encode_masks

    rng = np.random.default_rng(seed)
    w, h = 640, 480
    images = [
        {"id": i + 1, "width": w, "height": h, "file_name": f"{i}.jpg"} for i in range(n_images)
    ]
    anns: list[dict] = []
    rows: list[dict] = []
    for img in images:
        k = int(rng.poisson(7))
        sides = np.exp(rng.uniform(np.log(8), np.log(400), (k, 2)))
        for bw, bh in sides:
            bw, bh = min(bw, w - 1), min(bh, h - 1)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            ann = {
                "id": len(anns) + 1,
                "image_id": img["id"],
                "category_id": int(rng.integers(1, 81)),
                "bbox": [x, y, bw, bh],
                "area": bw * bh,
                "iscrowd": 0,
            }
            if segm:
                ann["segmentation"] = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
            anns.append(ann)
        own = [a for a in anns[len(anns) - k :]]
        n_fp = max(0, dets - 2 * k)
        boxes = []
        for a in own * 2:
            b = np.asarray(a["bbox"]) + rng.normal(0, 0.05 * max(a["bbox"][2:]), 4)
            b[2:] = np.abs(b[2:]) + 1
            boxes.append((a["category_id"], b))
        for _ in range(n_fp):
            bw, bh = rng.uniform(8, 200, 2)
            boxes.append(
                (
                    int(rng.integers(1, 81)),
                    np.array([rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh]),
                )
            )
        for cat, b in boxes[:dets]:
            row = {
                "image_id": img["id"],
                "category_id": cat,
                "bbox": [float(v) for v in b],
                "score": float(rng.random()),
            }
            if segm:
                m = np.zeros((h, w), np.uint8)
                x0, y0 = int(max(b[0], 0)), int(max(b[1], 0))
                m[y0 : int(min(b[1] + b[3], h)), x0 : int(min(b[0] + b[2], w))] = 1
                row["segmentation"] = encode_masks(m[None])[0]
            rows.append(row)
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, 81)]
    return {"images": images, "annotations": anns, "categories": cats}, rows


def bench_eval(args: argparse.Namespace) -> dict[str, Any]:
    from evaluators.detection import AP_NAMES, coco_ap
    from tests._coco import pycocotools_ap

    gt, rows = make_eval_data(args.eval_images, args.dets, 0, args.segm)
    print(
        f"evaluation (load {os.getloadavg()[0]:.1f}): {len(gt['images'])} images, {len(gt['annotations'])} objects, "
        f"{len(rows)} predictions, 80 categories"
    )
    out = {}
    for iou_type in ("bbox", "segm") if args.segm else ("bbox",):
        start = time.perf_counter()
        ref = pycocotools_ap(gt, rows, iou_type)
        t_ref = time.perf_counter() - start
        start = time.perf_counter()
        ours = coco_ap(gt, rows, iou_type=iou_type)
        t_ours = time.perf_counter() - start
        suffix = "box" if iou_type == "bbox" else "mask"
        got = [ours[f"{n}_{suffix}"] for n in AP_NAMES]
        diff = max(abs((-1 if math.isnan(a) else a) - b) for a, b in zip(got, ref, strict=True))
        print(
            f"  {iou_type}: pycocotools {t_ref:7.2f} s   bobx coco_ap {t_ours:7.2f} s   "
            f"speed-up {t_ref / t_ours:5.2f}x   max |diff| {diff:.1e}   AP {got[0]:.4f}"
        )
        out[iou_type] = {"pycocotools_s": t_ref, "bobx_s": t_ours, "max_diff": diff}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="CUDA: rand_resnet50, 640 px, bf16")
    p.add_argument("--backbone", help="catalog name (default rand_resnet18; --gpu rand_resnet50)")
    p.add_argument("--size", type=int, help="image side (default 320; --gpu 640)")
    p.add_argument("--batch", type=int, help="images per iteration (default 2; --gpu 4)")
    p.add_argument("--iters", type=int, help="iterations per round (default 6; --gpu 40)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of each loop")
    p.add_argument("--precision", help="fp32 (default) | bf16 (--gpu default) | fp16")
    p.add_argument("--eval-images", type=int, default=5000)
    p.add_argument("--dets", type=int, default=20, help="predictions per image")
    p.add_argument("--segm", action="store_true", help="also time mask AP")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-eval", action="store_true")
    args = p.parse_args(argv)
    gpu = args.gpu
    args.backbone = args.backbone or ("rand_resnet50" if gpu else "rand_resnet18")
    args.size = args.size or (640 if gpu else 320)
    args.batch = args.batch or (4 if gpu else 2)
    args.iters = args.iters or (40 if gpu else 6)
    args.precision = args.precision or ("bf16" if gpu else "fp32")
    if not args.skip_train:
        bench_train(args)
    if not args.skip_eval:
        bench_eval(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

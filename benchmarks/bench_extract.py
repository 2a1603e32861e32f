"""Benchmark: bobx extraction throughput against the model alone and a plain research loop.

All three contenders run the same backbone (random weights: speed does not depend on them)
over the same JPEG files, written once into a temporary ``image_folder`` layout:

* **forward only** — the model's ceiling: the images decoded and transformed beforehand
  (untimed), then batches through the same :class:`featcache.models.FeatureExtractor`
  with the same precision, batch size and device, features copied back to the host;
  on a GPU also with the inputs already on the device (the pure model ceiling);
* **bobx extract** — :func:`featcache.extract.extract` end to end into a fresh local
  store: DataLoader workers decoding JPEGs, on-device normalisation, autocast, chunk
  writes; its rate is images over the wall time of the pipeline loop, and the rate over
  the whole call (model build included) is shown beside it;
* **plain loop** — what research scripts do: a ``Dataset`` that opens each file with PIL
  and applies the library's whole transform (float, on the CPU), a ``DataLoader`` without
  workers (decode, then compute, no overlap), an fp32 forward, ``.cpu()`` per batch.

It prints the three rates and the ratios *pipeline efficiency* (extract / forward only;
target >= 0.85 on CPU with a small model) and *speed-up over the plain loop*, and checks
that the stored features equal the forward-only ones (fp16 tolerance).

    python benchmarks/bench_extract.py                  # CPU: ResNet-18 @224, fp32
    python benchmarks/bench_extract.py --gpu            # CUDA: ViT-B/16 @224, bf16, 20k JPEGs
    python benchmarks/bench_extract.py --n-images 128   # quicker

The GPU target is >= 5,000 images/s end to end on one H100 (JPEGs of ImageNet's typical
500 x 375; decoding needs the host's cores: one worker per core but one by default).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- data
def _jpeg(args: tuple[Path, int, int, int]) -> None:
    """One seeded photo-like JPEG (gradient + noise, quality 90)."""
    from PIL import Image

    path, width, height, seed = args
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = rng.integers(0, 256, 3) + xx[..., None] * rng.uniform(-0.6, 0.6, 3)
    pixels = (
        pixels + yy[..., None] * rng.uniform(-0.6, 0.6, 3) + rng.normal(0, 14, (height, width, 3))
    )
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue())


def make_jpegs(root: Path, n: int, width: int, height: int, classes: int = 10) -> None:
    """``root/test/c<k>/<i>.jpg``: the ``image_folder`` layout, ``n`` images."""
    jobs = []
    for i in range(n):
        folder = root / "test" / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{i:07d}.jpg", width, height, i))
    procs = max(1, min(len(os.sched_getaffinity(0)), 32))
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        pool.map(_jpeg, jobs, chunksize=64)


# --------------------------------------------------------------------------- contenders
def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_only(
    plan: Any,
    model: Any,
    split: Any,
    device: Any,
    precision: str,
    batch: int,
    repeat: int,
    workers: int,
) -> dict[str, float]:
    """Rates of the model alone on pre-decoded inputs (host inputs; device inputs on GPU)."""
    import torch
    from torch.utils.data import DataLoader

    from featcache.extract import _Rows

    rows = _Rows(split, plan.cpu_transform, plan.input_size, plan.input_dtype)
    loader: DataLoader[Any] = DataLoader(rows, batch_size=256, num_workers=workers)  # type: ignore[arg-type]
    xs = torch.cat([x for _, x, _ in loader])  # decoded once, untimed
    batches = list(torch.split(xs, batch))
    if device.type == "cuda":
        batches = [b.pin_memory() for b in batches]
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def run(inputs: list[Any]) -> tuple[float, Any]:
        outs = []
        _sync(device)
        t0 = time.perf_counter()
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            for x in inputs:
                outs.append(model(x.to(device, non_blocking=True)).float().cpu())
        _sync(device)
        return len(xs) / (time.perf_counter() - t0), torch.cat(outs)

    run(batches[:2])  # warm-up (cudnn autotune, allocator)
    best, feats = 0.0, None
    for _ in range(repeat):
        rate, feats = run(batches)
        best = max(best, rate)
    out = {"host_inputs": best}
    if device.type == "cuda":
        on_device = [b.to(device) for b in batches]
        out["device_inputs"] = max(run(on_device)[0] for _ in range(repeat))
    out["_features"] = feats  # type: ignore[assignment]
    return out


def bobx_extract(args: argparse.Namespace, data: Path, device: Any) -> dict[str, Any]:
    from featcache.extract import extract
    from featcache.store import open_store

    best: dict[str, Any] = {}
    for r in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bobx-bench-store-") as tmp:
            store = open_store(str(Path(tmp) / "store"))
            t0 = time.perf_counter()
            [res] = extract(
                store,
                args.backbone,
                "image_folder",
                splits=["test"],
                data_root=data,
                device=str(device),
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                precision=args.precision,
                weights="random",
                progress=False,
                record_speed=False,
            )
            total = time.perf_counter() - t0
            if not best or (res.images_per_s or 0) > best["loop"]:
                fs = store.features(res.backbone, "image_folder", "test")
                best = {
                    "loop": res.images_per_s or 0.0,
                    "call": res.n / total,
                    "features": fs.embeddings(),
                    "run": r,
                }
    return best


def plain_loop(plan: Any, model: Any, split: Any, device: Any, batch: int, n: int) -> float:
    """A research-script loop: PIL + full float transform in the Dataset, no workers, fp32."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    transform = plan.transform  # the library's whole transform (float, normalised)
    paths = [split.describe(i) for i in range(min(n, len(split)))]

    class Files(Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int) -> Any:
            return transform(Image.open(paths[i]).convert("RGB"))

    loader = DataLoader(Files(), batch_size=batch, num_workers=0, shuffle=False)
    feats = []
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in loader:
            feats.append(model(x.to(device)).cpu().numpy())
    _sync(device)
    np.concatenate(feats)
    return len(paths) / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="CUDA: ViT-B/16 @224, bf16, 20k JPEGs")
    p.add_argument("--backbone", help="catalog name (default rand_resnet18; --gpu rand_vitb)")
    p.add_argument("--n-images", type=int, help="JPEG files (default 256; --gpu 20000)")
    p.add_argument("--size", default="500x375", help="JPEG width x height (ImageNet-typical)")
    p.add_argument("--batch-size", type=int, help="default 32; --gpu 256")
    p.add_argument("--num-workers", type=int, help="decode workers (default: extract's)")
    p.add_argument("--precision", help="fp32 (default) | bf16 (--gpu default) | fp16")
    p.add_argument(
        "--plain-images", type=int, help="images for the plain loop (default all; --gpu 2000)"
    )
    p.add_argument("--device", help="cpu | cuda[:i] (default: cuda with --gpu, else cpu)")
    p.add_argument("--repeat", type=int, default=2, help="timed runs per contender (best shown)")
    p.add_argument("--data", type=Path, help="keep the JPEGs here (reused when present)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    args.backbone = args.backbone or ("rand_vitb" if args.gpu else "rand_resnet18")
    args.n_images = args.n_images or (20000 if args.gpu else 256)
    args.batch_size = args.batch_size or (256 if args.gpu else 32)
    args.precision = args.precision or ("bf16" if args.gpu else "fp32")
    args.plain_images = args.plain_images or (2000 if args.gpu else args.n_images)
    width, height = (int(v) for v in args.size.lower().split("x"))

    import torch

    from featcache.datasets import get_dataset_spec, open_split
    from featcache.extract import default_workers, resolve_device, set_threads
    from featcache.models import load_backbone, plan_backbone

    device = resolve_device(args.device or ("cuda" if args.gpu else "cpu"))
    if args.num_workers is None:
        args.num_workers = default_workers(device.type)
    with tempfile.TemporaryDirectory(prefix="bobx-bench-jpegs-") as tmp:
        data = args.data or Path(tmp)
        if not (data / "test").is_dir():
            t0 = time.perf_counter()
            make_jpegs(data, args.n_images, width, height)
            print(
                f"wrote {args.n_images} JPEGs ({width}x{height}) in "
                f"{time.perf_counter() - t0:.1f} s"
            )
        split = open_split(get_dataset_spec("image_folder"), "test", data_root=data)
        plan = plan_backbone(args.backbone, "random")
        model = load_backbone(plan, device=device)
        set_threads(device)
        name = (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else (f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads")
        )
        print(
            f"{args.backbone} ({plan.spec.arch}) @{plan.input_size[-1]}, {args.precision}, "
            f"batch {args.batch_size}, {args.num_workers} decode worker(s), {len(split)} "
            f"JPEGs {width}x{height}; {name}; load average {os.getloadavg()[0]:.1f}; "
            f"best of {args.repeat}"
        )

        fwd = forward_only(
            plan,
            model,
            split,
            device,
            args.precision,
            args.batch_size,
            args.repeat,
            args.num_workers,
        )
        ext = bobx_extract(args, data, device)
        plain = plain_loop(plan, model, split, device, args.batch_size, args.plain_images)

    ref = fwd.pop("_features").numpy()  # type: ignore[attr-defined]
    scale = float(np.abs(ref).max()) or 1.0
    err = float(np.abs(ext["features"].astype(np.float32) - ref).max()) / scale
    figures = {
        "backbone": args.backbone,
        "device": name,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "images": len(split),
        "jpeg_size": [width, height],
        "forward_only_img_s": round(fwd["host_inputs"], 1),
        "forward_only_device_inputs_img_s": round(fwd.get("device_inputs", 0.0), 1) or None,
        "extract_img_s": round(ext["loop"], 1),
        "extract_whole_call_img_s": round(ext["call"], 1),
        "plain_loop_img_s": round(plain, 1),
        "pipeline_efficiency": round(ext["loop"] / fwd["host_inputs"], 3),
        "speedup_vs_plain": round(ext["loop"] / plain, 2),
        "max_rel_diff_vs_forward": round(err, 5),
        "load_average_end": round(os.getloadavg()[0], 1),
    }
    print(
        f"forward only      {fwd['host_inputs']:9.1f} img/s"
        + (
            f"   (inputs already on the GPU: {fwd['device_inputs']:.1f})"
            if "device_inputs" in fwd
            else ""
        )
    )
    print(
        f"bobx extract      {ext['loop']:9.1f} img/s   (whole call incl. model build: "
        f"{ext['call']:.1f})"
    )
    print(f"plain loop        {plain:9.1f} img/s   (PIL + DataLoader, no workers, fp32)")
    print(f"pipeline efficiency (extract / forward only): {figures['pipeline_efficiency']:.3f}")
    print(f"speed-up over the plain loop:                 {figures['speedup_vs_plain']:.2f}x")
    print(f"stored features vs forward only: max relative difference {err:.2e}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

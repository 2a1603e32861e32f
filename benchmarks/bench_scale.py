"""Benchmark: what the executors cost per work item, and what a second worker buys.

Two measurements, each against a baseline taken in the same run:

1. **Scheduling overhead per work item.** ``N`` kNN items (real evaluator work: a DINO
   kNN over small imported feature sets, ~10-50 ms each) run

   * in one process, one library call after the other (``run_knn`` in a loop: the
     baseline, no planning, no leases, no executor);
   * through ``bobx run`` on the local executor (one worker process) and on local Ray
     (one actor): planning, a lease per item, the worker round trip, the records.

   Each is timed at two sizes; the marginal cost per item is the slope between them
   (fixed costs such as starting Ray or a worker process cancel out), the overhead per
   item is that slope minus the baseline's, and the ratio is slope / baseline slope.
   The fixed start-up cost is printed beside it.
2. **Speed-up from 1 to 2 workers** on this machine: a 2-backbone x digits suite
   (ResNet-10t and -14t at 112 px, random weights: train, test and all extracted, kNN)
   on 1 and on 2 workers of the local executor and of local Ray, each run from a cold
   start (worker processes started, torch imported, models built). Local workers split
   the cores (1 worker: all of them for its torch threads); a Ray actor has one CPU.

    python benchmarks/bench_scale.py                 # CPU, ~5 minutes on 2 cores
    python benchmarks/bench_scale.py --items 20,80   # the two sizes of measurement 1
    python benchmarks/bench_scale.py --no-ray        # without the ray extra
    python benchmarks/bench_scale.py --gpu           # extraction on one GPU: executor vs in-process

``--gpu`` times the extraction part of a suite (ViT-B/16 at 224 px, random weights, on
the 1,797 digits) on the local executor with one GPU worker against the same items in
this process, and prints the ratio (the executor's cost around GPU work).
"""

from __future__ import annotations

import argparse
import json
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

BACKBONE = "  source: timm\n  model: resnet10t\n  resolution: {res}\n  style: random\n"


def write_manifests(root: Path, sizes: list[int]) -> None:
    """Catalog entries for the kNN items' backbones, and the suites."""
    n_items = max(sizes)
    (root / "backbones").mkdir(parents=True, exist_ok=True)
    (root / "suites").mkdir(parents=True, exist_ok=True)
    names = [f"bench_bb_{i:03d}" for i in range(n_items)]
    text = "".join(f"{n}:\n{BACKBONE.format(res=32)}" for n in names)
    for name, model in (("bench_res10", "resnet10t"), ("bench_res14", "resnet14t")):
        text += f"{name}:\n  source: timm\n  model: {model}\n  resolution: 112\n  style: random\n"
    (root / "backbones" / "bench.yaml").write_text(text)
    suites = {}
    for n in sizes:
        suites[f"knn{n}"] = {
            "backbones": names[:n],
            "grids": [{"datasets": ["digits"], "evaluate": {"knn": {"k": [10, 20]}}}],
        }
    suites["work"] = {  # 6 sets of 1,347-1,797 images at 112 px, then kNN on each backbone
        "backbones": ["bench_res10", "bench_res14"],
        "extract": {"weights": "random"},
        "grids": [
            {
                "datasets": ["digits"],
                "splits": {"digits": ["train", "test", "all"]},
                "evaluate": {"knn": {"k": [10, 20]}},
            }
        ],
    }
    suites["gpu"] = {
        "backbones": ["sup_vitb_in1k"],
        "extract": {"weights": "random", "batch_size": 256, "precision": "bf16"},
        "grids": [{"datasets": ["digits"], "splits": {"digits": ["train", "test", "all"]}}],
    }
    import yaml

    (root / "suites" / "bench.yaml").write_text(yaml.safe_dump(suites))


def fill_store(url: str, n_items: int, rows: int, dim: int) -> Any:
    """``n_items`` backbones' imported digits-like features (train and test)."""
    import featcache

    store = featcache.open_store(url)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, dim))
    for i in range(n_items):
        for split, n in (("train", rows), ("test", rows // 4)):
            y = np.arange(n) % 10
            x = centers[y] + rng.normal(scale=2.0, size=(n, dim))
            store.import_features(f"bench_bb_{i:03d}", "digits", split, x, labels=y)
    return store


def time_serial(store: Any, n_items: int) -> float:
    from featcache.runners.classification import run_knn

    t0 = time.perf_counter()
    for i in range(n_items):
        run_knn(store, f"bench_bb_{i:03d}", "digits", ks=(10, 20))
    return time.perf_counter() - t0


def time_executor(store: Any, suite: str, executor: str, workers: int) -> tuple[float, Any]:
    from featcache.executors import run_suite

    t0 = time.perf_counter()
    _, report = run_suite(store, suite, executor=executor, workers=workers, held_retry_s=0.5)
    seconds = time.perf_counter() - t0
    assert report is not None and report.ok, report.to_dict() if report else None
    return seconds, report


def overhead(args: argparse.Namespace, tmp: Path, executors: list[str]) -> dict[str, Any]:
    small, large = args.sizes
    out: dict[str, Any] = {"sizes": [small, large]}
    times: dict[str, list[float]] = {}
    for n in (small, large):
        url = str(tmp / f"serial-{n}")
        store = fill_store(url, n, args.rows, args.dim)
        times.setdefault("serial", []).append(time_serial(store, n))
        for executor in executors:
            url = str(tmp / f"{executor}-{n}")
            store = fill_store(url, n, args.rows, args.dim)
            seconds, _ = time_executor(store, f"knn{n}", executor, 1)
            times.setdefault(executor, []).append(seconds)
    base = (times["serial"][1] - times["serial"][0]) / (large - small)
    out["serial"] = {"seconds": times["serial"], "per_item_s": base}
    for executor in executors:
        t = times[executor]
        slope = (t[1] - t[0]) / (large - small)
        out[executor] = {
            "seconds": t,
            "per_item_s": slope,
            "overhead_per_item_s": slope - base,
            "ratio": slope / base,
            "fixed_s": t[0] - small * slope,
        }
    return out


def speedup(tmp: Path, executors: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for executor in executors:
        runs = {}
        for workers in (1, 2):
            import featcache

            store = featcache.open_store(str(tmp / f"work-{executor}-{workers}"))
            seconds, report = time_executor(store, "work", executor, workers)
            runs[workers] = {"seconds": seconds, "items": report.counts().get("done", 0)}
        runs["speedup"] = runs[1]["seconds"] / runs[2]["seconds"]
        out[executor] = runs
    return out


def gpu(tmp: Path) -> dict[str, Any]:
    import featcache
    from featcache.executors import RunOptions, run_suite

    out = {}
    for label, kwargs in (
        ("in_process", {"workers": 0}),
        ("local_gpu_worker", {"gpus": 1}),
    ):
        store = featcache.open_store(str(tmp / f"gpu-{label}"))
        t0 = time.perf_counter()
        _, report = run_suite(store, "gpu", options=RunOptions(device="cuda"), **kwargs)
        out[label] = {"seconds": time.perf_counter() - t0, "ok": report is not None and report.ok}
    out["ratio"] = out["local_gpu_worker"]["seconds"] / out["in_process"]["seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="10,50", help="two suite sizes, e.g. 10,50")
    parser.add_argument("--rows", type=int, default=400, help="train rows per kNN item")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray executor")
    parser.add_argument("--gpu", action="store_true", help="extraction on one CUDA GPU")
    parser.add_argument(
        "--only", choices=("overhead", "speedup"), help="run one of the two measurements"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.sizes = sorted(int(x) for x in args.items.split(","))
    if len(args.sizes) != 2 or args.sizes[0] >= args.sizes[1]:
        parser.error("--items takes two increasing sizes, e.g. 10,50")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory(prefix="bobx-bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        write_manifests(tmp / "manifests", args.sizes)
        os.environ["BOBX_MANIFESTS"] = str(tmp / "manifests")
        executors = ["local"] + ([] if args.no_ray else ["ray"])
        if "ray" in executors:
            import ray

            ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False,
                     log_to_driver=False)  # fmt: skip
        load = os.getloadavg()
        result: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)), "load": load}
        if args.gpu:
            result["gpu"] = gpu(tmp)
        else:
            if args.only != "speedup":
                result["overhead"] = overhead(args, tmp, executors)
            if args.only != "overhead":
                result["speedup"] = speedup(tmp, executors)
        result["load_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['cores']} cores, load average {load[0]:.1f} before, "
          f"{result['load_after'][0]:.1f} after")  # fmt: skip
    if args.gpu:
        g = result["gpu"]
        print(f"GPU extraction: in process {g['in_process']['seconds']:.1f} s, one local GPU "
              f"worker {g['local_gpu_worker']['seconds']:.1f} s: ratio {g['ratio']:.2f}")  # fmt: skip
        return
    if "overhead" in result:
        o = result["overhead"]
        small, large = o["sizes"]
        print(f"\n1. scheduling overhead per kNN item (slope between {small} and {large} items)")
        print(f"   one process, plain loop   {o['serial']['per_item_s'] * 1e3:8.1f} ms per item")
        for executor in executors:
            e = o[executor]
            print(f"   {executor:<5} executor, 1 worker {e['per_item_s'] * 1e3:8.1f} ms per item: "
                  f"overhead {e['overhead_per_item_s'] * 1e3:+.1f} ms, ratio {e['ratio']:.2f}x, "
                  f"fixed start-up {e['fixed_s']:.1f} s")  # fmt: skip
    if "speedup" not in result:
        return
    print("\n2. the 2-backbone x digits suite on 1 and 2 workers")
    for executor, runs in result["speedup"].items():
        print(f"   {executor:<5} {runs[1]['seconds']:6.1f} s -> {runs[2]['seconds']:6.1f} s "
              f"({runs[1]['items']} items): speed-up {runs['speedup']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

"""Benchmark: bobx linear probe and weighted kNN vs scikit-learn on the same data.

Data: CIFAR-100-shaped synthetic features (default 50k train / 10k test x 768, 100
classes), seeded: class means ``separation * N(0, I)`` plus ``N(0, I)`` noise, so
accuracy is far above chance but below 100 %.

(a) Probe: ``linear_probe(backend="torch")`` (float64 = protocol, and float32) vs
    ``linear_probe(backend="sklearn")`` - LogisticRegression(lbfgs) from scratch
    per C - with the same grid, holdout split and refit, so the comparison is
    apples to apples. Prints time, chosen C, test top-1 and the speed ratio.
    sklearn runs twice: as installed, and "pinned" (numpy's and scipy's BLAS on
    one thread, which spares it the thread-pool contention between numpy's GEMMs
    and scipy's L-BFGS-B that costs it ~2x on small machines): the fairest baseline.
(b) kNN: ``knn_classify`` vs ``KNeighborsClassifier(algorithm="brute",
    metric="cosine", weights=exp((1 - d) / T))``, i.e. the same DINO vote, same k.

Every phase runs in its own subprocess, so its peak RSS (ru_maxrss) is its own;
"work" is the peak minus the RSS right after the data were generated.

    python benchmarks/bench_probe_knn.py                                  # full size
    python benchmarks/bench_probe_knn.py --n-train 10000 --grid-points 12  # ~minutes
    python benchmarks/bench_probe_knn.py --gpu     # ImageNet-sized (1.28M x 768, 1000
                                                   # classes) on a CUDA GPU; no sklearn
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

MiB = 2**20


def make_data(
    n: int, dim: int, classes: int, separation: float, seed: int, stream: int, chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded class-mean + noise features (float32) and labels, built chunk by chunk."""
    means = separation * np.random.default_rng([seed, 0]).standard_normal((classes, dim))
    rng = np.random.default_rng([seed, stream])
    y = rng.integers(0, classes, n)
    x = np.empty((n, dim), dtype=np.float32)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        x[a:b] = means[y[a:b]] + rng.standard_normal((b - a, dim), dtype=np.float32)
    return x, y


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_phase(phase: str, args: argparse.Namespace) -> dict[str, Any]:
    """One contender on freshly generated (identical) data; returns its figures."""
    train_x, train_y = make_data(
        args.n_train, args.dim, args.classes, args.separation, args.seed, 1
    )
    test_x, test_y = make_data(args.n_test, args.dim, args.classes, args.separation, args.seed, 2)
    base = _rss()
    device = "cuda" if args.gpu else "cpu"
    grid = 10.0 ** np.linspace(-6, 5, args.grid_points)
    out: dict[str, Any] = {"phase": phase}
    t0, c0 = time.perf_counter(), time.process_time()
    if phase.startswith("probe"):
        from evaluators.probe import linear_probe

        backend, _, dtype = phase.removeprefix("probe_").partition("_")
        pinned = dtype == "pinned"  # sklearn with numpy's / scipy's BLAS on one thread
        limits = threadpool_limits(1, user_api="blas") if pinned else contextlib.nullcontext()
        dtype = "" if pinned else dtype
        with limits:
            r = linear_probe(
                train_x,
                train_y,
                test_x,
                test_y,
                c_grid=grid,
                backend=backend,
                device=device if backend != "sklearn" else "cpu",
                dtype=dtype or "float64",
                seed=args.seed,
            )
        out.update(C=r["C"], top1=r["top1"], val_top1=r["val_top1"], sweep=r["sweep"])
    elif phase == "knn_bobx":
        from evaluators.knn import knn_classify

        r = knn_classify(
            train_x, train_y, test_x, test_y, ks=(args.k,), temperature=args.temperature,
            device=device,
        )  # fmt: skip
        out.update(top1=r[f"top1_k{args.k}"])
    elif phase == "knn_bobx_4k":
        from evaluators.knn import knn_classify

        r = knn_classify(train_x, train_y, test_x, test_y, device=device)  # ks 10,20,100,200
        out.update(top1=r["top1_k20"])
    elif phase == "knn_sklearn":
        from sklearn.neighbors import KNeighborsClassifier

        temperature = args.temperature

        def dino_weights(dist: np.ndarray) -> np.ndarray:
            return np.exp((1.0 - dist) / temperature)  # cosine distance = 1 - similarity

        clf = KNeighborsClassifier(
            n_neighbors=args.k, algorithm="brute", metric="cosine", weights=dino_weights
        )
        pred = clf.fit(train_x, train_y).predict(test_x)
        out.update(top1=float(np.mean(pred == test_y)))
    else:
        raise SystemExit(f"unknown phase {phase!r}")
    out.update(
        seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,
        peak_mib=_maxrss() / MiB,
        work_mib=(_maxrss() - base) / MiB,
        inputs_mib=(train_x.nbytes + test_x.nbytes) / MiB,
    )
    if args.gpu:
        import torch

        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / MiB
    return out


def spawn(phase: str, argv: list[str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", phase, path]
        subprocess.run(cmd, check=True)
        return json.loads(Path(path).read_text())
    finally:
        os.unlink(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-train", type=int, default=None, help="default 50000 (--gpu: 1281167)")
    p.add_argument("--n-test", type=int, default=None, help="default 10000 (--gpu: 50000)")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--classes", type=int, default=None, help="default 100 (--gpu: 1000)")
    p.add_argument("--separation", type=float, default=0.15, help="class-mean scale")
    p.add_argument("--grid-points", type=int, default=45, help="C values in 10**linspace(-6,5,n)")
    p.add_argument("--k", type=int, default=20, help="neighbours for the kNN comparison")
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--probe-dtypes", default="float64,float32", help="torch backend precisions to time"
    )
    p.add_argument("--skip-probe", action="store_true")
    p.add_argument("--skip-knn", action="store_true")
    p.add_argument("--skip-sklearn", action="store_true", help="bobx phases only")
    p.add_argument("--gpu", action="store_true", help="ImageNet-sized run on a CUDA GPU")
    p.add_argument("--child", nargs=2, metavar=("PHASE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    big = args.gpu
    args.n_train = args.n_train or (1_281_167 if big else 50_000)
    args.n_test = args.n_test or (50_000 if big else 10_000)
    args.classes = args.classes or (1000 if big else 100)
    if args.child:
        phase, out = args.child
        Path(out).write_text(json.dumps(run_phase(phase, args)))
        return

    forward = list(argv if argv is not None else sys.argv[1:])
    phases: list[str] = []
    if not args.skip_probe:
        phases += [f"probe_torch_{d}" for d in args.probe_dtypes.split(",") if d]
        if not (args.skip_sklearn or args.gpu):
            phases += ["probe_sklearn", "probe_sklearn_pinned"]
        if args.gpu:
            phases.append("probe_cuml")
    if not args.skip_knn:
        phases += ["knn_bobx", "knn_bobx_4k"]
        if not (args.skip_sklearn or args.gpu):
            phases.append("knn_sklearn")

    print(
        f"# bench_probe_knn  n_train={args.n_train} n_test={args.n_test} dim={args.dim} "
        f"classes={args.classes} grid_points={args.grid_points} k={args.k} "
        f"device={'cuda' if args.gpu else 'cpu'} cpus={os.cpu_count()} "
        f"loadavg={os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    for phase in phases:
        try:
            r = spawn(phase, forward)
        except subprocess.CalledProcessError as exc:
            print(f"{phase:18s} FAILED ({exc.returncode})", flush=True)
            continue
        results[phase] = r
        extra = f" C={r['C']:.3g} val_top1={r['val_top1']:.4f}" if "C" in r else ""
        cuda = f" cuda_peak={r['cuda_peak_mib']:.0f}MiB" if "cuda_peak_mib" in r else ""
        print(
            f"{phase:18s} {r['seconds']:8.1f}s (cpu {r['cpu_seconds']:7.1f}s) "
            f"top1={r['top1']:.4f}{extra} peak_rss={r['peak_mib']:.0f}MiB "
            f"work={r['work_mib']:.0f}MiB{cuda}  load={os.getloadavg()[0]:.2f}",
            flush=True,
        )

    print("# summary")
    baselines = [
        (name, results[phase])
        for name, phase in (
            ("sklearn", "probe_sklearn"),
            ("sklearn pinned", "probe_sklearn_pinned"),
        )
        if phase in results
    ]
    for phase, r in results.items():
        if not phase.startswith("probe_torch"):
            continue
        for name, sk in baselines:
            same_c = "same C" if r["C"] == sk["C"] else f"C differs ({r['C']:.3g} vs {sk['C']:.3g})"
            print(
                f"probe {phase.removeprefix('probe_')} vs {name}: "
                f"{sk['seconds'] / r['seconds']:.2f}x faster, {same_c}, "
                f"top1 diff {100 * (r['top1'] - sk['top1']):+.2f} points "
                f"(target >= 4x, |diff| <= 0.3)"
            )
    kb, ks = results.get("knn_bobx"), results.get("knn_sklearn")
    if kb and ks:
        print(
            f"knn k={args.k} bobx vs sklearn: {ks['seconds'] / kb['seconds']:.2f}x faster, "
            f"top1 {100 * kb['top1']:.2f} vs {100 * ks['top1']:.2f} (target >= 2.5x)"
        )


if __name__ == "__main__":
    main()

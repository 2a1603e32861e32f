"""Read a complete feature set from a local store against ``np.load`` of the same data.

    python benchmarks/store_read.py [--rows 200000] [--dim 768] [--chunk-rows 4096 16384]

Prints, in one run: write throughput, whole-array read time for the store and for
``np.load`` (page cache warm for both: the best of ``--repeat`` runs), their ratio
(target >= 0.8x the speed of np.load), and a blockwise streaming read. With several
``--chunk-rows`` it compares chunk sizes, the measurement behind the default.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import featcache


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument(
        "--chunk-rows",
        type=int,
        nargs="*",
        default=None,
        help="chunk sizes to compare (default: the store's default only)",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bobx-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.dim), dtype=np.float32).astype(np.float16)
    labels = rng.integers(0, 1000, args.rows)
    ids = [f"{i:07d}" for i in range(args.rows)]
    mb = x.nbytes / 2**20
    npy = work / "features.npy"
    np.save(npy, x)
    t_np = best_of(lambda: np.load(npy), args.repeat)
    print(f"data: {args.rows} x {args.dim} float16 = {mb:.0f} MiB")
    print(f"np.load                 : {t_np:.3f} s  ({mb / t_np:8.0f} MiB/s)")

    default_rows = featcache.store.default_chunk_rows(args.dim, 2)
    for chunk_rows in args.chunk_rows or [default_rows]:
        url = str(work / f"store-{chunk_rows}")
        shutil.rmtree(url, ignore_errors=True)
        store = featcache.open_store(url)
        t0 = time.perf_counter()
        writer = store.create_features(
            "bench",
            "synthetic",
            "train",
            n=args.rows,
            dim=args.dim,
            cache_key="bench",
            chunk_rows=chunk_rows,
        )
        for index in writer.missing_chunks():
            a, b = writer.chunk_range(index)
            writer.write_chunk(index, x[a:b], labels=labels[a:b], ids=ids[a:b])
        writer.finalize()
        t_write = time.perf_counter() - t0
        fs = store.features("bench", "synthetic", "train")
        t_read = best_of(lambda fs=fs: fs.embeddings(dtype=None), args.repeat)
        t_stream = best_of(
            lambda fs=fs: sum(len(b) for b in fs.iter_blocks(dtype=None)), args.repeat
        )
        got = fs.embeddings(dtype=None)
        assert got.tobytes() == x.tobytes(), "store read differs from what was written"
        tag = " (default)" if chunk_rows == default_rows else ""
        print(f"chunk_rows={chunk_rows:6d}{tag}")
        print(
            f"  write (embeddings+labels+ids+markers): {t_write:.2f} s "
            f"({mb / t_write:6.0f} MiB/s, {args.rows / t_write:,.0f} rows/s)"
        )
        print(
            f"  store read whole      : {t_read:.3f} s  ({mb / t_read:8.0f} MiB/s)"
            f"  speed vs np.load = {t_np / t_read:.2f}x  (target >= 0.8x)"
        )
        print(
            f"  store read streaming  : {t_stream:.3f} s  speed vs np.load = {t_np / t_stream:.2f}x"
        )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

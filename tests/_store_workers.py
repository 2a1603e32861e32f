"""Worker processes for the store's concurrency and crash tests.

Run as ``python tests/_store_workers.py COMMAND ARGS``; each command is the kind
of thing one team member's process does against a shared store."""

from __future__ import annotations

import sys
import time

import numpy as np

import featcache

N, DIM, CHUNK = 1000, 48, 64


def reference_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    y = rng.integers(0, 10, N)
    ids = [f"img/{i:05d}.jpg" for i in range(N)]
    return x, y, ids


def write_set(url: str, chunks: list[int] | None, delay: float) -> None:
    """Write the reference set chunk by chunk (only ``chunks`` if given), then finalize."""
    x, y, ids = reference_data()
    store = featcache.open_store(url)
    writer = store.create_features(
        "bb", "ds", "train", n=N, dim=DIM, cache_key="k1", chunk_rows=CHUNK, attrs={"t": 1}
    )
    for index in writer.missing_chunks(chunks):
        a, b = writer.chunk_range(index)
        writer.write_chunk(index, x[a:b], labels=y[a:b], ids=ids[a:b])
        print(f"chunk {index}", flush=True)
        time.sleep(delay)
    writer.finalize()


def write_records(url: str, worker: int, count: int) -> None:
    store = featcache.open_store(url)
    for i in range(count):
        store.record(
            backbone=f"bb{worker}",
            task="classification",
            dataset="ds",
            metric="top1",
            value=worker * 1000 + i,
            params={"worker": worker, "i": i},
        )


if __name__ == "__main__":
    cmd, url = sys.argv[1], sys.argv[2]
    if cmd == "write-set":
        chunks = None if sys.argv[3] == "all" else [int(c) for c in sys.argv[3].split(",")]
        write_set(url, chunks, float(sys.argv[4]))
    elif cmd == "records":
        write_records(url, int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown command {cmd}")

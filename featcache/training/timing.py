"""Inference speed of a model: throughput, latency, peak memory and FLOPs (``bobx speed``).

:func:`measure_speed` times forward passes on random pixels, the way BoB reports "the
latency and the memory usage of each backbone on the same device":

* throughput per batch size: ``warmup`` passes first (excluded: lazy init, cuDNN's
  autotuning, allocator growth), then ``repeats`` timed runs of ``iters`` passes each;
  images/s is the median over the runs (CUDA: timed between synchronisations);
* latency at batch 1: ``latency_runs`` passes timed one by one; p50 and p95 in ms;
* peak memory per batch size: on CUDA the allocator's peak (``max_memory_allocated``,
  reset before each batch size); on the CPU the peak resident set size sampled every
  millisecond during the timed runs, minus the process's size before the model was
  built (``memory: rss_delta``: weights + activations + workspace, like the GPU figure);
* GFLOPs per image: ``torch.utils.flop_counter.FlopCounterMode`` on one batch-1 pass
  (a multiply-add counts 2);
* parameters in millions.

Nothing here touches a store; :mod:`featcache.runners.speed` records the figures.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


def current_rss_mb() -> float | None:
    """This process's resident set size in MiB (Linux ``/proc``), or None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RssPeak:
    """Samples the resident set size every ``interval`` seconds while active."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval, self.peak = interval, current_rss_mb() or 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now = current_rss_mb()
            if now is not None and now > self.peak:
                self.peak = now

    def __enter__(self) -> _RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        now = current_rss_mb()
        if now is not None:
            self.peak = max(self.peak, now)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_gflops(model: nn.Module, x: torch.Tensor) -> float:
    """GFLOPs of one forward of ``x`` (torch's FLOP counter: a multiply-add is 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def measure_speed(
    model: nn.Module,
    *,
    input_size: tuple[int, int, int],
    batch_sizes: Sequence[int] = (1, 32, 256),
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    warmup: int = 3,
    repeats: int = 5,
    iters: int = 3,
    latency_runs: int = 30,
    baseline_rss_mb: float | None = None,
    make_input: Callable[[int], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Figures of ``model`` (pixels in, as :class:`ImageClassifier` / FeatureExtractor take
    them) on ``device``; see the module doc. Returns ``{"throughput": {bs: img/s},
    "peak_memory_mb": {bs: MiB}, "latency_p50_ms", "latency_p95_ms", "gflops",
    "params_m", "memory": "cuda_allocator" | "rss_delta"}``."""
    from featcache.training.classification import PRECISIONS

    dev = torch.device(device)
    dtype = PRECISIONS[precision]
    model = model.to(dev).eval()
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    gen = torch.Generator().manual_seed(0)

    def pixels(bs: int) -> torch.Tensor:
        if make_input is not None:
            return make_input(bs).to(dev)
        return torch.randint(0, 256, (bs, *input_size), dtype=torch.uint8, generator=gen).to(dev)

    def forward(x: torch.Tensor) -> Any:
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(x)

    out: dict[str, Any] = {
        "throughput": {},
        "peak_memory_mb": {},
        "memory": "cuda_allocator" if dev.type == "cuda" else "rss_delta",
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    base = baseline_rss_mb if baseline_rss_mb is not None else current_rss_mb() or 0.0
    with torch.inference_mode():
        for bs in sorted(set(int(b) for b in batch_sizes)):
            x = pixels(bs)
            for _ in range(warmup):
                forward(x)
            _sync(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            rates = []
            with _RssPeak() as rss:
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        forward(x)
                    _sync(dev)
                    rates.append(bs * iters / (time.perf_counter() - t0))
            out["throughput"][bs] = statistics.median(rates)
            if dev.type == "cuda":
                out["peak_memory_mb"][bs] = torch.cuda.max_memory_allocated(dev) / 2**20
            else:
                out["peak_memory_mb"][bs] = max(0.0, rss.peak - base)
        x = pixels(1)
        for _ in range(warmup):
            forward(x)
        times = []
        for _ in range(latency_runs):
            _sync(dev)
            t0 = time.perf_counter()
            forward(x)
            _sync(dev)
            times.append((time.perf_counter() - t0) * 1e3)
    quantiles = statistics.quantiles(times, n=100, method="inclusive")
    out["latency_p50_ms"] = statistics.median(times)
    out["latency_p95_ms"] = quantiles[94]
    out["gflops"] = count_gflops(model, pixels(1))
    return out


__all__ = ["count_gflops", "current_rss_mb", "measure_speed"]

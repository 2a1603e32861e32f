"""The local executor: one worker process per GPU, or N CPU worker processes, on this machine.

Workers are ``spawn``-ed processes (a clean CUDA context each) that keep their loaded
models between items. With ``gpus=N`` worker ``i`` sees only GPU ``i``
(``CUDA_VISIBLE_DEVICES``); CPU workers split the cores between them (each gets
``cores // workers`` threads). ``workers=0`` runs every item in this process, one after
another: the baseline the benchmark compares against, and the only mode a ``memory://``
store supports. A worker that dies (killed, out of memory) fails the items it was
running; the driver retries them on a fresh pool, and they resume from the store.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

from featcache.errors import BobxError
from featcache.executors.items import ModelCache, Outcome, RunOptions, run_in_worker, run_item
from featcache.suites import WorkItem


def check_shared_store(url: str, executor: str) -> None:
    """Worker processes must reach the store: refuse a ``memory://`` one."""
    if url.startswith("memory://"):
        raise BobxError(
            f"The {executor} executor runs items in other processes, which cannot see the "
            f"in-memory store {url}; use a directory or s3:// store (or --workers 0)."
        )


def _visible_gpus(count: int) -> list[str]:
    """The device ids worker ``0..count-1`` get, within this process's visible devices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v for v in visible.split(",") if v.strip()] if visible else None
    if ids is None:
        return [str(i) for i in range(count)]
    if count > len(ids):
        raise BobxError(
            f"--gpus {count} asks for more GPUs than CUDA_VISIBLE_DEVICES={visible} shows."
        )
    return ids[:count]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _init_worker(slots: Any, gpu_ids: list[str], threads: int) -> None:
    """Runs first in each spawned worker: claim a slot, pin its GPU, size its threads."""
    slot = int(slots.get())
    if gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_ids[slot]
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ["BOBX_WORKER_SLOT"] = str(slot)


class LocalBackend:
    """Items on worker processes of this machine (see the module doc)."""

    name = "local"

    def __init__(
        self, store_url: str, options: RunOptions, *, workers: int = 1, gpus: int = 0
    ) -> None:
        if workers < 0 or gpus < 0:
            raise BobxError("--workers and --gpus must be >= 0.")
        self.store_url, self.options = store_url, options
        self.size = gpus or workers
        self.gpu_ids = _visible_gpus(gpus) if gpus else []
        if gpus and options.device == "auto":
            self.options = replace(self.options, device="cuda")
        if self.size and options.num_workers is None:  # each worker its share of the cores
            self.options = replace(self.options, num_workers=max(0, _cores() // self.size - 1))
        if self.size:
            check_shared_store(store_url, "local")
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[Future[Outcome], WorkItem] = {}
        self._done_here: list[tuple[WorkItem, Outcome]] = []
        self.models = ModelCache()  # in-process mode (workers=0)

    # -- Backend --------------------------------------------------------------------
    def free_slots(self) -> int:
        if not self.size:  # in this process: one item at a time
            return 0 if self._done_here else 1
        return self.size - len(self._futures)

    def submit(self, batch: list[WorkItem]) -> None:
        if not self.size:  # in this process, now
            for item in batch:
                outcome = run_item(item, self.store_url, self.options, models=self.models)
                self._done_here.append((item, outcome))
            return
        pool = self._ensure_pool()
        for item in batch:
            self._futures[pool.submit(run_in_worker, item, self.store_url, self.options)] = item

    def poll(self, timeout: float) -> list[tuple[WorkItem, Outcome]]:
        if not self.size:
            out, self._done_here = self._done_here, []
            return out
        done, _ = wait(list(self._futures), timeout=timeout, return_when=FIRST_COMPLETED)
        out, broken = [], False
        for future in done:
            item = self._futures.pop(future)
            try:
                out.append((item, future.result()))
            except BrokenProcessPool as exc:
                broken = True
                out.append((item, _died(item, exc)))
            except Exception as exc:  # e.g. the item could not be pickled
                out.append((item, Outcome(item.id, "failed", f"{type(exc).__name__}: {exc}")))
        if broken:  # every other item in flight died with the pool
            for future, item in list(self._futures.items()):
                out.append((item, _died(item, None)))
                del self._futures[future]
            self._shutdown()
        return out

    def close(self) -> None:
        self._shutdown()

    # -- pool -----------------------------------------------------------------------
    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            slots = ctx.Queue()
            for i in range(self.size):
                slots.put(i)
            threads = max(1, _cores() // self.size)
            self._pool = ProcessPoolExecutor(
                max_workers=self.size,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(slots, self.gpu_ids, threads),
            )
        return self._pool

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _died(item: WorkItem, exc: BaseException | None) -> Outcome:
    why = f" ({exc})" if exc else ""
    return Outcome(
        item.id,
        "failed",
        f"a local worker process died while running it{why}; retried from its chunk markers",
        retry=True,
    )


__all__ = ["LocalBackend", "check_shared_store"]

"""The Ray executor (``pip install bobx[ray]``): work items on long-lived Ray actors.

* One actor per GPU (``num_gpus=1``) and/or per CPU worker (``num_cpus=1``); each keeps
  the models it loaded (:class:`featcache.executors.items.ModelCache`), and the driver
  sends a backbone's extraction items to an actor that already holds that backbone, so a
  model loads once per (backbone, worker), not once per set.
* A worker that dies mid-item is restarted by Ray and the item retried on it
  (``max_restarts`` / ``max_task_retries``); the retry waits for the dead worker's lease
  to expire, then computes only the chunks without a marker. Failures the item reports
  itself are retried by the driver (:mod:`featcache.executors.scheduler`).
* Progress reaches the driver as each item's outcome, plus the chunk markers of running
  extractions (read from the store).

``address`` connects to a running cluster (``ray start --head`` on one node, ``ray start
--address=<head>:6379`` on the others; ``address="auto"`` on a cluster node); without
one a local Ray instance starts here. The nodes need bobx installed and the store
reachable (a shared path or S3); the driver's ``BOBX_*`` variables (suites and catalogs
in ``$BOBX_MANIFESTS``, data roots) go to the actors with them.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import ray

from featcache.errors import BobxError
from featcache.executors.items import ModelCache, Outcome, RunOptions, run_item, worker_id
from featcache.executors.local import check_shared_store
from featcache.suites import WorkItem


class Worker:
    """A Ray actor that runs work items and keeps its loaded models."""

    def __init__(self, store_url: str, options: RunOptions) -> None:
        self.store_url, self.options = store_url, options
        self.models = ModelCache()

    def run(self, item: WorkItem) -> Outcome:
        return run_item(item, self.store_url, self.options, models=self.models)

    def info(self) -> dict[str, Any]:
        """Who this actor is and what it has loaded."""
        return {
            "worker": worker_id(),
            "pid": os.getpid(),
            "backbones": sorted(self.models.backbones()),
            "loads": self.models.loads,
        }


_RemoteWorker = ray.remote(Worker)


def bobx_environment() -> dict[str, str]:
    """The driver's ``BOBX_*`` variables (``$BOBX_MANIFESTS``, data roots), which the
    actors need to see the same suites, catalogs and data; credentials are not sent
    (the nodes use their own)."""
    return {k: v for k, v in os.environ.items() if k.startswith("BOBX_")}


class RayBackend:
    """Items on Ray actors (see the module doc)."""

    name = "ray"

    def __init__(
        self,
        store_url: str,
        options: RunOptions,
        *,
        address: str | None = None,
        gpus: int = 0,
        workers: int | None = None,
        max_retries: int = 2,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        check_shared_store(store_url, "ray")
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=address, **(init_kwargs or {}))
        cpus = int(ray.cluster_resources().get("CPU", 1))  # the whole cluster's
        n_cpu = workers if workers is not None else (0 if gpus else max(1, cpus))
        if gpus + n_cpu < 1:
            raise BobxError("The ray executor needs --gpus N or --workers N >= 1.")
        self.store_url, self.max_retries = store_url, max_retries
        resources = ray.cluster_resources()
        decode = options.num_workers
        per_gpu = max(0, int(resources.get("CPU", 1) // max(1, resources.get("GPU", 1))) - 1)
        gpu_options = replace(
            options, device="cuda", num_workers=per_gpu if decode is None else decode
        )
        cpu_options = replace(
            options, device="cpu" if gpus else options.device, num_workers=decode or 0
        )
        self.actors: list[Any] = []
        self.gpu: list[bool] = []
        for kind_gpu, count, opts in ((True, gpus, gpu_options), (False, n_cpu, cpu_options)):
            for _ in range(count):
                self.actors.append(self._new_actor(kind_gpu, opts))
                self.gpu.append(kind_gpu)
        self.options = {True: gpu_options, False: cpu_options}
        self.busy: dict[int, tuple[Any, WorkItem]] = {}  # actor index -> (ref, item)
        self.loaded: dict[int, set[str]] = {i: set() for i in range(len(self.actors))}

    def _new_actor(self, gpu: bool, options: RunOptions) -> Any:
        return _RemoteWorker.options(
            num_gpus=1 if gpu else 0,
            num_cpus=1,
            max_restarts=self.max_retries,
            max_task_retries=self.max_retries,
            runtime_env={"env_vars": bobx_environment()},
        ).remote(self.store_url, options)

    # -- Backend --------------------------------------------------------------------
    def _idle(self) -> list[int]:
        return [i for i in range(len(self.actors)) if i not in self.busy]

    def _pick(self, item: WorkItem, idle: list[int]) -> int | None:
        """An idle actor for ``item``: the right kind first, then one that has its model."""
        if not idle:
            return None
        want_gpu = item.uses_accelerator and any(self.gpu)

        def score(i: int) -> tuple[bool, bool]:
            return (self.gpu[i] == want_gpu, item.backbone in self.loaded[i])

        return max(idle, key=score)

    def free_slots(self) -> int:
        return len(self._idle())

    def submit(self, batch: list[WorkItem]) -> None:
        for item in batch:
            index = self._pick(item, self._idle())
            if index is None:
                raise BobxError("internal: a Ray item was submitted without an idle actor.")
            if item.kind == "extract":
                self.loaded[index].add(item.backbone)
            self.busy[index] = (self.actors[index].run.remote(item), item)

    def poll(self, timeout: float) -> list[tuple[WorkItem, Outcome]]:
        if not self.busy:
            return []
        refs = {ref: index for index, (ref, _) in self.busy.items()}
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            index = refs[ref]
            _, item = self.busy.pop(index)
            try:
                out.append((item, ray.get(ref)))
            except ray.exceptions.RayActorError as exc:  # died beyond its restarts
                self.actors[index] = self._new_actor(self.gpu[index], self.options[self.gpu[index]])
                self.loaded[index] = set()
                out.append((item, _lost(item, f"its Ray worker died ({type(exc).__name__})")))
            except ray.exceptions.RayError as exc:
                out.append((item, _lost(item, f"{type(exc).__name__}: {exc}")))
        return out

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.busy = [], {}
        if self._owns_ray:
            ray.shutdown()

    def worker_info(self) -> list[dict[str, Any]]:
        """Each live actor's :meth:`Worker.info`."""
        return list(ray.get([a.info.remote() for a in self.actors]))


def _lost(item: WorkItem, why: str) -> Outcome:
    return Outcome(item.id, "failed", f"{why}; retried from the store", retry=True)


__all__ = ["RayBackend", "Worker"]

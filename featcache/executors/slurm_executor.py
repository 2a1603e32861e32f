"""The Slurm executor (``pip install bobx[slurm]``): work items as submitit job arrays.

Each batch of items that can start together becomes one Slurm job array (submitit's
``executor.batch()``), GPU items (extraction, jobs) and CPU items (evaluators) in
separate arrays with their own resources. No sbatch script: submitit pickles the item
and :class:`ItemTask`, and the driver (this process, e.g. on the login node) polls the
jobs and submits the next wave as needs are met.

:class:`ItemTask` is a ``submitit.helpers.Checkpointable``: on preemption or at the time
limit Slurm signals the job, submitit calls :meth:`ItemTask.checkpoint` and requeues the
same item, which resumes from its chunk markers (extraction) or starts again (evaluators
are minutes at most). ``cluster="local"`` runs the same code through submitit's local
executor (the tests do), ``cluster="debug"`` in this process.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import submitit

from featcache.errors import BobxError
from featcache.executors.items import _WORKER_MODELS, Outcome, RunOptions, run_item
from featcache.executors.local import check_shared_store
from featcache.suites import WorkItem


class ItemTask(submitit.helpers.Checkpointable):
    """One work item as a submitit job; requeued as itself on preemption or timeout."""

    def __call__(self, item: WorkItem, store_url: str, options: RunOptions) -> Outcome:
        return run_item(item, store_url, options, models=_WORKER_MODELS)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # the store is the checkpoint: chunk markers make the requeued item a resume
        return submitit.helpers.DelayedSubmission(ItemTask(), *args, **kwargs)


class SlurmBackend:
    """Items as submitit job arrays (see the module doc)."""

    name = "slurm"

    def __init__(
        self,
        store_url: str,
        options: RunOptions,
        *,
        folder: str | Path = "bobx-slurm",
        cluster: str | None = None,
        gpus: int = 0,
        parallelism: int = 64,
        timeout_min: int = 240,
        partition: str | None = None,
        cpus_per_task: int = 4,
        mem_gb: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if cluster != "debug":
            check_shared_store(store_url, "slurm")
        self.store_url, self.options = store_url, options
        self.gpus = gpus
        self.parallelism = max(1, parallelism)
        self.executor = submitit.AutoExecutor(folder=str(_require_folder(folder)), cluster=cluster)
        params: dict[str, Any] = {
            "name": "bobx",
            "timeout_min": timeout_min,
            "cpus_per_task": cpus_per_task,
            "slurm_array_parallelism": self.parallelism,
        }
        if partition:
            params["slurm_partition"] = partition
        if mem_gb:
            params["mem_gb"] = mem_gb
        self.executor.update_parameters(**params, **(extra or {}))
        self.jobs: dict[Any, WorkItem] = {}

    # -- Backend --------------------------------------------------------------------
    def free_slots(self) -> int:
        return self.parallelism - len(self.jobs)

    def submit(self, batch: list[WorkItem]) -> None:
        for accelerated in (True, False):
            group = [i for i in batch if i.uses_accelerator == accelerated]
            if not group:
                continue
            gpus = self.gpus if accelerated else 0
            options = self.options
            if gpus and options.device == "auto":
                options = replace(options, device="cuda")
            self.executor.update_parameters(gpus_per_node=min(gpus, 1))
            with self.executor.batch():
                jobs = [
                    self.executor.submit(ItemTask(), item, self.store_url, options)
                    for item in group
                ]
            self.jobs.update(zip(jobs, group, strict=True))

    def poll(self, timeout: float) -> list[tuple[WorkItem, Outcome]]:
        deadline = time.time() + timeout
        while True:
            finished = [job for job in self.jobs if job.done()]
            if finished or time.time() >= deadline:
                break
            time.sleep(min(0.25, max(0.0, deadline - time.time())))
        out = []
        for job in finished:
            item = self.jobs.pop(job)
            try:
                out.append((item, job.result()))
            except Exception as exc:  # the job died, was cancelled or timed out for good
                text = " ".join(str(exc).split())[-500:]
                out.append(
                    (
                        item,
                        Outcome(item.id, "failed", f"Slurm job {job.job_id}: {text}", retry=True),
                    )
                )
        return out

    def close(self) -> None:
        for job in list(self.jobs):
            job.cancel(check=False)
        self.jobs = {}


def _require_folder(folder: str | Path) -> Path:
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BobxError(f"Cannot create the submitit folder {path}: {exc}; pass --folder.") from exc
    return path


__all__ = ["ItemTask", "SlurmBackend"]

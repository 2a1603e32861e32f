"""Executors: run a suite's missing work items on this machine, a Ray cluster or Slurm.

:func:`run_suite` is the library twin of ``bobx run``: it plans the suite against the
store (:func:`featcache.executors.plan.plan_suite`), builds the executor's backend and
drives it (:func:`featcache.executors.scheduler.execute`). Every executor calls the
same work-item functions (:mod:`featcache.executors.items`) and writes only through the
store's create-only protocol and leases, so executors can be mixed on one store: a
laptop, a Ray cluster and a Slurm array never compute the same set at once.

* ``local``: worker processes on this machine (one per GPU, or N CPU workers);
* ``ray``: Ray actors (``pip install bobx[ray]``), on a cluster with ``address``;
* ``slurm``: submitit job arrays (``pip install bobx[slurm]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from featcache.errors import UnavailableError, UnknownNameError
from featcache.executors.items import Outcome, RunOptions, run_item
from featcache.executors.plan import Plan, plan_suite, store_status
from featcache.executors.scheduler import Backend, Event, RunReport, execute
from featcache.store import Store, open_store
from featcache.suites import SuiteSpec

EXECUTORS = ("local", "ray", "slurm")


def make_backend(
    executor: str,
    store_url: str,
    options: RunOptions,
    *,
    gpus: int = 0,
    workers: int | None = None,
    address: str | None = None,
    max_retries: int = 2,
    slurm: dict[str, Any] | None = None,
) -> Backend:
    """The backend of ``executor``; a one-line error naming the extra when it is missing."""
    if executor == "local":
        from featcache.executors.local import LocalBackend

        return LocalBackend(
            store_url, options, workers=1 if workers is None else workers, gpus=gpus
        )
    if executor == "ray":
        try:
            from featcache.executors.ray_executor import RayBackend
        except ImportError as exc:
            raise UnavailableError(
                f"The ray executor needs Ray, which is not installed here ({exc.name}); "
                "pip install bobx[ray]"
            ) from exc
        return RayBackend(
            store_url, options, address=address, gpus=gpus, workers=workers, max_retries=max_retries
        )
    if executor == "slurm":
        try:
            from featcache.executors.slurm_executor import SlurmBackend
        except ImportError as exc:
            raise UnavailableError(
                f"The slurm executor needs submitit, which is not installed here ({exc.name}); "
                "pip install bobx[slurm]"
            ) from exc
        return SlurmBackend(store_url, options, gpus=gpus, **(slurm or {}))
    raise UnknownNameError("executor", executor, EXECUTORS)


def run_suite(
    store: Store | str | None,
    suite: SuiteSpec | str,
    *,
    executor: str = "local",
    gpus: int = 0,
    workers: int | None = None,
    address: str | None = None,
    dry_run: bool = False,
    options: RunOptions | None = None,
    max_retries: int = 2,
    held_retry_s: float = 5.0,
    slurm: dict[str, Any] | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> tuple[Plan, RunReport | None]:
    """Execute what ``suite`` still misses in ``store`` (``bobx run``).

    Returns the plan it started from and the run's report (``None`` with ``dry_run``,
    which plans and builds nothing). ``workers``: CPU workers (local default 1; Ray
    default: the cluster's CPUs unless ``gpus``); ``gpus``: one worker per GPU;
    ``address``: a Ray cluster; ``slurm``: SlurmBackend options (``folder``,
    ``cluster``, ``partition``, ``timeout_min``, ``parallelism``, ...)."""
    if executor not in EXECUTORS:
        raise UnknownNameError("executor", executor, EXECUTORS)
    st = store if isinstance(store, Store) else open_store(store)
    plan = plan_suite(st, suite)
    if dry_run:
        return plan, None
    backend = make_backend(
        executor,
        st.url,
        options or RunOptions(),
        gpus=gpus,
        workers=workers,
        address=address,
        max_retries=max_retries,
        slurm=slurm,
    )
    report = execute(
        plan, st, backend, max_retries=max_retries, held_retry_s=held_retry_s, on_event=on_event
    )
    return plan, report


__all__ = [
    "EXECUTORS",
    "Backend",
    "Outcome",
    "Plan",
    "RunOptions",
    "RunReport",
    "execute",
    "make_backend",
    "plan_suite",
    "run_item",
    "run_suite",
    "store_status",
]

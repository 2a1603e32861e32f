"""Work-item functions: what every executor calls, in a worker or in this process.

:func:`run_item` executes one :class:`featcache.suites.WorkItem` against a store URL and
returns an :class:`Outcome`; it never raises for a failed item (the executor decides
about retries and keeps the failure in the store). Each item wraps a library twin:

* ``extract``: :func:`featcache.extract.extract` for one split (or one shard's chunk
  range); it takes the set's lease itself (``lease_wait=False``: held elsewhere, the
  item comes back ``held`` and the executor tries it again later), computes only the
  chunks without a marker (a retry is a resume) and reuses the worker's loaded models;
* ``knn`` / ``probe`` / ``calibrate`` / ``retrieve``: the runners of ``bobx knn`` /
  ``probe`` / ``calibrate`` / ``retrieve``, under the lease ``<kind>/<backbone>/<dataset>/
  <variant>``; a lease some other process held before (a later generation) means that
  run may have finished, so the records are looked up again before running;
* ``job``: through the job layer when it is installed, else ``unavailable``.
"""

from __future__ import annotations

import importlib
import os
import time
import traceback
from collections import OrderedDict
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass
from typing import Any

from featcache import provenance
from featcache.catalog import thaw
from featcache.errors import BobxError, StoreError
from featcache.store import Store, open_store
from featcache.suites import WorkItem

#: Outcomes: ``done`` (computed now), ``cached`` (already there: nothing computed),
#: ``held`` (someone else holds its lease: try later), ``failed``, ``unavailable``.
OUTCOMES = ("done", "cached", "held", "failed", "unavailable")
#: Models a worker keeps loaded (the most recent backbones).
MODELS_PER_WORKER = 2


@dataclass(frozen=True)
class RunOptions:
    """Knobs of a run that are not part of any item (they change no stored number)."""

    device: str = "auto"  # extraction device inside the worker
    # DataLoader decode workers per extraction (0: in the worker); None: the executor's
    # share of the cores (local: cores // workers - 1; Ray GPU actors: CPUs per GPU - 1)
    num_workers: int | None = None
    lease_ttl_s: float = 60.0  # a dead worker's lease expires after this


@dataclass(frozen=True)
class Outcome:
    """What one attempt at one item did."""

    item: str
    status: str  # one of OUTCOMES
    detail: str = ""
    seconds: float = 0.0
    records: int = 0
    worker: str = ""
    retry: bool = False  # failed, and another attempt may succeed
    traceback: str = ""
    models_loaded: int = 0  # models this worker has loaded so far (once per backbone)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelCache(OrderedDict[str, Any]):
    """The models one worker keeps loaded: the newest ``capacity`` (keys start with the
    backbone name; see :func:`featcache.extract.extract`'s ``models``)."""

    def __init__(self, capacity: int = MODELS_PER_WORKER) -> None:
        super().__init__()
        self.capacity = capacity
        self.loads = 0

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.loads += 1
        while len(self) > self.capacity:
            self.popitem(last=False)

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def backbones(self) -> set[str]:
        return {k.split("|", 1)[0] for k in self}


#: This process's models, when it is a worker (local processes, submitit jobs).
_WORKER_MODELS = ModelCache()


def worker_id() -> str:
    return f"{provenance.host()}:{os.getpid()}"


def run_item(
    item: WorkItem,
    store: str | Store,
    options: RunOptions | None = None,
    *,
    models: MutableMapping[str, Any] | None = None,
) -> Outcome:
    """Execute ``item`` once; never raises for the item's own failure."""
    from featcache.leases import LeaseHeldError, LeaseLostError

    opts = options or RunOptions()
    t0 = time.perf_counter()

    def outcome(status: str, detail: str = "", **extra: Any) -> Outcome:
        return Outcome(
            item.id,
            status,
            " ".join(detail.split()),
            round(time.perf_counter() - t0, 3),
            worker=worker_id(),
            models_loaded=getattr(models, "loads", 0),
            **extra,
        )

    try:
        st = store if isinstance(store, Store) else open_store(store)
        if item.kind == "extract":
            status, detail = _extract(st, item, opts, models)
            return outcome(status, detail)
        execute = _job if item.kind == "job" else _evaluate
        status, detail, n = execute(st, item, opts)
        return outcome(status, detail, records=n)
    except LeaseHeldError as exc:
        return outcome("held", str(exc))
    except Exception as exc:
        retry = not isinstance(exc, BobxError) or isinstance(exc, StoreError | LeaseLostError)
        text = str(exc) if isinstance(exc, BobxError) else f"{type(exc).__name__}: {exc}"
        return outcome(
            "failed", text, retry=retry, traceback="".join(traceback.format_exception(exc))[-4000:]
        )


def run_in_worker(item: WorkItem, store: str, options: RunOptions | None = None) -> Outcome:
    """:func:`run_item` with this worker process's model cache (process-pool entry point)."""
    return run_item(item, store, options, models=_WORKER_MODELS)


def _extract(
    st: Store, item: WorkItem, opts: RunOptions, models: MutableMapping[str, Any] | None
) -> tuple[str, str]:
    from featcache.extract import extract

    kwargs = thaw(item.options)
    backbone, dataset, split = kwargs.pop("backbone"), kwargs.pop("dataset"), kwargs.pop("split")
    (result,) = extract(
        st,
        backbone,
        dataset,
        splits=[split],
        device=opts.device,
        num_workers=opts.num_workers,
        progress=False,
        lease_wait=False,
        lease_ttl_s=opts.lease_ttl_s,
        models=models,
        **kwargs,
    )
    rate = f", {result.images_per_s:,.1f} img/s" if result.images_per_s else ""
    detail = f"{result.chunks_written}/{result.chunks_total} chunks written{rate}"
    return ("cached" if result.chunks_written == 0 else "done"), detail


def _evaluate(st: Store, item: WorkItem, opts: RunOptions) -> tuple[str, str, int]:
    from featcache.executors.plan import is_done
    from featcache.leases import acquire, lease_key

    with acquire(st, lease_key(*item.parts), ttl_s=opts.lease_ttl_s, note=item.id) as lease:
        if lease.generation > 1 and is_done(st, item):
            return "cached", "records already in the store", 0
        module, name = RUNNERS[item.kind]
        run = getattr(importlib.import_module(module), name)
        records = run(st, item.backbone, item.dataset, **thaw(item.options))
    return "done", f"{len(records)} record(s)", len(records)


#: The library twin each item kind calls, as (module, function): the commands' runners
#: (``bobx knn`` / ``probe`` / ``calibrate`` / ``retrieve``) and the job kinds' (issues 11
#: and 12, called as ``fn(store, backbone, dataset, **suite options)``; the job layer
#: inside them gives runs their ids, leases, checkpoints and caching).
RUNNERS = {
    "knn": ("featcache.runners.classification", "run_knn"),
    "probe": ("featcache.runners.classification", "run_probe"),
    "calibrate": ("featcache.runners.classification", "run_calibration"),
    "retrieve": ("featcache.runners.retrieval", "run_retrieval"),
    "finetune": ("featcache.runners.finetune", "run_finetune"),
    "detect": ("featcache.runners.detection", "run_detection"),
    "robustness": ("featcache.runners.robustness", "run_robustness"),
    "speed": ("featcache.runners.speed", "run_speed"),
}


def runner(kind: str) -> Any | None:
    """The library function behind ``kind``, or ``None`` when this bobx lacks it."""
    module, name = RUNNERS[kind]
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


#: The dataset task each dataset-bound job kind trains on (``speed`` takes no dataset).
JOB_DATASET_TASKS = {
    "finetune": ("classification",),
    "robustness": ("classification",),
    "detect": ("detection",),
}


def job_problem(kind: str, dataset: str | None = None) -> str | None:
    """Why a job kind cannot run here, or not on ``dataset`` (``None``: it can)."""
    if runner(kind) is None:
        module, name = RUNNERS[kind]
        return (
            f"job kind {kind!r} is not available yet: {module}.{name} (`bobx {kind}`) is not "
            "in this bobx; the suite keeps it planned for when it is"
        )
    tasks = JOB_DATASET_TASKS.get(kind)
    if dataset and tasks:
        from featcache.datasets import get_dataset_spec

        task = get_dataset_spec(dataset).task
        if task not in tasks:
            return (
                f"job kind {kind!r} needs a {' or '.join(tasks)} dataset; {dataset} is a "
                f"{task} dataset (move the job to a grid of {' / '.join(tasks)} datasets)"
            )
    return None


def _job(st: Store, item: WorkItem, opts: RunOptions) -> tuple[str, str, int]:
    """A heavy job through its command's library twin (the job layer inside leases,
    checkpoints and caches it); ``speed`` takes a list of backbones and no dataset."""
    import inspect

    from featcache.suites import BACKBONE_JOBS

    kwargs = thaw(item.options)
    kind, backbone = kwargs.pop("job"), kwargs.pop("backbone")
    run = runner(kind)
    if run is None:
        return "unavailable", str(job_problem(kind, item.dataset)), 0
    accepted = inspect.signature(run).parameters
    runtime = {"device": opts.device, "wait": False, "lease_ttl_s": opts.lease_ttl_s}
    kwargs = {**{k: v for k, v in runtime.items() if k in accepted}, **kwargs}
    if kind in BACKBONE_JOBS:
        result = run(st, [backbone], **kwargs)
    else:
        result = run(st, backbone, item.dataset, **kwargs)
    records = result if isinstance(result, list) else getattr(result, "records", [])
    return "done", f"{len(records)} record(s)", len(records)


__all__ = ["OUTCOMES", "ModelCache", "Outcome", "RunOptions", "run_in_worker", "run_item"]

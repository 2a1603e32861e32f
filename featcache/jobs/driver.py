"""The job driver: run any training loop as a resumable, leased job whose results land in the store.

A job plugs in a :class:`Trainer`, a training loop that knows nothing of stores::

    class Trainer(Protocol):
        def state_dict(self) -> dict: ...            # everything needed to resume
        def load_state_dict(self, state) -> None: ...
        def run(self) -> Iterator[Step | EpochEnd]: ...  # train from where it stands
        def evaluate(self) -> dict[str, float]: ...   # final metrics, once run() is over
        def weights(self) -> Mapping[str, Tensor] | None: ...  # final weights to keep

``run()`` is a generator: it yields :class:`Step` after every optimizer update and
:class:`EpochEnd` (with that epoch's curve row, e.g. ``{"train_loss": ..., "val_top1":
..., "lr": ...}``) after every epoch, and returns when training is over. While it is
suspended at a yield, the driver may call ``state_dict()`` and write a checkpoint; a
resumed trainer (``load_state_dict`` of that checkpoint) continues with the very next
update, so on CPU the final metrics are bit-identical to an uninterrupted run's. Whatever
the loop draws at random must come from state it saves (RNG states, sampler position).

:func:`run_job` drives one :class:`JobSpec` (a grid point: kind, backbone, dataset, the
identity hashed into its run id, and the record params):

1. a finished run (``jobs/<run_id>/done.json``) is not rerun: its stored outcome and
   records come back with ``status="cached"``, unless ``overwrite``;
2. it takes the lease ``lease_key("job", run_id)`` (:mod:`featcache.leases`); another
   holder means :class:`~featcache.leases.LeaseHeldError`, or with ``wait`` a wait;
3. it resumes from the newest checkpoint, checkpoints at every epoch (and every
   ``checkpoint_every_steps`` updates), keeps the per-epoch curve as the artifact
   ``<kind>_curve/<backbone>/<dataset>/<run_id>``;
4. at the end it stores the final weights (``model.safetensors``) if the trainer gives
   any, publishes ``done.json`` (create-only: one process's outcome wins) holding the
   metrics, the curve and the records, *then* writes the records (a crash in between is
   repaired by the next call, never duplicated), and drops the checkpoints.

:func:`run_sweep` runs a grid (several JobSpecs of one backbone and dataset): every point
is its own run, points another process holds are left to it (and waited for with
``wait``), the point with the best ``select`` metric (validation) is chosen, and only
its records are written, with ``selected: true`` added to every point's curve attrs.
A detection job uses exactly this: build a JobSpec per grid point with
:func:`make_job`, give ``run_sweep`` a factory that builds its Trainer, a ``select``
metric (``"val_ap_box"``) and a ``records(job, metrics)`` function.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from featcache import provenance
from featcache.catalog import FrozenMap, thaw
from featcache.errors import BobxError
from featcache.jobs.distributed import Ranks, broadcast
from featcache.jobs.state import JobState
from featcache.leases import DEFAULT_TTL_S, LeaseHeldError, acquire, lease_key
from featcache.names import validate_name
from featcache.records import Record

log = logging.getLogger(__name__)

#: Bump when the meaning of a job's identity changes (old runs then get new ids).
JOB_FORMAT = 1
#: Default lease TTL of a job: a dead holder's job can be taken over after this long.
JOB_LEASE_TTL_S = 2 * DEFAULT_TTL_S


@dataclass(frozen=True)
class Step:
    """An optimizer update finished: ``step`` updates so far, in epoch ``epoch`` (0-based)."""

    step: int
    epoch: int


@dataclass(frozen=True)
class EpochEnd:
    """Epoch ``epoch`` (0-based) finished after ``step`` updates; ``row`` is its curve row."""

    epoch: int
    step: int
    row: Mapping[str, float]


class Trainer(Protocol):
    """A training loop the driver can checkpoint and resume (see the module doc)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def run(self) -> Iterator[Step | EpochEnd]: ...

    def evaluate(self) -> dict[str, float]: ...

    def weights(self) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True)
class JobSpec:
    """One run: a job kind on a backbone and dataset with resolved settings.

    ``identity`` is everything that changes the result (hashed into :attr:`run_id`);
    ``params`` are the record params (the knobs a user chose, shared by every backbone
    run the same way, so records of different backbones rank in one setting); ``point``
    is this grid point's recipe values; ``label`` a short human name of the point."""

    kind: str
    backbone: str
    dataset: str
    identity: FrozenMap
    params: FrozenMap = field(default_factory=FrozenMap)
    point: FrozenMap = field(default_factory=FrozenMap)
    label: str = ""

    @property
    def run_id(self) -> str:
        return f"{self.kind}-{provenance.digest(thaw(self.identity))[:20]}"

    @property
    def curve_kind(self) -> str:
        return f"{self.kind}_curve"

    def describe(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "kind": self.kind,
            "backbone": self.backbone,
            "dataset": self.dataset,
            "label": self.label,
            "identity": thaw(self.identity),
            "params": thaw(self.params),
            "point": thaw(self.point),
            "created_at": provenance.now_iso(),
            "created_by": provenance.user(),
            "host": provenance.host(),
            "bobx_version": provenance.bobx_version(),
            "git_hash": provenance.git_hash(),
        }


def make_job(
    kind: str,
    backbone: str,
    dataset: str,
    identity: Mapping[str, Any],
    *,
    params: Mapping[str, Any] | None = None,
    point: Mapping[str, Any] | None = None,
    label: str = "",
) -> JobSpec:
    """A :class:`JobSpec`; ``kind``, ``backbone`` and ``dataset`` join the identity."""
    for what, name in (("job kind", kind), ("backbone", backbone), ("dataset", dataset)):
        validate_name(name, what)
    ident = {
        "job": kind,
        "format": JOB_FORMAT,
        "backbone": backbone,
        "dataset": dataset,
        **dict(identity),
    }
    return JobSpec(
        kind,
        backbone,
        dataset,
        FrozenMap(ident),
        FrozenMap(params or {}),
        FrozenMap(point or {}),
        label,
    )


@dataclass
class JobOutcome:
    """What :func:`run_job` did: ``status`` is ``done`` (ran now) or ``cached``."""

    job: JobSpec
    status: str
    metrics: dict[str, float]
    curve: list[dict[str, float]]
    records: list[Record]
    resumed_from: int | None = None

    @property
    def run_id(self) -> str:
        return self.job.run_id


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` did: every point's outcome, the chosen one, the records."""

    sweep_id: str
    status: str
    points: list[JobOutcome]
    selected: str
    records: list[Record]

    def outcome(self, run_id: str) -> JobOutcome:
        return next(p for p in self.points if p.run_id == run_id)


# --------------------------------------------------------------------------- helpers
def _curve_arrays(curve: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    import numpy as np

    keys = sorted({k for row in curve for k in row} - {"epoch"})
    arrays = {"epoch": np.asarray([int(r.get("epoch", i)) for i, r in enumerate(curve)], np.int64)}
    for key in keys:
        arrays[key] = np.asarray([float(r.get(key, math.nan)) for r in curve], np.float64)
    return arrays


def put_curve(
    store: Any, job: JobSpec, curve: Sequence[Mapping[str, float]], *, selected: bool = False
) -> None:
    """The per-epoch curve artifact ``<kind>_curve/<backbone>/<dataset>/<run_id>``: 1-D
    arrays ``epoch`` and one per curve key; attrs = the params, the point, ``selected``."""
    attrs = {
        **thaw(job.params),
        "run_id": job.run_id,
        "label": job.label,
        "point": thaw(job.point),
        "selected": bool(selected),
    }
    if not curve:
        return
    store.put_artifact(
        job.curve_kind, job.backbone, job.dataset, job.run_id, _curve_arrays(curve), attrs
    )


def _records_of(doc: Mapping[str, Any]) -> list[Record]:
    return [Record.from_dict(r) for r in doc.get("records") or []]


def _publish(store: Any, records: Sequence[Record]) -> None:
    """Write ``records`` that the store does not have yet (ids are fixed in the done doc,
    so a retry after a crash never duplicates one)."""
    if not records:
        return
    have = set(store.results(id=[r.id for r in records])["id"])
    missing = [r for r in records if r.id not in have]
    if missing:
        store.add_records(missing)


def _stored(store: Any, job: JobSpec, doc: Mapping[str, Any]) -> JobOutcome:
    records = _records_of(doc)
    _publish(store, records)
    return JobOutcome(
        job,
        "cached",
        dict(doc.get("metrics") or {}),
        list(doc.get("curve") or []),
        records,
    )


def _snapshot(obj: Any) -> Any:
    """A copy of a state dict that training cannot change under a writer thread: every
    tensor copied to the host (so a CUDA run's copy is made on its own stream here)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        items = [_snapshot(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


class _CheckpointWriter:
    """Writes checkpoints from a background thread (serialisation, digest and upload
    overlap the next updates); at most one in flight, errors re-raised at the next call."""

    def __init__(self, state: JobState, lease: Any) -> None:
        self.state, self.lease = state, lease
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def submit(
        self, step: int, epoch: int, trainer_state: Mapping[str, Any], curve: Any, job: JobSpec
    ) -> None:
        self.flush()
        self.lease.check()
        snapshot = _snapshot({"trainer": trainer_state, "curve": curve, "run_id": job.run_id})

        def write() -> None:
            try:
                self.lease.check()
                self.state.save_checkpoint(step, snapshot, epoch=epoch)
                self.state.prune(keep=2)
            except BaseException as exc:  # surfaced by flush()
                self.error = exc

        self.thread = threading.Thread(target=write, name="bobx-checkpoint", daemon=True)
        self.thread.start()

    def flush(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


# --------------------------------------------------------------------------- one job
def _train(
    trainer: Trainer,
    curve: list[dict[str, float]],
    *,
    save: Callable[[int, int], Any],
    every_steps: int,
    every_epochs: int,
    epoch_done: Callable[[], None] | None = None,
) -> None:
    """Drive ``trainer.run()`` to its end: the curve grows by one row per epoch,
    ``save(step, epoch)`` runs at every checkpoint point (the same points on every rank)."""
    for event in trainer.run():
        if isinstance(event, EpochEnd):
            curve.append({"epoch": event.epoch + 1, **dict(event.row)})
            if (event.epoch + 1) % max(1, every_epochs) == 0:
                save(event.step, event.epoch)
            if epoch_done is not None:
                epoch_done()
        elif every_steps and event.step % every_steps == 0:
            save(event.step, event.epoch)


def _follow(
    store: Any, job: JobSpec, make_trainer: Callable[[JobSpec], Trainer], ranks: Ranks, **kw: Any
) -> JobOutcome:
    """A rank > 0 of a torchrun job: trains in lockstep with rank 0, writes nothing."""
    kind, payload = broadcast(None, ranks)
    if kind == "cached":
        return JobOutcome(job, "cached", dict(payload["metrics"]), list(payload["curve"]), [])
    if kind == "held":
        raise LeaseHeldError.from_message(payload)
    trainer = make_trainer(job)
    curve: list[dict[str, float]] = []
    if payload is not None:
        saved = JobState(store, job.run_id).checkpoint(int(payload))
        trainer.load_state_dict(saved["trainer"])
        curve = [dict(r) for r in saved.get("curve", [])]
    _train(trainer, curve, save=lambda step, epoch: trainer.state_dict(), **kw)
    trainer.evaluate()
    doc, ours = broadcast(None, ranks)
    return JobOutcome(
        job, "done" if ours else "cached", dict(doc["metrics"]), list(doc["curve"]), []
    )


def run_job(
    store: Any,
    job: JobSpec,
    make_trainer: Callable[[JobSpec], Trainer],
    *,
    records: Callable[[JobSpec, Mapping[str, float]], list[Record]] | None = None,
    overwrite: bool = False,
    wait: bool = False,
    wait_timeout_s: float | None = None,
    lease_ttl_s: float = JOB_LEASE_TTL_S,
    checkpoint_every_steps: int | None = None,
    checkpoint_every_epochs: int = 1,
    keep_checkpoints: bool = False,
    ranks: Ranks | None = None,
) -> JobOutcome:
    """Run ``job`` to completion (resuming, leased, recorded); see the module doc.

    ``records(job, metrics)`` turns the final metrics into the records to write (None:
    none, e.g. for the points of a sweep). ``keep_checkpoints`` keeps the last
    checkpoint of a finished run (by default only the final weights stay). Under
    torchrun (``ranks``), rank 0 does all of this and the other ranks train beside it
    (their trainer's ``state_dict`` and ``evaluate`` are called at the same points)."""
    ranks = ranks or Ranks()
    loop = {"every_steps": checkpoint_every_steps or 0, "every_epochs": checkpoint_every_epochs}
    if not ranks.main:
        return _follow(store, job, make_trainer, ranks, **loop)
    state = JobState(store, job.run_id)
    if not overwrite and (doc := state.done()) is not None:
        broadcast(("cached", doc), ranks)
        return _stored(store, job, doc)
    try:
        lease = acquire(
            store,
            lease_key("job", job.run_id),
            ttl_s=lease_ttl_s,
            wait=wait,
            timeout_s=wait_timeout_s,
            note=f"{job.kind} {job.backbone}/{job.dataset} {job.label}".strip(),
        )
    except LeaseHeldError as exc:
        broadcast(("held", str(exc)), ranks)
        raise
    with lease:
        if overwrite:
            state.clear()
        elif (doc := state.done()) is not None:  # finished while we waited for the lease
            broadcast(("cached", doc), ranks)
            return _stored(store, job, doc)
        state.write_job(job.describe())
        found = state.latest_checkpoint()
        broadcast(("run", None if found is None else int(found[0]["step"])), ranks)
        trainer = make_trainer(job)
        curve: list[dict[str, float]] = []
        resumed_from = None
        if found is not None:
            marker, saved = found
            trainer.load_state_dict(saved["trainer"])
            curve = [dict(r) for r in saved.get("curve", [])]
            resumed_from = int(marker["step"])
            log.info("%s: resuming from update %d", job.run_id, resumed_from)

        writer = _CheckpointWriter(state, lease)

        def epoch_done() -> None:
            lease.check()
            put_curve(store, job, curve)

        try:
            _train(
                trainer,
                curve,
                save=lambda step, epoch: writer.submit(
                    step, epoch, trainer.state_dict(), curve, job
                ),
                epoch_done=epoch_done,
                **loop,
            )
        finally:
            writer.flush()
        metrics = {k: float(v) for k, v in trainer.evaluate().items()}
        lease.check(refresh=True)
        weights = trainer.weights()
        if weights is not None:
            state.put_weights(weights, {"run_id": job.run_id, "kind": job.kind})
        recs = records(job, metrics) if records is not None else []
        doc, ours = state.mark_done(
            {
                "run_id": job.run_id,
                "kind": job.kind,
                "backbone": job.backbone,
                "dataset": job.dataset,
                "metrics": metrics,
                "curve": curve,
                "records": [r.to_dict() for r in recs],
                "resumed_from": resumed_from,
                "has_weights": weights is not None,
                "finished_at": provenance.now_iso(),
                "host": provenance.host(),
            }
        )
        broadcast((doc, ours), ranks)
        published = _records_of(doc)
        _publish(store, published)
        state.prune(keep=1 if keep_checkpoints else 0)
        return JobOutcome(
            job,
            "done" if ours else "cached",
            dict(doc["metrics"]),
            list(doc["curve"]),
            published,
            resumed_from,
        )


# --------------------------------------------------------------------------- a grid
def sweep_id(jobs: Sequence[JobSpec], select: str) -> str:
    if not jobs:
        raise BobxError("A sweep needs at least one grid point.")
    ident = {"runs": sorted(j.run_id for j in jobs), "select": select}
    return f"{jobs[0].kind}-sweep-{provenance.digest(ident)[:16]}"


def select_point(
    outcomes: Sequence[JobOutcome], select: str, *, higher_is_better: bool = True
) -> JobOutcome:
    """The outcome with the best ``select`` metric (the first in grid order on ties; a
    NaN never wins)."""
    best: JobOutcome | None = None
    for out in outcomes:
        value = out.metrics.get(select, math.nan)
        if math.isnan(value):
            continue
        if best is None:
            best = out
            continue
        incumbent = best.metrics[select]
        if (value > incumbent) if higher_is_better else (value < incumbent):
            best = out
    if best is None:
        raise BobxError(
            f"No grid point has a finite {select!r}; every run diverged or the validation "
            "split is empty. Check the recipe's learning rates."
        )
    return best


def run_sweep(
    store: Any,
    jobs: Sequence[JobSpec],
    make_trainer: Callable[[JobSpec], Trainer],
    *,
    select: str,
    records: Callable[[JobSpec, Mapping[str, float]], list[Record]],
    higher_is_better: bool = True,
    overwrite: bool = False,
    wait: bool = False,
    ranks: Ranks | None = None,
    **job_options: Any,
) -> SweepOutcome:
    """Run every grid point of ``jobs`` (one backbone and dataset), choose the point with
    the best ``select`` metric and write its records (see the module doc).

    Points another process is running are left to it; afterwards they are waited for
    with ``wait``, else the first one's :class:`LeaseHeldError` is raised (the points
    this process could run are done by then). ``job_options`` go to :func:`run_job`;
    under torchrun (``ranks``) rank 0 alone writes."""
    ranks = ranks or Ranks()
    sid = sweep_id(jobs, select)
    sweep = JobState(store, sid)
    if overwrite and ranks.main:
        sweep.clear()
    found = broadcast(None if overwrite else sweep.sweep(), ranks)
    if found is not None:
        records_ = _records_of(found)
        if ranks.main:
            _publish(store, records_)
        points = [
            JobOutcome(j, "cached", dict(d.get("metrics", {})), list(d.get("curve", [])), [])
            for j in jobs
            for d in [JobState(store, j.run_id).done() or {}]
        ]
        return SweepOutcome(sid, "cached", points, str(found["selected"]), records_)
    done: dict[str, JobOutcome] = {}
    held: list[tuple[JobSpec, LeaseHeldError]] = []
    options = {**job_options, "ranks": ranks, "overwrite": overwrite}
    for job in jobs:
        try:
            done[job.run_id] = run_job(store, job, make_trainer, wait=False, **options)
        except LeaseHeldError as exc:
            held.append((job, exc))
    for job, error in held:
        if not wait:
            raise error
        done[job.run_id] = run_job(store, job, make_trainer, wait=True, **options)
    outcomes = [done[j.run_id] for j in jobs]
    best = select_point(outcomes, select, higher_is_better=higher_is_better)
    doc = None
    if ranks.main:
        recs = records(best.job, best.metrics)
        doc, _ = sweep.mark_sweep(
            {
                "sweep_id": sid,
                "kind": jobs[0].kind,
                "backbone": jobs[0].backbone,
                "dataset": jobs[0].dataset,
                "params": thaw(jobs[0].params),
                "select": select,
                "selected": best.run_id,
                "points": [
                    {"run_id": o.run_id, "label": o.job.label, "metrics": o.metrics}
                    for o in outcomes
                ],
                "records": [r.to_dict() for r in recs],
                "finished_at": provenance.now_iso(),
            }
        )
        _publish(store, _records_of(doc))
        for out in outcomes:
            put_curve(store, out.job, out.curve, selected=out.run_id == doc["selected"])
    doc = broadcast(doc, ranks)
    status = "done" if any(o.status == "done" for o in outcomes) else "cached"
    return SweepOutcome(sid, status, outcomes, str(doc["selected"]), _records_of(doc))


def list_sweeps(store: Any, *, kind: str | None = None) -> list[dict[str, Any]]:
    """Finished sweeps in the store (their ``sweep.json`` docs), newest last."""
    found = []
    for name in store.objects.list_groups("jobs"):
        if "-sweep-" not in name or (kind is not None and not name.startswith(f"{kind}-")):
            continue
        doc = JobState(store, name).sweep()
        if doc is not None:
            found.append(doc)
    return sorted(found, key=lambda d: str(d.get("finished_at", "")))


__all__ = [
    "JOB_LEASE_TTL_S",
    "EpochEnd",
    "JobOutcome",
    "JobSpec",
    "Step",
    "SweepOutcome",
    "Trainer",
    "list_sweeps",
    "make_job",
    "put_curve",
    "run_job",
    "run_sweep",
    "select_point",
    "sweep_id",
]

"""The driver loop every executor shares: dependencies, retries, held leases, progress.

An executor is a *backend* that can start work items and report their outcomes
(:class:`Backend`); :func:`execute` decides what runs when:

* an item starts once every item it needs is done (or was already in the store);
* ``held`` (another process holds its lease): tried again after ``held_retry_s``, for
  as long as it takes; the holder finishes it, or its lease expires and this run resumes
  it from the store;
* ``failed``: the failure is kept in the store (``runs/failures/...``, see
  :mod:`featcache.executors.plan`) and the item is retried up to ``max_retries`` times when
  the error may be transient (a dead worker, a store hiccup); chunk markers and
  checkpoints make a retry a resume. Items that need a failed item are skipped;
* progress events go to ``on_event`` (the CLI draws them as a progress bar): item
  started / finished, and the chunk markers of running extractions, read from the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from featcache.errors import BobxError
from featcache.executors.items import Outcome
from featcache.executors.plan import Plan, record_failure
from featcache.store import Store
from featcache.suites import WorkItem

log = logging.getLogger(__name__)

Event = dict[str, Any]


class Backend(Protocol):
    """Where items run: local processes, Ray actors, Slurm array jobs."""

    name: str

    def free_slots(self) -> int:
        """How many more items could start now."""
        ...

    def submit(self, batch: list[WorkItem]) -> None:
        """Start these items (a batch: Slurm makes it one array)."""
        ...

    def poll(self, timeout: float) -> list[tuple[WorkItem, Outcome]]:
        """Outcomes of items that finished, waiting up to ``timeout`` seconds for one."""
        ...

    def close(self) -> None: ...


@dataclass
class RunReport:
    """What one ``bobx run`` did."""

    suite: str
    executor: str
    store: str
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # the final one per item
    attempts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # item -> the need that failed
    already_done: int = 0
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes.values():
            out[o.status] = out.get(o.status, 0) + 1
        if self.skipped:
            out["skipped"] = len(self.skipped)
        out["already_done"] = self.already_done
        return out

    @property
    def ok(self) -> bool:
        return not self.skipped and all(
            o.status in ("done", "cached", "unavailable") for o in self.outcomes.values()
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "executor": self.executor,
            "store": self.store,
            "counts": self.counts(),
            "seconds": round(self.seconds, 3),
            "outcomes": [o.to_dict() for o in self.outcomes.values()],
            "attempts": self.attempts,
            "skipped": self.skipped,
        }


def execute(
    plan: Plan,
    store: Store,
    backend: Backend,
    *,
    max_retries: int = 2,
    held_retry_s: float = 5.0,
    on_event: Callable[[Event], None] | None = None,
    progress_every_s: float = 2.0,
) -> RunReport:
    """Run ``plan``'s items that are not done on ``backend``; returns the report."""
    driver = _Driver(plan, store, backend, max_retries, held_retry_s, on_event or _log_event)
    try:
        return driver.run(progress_every_s)
    finally:
        backend.close()


class _Driver:
    """The state of one run: what is pending, running, satisfied or unusable."""

    def __init__(
        self,
        plan: Plan,
        store: Store,
        backend: Backend,
        max_retries: int,
        held_retry_s: float,
        emit: Callable[[Event], None],
    ) -> None:
        self.store, self.backend, self.emit = store, backend, emit
        self.max_retries, self.held_retry_s = max_retries, held_retry_s
        self.report = RunReport(plan.suite, backend.name, store.url)
        self.todo = {item.id: item for item in plan.todo()}
        self.pending = list(self.todo)  # plan order: needs first
        self.running: dict[str, WorkItem] = {}
        self.not_before: dict[str, float] = {}
        self.satisfied = {s.item.id for s in plan.states if s.state == "done"}
        self.report.already_done = len(self.satisfied)
        self.unusable: dict[str, str] = {}  # item -> why items that need it cannot run
        for s in plan.states:
            if s.state in ("unavailable", "blocked"):
                self.report.outcomes[s.item.id] = Outcome(s.item.id, "unavailable", s.detail)
                self.unusable[s.item.id] = s.state

    def run(self, progress_every_s: float) -> RunReport:
        t0 = time.perf_counter()
        self.emit({"event": "start", "total": len(self.todo), "already_done": len(self.satisfied)})
        last_progress = 0.0
        while self.pending or self.running:
            self._start_ready()
            if not self.running:
                self._wait_for_held()
                continue
            for item, outcome in self.backend.poll(timeout=0.5):
                self.running.pop(item.id, None)
                self._settle(item, outcome)
            if time.time() - last_progress >= progress_every_s:
                last_progress = time.time()
                _chunk_progress(self.store, list(self.running.values()), self.emit)
        self.report.seconds = time.perf_counter() - t0
        self.emit(
            {
                "event": "end",
                "counts": self.report.counts(),
                "seconds": round(self.report.seconds, 3),
            }
        )
        return self.report

    def _start_ready(self) -> None:
        """Start the items whose needs are met, up to the backend's free slots.

        A backbone's sets go one at a time while other backbones wait: the next one then
        finds a worker that has the model loaded (Ray routes it there), instead of
        several workers loading the same model at once."""
        now, free = time.time(), self.backend.free_slots()
        ready: list[WorkItem] = []
        for item_id in list(self.pending):
            item = self.todo[item_id]
            bad = next((n for n in item.needs if n in self.unusable), None)
            if bad is not None:
                self.pending.remove(item_id)
                self.report.skipped[item_id] = bad
                self.unusable[item_id] = "skipped"
                self.emit({"event": "skipped", "item": item_id, "need": bad})
            elif self.not_before.get(item_id, 0.0) <= now and all(
                n not in self.todo or n in self.satisfied for n in item.needs
            ):
                ready.append(item)
        loading = {i.backbone for i in self.running.values() if i.uses_accelerator}
        first: list[WorkItem] = []
        later: list[WorkItem] = []
        for item in ready:
            busy = item.uses_accelerator and item.backbone in loading
            (later if busy else first).append(item)
            if item.uses_accelerator:
                loading.add(item.backbone)
        batch = (first + later)[: max(0, free)]
        for item in batch:
            self.pending.remove(item.id)
            self.running[item.id] = item
            self.report.attempts[item.id] = self.report.attempts.get(item.id, 0) + 1
        if batch:
            self.backend.submit(batch)
            for item in batch:
                self.emit({"event": "started", "item": item.id})

    def _wait_for_held(self) -> None:
        """Nothing runs: sleep until the next held item may be tried again."""
        now = time.time()
        wake = [self.not_before[i] for i in self.pending if self.not_before.get(i, 0.0) > now]
        if self.pending and not wake:
            raise BobxError(
                f"No work item can start ({self.pending[0]} waits for nothing that runs); "
                f"the {self.backend.name} executor has no worker for it."
            )
        if wake:
            time.sleep(min(max(0.05, min(wake) - now), self.held_retry_s))

    def _settle(self, item: WorkItem, outcome: Outcome) -> None:
        """Book one outcome: done, a held lease to retry later, a failure to retry or keep."""
        report = self.report
        report.outcomes[item.id] = outcome
        self.emit({"event": "finished", **outcome.to_dict()})
        if outcome.status in ("done", "cached"):
            self.satisfied.add(item.id)
        elif outcome.status == "held":
            report.attempts[item.id] -= 1  # waiting for someone else is not an attempt
            self.not_before[item.id] = time.time() + self.held_retry_s
            self.pending.append(item.id)
        elif outcome.status == "unavailable":
            self.unusable[item.id] = "unavailable"
        else:
            attempt = report.attempts[item.id]
            record_failure(
                self.store,
                item,
                outcome.detail,
                attempt=attempt,
                executor=self.backend.name,
                worker=outcome.worker,
                trace=outcome.traceback,
            )
            if outcome.retry and attempt <= self.max_retries:
                self.emit({"event": "retry", "item": item.id, "attempt": attempt + 1})
                self.not_before[item.id] = time.time() + min(self.held_retry_s, 1.0)
                self.pending.append(item.id)
            else:
                self.unusable[item.id] = "failed"


def _chunk_progress(store: Store, running: Any, emit: Callable[[Event], None]) -> None:
    """Chunk markers of the extractions in flight: progress read from the store itself."""
    for item in running:
        if item.kind != "extract":
            continue
        progress = store.chunk_progress(item.backbone, item.dataset, item.options["split"])
        if progress is not None:
            done, total, _ = progress
            emit({"event": "chunks", "item": item.id, "done": len(done), "total": total})


def _log_event(event: Event) -> None:
    if event["event"] == "finished":
        log.info(
            "%s: %s %s (%.1f s on %s)",
            event["item"],
            event["status"],
            event["detail"],
            event["seconds"],
            event["worker"],
        )
    elif event["event"] in ("skipped", "retry"):
        log.info("%s", event)


__all__ = ["Backend", "Event", "RunReport", "execute"]

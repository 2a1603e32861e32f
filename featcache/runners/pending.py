"""A bare evaluator command: evaluate everything in the store that is not evaluated yet.

``bobx probe`` with no ``--dataset`` (likewise ``bobx knn`` and ``bobx calibrate``) is
:func:`run_pending`: every (backbone, dataset) pair with complete features is checked by
the runner's ``*_skip_reason`` twin (does it have the splits the evaluator needs, labels,
a stored probe for calibration; is there a record with the same knobs on the same
features already?) and run when nothing stands in the way. The result says what ran,
what was skipped and why, and what failed (a failure does not stop the other pairs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from featcache.errors import BobxError
from featcache.records import Record
from featcache.runners import classification as cls
from featcache.store import Store

#: command -> (task of its records, runner, skip-reason check)
COMMANDS: dict[str, tuple[str, Callable[..., list[Record]], Callable[..., str | None]]] = {
    "knn": ("classification", cls.run_knn, cls.knn_skip_reason),
    "probe": ("classification", cls.run_probe, cls.probe_skip_reason),
    "calibrate": ("calibration", cls.run_calibration, cls.calibration_skip_reason),
}


@dataclass(frozen=True)
class Outcome:
    """What a bare run did with one (backbone, dataset) pair."""

    backbone: str
    dataset: str
    status: str  # ran | skipped | failed
    reason: str = ""
    n_records: int = 0

    def line(self) -> str:
        what = f"{self.backbone}/{self.dataset}"
        if self.status == "ran":
            return f"ran {what} ({self.n_records} record(s))"
        return f"{self.status} {what}: {self.reason}"


@dataclass
class PendingRun:
    """The outcome of :func:`run_pending`: every pair considered, and the records written."""

    command: str
    outcomes: list[Outcome] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)

    def by_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def failed(self) -> list[Outcome]:
        return self.by_status("failed")

    def summary(self) -> str:
        ran, skipped = self.by_status("ran"), self.by_status("skipped")
        return (
            f"bobx {self.command}: ran {len(ran)}, skipped {len(skipped)}, failed "
            f"{len(self.failed)} of {len(self.outcomes)} (backbone, dataset) pair(s)"
        )


def store_pairs(store: Store) -> list[tuple[str, str]]:
    """(backbone, dataset) pairs with at least one complete feature set, by dataset."""
    pairs = [
        (backbone, dataset)
        for backbone in store.objects.list_groups("features")
        for dataset in store.objects.list_groups(f"features/{backbone}")
        if store.complete_splits(backbone, dataset)
    ]
    return sorted(pairs, key=lambda p: (p[1], p[0]))


def run_pending(store: Store, command: str, **knobs: Any) -> PendingRun:
    """Run ``command`` (``knn`` | ``probe`` | ``calibrate``) with ``knobs`` on every pair of
    the store that it has not evaluated with those knobs yet (see the module doc)."""
    if command not in COMMANDS:
        from featcache.errors import UnknownNameError

        raise UnknownNameError("evaluator command", command, COMMANDS)
    task, runner, skip_reason = COMMANDS[command]
    existing = cls.Existing(store, task)
    result = PendingRun(command)
    for backbone, dataset in store_pairs(store):
        try:
            reason = skip_reason(store, backbone, dataset, existing, **knobs)
        except BobxError as exc:
            reason = str(exc)
        if reason is not None:
            result.outcomes.append(Outcome(backbone, dataset, "skipped", reason))
            continue
        pair_knobs = dict(knobs)
        if pair_knobs.get("plot"):  # calibrate --plot: one diagram per pair
            pair_knobs["plot"] = cls.per_backbone_path(pair_knobs["plot"], f"{backbone}-{dataset}")
        try:
            records = runner(store, backbone, dataset, **pair_knobs)
        except BobxError as exc:
            result.outcomes.append(Outcome(backbone, dataset, "failed", str(exc)))
            continue
        result.records += records
        result.outcomes.append(Outcome(backbone, dataset, "ran", n_records=len(records)))
    return result

"""Plans and status: what a suite's work items are, and what the store already holds.

Everything here is read from the store alone (no scheduler, no worker to ask), so two
teams, two clusters and a plain ``bobx extract`` see the same picture:

* a feature set is **done** once ``complete.json`` exists; **partial** while some chunk
  markers exist (``done / total`` chunks);
* an evaluator run is **done** when the records it writes are in the store (the same
  knobs, read from ``params``), and for the probe its artifact too (calibration reads it);
* a unit of work is **leased** while its lease (:mod:`featcache.leases`) is live: by
  whom, on which host and pid, since when, the heartbeat's age;
* **failed** when an executor kept a failure for it under
  ``runs/failures/<item id>/<time-id>.json`` and it is not done since;
* **unavailable** when it cannot run here (a backbone without its library, a job kind
  whose command is not installed), **blocked** when it needs an unavailable item.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from featcache import provenance
from featcache.catalog import thaw
from featcache.errors import UnknownNameError
from featcache.executors.items import job_problem
from featcache.records import new_record_id
from featcache.store import Store
from featcache.suites import (
    EVALUATIONS,
    Catalogs,
    SuiteSpec,
    WorkItem,
    expand_suite,
    get_suite,
)

#: Where executors keep failures (one create-only object per failed attempt).
FAILURES = "runs/failures"
#: Item states, in the order ``bobx status`` counts them.
STATES = ("done", "partial", "leased", "failed", "todo", "blocked", "unavailable")
#: Tasks whose records mark evaluator runs and jobs done.
_EVAL_TASKS = (
    "classification",
    "ood_classification",
    "calibration",
    "retrieval",
    "robustness",
    "speed",
    "detection",
)


@dataclass(frozen=True)
class ItemState:
    """One work item and what the store says about it."""

    item: WorkItem
    state: str  # one of STATES
    detail: str = ""
    lease: dict[str, Any] | None = None  # LeaseInfo.to_dict() of a live lease
    failures: int = 0

    @property
    def runnable(self) -> bool:
        """Work an executor should (re)try: not done, not impossible."""
        return self.state not in ("done", "unavailable", "blocked")

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.item.to_dict(),
            "state": self.state,
            "detail": self.detail,
            "lease": self.lease,
            "failures": self.failures,
        }


@dataclass(frozen=True)
class Plan:
    """A suite's work items in dependency order, with their state in one store."""

    suite: str
    store: str
    states: tuple[ItemState, ...] = field(default_factory=tuple)

    @property
    def items(self) -> list[WorkItem]:
        return [s.item for s in self.states]

    def todo(self) -> list[WorkItem]:
        """Items an executor runs (everything not done and not unavailable)."""
        return [s.item for s in self.states if s.runnable]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for s in self.states:
            out[s.state] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "store": self.store,
            "counts": self.counts(),
            "items": [s.to_dict() for s in self.states],
        }


# --------------------------------------------------------------------------- records
class _RecordIndex:
    """The store's evaluator records by (task, backbone, dataset), params parsed once."""

    def __init__(self, store: Store) -> None:
        df = store.results(task=list(_EVAL_TASKS))
        self.rows: dict[tuple[str, str, str], list[tuple[str, str, dict[str, Any]]]] = defaultdict(
            list
        )
        for task, backbone, dataset, split, metric, params in zip(
            df["task"],
            df["backbone"],
            df["dataset"],
            df["split"],
            df["metric"],
            df["params"],
            strict=True,
        ):
            parsed = json.loads(params) if isinstance(params, str) else dict(params or {})
            self.rows[(task, backbone, dataset)].append((split, metric, parsed))

    def has(
        self,
        task: str,
        backbone: str,
        dataset: str,
        *,
        metric: str | Sequence[str],
        split: str | None = None,
        **params: Any,
    ) -> bool:
        """A record with this metric (or one of these), split and these params exists."""
        metrics = (metric,) if isinstance(metric, str) else tuple(metric)
        for r_split, r_metric, r_params in self.rows.get((task, backbone, dataset), ()):
            if r_metric not in metrics or (split is not None and r_split != split):
                continue
            if all(r_params.get(k) == v for k, v in params.items()):
                return True
        return False


def _evaluator_done(store: Store, item: WorkItem, index: _RecordIndex) -> bool:
    from featcache.runners.classification import CLIP_PROTOCOL, KNN_PROTOCOL, PROBE_PROTOCOL

    o, bb, ds = thaw(item.options), item.backbone, item.dataset
    if item.kind == "knn":
        return all(
            index.has(
                "classification",
                bb,
                ds,
                metric="top1",
                split=o["test_split"],
                protocol=KNN_PROTOCOL,
                k=k,
                temperature=o["temperature"],
                train_split=o["train_split"],
            )
            for k in o["ks"]
        )
    if item.kind == "probe":
        knobs = {
            "protocol": CLIP_PROTOCOL if o["protocol"] == "clip_benchmark" else PROBE_PROTOCOL,
            "fraction": o["fraction"],
            "shots": o["shots"],
            "seed": o["seed"],
            "train_split": o["train_split"],
        }
        metrics = ("top1", "macro_auc")
        return (
            index.has("classification", bb, ds, metric=metrics, split=o["test_split"], **knobs)
            and all(
                index.has("ood_classification", bb, other, metric="top1", trained_on=ds, **knobs)
                for other in o["eval_on"]
            )
            and item.variant in store.list_artifacts("probe", bb, ds)
        )
    if item.kind == "calibrate":
        return index.has(
            "calibration",
            bb,
            ds,
            metric="ece",
            probe_run=o["run"],
            n_bins=o["n_bins"],
            temperature_scaled=o["temperature_scale"],
        )
    if item.kind == "retrieve":
        if o["query_split"] is None:  # revisited: one record set per protocol setting
            return all(
                index.has(
                    "retrieval",
                    bb,
                    ds,
                    metric="map",
                    split=setting,
                    protocol="revisited",
                    query_crop=o["query_crop"],
                    top_k=o["top_k"],
                )
                for setting in o["protocols"]
            )
        gallery = "leave-one-out" if o["gallery_split"] is None else o["gallery_split"]
        metric = "map" if o["top_k"] is None else f"map@{o['top_k']}"
        return index.has(
            "retrieval",
            bb,
            ds,
            metric=metric,
            split=o["query_split"],
            protocol="label",
            gallery=gallery,
            top_k=o["top_k"],
        )
    raise UnknownNameError("work item kind", item.kind, ("extract", "job", *EVALUATIONS))


def _extract_state(store: Store, item: WorkItem) -> tuple[str, str]:
    from featcache.extract import shard_chunks

    o = item.options
    progress = store.chunk_progress(item.backbone, item.dataset, o["split"])
    if progress is None:
        return "todo", ""
    done, total, complete = progress
    if complete:
        return "done", f"{total}/{total} chunks"
    if o["num_shards"] > 1:
        mine = shard_chunks(total, o["shard_index"], o["num_shards"])
        have = len(done.intersection(mine))
        return ("partial" if done else "todo"), f"{have}/{len(mine)} chunks of this shard"
    return ("partial" if done else "todo"), f"{len(done)}/{total} chunks"


# --------------------------------------------------------------------------- failures
def _failure_prefix(item: WorkItem) -> str:
    return f"{FAILURES}/{item.id}"


def record_failure(
    store: Store,
    item: WorkItem,
    error: str,
    *,
    attempt: int,
    executor: str,
    worker: str = "",
    trace: str = "",
) -> None:
    """Keep one failed attempt of ``item`` (a create-only object, never overwritten)."""
    doc = {
        "item": item.id,
        "work_item": item.to_dict(),
        "error": " ".join(error.split())[:2000],
        "traceback": trace[-4000:],
        "attempt": attempt,
        "executor": executor,
        "worker": worker,
        "host": provenance.host(),
        "user": provenance.user(),
        "at": provenance.now_iso(),
    }
    store.objects.put_new_json(f"{_failure_prefix(item)}/{new_record_id()}.json", doc)


def read_failures(store: Store, item_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Failure documents by item id (of one item, or of every item in the store), oldest
    first."""
    root = f"{FAILURES}/{item_id}/" if item_id else f"{FAILURES}/"
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key in store.objects.list_prefix(root):
        if not key.endswith(".json") or "/." in key:
            continue
        doc = store.objects.get_json(key)
        if isinstance(doc, dict) and "item" in doc:
            out[str(doc["item"])].append(doc)
    for docs in out.values():
        docs.sort(key=lambda d: str(d.get("at", "")))
    return dict(out)


# --------------------------------------------------------------------------- states
#: The records that show a job kind's run in the store: task and fixed params.
_JOB_RECORDS: dict[str, tuple[str, dict[str, Any]]] = {
    "finetune": ("classification", {"protocol": "finetune"}),
    "detect": ("detection", {}),
    "robustness": ("robustness", {}),
    "speed": ("speed", {}),
}
#: Knobs compared with their default when the suite does not set them.
_JOB_DEFAULT_KNOBS = {"fraction": None, "shots": None, "seed": 0}


def _job_done(item: WorkItem, index: _RecordIndex) -> bool:
    """A record of the job's task whose params agree with the suite's knobs (those the
    record carries; fraction / shots / seed of a fine-tuning run at their defaults when
    the suite sets none). The job layer itself also skips a run whose id is done, so a
    run this misses costs no training."""
    options = thaw(item.options)
    kind = options.pop("job")
    task, fixed = _JOB_RECORDS[kind]
    knobs = {k: v for k, v in options.items() if k not in ("backbone", "weights")}
    knobs = {**(_JOB_DEFAULT_KNOBS if kind == "finetune" else {}), **knobs}
    plain = {k: v for k, v in knobs.items() if v is None or isinstance(v, str | int | float)}
    for _, _, params in index.rows.get((task, item.backbone, item.dataset), ()):
        if all(params.get(k) == v for k, v in fixed.items()) and all(
            params[k] == v for k, v in plain.items() if k in params
        ):
            return True
    return False


def is_done(store: Store, item: WorkItem) -> bool:
    """Whether the store already holds what ``item`` produces (one item's check)."""
    if item.kind == "extract":
        return _extract_state(store, item)[0] == "done"
    if item.kind == "job":
        return _job_done(item, _RecordIndex(store))
    return _evaluator_done(store, item, _RecordIndex(store))


def _backbone_problem(
    item: WorkItem, catalogs: Catalogs, cache: dict[str, str | None]
) -> str | None:
    name = str(item.options.get("backbone", item.backbone))
    if name not in cache:
        spec = catalogs.backbone(name)
        cache[name] = None if spec.available else f"{spec.name}: {spec.unavailable_reason}"
    return cache[name]


def item_states(
    store: Store, items: Sequence[WorkItem], catalogs: Catalogs | None = None
) -> list[ItemState]:
    """The state of each item in ``store`` (see the module doc), in the items' order."""
    from featcache.leases import list_leases

    catalogs = catalogs or Catalogs()
    index = _RecordIndex(store)
    leases = {info.key: info for info in list_leases(store) if info.active()}
    failures = read_failures(store)
    backbones: dict[str, str | None] = {}
    out: dict[str, ItemState] = {}
    for item in items:
        lease = leases.get("/".join(item.parts))
        failed = failures.get(item.id, [])
        problem = None
        if item.kind in ("extract", "job"):
            problem = _backbone_problem(item, catalogs, backbones)
        if item.kind == "job" and problem is None:
            problem = job_problem(str(item.options["job"]), item.dataset)
        blocked = [n for n in item.needs if n in out and out[n].state in ("unavailable", "blocked")]
        if problem:
            state, detail = "unavailable", problem
        elif blocked:
            state, detail = "blocked", f"needs {blocked[0]} ({out[blocked[0]].state})"
        elif item.kind == "extract":
            state, detail = _extract_state(store, item)
        elif item.kind == "job":
            state, detail = ("done", "") if _job_done(item, index) else ("todo", "")
        else:
            state, detail = ("done", "") if _evaluator_done(store, item, index) else ("todo", "")
        if state in ("todo", "partial") and lease is not None:
            detail = (detail + "; " if detail else "") + _lease_text(lease.to_dict())
            state = "leased"
        elif state in ("todo", "partial") and failed:
            last = failed[-1]
            state, detail = "failed", f"{len(failed)} failed attempt(s); last: {last['error']}"
        out[item.id] = ItemState(
            item,
            state,
            detail,
            lease.to_dict() if lease is not None and state == "leased" else None,
            len(failed),
        )
    return [out[i.id] for i in items]


def _lease_text(info: Mapping[str, Any]) -> str:
    return (
        f"leased by {info['holder']}@{info['host']} pid {info['pid']} since "
        f"{str(info['started_at'])[:19]}, heartbeat {info['heartbeat_age_s']:.0f} s ago"
    )


def plan_suite(store: Store, suite: SuiteSpec | str) -> Plan:
    """The work items of ``suite`` with their state in ``store`` (``bobx plan``)."""
    catalogs = Catalogs()
    spec = get_suite(suite, catalogs)
    items = expand_suite(spec, catalogs)
    return Plan(spec.name, store.url, tuple(item_states(store, items, catalogs)))


# --------------------------------------------------------------------------- status
def store_status(store: Store, suite: SuiteSpec | str | None = None) -> dict[str, Any]:
    """``bobx status``: a suite's items by state, or the whole store (every feature set,
    live lease and unresolved failure). Reads the store alone."""
    from featcache.leases import list_leases

    if suite is not None:
        plan = plan_suite(store, suite)
        return {"scope": f"suite {plan.suite}", **plan.to_dict()}
    sets = []
    for info in store.list_features():
        progress = store.chunk_progress(info.backbone, info.dataset, info.split)
        done, total, complete = progress if progress is not None else (set(), 0, False)
        sets.append(
            {
                "id": f"extract/{info.backbone}/{info.dataset}/{info.split}",
                "state": "done" if complete else "partial",
                "chunks_done": len(done),
                "chunks_total": total,
                "n": info.n,
            }
        )
    complete_sets = {s["id"] for s in sets if s["state"] == "done"}
    leases = [i.to_dict() for i in list_leases(store) if i.active()]
    failed_items = [
        WorkItem.from_dict(docs[-1]["work_item"])
        for docs in read_failures(store).values()
        if "work_item" in docs[-1]
    ]
    failures = [
        {"id": s.item.id, "attempts": s.failures, "last_error": s.detail}
        for s in item_states(store, failed_items)
        if s.state == "failed"
    ]
    counts = {
        "done": len(complete_sets),  # feature sets
        "partial": len(sets) - len(complete_sets),
        "leased": len(leases),
        "failed": len(failures),
    }
    return {
        "scope": "store",
        "store": store.url,
        "counts": counts,
        "feature_sets": sets,
        "leases": leases,
        "failures": failures,
        "records": int(len(store.results())),
    }


__all__ = [
    "FAILURES",
    "is_done",
    "STATES",
    "ItemState",
    "Plan",
    "item_states",
    "plan_suite",
    "read_failures",
    "record_failure",
    "store_status",
]

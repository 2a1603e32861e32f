"""``bobx verify [--repair]``: find damaged feature sets and records; repair what can be.

:func:`verify_store` is the library twin. For each feature set it runs
:meth:`featcache.store.Store.check_features` (every chunk object present with its size,
array metadata that agrees with ``spec.json``, markers for every chunk of a published
set, orphan generations; with ``deep`` also every chunk's bytes against the CRC-32 its
marker recorded), and for the result records it checks that every loose record and
pack can be read and that no live record holds a non-finite value.

``repair`` then fixes what it can without guessing:

* lost or corrupt chunks of an *extracted* set are recomputed: only when the recipe
  (backbone, weights, dataset, library versions, ...) still gives the set's cache key,
  the set is withdrawn, those chunks' markers dropped, and :func:`featcache.extract.extract`
  resumes them (same key, so the same bytes as the chunks that were lost);
* orphan generations and the leftovers of an interrupted removal are deleted;
* damaged record objects are moved to ``records/quarantine/``, records holding a
  non-finite value are retracted (a tombstone; the object stays).

Imported sets cannot be recomputed: the finding says to re-import them. A damaged
``spec.json`` or array metadata needs ``bobx rm`` and a new extraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featcache.errors import BobxError, IntegrityError, StoreError
from featcache.store import SetCheck, Store


@dataclass
class Finding:
    """What verify found in one feature set (or in the records), and what it repaired."""

    kind: str  # features | records
    name: str
    status: str
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    hint: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


@dataclass
class VerifyReport:
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "findings": [f.to_dict() for f in self.findings]}


def verify_store(
    store: Store,
    *,
    backbone: str | None = None,
    dataset: str | None = None,
    split: str | None = None,
    deep: bool = True,
    repair: bool = False,
    data_root: str | Path | None = None,
    device: str = "auto",
) -> VerifyReport:
    """Check (and with ``repair`` fix) the feature sets matching the filters, and the
    result records when no filter is given. Problems left are in the report."""
    findings = []
    for b, d, s in store.feature_keys():
        if (backbone, dataset, split) != (None, None, None) and (
            (backbone is not None and b != backbone)
            or (dataset is not None and d != dataset)
            or (split is not None and s != split)
        ):
            continue
        check = store.check_features(b, d, s, deep=deep)
        if check.status == "missing":
            continue  # an empty folder left behind: nothing to report
        finding = Finding("features", check.name, check.status, list(check.problems))
        if repair and not check.ok:
            _repair_set(store, check, finding, data_root=data_root, device=device, deep=deep)
        elif not check.ok:
            finding.hint = _hint(check)
        findings.append(finding)
    if backbone is None and dataset is None and split is None:
        findings.append(_check_records(store, repair=repair))
    return VerifyReport(findings)


def _hint(check: SetCheck) -> str:
    if check.status in ("damaged spec",) or check.fatal:
        return f"remove it ({_rm(check)}) and extract it again"
    if check.status == "leftover" or (check.orphans and not check.bad_chunks):
        return "run `bobx verify --repair` to delete what is left over"
    if check.source == "import":
        return f"import it again with `bobx import-features ... --overwrite`, or {_rm(check)}"
    return "run `bobx verify --repair` to recompute the damaged chunks"


def _rm(check: SetCheck) -> str:
    return f"`bobx rm --backbone {check.backbone} --dataset {check.dataset} --split {check.split}`"


def _repair_set(
    store: Store,
    check: SetCheck,
    finding: Finding,
    *,
    data_root: str | Path | None,
    device: str,
    deep: bool,
) -> None:
    if check.status == "leftover":
        store.delete_features(check.backbone, check.dataset, check.split)
        finding.repaired.append("removed the leftovers of an interrupted removal")
        finding.problems = []
        return
    if check.orphans:
        gone = store.remove_orphans(check.backbone, check.dataset, check.split)
        finding.repaired.append(f"removed orphan generation(s) {', '.join(gone)}")
    if check.status == "damaged spec" or check.fatal:
        finding.hint = f"cannot be recomputed: remove it ({_rm(check)}) and extract it again"
    elif check.bad_chunks and check.status.startswith("partial"):
        store.forget_lost_chunks(check.backbone, check.dataset, check.split)
        finding.repaired.append(
            f"dropped the markers of lost chunk(s) {', '.join(map(str, check.bad_chunks))}: "
            "the extraction that finishes this set recomputes them"
        )
    elif check.bad_chunks and check.source != "extract":
        finding.hint = _hint(check)
    elif check.bad_chunks:
        try:
            _recompute(store, check, data_root=data_root, device=device)
        except BobxError as exc:
            finding.hint = f"cannot recompute it here: {exc}"
        else:
            chunks = ", ".join(map(str, check.bad_chunks))
            finding.repaired.append(f"recomputed chunk(s) {chunks}")
    after = store.check_features(check.backbone, check.dataset, check.split, deep=deep)
    finding.status, finding.problems = after.status, list(after.problems)


def _recompute(store: Store, check: SetCheck, *, data_root: str | Path | None, device: str) -> None:
    """Recompute the bad chunks of an extracted set with the recipe in its spec."""
    from featcache.extract import extract, planned_cache_key

    spec = store._spec(f"features/{check.backbone}/{check.dataset}/{check.split}") or {}
    attrs = spec.get("attrs", {})
    weights = attrs.get("weights", {})
    kind = weights.get("kind")
    recipe: dict[str, Any] = {
        "precision": attrs.get("precision", "fp32"),
        "dtype": spec.get("dtype", "float16"),
        "limit": attrs.get("limit"),
        "query_crop": attrs.get("query_crop", "bbx"),
        "weights": weights.get("path") if kind == "file" else kind or "pretrained",
        "seed": weights.get("seed") if kind == "random" else None,
        "data_root": data_root,
    }
    source = str(attrs.get("backbone", {}).get("name", check.backbone))
    dataset = str(attrs.get("dataset", {}).get("name", check.dataset))
    key = planned_cache_key(source, dataset, check.split, **recipe)
    if key != spec.get("cache_key"):
        raise StoreError(
            "its recipe no longer gives its cache key (library versions, weights or data "
            f"changed since it was extracted); extract it again with --overwrite, or {_rm(check)}"
        )
    store.unpublish(check.backbone, check.dataset, check.split, check.bad_chunks)
    extract(
        store,
        source,
        dataset,
        splits=[check.split],
        name=check.backbone,
        device=device,
        progress=False,
        record_speed=False,
        **recipe,
    )


def _check_records(store: Store, *, repair: bool) -> Finding:
    finding = Finding("records", "records", "ok")
    damaged: list[str] = []
    for key in store._loose_record_keys():
        try:
            store._record_doc(key)
        except IntegrityError:
            damaged.append(key)
    for name in store.objects.list_dir("records/packs"):
        key = f"records/packs/{name}"
        raw = store.objects.get(key)
        if raw is not None and not _readable_pack(raw):
            damaged.append(key)
    for key in damaged:
        if repair:
            store.quarantine(key)
            finding.repaired.append(f"moved {key} to records/quarantine/")
        else:
            finding.problems.append(f"{key} is damaged")
    if damaged and not repair:
        finding.status = f"{len(damaged)} damaged object(s)"
        finding.hint = "run `bobx verify --repair` to set them aside"
        return finding  # the frame below would fail on them
    frame = store.results()
    infinite = [
        str(rid)
        for rid, value in zip(frame["id"], frame["value"], strict=True)
        if not math.isfinite(float(value))
    ]
    for rid in infinite:
        if repair:
            store.retract(rid, reason="non-finite value (bobx verify --repair)")
            finding.repaired.append(f"retracted record {rid} (non-finite value)")
        else:
            finding.problems.append(f"record {rid} holds a non-finite value")
    if finding.problems:
        finding.status = f"{len(finding.problems)} problem(s)"
        finding.hint = "run `bobx verify --repair` (retracts them) or `bobx retract ID`"
    else:
        finding.status = f"ok ({len(frame)} records)"
    return finding


def _readable_pack(raw: bytes) -> bool:
    import io

    import pandas as pd

    try:
        pd.read_parquet(io.BytesIO(raw))
    except Exception:  # pyarrow raises several types for damaged files
        return False
    return True


__all__ = ["Finding", "VerifyReport", "verify_store"]

"""Result records: one immutable object per metric value, append-only.

A record says which backbone scored what on which setting, with every protocol
knob in ``params`` and the cache key of the features it was computed from.
``bobx results --format json`` and every evaluator's ``--json`` print lists of
:meth:`Record.to_dict`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featcache import provenance
from featcache.errors import DataError
from featcache.names import validate_name

#: Columns of ``Store.results()`` / ``bobx results``, in order.
COLUMNS = (
    "id",
    "backbone",
    "task",
    "dataset",
    "split",
    "metric",
    "value",
    "higher_is_better",
    "params",
    "cache_key",
    "bobx_version",
    "git_hash",
    "host",
    "user",
    "created_at",
)

_ParamValue = str | int | float | bool | None


def _clean_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (params or {}).items():
        if not isinstance(key, str) or not key:
            raise DataError(f"Record params need non-empty string keys, got {key!r}.")
        if isinstance(value, tuple):
            value = list(value)
        try:
            json.dumps(value)
        except TypeError as exc:
            raise DataError(f"Record param {key}={value!r} is not JSON-serialisable.") from exc
        out[key] = value
    return out


@dataclass(frozen=True)
class Record:
    """One metric value with its full provenance. Immutable; create with :func:`make_record`."""

    backbone: str
    task: str
    dataset: str
    metric: str
    value: float
    split: str = "test"
    higher_is_better: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    cache_key: str | None = None
    id: str = ""
    bobx_version: str = ""
    git_hash: str | None = None
    host: str = ""
    user: str = ""
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in COLUMNS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if isinstance(kwargs.get("params"), str):
            kwargs["params"] = json.loads(kwargs["params"] or "{}")
        return cls(**kwargs)

    @property
    def params_json(self) -> str:
        return provenance.canonical_json(self.params)


def new_record_id() -> str:
    """Sortable by time (microsecond timestamp prefix), unique by a random suffix."""
    from datetime import UTC, datetime

    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:16]}"


def make_record(
    *,
    backbone: str,
    task: str,
    dataset: str,
    metric: str,
    value: float,
    split: str = "test",
    higher_is_better: bool = True,
    params: Mapping[str, Any] | None = None,
    cache_key: str | None = None,
) -> Record:
    """Validate names and value, stamp provenance, return a new :class:`Record`."""
    for kind, name in (
        ("backbone", backbone),
        ("task", task),
        ("dataset", dataset),
        ("split", split),
        ("metric", metric),
    ):
        validate_name(name, kind)
    try:
        fvalue = float(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"Metric value {value!r} for {metric!r} is not a number.") from exc
    if math.isnan(fvalue):
        raise DataError(f"Metric {metric!r} of {backbone!r} is NaN; refusing to record it.")
    if math.isinf(fvalue):
        raise DataError(
            f"Metric {metric!r} of {backbone!r} is {fvalue}; bobx records finite values only "
            "(a diverged or failed run is not a result)."
        )
    return Record(
        backbone=backbone,
        task=task,
        dataset=dataset,
        metric=metric,
        value=fvalue,
        split=split,
        higher_is_better=bool(higher_is_better),
        params=_clean_params(params),
        cache_key=cache_key,
        id=new_record_id(),
        bobx_version=provenance.bobx_version(),
        git_hash=provenance.git_hash(),
        host=provenance.host(),
        user=provenance.user(),
        created_at=provenance.now_iso(),
    )


def _parse_bool(value: Any, *, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "t"):
        return True
    if text in ("0", "false", "no", "n", "f"):
        return False
    raise DataError(f"{where}: higher_is_better must be true/false, got {value!r}.")


def read_result_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a long-format CSV or JSONL results file (for ``bobx import-results``)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"Results file {path} not found; pass an existing .csv or .jsonl file.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype={"params": str}, keep_default_na=False)
        elif suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype=False)
        elif suffix == ".json":
            frame = pd.read_json(path, dtype=False)
        else:
            raise DataError(f"{path}: unknown results format {suffix!r}; use .csv or .jsonl.")
    except ValueError as exc:
        raise DataError(f"{path}: cannot parse results file: {exc}") from exc
    missing = {"backbone", "task", "dataset", "metric", "value"} - set(frame.columns)
    if missing:
        raise DataError(
            f"{path}: missing column(s) {sorted(missing)}; long format needs "
            "backbone, task, dataset, metric, value."
        )
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict(orient="records")]


def records_from_rows(rows: Iterable[Mapping[str, Any]], *, source: str) -> list[Record]:
    """Validate imported rows into new records (fresh ids and provenance, knobs kept)."""
    out = []
    for i, row in enumerate(rows, start=1):
        where = f"{source} row {i}"
        params = row.get("params") or {}
        if isinstance(params, str):
            try:
                params = json.loads(params) if params.strip() else {}
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: params is not JSON: {params!r}") from exc
        hib = row.get("higher_is_better", True)
        if hib in ("", None) or (isinstance(hib, float) and math.isnan(hib)):
            hib = True
        try:
            rec = make_record(
                backbone=str(row["backbone"]),
                task=str(row["task"]),
                dataset=str(row["dataset"]),
                metric=str(row["metric"]),
                value=row["value"],
                split=str(row.get("split") or "test"),
                higher_is_better=_parse_bool(hib, where=where),
                params=params,
                cache_key=(str(row["cache_key"]) if row.get("cache_key") else None),
            )
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from exc
        except ValueError as exc:  # InvalidNameError
            raise type(exc)(f"{where}: {exc}") from exc
        out.append(rec)
    return out

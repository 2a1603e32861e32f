"""Table cells for the report: values formatted here, laid out by the template.

A table is ``{"name", "caption", "columns", "rows"}``; a column ``{"label", "sub",
"title", "numeric"}``; a row ``{"cells", "attrs"}`` (``attrs``: HTML attributes of the
``<tr>``); a cell ``{"text", "sort", "title", "href", "data"}``. ``sort`` is the exact value
the page's script sorts by (``repr`` of the float), ``data`` extra ``data-*`` attributes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

Cell = dict[str, Any]


def missing(value: Any) -> bool:
    """None or NaN (a value the store does not have)."""
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def exact(value: Any) -> str:
    """A float as its shortest exact text (``repr``); empty when missing."""
    return "" if missing(value) else repr(float(value))


def fmt(value: Any) -> str:
    """A metric value: 4 significant digits, thousands grouped from 1,000 up."""
    if missing(value):
        return ""
    v = float(value)
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def signed(value: Any, digits: int = 3) -> str:
    return "" if missing(value) else f"{float(value):+.{digits}f}"


def cell(
    text: Any,
    *,
    sort: Any = None,
    title: str | None = None,
    href: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> Cell:
    """A text cell; ``sort`` (a number or NaN) makes it sort numerically."""
    return {
        "text": "" if text is None else str(text),
        "sort": None if sort is None else exact(sort),
        "title": title,
        "href": href,
        "data": {k: ("" if missing(v) else v) for k, v in (data or {}).items()},
    }


def num(value: Any, text: str | None = None, **kw: Any) -> Cell:
    """A number cell: ``text`` shown (default :func:`fmt`), the exact value sorted."""
    return cell(
        fmt(value) if text is None else text, sort=math.nan if value is None else value, **kw
    )


def count(value: Any) -> Cell:
    return num(value, "" if missing(value) else str(value))


def column(label: str, *, numeric: bool = False, sub: str = "", title: str = "") -> dict[str, Any]:
    """A header; numeric columns are right-aligned and sort descending on first click."""
    return {"label": label, "numeric": numeric, "sub": sub, "title": title}


def table(
    columns: Sequence[dict[str, Any]],
    rows: Sequence[Sequence[Cell]],
    *,
    name: str,
    caption: str = "",
    row_attrs: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    attrs = row_attrs if row_attrs is not None else [{} for _ in rows]
    return {
        "name": name,
        "caption": caption,
        "columns": list(columns),
        "rows": [{"cells": list(r), "attrs": dict(a)} for r, a in zip(rows, attrs, strict=True)],
    }


def params_of(text: Any) -> dict[str, Any]:
    """A record's ``params`` (canonical JSON text) as a dict."""
    value = json.loads(text) if isinstance(text, str) and text else {}
    return value if isinstance(value, dict) else {}


def short(value: Any, width: int = 24) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def knobs(params: Mapping[str, Any], keys: Iterable[str]) -> str:
    """``k=v, ...`` for the given keys of ``params``."""
    return ", ".join(f"{k}={short(params.get(k))}" for k in keys)


def varying_keys(dicts: Sequence[Mapping[str, Any]], skip: Iterable[str] = ()) -> list[str]:
    """Keys whose values differ between ``dicts`` (a missing key counts as a value)."""
    skipped = set(skip)
    keys = sorted({k for d in dicts for k in d} - skipped)
    return [k for k in keys if len({json.dumps(d.get(k), sort_keys=True) for d in dicts}) > 1]

"""Small, safe file I/O shared by the CLI and the library (no pickles, ever)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from featcache.errors import DataError, ShapeError

#: Labels are class indices below this (far above any benchmark's class count; a
#: larger label would make a probe allocate a weight row per class up to it).
MAX_CLASSES = 1_000_000


def check_labels(labels: Any, n: int, *, where: str) -> np.ndarray:
    """``labels`` as stored: (N,) int64 class indices in -1..MAX_CLASSES-1 (-1 =
    unlabelled), or (N, C) int8 multi-hot 0/1. DataError naming the first bad row."""
    y = np.asarray(labels)
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise ShapeError(f"{where}: labels of shape {y.shape} do not match {n} rows.")
    if y.dtype.kind not in "biuf":
        raise DataError(f"{where}: labels must be numbers, got dtype {y.dtype}.")
    if y.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            row = np.argwhere(bad)[0]
            raise DataError(
                f"{where}: labels must be integers (class indices); row {int(row[0])} holds "
                f"{y[tuple(row)]!r}."
            )
    if y.size == 0:
        return y.astype(np.int8 if y.ndim == 2 else np.int64)
    if y.ndim == 2:
        bad = (y != 0) & (y != 1)
        if bad.any():
            row = np.argwhere(bad)[0]
            raise DataError(
                f"{where}: multi-label rows must be 0/1, row {int(row[0])} holds "
                f"{_number(y[tuple(row)])}."
            )
        if y.shape[1] > MAX_CLASSES:
            raise DataError(f"{where}: {y.shape[1]} label columns exceed {MAX_CLASSES}.")
        return y.astype(np.int8)
    low, high = int(np.argmin(y)), int(np.argmax(y))
    if y[low] < -1:
        raise DataError(
            f"{where}: label {_number(y[low])} at row {low} is not a class index; use "
            f"0..{MAX_CLASSES - 1}, or -1 for unlabelled."
        )
    if y[high] >= MAX_CLASSES:
        raise DataError(
            f"{where}: label {_number(y[high])} at row {high} is beyond the largest class "
            f"index bobx accepts ({MAX_CLASSES - 1}); use class indices 0..C-1."
        )
    return y.astype(np.int64)


def _number(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def load_npy(path: str | Path) -> np.ndarray:
    """Load a ``.npy`` array without allowing pickled objects."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found; pass an existing .npy file.")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: not a plain .npy array ({exc}); save with np.save.") from exc


def read_lines(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found; pass a text file with one id per line.")
    return [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]


def write_results(df: Any, fmt: str, output: str | Path | None) -> str | None:
    """Render a results DataFrame as table/csv/json/parquet/markdown.

    Writes to ``output`` when given (returns ``None``), else returns the text.
    JSON is a list of record objects with ``params`` as an object: the same schema
    every evaluator's ``--json`` prints."""
    if fmt == "parquet":
        if output is None:
            raise DataError("--format parquet needs --output FILE.")
        df.to_parquet(output, index=False)
        return None
    if fmt == "json":
        rows = df.to_dict(orient="records")
        for row in rows:
            row["params"] = json.loads(row["params"]) if isinstance(row["params"], str) else {}
        text = json.dumps(rows, indent=2, default=str)
    elif fmt == "csv":
        text = df.to_csv(index=False)
    elif fmt == "markdown":
        text = (
            df.drop(columns=["id", "bobx_version", "git_hash", "host", "user"]).to_markdown(
                index=False
            )
            if len(df)
            else "(no results)"
        )
    elif fmt == "table":
        cols = ["backbone", "task", "dataset", "split", "metric", "value", "params"]
        text = df[cols].to_string(index=False) if len(df) else "(no results)"
    else:
        raise DataError(f"Unknown format {fmt!r}; use table, csv, json, parquet or markdown.")
    if output is not None:
        Path(output).write_text(text)
        return None
    return text

"""Small, safe file I/O shared by the CLI and the library (no pickles, ever)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from featcache.errors import DataError


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

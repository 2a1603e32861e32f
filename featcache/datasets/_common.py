"""Helpers shared by the readers: the read context, locating a layout under a root."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featcache.datasets.spec import DatasetSpec
from featcache.datasets.split import safe_relpath
from featcache.errors import DataError


class MissingSplitError(DataError):
    """The data of one split is not there (e.g. an image folder without ``val/``)."""


@dataclass(frozen=True)
class ReadContext:
    """What a reader gets: the spec, the split asked for, the data root and the query crop."""

    spec: DatasetSpec
    split: str
    root: Path | None
    query_crop: str = "bbx"

    @property
    def where(self) -> str:
        return f"dataset {self.spec.name!r}, split {self.split!r}"

    def option(self, key: str, default: Any = None) -> Any:
        return self.spec.options.get(key, default)

    def data_root(self) -> Path:
        if self.root is None:  # open_split always resolves one for file-based formats
            raise DataError(f"{self.where}: no data root.")
        return self.root


def find_base(ctx: ReadContext, candidates: Sequence[str], markers: Iterable[str] = ()) -> Path:
    """The dataset directory: ``root/<subdir>`` for the first candidate that exists, else root.

    ``options.subdir`` (a string or list) replaces ``candidates``. With ``markers``
    (files or directories the layout must hold), a candidate counts only if it has
    one of them, and a DataError lists what was looked for when none has.
    """
    root = ctx.data_root()
    sub = ctx.option("subdir")
    if sub is not None:
        where = f"{ctx.spec.source} options.subdir"
        candidates = [
            safe_relpath(c, where=where) for c in ([sub] if isinstance(sub, str) else sub)
        ]
    markers = list(markers)
    for candidate in [*candidates, "."]:
        base = (root / candidate) if candidate != "." else root
        if base.is_dir() and (not markers or any((base / m).exists() for m in markers)):
            return base
    if markers:
        looked = ", ".join(str(root / c / markers[0]) for c in [*candidates, "."])
        raise DataError(
            f"{ctx.where}: the data root {root} does not hold the expected layout "
            f"(looked for {looked}); point --data-root at the dataset directory."
        )
    return root


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"Missing {what} {path}; check the data root.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read {what} {path}: {exc}.") from exc


def fraction_split(
    labels: np.ndarray, fractions: Mapping[str, float], split: str, seed: int
) -> np.ndarray:
    """Rows of ``split`` in a deterministic stratified split (sorted row indices).

    Within each class, rows are shuffled with ``numpy.random.default_rng(seed)``
    (seeded per class from ``seed`` and the class value) and cut in the order the
    splits are listed, by cumulative rounded fractions; every row lands in exactly
    one split and the result does not depend on the other classes.
    """
    names = list(fractions)
    chosen: list[np.ndarray] = []
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        rng = np.random.default_rng([seed, int(value) + 1])
        rows = rows[rng.permutation(len(rows))]
        bounds = np.round(np.cumsum([fractions[n] for n in names]) * len(rows)).astype(int)
        bounds[-1] = len(rows)
        start = 0
        for name, stop in zip(names, bounds, strict=True):
            if name == split:
                chosen.append(rows[start:stop])
            start = stop
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)

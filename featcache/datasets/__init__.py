"""Datasets: the catalog of dataset specs and the readers that turn a split into images.

>>> from featcache.datasets import get_dataset_spec, open_split
>>> split = open_split(get_dataset_spec("digits"), "test")   # built in, needs no data
>>> len(split), split.load(0).size
(450, (32, 32))

Each spec names a reader (``format``) for a published on-disk layout; ``open_split``
finds the data (``data_root`` argument, else ``$<root_env>``, else ``options.root``),
indexes the split once and returns an :class:`ImageSplit` whose ``load(i)`` opens
files lazily, so it can be handed to DataLoader worker processes.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from featcache.catalog import FrozenMap
from featcache.datasets._common import MissingSplitError, ReadContext
from featcache.datasets.spec import (
    BUILTIN_FORMATS,
    FORMATS,
    DatasetSpec,
    get_dataset_spec,
    list_dataset_specs,
    spec_root_default,
    validate_dataset_manifests,
)
from featcache.datasets.split import ImageSplit
from featcache.errors import DataError, UnknownNameError

QUERY_CROPS = ("bbx", "none")

__all__ = [
    "QUERY_CROPS",
    "DatasetSpec",
    "FrozenMap",
    "ImageSplit",
    "MissingSplitError",
    "get_dataset_spec",
    "list_dataset_specs",
    "open_split",
    "resolve_data_root",
    "validate_dataset_manifests",
]


def resolve_data_root(spec: DatasetSpec, data_root: str | Path | None = None) -> Path | None:
    """Where ``spec``'s data lives: ``data_root``, else ``$<root_env>``, else ``options.root``.

    ``None`` for built-in datasets; DataError naming the variable and ``--data-root``
    when nothing is given or the directory does not exist.
    """
    if spec.format in BUILTIN_FORMATS:
        return None
    env_value = os.environ.get(spec.root_env) if spec.root_env else None
    if data_root is not None and str(data_root) != "":
        path, origin = Path(data_root).expanduser(), "--data-root"
    elif env_value:
        path, origin = Path(env_value).expanduser(), f"${spec.root_env}"
    elif (default := spec_root_default(spec)) is not None:
        path, origin = default, f"options.root in {spec.source}"
    else:
        env_hint = f"set ${spec.root_env} to its directory, or " if spec.root_env else ""
        raise DataError(
            f"Dataset {spec.name!r} has no data root: {env_hint}pass --data-root DIR "
            "(data_root= in Python). Datasets are never downloaded."
        )
    if not path.is_dir():
        raise DataError(
            f"Data root {path} for dataset {spec.name!r} (from {origin}) is not a directory; "
            "point "
            + (f"${spec.root_env} or " if spec.root_env else "")
            + "--data-root at the dataset directory."
        )
    return path


def open_split(
    spec: DatasetSpec,
    split: str,
    *,
    data_root: str | Path | None = None,
    query_crop: str = "bbx",
    limit: int | None = None,
) -> ImageSplit:
    """Index one split of ``spec`` and return its :class:`ImageSplit` (first ``limit`` rows).

    ``query_crop`` ("bbx" | "none") applies to the query split of retrieval layouts
    with query boxes (revisited Oxford/Paris) and is then recorded in ``params``.
    """
    if split not in spec.splits:
        raise UnknownNameError(
            "split",
            split,
            spec.splits,
            hint=f"Dataset {spec.name!r} has splits: {', '.join(spec.splits)}.",
        )
    if query_crop not in QUERY_CROPS:
        raise UnknownNameError("query crop", query_crop, QUERY_CROPS)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if spec.format not in FORMATS:
        raise UnknownNameError("dataset format", spec.format, FORMATS)
    module_name, function, _ = FORMATS[spec.format]
    reader = getattr(importlib.import_module(f"featcache.datasets.{module_name}"), function)
    ctx = ReadContext(spec, split, resolve_data_root(spec, data_root), query_crop)
    result: ImageSplit = reader(ctx)
    return result.head(limit)

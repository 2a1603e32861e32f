"""CIFAR-10 / CIFAR-100, "python version": pickled batches read with a restricted unpickler.

Layout (as published by Krizhevsky)::

    cifar-10-batches-py/  data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/     train, test, meta

Each batch is a dict with ``data`` (N x 3072 uint8, channel planes of 32x32) and
``labels`` (CIFAR-10) or ``fine_labels`` / ``coarse_labels`` (CIFAR-100). Keys may be
bytes or str depending on how the file was written; both are read. The pixels are
not kept in the split: each process re-reads a batch on first use (see CifarSource).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from featcache.datasets._common import ReadContext, find_base
from featcache.datasets.safepickle import safe_load
from featcache.datasets.split import ImageSplit
from featcache.errors import DataError

_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "batches.meta",
    ),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "meta"),
}


def _get(batch: dict[Any, Any], key: str, path: Path) -> Any:
    for candidate in (key, key.encode()):
        if candidate in batch:
            return batch[candidate]
    raise DataError(f"CIFAR batch {path} has no {key!r} entry; re-download the dataset.")


def _load_batch(path: Path) -> dict[Any, Any]:
    batch = safe_load(path)
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR batch {path} is not a dict; re-download the dataset.")
    return batch


def _pixels(batch: dict[Any, Any], path: Path) -> np.ndarray:
    data = np.asarray(_get(batch, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"CIFAR batch {path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)."
        )
    return data


class CifarSource:
    """Rows of CIFAR batch files; a batch is unpickled on first use in each process
    and kept (not pickled with the source, so workers start cheaply)."""

    def __init__(self, files: list[str], counts: list[int]) -> None:
        self.files = files
        self.starts = np.cumsum([0, *counts]).tolist()
        self._cache: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files, "starts": self.starts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _cache={})

    def _locate(self, i: int) -> tuple[int, int]:
        f = int(np.searchsorted(self.starts, i, side="right")) - 1
        return f, i - self.starts[f]

    def describe(self, i: int) -> str:
        f, row = self._locate(i)
        return f"{self.files[f]}[{row}]"

    def load(self, i: int) -> Image.Image:
        f, row = self._locate(i)
        if f not in self._cache:
            path = Path(self.files[f])
            self._cache[f] = _pixels(_load_batch(path), path)  # at most 150 MB (a split)
        pixels = self._cache[f][row].reshape(3, 32, 32).transpose(1, 2, 0)
        return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")


def read_cifar(ctx: ReadContext) -> ImageSplit:
    """CIFAR-10 (``variant: cifar10``) or CIFAR-100 (``variant: cifar100``, ``label: fine``
    (100 classes, default) or ``coarse`` (20 superclasses)); splits train and test.

    Ids are ``<batch file>/<row>``; class names come from the meta file.
    """
    variant = ctx.option("variant", "cifar10")
    folder, batches, meta_name = _LAYOUT[variant]
    base = find_base(ctx, (folder,), markers=(meta_name,))
    if ctx.split not in batches:
        raise DataError(f"{ctx.where}: CIFAR has splits train and test.")
    label_kind = ctx.option("label", "fine") if variant == "cifar100" else "label"
    label_key = {"label": "labels", "fine": "fine_labels", "coarse": "coarse_labels"}[label_kind]
    names_key = {
        "label": "label_names",
        "fine": "fine_label_names",
        "coarse": "coarse_label_names",
    }[label_kind]
    files, counts, ids, labels = [], [], [], []
    for name in batches[ctx.split]:
        path = base / name
        batch = _load_batch(path)
        n = len(_pixels(batch, path))
        batch_labels = np.asarray(_get(batch, label_key, path), np.int64).ravel()
        if batch_labels.shape != (n,):
            raise DataError(f"CIFAR batch {path}: {n} images but {batch_labels.size} labels.")
        files.append(str(path))
        counts.append(n)
        ids += [f"{name}/{row:05d}" for row in range(n)]
        labels.append(batch_labels)
    meta = _load_batch(base / meta_name)
    classes = [
        c.decode() if isinstance(c, bytes) else str(c)
        for c in _get(meta, names_key, base / meta_name)
    ]
    params = {"label": label_kind} if variant == "cifar100" else {}
    return ImageSplit(
        ids,
        np.concatenate(labels),
        CifarSource(files, counts),
        params=params,
        classes=classes,
        dataset=ctx.spec.name,
        split=ctx.split,
    )

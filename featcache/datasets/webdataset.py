"""WebDataset tar shards, read with :mod:`tarfile` by byte offset (no webdataset package).

A shard is an uncompressed ``.tar`` whose members are grouped into samples by key:
the member path up to the first ``.`` of its file name (``a/b/000123.jpg`` and
``a/b/000123.cls`` form sample ``a/b/000123``). A sample's image is its ``jpg``,
``jpeg``, ``png`` or ``webp`` member (first in that order); its label its ``cls``
(an integer), ``json`` (an integer, or an object with ``label`` or ``cls``) or ``txt``
member (an integer or a class name; names index ``options.classes``, else the sorted
names found in the split, so list the classes when splits may differ). Samples
without an image are skipped; without a label they get -1.

Each shard is indexed once when the split is opened; ``load`` opens the shard, seeks to
the image's data offset and reads its bytes. Ids are ``<shard path>/<key>`` with the
shard path relative to the data root. ``options.shards`` is a glob (relative to the
root, default ``*.tar``) or a mapping ``split -> glob``.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from featcache.datasets._common import ReadContext
from featcache.datasets.split import ImageSplit, TarSource, safe_relpath, tar_member_bytes
from featcache.errors import DataError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
LABEL_KEYS = ("cls", "json", "txt")


def _shards(ctx: ReadContext, root: Path) -> list[Path]:
    raw = ctx.option("shards", "*.tar")
    if not isinstance(raw, str):
        if ctx.split not in raw:
            raise DataError(f"{ctx.where}: options.shards has no glob for split {ctx.split!r}.")
        raw = raw[ctx.split]
    elif len(ctx.spec.splits) > 1 and "{split}" not in raw:
        raise DataError(
            f"{ctx.where}: several splits need options.shards as a mapping "
            "split -> glob, or a glob containing '{split}'."
        )
    pattern = safe_relpath(
        str(raw).replace("{split}", ctx.split), where=f"{ctx.spec.source} options.shards"
    )
    found = sorted(p for p in root.glob(pattern) if p.is_file())
    if not found:
        raise DataError(f"{ctx.where}: no shards match {root / pattern}; check the data root.")
    return found


def _label(kind: str, data: bytes, where: str) -> int | str | None:
    try:
        text = data.decode("utf-8").strip()
        if kind == "json":
            value = json.loads(text)
            if isinstance(value, dict):
                value = value.get("label", value.get("cls"))
            if value is None or (isinstance(value, int) and not isinstance(value, bool)):
                return value
            raise ValueError(f"expected an integer label, got {value!r}")
        if not text:
            return None
        return int(text) if kind == "cls" or text.lstrip("-").isdigit() else text
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"Bad label member {where}: {exc}.") from exc


def _index_shard(path: Path, number: int) -> list[tuple[str, tuple[int, int, int, str], Any]]:
    """``[(key, (shard, offset, size, member), label)]`` for every sample with an image."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                directory, _, filename = member.name.rpartition("/")
                stem, dot, ext = filename.partition(".")
                if not dot or not stem:
                    continue
                key = f"{directory}/{stem}" if directory else stem
                samples.setdefault(key, {})[ext.lower()] = member
    except (tarfile.TarError, OSError) as exc:
        raise DataError(
            f"Cannot index shard {path} ({exc}); shards must be uncompressed .tar files."
        ) from exc
    rows = []
    for key, members in samples.items():
        image = next((members[k] for k in IMAGE_KEYS if k in members), None)
        if image is None:
            continue
        label: int | str | None = None
        kind = next((k for k in LABEL_KEYS if k in members), None)
        if kind is not None:
            label = _label(
                kind, tar_member_bytes(str(path), members[kind]), f"{path}:{members[kind].name}"
            )
        entry = (number, image.offset_data, image.size, image.name)
        rows.append((key, entry, label))
    return rows


def read_webdataset(ctx: ReadContext) -> ImageSplit:
    """The samples of the shards of one split, in shard order then member order."""
    root = ctx.data_root()
    shards = _shards(ctx, root)
    ids: list[str] = []
    entries: list[tuple[int, int, int, str]] = []
    raw_labels: list[Any] = []
    for number, shard in enumerate(shards):
        rel = shard.relative_to(root).as_posix()
        for key, entry, label in _index_shard(shard, number):
            ids.append(f"{rel}/{key}")
            entries.append(entry)
            raw_labels.append(label)
    if not ids:
        raise DataError(f"{ctx.where}: the shards {shards[0]} ... hold no images.")
    found = {v for v in raw_labels if isinstance(v, str)}
    if found and any(isinstance(v, int) for v in raw_labels):
        raise DataError(f"{ctx.where}: shard labels mix class names and integers.")
    listed = ctx.option("classes")
    names = [str(c) for c in listed] if listed is not None else sorted(found)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(found - set(index))
    if unknown:
        raise DataError(f"{ctx.where}: shard label {unknown[0]!r} is not in options.classes.")
    labels = np.asarray(
        [index[v] if isinstance(v, str) else (-1 if v is None else v) for v in raw_labels], np.int64
    )
    return ImageSplit(
        ids,
        labels,
        TarSource([str(s) for s in shards], entries),
        classes=names or None,
        dataset=ctx.spec.name,
        split=ctx.split,
    )

"""Readers for folder layouts: class sub-folders, EuroSAT, ImageNet-1k and its variants.

Class sub-folders (torchvision ``ImageFolder`` convention): class index = position of
the folder name in sorted order; images are found recursively, ids are paths
relative to the dataset directory, sorted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featcache.datasets import imagenet_info
from featcache.datasets._common import (
    MissingSplitError,
    ReadContext,
    find_base,
    fraction_split,
    read_text,
)
from featcache.datasets.split import IMAGE_EXTENSIONS, FileSource, ImageSplit, safe_relpath
from featcache.errors import BobxError, DataError


def _extensions(ctx: ReadContext) -> tuple[str, ...]:
    raw = ctx.option("extensions")
    if raw is None:
        return IMAGE_EXTENSIONS
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in raw)


def subdirs(directory: Path) -> list[str]:
    """Sorted names of the visible sub-directories of ``directory``."""
    try:
        with os.scandir(directory) as it:
            return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise DataError(f"Cannot list {directory}: {exc}.") from exc


def images_under(base: Path, directory: Path, extensions: Sequence[str]) -> list[str]:
    """Image files below ``directory`` (recursively, links followed), relative to ``base``."""
    found: list[str] = []
    for current, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(current).relative_to(base)
        for name in files:
            if not name.startswith(".") and name.lower().endswith(tuple(extensions)):
                found.append((rel / name).as_posix())
    return sorted(found)


def _split_dir(ctx: ReadContext, base: Path, split: str) -> Path | None:
    """The directory of ``split``: options.split_dirs, else ``base/<split>``; None if absent."""
    mapping = ctx.option("split_dirs") or {}
    if split in mapping:
        directory = base / safe_relpath(mapping[split], where=f"{ctx.spec.source} split_dirs")
        return directory if directory.is_dir() else None
    return base / split if (base / split).is_dir() else None


def _this_split_dir(ctx: ReadContext, base: Path) -> Path:
    if ctx.option("split_fractions") is not None:
        return base
    directory = _split_dir(ctx, base, ctx.split)
    if directory is not None:
        return directory
    if len(ctx.spec.splits) == 1 and not ctx.option("split_dirs"):
        return base
    raise MissingSplitError(
        f"{ctx.where}: no directory {base / ctx.split}; a dataset with several splits needs "
        "one sub-directory per split (or options.split_dirs / options.split_fractions)."
    )


def _finish(
    ctx: ReadContext,
    base: Path,
    ids: list[str],
    labels: np.ndarray,
    classes: Sequence[str] | None,
    **extra: object,
) -> ImageSplit:
    fractions = ctx.option("split_fractions")
    params: dict[str, object] = {}
    if fractions is not None:
        seed = int(ctx.option("split_seed", 0))
        rows = fraction_split(labels, fractions, ctx.split, seed)
        ids = [ids[r] for r in rows]
        labels = labels[rows]
        params = {"split_fractions": dict(fractions), "split_seed": seed}
    if not ids:
        raise DataError(f"{ctx.where}: no images found under {base}; check the data root.")
    meta = extra.get("meta")
    return ImageSplit(
        ids,
        labels,
        FileSource(base, ids),
        meta=dict(meta) if isinstance(meta, dict) else None,
        params=params,
        classes=classes,
        dataset=ctx.spec.name,
        split=ctx.split,
    )


def read_folder(ctx: ReadContext, candidates: Sequence[str] = ()) -> ImageSplit:
    """A folder of class sub-folders (or, with ``labelled: false``, of unlabelled images).

    Splits are sub-directories ``train/``, ``val/``, ``test/`` (or options.split_dirs);
    a single-split dataset may be the folder itself; ``split_fractions`` +
    ``split_seed`` cut one folder into splits deterministically (stratified by class).
    The class list is ``options.classes`` or the sorted union of the class folders of
    every split, so a class missing from one split keeps its index.
    """
    base = find_base(ctx, candidates)
    directory = _this_split_dir(ctx, base)
    extensions = _extensions(ctx)
    if not ctx.option("labelled", True):
        found = images_under(base, directory, extensions)
        return _finish(ctx, base, found, np.full(len(found), -1, np.int64), None)
    if ctx.option("classes") is not None:
        classes = [str(c) for c in ctx.option("classes")]
        extra = sorted(set(subdirs(directory)) - set(classes))
        if extra:
            raise DataError(
                f"{ctx.where}: folder {directory / extra[0]} is not one of the "
                "classes listed in options.classes."
            )
    else:
        dirs = [directory]
        if ctx.option("split_fractions") is None:
            dirs += [d for s in ctx.spec.splits if (d := _split_dir(ctx, base, s)) is not None]
        classes = sorted({c for d in dirs for c in subdirs(d)})
    ids: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        if (directory / name).is_dir():
            found = images_under(base, directory / name, extensions)
            ids += found
            labels += [index] * len(found)
    n = ctx.spec.num_classes
    if n is not None and len(classes) > n:
        raise DataError(
            f"{ctx.where}: {len(classes)} class folders under {directory}, but the "
            f"spec says num_classes={n}; remove stray folders or fix the manifest."
        )
    return _finish(ctx, base, ids, np.asarray(labels, np.int64), classes)


def read_eurosat(ctx: ReadContext) -> ImageSplit:
    """EuroSAT RGB: 10 class folders of 64x64 JPEGs (``2750/`` or ``EuroSAT_RGB/``).

    The dataset ships no splits; the manifest cuts it with ``split_fractions``.
    """
    return read_folder(ctx, ("eurosat/2750", "2750", "EuroSAT_RGB", "EuroSAT"))


# ----------------------------------------------------------------------------- ImageNet


def _wnid_dirs(directory: Path) -> list[str]:
    return [d for d in subdirs(directory) if d.startswith("n") and d[1:].isdigit()]


def _val_label_file(ctx: ReadContext, base: Path) -> Path:
    raw = ctx.option("val_labels")
    names = [raw] if raw else ["LOC_val_solution.csv", "val_labels.txt"]
    places = [base] if base == ctx.data_root() else [base, ctx.data_root()]  # Kaggle: at root
    tried = []
    for place in places:
        for name in names:
            path = place / safe_relpath(name, where=f"{ctx.spec.source} val_labels")
            if path.is_file():
                return path
            tried.append(str(path))
    raise DataError(
        f"{ctx.where}: {base / ctx.split} has no class folders and no label file "
        f"({', '.join(tried)}); sort the images into wnid folders or "
        "provide LOC_val_solution.csv (Kaggle) or a 'filename wnid' text file "
        "(options.val_labels)."
    )


def _flat_labels(ctx: ReadContext, path: Path) -> dict[str, str]:
    """``{file stem or name: wnid-or-index}`` from LOC_val_solution.csv or a two-column text."""
    text = read_text(path, "label file")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found: dict[str, str] = {}
    if path.suffix.lower() == ".csv":
        if lines and lines[0].lower().startswith("imageid"):
            lines = lines[1:]
        for number, line in enumerate(lines, 2):
            parts = line.split(",", 1)
            if len(parts) != 2 or not parts[1].split():
                raise DataError(f"{path}:{number}: expected 'ImageId,PredictionString'.")
            found[parts[0].strip()] = parts[1].split()[0]
    else:
        for number, line in enumerate(lines, 1):
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{path}:{number}: expected 'filename label'.")
            found[parts[0]] = parts[1]
    return found


def read_imagenet(ctx: ReadContext) -> ImageSplit:
    """ImageNet-1k: ``train/<wnid>/*.JPEG``; ``val/`` as wnid folders or flat plus labels.

    Class index = position of the wnid among the sorted wnid folders present
    (``class_index: folders``, the ImageFolder rule; equal to the canonical order for
    the full dataset) or in the canonical sorted IN-1k list (``class_index: canonical``).
    A flat ``val/`` is labelled from ``LOC_val_solution.csv`` (Kaggle) or a text file
    of ``filename wnid`` (or ``filename index``) lines named by ``options.val_labels``.
    The devkit's ``ILSVRC2012_validation_ground_truth.txt`` uses another class order and
    is not read; convert it first.
    """
    base = find_base(ctx, ("ILSVRC/Data/CLS-LOC", "imagenet"), markers=("train", "val"))
    directory = _this_split_dir(ctx, base)
    folders = _wnid_dirs(directory)
    if ctx.option("class_index", "folders") == "canonical":
        classes = list(imagenet_info.in1k_wnids())
    else:
        dirs = [d for s in ctx.spec.splits if (d := _split_dir(ctx, base, s)) is not None]
        classes = sorted({w for d in dirs for w in _wnid_dirs(d)})
    if folders:
        index = {w: i for i, w in enumerate(classes)}
        ids, labels = [], []
        for wnid in folders:
            if wnid not in index:
                raise DataError(f"{ctx.where}: folder {directory / wnid} is not an IN-1k class.")
            found = images_under(base, directory / wnid, IMAGE_EXTENSIONS)
            ids += found
            labels += [index[wnid]] * len(found)
        return _finish(ctx, base, ids, np.asarray(labels, np.int64), classes)
    table = _flat_labels(ctx, _val_label_file(ctx, base))
    if not classes:
        named = {v for v in table.values() if not v.isdigit()}
        classes = sorted(named) if named else list(imagenet_info.in1k_wnids())
    index = {w: i for i, w in enumerate(classes)}
    ids, labels = [], []
    for rel in images_under(base, directory, IMAGE_EXTENSIONS):
        name = Path(rel).name
        label = table.get(name, table.get(Path(rel).stem))
        if label is None:
            raise DataError(f"{ctx.where}: image {base / rel} has no entry in the label file.")
        if label.isdigit():
            if int(label) >= len(classes):
                raise DataError(f"{ctx.where}: label {label} of {rel} is out of range.")
            labels.append(int(label))
        elif label in index:
            labels.append(index[label])
        else:
            raise DataError(f"{ctx.where}: label {label!r} of {rel} is not a known wnid.")
        ids.append(rel)
    return _finish(ctx, base, ids, np.asarray(labels, np.int64), classes)


_WNID_CANDIDATES = {
    "imagenet_a": ("imagenet-a",),
    "imagenet_r": ("imagenet-r",),
    "imagenet_sketch": ("sketch", "ImageNet-Sketch/sketch", "imagenet-sketch/sketch"),
}


def read_imagenet_wnids(ctx: ReadContext) -> ImageSplit:
    """ImageNet-A / -R / -Sketch: ``<wnid>/`` folders, labels in the 1,000-class index space.

    For A and R the 200 covered classes (``spec.class_subset``; derived from the wnid
    folders present when no published list is available) are copied into
    ``meta["class_subset"]``, so an IN-1k head can be restricted to them.
    """
    base = find_base(ctx, _WNID_CANDIDATES.get(ctx.spec.format, ()))
    directory = _this_split_dir(ctx, base)
    folders = subdirs(directory)
    if not folders:
        raise DataError(f"{ctx.where}: no wnid folders under {directory}; check the data root.")
    index = {w: imagenet_info.index_of_wnid(w, where=ctx.where) for w in folders}
    ids, labels = [], []
    for wnid in folders:
        found = images_under(base, directory / wnid, IMAGE_EXTENSIONS)
        ids += found
        labels += [index[wnid]] * len(found)
    meta: dict[str, object] = {}
    if ctx.spec.format in imagenet_info.SUBSETS or ctx.spec.class_subset is not None:
        subset = ctx.spec.class_subset
        if subset is None:
            subset = tuple(sorted(index.values()))
        outside = sorted(set(index.values()) - set(subset))
        if outside:
            wnid = imagenet_info.in1k_wnids()[outside[0]]
            raise DataError(
                f"{ctx.where}: folder {directory / wnid} is not one of the "
                f"{len(subset)} classes of {ctx.spec.name}."
            )
        meta["class_subset"] = list(subset)
    return _finish(
        ctx, base, ids, np.asarray(labels, np.int64), imagenet_info.in1k_wnids(), meta=meta
    )


def read_imagenet_v2(ctx: ReadContext) -> ImageSplit:
    """ImageNet-V2: folders ``0`` .. ``999`` named by IN-1k class index (any of its 3 variants)."""
    base = find_base(
        ctx,
        (
            "imagenetv2-matched-frequency-format-val",
            "imagenetv2-threshold0.7-format-val",
            "imagenetv2-top-images-format-val",
        ),
    )
    directory = _this_split_dir(ctx, base)
    folders = subdirs(directory)
    bad = [f for f in folders if not f.isdigit() or int(f) >= 1000]
    if bad:
        raise DataError(f"{ctx.where}: folder {directory / bad[0]} is not a class index 0-999.")
    ids, labels = [], []
    for name in sorted(folders, key=int):
        found = images_under(base, directory / name, IMAGE_EXTENSIONS)
        ids += found
        labels += [int(name)] * len(found)
    try:
        classes: Sequence[str] | None = imagenet_info.in1k_wnids()
    except BobxError:  # class names are a convenience here; labels are the folder numbers
        classes = None
    return _finish(ctx, base, ids, np.asarray(labels, np.int64), classes)

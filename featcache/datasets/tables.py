"""Readers for layouts described by list files: CSV/Parquet, CheXpert, Flowers-102,
FGVC-Aircraft, VisDA-2017 and CUB-200-2011.

Every path read from a list file goes through :func:`safe_relpath`: absolute paths and
``..`` are refused, so nothing outside the data root is opened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featcache.datasets._common import ReadContext, find_base, read_text
from featcache.datasets.split import FileSource, ImageSplit, safe_relpath
from featcache.errors import DataError
from featcache.io import MAX_CLASSES


def _split_from(
    ctx: ReadContext,
    base: Path,
    ids: list[str],
    labels: np.ndarray,
    classes: Sequence[str] | None,
    params: dict[str, Any] | None = None,
) -> ImageSplit:
    if not ids:
        raise DataError(f"{ctx.where}: the list files under {base} name no images.")
    return ImageSplit(
        ids,
        labels,
        FileSource(base, ids),
        params=params,
        classes=classes,
        dataset=ctx.spec.name,
        split=ctx.split,
    )


def _pairs(path: Path, what: str, min_fields: int = 2) -> list[list[str]]:
    """Lines of ``path`` split into ``[first, rest]`` on the first whitespace run."""
    rows = []
    for number, line in enumerate(read_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) < min_fields:
            raise DataError(f"{path}:{number}: expected at least {min_fields} fields.")
        rows.append(parts)
    return rows


# ------------------------------------------------------------------------------ CSV / Parquet


def _read_table(path: Path) -> Any:
    import pandas as pd

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            return frame.astype({c: str for c in frame.columns if frame[c].dtype == object})
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        return pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
    except FileNotFoundError as exc:
        raise DataError(f"Missing list file {path}; check the data root.") from exc
    except Exception as exc:  # pandas / pyarrow raise many types for a malformed file
        raise DataError(f"Cannot read list file {path}: {exc}.") from exc


def _table_file(ctx: ReadContext, base: Path, split: str) -> tuple[Path, bool]:
    """The list file of ``split`` and whether it holds only that split."""
    files = ctx.option("files") or {}
    where = f"{ctx.spec.source} options"
    if split in files:
        return base / safe_relpath(files[split], where=where), True
    if ctx.option("file"):
        return base / safe_relpath(ctx.option("file"), where=where), False
    for name, own in (
        (f"{split}.csv", True),
        (f"{split}.parquet", True),
        ("labels.csv", False),
        ("labels.parquet", False),
    ):
        if (base / name).is_file():
            return base / name, own
    raise DataError(
        f"{ctx.where}: no list file under {base} (looked for {split}.csv, "
        f"{split}.parquet, labels.csv, labels.parquet; or set options.file/files)."
    )


def _column(frame: Any, name: str, path: Path) -> list[str]:
    if name not in frame.columns:
        raise DataError(
            f"{path}: no column {name!r} (columns: {', '.join(map(str, frame.columns))})."
        )
    return [str(v).strip() for v in frame[name].tolist()]


def _parse_label(value: str) -> int | str | None:
    """An integer label, a class name (str) or ``None`` (blank: unlabelled)."""
    if value in ("", "nan", "None"):
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    if not math.isfinite(number) or not number.is_integer():
        raise DataError(f"label {value!r} is not an integer")
    if not -1 <= number < MAX_CLASSES:
        raise DataError(
            f"label {value!r} is not a class index (0..{MAX_CLASSES - 1}, or -1 for unlabelled)"
        )
    return int(number)


def _label_at(raw: str, path: Path, column: str) -> int | str | None:
    try:
        return _parse_label(raw)
    except DataError as exc:
        raise DataError(f"{path}: column {column!r}: {exc}.") from exc


def read_csv(ctx: ReadContext) -> ImageSplit:
    """A CSV / TSV / Parquet list: ``path,label[,split]`` (paths relative to the dataset dir).

    * ``label`` may hold integers or class names (names -> index in ``options.classes``,
      else in the sorted names of every split's rows); empty -> -1 (unlabelled).
    * Multi-label: ``options.label_columns`` (one 0/1 column per class) or a
      ``labels`` column of ``|``-separated names or indices (``options.labels_column``,
      ``options.label_separator``).
    * Splits: a ``split`` column, or one file per split (``options.files`` or
      ``<split>.csv``); ``options.image_dir`` prefixes every path.
    """
    base = find_base(ctx, ())
    path, own = _table_file(ctx, base, ctx.split)
    frame = _read_table(path)
    split_column = ctx.option("split_column", "split")
    if split_column in frame.columns:
        frame = frame[frame[split_column].astype(str) == ctx.split]
    elif not own and len(ctx.spec.splits) > 1:
        raise DataError(
            f"{path}: no {split_column!r} column, but dataset {ctx.spec.name!r} has "
            f"splits {', '.join(ctx.spec.splits)}; add the column or list one file "
            "per split in options.files."
        )
    prefix = ctx.option("image_dir")
    prefix = safe_relpath(prefix, where=f"{ctx.spec.source} image_dir") if prefix else ""
    rows = _column(frame, ctx.option("path_column", "path"), path)
    ids = []
    for number, raw in enumerate(rows, 2):
        rel = safe_relpath(raw, where=f"{path} row {number}")
        ids.append(f"{prefix}/{rel}" if prefix else rel)
    labels, classes = _csv_labels(ctx, base, frame, path)
    return _split_from(ctx, base, ids, labels, classes)


def _all_split_frames(ctx: ReadContext, base: Path) -> list[Any]:
    frames, seen = [], set()
    for split in ctx.spec.splits:
        path, _ = _table_file(ctx, base, split)
        if path not in seen:
            seen.add(path)
            frames.append(_read_table(path))
    return frames


def _csv_labels(
    ctx: ReadContext, base: Path, frame: Any, path: Path
) -> tuple[np.ndarray, list[str] | None]:
    classes = ctx.option("classes")
    classes = None if classes is None else [str(c) for c in classes]
    label_columns = ctx.option("label_columns")
    if label_columns:
        values = np.zeros((len(frame), len(label_columns)), np.int8)
        for j, name in enumerate(label_columns):
            for i, raw in enumerate(_column(frame, name, path)):
                flag = _label_at(raw, path, name)
                if isinstance(flag, str):
                    raise DataError(f"{path}: column {name!r} holds {raw!r}; expected 0/1.")
                values[i, j] = 1 if flag else 0
        return values, [str(c) for c in label_columns]
    labels_column = ctx.option("labels_column", "labels" if ctx.spec.multilabel else None)
    if labels_column:
        sep = ctx.option("label_separator", "|")
        cells = [
            [t.strip() for t in c.split(sep) if t.strip()]
            for c in _column(frame, labels_column, path)
        ]
        names = {t for cell in cells for t in cell if not t.isdigit()}
        if names and classes is None:
            every = [_column(f, labels_column, path) for f in _all_split_frames(ctx, base)]
            classes = sorted(
                {t.strip() for col in every for c in col for t in c.split(sep) if t.strip()}
            )
        index = {c: i for i, c in enumerate(classes or [])}
        width = (
            len(classes)
            if classes
            else (ctx.spec.num_classes or 1 + max((int(t) for c in cells for t in c), default=0))
        )
        values = np.zeros((len(frame), width), np.int8)
        for i, cell in enumerate(cells):
            for token in cell:
                j = int(token) if token.isdigit() else index.get(token, -1)
                if not 0 <= j < width:
                    raise DataError(f"{path}: label {token!r} is not a known class.")
                values[i, j] = 1
        return values, classes
    label_column = ctx.option("label_column", "label")
    if label_column not in frame.columns:
        return np.full(len(frame), -1, np.int64), classes
    try:
        parsed = [_parse_label(v) for v in _column(frame, label_column, path)]
    except DataError as exc:
        raise DataError(f"{path}: {exc}.") from exc
    kinds = {type(p) for p in parsed if p is not None}
    if kinds == {int, str}:
        raise DataError(f"{path}: column {label_column!r} mixes class names and indices.")
    if str in kinds:
        if classes is None:
            every = [_column(f, label_column, path) for f in _all_split_frames(ctx, base)]
            classes = sorted({v for col in every for v in col if _parse_label(v) is not None})
        index = {c: i for i, c in enumerate(classes)}
        missing = sorted({p for p in parsed if isinstance(p, str) and p not in index})
        if missing:
            raise DataError(f"{path}: class {missing[0]!r} is not in options.classes.")
        codes = [index[p] if isinstance(p, str) else -1 for p in parsed]
    else:
        codes = [-1 if p is None else int(p) for p in parsed]
    labels = np.asarray(codes, np.int64)
    n = ctx.spec.num_classes
    if labels.size and (labels.min() < -1 or (n is not None and labels.max() >= n)):
        raise DataError(f"{path}: labels outside 0..{(n or 0) - 1} (num_classes={n}).")
    return labels, classes


# ----------------------------------------------------------------------------------- CheXpert

#: The five CheXpert competition labels (Irvin et al. 2019), in label-column order.
CHEXPERT_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


def read_chexpert(ctx: ReadContext) -> ImageSplit:
    """CheXpert v1.0 (or -small): ``train.csv`` / ``valid.csv`` with a ``Path`` column.

    Labels are the 5 competition observations as an ``(N, 5)`` int8 multi-hot array:
    1.0 -> 1, 0.0 or blank -> 0, uncertain -1.0 -> 1 with ``uncertain: ones`` (the
    default, the paper's U-Ones policy, which scored best on average in Irvin et al.)
    or 0 with ``uncertain: zeros`` (U-Zeros). ``frontal_only: true`` keeps frontal views.
    Paths in the CSV start with the release directory (``CheXpert-v1.0-small/...``);
    that first part is dropped, so ids are relative to the release directory.
    """
    base = find_base(
        ctx, ("CheXpert-v1.0-small", "CheXpert-v1.0"), markers=("train.csv", "valid.csv")
    )
    files = ctx.option("files") or {}
    path = base / safe_relpath(
        files.get(ctx.split, f"{ctx.split}.csv"), where=f"{ctx.spec.source} options.files"
    )
    frame = _read_table(path)
    policy = ctx.option("uncertain", "ones")
    frontal_only = bool(ctx.option("frontal_only", False))
    if frontal_only:
        views = _column(frame, "Frontal/Lateral", path)
        frame = frame[[v == "Frontal" for v in views]]
    uncertain = 1 if policy == "ones" else 0
    labels = np.zeros((len(frame), len(CHEXPERT_LABELS)), np.int8)
    for j, name in enumerate(CHEXPERT_LABELS):
        for i, raw in enumerate(_column(frame, name, path)):
            value = _label_at(raw, path, name)
            if value is None or value == 0:
                continue
            if value == 1:
                labels[i, j] = 1
            elif value == -1:
                labels[i, j] = uncertain
            else:
                raise DataError(f"{path}: {name!r} value {raw!r} is not 1, 0, -1 or blank.")
    ids = []
    for number, raw in enumerate(_column(frame, "Path", path), 2):
        rel = safe_relpath(raw, where=f"{path} row {number}")
        first, _, rest = rel.partition("/")
        if rest and (first == base.name or first.startswith("CheXpert-v1.0")):
            rel = rest
        ids.append(rel)
    return _split_from(
        ctx, base, ids, labels, CHEXPERT_LABELS, {"uncertain": policy, "frontal_only": frontal_only}
    )


# ------------------------------------------------------------------------------- Flowers-102

_FLOWERS_SPLITS = {"train": "trnid", "val": "valid", "test": "tstid"}


def _loadmat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    try:
        return dict(loadmat(path))
    except FileNotFoundError as exc:
        raise DataError(f"Missing {path}; check the data root.") from exc
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError...
        raise DataError(f"Cannot read MATLAB file {path}: {exc}.") from exc


def read_flowers102(ctx: ReadContext) -> ImageSplit:
    """Oxford Flowers-102: ``jpg/image_00001.jpg``, ``imagelabels.mat``, ``setid.mat``.

    Splits train / val / test are the ``trnid`` / ``valid`` / ``tstid`` lists of
    setid.mat (1-based image numbers, kept in file order); labels 1..102 become 0..101.
    """
    base = find_base(ctx, ("flowers-102", "flowers102"), markers=("imagelabels.mat",))
    key = _FLOWERS_SPLITS.get(ctx.split)
    if key is None:
        raise DataError(f"{ctx.where}: Flowers-102 has splits {', '.join(_FLOWERS_SPLITS)}.")
    labels_mat = _loadmat(base / "imagelabels.mat")
    setid = _loadmat(base / "setid.mat")
    if "labels" not in labels_mat or key not in setid:
        raise DataError(f"{base}: imagelabels.mat needs 'labels' and setid.mat needs {key!r}.")
    all_labels = np.asarray(labels_mat["labels"]).ravel().astype(np.int64) - 1
    numbers = np.asarray(setid[key]).ravel().astype(np.int64)
    if numbers.size and (numbers.min() < 1 or numbers.max() > all_labels.size):
        raise DataError(f"{base / 'setid.mat'}: image numbers outside 1..{all_labels.size}.")
    ids = [f"jpg/image_{n:05d}.jpg" for n in numbers]
    return _split_from(ctx, base, ids, all_labels[numbers - 1], None)


# ----------------------------------------------------------------------------- FGVC-Aircraft

_AIRCRAFT_CLASS_FILES = {
    "variant": "variants.txt",
    "family": "families.txt",
    "manufacturer": "manufacturers.txt",
}


def read_fgvc_aircraft(ctx: ReadContext) -> ImageSplit:
    """FGVC-Aircraft 2013b: ``data/images/<id>.jpg`` and ``data/images_<level>_<split>.txt``.

    ``annotation_level`` (variant | family | manufacturer, default variant: 100
    classes); class index = line order of ``variants.txt`` (torchvision's rule). Splits
    train, val, trainval, test. Images keep their 20-pixel copyright banner.
    """
    base = find_base(ctx, ("fgvc-aircraft-2013b/data", "data"), markers=("variants.txt",))
    level = ctx.option("annotation_level", "variant")
    classes = [
        c.strip()
        for c in read_text(base / _AIRCRAFT_CLASS_FILES[level], "class list").splitlines()
        if c.strip()
    ]
    index = {c: i for i, c in enumerate(classes)}
    ids, labels = [], []
    listing = base / f"images_{level}_{ctx.split}.txt"
    for image_id, name in _pairs(listing, "image list"):
        if name.strip() not in index:
            raise DataError(f"{listing}: class {name!r} is not in {_AIRCRAFT_CLASS_FILES[level]}.")
        ids.append(f"images/{safe_relpath(image_id, where=str(listing))}.jpg")
        labels.append(index[name.strip()])
    return _split_from(
        ctx, base, ids, np.asarray(labels, np.int64), classes, {"annotation_level": level}
    )


# ------------------------------------------------------------------------------ VisDA-2017

_VISDA_DIRS = {"synthetic": "train", "real": "validation", "test": "test"}


def read_visda(ctx: ReadContext) -> ImageSplit:
    """VisDA-2017 classification: ``train/`` (synthetic renders), ``validation/`` (real
    COCO crops), each with ``image_list.txt`` lines ``<class>/<file> <label>`` (12 classes).

    Split names map to directories through ``options.split_dirs`` (default synthetic ->
    train, real -> validation, test -> test); class names come from the path prefixes.
    """
    base = find_base(ctx, ("visda", "visda-2017"), markers=("train", "validation"))
    dirs = {**_VISDA_DIRS, **(ctx.option("split_dirs") or {})}
    directory = safe_relpath(dirs.get(ctx.split, ctx.split), where=f"{ctx.spec.source}")
    listing = base / directory / "image_list.txt"
    ids, labels = [], []
    names: dict[int, str] = {}
    for parts in _pairs(listing, "image list", min_fields=1):
        rel = safe_relpath(parts[0], where=str(listing))
        label = int(parts[1]) if len(parts) > 1 else -1
        ids.append(f"{directory}/{rel}")
        labels.append(label)
        if label >= 0 and "/" in rel:
            names.setdefault(label, rel.split("/", 1)[0])
    count = ctx.spec.num_classes or (max(labels, default=-1) + 1)
    classes = [names[i] for i in range(count)] if set(names) == set(range(count)) else None
    return _split_from(ctx, base, ids, np.asarray(labels, np.int64), classes)


# ----------------------------------------------------------------------------- CUB-200-2011


def read_cub200(ctx: ReadContext) -> ImageSplit:
    """CUB-200-2011: ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
    ``classes.txt`` and ``images/``; splits train / test (is_training_image 1 / 0), in
    image-id order; labels 1..200 become 0..199."""
    base = find_base(ctx, ("CUB_200_2011",), markers=("images.txt",))
    if ctx.split not in ("train", "test"):
        raise DataError(f"{ctx.where}: CUB-200-2011 has splits train and test.")
    paths = dict(_pairs(base / "images.txt", "image list"))
    classes_of = dict(_pairs(base / "image_class_labels.txt", "label list"))
    is_train = dict(_pairs(base / "train_test_split.txt", "split list"))
    class_rows = _pairs(base / "classes.txt", "class list")
    classes = [name for _, name in sorted(class_rows, key=lambda r: int(r[0]))]
    want = "1" if ctx.split == "train" else "0"
    ids, labels = [], []
    for image_id in sorted(paths, key=int):
        if image_id not in is_train or image_id not in classes_of:
            raise DataError(f"{base}: image {image_id} lacks a split or a label.")
        if is_train[image_id].strip() == want:
            ids.append(f"images/{safe_relpath(paths[image_id], where=str(base / 'images.txt'))}")
            labels.append(int(classes_of[image_id]) - 1)
    return _split_from(ctx, base, ids, np.asarray(labels, np.int64), classes)

"""Tiny image datasets on disk, in the published layouts the readers of
``featcache.datasets`` understand. Shared by the dataset and extraction tests.

Every helper writes small random images (seeded, so reruns give the same bytes) and
returns what a test needs to check the reader: ids, labels, class names. Nothing here
downloads anything.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}


def random_image(
    size: int | tuple[int, int] = 32,
    *,
    seed: int = 0,
    base: tuple[int, int] = (0, 256),
    slope: float = 4.0,
    noise: float = 12.0,
) -> Image.Image:
    """A seeded RGB image: a smooth colour gradient plus noise (compresses like a photo).

    ``base`` bounds the colour at the origin, ``slope`` the gradient per pixel, ``noise``
    the per-pixel standard deviation."""
    width, height = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    origin = rng.integers(base[0], base[1], 3)
    grad = rng.uniform(-slope, slope, (2, 3))
    pixels = origin + xx[..., None] * grad[0] + yy[..., None] * grad[1]
    pixels = pixels + rng.normal(0, noise, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def image_bytes(size: int | tuple[int, int] = 32, *, seed: int = 0, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    random_image(size, seed=seed).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: str | Path, size: int | tuple[int, int] = 32, *, seed: int = 0) -> Path:
    """Write a random image; the format follows the suffix (.jpg .jpeg .png .webp .bmp)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = _FORMATS.get(path.suffix.lower(), "JPEG")
    path.write_bytes(image_bytes(size, seed=seed, fmt=fmt))
    return path


def write_corrupt_jpeg(path: str | Path, size: int = 64) -> Path:
    """A JPEG cut off after its headers: it opens, but decoding fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = image_bytes(size, seed=123)
    path.write_bytes(data[: len(data) // 3])
    return path


def _seed(*parts: object) -> int:
    """A stable seed from any parts (``hash`` of a str changes between processes)."""
    return zlib.crc32(repr(parts).encode())


# ------------------------------------------------------------------------------- folders


def make_folder_dataset(
    root: str | Path,
    classes: int | Sequence[str] = 3,
    per_class: int = 4,
    size: int = 32,
    *,
    splits: Sequence[str] | None = None,
    ext: str = ".jpg",
) -> list[str]:
    """``root/[<split>/]<class>/<k>.jpg``; returns the class names (sorted = index order)."""
    root = Path(root)
    names = [f"class_{i}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    for split in splits or [None]:
        directory = root / split if split else root
        for c, name in enumerate(names):
            for k in range(per_class):
                write_image(directory / name / f"img_{k:03d}{ext}", size, seed=_seed(split, c, k))
    return sorted(names)


def make_csv_dataset(
    root: str | Path,
    rows: Sequence[tuple[str, Any, str | None]],
    *,
    size: int = 32,
    file: str = "labels.csv",
    label_header: str = "label",
) -> Path:
    """Images at each row's path plus ``file`` with columns path,<label_header>[,split]."""
    import pandas as pd

    root = Path(root)
    for i, (path, _, _) in enumerate(rows):
        write_image(root / path, size, seed=i)
    columns: dict[str, list[Any]] = {
        "path": [r[0] for r in rows],
        label_header: [r[1] for r in rows],
    }
    if any(r[2] is not None for r in rows):
        columns["split"] = [r[2] for r in rows]
    frame = pd.DataFrame(columns)
    target = root / file
    if target.suffix == ".parquet":
        frame.to_parquet(target)
    else:
        frame.to_csv(target, index=False)
    return target


def make_eurosat(
    root: str | Path,
    classes: Sequence[str] = ("AnnualCrop", "Forest", "River"),
    per_class: int = 10,
) -> list[str]:
    """``root/2750/<Class>/<Class>_<k>.jpg`` (the published zip's layout), 64x64 images."""
    base = Path(root) / "2750"
    for c, name in enumerate(classes):
        for k in range(per_class):
            write_image(base / name / f"{name}_{k + 1}.jpg", 16, seed=_seed("eurosat", c, k))
    return sorted(classes)


# ------------------------------------------------------------------------------------ CIFAR


def py2_pickle(obj: Any) -> bytes:
    """``obj`` pickled the way Python 2's cPickle (protocol 2) wrote the CIFAR batches.

    Handles dicts with str keys, lists, str (as byte strings), ints, and uint8
    numpy arrays (via ``numpy.core.multiarray._reconstruct``, the numpy < 2 spelling,
    with the pixels as a byte string), which is all a CIFAR batch holds.
    """
    import struct

    def string(text: str | bytes) -> bytes:
        raw = text.encode("latin-1") if isinstance(text, str) else text
        if len(raw) < 256:
            return b"U" + bytes([len(raw)]) + raw
        return b"T" + struct.pack("<i", len(raw)) + raw

    def integer(value: int) -> bytes:
        return b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)

    def dump(value: Any) -> bytes:
        if isinstance(value, dict):
            items = b"".join(dump(k) + dump(v) for k, v in value.items())
            return b"}(" + items + b"u"
        if isinstance(value, list):
            return b"](" + b"".join(dump(v) for v in value) + b"e"
        if isinstance(value, str | bytes):
            return string(value)
        if isinstance(value, int):
            return integer(value)
        if isinstance(value, np.ndarray) and value.dtype == np.uint8:
            shape = b"(" + b"".join(integer(d) for d in value.shape) + b"t"
            dtype = (
                b"cnumpy\ndtype\n"
                + string("u1")
                + integer(0)
                + integer(1)
                + b"\x87R"
                + b"("
                + integer(3)
                + string("|")
                + b"NNN"
                + integer(-1)
                + integer(-1)
                + integer(0)
                + b"tb"
            )
            state = b"(" + integer(1) + shape + dtype + b"\x89" + string(value.tobytes()) + b"t"
            return (
                b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
                + integer(0)
                + b"\x85"
                + string("b")
                + b"\x87R"
                + state
                + b"b"
            )
        raise TypeError(f"py2_pickle cannot write {type(value).__name__}")

    return b"\x80\x02" + dump(obj) + b"."


def make_cifar(
    root: str | Path,
    n_train: int = 12,
    n_test: int = 6,
    *,
    variant: str = "cifar10",
    protocol: int | str = "py2",
) -> dict[str, Any]:
    """CIFAR "python version" batches (pickled dicts, as published) under ``root``.

    ``protocol="py2"`` (default) writes them as the published files are (Python 2
    cPickle, numpy.core spelling, see :func:`py2_pickle`); an int uses ``pickle.dump``.

    Returns ``{"train": (pixels (N,32,32,3), labels), "test": ..., "classes": [...]}``.
    """
    rng = np.random.default_rng(0)
    n_classes = 10 if variant == "cifar10" else 100
    folder = Path(root) / ("cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}

    def batch(n: int, name: str) -> tuple[np.ndarray, list[int]]:
        pixels = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, n_classes, n)]
        data = pixels.transpose(0, 3, 1, 2).reshape(n, 3072)
        names = [f"img_{name}_{i}.png" for i in range(n)]
        if variant == "cifar10":
            content: dict[str, Any] = {
                "batch_label": name,
                "labels": labels,
                "data": data,
                "filenames": names,
            }
        else:
            content = {
                "filenames": names,
                "batch_label": name,
                "fine_labels": labels,
                "coarse_labels": [x // 5 for x in labels],
                "data": data,
            }
        _dump(content, folder / name, protocol)
        return pixels, labels

    if variant == "cifar10":
        chunks = np.array_split(np.arange(n_train), 5)
        parts = [batch(len(c), f"data_batch_{i + 1}") for i, c in enumerate(chunks)]
        out["train"] = (np.concatenate([p for p, _ in parts]), sum((lab for _, lab in parts), []))
        out["test"] = batch(n_test, "test_batch")
        out["classes"] = [f"label{i}" for i in range(10)]
        meta = {"num_cases_per_batch": 10000, "label_names": out["classes"], "num_vis": 3072}
        _dump(meta, folder / "batches.meta", protocol)
    else:
        out["train"] = batch(n_train, "train")
        out["test"] = batch(n_test, "test")
        out["classes"] = [f"fine{i}" for i in range(100)]
        meta = {
            "fine_label_names": out["classes"],
            "coarse_label_names": [f"coarse{i}" for i in range(20)],
        }
        _dump(meta, folder / "meta", protocol)
    return out


def _dump(obj: Any, path: Path, protocol: int | str) -> None:
    data = py2_pickle(obj) if protocol == "py2" else pickle.dumps(obj, protocol=int(protocol))
    path.write_bytes(data)


class _Exploit:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def write_malicious_pickle(path: str | Path, marker: str | Path, *, wrap: Any = None) -> Path:
    """A pickle that, loaded with plain ``pickle.load``, would run ``touch <marker>``.

    ``wrap`` (a callable) nests the payload in an otherwise valid structure, e.g.
    ``lambda x: {"imlist": [], "qimlist": [], "gnd": [x]}``.
    """
    payload: Any = _Exploit(f"touch {marker}")
    if wrap is not None:
        payload = wrap(payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(payload, protocol=2))
    return path


# ------------------------------------------------------------------------- list-file layouts


def make_flowers102(root: str | Path, n: int = 12, n_classes: int = 3) -> dict[str, Any]:
    """``root/flowers-102/{jpg/image_%05d.jpg, imagelabels.mat, setid.mat}``."""
    from scipy.io import savemat

    base = Path(root) / "flowers-102"
    labels = np.arange(n) % n_classes + 1  # 1-based, as published
    for i in range(1, n + 1):
        write_image(base / "jpg" / f"image_{i:05d}.jpg", 16, seed=i)
    ids = np.arange(1, n + 1)
    setid = {"trnid": ids[0::3][::-1], "valid": ids[1::3], "tstid": ids[2::3]}
    savemat(base / "imagelabels.mat", {"labels": labels.reshape(1, -1)})
    savemat(base / "setid.mat", {k: v.reshape(1, -1) for k, v in setid.items()})
    return {"labels": labels - 1, "setid": setid}


def make_fgvc_aircraft(root: str | Path, per_split: int = 4) -> dict[str, Any]:
    """``root/fgvc-aircraft-2013b/data/{images/, variants.txt, images_variant_<split>.txt}``."""
    base = Path(root) / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4", "Cessna 172"]  # names with spaces occur in the release
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    out: dict[str, Any] = {"classes": variants}
    number = 1000000
    for split in ("train", "val", "test"):
        lines = []
        for k in range(per_split):
            number += 1
            write_image(base / "images" / f"{number}.jpg", 16, seed=number)
            lines.append((str(number), variants[k % len(variants)]))
        (base / f"images_variant_{split}.txt").write_text("".join(f"{i} {v}\n" for i, v in lines))
        out[split] = lines
    return out


def make_chexpert(root: str | Path, n_train: int = 6, n_valid: int = 3) -> dict[str, Any]:
    """``root/CheXpert-v1.0-small/{train,valid}.csv`` + ``train/patientX/study1/*.jpg``."""
    import pandas as pd

    base = Path(root) / "CheXpert-v1.0-small"
    labels = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    columns = [
        "Path",
        "Sex",
        "Age",
        "Frontal/Lateral",
        "AP/PA",
        "No Finding",
        "Enlarged Cardiomediastinum",
        "Cardiomegaly",
        "Lung Opacity",
        "Lung Lesion",
        "Edema",
        "Consolidation",
        "Pneumonia",
        "Atelectasis",
        "Pneumothorax",
        "Pleural Effusion",
        "Pleural Other",
        "Fracture",
        "Support Devices",
    ]
    values = ["1.0", "0.0", "-1.0", ""]
    out: dict[str, Any] = {}
    for split, n in (("train", n_train), ("valid", n_valid)):
        rows = []
        for i in range(n):
            view = "frontal" if i % 3 else "lateral"
            rel = f"{split}/patient{i:05d}/study1/view1_{view}.jpg"
            write_image(base / rel, 16, seed=i + (100 if split == "valid" else 0))
            row = {c: "" for c in columns}
            row.update(
                {
                    "Path": f"CheXpert-v1.0-small/{rel}",
                    "Sex": "Female",
                    "Age": "50",
                    "Frontal/Lateral": view.capitalize(),
                    "AP/PA": "AP",
                }
            )
            for j, name in enumerate(labels):
                row[name] = values[(i + j) % 4]
            rows.append(row)
        pd.DataFrame(rows, columns=columns).to_csv(base / f"{split}.csv", index=False)
        out[split] = rows
    return out


def make_visda(
    root: str | Path, per_class: int = 2, classes: Sequence[str] = ("aeroplane", "bicycle", "bus")
) -> dict[str, Any]:
    """``root/{train,validation}/<class>/*`` + ``image_list.txt`` lines ``<class>/<file> <k>``."""
    out: dict[str, Any] = {}
    for directory, ext in (("train", ".png"), ("validation", ".jpg")):
        lines = []
        for c, name in enumerate(classes):
            for k in range(per_class):
                rel = f"{name}/{directory}_{c}_{k}{ext}"
                write_image(Path(root) / directory / rel, 16, seed=c * 10 + k)
                lines.append((rel, c))
        (Path(root) / directory / "image_list.txt").write_text(
            "".join(f"{p} {c}\n" for p, c in lines)
        )
        out[directory] = lines
    return out


def make_cub(root: str | Path, n_classes: int = 3, per_class: int = 3) -> dict[str, Any]:
    """``root/CUB_200_2011/{images/, images.txt, image_class_labels.txt, train_test_split.txt,
    classes.txt}``; returns ``{"train": [(rel, label0)], "test": [...], "classes": [...]}``."""
    base = Path(root) / "CUB_200_2011"
    classes = [f"{c + 1:03d}.Bird_{c}" for c in range(n_classes)]
    images, labels, split, out = [], [], [], {"train": [], "test": [], "classes": classes}
    image_id = 0
    for c, name in enumerate(classes):
        for k in range(per_class):
            image_id += 1
            rel = f"{name}/Bird_{c}_{k:04d}.jpg"
            write_image(base / "images" / rel, 16, seed=image_id)
            is_train = k % 3 != 2
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {int(is_train)}")
            out["train" if is_train else "test"].append((f"images/{rel}", c))
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (base / "classes.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(classes)))
    return out


# --------------------------------------------------------------------------------- ImageNet


def make_imagenet(
    root: str | Path, wnids: Sequence[str], per_class: int = 2, *, val: str = "folders"
) -> list[str]:
    """``root/train/<wnid>/<wnid>_<k>.JPEG`` and ``root/val/`` as wnid folders or, with
    ``val="flat"``, flat ``ILSVRC2012_val_%08d.JPEG`` + ``LOC_val_solution.csv``; with
    ``val="kaggle"`` as flat, under ``ILSVRC/Data/CLS-LOC/`` with the CSV at the root."""
    top = Path(root)
    root = top / "ILSVRC" / "Data" / "CLS-LOC" if val == "kaggle" else top
    rows = []
    number = 0
    for c, wnid in enumerate(sorted(wnids)):
        for k in range(per_class):
            write_image(root / "train" / wnid / f"{wnid}_{k}.JPEG", 16, seed=c * 100 + k)
            number += 1
            name = f"ILSVRC2012_val_{number:08d}"
            target = root / "val" / (wnid if val == "folders" else "") / f"{name}.JPEG"
            write_image(target, 16, seed=c * 100 + k + 50)
            rows.append(f"{name},{wnid} 1 2 10 12")
    if val != "folders":
        (top / "LOC_val_solution.csv").write_text(
            "ImageId,PredictionString\n" + "\n".join(rows) + "\n"
        )
    return sorted(wnids)


def make_imagenet_variant(
    root: str | Path, kind: str, classes: Sequence[str | int], per_class: int = 2
) -> Path:
    """ImageNet-A / -R (``imagenet-a/<wnid>/``), -Sketch (``sketch/<wnid>/``) or -V2
    (``imagenetv2-matched-frequency-format-val/<index>/``); returns the dataset dir."""
    sub = {
        "a": "imagenet-a",
        "r": "imagenet-r",
        "sketch": "sketch",
        "v2": "imagenetv2-matched-frequency-format-val",
    }[kind]
    base = Path(root) / sub
    for c, name in enumerate(classes):
        for k in range(per_class):
            write_image(base / str(name) / f"{k:04d}.jpg", 16, seed=c * 10 + k)
    if kind == "a":
        (base / "README.txt").write_text("ImageNet-A\n")
    return base


# -------------------------------------------------------------------------- revisited Oxford


def make_roxford(
    root: str | Path,
    n_db: int = 12,
    n_q: int = 3,
    *,
    name: str = "roxford5k",
    size: tuple[int, int] = (48, 40),
    numpy_arrays: bool = False,
) -> dict[str, Any]:
    """``root/<name>/{jpg/*.jpg, gnd_<name>.pkl}`` in the revisitop layout.

    The gnd pickle holds plain dicts and lists (``numpy_arrays=True`` stores the index
    lists as numpy arrays, as some re-exports do). Returns the gnd dict written.
    """
    base = Path(root) / name
    prefix = "oxford" if "oxford" in name else "paris"
    imlist = [f"{prefix}_db_{i:04d}" for i in range(n_db)]
    qimlist = [f"{prefix}_q_{i:02d}" for i in range(n_q)]
    for i, image in enumerate(imlist):
        write_image(base / "jpg" / f"{image}.jpg", size, seed=i)
    for i, image in enumerate(qimlist):
        write_image(base / "jpg" / f"{image}.jpg", size, seed=1000 + i)
    gnd = []
    for q in range(n_q):
        easy = [k for k in range(n_db) if k % n_q == q][:2]
        hard = [k for k in range(n_db) if k % n_q == q][2:3]
        junk = [k for k in range(n_db) if k % n_q == q][3:]
        bbx = [2.0 + q, 3.4, 30.6 - q, 35.0]
        entry: dict[str, Any] = {"easy": easy, "hard": hard, "junk": junk, "bbx": bbx}
        if numpy_arrays:
            entry = {k: np.asarray(v) for k, v in entry.items()}
        gnd.append(entry)
    data = {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}
    with open(base / f"gnd_{name}.pkl", "wb") as fh:
        pickle.dump(data, fh)
    return data


# ------------------------------------------------------------------------------ webdataset


def make_webdataset(
    root: str | Path,
    shards: int = 2,
    per_shard: int = 3,
    *,
    prefix: str = "train",
    label: str = "cls",
    size: int = 16,
) -> list[tuple[str, int]]:
    """Uncompressed shards ``root/<prefix>-%06d.tar`` of ``key.jpg`` + ``key.<label>``.

    ``label`` is ``cls`` (integer text), ``json`` (``{"label": k}``) or ``txt`` (class
    name ``c<k>``). Returns ``[(id, label)]`` in reading order.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for s in range(shards):
        name = f"{prefix}-{s:06d}.tar"
        with tarfile.open(root / name, "w") as tar:
            for k in range(per_shard):
                key = f"sample{s:02d}{k:03d}"
                target = (s * per_shard + k) % 3
                payload = {
                    "cls": str(target).encode(),
                    "json": json.dumps({"label": target}).encode(),
                    "txt": f"c{target}".encode(),
                }[label]
                for ext, data in (("jpg", image_bytes(size, seed=s * 100 + k)), (label, payload)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                out.append((f"{name}/{key}", target))
    return out


# ------------------------------------------------------------------------------- detection
SHAPE_CLASSES = ("square", "disc", "triangle")


def _shape_polygon(kind: str, x: float, y: float, w: float, h: float) -> list[tuple[float, float]]:
    if kind == "square":
        return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    if kind == "triangle":
        return [(x + w / 2, y), (x + w, y + h), (x, y + h)]
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    return [(x + w / 2 + w / 2 * np.cos(a), y + h / 2 + h / 2 * np.sin(a)) for a in angles]


def _background(size: tuple[int, int], seed: int) -> Image.Image:
    """A dull gradient with mild noise: objects stand out, as in a photo of a scene."""
    return random_image(size, seed=seed, base=(60, 140), slope=0.3, noise=6.0)


def _polygon_area(points: Sequence[tuple[float, float]]) -> float:
    pts = np.asarray(points, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def make_coco_shapes(
    root: str | Path,
    splits: dict[str, int] | None = None,
    *,
    size: int = 128,
    max_objects: int = 3,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """A COCO-format set of coloured shapes with boxes and polygon masks.

    Layout (the packaged ``coco_format`` entry's): ``root/annotations/<split>.json`` +
    ``root/images/<split>/img_XXXX.png``. Categories: 1 square, 2 disc, 3 triangle, each
    drawn in its own colour family; 1..``max_objects`` objects of 14-60 px per image.
    Returns the ground-truth dict written per split."""
    from PIL import ImageDraw

    root = Path(root)
    colours = {"square": (220, 40, 40), "disc": (40, 200, 60), "triangle": (50, 80, 230)}
    out: dict[str, dict[str, Any]] = {}
    for split, n in (splits or {"train": 24, "val": 8}).items():
        rng = np.random.default_rng([seed, len(split), n])
        images, annotations = [], []
        for i in range(n):
            image = _background((size, size), _seed("coco", split, i, seed))
            draw = ImageDraw.Draw(image)
            name = f"img_{i:04d}.png"
            for _ in range(int(rng.integers(1, max_objects + 1))):
                c = int(rng.integers(0, len(SHAPE_CLASSES)))
                kind = SHAPE_CLASSES[c]
                w, h = (float(v) for v in rng.uniform(14, 60, 2))
                x, y = float(rng.uniform(0, size - w)), float(rng.uniform(0, size - h))
                polygon = _shape_polygon(kind, x, y, w, h)
                tint = np.clip(np.asarray(colours[kind]) + rng.integers(-25, 26, 3), 0, 255)
                draw.polygon(polygon, fill=tuple(int(v) for v in tint))
                xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": c + 1,
                        "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                        "area": _polygon_area(polygon),
                        "iscrowd": 0,
                        "segmentation": [[float(v) for p in polygon for v in p]],
                    }
                )
            path = root / "images" / split / name
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        gt = {
            "info": {"description": "bobx test shapes"},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k + 1, "name": c} for k, c in enumerate(SHAPE_CLASSES)],
        }
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{split}.json").write_text(json.dumps(gt))
        out[split] = gt
    return out


def _draw_car(draw: Any, x: float, y: float, w: float, h: float, tint: Sequence[int]) -> None:
    """A car as both generators draw it: a coloured body, a window band, two dark wheels."""
    draw.rectangle([x, y + h * 0.3, x + w, y + h * 0.8], fill=tuple(tint))
    draw.rectangle(
        [x + w * 0.2, y, x + w * 0.8, y + h * 0.35], fill=tuple(int(v * 0.6) for v in tint)
    )
    r = h * 0.2
    for cx in (x + w * 0.25, x + w * 0.75):
        draw.ellipse([cx - r, y + h - 2 * r, cx + r, y + h], fill=(20, 20, 20))


def _place(
    rng: np.random.Generator, size: tuple[int, int], lo: float, hi: float
) -> tuple[float, ...]:
    w = float(rng.uniform(lo, hi))
    h = w * float(rng.uniform(0.55, 0.75))
    x = float(rng.uniform(0, size[0] - w - 1))
    y = float(rng.uniform(size[1] * 0.3, size[1] - h - 1))
    return x, y, w, h


def make_voc(
    root: str | Path,
    n_images: int = 12,
    *,
    size: tuple[int, int] = (160, 96),
    cars: tuple[int, int] = (1, 3),
    others: int = 1,
    seed: int = 0,
    list_file: str | None = None,
) -> list[dict[str, Any]]:
    """Sim10k's layout: ``root/JPEGImages/<k>.jpg`` + ``root/Annotations/<k>.xml`` (VOC).

    Each image holds ``cars`` (min, max) cars and ``others`` "person" boxes (grey bars),
    in VOC's 1-based inclusive pixel coordinates. ``list_file`` also writes
    ``root/ImageSets/Main/<list_file>.txt`` listing every stem. Returns per image
    ``{"stem", "cars": [(x1, y1, x2, y2) 0-based], "persons": [...]}``."""
    from PIL import ImageDraw

    root = Path(root)
    for sub in ("Annotations", "JPEGImages"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, n_images])
    out = []
    for i in range(n_images):
        stem = f"{3384000 + i}"
        image = _background(size, _seed("voc", i, seed))
        draw = ImageDraw.Draw(image)
        objects = []
        for kind, count in (("car", int(rng.integers(cars[0], cars[1] + 1))), ("person", others)):
            for _ in range(count):
                x, y, w, h = (
                    _place(rng, size, 18, 48) if kind == "car" else _place(rng, size, 6, 10)
                )
                if kind == "car":
                    _draw_car(draw, x, y, w, h, rng.integers(120, 256, 3))
                else:
                    h = w * 3
                    y = min(y, size[1] - h - 1)
                    draw.rectangle([x, y, x + w, y + h], fill=(150, 150, 150))
                x1, y1, x2, y2 = int(round(x)), int(round(y)), int(round(x + w)), int(round(y + h))
                objects.append((kind, (x1, y1, x2, y2)))
        image.save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
        xml = [
            "<annotation>",
            "  <folder>VOC2012</folder>",
            f"  <filename>{stem}.jpg</filename>",
            f"  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>",
        ]
        for kind, (x1, y1, x2, y2) in objects:
            xml += [
                "  <object>",
                f"    <name>{kind}</name><pose>Unspecified</pose><truncated>0</truncated>"
                "<difficult>0</difficult>",
                f"    <bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
                f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>",
                "  </object>",
            ]
        xml.append("</annotation>")
        (root / "Annotations" / f"{stem}.xml").write_text("\n".join(xml) + "\n")
        out.append(
            {
                "stem": stem,
                "cars": [b for k, b in objects if k == "car"],
                "persons": [b for k, b in objects if k == "person"],
            }
        )
    if list_file:
        target = root / "ImageSets" / "Main" / f"{list_file}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(f"{o['stem']}\n" for o in out))
    return out


def make_cityscapes(
    root: str | Path,
    split: str = "val",
    n_images: int = 6,
    *,
    cities: Sequence[str] = ("frankfurt", "lindau"),
    size: tuple[int, int] = (256, 128),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Cityscapes' layout: ``root/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` +
    ``root/gtFine/<split>/<city>/<stem>_gtFine_polygons.json``.

    Each image holds 1-3 cars (polygon = the car's outline), one ``cargroup`` region,
    and ``road`` / ``person`` polygons the reader must ignore. Returns per image
    ``{"rel", "cars": [polygon points], "groups": [...]}`` in native pixels."""
    from PIL import ImageDraw

    root = Path(root)
    rng = np.random.default_rng([seed, n_images, len(split)])
    out = []
    for i in range(n_images):
        city = cities[i % len(cities)]
        stem = f"{city}_{i:06d}_000019"
        image = _background(size, _seed("cityscapes", split, i, seed))
        draw = ImageDraw.Draw(image)
        objects: list[dict[str, Any]] = [
            {
                "label": "road",
                "polygon": [
                    [0, size[1] - 1],
                    [size[0] - 1, size[1] - 1],
                    [size[0] - 1, size[1] // 2],
                    [0, size[1] // 2],
                ],
            }
        ]
        cars, groups = [], []
        for _ in range(int(rng.integers(1, 4))):
            x, y, w, h = _place(rng, size, 28, 70)
            _draw_car(draw, x, y, w, h, rng.integers(120, 256, 3))
            poly = [
                [int(x), int(y + h * 0.3)], [int(x + w * 0.2), int(y)], [int(x + w * 0.8), int(y)],
                [int(x + w), int(y + h * 0.3)], [int(x + w), int(y + h)], [int(x), int(y + h)],
            ]  # fmt: skip
            objects.append({"label": "car", "polygon": poly})
            cars.append(poly)
        gx, gy = float(rng.uniform(0, size[0] - 40)), float(size[1] * 0.3)
        group = [
            [int(gx), int(gy)],
            [int(gx + 30), int(gy)],
            [int(gx + 30), int(gy + 10)],
            [int(gx), int(gy + 10)],
        ]
        objects.append({"label": "cargroup", "polygon": group})
        groups.append(group)
        objects.append({"label": "person", "polygon": [[5, 5], [9, 5], [9, 20], [5, 20]]})
        rel = f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / rel)
        gt_path = root / "gtFine" / split / city / f"{stem}_gtFine_polygons.json"
        gt_path.parent.mkdir(parents=True, exist_ok=True)
        gt_path.write_text(
            json.dumps({"imgHeight": size[1], "imgWidth": size[0], "objects": objects})
        )
        out.append({"rel": rel, "cars": cars, "groups": groups})
    return out

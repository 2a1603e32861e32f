"""``ImageSplit``: the ordered images of one dataset split, loaded lazily.

An :class:`ImageSplit` is plain data (ids, labels, ground truth, reader knobs) plus a
*source* that turns a row number into a PIL image. Sources hold paths and offsets,
never open files, so a split pickles cheaply into DataLoader worker processes and
each worker opens what it reads.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np
from PIL import Image

from featcache import provenance
from featcache.errors import DataError

#: File extensions read as images by the folder-style readers (compared lower-case).
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)

_SKIP_HINT = "fix or remove it (or extract with --on-bad-image skip)"


class ImageSource(Protocol):
    """Turns row ``i`` of a split into an image; must be picklable and hold no open files."""

    def load(self, i: int) -> Image.Image: ...

    def describe(self, i: int) -> str: ...


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB; 16-bit greyscale is scaled to 8 bits (``convert`` would clip it at 255)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        pixels = np.asarray(image).astype(np.uint16) >> 8
        image = Image.fromarray(pixels.astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def decode_image(data: str | Path | io.BytesIO, name: str) -> Image.Image:
    """Open and fully decode an image; DataError naming ``name`` when it cannot be read."""
    try:
        with Image.open(data) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError as exc:
        raise DataError(f"Missing image {name}; check the data root or the file list.") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"Corrupt or unreadable image {name} ({exc}); {_SKIP_HINT}.") from exc


def safe_relpath(raw: object, *, where: str) -> str:
    """Return ``raw`` as a normalised POSIX path that stays inside its root.

    Absolute paths, drive letters, ``..`` parts and empty names are refused with a
    DataError naming ``where`` (the list file and row), so a file list can never
    make a reader open something outside the data root. Backslashes count as
    separators.
    """
    text = str(raw).strip().replace("\\", "/")
    pure = PurePosixPath(text)
    if (
        not text
        or pure.is_absolute()
        or (len(text) > 1 and text[1] == ":")
        or any(part == ".." for part in pure.parts)
        or "\x00" in text
    ):
        raise DataError(
            f"{where}: image path {str(raw)!r} is absolute or leaves the data root; "
            "list paths relative to the dataset directory."
        )
    return pure.as_posix()


class FileSource:
    """Images stored as files under ``root``; ``boxes`` optionally crops row ``i``."""

    def __init__(
        self,
        root: str | Path,
        relpaths: Sequence[str],
        boxes: Sequence[Sequence[float] | None] | None = None,
    ) -> None:
        self.root = str(root)
        self.relpaths = list(relpaths)
        self.boxes = None if boxes is None else [None if b is None else tuple(b) for b in boxes]

    def describe(self, i: int) -> str:
        return os.path.join(self.root, self.relpaths[i])

    def load(self, i: int) -> Image.Image:
        path = self.describe(i)
        image = decode_image(path, path)
        box = None if self.boxes is None else self.boxes[i]
        if box is not None:
            # PIL rounds float boxes; a box beyond the image pads with black (as revisitop).
            image = image.crop(box)  # type: ignore[arg-type]
        return image


class TarSource:
    """Members of uncompressed tar shards, read by byte offset (no tar parsing on load)."""

    def __init__(self, shards: Sequence[str], entries: Sequence[tuple[int, int, int, str]]) -> None:
        self.shards = list(shards)
        self.entries = list(entries)  # (shard index, data offset, size, member name)

    def describe(self, i: int) -> str:
        shard, _, _, member = self.entries[i]
        return f"{self.shards[shard]}:{member}"

    def load(self, i: int) -> Image.Image:
        shard, offset, size, _ = self.entries[i]
        name = self.describe(i)
        try:
            with open(self.shards[shard], "rb") as fh:
                fh.seek(offset)
                data = fh.read(size)
        except OSError as exc:
            raise DataError(f"Cannot read {name}: {exc}.") from exc
        if len(data) != size:
            raise DataError(f"Truncated tar member {name}; re-create the shard.")
        return decode_image(io.BytesIO(data), name)


def tar_member_bytes(path: str, member: tarfile.TarInfo) -> bytes:
    """Bytes of one (small) member, for reading labels while indexing a shard."""
    with open(path, "rb") as fh:
        fh.seek(member.offset_data)
        return fh.read(member.size)


class ImageSplit:
    """The ordered images of one split of one dataset.

    Attributes:
        ids: ordered, unique keys (image key or path relative to the dataset directory).
        labels: ``(N,)`` int64 (-1 when unlabelled) or ``(N, C)`` int8 for multi-label.
        meta: dataset-level ground truth evaluators need (JSON-able); ``{}`` otherwise.
        params: every reader knob that changes the bytes or labels (goes into the cache key).
        classes: class names in label order when the layout names them, else ``None``.
    """

    def __init__(
        self,
        ids: Sequence[str],
        labels: np.ndarray,
        source: ImageSource,
        *,
        meta: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        classes: Sequence[str] | None = None,
        dataset: str = "",
        split: str = "",
    ) -> None:
        self.ids = [str(x) for x in ids]
        labels = np.asarray(labels)
        self.labels = labels.astype(np.int8 if labels.ndim == 2 else np.int64, copy=False)
        self.meta = dict(meta or {})
        self.params = dict(params or {})
        self.classes = None if classes is None else [str(c) for c in classes]
        self.dataset, self.split = dataset, split
        self._source = source
        where = f"{dataset}/{split}" if dataset else "split"
        if self.labels.ndim not in (1, 2) or len(self.labels) != len(self.ids):
            raise DataError(
                f"{where}: {len(self.ids)} ids but labels of shape {self.labels.shape}."
            )
        if len(set(self.ids)) != len(self.ids):
            seen: set[str] = set()
            for x in self.ids:
                if x in seen:
                    raise DataError(f"{where}: duplicate image id {x!r}; ids must be unique.")
                seen.add(x)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.labels.shape))
        return f"ImageSplit({self.dataset}/{self.split}, n={len(self)}, labels={shape})"

    def load(self, i: int) -> Image.Image:
        """Row ``i`` as an RGB image; DataError naming the file if it cannot be read."""
        if not 0 <= i < len(self.ids):
            raise IndexError(f"row {i} out of range for {len(self.ids)} images")
        return self._source.load(i)

    def describe(self, i: int) -> str:
        """Where row ``i`` lives (a path, or ``shard:member``), for messages."""
        return self._source.describe(i)

    def ids_digest(self) -> str:
        """sha256 of the ordered id list (:func:`featcache.provenance.digest`)."""
        return provenance.digest(self.ids)

    def head(self, limit: int | None) -> ImageSplit:
        """The first ``limit`` rows (all when ``None``); row ``i`` loads the same image."""
        if limit is None or limit >= len(self.ids):
            return self
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        return ImageSplit(
            self.ids[:limit],
            self.labels[:limit],
            self._source,
            meta=self.meta,
            params=self.params,
            classes=self.classes,
            dataset=self.dataset,
            split=self.split,
        )

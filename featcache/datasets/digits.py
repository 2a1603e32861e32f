"""The built-in ``digits`` dataset: scikit-learn's 1,797 real 8x8 handwritten digits.

The offline default: it ships with scikit-learn, so it needs no data root and no
download. Each 8x8 image (16 grey levels, 0..16) is scaled to 0..255, upscaled to
``size`` x ``size`` (default 32) with ``resample`` (default ``nearest``, which keeps the
original pixels as exact blocks; the backbone's own transform resizes further) and
repeated over three channels. Splits: ``train`` (1,347) and ``test`` (450) from
``train_test_split(test_size=450, random_state=0, stratify=y)``, each in ascending
original order, plus ``all`` (1,797) when the manifest lists it. Ids are
``digits/<original index>``; labels are the digits 0..9.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from featcache.datasets._common import ReadContext
from featcache.datasets.split import ImageSplit
from featcache.errors import DataError

TEST_SIZE = 450
SEED = 0
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch: Any = load_digits()
    pixels = np.rint(np.asarray(bunch.images, np.float64) * (255.0 / 16.0)).astype(np.uint8)
    return pixels, np.asarray(bunch.target, np.int64)


@lru_cache(maxsize=4)
def split_rows(split: str) -> np.ndarray:
    """Row indices (into ``load_digits()``) of ``split``, ascending."""
    _, labels = _digits()
    rows = np.arange(len(labels))
    if split == "all":
        return rows
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(rows, test_size=TEST_SIZE, random_state=SEED, stratify=labels)
    if split == "train":
        return np.sort(train)
    if split == "test":
        return np.sort(test)
    raise DataError(f"The digits dataset has splits train, test and all, not {split!r}.")


class DigitsSource:
    """Rows of ``load_digits``; the array is (re)built per process on first use."""

    def __init__(self, rows: list[int], size: int, resample: str) -> None:
        self.rows, self.size, self.resample = rows, size, resample

    def describe(self, i: int) -> str:
        return f"sklearn load_digits()[{self.rows[i]}]"

    def load(self, i: int) -> Image.Image:
        pixels, _ = _digits()
        image = Image.fromarray(pixels[self.rows[i]], mode="L")
        image = image.resize((self.size, self.size), _RESAMPLE[self.resample])
        return image.convert("RGB")


def read_digits(ctx: ReadContext) -> ImageSplit:
    size = int(ctx.option("size", 32))
    if not 8 <= size <= 1024:
        raise DataError(f"{ctx.where}: option size must be in 8..1024, not {size}.")
    resample = str(ctx.option("resample", "nearest"))
    rows = split_rows(ctx.split)
    _, labels = _digits()
    ids = [f"digits/{r:04d}" for r in rows]
    return ImageSplit(
        ids,
        labels[rows],
        DigitsSource(rows.tolist(), size, resample),
        params={"size": size, "resample": resample},
        classes=[str(d) for d in range(10)],
        dataset=ctx.spec.name,
        split=ctx.split,
    )

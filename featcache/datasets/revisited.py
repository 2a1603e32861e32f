"""Revisited Oxford / Paris (Radenovic et al. 2018, the ``revisitop`` layout).

Layout::

    <root>/roxford5k/  jpg/<name>.jpg   gnd_roxford5k.pkl
    <root>/rparis6k/   jpg/<name>.jpg   gnd_rparis6k.pkl

The gnd pickle is a dict ``{"imlist": [...], "qimlist": [...], "gnd": [{"easy": [...],
"hard": [...], "junk": [...], "bbx": [x1, y1, x2, y2]}, ...]}`` (one ``gnd`` entry per
query; index lists point into ``imlist``). It is loaded with the restricted unpickler
(no globals beyond numpy array rebuilding), validated, and copied as plain lists into
``ImageSplit.meta`` of both splits.

Splits: ``database`` (imlist order) and ``query`` (qimlist order). Queries are not part
of the database. Query images are cropped to ``bbx`` unless ``query_crop="none"``;
the choice is recorded in ``params["query_crop"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evaluators.retrieval import load_gnd
from featcache.datasets._common import ReadContext, find_base
from featcache.datasets.safepickle import safe_load
from featcache.datasets.split import FileSource, ImageSplit, safe_relpath
from featcache.errors import DataError

GND_KEYS = ("easy", "hard", "junk")


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def validate_gnd(raw: Any, path: Path) -> dict[str, Any]:
    """Check the structure of a loaded gnd dict and return it as JSON-able lists.

    The file's layout and image names are checked here; the index lists and boxes of
    each query by :func:`evaluators.retrieval.load_gnd` (in range, no repeats, easy /
    hard / junk disjoint, finite boxes), the validator the evaluation runs on them."""
    bad = f"{path} is not a revisitop ground-truth file"
    if not isinstance(raw, dict) or not {"imlist", "qimlist", "gnd"} <= set(raw):
        raise DataError(f"{bad}: expected a dict with imlist, qimlist and gnd; re-download it.")
    lists = {}
    for key in ("imlist", "qimlist"):
        names = _plain(raw[key])
        if not isinstance(names, list) or not all(isinstance(x, str) and x for x in names):
            raise DataError(f"{bad}: {key!r} must be a list of image names.")
        if len(set(names)) != len(names):
            raise DataError(f"{bad}: {key!r} repeats an image name.")
        lists[key] = names
    entries = raw["gnd"]
    if not isinstance(entries, list | tuple) or len(entries) != len(lists["qimlist"]):
        raise DataError(f"{bad}: 'gnd' must hold one entry per query ({len(lists['qimlist'])}).")
    n = len(lists["imlist"])
    for q, entry in enumerate(entries):
        where = f"{path}: gnd[{q}]"
        if not isinstance(entry, dict) or not set(GND_KEYS) <= set(entry) or "bbx" not in entry:
            raise DataError(f"{where} must be a dict with easy, hard, junk and bbx.")
        for key in GND_KEYS:  # numpy would read True as the index 1
            values = _plain(entry[key])
            if isinstance(values, list) and any(isinstance(k, bool) for k in values):
                raise DataError(
                    f"{where}[{key!r}]: expected a list of indices into imlist (0..{n - 1})."
                )
    checked = load_gnd({**lists, "gnd": entries}, source=str(path))
    gnd = []
    for q, (entry, clean) in enumerate(zip(entries, checked, strict=True)):
        item: dict[str, Any] = {key: clean[key].tolist() for key in GND_KEYS}
        bbx = clean.get("bbx")  # 4 finite floats, or absent for a null bbx
        if bbx is not None:
            if (
                not all(isinstance(v, int | float) for v in _plain(entry["bbx"]))
                or bbx[2] <= bbx[0]
                or bbx[3] <= bbx[1]
            ):
                raise DataError(
                    f"{path}: gnd[{q}]['bbx'] must be [x1, y1, x2, y2] with x1 < x2, y1 < y2."
                )
            bbx = list(bbx)
        item["bbx"] = bbx
        gnd.append(item)
    return {"gnd": gnd, "imlist": lists["imlist"], "qimlist": lists["qimlist"]}


def read_revisited(ctx: ReadContext) -> ImageSplit:
    """One split of a revisited Oxford / Paris dataset (see the module docstring).

    ``options.gnd_file`` defaults to ``gnd_<dataset name>.pkl``; ``options.image_dir``
    (``jpg``) and ``options.ext`` (``.jpg``) locate the images.
    """
    gnd_file = ctx.option("gnd_file", f"gnd_{ctx.spec.name}.pkl")
    gnd_rel = safe_relpath(gnd_file, where=f"{ctx.spec.source} gnd_file")
    base = find_base(
        ctx, (ctx.spec.name, Path(gnd_rel).stem.removeprefix("gnd_")), markers=(gnd_rel,)
    )
    gnd_path = base / gnd_rel
    meta = validate_gnd(safe_load(gnd_path), gnd_path)
    image_dir = safe_relpath(ctx.option("image_dir", "jpg"), where=f"{ctx.spec.source} image_dir")
    ext = str(ctx.option("ext", ".jpg"))
    if ctx.split == "database":
        names, boxes, params = meta["imlist"], None, {}
    else:
        names = meta["qimlist"]
        crop = ctx.query_crop == "bbx"
        boxes = [g["bbx"] if crop else None for g in meta["gnd"]]
        params = {"query_crop": ctx.query_crop}
    ids = [f"{image_dir}/{safe_relpath(n + ext, where=str(gnd_path))}" for n in names]
    labels = np.full(len(ids), -1, np.int64)
    return ImageSplit(
        ids,
        labels,
        FileSource(base, ids, boxes),
        meta=meta,
        params=params,
        dataset=ctx.spec.name,
        split=ctx.split,
    )

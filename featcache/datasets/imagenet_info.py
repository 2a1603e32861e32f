"""ImageNet-1k class indices: the canonical sorted wnid list and the 200-class subsets.

Class index ``k`` of ImageNet-1k is the ``k``-th wnid in sorted order (the order of
``train/`` folders that every ImageFolder-style loader uses). ImageNet-A and
ImageNet-R each cover 200 of those classes (Hendrycks et al.). The lists are never
typed here: they come from ``evaluators.ood`` (``IMAGENET_A_CLASSES`` /
``IMAGENET_R_CLASSES``) when that module provides them, else from the published
files timm ships in ``timm/data/_info`` (read as text, without importing timm).
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache
from pathlib import Path

from featcache.errors import DataError, UnavailableError, UnknownNameError

#: Symbolic names a manifest may use for ``class_subset``.
SUBSETS = {"imagenet_a": "IMAGENET_A_CLASSES", "imagenet_r": "IMAGENET_R_CLASSES"}


def _timm_info(filename: str) -> list[str]:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise UnavailableError(
            f"The ImageNet class lists come from timm's data files ({filename}); "
            "install timm (pip install timm)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info" / filename
    try:
        return path.read_text().split()
    except OSError as exc:
        raise UnavailableError(f"Cannot read {path} ({exc}); reinstall timm.") from exc


@lru_cache(maxsize=1)
def in1k_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k wnids in class-index (sorted) order."""
    wnids = tuple(_timm_info("imagenet_synsets.txt"))
    if len(wnids) != 1000 or list(wnids) != sorted(wnids):
        raise UnavailableError("timm's imagenet_synsets.txt is not 1,000 sorted wnids.")
    return wnids


def wnid_to_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(in1k_wnids())}


def _from_evaluators(constant: str) -> tuple[int, ...] | None:
    try:
        module = importlib.import_module("evaluators.ood")
    except ImportError:
        return None
    values = getattr(module, constant, None)
    if values is None:
        return None
    values = list(values)
    if values and all(isinstance(v, str) for v in values):
        index = wnid_to_index()
        return tuple(sorted(index[v] for v in values))
    return tuple(sorted(int(v) for v in values))


@lru_cache(maxsize=4)
def subset_indices(name: str) -> tuple[int, ...]:
    """The ascending IN-1k indices of a named 200-class subset (``imagenet_a`` / ``imagenet_r``)."""
    if name not in SUBSETS:
        raise UnknownNameError("class subset", name, SUBSETS)
    found = _from_evaluators(SUBSETS[name])
    if found is None:
        found = tuple(sorted(int(x) for x in _timm_info(f"{name}_indices.txt")))
        wnids = _timm_info(f"{name}_synsets.txt")
        index = wnid_to_index()
        if sorted(index[w] for w in wnids) != list(found):
            raise UnavailableError(f"timm's {name} index and synset files disagree.")
    if len(found) != 200 or len(set(found)) != 200 or not all(0 <= k < 1000 for k in found):
        raise UnavailableError(f"The {name} class list is not 200 distinct IN-1k indices.")
    return found


def index_of_wnid(wnid: str, *, where: str) -> int:
    index = wnid_to_index().get(wnid)
    if index is None:
        raise DataError(f"{where}: folder {wnid!r} is not an ImageNet-1k wnid; remove it.")
    return index

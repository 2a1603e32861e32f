"""A restricted unpickler for the dataset files that are pickles (CIFAR batches, rOxford gnd).

``pickle.load`` runs whatever callable a file names, so a downloaded pickle is code.
:func:`safe_load` allows no global at all except the handful numpy needs to rebuild an
array, a dtype or a scalar from bytes (both the ``numpy.core`` spelling written by
numpy < 2 and Python 2, and the ``numpy._core`` spelling of numpy >= 2), plus
``_codecs.encode`` limited to latin-1 text, which protocol-2 pickles written by
Python 3 use to carry raw bytes. Anything else (``os.system``, ``builtins.eval``, a
class) raises :class:`~featcache.errors.DataError` before it is called.

Everything else a pickle may hold (dict, list, tuple, str, bytes, int, float, bool,
None) needs no global. Object-dtype arrays are refused after loading, since their
items could only have come through the same restricted path anyway but are never
useful here; so are cycles and structures whose shared references expand beyond
:data:`MAX_ITEMS` items (a 12 KB file can describe 1000^6 of them), checked in time
proportional to the file, not to the expansion.
"""

from __future__ import annotations

import codecs
import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from featcache.errors import DataError


def _numpy_module(suffix: str) -> Any:
    try:
        return importlib.import_module(f"numpy._core.{suffix}")
    except ImportError:  # numpy < 2 without the _core alias
        return importlib.import_module(f"numpy.core.{suffix}")


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: latin-1 only."""
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(obj).__name__}, {encoding!r}) refused")
    return codecs.encode(obj, "latin-1", errors)


def _allowed() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_module("multiarray")
    numeric = _numpy_module("numeric")
    found: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        found[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        found[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        found[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return found


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` knows only numpy's array-rebuilding functions."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed().get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


#: Items (counted as a plain walk would meet them, shared references counted each time)
#: a pickle may expand to. CIFAR's batches hold ~20k; a crafted 12 KB file of one list
#: shared six levels deep would be 1000^6.
MAX_ITEMS = 10_000_000
MAX_DEPTH = 64


def _check_no_objects(obj: Any) -> None:
    """Refuse object-dtype arrays, cycles, nesting deeper than :data:`MAX_DEPTH` and
    structures that expand to more than :data:`MAX_ITEMS` items. Each distinct
    container is visited once (memoised by identity), so the check's own work is
    bounded by the pickle's size, whatever its shared references multiply to."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any, depth: int) -> int:
        if isinstance(node, np.ndarray):
            if node.dtype.hasobject:
                raise pickle.UnpicklingError("object-dtype arrays are not allowed")
            return 1
        if not isinstance(node, dict | list | tuple | set | frozenset):
            return 1
        ident = id(node)
        if ident in sizes:
            return sizes[ident]
        if ident in active:
            raise pickle.UnpicklingError("cyclic references are not allowed")
        if depth > MAX_DEPTH:
            raise pickle.UnpicklingError(f"nesting deeper than {MAX_DEPTH} levels")
        active.add(ident)
        children = (
            (x for pair in node.items() for x in pair) if isinstance(node, dict) else iter(node)
        )
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_ITEMS:
                raise pickle.UnpicklingError(
                    f"too many items: its shared references expand to more than {MAX_ITEMS:,}"
                )
        active.discard(ident)
        sizes[ident] = total
        return total

    size(obj, 0)


def safe_loads(data: bytes, *, name: str, encoding: str = "latin1") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; ``name`` is used in errors.

    ``encoding="latin1"`` reads Python 2 pickles (CIFAR) the way numpy expects.
    """
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
        _check_no_objects(obj)
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        OverflowError,
    ) as exc:
        raise DataError(
            f"Refused to load pickle {name}: {exc}. Only plain data and numpy arrays are "
            "accepted; re-download the file from its official source."
        ) from exc
    return obj


def safe_load(path: str | Path, *, encoding: str = "latin1") -> Any:
    """Read and :func:`safe_loads` the pickle at ``path`` (DataError if missing)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"Missing file {path}; check the dataset's data root.") from exc
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc}.") from exc
    return safe_loads(data, name=str(path), encoding=encoding)

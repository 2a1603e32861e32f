"""Loading the YAML catalogs in ``manifests/`` (and a user's own, with no code change).

Entries come from the packaged ``manifests/<kind>/*.yaml`` and then from every
directory listed in ``$BOBX_MANIFESTS`` (``os.pathsep``-separated), each holding
``<kind>/*.yaml`` or ``*.yaml`` files directly. A YAML file holds one mapping
``{name: {...fields...}}`` with any number of entries; a later directory may
override a packaged entry of the same name (the override is recorded in
``_source``).

Shared by both catalogs (:mod:`featcache.backbones`, :mod:`featcache.datasets.spec`):
:class:`FrozenMap` for mapping-valued spec fields, and the error helpers that name
the file and entry of a problem.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from featcache.errors import BobxError, ManifestError, suggest
from featcache.names import validate_name

T = TypeVar("T")
PACKAGED = Path(__file__).resolve().parent.parent / "manifests"
ENV_VAR = "BOBX_MANIFESTS"


def manifest_dirs(kind: str) -> list[Path]:
    """Directories searched for ``kind`` ("backbones" or "datasets"), in override order."""
    dirs = [PACKAGED / kind]
    for entry in filter(None, os.environ.get(ENV_VAR, "").split(os.pathsep)):
        root = Path(entry).expanduser()
        if not root.is_dir():
            raise ManifestError(
                f"${ENV_VAR} names {root}, which is not a directory; fix or unset it."
            )
        dirs.append(root / kind if (root / kind).is_dir() else root)
    return dirs


def load_entries(kind: str) -> dict[str, dict[str, Any]]:
    """Raw entries of one catalog: ``{name: fields}`` with ``_source`` (file) added."""
    entries: dict[str, dict[str, Any]] = {}
    for directory in manifest_dirs(kind):
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
            try:
                doc = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ManifestError(f"{path}: invalid YAML: {exc}".splitlines()[0]) from exc
            if not isinstance(doc, dict):
                raise ManifestError(f"{path}: expected a mapping of name -> fields.")
            for name, fields in doc.items():
                validate_name(name, kind.rstrip("s"))
                if not isinstance(fields, dict):
                    raise ManifestError(f"{path}: entry {name!r} must be a mapping of fields.")
                entries[name] = {**fields, "_source": str(path)}
    return entries


def load_valid(
    kind: str, parse: Callable[[str, dict[str, Any]], T]
) -> tuple[dict[str, T], list[str]]:
    """Every entry of catalog ``kind`` that ``parse(name, fields)`` accepts, by name, and
    the problems (error messages) of the entries it rejects with a BobxError."""
    valid: dict[str, T] = {}
    problems: list[str] = []
    try:
        entries = load_entries(kind)
    except BobxError as exc:
        return valid, [str(exc)]
    for name, fields in entries.items():
        try:
            valid[name] = parse(name, fields)
        except BobxError as exc:
            problems.append(str(exc))
    return valid, problems


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenMap(value)
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain JSON-able copy of a (frozen) value: dicts for mappings, lists for tuples."""
    if isinstance(value, Mapping):
        return {str(k): thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


class FrozenMap(Mapping[str, Any]):
    """A read-only, hashable, picklable mapping (nested lists become tuples)."""

    __slots__ = ("_data",)
    _data: dict[str, Any]

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_data", {str(k): _freeze(v) for k, v in (data or {}).items()})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self._data.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("FrozenMap is read-only")

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (thaw(self),))


def manifest_problem(kind: str, source: str, name: str, text: str) -> ManifestError:
    """``<file>: <kind> '<name>': <text>``, the error for one invalid catalog entry.

    Each catalog binds its kind: ``_problem = partial(manifest_problem, "dataset")``."""
    return ManifestError(f"{source}: {kind} {name!r}: {text}")


def check_known_fields(
    fields: Collection[str], allowed: Sequence[str], *, source: str, kind: str, name: str
) -> None:
    """ManifestError (with a near miss) when ``fields`` has a key outside ``allowed``.

    ``_source``, added by :func:`load_entries`, is always allowed."""
    unknown = sorted(set(fields) - set(allowed) - {"_source"})
    if unknown:
        near = suggest(unknown[0], allowed)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise manifest_problem(
            kind,
            source,
            name,
            f"unknown field {unknown[0]!r}{hint}; fields are {', '.join(allowed)}.",
        )


def alias_problems(
    entries: Iterable[tuple[str, Sequence[str], str]], names: Collection[str], kind: str
) -> list[str]:
    """Aliases that clash: with a ``kind`` name of ``names``, or with another entry's alias.

    ``entries`` are ``(name, aliases, source file)``; one problem line per clash."""
    problems: list[str] = []
    owner: dict[str, str] = {}
    for name, aliases, source in entries:
        for alias in aliases:
            if alias in names:
                problems.append(f"{source}: alias {alias!r} of {name!r} is also a {kind} name.")
            elif owner.setdefault(alias, name) != name:
                problems.append(
                    f"{source}: alias {alias!r} of {name!r} is also an alias of {owner[alias]!r}."
                )
    return problems

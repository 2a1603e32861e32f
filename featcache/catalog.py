"""Loading the YAML catalogs in ``manifests/`` (and a user's own, with no code change).

Entries come from the packaged ``manifests/<kind>/*.yaml`` and then from every
directory listed in ``$BOBX_MANIFESTS`` (``os.pathsep``-separated), each holding
``<kind>/*.yaml`` or ``*.yaml`` files directly. A YAML file holds one mapping
``{name: {...fields...}}`` with any number of entries; a later directory may
override a packaged entry of the same name (the override is recorded in
``_source``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from featcache.errors import ManifestError
from featcache.names import validate_name

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

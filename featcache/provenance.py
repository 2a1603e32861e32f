"""Provenance shared by feature sets and result records: who, where, when, with what."""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
import subprocess
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from evaluators.canonical import canonical_json

_VERSIONED = (
    "bobx",
    "numpy",
    "zarr",
    "torch",
    "timm",
    "open_clip_torch",
    "faiss-cpu",
    "scikit-learn",
)


def bobx_version() -> str:
    try:
        return metadata.version("bobx")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@lru_cache(maxsize=1)
def git_hash() -> str | None:
    """The git commit of the bobx source tree, or ``None`` outside a checkout."""
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that change bytes or numbers."""
    found: dict[str, str] = {}
    for dist in _VERSIONED:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


def host() -> str:
    return socket.gethostname()


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (the cache-key recipe)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], *, block: int = 2**20) -> str:
    """sha256 of a file's bytes, read in blocks (checkpoint digests in provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()

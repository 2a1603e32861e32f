"""Raw objects beside the Zarr arrays: markers, JSON documents, result records.

One small interface over the three backends bobx supports, built on the same
``zarr.abc.store.Store`` that holds the arrays, so a store URL means one place:

* ``put`` replaces an object atomically (readers see the old or the new bytes);
* ``put_new`` is *create-only*: it returns ``False`` instead of overwriting. On
  local disk it is ``os.link`` of a finished temporary file (zarr's LocalStore);
  on S3 a conditional ``PUT`` with ``If-None-Match: *``; in memory a locked check.

Markers and records only ever use ``put_new``, so concurrent writers can never
lose each other's objects.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import zarr
from zarr.abc.store import Store as ZarrStore
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, MemoryStore

from featcache.errors import StoreError

T = TypeVar("T")

#: Process-wide named memory stores, so ``memory://name`` opened twice is one store.
_MEMORY: dict[str, dict[str, Any]] = {}
_MEMORY_LOCK = threading.Lock()
#: One lock for ``put_new`` on stores without a native create-only write: two ``Store``
#: objects opened on the same ``memory://name`` must exclude each other too.
_PUT_NEW_LOCK = threading.Lock()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return sync(coro)


async def _collect(it: AsyncIterator[str]) -> list[str]:
    return [x async for x in it]


def _s3_options(storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """fsspec options for S3: explicit ones win; else the usual AWS variables."""
    opts = dict(storage_options or {})
    # other writers add objects all the time: never serve a stale cached listing
    opts.setdefault("use_listings_cache", False)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in opts:
        opts.setdefault("client_kwargs", {}).setdefault("endpoint_url", endpoint)
    return opts


def open_zarr_store(url: str, storage_options: dict[str, Any] | None = None) -> ZarrStore:
    """Map a store URL (path, ``file://``, ``s3://``, ``memory://``) to a zarr Store."""
    parsed = urlparse(url)
    scheme = parsed.scheme if len(parsed.scheme) > 1 else ""  # "C:" is a drive, not a scheme
    if scheme in ("", "file"):
        root = Path(parsed.path if scheme == "file" else url).expanduser()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"Cannot create store directory {root}: {exc}. Pass a writable --store."
            ) from exc
        return LocalStore(root)
    if scheme == "memory":
        name = (parsed.netloc + parsed.path).strip("/") or "default"
        with _MEMORY_LOCK:
            backing = _MEMORY.setdefault(name, {})
        return MemoryStore(backing)
    if scheme in ("s3", "s3a", "gs", "gcs", "az", "abfs"):
        opts = _s3_options(storage_options) if scheme.startswith("s3") else storage_options
        try:
            return FsspecStore.from_url(url, storage_options=opts)
        except Exception as exc:  # fsspec raises many types for bad URLs / credentials
            raise StoreError(f"Cannot open store {url!r}: {exc}") from exc
    raise StoreError(
        f"Unsupported store URL {url!r}: use a local path, s3://bucket/prefix or memory://name."
    )


class Objects:
    """Byte objects addressed by '/'-separated keys inside a zarr store."""

    def __init__(self, zstore: ZarrStore) -> None:
        self.zstore = zstore

    # -- reading -----------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        buf = _run(self.zstore.get(key, prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def get_json(self, key: str) -> Any | None:
        raw = self.get(key)
        return None if raw is None else json.loads(raw)

    def exists(self, key: str) -> bool:
        return bool(_run(self.zstore.exists(key)))

    def list_dir(self, prefix: str) -> list[str]:
        """Immediate children (files and folders) of ``prefix``; in-flight temporary
        files are never listed."""
        prefix = prefix.rstrip("/")
        try:
            names = set(_run(_collect(self.zstore.list_dir(prefix))))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith(".") and not n.endswith(".partial"))

    def list_groups(self, prefix: str) -> list[str]:
        """Child folders of ``prefix`` (skips zarr's own ``zarr.json`` metadata objects)."""
        return [n for n in self.list_dir(prefix) if n != "zarr.json"]

    def list_prefix(self, prefix: str) -> list[str]:
        """Every key below ``prefix`` (recursive), as full keys."""
        try:
            return sorted(_run(_collect(self.zstore.list_prefix(prefix))))
        except FileNotFoundError:
            return []

    # -- writing -----------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        _run(self.zstore.set(key, Buffer.from_bytes(data)))

    def put_json(self, key: str, obj: Any) -> None:
        self.put(key, json.dumps(obj, sort_keys=True, default=str).encode())

    def put_new(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent. Returns ``False`` if it already existed."""
        zs = self.zstore
        if isinstance(zs, LocalStore):
            return _local_put_new(Path(zs.root) / key, data)
        if (
            isinstance(zs, FsspecStore)
            and getattr(zs.fs, "protocol", None)
            and ("s3" in zs.fs.protocol or "s3a" in zs.fs.protocol)
        ):
            path = f"{zs.path.rstrip('/')}/{key}"
            try:
                _run(zs.fs._pipe_file(path, data, mode="create"))
            except Exception as exc:  # botocore ClientError: PreconditionFailed / 412
                text = str(exc)
                if (
                    "PreconditionFailed" in text
                    or "412" in text
                    or isinstance(exc, FileExistsError)
                ):
                    return False
                raise StoreError(f"Cannot write {key!r} to the S3 store: {exc}") from exc
            return True
        with _PUT_NEW_LOCK:  # memory (one process) and other fsspec stores
            if self.exists(key):
                return False
            self.put(key, data)
            return True

    def put_new_json(self, key: str, obj: Any) -> bool:
        return self.put_new(key, json.dumps(obj, sort_keys=True, default=str).encode())

    def delete(self, key: str) -> None:
        _run(self.zstore.delete(key))

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key below ``prefix``."""
        for key in self.list_prefix(prefix.rstrip("/") + "/"):
            _run(self.zstore.delete(key))


def _local_put_new(path: Path, data: bytes) -> bool:
    """Write a finished temporary file, then ``os.link`` it: atomic and create-only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def zarr_version() -> str:
    return str(zarr.__version__)

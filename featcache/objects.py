"""Raw objects beside the Zarr arrays: markers, JSON documents, result records.

One small interface over the three backends bobx supports, built on the same
``zarr.abc.store.Store`` that holds the arrays, so a store URL means one place:

* ``put`` replaces an object atomically (readers see the old or the new bytes);
* ``put_new`` is *create-only*: it returns ``False`` instead of overwriting. On
  local disk it is ``os.link`` of a finished temporary file (zarr's LocalStore);
  on S3 a conditional ``PUT`` with ``If-None-Match: *``; in memory a locked check.

Markers and records only ever use ``put_new``, so concurrent writers can never
lose each other's objects.

Every failure of the storage underneath (a full or read-only disk, a missing S3
bucket, missing credentials, an unreachable endpoint, an object that is not valid
JSON) becomes one :class:`~featcache.errors.StoreError` saying what to do
(:func:`storage_error`), never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import zarr
from zarr.abc.store import Store as ZarrStore
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, MemoryStore, WrapperStore

from featcache.errors import BobxError, StoreError

T = TypeVar("T")

#: Process-wide named memory stores, so ``memory://name`` opened twice is one store.
_MEMORY: dict[str, dict[str, Any]] = {}
_MEMORY_LOCK = threading.Lock()
#: Create-only writes to in-process stores (memory, other fsspec backends): one lock for
#: every Store object, since two of them may open the same ``memory://name``.
_PUT_NEW_LOCK = threading.Lock()

#: errno -> what it means for a store, and what to do about it.
_OS_ERRORS = {
    errno.ENOSPC: "the disk is full; free space or pass another --store",
    errno.EDQUOT: "the disk quota is exhausted; free space or pass another --store",
    errno.EROFS: "the store is on a read-only file system; pass a writable --store",
    errno.EACCES: "permission denied (the store is read-only for this user); pass a "
    "writable --store",
    errno.EPERM: "operation not permitted; pass a writable --store",
    errno.EIO: "an I/O error of the disk; check the device, then run `bobx verify`",
}


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return sync(coro)


async def _collect(it: AsyncIterator[str]) -> list[str]:
    return [x async for x in it]


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"


def storage_error(
    exc: BaseException, action: str, url: str, *, where: str | None = None
) -> StoreError | None:
    """A one-line :class:`StoreError` for a failure of the storage under a store, or
    ``None`` when ``exc`` is not one (a programming error stays a traceback). The
    message starts with ``where`` (default: "Cannot <action> in store <url>")."""
    if isinstance(exc, BobxError):
        return None
    name = type(exc).__name__
    where = where or f"Cannot {action} in store {url}"
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return StoreError(
            f"{where}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass key=/secret= to open_store."
        )
    if name in (
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ClientConnectorError",
        "ServerDisconnectedError",
    ) or (name == "ConnectionError" and not isinstance(exc, OSError)):  # botocore's
        return StoreError(
            f"{where}: cannot reach the S3 endpoint {_endpoint()} ({exc}); check "
            "AWS_ENDPOINT_URL and the network."
        )
    if isinstance(exc, FileNotFoundError) and "bucket" in str(exc).lower():
        bucket = urlparse(url).netloc
        return StoreError(
            f"{where}: the S3 bucket {bucket!r} does not exist at {_endpoint()}; create it "
            "or fix the store URL."
        )
    if isinstance(exc, PermissionError) and url.startswith(("s3://", "s3a://")):
        return StoreError(f"{where}: access denied ({exc}); check the credentials' rights.")
    if isinstance(exc, OSError) and exc.errno in _OS_ERRORS:
        return StoreError(f"{where}: {_OS_ERRORS[exc.errno]} ({exc.strerror}).")
    if name == "ClientError" or (isinstance(exc, OSError) and url.startswith(("s3://", "s3a"))):
        return StoreError(f"{where}: the S3 service refused it ({exc}).")
    return None


@contextlib.contextmanager
def storage_errors(action: str, url: str, *, where: str | None = None) -> Iterator[None]:
    """Turn failures of the storage underneath into one-line :class:`StoreError`s."""
    try:
        yield
    except Exception as exc:
        error = storage_error(exc, action, url, where=where)
        if error is None:
            raise
        raise error from exc


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
            reason = _OS_ERRORS.get(exc.errno or 0, "pass a writable --store")
            raise StoreError(f"Cannot create store directory {root}: {reason} ({exc}).") from exc
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


def base_store(zstore: ZarrStore) -> ZarrStore:
    """The backend under any wrapper stores (caching, instrumentation)."""
    while isinstance(zstore, WrapperStore):
        zstore = zstore._store
    return zstore


class Objects:
    """Byte objects addressed by '/'-separated keys inside a zarr store."""

    def __init__(self, zstore: ZarrStore, url: str = "") -> None:
        self.zstore = zstore
        self.url = url or str(zstore)

    def _do(self, action: str, coro: Coroutine[Any, Any, T]) -> T:
        with storage_errors(action, self.url):
            return _run(coro)

    # -- reading -----------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        buf = self._do(f"read {key}", self.zstore.get(key, prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def get_json(self, key: str) -> Any | None:
        """The JSON object at ``key`` (``None`` when absent); StoreError when it is not JSON."""
        raw = self.get(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(
                f"Store object {key} in {self.url} is corrupt (not JSON: {exc}); "
                "run `bobx verify` to see what is damaged and how to repair it."
            ) from exc

    def exists(self, key: str) -> bool:
        return bool(self._do(f"read {key}", self.zstore.exists(key)))

    def list_dir(self, prefix: str) -> list[str]:
        """Immediate children (files and folders) of ``prefix``; in-flight temporary
        files are never listed."""
        prefix = prefix.rstrip("/")
        try:
            names = set(self._do(f"list {prefix}", _collect(self.zstore.list_dir(prefix))))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith(".") and not n.endswith(".partial"))

    def list_groups(self, prefix: str) -> list[str]:
        """Child folders of ``prefix`` (skips zarr's own ``zarr.json`` metadata objects)."""
        return [n for n in self.list_dir(prefix) if n != "zarr.json"]

    def list_prefix(self, prefix: str) -> list[str]:
        """Every key below ``prefix`` (recursive), as full keys."""
        try:
            return sorted(self._do(f"list {prefix}", _collect(self.zstore.list_prefix(prefix))))
        except FileNotFoundError:
            return []

    def sizes(self, prefix: str) -> dict[str, int]:
        """``{key: size in bytes}`` of every object below ``prefix`` (one listing where the
        backend gives sizes with it: a directory walk, an S3 listing, a dict)."""
        prefix = prefix.rstrip("/") + "/"
        zs = base_store(self.zstore)
        with storage_errors(f"list {prefix}", self.url):
            if isinstance(zs, LocalStore):
                return _local_sizes(Path(zs.root), prefix)
            if isinstance(zs, MemoryStore):
                return {k: len(v) for k, v in zs._store_dict.items() if k.startswith(prefix)}
            if isinstance(zs, FsspecStore):
                root = zs.path.rstrip("/")
                try:
                    found = _run(zs.fs._find(f"{root}/{prefix}", detail=True))
                except FileNotFoundError:
                    return {}
                return {
                    path[len(root) + 1 :] if root else path: int(info.get("size") or 0)
                    for path, info in found.items()
                    if not path.rsplit("/", 1)[-1].startswith(".")
                }
            return {
                key: int(_run(self.zstore.getsize(key)) or 0) for key in self.list_prefix(prefix)
            }

    # -- writing -----------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        self._do(f"write {key}", self.zstore.set(key, Buffer.from_bytes(data)))

    def put_json(self, key: str, obj: Any) -> None:
        self.put(key, json.dumps(obj, sort_keys=True, default=str).encode())

    def put_new(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent. Returns ``False`` if it already existed."""
        with storage_errors(f"write {key}", self.url):
            return self._put_new(key, data)

    def _put_new(self, key: str, data: bytes) -> bool:
        zs = base_store(self.zstore)
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
                error = storage_error(exc, f"write {key}", self.url)
                raise error or StoreError(f"Cannot write {key!r} to the S3 store: {exc}") from exc
            return True
        with _PUT_NEW_LOCK:  # memory (one process) and other fsspec stores
            if self.exists(key):
                return False
            self.put(key, data)
            return True

    def put_new_json(self, key: str, obj: Any) -> bool:
        return self.put_new(key, json.dumps(obj, sort_keys=True, default=str).encode())

    def delete(self, key: str) -> None:
        self._do(f"delete {key}", self.zstore.delete(key))

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key below ``prefix`` (and, on local disk, the folders left empty)."""
        prefix = prefix.rstrip("/") + "/"
        for key in self.list_prefix(prefix):
            self.delete(key)
        zs = base_store(self.zstore)
        if isinstance(zs, LocalStore):
            top = Path(zs.root) / prefix
            for current, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):  # not empty: a writer is still there
                    os.rmdir(current)


def _local_sizes(root: Path, prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    base = root / prefix
    for current, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(current).relative_to(root).as_posix()
        for name in files:
            if name.startswith(".") or name.endswith(".partial"):
                continue
            with contextlib.suppress(FileNotFoundError):  # deleted while walking
                out[f"{rel}/{name}"] = os.stat(os.path.join(current, name)).st_size
    return out


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

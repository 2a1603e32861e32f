"""The bobx store: a Zarr v3 hierarchy of feature sets, result records and artifacts.

Layout (keys are '/'-separated; every name part is a validated slug)::

    zarr.json                                      root group {"bobx_store": 1}
    features/<backbone>/<dataset>/<split>/         one feature set (a zarr group)
        embeddings  (N, D) float16|float32          chunked by rows, uncompressed
        labels      (N,) int64 | (N, C) int8        same row chunks
        ids         (N,) string                     image key / relative path
        valid       (N,) bool                       False where an image was skipped
        norms       (N,) float32                    row L2 norms (cosine search skips a pass)
        _bobx/spec.json                             create-only: cache key, shape, provenance
        _bobx/chunks/<i>.json                       create-only marker, after chunk i's data
        _bobx/complete.json                         create-only, written last: published
    records/loose/<id>.json                        one result record each, create-only
    records/packs/<id>.parquet                     compacted records (readers merge, dedupe)
    artifacts/<kind>/<backbone>/<dataset>/<name>/  arrays a job keeps (probe weights, logits)
    meta/<dataset>/<name>.json                     dataset-level ground truth (e.g. rOxford gnd)

A feature set is readable only once ``complete.json`` exists; a writer resumes
by computing only the chunks without a marker; shards own disjoint chunk ranges.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from zarr.errors import ContainsArrayError, ContainsGroupError

from evaluators._search import row_norms
from featcache import provenance
from featcache.errors import (
    IncompleteError,
    ShapeError,
    StaleCacheError,
    StoreError,
    UnknownNameError,
)
from featcache.names import validate_name
from featcache.objects import Objects, open_zarr_store
from featcache.records import COLUMNS, Record, make_record, new_record_id

STORE_FORMAT = 1
DEFAULT_STORE = "./bobx-store"
#: Target bytes per embeddings chunk; see the README's "Chunking" note for the measurement.
CHUNK_BYTES = 8 * 2**20


def default_store_url() -> str:
    return os.environ.get("BOBX_STORE") or DEFAULT_STORE


def default_chunk_rows(dim: int, itemsize: int) -> int:
    """Rows per chunk: about :data:`CHUNK_BYTES`, a power of two in [256, 65536]."""
    rows = max(1, CHUNK_BYTES // max(1, dim * itemsize))
    return int(min(65536, max(256, 2 ** int(math.log2(rows)))))


def _fs_key(backbone: str, dataset: str, split: str) -> str:
    return "/".join(
        (
            "features",
            validate_name(backbone, "backbone"),
            validate_name(dataset, "dataset"),
            validate_name(split, "split"),
        )
    )


def _raw_little_endian(arr: zarr.Array) -> bool:
    """True when chunks are the plain little-endian bytes of the rows (no other codec)."""
    codecs: tuple[Any, ...] = tuple(getattr(arr.metadata, "codecs", ()))  # v2: none, not raw
    return (
        len(codecs) == 1
        and type(codecs[0]).__name__ == "BytesCodec"
        and str(getattr(codecs[0], "endian", "little")).endswith("little")
        and arr.ndim == 2
        and arr.chunks[1] == arr.shape[1]
    )


def read_rows(store: Store, arr: zarr.Array, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of a row-chunked 2-D array.

    Embeddings are stored with only the ``bytes`` codec (see the README's chunking
    note), so a chunk object *is* the little-endian rows: this reads each chunk's
    bytes straight into one preallocated array (``readinto`` through a chunk-sized
    buffer on local disk, parallel GETs elsewhere) instead of zarr's generic
    decode-and-copy pipeline.
    Any other encoding falls back to zarr's own reader."""
    if not _raw_little_endian(arr) or start >= stop:
        return np.asarray(arr[start:stop])
    rows, dim = arr.chunks[0], arr.shape[1]
    dtype = np.dtype(arr.dtype).newbyteorder("<")
    out = np.empty((stop - start, dim), dtype=dtype)
    prefix = arr.path
    meta = arr.metadata
    jobs = []
    for chunk in range(start // rows, (stop - 1) // rows + 1):
        c0, c1 = chunk * rows, min(arr.shape[0], (chunk + 1) * rows)
        lo, hi = max(c0, start), min(c1, stop)
        key = f"{prefix}/{meta.encode_chunk_key((chunk, 0))}"
        jobs.append((key, c0, lo, hi))
    local_root = getattr(store.zstore, "root", None)
    # one chunk-sized bounce buffer: the kernel copies into a small, hot buffer and
    # numpy copies on (measured ~2x faster than reading into the big fresh array)
    bounce = np.empty(rows * dim, dtype=dtype) if local_root is not None and len(jobs) > 1 else None

    def fill(job: tuple[str, int, int, int]) -> None:
        key, c0, lo, hi = job
        target = out[lo - start : hi - start]
        skip = (lo - c0) * dim * dtype.itemsize
        if bounce is not None:
            staged = bounce[: target.size]
            try:
                with open(os.path.join(str(local_root), key), "rb", buffering=0) as f:
                    f.seek(skip)
                    if f.readinto(memoryview(staged).cast("B")) == staged.nbytes:  # type: ignore[arg-type]
                        target[...] = staged.reshape(target.shape)
                        return
            except FileNotFoundError:
                pass
        elif local_root is not None:  # one chunk: read straight into the result
            try:
                with open(os.path.join(str(local_root), key), "rb", buffering=0) as f:
                    f.seek(skip)
                    if f.readinto(memoryview(target).cast("B")) == target.nbytes:  # type: ignore[arg-type]
                        return
            except FileNotFoundError:
                pass
        else:
            raw = store.objects.get(key)
            if raw is not None:
                target[...] = np.frombuffer(
                    raw, dtype=dtype, count=target.size, offset=skip
                ).reshape(target.shape)
                return
        target[...] = np.asarray(arr[lo:hi])  # missing chunk (fill value) or short read

    if len(jobs) == 1 or local_root is not None:
        for job in jobs:
            fill(job)
    else:
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(fill, jobs))
    return out


@dataclass(frozen=True)
class FeatureSetInfo:
    """One line of ``bobx ls``."""

    backbone: str
    dataset: str
    split: str
    n: int
    dim: int
    dtype: str
    status: str  # complete | partial (k/n chunks)
    created_at: str
    cache_key: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class FeatureSet:
    """A complete, read-only feature set. Obtain with :meth:`Store.features`."""

    def __init__(
        self, store: Store, key: str, spec: Mapping[str, Any], complete: Mapping[str, Any]
    ):
        self._store, self.key = store, key
        self.spec, self.completion = dict(spec), dict(complete)
        self.backbone, self.dataset, self.split = key.split("/")[1:4]
        self.n: int = int(spec["n"])
        self.dim: int = int(spec["dim"])
        self.dtype: str = str(spec["dtype"])
        self.chunk_rows: int = int(spec["chunk_rows"])
        self.cache_key: str = str(spec["cache_key"])
        self.attrs: dict[str, Any] = dict(spec.get("attrs", {}))

    def _array(self, name: str) -> zarr.Array:
        return zarr.open_array(store=self._store.zstore, path=f"{self.key}/{name}", mode="r")

    @property
    def multilabel(self) -> bool:
        return len(self.spec.get("label_shape", [])) == 1

    @property
    def n_invalid(self) -> int:
        return int(self.completion.get("n_invalid", 0))

    def embeddings(self, *, dtype: Any = np.float32) -> np.ndarray:
        """All embeddings, (N, D), loaded at once (use :meth:`iter_blocks` when they do not fit)."""
        arr = self._array("embeddings")
        out = read_rows(self._store, arr, 0, self.n)
        return out if dtype is None else out.astype(dtype, copy=False)

    def iter_blocks(
        self, *, block_rows: int | None = None, dtype: Any = np.float32
    ) -> Iterator[np.ndarray]:
        """Embeddings as row blocks in order, chunk-aligned; memory ~ one block."""
        arr = self._array("embeddings")
        step = block_rows or self.chunk_rows
        step = max(self.chunk_rows, (step // self.chunk_rows) * self.chunk_rows)
        for start in range(0, self.n, step):
            block = read_rows(self._store, arr, start, min(self.n, start + step))
            yield block if dtype is None else block.astype(dtype, copy=False)

    def labels(self) -> np.ndarray:
        return np.asarray(self._array("labels")[...])

    def norms(self) -> np.ndarray:
        """Row L2 norms, float32 (N,), exactly as ``evaluators._search.row_norms`` computes
        them from the stored rows: read from the set's ``norms`` array (written with each
        chunk), computed from the embeddings for sets (or chunks) written before it was."""
        if self._store.objects.exists(f"{self.key}/norms/zarr.json"):
            out = np.asarray(self._array("norms")[...], dtype=np.float32)
        else:
            out = np.full(self.n, np.nan, dtype=np.float32)
        if np.isnan(out).any():  # not written: compute those chunks' norms
            start = 0
            for block in self.iter_blocks(dtype=None):
                stop = start + block.shape[0]
                if np.isnan(out[start:stop]).any():
                    out[start:stop] = row_norms(block)
                start = stop
        return out

    def ids(self) -> np.ndarray:
        return np.asarray(self._array("ids")[...])

    def valid(self) -> np.ndarray:
        return np.asarray(self._array("valid")[...], dtype=bool)

    def load(self, *, dtype: Any = np.float32, only_valid: bool = True) -> tuple[np.ndarray, ...]:
        """``(embeddings, labels, ids)``, dropping rows masked invalid unless asked not to."""
        x, y, ids = self.embeddings(dtype=dtype), self.labels(), self.ids()
        if only_valid and self.n_invalid:
            keep = self.valid()
            x, y, ids = x[keep], y[keep], ids[keep]
        return x, y, ids

    def __repr__(self) -> str:
        return (
            f"FeatureSet({self.backbone}/{self.dataset}/{self.split}, n={self.n}, dim={self.dim})"
        )


@dataclass
class FeatureWriter:
    """Fills one feature set chunk by chunk. Obtain with :meth:`Store.create_features`.

    Protocol: write a chunk's rows of every array, *then* its marker; call
    :meth:`finalize` at the end, which publishes the set once every marker exists.
    """

    store: Store
    key: str
    spec: dict[str, Any]
    started: float = field(default_factory=time.time)

    @property
    def n(self) -> int:
        return int(self.spec["n"])

    @property
    def chunk_rows(self) -> int:
        return int(self.spec["chunk_rows"])

    @property
    def n_chunks(self) -> int:
        return max(1, math.ceil(self.n / self.chunk_rows))

    def chunk_range(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_rows
        return start, min(self.n, start + self.chunk_rows)

    def done_chunks(self) -> set[int]:
        names = self.store.objects.list_dir(f"{self.key}/_bobx/chunks")
        return {int(n.split(".")[0]) for n in names if n.endswith(".json") and n[0].isdigit()}

    def missing_chunks(self, chunks: Sequence[int] | None = None) -> list[int]:
        """Chunks (of ``chunks``, default all) that still lack a marker."""
        done = self.done_chunks()
        todo = range(self.n_chunks) if chunks is None else chunks
        return [c for c in todo if c not in done]

    @property
    def complete(self) -> bool:
        return self.store.objects.exists(f"{self.key}/_bobx/complete.json")

    def write_chunk(
        self,
        index: int,
        embeddings: np.ndarray,
        *,
        labels: np.ndarray,
        ids: Sequence[str],
        valid: np.ndarray | None = None,
    ) -> None:
        start, stop = self.chunk_range(index)
        rows = stop - start
        if embeddings.shape != (rows, self.spec["dim"]):
            raise ShapeError(
                f"Chunk {index} of {self.key} needs embeddings of shape {(rows, self.spec['dim'])}, "
                f"got {embeddings.shape}."
            )
        labels = np.asarray(labels)
        if labels.shape != (rows, *self.spec["label_shape"]):
            raise ShapeError(f"Chunk {index}: labels shape {labels.shape} != {(rows,)}.")
        if len(ids) != rows:
            raise ShapeError(f"Chunk {index}: {len(ids)} ids for {rows} rows.")
        valid = np.ones(rows, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        with np.errstate(over="ignore"):  # overflow is reported below, as non-finite rows
            emb = np.asarray(embeddings, dtype=self.spec["dtype"])
        if not np.isfinite(emb[valid]).all():
            raise ShapeError(
                f"Chunk {index} of {self.key} has non-finite embeddings (overflow in "
                f"{self.spec['dtype']}?); extract with --dtype float32."
            )
        zs = self.store.zstore
        zarr.open_array(store=zs, path=f"{self.key}/embeddings", mode="r+")[start:stop] = emb
        zarr.open_array(store=zs, path=f"{self.key}/labels", mode="r+")[start:stop] = labels
        zarr.open_array(store=zs, path=f"{self.key}/ids", mode="r+")[start:stop] = np.asarray(
            list(ids), dtype=object
        )
        zarr.open_array(store=zs, path=f"{self.key}/valid", mode="r+")[start:stop] = valid
        zarr.open_array(store=zs, path=f"{self.key}/norms", mode="r+")[start:stop] = row_norms(emb)
        marker = {
            "rows": [start, stop],
            "n_invalid": int((~valid).sum()),
            "host": provenance.host(),
            "written_at": provenance.now_iso(),
        }
        self.store.objects.put_new_json(f"{self.key}/_bobx/chunks/{index:08d}.json", marker)

    def finalize(self, **extra: Any) -> bool:
        """Publish the set if every chunk is done. Returns whether it is complete now."""
        if self.complete:
            return True
        if self.missing_chunks():
            return False
        n_invalid = 0
        for name in self.store.objects.list_dir(f"{self.key}/_bobx/chunks"):
            if name.endswith(".json"):
                marker = self.store.objects.get_json(f"{self.key}/_bobx/chunks/{name}") or {}
                n_invalid += int(marker.get("n_invalid", 0))
        doc = {
            "status": "complete",
            "n_invalid": n_invalid,
            "completed_at": provenance.now_iso(),
            "completed_by": provenance.user(),
            "completed_on": provenance.host(),
            "duration_s": round(time.time() - self.started, 3),
            **extra,
        }
        self.store.objects.put_new_json(f"{self.key}/_bobx/complete.json", doc)
        return True


class Store:
    """A bobx store at a local path, ``s3://bucket/prefix`` or ``memory://name``."""

    def __init__(self, url: str | None = None, *, storage_options: dict[str, Any] | None = None):
        self.url = url or default_store_url()
        self.zstore = open_zarr_store(self.url, storage_options)
        self.objects = Objects(self.zstore)
        if not self.objects.exists("zarr.json"):
            with contextlib.suppress(ContainsGroupError, ContainsArrayError):
                zarr.open_group(
                    store=self.zstore, mode="a", attributes={"bobx_store": STORE_FORMAT}
                )

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- feature sets -----------------------------------------------------------------
    def _spec(self, key: str) -> dict[str, Any] | None:
        spec = self.objects.get_json(f"{key}/_bobx/spec.json")
        return spec if isinstance(spec, dict) else None

    def create_features(
        self,
        backbone: str,
        dataset: str,
        split: str,
        *,
        n: int,
        dim: int,
        cache_key: str,
        dtype: str = "float16",
        label_shape: Sequence[int] = (),
        chunk_rows: int | None = None,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> FeatureWriter:
        """Create (or resume) a feature set and return its writer.

        An existing set with the same ``cache_key`` is resumed (or is already complete);
        one with a different key raises :class:`StaleCacheError` unless ``overwrite``.
        """
        key = _fs_key(backbone, dataset, split)
        if dtype not in ("float16", "float32"):
            raise ShapeError(f"Feature dtype must be float16 or float32, got {dtype!r}.")
        if n <= 0 or dim <= 0:
            raise ShapeError(f"A feature set needs n > 0 rows and dim > 0, got n={n}, dim={dim}.")
        itemsize = np.dtype(dtype).itemsize
        spec = {
            "format": STORE_FORMAT,
            "cache_key": cache_key,
            "n": int(n),
            "dim": int(dim),
            "dtype": dtype,
            "label_shape": [int(s) for s in label_shape],
            "chunk_rows": int(chunk_rows or default_chunk_rows(dim, itemsize)),
            "attrs": dict(attrs or {}),
            "created_at": provenance.now_iso(),
            "created_by": provenance.user(),
            "created_on": provenance.host(),
            "versions": provenance.library_versions(),
        }
        existing = self._spec(key)
        if existing is not None and existing.get("cache_key") != cache_key:
            if not overwrite:
                raise StaleCacheError(
                    f"Feature set {key} exists with a different cache key "
                    f"({str(existing.get('cache_key'))[:12]} from {existing.get('created_at')}, "
                    f"this run: {cache_key[:12]}); re-run with --overwrite to replace it."
                )
            self.delete_features(backbone, dataset, split)
            existing = None
        if existing is None and not self.objects.put_new_json(f"{key}/_bobx/spec.json", spec):
            existing = self._spec(key)  # a concurrent writer won the race
            if existing is None or existing.get("cache_key") != cache_key:
                raise StaleCacheError(
                    f"Feature set {key} was just created by another writer with a different "
                    "cache key; re-run with --overwrite once it has finished."
                )
        spec = existing or spec
        self._ensure_arrays(key, spec)
        return FeatureWriter(self, key, spec)

    def _ensure_arrays(self, key: str, spec: Mapping[str, Any]) -> None:
        """Create the arrays if absent. Metadata is a pure function of the spec, so two
        writers racing here write identical bytes."""
        n, rows = int(spec["n"]), int(spec["chunk_rows"])
        label_shape = tuple(spec["label_shape"])
        arrays: list[tuple[str, tuple[int, ...], tuple[int, ...], Any, Any, bool]] = [
            (
                "embeddings",
                (n, int(spec["dim"])),
                (rows, int(spec["dim"])),
                spec["dtype"],
                0.0,
                False,
            ),
            (
                "labels",
                (n, *label_shape),
                (rows, *label_shape),
                "int8" if label_shape else "int64",
                -1,
                True,
            ),
            ("ids", (n,), (rows,), str, "", True),
            ("valid", (n,), (rows,), "bool", False, True),
            ("norms", (n,), (rows,), "float32", float("nan"), False),  # NaN: not written yet
        ]
        zs = self.zstore
        if not self.objects.exists(f"{key}/zarr.json"):
            with contextlib.suppress(ContainsGroupError, ContainsArrayError):
                zarr.open_group(store=zs, path=key, mode="a", attributes={"bobx": "feature_set"})
        for name, shape, chunks, dtype, fill, compress in arrays:
            if self.objects.exists(f"{key}/{name}/zarr.json"):
                continue
            with contextlib.suppress(ContainsArrayError, ContainsGroupError, FileExistsError):
                zarr.create_array(
                    store=zs,
                    name=f"{key}/{name}",
                    shape=shape,
                    chunks=chunks,
                    dtype=dtype,
                    fill_value=fill,
                    compressors="auto" if compress else None,
                    overwrite=False,
                )

    def features(self, backbone: str, dataset: str, split: str = "test") -> FeatureSet:
        """Open a complete feature set, or raise a clear error saying how to get one."""
        key = _fs_key(backbone, dataset, split)
        spec = self._spec(key)
        if spec is None:
            known = [f"{i.backbone}/{i.dataset}/{i.split}" for i in self.list_features()]
            raise UnknownNameError(
                "feature set",
                f"{backbone}/{dataset}/{split}",
                known,
                hint=f"Run `bobx extract --backbone {backbone} --dataset {dataset}` first.",
            )
        complete = self.objects.get_json(f"{key}/_bobx/complete.json")
        if complete is None:
            writer = FeatureWriter(self, key, spec)
            missing = len(writer.missing_chunks())
            raise IncompleteError(
                f"Feature set {backbone}/{dataset}/{split} is incomplete ({missing} of "
                f"{writer.n_chunks} chunks missing); re-run `bobx extract --backbone {backbone} "
                f"--dataset {dataset} --split {split}` to finish it."
            )
        return FeatureSet(self, key, spec, complete)

    def has_features(self, backbone: str, dataset: str, split: str) -> bool:
        return self.objects.exists(f"{_fs_key(backbone, dataset, split)}/_bobx/complete.json")

    def complete_splits(self, backbone: str, dataset: str) -> list[str]:
        """Splits of one (backbone, dataset) that are published complete (one listing)."""
        folder = "/".join(
            ("features", validate_name(backbone, "backbone"), validate_name(dataset, "dataset"))
        )
        return [
            split
            for split in self.objects.list_groups(folder)
            if self.has_features(backbone, dataset, split)
        ]

    def list_features(self) -> list[FeatureSetInfo]:
        out = []
        for backbone in self.objects.list_groups("features"):
            for dataset in self.objects.list_groups(f"features/{backbone}"):
                for split in self.objects.list_groups(f"features/{backbone}/{dataset}"):
                    key = f"features/{backbone}/{dataset}/{split}"
                    spec = self._spec(key)
                    if spec is None:
                        continue
                    writer = FeatureWriter(self, key, spec)
                    if writer.complete:
                        status = "complete"
                    else:
                        status = f"partial ({len(writer.done_chunks())}/{writer.n_chunks} chunks)"
                    out.append(
                        FeatureSetInfo(
                            backbone,
                            dataset,
                            split,
                            int(spec["n"]),
                            int(spec["dim"]),
                            str(spec["dtype"]),
                            status,
                            str(spec.get("created_at", "")),
                            str(spec["cache_key"]),
                        )
                    )
        return out

    def delete_features(self, backbone: str, dataset: str, split: str) -> None:
        key = _fs_key(backbone, dataset, split)
        self.objects.delete_prefix(key)

    def import_features(
        self,
        backbone: str,
        dataset: str,
        split: str,
        embeddings: np.ndarray,
        *,
        labels: np.ndarray | None = None,
        ids: Sequence[str] | None = None,
        dtype: str = "float16",
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> FeatureSet:
        """Store features computed elsewhere so they evaluate and rank beside bobx's own."""
        x = np.asarray(embeddings)
        if x.ndim != 2:
            raise ShapeError(f"Imported features must be 2-D (N, D), got shape {x.shape}.")
        n = x.shape[0]
        y = np.full(n, -1, dtype=np.int64) if labels is None else np.asarray(labels)
        if y.shape[0] != n or y.ndim not in (1, 2):
            raise ShapeError(f"Labels of shape {y.shape} do not match {n} feature rows.")
        id_list = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
        if len(id_list) != n:
            raise ShapeError(f"{len(id_list)} ids for {n} feature rows.")
        cache_key = provenance.digest(
            {
                "source": "import",
                "sha256": provenance.sha256_bytes(np.ascontiguousarray(x).tobytes()),
                "labels": provenance.sha256_bytes(np.ascontiguousarray(y).tobytes()),
                "ids": provenance.digest(id_list),
                "dtype": dtype,
            }
        )
        writer = self.create_features(
            backbone,
            dataset,
            split,
            n=n,
            dim=x.shape[1],
            cache_key=cache_key,
            dtype=dtype,
            label_shape=y.shape[1:],
            attrs={"source": "import", "ids_digest": provenance.digest(id_list), **(attrs or {})},
            overwrite=overwrite,
        )
        for index in writer.missing_chunks():
            a, b = writer.chunk_range(index)
            writer.write_chunk(index, x[a:b], labels=y[a:b], ids=id_list[a:b])
        writer.finalize()
        return self.features(backbone, dataset, split)

    # -- dataset metadata and artifacts --------------------------------------------
    def put_meta(self, dataset: str, name: str, obj: Any) -> None:
        """Dataset-level JSON the evaluators need (e.g. rOxford ground truth)."""
        self.objects.put_json(
            f"meta/{validate_name(dataset, 'dataset')}/{validate_name(name, 'meta')}.json", obj
        )

    def get_meta(self, dataset: str, name: str) -> Any:
        obj = self.objects.get_json(
            f"meta/{validate_name(dataset, 'dataset')}/{validate_name(name, 'meta')}.json"
        )
        if obj is None:
            raise UnknownNameError(
                "dataset metadata",
                f"{dataset}/{name}",
                hint=f"Run `bobx extract --dataset {dataset}` to copy it into the store.",
            )
        return obj

    def _artifact_key(self, kind: str, backbone: str, dataset: str, name: str) -> str:
        return "/".join(
            (
                "artifacts",
                validate_name(kind, "artifact kind"),
                validate_name(backbone, "backbone"),
                validate_name(dataset, "dataset"),
                validate_name(name, "artifact"),
            )
        )

    def put_artifact(
        self,
        kind: str,
        backbone: str,
        dataset: str,
        name: str,
        arrays: Mapping[str, np.ndarray],
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Keep arrays a job produced (probe weights, test logits) for later jobs."""
        key = self._artifact_key(kind, backbone, dataset, name)
        self.objects.delete_prefix(key)
        group = zarr.open_group(store=self.zstore, path=key, mode="w")
        for arr_name, value in arrays.items():
            value = np.asarray(value)
            group.create_array(
                validate_name(arr_name, "array"), data=value, compressors=None, overwrite=True
            )
        done = {
            "attrs": dict(attrs or {}),
            "arrays": sorted(arrays),
            "written_at": provenance.now_iso(),
        }
        self.objects.put_json(f"{key}/_bobx/complete.json", done)

    def get_artifact(
        self, kind: str, backbone: str, dataset: str, name: str
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        key = self._artifact_key(kind, backbone, dataset, name)
        done = self.objects.get_json(f"{key}/_bobx/complete.json")
        if done is None:
            have = self.objects.list_groups(f"artifacts/{kind}/{backbone}/{dataset}")
            raise UnknownNameError(f"{kind} artifact", f"{backbone}/{dataset}/{name}", have)
        arrays = {
            n: np.asarray(zarr.open_array(store=self.zstore, path=f"{key}/{n}", mode="r")[...])
            for n in done["arrays"]
        }
        return arrays, dict(done.get("attrs", {}))

    def list_artifacts(self, kind: str, backbone: str, dataset: str) -> list[str]:
        return self.objects.list_groups(
            f"artifacts/{validate_name(kind)}/{validate_name(backbone)}/{validate_name(dataset)}"
        )

    # -- result records ---------------------------------------------------------------
    def add_records(self, records: Sequence[Record]) -> list[Record]:
        """Write records, each its own create-only object."""
        for rec in records:
            if not self.objects.put_new_json(f"records/loose/{rec.id}.json", rec.to_dict()):
                raise StoreError(f"Record id {rec.id} already exists; this should never happen.")
        return list(records)

    def record(self, **fields: Any) -> Record:
        """Write one result record; see :func:`featcache.records.make_record` for the fields."""
        return self.add_records([make_record(**fields)])[0]

    def _loose_record_keys(self) -> list[str]:
        return [
            f"records/loose/{n}"
            for n in self.objects.list_dir("records/loose")
            if n.endswith(".json")
        ]

    def results(self, **filters: Any) -> Any:
        """All records as a pandas DataFrame (``params`` as canonical JSON), optionally
        filtered by column equality (a list value means any of)."""
        import pandas as pd

        frames = []
        for name in self.objects.list_dir("records/packs"):
            if name.endswith(".parquet"):
                raw = self.objects.get(f"records/packs/{name}")
                if raw is not None:
                    frames.append(pd.read_parquet(io.BytesIO(raw)))
        rows = []
        for key in self._loose_record_keys():
            doc = self.objects.get_json(key)
            if doc is not None:
                rows.append(doc)
        if rows:
            loose = pd.DataFrame(rows)
            loose["params"] = [provenance.canonical_json(p or {}) for p in loose["params"]]
            frames.append(loose)
        if not frames:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
        df = pd.concat(frames, ignore_index=True)
        df = (
            df.drop_duplicates("id").sort_values("created_at", kind="stable").reset_index(drop=True)
        )
        df = df.reindex(columns=list(COLUMNS))
        df["value"] = df["value"].astype(float)
        df["higher_is_better"] = df["higher_is_better"].astype(bool)
        for col, want in filters.items():
            if want is None:
                continue
            if col not in df.columns:
                raise UnknownNameError("results column", col, df.columns)
            values = list(want) if isinstance(want, list | tuple | set) else [want]
            df = df[df[col].isin(values)]
        return df.reset_index(drop=True)

    def compact_records(self) -> int:
        """Fold loose records into one Parquet pack, then remove them.

        Readers merge packs and loose records and drop duplicate ids, so a reader
        running during compaction sees every record exactly once. Returns how many
        records were packed."""
        import pandas as pd

        keys = self._loose_record_keys()
        docs = [d for d in (self.objects.get_json(k) for k in keys) if d is not None]
        if not docs:
            return 0
        frame = pd.DataFrame(docs).reindex(columns=list(COLUMNS))
        frame["params"] = [provenance.canonical_json(p or {}) for p in frame["params"]]
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        pack_id = new_record_id()
        if not self.objects.put_new(f"records/packs/{pack_id}.parquet", buf.getvalue()):
            raise StoreError("A pack with the same name exists; retry compaction.")
        for key in keys:
            self.objects.delete(key)
        return len(docs)


def open_store(url: str | None = None, **storage_options: Any) -> Store:
    """Open (creating if needed) the store at ``url``; default ``$BOBX_STORE`` or ./bobx-store."""
    return Store(url, storage_options=storage_options or None)

"""The bobx store: a Zarr v3 hierarchy of feature sets, result records and artifacts.

Layout (keys are '/'-separated; every name part is a validated slug)::

    zarr.json                                      root group {"bobx_store": 1}
    features/<backbone>/<dataset>/<split>/         one feature set
        _bobx/spec.json                            create-only: cache key, generation G,
                                                   shape, provenance (the set's pointer)
        <G>/embeddings  (N, D) float16|float32     chunked by rows, uncompressed
        <G>/labels      (N,) int64 | (N, C) int8   same row chunks
        <G>/ids         (N,) string                image key / relative path
        <G>/valid       (N,) bool                  False where an image was skipped
        <G>/norms       (N,) float32               row L2 norms (cosine search skips a pass)
        <G>/_bobx/chunks/<i>.json                  create-only marker, after chunk i's data
        <G>/_bobx/complete.json                    create-only, written last: published
    records/loose/<id>.json                        one result record each, create-only
    records/packs/<id>.parquet                     compacted records (readers merge, dedupe)
    records/retracted/<id>.json                    create-only tombstone: readers drop <id>
    artifacts/<kind>/<backbone>/<dataset>/<name>/  arrays a job keeps (probe weights, logits)
    meta/<dataset>/<name>.json                     dataset-level ground truth (e.g. rOxford gnd)

``G`` (``g-<cache key prefix>-<random>``) is the set's *generation*, new each time a set
is created or replaced (``--overwrite``, ``bobx rm``). A writer only ever writes into
its own generation and re-reads ``spec.json`` before each chunk and before publishing,
so a writer whose set was replaced stops (``StaleCacheError``) and nothing it wrote can
be read as part of the new set. Sets written before generations existed (no ``G`` in
their spec) keep their arrays directly under the set and are read as before.

A feature set is readable only once its ``complete.json`` exists and every chunk object
of every array exists with its size (checked on open: one listing); a writer resumes by
computing only the chunks without a marker; shards own disjoint chunk ranges.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync
from zarr.errors import ContainsArrayError, ContainsGroupError

from evaluators._search import row_norms
from featcache import provenance
from featcache.errors import (
    BobxError,
    DataError,
    IncompleteError,
    IntegrityError,
    ShapeError,
    StaleCacheError,
    StoreError,
    UnknownNameError,
)
from featcache.io import check_labels
from featcache.names import validate_name
from featcache.objects import Objects, open_zarr_store, storage_errors
from featcache.records import COLUMNS, Record, make_record, new_record_id

STORE_FORMAT = 1
#: Feature-set layout written now: 2 = arrays under a generation folder (1: directly under
#: the set, as bobx wrote before generations; still read).
SET_FORMAT = 2
DEFAULT_STORE = "./bobx-store"
#: Target bytes per embeddings chunk; see the README's "Chunking" note for the measurement.
CHUNK_BYTES = 8 * 2**20
#: Largest ``chunk_rows`` a set may have (a chunk is written whole, in memory).
MAX_CHUNK_ROWS = 2**20
#: The arrays of every feature set, in write order (``norms``: each row's L2 norm as
#: :func:`evaluators._search.row_norms` computes it from the stored row).
ARRAYS = ("embeddings", "labels", "ids", "valid", "norms")
DTYPES = ("float16", "float32")
_GENERATION = re.compile(r"g-[A-Za-z0-9]{1,12}-[0-9a-f]{12}")


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


def _set_name(key: str) -> str:
    return "/".join(key.split("/")[1:4])


def _rm_hint(key: str) -> str:
    backbone, dataset, split = key.split("/")[1:4]
    return f"bobx rm --backbone {backbone} --dataset {dataset} --split {split}"


def new_generation(cache_key: str) -> str:
    """A fresh generation name: the cache key's first characters plus a random part."""
    tag = re.sub(r"[^A-Za-z0-9]", "", cache_key)[:12] or "x"
    return f"g-{tag}-{uuid.uuid4().hex[:12]}"


def data_key(key: str, spec: Mapping[str, Any]) -> str:
    """Where the arrays and markers of the set at ``key`` live (its generation folder)."""
    generation = spec.get("generation")
    return f"{key}/{generation}" if generation else key


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_layout(
    *, n: Any, dim: Any, dtype: Any, chunk_rows: Any, label_shape: Sequence[Any]
) -> None:
    """ShapeError unless these describe a feature set that can be written and read."""
    if dtype not in DTYPES:
        raise ShapeError(f"Feature dtype must be float16 or float32, got {dtype!r}.")
    if not _is_count(n) or not _is_count(dim):
        raise ShapeError(f"A feature set needs n > 0 rows and dim > 0, got n={n}, dim={dim}.")
    if chunk_rows is not None and (not _is_count(chunk_rows) or chunk_rows > MAX_CHUNK_ROWS):
        raise ShapeError(
            f"chunk_rows (--chunk-rows) must be an integer in 1..{MAX_CHUNK_ROWS}, "
            f"got {chunk_rows!r}."
        )
    if len(label_shape) > 1 or not all(_is_count(s) for s in label_shape):
        raise ShapeError(f"label_shape must be () or (C,) with C > 0, got {tuple(label_shape)}.")


def spec_problem(spec: Any) -> str | None:
    """What is wrong with a stored ``spec.json`` (``None`` when it can be used)."""
    if not isinstance(spec, dict):
        return "not a JSON object"
    for name in ("cache_key", "n", "dim", "dtype", "label_shape", "chunk_rows"):
        if name not in spec:
            return f"no {name!r}"
    try:
        check_layout(
            n=spec["n"],
            dim=spec["dim"],
            dtype=spec["dtype"],
            chunk_rows=spec["chunk_rows"],
            label_shape=spec["label_shape"] if isinstance(spec["label_shape"], list) else [0],
        )
    except ShapeError as exc:
        return str(exc)
    generation = spec.get("generation")
    if generation is not None and not (
        isinstance(generation, str) and _GENERATION.fullmatch(generation)
    ):
        return f"generation {generation!r} is not a generation name"
    return None


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


def _lost(store: Store, key: str) -> IntegrityError:
    return IntegrityError(
        f"Chunk object {key} of store {store.url} is missing or short; run `bobx verify "
        "--repair` to recompute it."
    )


def read_rows(store: Store, arr: zarr.Array, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of a row-chunked 2-D array.

    Embeddings are stored with only the ``bytes`` codec (see the README's chunking
    note), so a chunk object *is* the little-endian rows: this reads each chunk's
    bytes straight into one preallocated array (``readinto`` through a chunk-sized
    buffer on local disk, parallel GETs elsewhere) instead of zarr's generic
    decode-and-copy pipeline. A chunk object that is missing or short raises
    :class:`IntegrityError` (never zeros). Any other encoding falls back to zarr's
    own reader."""
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
        try:
            if local_root is not None:
                staged = target if bounce is None else bounce[: target.size]
                with open(os.path.join(str(local_root), key), "rb", buffering=0) as f:
                    f.seek(skip)
                    if f.readinto(memoryview(staged).cast("B")) != staged.nbytes:  # type: ignore[arg-type]
                        raise _lost(store, key)
                if bounce is not None:
                    target[...] = staged.reshape(target.shape)
                return
        except FileNotFoundError:
            raise _lost(store, key) from None
        except OSError as exc:
            raise StoreError(f"Cannot read {key} of store {store.url}: {exc}") from exc
        raw = store.objects.get(key)
        if raw is None or len(raw) < skip + target.nbytes:
            raise _lost(store, key)
        target[...] = np.frombuffer(raw, dtype=dtype, count=target.size, offset=skip).reshape(
            target.shape
        )

    if len(jobs) == 1 or local_root is not None:
        for job in jobs:
            fill(job)
    else:
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(fill, jobs))
    return out


def chunk_checksums(
    embeddings: np.ndarray,
    labels: np.ndarray,
    ids: Sequence[str],
    valid: np.ndarray,
    norms: np.ndarray | None = None,
) -> dict[str, int]:
    """CRC-32 of one chunk's rows of every array, as stored: kept in the chunk's marker
    so ``bobx verify`` finds bytes that changed but kept their size (~800 MiB/s here,
    so checksumming costs a writer little)."""
    emb = np.ascontiguousarray(embeddings, dtype=embeddings.dtype.newbyteorder("<"))
    out = {
        "embeddings": zlib.crc32(emb.tobytes()),
        "labels": zlib.crc32(np.ascontiguousarray(labels).tobytes()),
        "ids": zlib.crc32(provenance.canonical_json([str(i) for i in ids]).encode()),
        "valid": zlib.crc32(np.ascontiguousarray(valid, dtype=bool).tobytes()),
    }
    if norms is not None:
        out["norms"] = zlib.crc32(np.ascontiguousarray(norms, dtype="<f4").tobytes())
    return out


def _label_dtype(spec: Mapping[str, Any]) -> str:
    return "int8" if spec.get("label_shape") else "int64"


def _expected_arrays(spec: Mapping[str, Any]) -> dict[str, tuple[list[int], str]]:
    """Shape and data type every array's ``zarr.json`` must state, from ``spec.json``."""
    n, dim = int(spec["n"]), int(spec["dim"])
    label_shape = [int(s) for s in spec["label_shape"]]
    return {
        "embeddings": ([n, dim], str(spec["dtype"])),
        "labels": ([n, *label_shape], _label_dtype(spec)),
        "ids": ([n], "string"),
        "valid": ([n], "bool"),
        "norms": ([n], "float32"),
    }


_ITEMSIZE = {"float16": 2, "float32": 4, "float64": 8, "int8": 1, "int64": 8, "bool": 1}


@dataclass
class SetCheck:
    """What :meth:`Store.check_features` found in one feature set."""

    backbone: str
    dataset: str
    split: str
    status: str  # complete | partial (k/n chunks) | missing | damaged spec
    problems: list[str] = field(default_factory=list)
    bad_chunks: list[int] = field(default_factory=list)
    #: problems no chunk recomputation fixes (an array missing, metadata that disagrees)
    fatal: list[str] = field(default_factory=list)
    #: generation folders the spec does not name (left by writers that were fenced off)
    orphans: list[str] = field(default_factory=list)
    source: str = ""
    cache_key: str = ""

    @property
    def name(self) -> str:
        return f"{self.backbone}/{self.dataset}/{self.split}"

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "name": self.name, "ok": self.ok}


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
        #: The folder of this set's arrays: ``<key>/<generation>`` (``key`` for old sets).
        self.data_key: str = data_key(key, spec)

    def array(self, name: str) -> zarr.Array:
        """The zarr array ``name`` of this set (embeddings, labels, ids, valid), read-only."""
        with storage_errors(f"open {self.data_key}/{name}", self._store.url):
            return zarr.open_array(
                store=self._store.zstore, path=f"{self.data_key}/{name}", mode="r"
            )

    @property
    def multilabel(self) -> bool:
        return len(self.spec.get("label_shape", [])) == 1

    @property
    def n_invalid(self) -> int:
        return int(self.completion.get("n_invalid", 0))

    def embeddings(self, *, dtype: Any = np.float32) -> np.ndarray:
        """All embeddings, (N, D), loaded at once (use :meth:`iter_blocks` when they do not fit)."""
        arr = self.array("embeddings")
        out = read_rows(self._store, arr, 0, self.n)
        return out if dtype is None else out.astype(dtype, copy=False)

    def iter_blocks(
        self, *, block_rows: int | None = None, dtype: Any = np.float32
    ) -> Iterator[np.ndarray]:
        """Embeddings as row blocks in order, chunk-aligned; memory ~ one block."""
        arr = self.array("embeddings")
        step = block_rows or self.chunk_rows
        step = max(self.chunk_rows, (step // self.chunk_rows) * self.chunk_rows)
        for start in range(0, self.n, step):
            block = read_rows(self._store, arr, start, min(self.n, start + step))
            yield block if dtype is None else block.astype(dtype, copy=False)

    def _read(self, name: str) -> np.ndarray:
        with storage_errors(f"read {self.data_key}/{name}", self._store.url):
            return np.asarray(self.array(name)[...])

    def labels(self) -> np.ndarray:
        return self._read("labels")

    def norms(self) -> np.ndarray:
        """Row L2 norms, float32 (N,), exactly as ``evaluators._search.row_norms`` computes
        them from the stored rows: read from the set's ``norms`` array (written with each
        chunk), computed from the embeddings for sets (or chunks) written before it was."""
        if self._store.objects.exists(f"{self.data_key}/norms/zarr.json"):
            out = np.asarray(self._read("norms"), dtype=np.float32)
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
        return self._read("ids")

    def valid(self) -> np.ndarray:
        return np.asarray(self._read("valid"), dtype=bool)

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
    :meth:`finalize` at the end, which publishes the set once every marker exists and
    every chunk object is in place. Before each chunk and before publishing the writer
    re-reads ``spec.json``: when the set was replaced meanwhile (``--overwrite`` or
    ``bobx rm`` by someone else) it stops with :class:`StaleCacheError`; what it wrote
    went to its own generation folder, which the new set never reads.
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

    @property
    def generation(self) -> str | None:
        return self.spec.get("generation")

    @property
    def data_key(self) -> str:
        """The folder of this writer's arrays and markers (its generation)."""
        return data_key(self.key, self.spec)

    def chunk_range(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_rows
        return start, min(self.n, start + self.chunk_rows)

    def _marker_key(self, index: int) -> str:
        return f"{self.data_key}/_bobx/chunks/{index:08d}.json"

    def done_chunks(self) -> set[int]:
        names = self.store.objects.list_dir(f"{self.data_key}/_bobx/chunks")
        return {int(n.split(".")[0]) for n in names if n.endswith(".json") and n[0].isdigit()}

    def missing_chunks(self, chunks: Sequence[int] | None = None) -> list[int]:
        """Chunks (of ``chunks``, default all) that still lack a marker."""
        done = self.done_chunks()
        todo = range(self.n_chunks) if chunks is None else chunks
        return [c for c in todo if c not in done]

    @property
    def complete(self) -> bool:
        return self.store.objects.exists(f"{self.data_key}/_bobx/complete.json")

    def check_current(self) -> None:
        """StaleCacheError unless ``spec.json`` still names this writer's set (the fence)."""
        try:
            current = self.store._spec(self.key)
        except StoreError:
            current = None
        if (
            current is None
            or current.get("cache_key") != self.spec.get("cache_key")
            or current.get("generation") != self.generation
        ):
            raise StaleCacheError(
                f"Feature set {_set_name(self.key)} was replaced by another writer "
                "(--overwrite or `bobx rm`) while this one was filling it; this writer "
                "stopped and nothing it wrote is part of the set. Re-run to use (or "
                "resume) the set that is there now."
            )

    def write_chunk(
        self,
        index: int,
        embeddings: np.ndarray,
        *,
        labels: np.ndarray,
        ids: Sequence[str],
        valid: np.ndarray | None = None,
    ) -> None:
        if not 0 <= index < self.n_chunks:
            raise ShapeError(f"{self.key} has chunks 0..{self.n_chunks - 1}, not {index}.")
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
        labels = labels.astype(_label_dtype(self.spec), copy=False)
        id_list = [str(i) for i in ids]
        norms = row_norms(emb)
        self.check_current()
        try:
            with storage_errors(f"write chunk {index} of {_set_name(self.key)}", self.store.url):
                for name, values in (
                    ("embeddings", emb),
                    ("labels", labels),
                    ("ids", np.asarray(id_list, dtype=object)),
                    ("valid", valid),
                    ("norms", norms),
                ):
                    self.store._writable_array(f"{self.data_key}/{name}")[start:stop] = values
        except StoreError:
            raise
        except Exception:
            self.check_current()  # the set was removed under this writer: say so
            raise
        marker = {
            "rows": [start, stop],
            "n_invalid": int((~valid).sum()),
            "cache_key": self.spec["cache_key"],
            "generation": self.generation,
            "crc32": chunk_checksums(emb, labels, id_list, valid, norms),
            "host": provenance.host(),
            "written_at": provenance.now_iso(),
        }
        self.store.objects.put_new_json(self._marker_key(index), marker)

    def markers(self) -> dict[int, dict[str, Any]]:
        """The marker document of every chunk done, by chunk index."""
        out = {}
        for index in sorted(self.done_chunks()):
            doc = self.store.objects.get_json(self._marker_key(index))
            if isinstance(doc, dict):
                out[index] = doc
        return out

    def damage(self, chunks: Sequence[int] | set[int] | None = None) -> tuple[list[int], list[str]]:
        """``(chunks whose objects are lost or short, problems of whole arrays)`` among
        ``chunks`` (default all): one listing of the generation folder."""
        todo = range(self.n_chunks) if chunks is None else chunks
        problems = self.store._chunk_problems(self.data_key, self.spec, todo)
        return sorted({i for i, _ in problems if i >= 0}), [t for i, t in problems if i < 0]

    def forget_lost_chunks(self) -> list[int]:
        """Drop the markers of chunks whose objects are gone (so a resume recomputes them).

        Returns the chunk indices forgotten."""
        done = self.done_chunks()
        if not done:
            return []
        lost, _ = self.damage(done)
        for index in lost:
            self.store.objects.delete(self._marker_key(index))
        return lost

    def finalize(self, **extra: Any) -> bool:
        """Publish the set if every chunk is done. Returns whether it is complete now.

        Publishing checks that the set is still this writer's (StaleCacheError if not),
        that every marker belongs to this set, and that every chunk object exists with
        its size; markers of lost chunks are dropped (False: a re-run recomputes them)."""
        if self.complete:
            return True
        self.check_current()
        markers = self.markers()
        if any(index not in markers for index in range(self.n_chunks)):
            return False
        for index, marker in markers.items():
            if self.generation is not None and (
                marker.get("generation") != self.generation
                or marker.get("cache_key") != self.spec["cache_key"]
                or marker.get("rows") != list(self.chunk_range(index))
            ):
                raise IntegrityError(
                    f"Marker of chunk {index} of {_set_name(self.key)} belongs to another "
                    f"set; run `{_rm_hint(self.key)}` and extract it again."
                )
        lost, whole = self.damage()
        if whole:
            raise IntegrityError(
                f"Feature set {_set_name(self.key)} cannot be published: {whole[0]}; run "
                f"`{_rm_hint(self.key)}` and extract it again."
            )
        if lost:
            for index in lost:
                self.store.objects.delete(self._marker_key(index))
            return False
        doc = {
            "status": "complete",
            "cache_key": self.spec["cache_key"],
            "generation": self.generation,
            "n_invalid": sum(int(m.get("n_invalid", 0)) for m in markers.values()),
            "completed_at": provenance.now_iso(),
            "completed_by": provenance.user(),
            "completed_on": provenance.host(),
            "duration_s": round(time.time() - self.started, 3),
            **extra,
        }
        self.store.objects.put_new_json(f"{self.data_key}/_bobx/complete.json", doc)
        return True


class Store:
    """A bobx store at a local path, ``s3://bucket/prefix`` or ``memory://name``.

    ``zstore`` uses an already opened zarr store instead of opening ``url`` (e.g. a
    wrapper that adds caching or instrumentation); ``url`` then only names it."""

    def __init__(
        self,
        url: str | None = None,
        *,
        storage_options: dict[str, Any] | None = None,
        zstore: Any = None,
    ):
        self.url = url or default_store_url()
        with storage_errors("open the store", self.url):
            self.zstore = (
                zstore if zstore is not None else open_zarr_store(self.url, storage_options)
            )
            self.objects = Objects(self.zstore, self.url)
            root = self.objects.get_json("zarr.json")
            if root is None:
                with contextlib.suppress(ContainsGroupError, ContainsArrayError):
                    zarr.open_group(
                        store=self.zstore, mode="a", attributes={"bobx_store": STORE_FORMAT}
                    )
            elif not isinstance(root, dict) or root.get("node_type") != "group":
                raise StoreError(
                    f"{self.url}/zarr.json is not a zarr group's metadata; this is not a bobx "
                    "store (or its root object is damaged): pass another --store."
                )

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def check_writable(self) -> None:
        """StoreError now, before any work, when nothing can be written to this store
        (read-only or full disk, read-only credentials). Leaves nothing behind."""
        key = f"_bobx/writable-{uuid.uuid4().hex}.json"
        with storage_errors("write", self.url, where=f"Store {self.url} is not writable"):
            self.objects._put_new(key, b"{}")
            sync(self.zstore.delete(key))

    def _writable_array(self, path: str) -> zarr.Array:
        """An array opened for writing that stores every chunk, even one equal to the
        fill value (all rows skipped, unlabelled): a missing chunk object then always
        means a lost one."""
        arr = zarr.open_array(store=self.zstore, path=path, mode="r+")
        return arr.with_config({"write_empty_chunks": True})

    # -- feature sets -----------------------------------------------------------------
    def _spec(self, key: str) -> dict[str, Any] | None:
        """The set's ``spec.json`` (``None`` when there is no set); StoreError, naming the
        way out, when it is damaged."""
        try:
            spec = self.objects.get_json(f"{key}/_bobx/spec.json")
        except StoreError as exc:
            if exc.__cause__ is None or not isinstance(exc.__cause__, ValueError):
                raise  # the storage failed, not the document
            problem: str | None = "not valid JSON"
        else:
            if spec is None:
                return None
            problem = spec_problem(spec)
        if problem is not None:
            raise StoreError(
                f"Feature set {_set_name(key)} has a damaged spec.json ({problem}); remove "
                f"the set with `{_rm_hint(key)}`, or extract it again with --overwrite."
            )
        return spec

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
        ``overwrite`` always builds a new generation, even for the same key (a rebuild);
        a writer still filling the old one stops at its next chunk.
        """
        key = _fs_key(backbone, dataset, split)
        label_shape = [int(s) for s in label_shape]
        check_layout(n=n, dim=dim, dtype=dtype, chunk_rows=chunk_rows, label_shape=label_shape)
        itemsize = np.dtype(dtype).itemsize
        spec = {
            "format": SET_FORMAT,
            "cache_key": cache_key,
            "generation": new_generation(cache_key),
            "n": int(n),
            "dim": int(dim),
            "dtype": dtype,
            "label_shape": label_shape,
            "chunk_rows": int(chunk_rows or default_chunk_rows(dim, itemsize)),
            "attrs": dict(attrs or {}),
            "created_at": provenance.now_iso(),
            "created_by": provenance.user(),
            "created_on": provenance.host(),
            "versions": provenance.library_versions(),
        }
        try:
            existing = self._spec(key)
        except StoreError:
            if not overwrite:
                raise
            existing = {"cache_key": None}  # damaged: replaced below
        if existing is not None and (overwrite or existing.get("cache_key") != cache_key):
            if not overwrite:
                raise StaleCacheError(
                    f"Feature set {key} exists with a different cache key "
                    f"({str(existing.get('cache_key'))[:12]} from {existing.get('created_at')}, "
                    f"this run: {cache_key[:12]}); re-run with --overwrite to replace it."
                )
            self._remove_set(key)
            existing = None
        if existing is None and not self.objects.put_new_json(f"{key}/_bobx/spec.json", spec):
            existing = self._spec(key)  # a concurrent writer won the race
            if existing is None or existing.get("cache_key") != cache_key:
                raise StaleCacheError(
                    f"Feature set {key} was just created by another writer with a different "
                    "cache key; re-run with --overwrite once it has finished."
                )
        writer = FeatureWriter(self, key, existing or spec)
        self._ensure_arrays(key, writer.spec)
        if existing is not None and not writer.complete:
            writer.forget_lost_chunks()  # resume: recompute what was lost since
        return writer

    def _ensure_arrays(self, key: str, spec: Mapping[str, Any]) -> None:
        """Create the arrays if absent. Metadata is a pure function of the spec, so two
        writers racing here write identical bytes."""
        rows = int(spec["chunk_rows"])
        expected = _expected_arrays(spec)
        fills: dict[str, Any] = {
            "embeddings": 0.0,
            "labels": -1,
            "ids": "",
            "valid": False,
            "norms": float("nan"),  # NaN: not written yet
        }
        zs, where = self.zstore, data_key(key, spec)
        with storage_errors(f"create feature set {_set_name(key)}", self.url):
            for group, kind in ((key, "feature_set"), (where, "generation")):
                if not self.objects.exists(f"{group}/zarr.json"):
                    with contextlib.suppress(ContainsGroupError, ContainsArrayError):
                        zarr.open_group(store=zs, path=group, mode="a", attributes={"bobx": kind})
            for name in ARRAYS:
                if self.objects.exists(f"{where}/{name}/zarr.json"):
                    continue
                shape, dtype = expected[name]
                with contextlib.suppress(ContainsArrayError, ContainsGroupError, FileExistsError):
                    zarr.create_array(
                        store=zs,
                        name=f"{where}/{name}",
                        shape=tuple(shape),
                        chunks=(rows, *shape[1:]),
                        dtype=str if dtype == "string" else dtype,
                        fill_value=fills[name],
                        compressors=None if name in ("embeddings", "norms") else "auto",
                        overwrite=False,
                    )

    def _chunk_problems(
        self, where: str, spec: Mapping[str, Any], chunks: Sequence[int] | set[int] | range
    ) -> list[tuple[int, str]]:
        """``(chunk index, problem)`` for ``chunks`` of the set whose arrays live at
        ``where``: a chunk object missing or of the wrong size; index -1 for problems of
        a whole array (missing, metadata that disagrees with ``spec.json``). Covers the
        :data:`ARRAYS` and any other array in the generation folder (per-row arrays a
        later bobx adds: one row per set row, same row chunks). One listing."""
        sizes = self.objects.sizes(where)
        problems: list[tuple[int, str]] = []
        legacy = not spec.get("generation")
        n, rows = int(spec["n"]), int(spec["chunk_rows"])
        expected: dict[str, tuple[list[int], str] | None] = dict(_expected_arrays(spec))
        if legacy:  # old sets skipped chunks equal to the fill value: check what they wrote
            expected = {"embeddings": expected["embeddings"], "ids": expected["ids"]}
        else:
            for key in sizes:
                parts = key[len(where) + 1 :].split("/")
                if len(parts) == 2 and parts[1] == "zarr.json" and parts[0] != "_bobx":
                    expected.setdefault(parts[0], None)
        for name, want in expected.items():
            meta_key = f"{where}/{name}/zarr.json"
            try:
                meta = self.objects.get_json(meta_key)
            except StoreError as exc:
                problems.append((-1, f"the metadata of array {name} is damaged ({exc})"))
                continue
            if not isinstance(meta, dict):
                problems.append((-1, f"array {name} is missing ({meta_key})"))
                continue
            shape, dtype = want or (meta.get("shape") or [None], str(meta.get("data_type")))
            got_shape = meta.get("shape")
            got_chunks = (meta.get("chunk_grid") or {}).get("configuration", {}).get("chunk_shape")
            if got_shape != shape or shape[0] != n or meta.get("data_type") != dtype:
                problems.append(
                    (
                        -1,
                        f"array {name} is {meta.get('data_type')} {got_shape} but spec.json "
                        f"says {dtype} {[n, *shape[1:]]}",
                    )
                )
                continue
            if got_chunks != [rows, *shape[1:]]:
                problems.append(
                    (-1, f"array {name} has chunks {got_chunks}, spec.json says {rows} rows")
                )
                continue
            encoding = meta.get("chunk_key_encoding") or {}
            sep = (encoding.get("configuration") or {}).get("separator", "/")
            codecs = [c.get("name") for c in meta.get("codecs") or []]
            raw = codecs == ["bytes"] and dtype in _ITEMSIZE
            size = int(np.prod([rows, *shape[1:]])) * _ITEMSIZE.get(dtype, 0)
            for index in sorted(chunks):
                coords = [str(index)] + ["0"] * (len(shape) - 1)
                key = f"{where}/{name}/c{sep}{sep.join(coords)}"
                got = sizes.get(key)
                if got is None:
                    problems.append((index, f"chunk {index} of {name} is missing ({key})"))
                elif (raw and got != size) or got == 0:
                    problems.append(
                        (index, f"chunk {index} of {name} has {got} bytes, expected {size or '>0'}")
                    )
        return problems

    def _open_set(self, key: str) -> tuple[dict[str, Any], FeatureWriter]:
        spec = self._spec(key)
        if spec is None:
            backbone, dataset, split = key.split("/")[1:4]
            known = [f"{i.backbone}/{i.dataset}/{i.split}" for i in self.list_features()]
            raise UnknownNameError(
                "feature set",
                f"{backbone}/{dataset}/{split}",
                known,
                hint=f"Run `bobx extract --backbone {backbone} --dataset {dataset}` first.",
            )
        return spec, FeatureWriter(self, key, spec)

    def features(self, backbone: str, dataset: str, split: str = "test") -> FeatureSet:
        """Open a complete feature set, or raise a clear error saying how to get one.

        Checks (one listing) that every chunk object of every array exists with its
        size and that the arrays' metadata agrees with ``spec.json``: a damaged set
        raises :class:`IntegrityError` naming the repair, never reads as zeros."""
        key = _fs_key(backbone, dataset, split)
        spec, writer = self._open_set(key)
        complete = self.objects.get_json(f"{writer.data_key}/_bobx/complete.json")
        if complete is None:
            missing = len(writer.missing_chunks())
            raise IncompleteError(
                f"Feature set {backbone}/{dataset}/{split} is incomplete ({missing} of "
                f"{writer.n_chunks} chunks missing); re-run `bobx extract --backbone {backbone} "
                f"--dataset {dataset} --split {split}` to finish it."
            )
        problems = [
            text for _, text in self._chunk_problems(writer.data_key, spec, range(writer.n_chunks))
        ]
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise IntegrityError(
                f"Feature set {backbone}/{dataset}/{split} is damaged: {problems[0]}{more}; run "
                f"`bobx verify --repair --backbone {backbone} --dataset {dataset} --split "
                f"{split}` to recompute it, or `{_rm_hint(key)}` and extract it again."
            )
        return FeatureSet(self, key, spec, complete)

    def check_features(
        self, backbone: str, dataset: str, split: str, *, deep: bool = False
    ) -> SetCheck:
        """Everything :meth:`features` checks, for a set in any state, without raising;
        ``deep`` also reads every chunk and compares it with the CRC-32 in its marker."""
        key = _fs_key(backbone, dataset, split)
        check = SetCheck(backbone, dataset, split, status="missing")
        try:
            spec = self._spec(key)
        except StoreError as exc:
            check.status, check.problems = "damaged spec", [str(exc)]
            return check
        if spec is None:
            left = self.objects.list_prefix(f"{key}/")
            if left:
                check.status = "leftover"
                check.problems = [f"{len(left)} objects left by an interrupted removal"]
            return check
        writer = FeatureWriter(self, key, spec)
        check.source = str(spec.get("attrs", {}).get("source", ""))
        check.cache_key = str(spec["cache_key"])
        complete = writer.complete
        markers = writer.markers()
        done = sorted(markers) if not complete else list(range(writer.n_chunks))
        check.status = (
            "complete" if complete else f"partial ({len(markers)}/{writer.n_chunks} chunks)"
        )
        bad: set[int] = set()
        for index, text in self._chunk_problems(writer.data_key, spec, done):
            check.problems.append(text)
            if index >= 0:
                bad.add(index)
            else:
                check.fatal.append(text)
        if complete:
            for index in range(writer.n_chunks):
                if index not in markers:
                    check.problems.append(f"chunk {index} has no marker")
                    bad.add(index)
        if deep:
            for index in done:
                if index in bad or "crc32" not in markers.get(index, {}):
                    continue
                for name in self._changed_arrays(writer, index, markers[index]["crc32"]):
                    check.problems.append(f"chunk {index} of {name} differs from its checksum")
                    bad.add(index)
        for generation in self.objects.list_groups(key):
            if generation.startswith("g-") and generation != spec.get("generation"):
                check.orphans.append(generation)
                check.problems.append(
                    f"orphan generation {generation} (left by a writer whose set was replaced)"
                )
        check.bad_chunks = sorted(bad)
        return check

    def _changed_arrays(
        self, writer: FeatureWriter, index: int, checksums: Mapping[str, int]
    ) -> list[str]:
        a, b = writer.chunk_range(index)
        where = writer.data_key
        try:
            with storage_errors(f"read chunk {index} of {_set_name(writer.key)}", self.url):
                read = {
                    name: np.asarray(
                        zarr.open_array(store=self.zstore, path=f"{where}/{name}", mode="r")[a:b]
                    )
                    for name in ARRAYS
                }
        except StoreError:
            raise
        except Exception:  # undecodable bytes: everything in this chunk is suspect
            return list(ARRAYS)
        now = chunk_checksums(
            read["embeddings"], read["labels"], list(read["ids"]), read["valid"], read["norms"]
        )
        return [name for name in ARRAYS if checksums.get(name) not in (None, now[name])]

    def remove_orphans(self, backbone: str, dataset: str, split: str) -> list[str]:
        """Delete generation folders the set's spec does not name (left by fenced
        writers). Returns their names."""
        key = _fs_key(backbone, dataset, split)
        removed = []
        for generation in self.objects.list_groups(key):
            spec = self._spec(key)  # re-read each time: never delete the live generation
            if generation.startswith("g-") and (
                spec is None or generation != spec.get("generation")
            ):
                self.objects.delete_prefix(f"{key}/{generation}")
                removed.append(generation)
        return removed

    def forget_lost_chunks(self, backbone: str, dataset: str, split: str) -> list[int]:
        """Drop the markers of an unfinished set's lost chunks (resuming recomputes them)."""
        _, writer = self._open_set(_fs_key(backbone, dataset, split))
        return writer.forget_lost_chunks()

    def unpublish(self, backbone: str, dataset: str, split: str, chunks: Sequence[int]) -> None:
        """Withdraw a damaged set's ``complete.json`` and the markers of ``chunks``, so
        that an extraction with the same cache key recomputes exactly those chunks."""
        key = _fs_key(backbone, dataset, split)
        spec, writer = self._open_set(key)
        self.objects.delete(f"{writer.data_key}/_bobx/complete.json")
        for index in chunks:
            self.objects.delete(writer._marker_key(index))

    def has_features(self, backbone: str, dataset: str, split: str) -> bool:
        key = _fs_key(backbone, dataset, split)
        try:
            spec = self._spec(key)
        except StoreError:
            return False
        return spec is not None and self.objects.exists(
            f"{data_key(key, spec)}/_bobx/complete.json"
        )

    def chunk_progress(
        self, backbone: str, dataset: str, split: str
    ) -> tuple[set[int], int, bool] | None:
        """``(chunks with a marker, chunks in total, published complete)`` of one set, read
        from its markers alone; ``None`` if the set was never created."""
        key = _fs_key(backbone, dataset, split)
        spec = self._spec(key)
        if spec is None:
            return None
        writer = FeatureWriter(self, key, spec)
        return writer.done_chunks(), writer.n_chunks, writer.complete

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

    def feature_keys(self) -> list[tuple[str, str, str]]:
        """``(backbone, dataset, split)`` of every folder under ``features/`` (any state)."""
        return [
            (backbone, dataset, split)
            for backbone in self.objects.list_groups("features")
            for dataset in self.objects.list_groups(f"features/{backbone}")
            for split in self.objects.list_groups(f"features/{backbone}/{dataset}")
        ]

    def list_features(self) -> list[FeatureSetInfo]:
        out = []
        for backbone, dataset, split in self.feature_keys():
            key = f"features/{backbone}/{dataset}/{split}"
            try:
                spec = self._spec(key)
            except StoreError:
                out.append(
                    FeatureSetInfo(
                        backbone, dataset, split, 0, 0, "", "corrupt (run bobx verify)", "", ""
                    )
                )
                continue
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

    def _remove_set(self, key: str) -> None:
        # the spec goes first: from then on every writer of the set is fenced off
        self.objects.delete(f"{key}/_bobx/spec.json")
        self.objects.delete_prefix(key)

    def delete_features(self, backbone: str, dataset: str, split: str) -> None:
        """Remove a feature set in any state (every generation); writers still filling
        it stop at their next chunk."""
        self._remove_set(_fs_key(backbone, dataset, split))

    def remove_features(
        self, backbone: str, dataset: str, splits: Sequence[str] | None = None
    ) -> list[str]:
        """``bobx rm``: remove the named splits (default: every split) of one backbone on
        one dataset, in any state. Returns the sets removed; UnknownNameError if none."""
        have = [
            split
            for b, d, split in self.feature_keys()
            if (b, d) == (backbone, dataset)
            and self.objects.list_prefix(f"{_fs_key(b, d, split)}/")
        ]
        todo = list(splits) if splits else have
        for split in todo or [""]:
            if split not in have:
                known = [f"{b}/{d}/{s}" for b, d, s in self.feature_keys()]
                raise UnknownNameError("feature set", f"{backbone}/{dataset}/{split or '*'}", known)
        for split in todo:
            self.delete_features(backbone, dataset, split)
        return [f"{backbone}/{dataset}/{split}" for split in todo]

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
        """Store features computed elsewhere so they evaluate and rank beside bobx's own.

        Everything is validated before anything is created (shape, finite values in the
        stored ``dtype``, integer labels in range, one id per row); an import that fails
        part-way leaves nothing behind, and an earlier import that never finished is
        replaced without ``overwrite``."""
        key = _fs_key(backbone, dataset, split)
        x = np.asarray(embeddings)
        if x.ndim != 2 or x.dtype.kind not in "fiu":
            raise ShapeError(
                f"Imported features must be a 2-D (N, D) numeric array, got {x.dtype} {x.shape}."
            )
        n = x.shape[0]
        check_layout(n=n, dim=x.shape[1], dtype=dtype, chunk_rows=None, label_shape=())
        with np.errstate(over="ignore", invalid="ignore"):
            finite = np.isfinite(x.astype(dtype)).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise ShapeError(
                f"Imported features have non-finite values in {dtype} (row {row}, max |x| "
                f"{float(np.nanmax(np.abs(x[row].astype(np.float64)))):.3g}); fix them, or "
                "import with --dtype float32 when they only overflow float16."
            )
        y = (
            np.full(n, -1, dtype=np.int64)
            if labels is None
            else check_labels(labels, n, where="Imported labels")
        )
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
        if not overwrite:
            with contextlib.suppress(StoreError):
                old = self._spec(key)
                overwrite = bool(
                    old is not None
                    and old.get("cache_key") != cache_key
                    and old.get("attrs", {}).get("source") == "import"
                    and not self.has_features(backbone, dataset, split)
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
        try:
            for index in writer.missing_chunks():
                a, b = writer.chunk_range(index)
                writer.write_chunk(index, x[a:b], labels=y[a:b], ids=id_list[a:b])
            writer.finalize()
            return self.features(backbone, dataset, split)
        except BaseException:
            with contextlib.suppress(BobxError):
                writer.check_current()
                self.delete_features(backbone, dataset, split)  # still ours: leave nothing
            raise

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
        *,
        files: Mapping[str, bytes] | None = None,
    ) -> None:
        """Keep arrays a job produced (probe weights, test logits) for later jobs, and
        ``files`` (name -> bytes, e.g. a COCO ``predictions.json``) beside them."""
        key = self._artifact_key(kind, backbone, dataset, name)
        self.objects.delete_prefix(key)
        with storage_errors(f"write artifact {key}", self.url):
            group = zarr.open_group(store=self.zstore, path=key, mode="w")
            for arr_name, value in arrays.items():
                value = np.asarray(value)
                group.create_array(
                    validate_name(arr_name, "array"), data=value, compressors=None, overwrite=True
                )
            for file_name, data in (files or {}).items():
                self.objects.put(f"{key}/{validate_name(file_name, 'artifact file')}", bytes(data))
        done = {
            "attrs": dict(attrs or {}),
            "arrays": sorted(arrays),
            "files": sorted(files or {}),
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
        with storage_errors(f"read artifact {key}", self.url):
            arrays = {
                n: np.asarray(zarr.open_array(store=self.zstore, path=f"{key}/{n}", mode="r")[...])
                for n in done["arrays"]
            }
        return arrays, dict(done.get("attrs", {}))

    def get_artifact_file(
        self, kind: str, backbone: str, dataset: str, name: str, file_name: str
    ) -> bytes:
        """The bytes of a file kept with an artifact (``put_artifact(files=...)``)."""
        key = self._artifact_key(kind, backbone, dataset, name)
        done = self.objects.get_json(f"{key}/_bobx/complete.json")
        if done is None or file_name not in done.get("files", []):
            have = [] if done is None else done.get("files", [])
            raise UnknownNameError(
                f"file of {kind} artifact {backbone}/{dataset}/{name}", file_name, have
            )
        data = self.objects.get(f"{key}/{validate_name(file_name, 'artifact file')}")
        if data is None:
            raise StoreError(f"Artifact file {key}/{file_name} is listed but missing.")
        return bytes(data)

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

    def _record_doc(self, key: str) -> dict[str, Any] | None:
        try:
            doc = self.objects.get_json(key)
        except StoreError as exc:
            if not isinstance(exc.__cause__, ValueError):
                raise
            doc = "not JSON"
        if doc is None or (isinstance(doc, dict) and {"id", "value"} <= set(doc)):
            return doc
        raise IntegrityError(
            f"Record object {key} in {self.url} is damaged (not a result record); run `bobx "
            "verify --repair` to set it aside (it moves to records/quarantine/)."
        )

    def _pack_frames(self) -> list[Any]:
        import pandas as pd

        frames = []
        for name in self.objects.list_dir("records/packs"):
            if not name.endswith(".parquet"):
                continue
            raw = self.objects.get(f"records/packs/{name}")
            if raw is None:
                continue
            try:
                frames.append(pd.read_parquet(io.BytesIO(raw)))
            except Exception as exc:  # pyarrow raises several types for damaged files
                raise IntegrityError(
                    f"Record pack records/packs/{name} in {self.url} is damaged ({exc}); run "
                    "`bobx verify --repair` to set it aside."
                ) from exc
        return frames

    def retracted_ids(self) -> set[str]:
        """Ids of records withdrawn with :meth:`retract`."""
        return {
            n[: -len(".json")]
            for n in self.objects.list_dir("records/retracted")
            if n.endswith(".json")
        }

    def _all_records(self) -> Any:
        """Every record object as one frame (retracted ones included), deduplicated.

        Loose records are read *before* packs: a compaction writes its pack and only then
        deletes the loose records it holds, so a loose record that vanishes while it is
        being read is in a pack that the later listing finds. Every record is seen once."""
        import pandas as pd

        rows = [doc for key in self._loose_record_keys() if (doc := self._record_doc(key))]
        frames = self._pack_frames()
        if rows:
            loose = pd.DataFrame(rows)
            loose["params"] = [provenance.canonical_json(p or {}) for p in loose["params"]]
            frames.append(loose)
        if not frames:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
        df = pd.concat(frames, ignore_index=True)
        return (
            df.drop_duplicates("id").sort_values("created_at", kind="stable").reset_index(drop=True)
        )

    def results(self, **filters: Any) -> Any:
        """All records as a pandas DataFrame (``params`` as canonical JSON), optionally
        filtered by column equality (a list value means any of). Retracted records
        (:meth:`retract`) are left out."""
        df = self._all_records()
        retracted = self.retracted_ids()
        if retracted:
            df = df[~df["id"].isin(retracted)]
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

    def retract(self, record_id: str, *, reason: str = "") -> bool:
        """Withdraw a record: a create-only tombstone ``records/retracted/<id>.json`` that
        every reader honours (compaction keeps it). Returns False when it already was."""
        if not isinstance(record_id, str) or not _RECORD_ID.fullmatch(record_id):
            raise DataError(
                f"{record_id!r} is not a record id (like 20261204T101500123456-0123456789abcdef); "
                "see the ids with `bobx results --format json`."
            )
        if record_id not in set(self._all_records()["id"]):
            raise UnknownNameError(
                "record", record_id, hint="See the ids with `bobx results --format json`."
            )
        doc = {
            "id": record_id,
            "reason": reason,
            "retracted_at": provenance.now_iso(),
            "retracted_by": provenance.user(),
            "host": provenance.host(),
        }
        return self.objects.put_new_json(f"records/retracted/{record_id}.json", doc)

    def quarantine(self, key: str) -> str:
        """Move a damaged record object or pack to ``records/quarantine/`` (readers skip
        it; nothing is deleted). Returns its new key."""
        target = f"records/quarantine/{key.rsplit('/', 1)[-1]}"
        raw = self.objects.get(key)
        if raw is not None:
            self.objects.put(target, raw)
            self.objects.delete(key)
        return target

    def compact_records(self) -> int:
        """Fold loose records into one Parquet pack, then remove them.

        The pack is written (create-only) before any loose record is deleted, and
        readers read loose records before packs, so a reader running during compaction
        sees every record exactly once. Returns how many records were packed."""
        import pandas as pd

        keys = self._loose_record_keys()
        docs = [d for d in (self._record_doc(k) for k in keys) if d is not None]
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


_RECORD_ID = re.compile(r"[0-9]{8}T[0-9]{12}-[0-9a-f]{16}")


def open_store(url: str | None = None, **storage_options: Any) -> Store:
    """Open (creating if needed) the store at ``url``; default ``$BOBX_STORE`` or ./bobx-store."""
    return Store(url, storage_options=storage_options or None)

"""Extraction: run a backbone over a dataset split once, into the store's chunked feature sets.

:func:`extract` is the library twin of ``bobx extract``. For each split it

1. plans the backbone (preprocessing, feature dimension, weights identity; no weights
   loaded) and computes the **cache key**: the sha256 (:func:`featcache.provenance.digest`)
   of :func:`cache_recipe`, i.e. everything that changes the stored bytes — the backbone's
   code identity (source, model, tag, hub id / url + sha256, key map, model kwargs,
   preprocessing overrides, resolution), the weights (pretrained source, file sha256 or
   random seed), the feature point, the resolved preprocessing (the library's data config
   and transform), the dataset (reader and its options, split, the ordered ids' digest,
   the reader's params such as ``query_crop``), ``limit``, precision, stored dtype and the
   versions of torch, torchvision, timm, open_clip and Pillow. Device, batch size and
   worker count are recorded as provenance, not keyed: they change float rounding only,
   and keying them would stop a set started on one machine from being finished on another;
2. opens (or resumes) the feature set; a complete set is returned as ``cached`` without
   loading the model;
3. computes only this shard's missing chunks: DataLoader workers decode and transform
   (to ``uint8``) while the model runs; normalisation, ``channels_last`` and autocast
   happen on the device; batches never straddle a chunk, so a chunk's bytes do not depend
   on which other chunks a run computes (resume and shards give identical arrays);
4. writes each finished chunk through :class:`featcache.store.FeatureWriter` from a
   background thread, publishes the set once every chunk exists, copies the split's
   ground truth into the store, and records the measured throughput (task ``speed``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from featcache import provenance
from featcache.backbones import BackboneSpec, get_backbone_spec, with_feature
from featcache.errors import (
    DataError,
    IncompleteError,
    IntegrityError,
    ShapeError,
    StoreError,
    UnavailableError,
    UnknownNameError,
)
from featcache.names import validate_name
from featcache.store import MAX_CHUNK_ROWS, FeatureWriter, Store, open_store

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
BAD_IMAGE_POLICIES = ("error", "skip")
#: Cache-key recipe version; bump when the recipe itself changes.
RECIPE_VERSION = 1
#: Libraries whose versions go into the cache key.
KEYED_LIBRARIES = ("torch", "torchvision", "timm", "open_clip_torch", "pillow")
#: First micro-batch tried by ``batch_size="auto"`` (halved on CUDA out-of-memory).
AUTO_BATCH = {"cuda": 256, "cpu": 32}
#: Image ids of rows masked invalid kept in the completion record (the count is exact).
MAX_LISTED_INVALID = 1000
#: ``--on-bad-image error``: unreadable images named in the one error (all are counted) ...
MAX_LISTED_BAD = 20
#: ... and after how many extraction gives up (a wrong data root should not scan millions).
MAX_BAD_IMAGES = 1000


@dataclass(frozen=True)
class ExtractResult:
    """What :func:`extract` did for one split."""

    backbone: str
    dataset: str
    split: str
    status: str  # complete | cached | partial (chunks of other shards missing) | missing
    n: int
    dim: int
    cache_key: str
    chunks_total: int
    chunks_written: int
    images: int
    n_invalid: int
    seconds: float
    images_per_s: float | None
    note: str = ""  # status missing: what was looked for

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- helpers
def shard_chunks(n_chunks: int, shard_index: int = 0, num_shards: int = 1) -> list[int]:
    """Chunks of shard ``shard_index`` of ``num_shards``: ``i, i + N, i + 2N, ...``.

    Every chunk belongs to exactly one shard, for any ``n_chunks`` and ``num_shards``."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise UnknownNameError(
            "shard",
            f"{shard_index} of {num_shards}",
            hint="Use --num-shards N >= 1 and 0 <= --shard-index < N.",
        )
    return list(range(shard_index, n_chunks, num_shards))


def split_lease_key(
    backbone: str, dataset: str, split: str, shard_index: int = 0, num_shards: int = 1
) -> str:
    """The lease an extraction of one set takes: ``extract/<backbone>/<dataset>/<split>``,
    or per chunk range ``.../<split>.shard-<i>-of-<n>`` (shards run side by side)."""
    from featcache.leases import lease_key

    part = split if num_shards == 1 else f"{split}.shard-{shard_index}-of-{num_shards}"
    return lease_key("extract", backbone, dataset, part)


@contextmanager
def _take_lease(st: Store, key: str, *, wait: bool, ttl_s: float | None) -> Iterator[Any]:
    from featcache.leases import DEFAULT_TTL_S, LeaseHeldError, acquire

    ttl = DEFAULT_TTL_S if ttl_s is None else ttl_s
    try:
        lease = acquire(st, key, ttl_s=ttl, note="extract")
    except LeaseHeldError as exc:
        if not wait:
            raise
        log.warning("%s; waiting for it", exc)
        lease = acquire(st, key, ttl_s=ttl, wait=True, note="extract")
    with lease:
        yield lease


def _load_model(plan: Any, device: Any, models: MutableMapping[str, Any] | None) -> Any:
    """Load ``plan``'s model on ``device`` (or take it from ``models``, keyed by
    ``<backbone>|<device>|<identity digest>``)."""
    from featcache.models import load_backbone

    key = f"{plan.spec.name}|{device}|{provenance.digest(plan.identity())}"
    model = None if models is None else models.get(key)
    if model is None:
        model = load_backbone(plan, device=device)
        if models is not None:
            models[key] = model
    set_threads(device)
    return model


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in KEYED_LIBRARIES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def dataset_identity(dspec: Any) -> dict[str, Any]:
    """The dataset spec fields that change bytes (not its description, file or root)."""
    d = dspec.to_dict()
    options = {k: v for k, v in (d.get("options") or {}).items() if k != "root"}
    return {
        "name": d.get("name"),
        "format": d.get("format"),
        "options": options,
        "class_subset": d.get("class_subset"),
        "multilabel": d.get("multilabel"),
    }


def cache_recipe(
    plan: Any,
    dspec: Any,
    split: Any,
    *,
    split_name: str,
    precision: str,
    dtype: str,
    limit: int | None,
) -> dict[str, Any]:
    """Everything that changes the stored bytes of one feature set (see the module doc)."""
    return {
        "recipe": RECIPE_VERSION,
        "model": plan.identity(),
        "dataset": dataset_identity(dspec),
        "split": split_name,
        "n": len(split),
        "ids_digest": split.ids_digest(),
        "reader_params": dict(split.params),
        "limit": limit,
        "precision": precision,
        "dtype": dtype,
        "versions": library_versions(),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_device(device: str = "auto") -> Any:
    """``auto`` -> cuda when available, else cpu; a CUDA request without a GPU is refused."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UnknownNameError("device", device, ("auto", "cpu", "cuda", "cuda:<i>")) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnavailableError(
            "--device cuda was asked for, but torch sees no CUDA GPU here; "
            "use --device cpu (or auto)."
        )
    return dev


def default_workers(device_type: str) -> int:
    """DataLoader workers: decode overlaps the model; on CPU they share the cores with it."""
    cores = cpu_count()
    if device_type == "cuda":
        return max(1, min(cores - 1, 32))
    return 1 if cores <= 4 else min(4, cores // 4)


# --------------------------------------------------------------------------- reading
class _Rows:
    """A map-style dataset over split rows: ``(row, image tensor, error message)``.

    An unreadable image never raises in a worker (that would turn into a multi-line
    traceback); it comes back as zeros plus a one-line message the main process acts on.
    """

    def __init__(
        self, split: Any, transform: Callable[[Any], Any], shape: tuple[int, ...], dtype: Any
    ) -> None:
        self.split, self.transform, self.shape, self.dtype = split, transform, shape, dtype

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, row: int) -> tuple[int, Any, str]:
        import torch

        try:
            x = self.transform(self.split.load(row))
            if tuple(x.shape) != self.shape or x.dtype != self.dtype:
                raise ShapeError(
                    f"transform gave {x.dtype} {tuple(x.shape)}, expected {self.dtype} {self.shape}"
                )
            return row, x, ""
        except DataError as exc:
            message = str(exc)
        except Exception as exc:  # a decoder / transform failure on one image
            message = (
                f"Cannot process image {self.split.describe(row)} ({type(exc).__name__}: {exc})"
            )
        return row, torch.zeros(self.shape, dtype=self.dtype), " ".join(message.split())


def chunk_batches(writer: FeatureWriter, chunks: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row batches of ``chunks``, each inside one chunk and at fixed offsets from its start."""
    batches: list[list[int]] = []
    for index in chunks:
        start, stop = writer.chunk_range(index)
        batches.extend(
            list(range(a, min(a + batch_size, stop))) for a in range(start, stop, batch_size)
        )
    return batches


class _ChunkSink:
    """Collects feature rows per chunk and writes each finished chunk from a thread."""

    def __init__(
        self,
        writer: FeatureWriter,
        split: Any,
        chunks: Sequence[int],
        dim: int,
        *,
        keep_invalid: bool = True,
    ) -> None:
        self.writer, self.split, self.dim = writer, split, dim
        self.keep_invalid = keep_invalid  # False: a chunk with a bad image is not written
        self.pending: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        self.todo = set(chunks)
        self.written = 0
        self.dropped = 0
        self.error: BaseException | None = None
        self.q: queue.Queue[tuple[int, np.ndarray, np.ndarray] | None] = queue.Queue(maxsize=4)
        self.thread = threading.Thread(target=self._run, name="bobx-chunk-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is not None:
                continue
            index, emb, valid = item
            a, b = self.writer.chunk_range(index)
            try:
                self.writer.write_chunk(
                    index, emb, labels=self.split.labels[a:b], ids=self.split.ids[a:b], valid=valid
                )
                self.written += 1
            except BaseException as exc:
                self.error = exc

    def add(self, rows: np.ndarray, feats: np.ndarray, valid: np.ndarray) -> int:
        """Add rows; returns how many chunks were completed (and queued for writing)."""
        if self.error is not None:
            raise self.error
        rows_per_chunk = self.writer.chunk_rows
        done = 0
        for index in np.unique(rows // rows_per_chunk):
            index = int(index)
            a, b = self.writer.chunk_range(index)
            if index not in self.pending:
                self.pending[index] = (
                    np.zeros((b - a, self.dim), np.float32),
                    np.zeros(b - a, bool),
                    0,
                )
            emb, ok, filled = self.pending[index]
            sel = (rows // rows_per_chunk) == index
            emb[rows[sel] - a] = feats[sel]
            ok[rows[sel] - a] = valid[sel]
            filled += int(sel.sum())
            if filled == b - a:
                del self.pending[index]
                if self.keep_invalid or ok.all():
                    self.q.put((index, emb, ok))
                    done += 1
                else:
                    self.dropped += 1
            else:
                self.pending[index] = (emb, ok, filled)
        return done

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


class _Progress:
    """A rich progress bar with images/s (a no-op when disabled)."""

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self.bar: Any = None
        if not enabled or total <= 0:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task(label, total=total, rate="-")
        self.t0 = time.perf_counter()
        self.count = 0

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.count += n
            rate = self.count / max(1e-9, time.perf_counter() - self.t0)
            self.bar.update(self.task, advance=n, rate=f"{rate:,.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# --------------------------------------------------------------------------- running
class _Runner:
    """The model side: device transfer, autocast, OOM back-off and, on CUDA, copies of the
    features back to the host on a side stream, so the GPU computes batch k + 1 while the
    host collects batch k and fetches the next one."""

    def __init__(self, model: Any, device: Any, precision: str, batch_size: int, auto: bool):
        import torch

        self.torch, self.model, self.device = torch, model, device
        self.auto, self.micro = auto, batch_size
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _forward(self, x: Any) -> Any:
        torch = self.torch
        with torch.autocast(
            self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        ):
            if self.micro >= x.shape[0]:
                return self.model(x).float()
            return torch.cat(
                [
                    self.model(x[i : i + self.micro]).float()
                    for i in range(0, x.shape[0], self.micro)
                ]
            )

    def __call__(self, x: Any) -> Any:
        """Features of one batch, on the device (float32)."""
        torch = self.torch
        x = x.to(self.device, non_blocking=True)
        while True:
            try:
                with torch.inference_mode():
                    return self._forward(x)
            except torch.OutOfMemoryError as exc:
                if self.device.type != "cuda" or not self.auto or self.micro <= 1:
                    raise UnavailableError(
                        f"Out of {self.device.type} memory at batch size "
                        f"{min(self.micro, x.shape[0])}; use --batch-size auto or a smaller one."
                    ) from exc
                torch.cuda.empty_cache()
                self.micro = max(1, min(self.micro, x.shape[0]) // 2)
                log.warning("CUDA out of memory; retrying with batch size %d", self.micro)

    def submit(self, x: Any) -> tuple[Any, ...]:
        """Start one batch; :meth:`fetch` returns its features as a numpy array."""
        out = self(x)
        if self.copy_stream is None:
            return (out,)
        torch = self.torch
        ready = torch.cuda.Event()
        ready.record()
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(ready)
            host = out.to("cpu", non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        return (host, done, out)  # ``out`` stays referenced until the copy is done

    @staticmethod
    def fetch(handle: tuple[Any, ...]) -> np.ndarray:
        if len(handle) > 1:
            handle[1].synchronize()
        return np.array(handle[0].numpy(), dtype=np.float32)


def _make_loader(
    split: Any, plan: Any, batches: list[list[int]], device: Any, num_workers: int
) -> Iterator[tuple[Any, Any, list[str]]]:
    from torch.utils.data import DataLoader

    dataset = _Rows(split, plan.cpu_transform, plan.input_size, plan.input_dtype)
    if num_workers <= 0:
        from torch.utils.data import default_collate

        for batch in batches:
            yield default_collate([dataset[i] for i in batch])
        return
    loader: DataLoader[Any] = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_sampler=batches,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2,
        persistent_workers=False,
        multiprocessing_context="fork" if "fork" in _start_methods() else None,
    )
    yield from loader


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


def _device_name(device: Any) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"{platform.machine()} x{cpu_count()}"


def _run_split(
    *,
    writer: FeatureWriter,
    split: Any,
    chunks: list[int],
    plan: Any,
    model: Any,
    device: Any,
    precision: str,
    batch_size: int,
    auto_batch: bool,
    num_workers: int,
    on_bad_image: str,
    progress: bool,
    label: str,
) -> tuple[int, int, float]:
    """Compute ``chunks`` of one split. Returns (chunks written, images, seconds)."""
    batches = chunk_batches(writer, chunks, batch_size)
    n_images = sum(len(b) for b in batches)
    sink = _ChunkSink(writer, split, chunks, plan.dim, keep_invalid=on_bad_image == "skip")
    bad: list[str] = []
    n_bad = 0
    runner = _Runner(model, device, precision, batch_size, auto_batch)
    bar = _Progress(progress, label, n_images)
    pending: deque[tuple[Any, tuple[Any, ...], np.ndarray]] = deque()
    depth = 1 if device.type == "cuda" else 0  # batches in flight beyond the newest
    t0 = time.perf_counter()

    def drain() -> None:
        rows, handle, valid = pending.popleft()
        feats = runner.fetch(handle)
        feats[~valid] = 0.0
        sink.add(rows.numpy().astype(np.int64), feats, valid)
        bar.advance(len(valid))

    try:
        for rows, x, errors in _make_loader(split, plan, batches, device, num_workers):
            valid = np.array([not e for e in errors], dtype=bool)
            if not valid.all() and on_bad_image == "error":
                n_bad += int((~valid).sum())
                bad += [e for e in errors if e][: MAX_LISTED_BAD - len(bad)]
                if n_bad >= MAX_BAD_IMAGES:
                    break
            pending.append((rows, runner.submit(x), valid))
            while len(pending) > depth:
                drain()
        while pending:
            drain()
        sink.close()
        if n_bad:
            raise DataError(_bad_images_message(bad, n_bad, sink.dropped, label))
    finally:
        bar.close()
        if sink.thread.is_alive():
            sink.q.put(None)
    seconds = time.perf_counter() - t0
    return sink.written, n_images, seconds


def _bad_images_message(bad: list[str], n_bad: int, dropped: int, label: str) -> str:
    """One line naming every unreadable image (up to :data:`MAX_LISTED_BAD`)."""
    count = f"at least {n_bad}" if n_bad >= MAX_BAD_IMAGES else str(n_bad)
    more = f"; and {n_bad - len(bad)} more" if n_bad > len(bad) else ""
    stopped = " (extraction stopped there)" if n_bad >= MAX_BAD_IMAGES else ""
    return (
        f"{count} image{'s' if n_bad != 1 else ''} could not be read{stopped}: "
        f"{'; '.join(bad)}{more}. {label} stays incomplete: the {dropped} chunk(s) holding "
        "them were not written, every other chunk was. Fix or remove those files (or pass "
        "--on-bad-image skip to mask them), then re-run: only those chunks are computed."
    )


def _invalid_ids(writer: FeatureWriter) -> list[str]:
    import zarr

    zs = writer.store.zstore
    where = writer.data_key
    valid = np.asarray(zarr.open_array(store=zs, path=f"{where}/valid", mode="r")[...], bool)
    bad = np.flatnonzero(~valid)[:MAX_LISTED_INVALID]
    if not len(bad):
        return []
    ids = zarr.open_array(store=zs, path=f"{where}/ids", mode="r")
    return [str(ids[int(i)]) for i in bad]


def stored_name(spec: BackboneSpec, weights: Any, name: str | None = None) -> str:
    """The backbone name a run's features and records are stored under.

    The catalog name for its own weights (pretrained, or a random baseline's catalog
    seed); ``<name>@seed<N>`` for another random init and ``<name>@w-<sha8>`` for a
    weights file, so custom weights never share (and overwrite, or rank as) the
    pretrained backbone; ``name`` (``--name``) when given."""
    if name is not None:
        return validate_name(name, "backbone name (--name)")
    if weights.kind == "file":
        return f"{spec.name}@w-{str(weights.sha256)[:8]}"
    if weights.kind == "random" and not (spec.is_random and weights.seed == spec.seed):
        return f"{spec.name}@seed{weights.seed}"
    return spec.name


def _check_arguments(
    *,
    precision: str,
    on_bad_image: str,
    batch_size: int | str,
    dtype: str,
    limit: int | None,
    chunk_rows: int | None,
    shard_index: int,
    num_shards: int,
    overwrite: bool,
) -> None:
    """Every argument problem, before anything is loaded or written."""
    if precision not in PRECISIONS:
        raise UnknownNameError("precision", precision, PRECISIONS)
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise UnknownNameError("--on-bad-image policy", on_bad_image, BAD_IMAGE_POLICIES)
    if batch_size != "auto" and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise UnknownNameError("batch size", str(batch_size), ("auto", "<positive integer>"))
    if dtype not in ("float16", "float32"):
        raise UnknownNameError("feature dtype", dtype, ("float16", "float32"))
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be a positive number of images, got {limit}.")
    if chunk_rows is not None and (
        isinstance(chunk_rows, bool)
        or not isinstance(chunk_rows, int)
        or not 1 <= chunk_rows <= MAX_CHUNK_ROWS
    ):
        raise DataError(
            f"--chunk-rows must be a positive number of rows (at most {MAX_CHUNK_ROWS}), "
            f"got {chunk_rows}."
        )
    shard_chunks(1, shard_index, num_shards)  # validates the shard arguments
    if overwrite and num_shards > 1:
        raise DataError(
            "--overwrite rebuilds the whole set, so shards cannot share it: remove the old "
            "set once (`bobx rm`, or one run with --overwrite), then start the shards "
            "without --overwrite."
        )


def _resolve(backbone: str | BackboneSpec, layer: str | None, dataset: Any) -> tuple[Any, Any]:
    """The backbone spec (another feature point is its own backbone, ``<name>@<feature>``)
    and the dataset spec."""
    from featcache.datasets import get_dataset_spec

    spec = get_backbone_spec(backbone)
    if layer is not None:
        spec = with_feature(spec, layer)
    return spec, get_dataset_spec(dataset) if isinstance(dataset, str) else dataset


def planned_cache_key(
    backbone: str | BackboneSpec,
    dataset: Any,
    split: str,
    *,
    data_root: str | Path | None = None,
    precision: str = "fp32",
    weights: str = "pretrained",
    seed: int | None = None,
    layer: str | None = None,
    limit: int | None = None,
    query_crop: str = "bbx",
    dtype: str = "float16",
) -> str:
    """The cache key :func:`extract` would give this split, computed without running
    anything (no weights are loaded): ``bobx verify --repair`` checks it first."""
    from featcache.datasets import open_split
    from featcache.models import plan_backbone

    spec, dspec = _resolve(backbone, layer, dataset)
    plan = plan_backbone(spec, weights, seed=seed)
    data = open_split(dspec, split, data_root=data_root, query_crop=query_crop, limit=limit)
    recipe = cache_recipe(
        plan, dspec, data, split_name=split, precision=precision, dtype=dtype, limit=limit
    )
    return provenance.digest(recipe)


def extract(
    store: Store | str | None,
    backbone: str | BackboneSpec,
    dataset: Any,
    *,
    splits: Sequence[str] | None = None,
    data_root: str | Path | None = None,
    device: str = "auto",
    batch_size: int | str = 64,
    num_workers: int | None = None,
    precision: str = "fp32",
    weights: str = "pretrained",
    seed: int | None = None,
    layer: str | None = None,
    limit: int | None = None,
    shard_index: int = 0,
    num_shards: int = 1,
    overwrite: bool = False,
    on_bad_image: str = "error",
    query_crop: str = "bbx",
    dtype: str = "float16",
    chunk_rows: int | None = None,
    name: str | None = None,
    progress: bool = True,
    record_speed: bool = True,
    lease_wait: bool = True,
    lease_ttl_s: float | None = None,
    models: MutableMapping[str, Any] | None = None,
) -> list[ExtractResult]:
    """Extract ``backbone`` features of ``dataset`` into ``store``; one result per split.

    Args:
        store: a :class:`Store`, or its URL (``None``: ``$BOBX_STORE`` or ./bobx-store).
        backbone: a catalog name or alias, or a :class:`BackboneSpec`.
        dataset: a dataset name or ``DatasetSpec``; ``splits`` defaults to the splits the
            evaluators use (``spec.default_splits``: all but ``extra_splits`` such as
            digits' ``all``). Of those defaults, a split whose data is not there (an
            image folder without ``val/``) is skipped with status ``missing`` and a note
            saying what was looked for; a split asked for by name must exist.
        device: ``auto`` | ``cpu`` | ``cuda[:i]``.
        batch_size: images per forward, or ``"auto"`` (starts at 256 on CUDA and halves on
            out-of-memory; 32 on CPU).
        num_workers: DataLoader decode workers (default: cores - 1 on GPU, 1 on small CPUs;
            0 decodes in this process).
        precision: ``fp32`` | ``bf16`` | ``fp16`` (autocast).
        weights: ``pretrained`` | ``random`` (seeded by ``seed``, default the spec's) | PATH.
        layer: feature point (``pooled`` | ``cls`` | ``patch_mean`` | ``block:<i>``);
            default the catalog's. Another point is stored as its own backbone
            ``<name>@<feature>`` (e.g. ``dino_vitb_in1k@block-4``), which names also accept.
        limit: only the first ``limit`` images of each split (quick runs).
        shard_index, num_shards: compute chunks ``i, i + N, ...`` only; the set is published
            by whichever shard finishes last.
        overwrite: replace the set, even one with the same cache key (a rebuild); a writer
            still filling the old set stops at its next chunk. Not with ``num_shards > 1``.
        on_bad_image: ``error`` (every unreadable image is named in one error, up to
            :data:`MAX_LISTED_BAD`; the chunks holding them are not written, all others
            are, and the set stays incomplete) or ``skip`` (zero embedding,
            ``valid=False``; counted in the completion record).
        query_crop: ``bbx`` | ``none`` for retrieval query splits with boxes.
        dtype: stored dtype, ``float16`` | ``float32``.
        chunk_rows: rows per chunk of a new set (default from the store, ~8 MiB).
        name: store the features (and records) under this backbone name; by default
            :func:`stored_name` (``<backbone>@w-<sha8>`` for a weights file,
            ``<backbone>@seed<N>`` for another random init).
        lease_wait, lease_ttl_s: computing a set (or a shard's chunks) takes the lease
            :func:`split_lease_key` first, so two processes never compute it at once;
            held by someone else: wait for it (then finish only what is still missing),
            or with ``lease_wait=False`` raise :class:`featcache.leases.LeaseHeldError`.
        models: a cache of loaded models (executors keep one per worker, so a backbone
            loads once per worker instead of once per set).

    Returns:
        One :class:`ExtractResult` per split, in order.
    """
    from featcache.datasets import MissingSplitError, open_split

    _check_arguments(
        precision=precision,
        on_bad_image=on_bad_image,
        batch_size=batch_size,
        dtype=dtype,
        limit=limit,
        chunk_rows=chunk_rows,
        shard_index=shard_index,
        num_shards=num_shards,
        overwrite=overwrite,
    )
    auto_batch = batch_size == "auto"
    st = store if isinstance(store, Store) else open_store(store)
    st.check_writable()  # a read-only or full store fails now, before any model loads
    spec, dspec = _resolve(backbone, layer, dataset)
    split_names = list(splits) if splits else list(dspec.default_splits)
    dev = resolve_device(device)
    from featcache.models import plan_backbone

    plan = plan_backbone(spec, weights, seed=seed)
    backbone_name = stored_name(spec, plan.weights, name)
    bs = AUTO_BATCH["cuda" if dev.type == "cuda" else "cpu"] if auto_batch else int(batch_size)
    workers = default_workers(dev.type) if num_workers is None else max(0, int(num_workers))

    results: list[ExtractResult] = []
    model = None
    for split_name in split_names:
        try:
            split = open_split(
                dspec, split_name, data_root=data_root, query_crop=query_crop, limit=limit
            )
        except MissingSplitError as exc:
            if splits:
                raise
            results.append(_missing(backbone_name, dspec.name, split_name, str(exc)))
            continue
        if len(split) == 0:
            raise DataError(f"{dspec.name}/{split_name} has no images; nothing to extract.")
        recipe = cache_recipe(
            plan, dspec, split, split_name=split_name, precision=precision, dtype=dtype, limit=limit
        )
        key = provenance.digest(recipe)
        attrs = {
            "source": "extract",
            "backbone": spec.to_dict(),
            "stored_as": backbone_name,
            "weights": plan.weights.describe(),
            "feature": plan.feature,
            "preprocess": plan.preprocess(),
            "dataset": dspec.to_dict(),
            "split": split_name,
            "ids_digest": recipe["ids_digest"],
            "reader_params": _jsonable(dict(split.params)),
            "classes": split.classes,
            "query_crop": query_crop,
            "limit": limit,
            "precision": precision,
            "dtype": dtype,
            "params": plan.params,
            "cache_recipe": recipe,
            "bobx_version": provenance.bobx_version(),
            "git_hash": provenance.git_hash(),
        }
        if model is None and _needs_model(
            st, backbone_name, dspec.name, split_name, key, overwrite
        ):
            # load (and fail on missing weights) before anything is written to the store
            model = _load_model(plan, dev, models)
        writer = st.create_features(
            backbone_name,
            dspec.name,
            split_name,
            n=len(split),
            dim=plan.dim,
            cache_key=key,
            dtype=dtype,
            label_shape=split.labels.shape[1:],
            chunk_rows=chunk_rows,
            attrs=_jsonable(attrs),
            overwrite=overwrite,
        )
        for meta_name, value in split.meta.items():
            st.put_meta(dspec.name, meta_name, _jsonable(value))
        label = f"{backbone_name}/{dspec.name}/{split_name}"
        if writer.complete and not _lost_chunks_unpublished(st, writer):
            results.append(_result(st, writer, dspec, split_name, "cached", 0, 0, 0.0))
            continue
        todo = writer.missing_chunks(shard_chunks(writer.n_chunks, shard_index, num_shards))
        written, images, seconds = 0, 0, 0.0
        if todo:
            lease_name = split_lease_key(spec.name, dspec.name, split_name, shard_index, num_shards)
            with _take_lease(st, lease_name, wait=lease_wait, ttl_s=lease_ttl_s):
                todo = writer.missing_chunks(todo)  # a holder we waited for may have done them
                if todo:
                    if model is None:
                        model = _load_model(plan, dev, models)
                    written, images, seconds = _run_split(
                        writer=writer,
                        split=split,
                        chunks=todo,
                        plan=plan,
                        model=model,
                        device=dev,
                        precision=precision,
                        batch_size=bs,
                        auto_batch=auto_batch,
                        num_workers=workers,
                        on_bad_image=on_bad_image,
                        progress=progress,
                        label=label,
                    )
            if not todo and writer.complete:  # published by the holder this run waited for
                results.append(_result(st, writer, dspec, split_name, "cached", 0, 0, 0.0))
                continue
        rate = images / seconds if images and seconds > 0 else None
        run = {
            "device": dev.type,
            "device_name": _device_name(dev),
            "batch_size": "auto" if auto_batch else bs,
            "num_workers": workers,
            "images_per_s": None if rate is None else round(rate, 2),
        }
        complete = False
        if not writer.missing_chunks():
            complete = writer.finalize(invalid_ids=_invalid_ids(writer), last_run=run)
        status = "complete" if complete else "partial"
        results.append(_result(st, writer, dspec, split_name, status, written, images, seconds))
        if record_speed and rate is not None:
            st.record(
                backbone=backbone_name,
                task="speed",
                dataset=dspec.name,
                split=split_name,
                metric="images_per_s",
                value=rate,
                higher_is_better=True,
                cache_key=key,
                params={
                    "device": dev.type,
                    "device_name": run["device_name"],
                    "precision": precision,
                    "batch_size": run["batch_size"],
                    "num_workers": workers,
                    "images": images,
                    "torch_threads": _torch_threads(),
                },
            )
    if results and all(r.status == "missing" for r in results):
        raise DataError(
            f"None of the splits of {dspec.name} ({', '.join(split_names)}) is there: "
            f"{results[0].note}"
        )
    return results


def _lost_chunks_unpublished(st: Store, writer: FeatureWriter) -> bool:
    """A complete set whose chunk objects were lost since: withdraw it and drop the
    markers of the lost chunks, so this run recomputes them (same key, same bytes).
    Returns whether anything was withdrawn; damage beyond lost chunks is an error."""
    lost, whole = writer.damage()
    backbone, dataset, split = writer.key.split("/")[1:4]
    if whole:
        raise IntegrityError(
            f"Feature set {backbone}/{dataset}/{split} is damaged beyond lost chunks "
            f"({whole[0]}); remove it with `bobx rm --backbone {backbone} --dataset {dataset} "
            f"--split {split}` and extract it again."
        )
    if not lost:
        return False
    log.warning("%s/%s/%s: recomputing %d lost chunk(s)", backbone, dataset, split, len(lost))
    st.unpublish(backbone, dataset, split, lost)
    return True


def _missing(backbone: str, dataset: str, split: str, note: str) -> ExtractResult:
    return ExtractResult(
        backbone, dataset, split, "missing", 0, 0, "", 0, 0, 0, 0, 0.0, None, note=note
    )


def _needs_model(
    st: Store, backbone: str, dataset: str, split: str, key: str, overwrite: bool
) -> bool:
    """False when the set is complete with this key and no --overwrite (cached), or
    complete with another key and no --overwrite (create_features will refuse it); True
    when there may be work to do (--overwrite always rebuilds)."""
    if overwrite:
        return True
    try:
        st.features(backbone, dataset, split)
    except (UnknownNameError, IncompleteError, StoreError):
        return True
    return False


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def set_threads(device: Any) -> None:
    """Backend settings. On CPU the model gets the cores this process may use (decode
    workers run beside it at one thread each). torch's default counts the machine's cores, which oversubscribes
    a container limited to fewer; an explicit OMP_NUM_THREADS is respected."""
    import torch

    if device.type == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, min(torch.get_num_threads(), cpu_count())))
    if device.type == "cuda":  # fixed shapes: let cuDNN pick its fastest kernels once
        torch.backends.cudnn.benchmark = True


def _result(
    st: Store,
    writer: FeatureWriter,
    dspec: Any,
    split: str,
    status: str,
    written: int,
    images: int,
    seconds: float,
) -> ExtractResult:
    done = st.objects.get_json(f"{writer.data_key}/_bobx/complete.json") or {}
    return ExtractResult(
        backbone=writer.key.split("/")[1],
        dataset=dspec.name,
        split=split,
        status=status,
        n=writer.n,
        dim=int(writer.spec["dim"]),
        cache_key=str(writer.spec["cache_key"]),
        chunks_total=writer.n_chunks,
        chunks_written=written,
        images=images,
        n_invalid=int(done.get("n_invalid", 0)),
        seconds=round(seconds, 3),
        images_per_s=round(images / seconds, 2) if images and seconds > 0 else None,
    )


__all__ = [
    "ExtractResult",
    "cache_recipe",
    "chunk_batches",
    "extract",
    "planned_cache_key",
    "stored_name",
    "resolve_device",
    "shard_chunks",
    "split_lease_key",
]

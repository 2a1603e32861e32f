"""Exact top-k inner-product search over a streamed database.

One function, :func:`exact_topk`, shared by the kNN classifier and the retrieval
evaluators. The database is consumed block by block (an in-memory array is cut
into ``block_rows`` slices, an iterable of blocks is read as it comes), and the
per-block top-k lists are merged into a running result, so peak memory is
bounded by the block size and the ``(n_queries, k)`` result, never by the
database size. This is the pattern of faiss ``contrib.exhaustive_search
.knn_ground_truth``; the same call serves a RAM array and a 1M-row store.

Ordering contract (stable, tested):

* rows of the result are sorted by descending score;
* equal scores are ordered by ascending database index, and when equal scores
  straddle the k-th place, the ones with the smallest database indices are kept.
  In other words the result is the first ``k`` items of the database sorted by
  the key ``(-score, index)``, which is a strict total order, so the answer does
  not depend on ``block_rows``, on how an iterable was chunked, or on the backend.

Scores are computed in float32 (fp16 / float64 inputs are converted), as faiss
and every GPU kNN do. Exact ties are therefore ties of float32 dot products.

Cosine search divides each database row by its L2 norm (:func:`row_norms`). A store
keeps those norms beside every feature set, so a search can pass them in
(``db_norms``) and skip the pass that computes them; either way the rows are
normalised block by block into one reused buffer (fp16 rows converted in the same
pass), never into a fresh copy of the database. Results are bit-identical with and
without stored norms.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from evaluators.errors import DataError, ShapeError, UnavailableError, UnknownNameError

__all__ = [
    "METRICS",
    "UnitRows",
    "as_labels",
    "exact_topk",
    "l2_normalize",
    "release_buffers",
    "row_norms",
]

#: Similarities :func:`exact_topk` understands. ``"ip"``: raw inner product;
#: ``"cosine"``: inner product of L2-normalised rows (zero rows stay zero).
METRICS = ("ip", "cosine")
_DEVICES = ("cpu", "cuda")
# Upper bound on the number of float32 similarities materialised at once by the
# numpy and torch paths (one query chunk x one database block): 2**26 -> 256 MiB.
_MAX_TILE = 1 << 26


def as_labels(y: Any, what: str = "labels") -> np.ndarray:
    """Validate 1-D integer class labels and return them as int64.

    Floats holding whole numbers are accepted; negative values, other dtypes and
    other shapes raise :class:`ShapeError` (shared by the evaluators).
    """
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ShapeError(f"{what} must be 1-D class indices, got shape {arr.shape}.")
    whole = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.floating) and np.array_equal(arr, np.round(arr))
    )
    if arr.size and not whole:
        raise ShapeError(f"{what} must hold integer class indices, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ShapeError(f"{what} has negative class indices; map labels to 0..C-1 first.")
    return arr


def l2_normalize(x: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32: ``x / max(||x||, eps)``.

    Shape: ``(n, d) -> (n, d)``. Zero rows stay zero (same clamp as
    ``torch.nn.functional.normalize``).
    """
    return _unit_rows(np.asarray(x, dtype=np.float32), eps)


def row_norms(x: np.ndarray) -> np.ndarray:
    """Row L2 norms, float32 of shape (n,): the rows as float32, squares summed in float64.

    Exactly the numbers :func:`l2_normalize` divides by, so norms computed once (the
    store writes them at extraction and import) serve every later cosine search. A norm
    is finite iff its row is (float32 rows cannot overflow the float64 sum; a norm above
    float32's range becomes inf)."""
    x32 = np.asarray(x, dtype=np.float32)
    if x32.ndim != 2:
        raise ShapeError(f"row_norms needs a 2-D array (rows, dim), got shape {x32.shape}.")
    with np.errstate(over="ignore"):
        return np.sqrt(np.einsum("ij,ij->i", x32, x32, dtype=np.float64)).astype(np.float32)


def _unit_rows(x: np.ndarray, eps: float, what: str | None = None) -> np.ndarray:
    """:func:`l2_normalize` of a float32 array; with ``what``, the row norms double as
    the NaN / inf check (a norm is finite iff every entry of its row is)."""
    norms = row_norms(x)
    if what is not None:
        _check_finite(norms, what)
    return x / np.maximum(norms, np.float32(eps))[:, None]


class UnitRows:
    """L2-normalise consecutive row blocks of a database into one reused float32 buffer.

    ``norms`` (optional, shape (n_db,)) are the rows' :func:`row_norms`, e.g. as a store
    keeps them: then no pass over the rows computes them, and their finiteness stands
    for the rows' (the caller vouches that they describe these rows). Without them each
    block's norms are computed (and checked) here. Any float dtype is read as float32 in
    the same pass as the division (an fp16 block is not converted first). Each call
    returns a view of the buffer, valid until the next call; the result equals
    :func:`l2_normalize` of the block, bit for bit.

    Large blocks are split into one span of rows per core, processed on a small thread
    pool (numpy releases the GIL) in pieces of :data:`_ROW_CHUNK` rows, each read once
    while it is in cache: the division, memory-bound, runs on every core like the search
    that follows.

    The buffer outlives the search: when this object is done (:meth:`close`, called by
    :meth:`check_complete`), its thread keeps the buffer (the largest one, ``block_rows x
    dim`` float32: 192 MiB at 65,536 x 768) for the next search. Writing a freshly
    allocated array that size costs its page faults, measured 0.04-0.57 s here (huge
    pages, memory compaction), against 0.02 s for the division itself.
    :func:`release_buffers` frees it. Two objects alive at once never share a buffer.
    """

    def __init__(self, norms: np.ndarray | None = None, *, eps: float = 1e-12) -> None:
        if norms is not None:
            norms = np.asarray(norms, dtype=np.float32)
            if norms.ndim != 1:
                raise ShapeError(f"db_norms must be 1-D (one norm per row), got {norms.shape}.")
        self.norms = norms
        self.eps = np.float32(eps)
        self.rows_seen = 0
        self._buf: np.ndarray | None = None

    def __call__(self, block: np.ndarray, offset: int, what: str) -> np.ndarray:
        """Block rows ``offset .. offset + len(block) - 1``, normalised."""
        rows, dim = block.shape
        if block.dtype not in (np.float16, np.float32):  # float64, ints: as float32 first
            block = np.asarray(block, dtype=np.float32)
        if self.norms is None:
            norms = np.empty(rows, dtype=np.float32)  # filled chunk by chunk below
        else:
            if offset + rows > self.norms.shape[0]:
                raise ShapeError(
                    f"db_norms has {self.norms.shape[0]} norms but the database has more rows "
                    f"({offset + rows} so far); pass the norms of these very rows."
                )
            norms = self.norms[offset : offset + rows]
            _check_finite(norms, what)  # before any work: a bad set fails at once
        if self._buf is None or self._buf.shape[1] != dim or self._buf.shape[0] < rows:
            self._buf = _take_buffer(rows, dim)
        out = self._buf[:rows]

        def rows_of(span: tuple[int, int]) -> None:
            for a in range(span[0], span[1], _ROW_CHUNK):  # cache-sized pieces, in order
                b = min(a + _ROW_CHUNK, span[1])
                part = block[a:b]
                if self.norms is None:
                    part = np.asarray(part, dtype=np.float32)
                    norms[a:b] = row_norms(part)
                with np.errstate(invalid="ignore"):  # inf rows: NaN here, refused below
                    np.divide(part, np.maximum(norms[a:b], self.eps)[:, None], out=out[a:b])

        # one contiguous span per thread: few, long tasks (short ones would queue on the GIL)
        n_spans = min(_threads(), -(-rows // _ROW_CHUNK))
        edges = [rows * t // n_spans for t in range(n_spans + 1)]
        spans = list(zip(edges[:-1], edges[1:], strict=True))
        if len(spans) > 1:
            list(_pool().map(rows_of, spans))
        else:
            rows_of((0, rows))
        if self.norms is None:
            _check_finite(norms, what)
        self.rows_seen = max(self.rows_seen, offset + rows)
        return out

    def close(self) -> None:
        """Hand the buffer back to the thread, for the next search."""
        if self._buf is not None:
            _give_back(self._buf)
            self._buf = None

    def __del__(self) -> None:
        self.close()

    def check_complete(self) -> None:
        """Refuse stored norms that describe more rows than the database had (and close)."""
        self.close()
        if self.norms is not None and self.norms.shape[0] != self.rows_seen:
            raise ShapeError(
                f"db_norms has {self.norms.shape[0]} norms for a database of {self.rows_seen} "
                "rows; pass the norms of these very rows."
            )


#: Rows per piece of :class:`UnitRows` (12 MiB of 768-d float32: in cache while divided).
_ROW_CHUNK = 4096
_POOL: ThreadPoolExecutor | None = None
_BUFFERS = threading.local()


def _take_buffer(rows: int, dim: int) -> np.ndarray:
    """This thread's kept normalisation buffer if it fits, else a new one (taken: no other
    :class:`UnitRows` gets it until it is given back)."""
    buf = getattr(_BUFFERS, "array", None)
    _BUFFERS.array = None
    if buf is None or buf.shape[1] != dim or buf.shape[0] < rows:
        buf = np.empty((rows, dim), dtype=np.float32)
    return buf


def _give_back(buf: np.ndarray) -> None:
    kept = getattr(_BUFFERS, "array", None)
    if kept is None or kept.size < buf.size:
        _BUFFERS.array = buf


def release_buffers() -> None:
    """Free the calling thread's normalisation buffer (see :class:`UnitRows`)."""
    _BUFFERS.array = None


def _threads() -> int:
    """Worker threads for row-parallel numpy work: ``$OMP_NUM_THREADS`` (as faiss and the
    BLAS read it), else the cores this process may use."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        n = 0
    if n <= 0:
        affinity = getattr(os, "sched_getaffinity", None)
        n = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    return max(1, n)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="bobx-rows")
    return _POOL


def exact_topk(
    queries: np.ndarray,
    database: np.ndarray | Iterable[np.ndarray],
    k: int,
    *,
    block_rows: int = 65536,
    metric: str = "ip",
    device: str = "cpu",
    db_norms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` database rows for every query, by inner product.

    Parameters
    ----------
    queries : array of shape (n_queries, d)
        Any float dtype; converted to float32.
    database : array of shape (n_db, d), or iterable of arrays of shape (n_i, d)
        Either one array-like with ``.shape`` and row slicing (ndarray, memmap,
        zarr array) that is read ``block_rows`` rows at a time, or an iterable
        (list, generator) of row blocks, read once, in order. Database indices
        in the result count rows across blocks, starting at 0.
    k : int
        Number of neighbours, ``k >= 1``.
    block_rows : int, keyword-only
        Rows per database block (and the largest block ever held in float32).
        Blocks from an iterable that are larger are split further.
    metric : {"ip", "cosine"}, keyword-only
        ``"ip"`` ranks by raw inner product; ``"cosine"`` L2-normalises queries and
        database rows first (the DINO kNN and most retrieval protocols).
    device : {"cpu", "cuda"}, keyword-only
        ``"cpu"`` uses faiss (falls back to numpy if faiss is not importable);
        ``"cuda"`` uses torch on the GPU (imported only then).
    db_norms : array of shape (n_db,), optional, keyword-only
        ``"cosine"`` only: the database rows' :func:`row_norms` (a store keeps
        them). The rows are then not read to compute norms, and their NaN / inf
        check is the norms' (see :class:`UnitRows`). Same result as without.

    Returns
    -------
    scores : float32 array of shape (n_queries, k)
        Similarities, each row descending.
    indices : int64 array of shape (n_queries, k)
        Database row indices. Equal scores are ordered by ascending index (see
        the module docstring). If the database has fewer than ``k`` rows, the
        missing places hold score ``-inf`` and index ``-1`` (faiss convention).

    Raises
    ------
    ShapeError
        Queries or a block not 2-D, dimension mismatch, empty database.
    DataError
        NaN or infinite values in the queries or the database.
    """
    if metric not in METRICS:
        raise UnknownNameError("metric", metric, METRICS, hint="Pass metric='ip' or 'cosine'.")
    if device not in _DEVICES:
        raise UnknownNameError("device", device, _DEVICES)
    if not isinstance(k, int | np.integer) or k < 1:
        raise ShapeError(f"k must be a positive integer, got {k!r}.")
    if not isinstance(block_rows, int | np.integer) or block_rows < 1:
        raise ShapeError(f"block_rows must be a positive integer, got {block_rows!r}.")
    if db_norms is not None and metric != "cosine":
        raise ShapeError("db_norms serve metric='cosine' only; drop them for 'ip'.")
    k = int(k)
    q = _searchable(_as_float32_2d(queries, "queries"), metric, "queries")
    nq, dim = q.shape
    unit = UnitRows(db_norms) if metric == "cosine" else None

    search = _TorchBlockSearch(q, "cuda") if device == "cuda" else _CpuBlockSearch(q)
    best_s = np.empty((nq, 0), dtype=np.float32)
    best_i = np.empty((nq, 0), dtype=np.int64)
    offset = 0
    for block in _iter_blocks(database, int(block_rows)):
        b = _as_2d(block, "database block")
        if b.shape[1] != dim:
            raise ShapeError(
                f"database rows have dimension {b.shape[1]} but queries have {dim}; "
                "pass features extracted with the same backbone and pooling."
            )
        if b.shape[0] == 0:
            continue
        what = f"database rows {offset}..{offset + b.shape[0] - 1}"
        if unit is not None:
            b = unit(b, offset, what)
        else:
            b = _searchable(b.astype(np.float32, copy=False), metric, what)
        s, i = search.block_topk(b, k)
        best_s, best_i = _merge(best_s, best_i, s, i + offset, k)
        offset += b.shape[0]
    if offset == 0:
        raise ShapeError("the database is empty; pass at least one row to search.")
    if unit is not None:
        unit.check_complete()
    if best_s.shape[1] < k:  # fewer than k rows in total: pad like faiss
        pad = k - best_s.shape[1]
        best_s = np.concatenate([best_s, np.full((nq, pad), -np.inf, np.float32)], axis=1)
        best_i = np.concatenate([best_i, np.full((nq, pad), -1, np.int64)], axis=1)
    return best_s, best_i


# --------------------------------------------------------------------------- helpers


def _as_2d(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ShapeError(f"{what} must be a 2-D array (rows, dim), got shape {arr.shape}.")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ShapeError(f"{what} must hold numbers (float), got dtype {arr.dtype}.")
    return arr


def _as_float32_2d(x: Any, what: str) -> np.ndarray:
    return _as_2d(x, what).astype(np.float32, copy=False)


def _check_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        raise DataError(
            f"{what} contain NaN or infinite values; re-extract the features or drop "
            "those rows before searching."
        )


def _searchable(x: np.ndarray, metric: str, what: str) -> np.ndarray:
    """Check a float32 block for NaN / inf and prepare it for search (C-contiguous).

    ``"cosine"``: rows are L2-normalised by :func:`l2_normalize`'s own code, whose
    row norms serve as the finiteness check, which saves a pass over the block.
    """
    if metric == "cosine":
        return np.ascontiguousarray(_unit_rows(x, 1e-12, what))
    _check_finite(x, what)
    return np.ascontiguousarray(x)


def _iter_blocks(database: Any, block_rows: int) -> Iterator[Any]:
    shape = getattr(database, "shape", None)
    if shape is not None and hasattr(database, "__getitem__"):
        if len(shape) != 2:
            raise ShapeError(f"database must be 2-D (rows, dim), got shape {tuple(shape)}.")
        for start in range(0, shape[0], block_rows):
            yield database[start : start + block_rows]
        return
    if isinstance(database, str | bytes) or not isinstance(database, Iterable):
        raise ShapeError(
            "database must be a 2-D array or an iterable of 2-D row blocks, "
            f"got {type(database).__name__}."
        )
    for block in database:
        arr = np.asarray(block)
        if arr.ndim == 2 and arr.shape[0] > block_rows:
            for start in range(0, arr.shape[0], block_rows):
                yield arr[start : start + block_rows]
        else:
            yield arr


def _sort_rows(s: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (-score, index) and keep the first ``k`` columns."""
    order = np.lexsort((i, -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def _merge(
    s1: np.ndarray, i1: np.ndarray, s2: np.ndarray, i2: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of two (-score, index)-ordered lists, every index of the first below every
    index of the second (consecutive database blocks).

    (-score, index) is a strict total order, so top-k of a union equals top-k of the
    union of the parts' top-k lists; a stable sort by score alone keeps equal scores of
    the first list (the smaller indices) first, and merges the two sorted runs in
    linear time."""
    if s1.shape[1] == 0:
        return s2, i2
    s = np.concatenate([s1, s2], axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    i = np.concatenate([i1, i2], axis=1)
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def _order_ties(s: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows already sorted by descending score: put equal scores in ascending index order,
    sorting only the rows that hold a tie (rare with float features)."""
    tied = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
    if tied.size:
        s[tied], i[tied] = _sort_rows(s[tied], i[tied], s.shape[1])
    return s, i


def _exact_row(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one score vector under the (-score, index) order, computed exactly."""
    n = scores.shape[0]
    kth = np.partition(scores, n - k)[n - k]  # k-th largest value
    above = np.flatnonzero(scores > kth)
    tied = np.flatnonzero(scores == kth)[: k - above.size]  # smallest indices win
    idx = np.concatenate([above, tied])
    order = np.lexsort((idx, -scores[idx]))
    return scores[idx][order], idx[order].astype(np.int64)


def _finish_block(
    q: np.ndarray, block: np.ndarray, d: np.ndarray, i: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Turn an unordered-ties top-(k+1) list into the exact top-k of the block.

    ``d``/``i`` hold the k+1 best scores of each row, sorted by descending score (correct
    as a multiset, ties in arbitrary order). If the (k+1)-th score is strictly below the
    k-th, the first k items are exactly the k best and only the order of equal scores
    needs fixing. Otherwise equal scores straddle the cut and the row is recomputed
    exactly (rare).
    """
    straddle = np.flatnonzero(d[:, k] == d[:, k - 1])
    d = np.ascontiguousarray(d[:, :k])
    i = np.ascontiguousarray(i[:, :k]).astype(np.int64, copy=False)
    for r in straddle:
        d[r], i[r] = _exact_row(block @ q[r], k)
    return _order_ties(d, i)


def _all_rows(q: np.ndarray, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Block with at most k rows: every row is a candidate."""
    s = q @ block.T
    i = np.broadcast_to(np.arange(block.shape[0], dtype=np.int64), s.shape)
    return _sort_rows(s, np.ascontiguousarray(i), k)


class _CpuBlockSearch:
    """faiss (``faiss.knn``, BLAS + heaps, OpenMP) with a numpy fallback."""

    def __init__(self, q: np.ndarray) -> None:
        self.q = q
        try:
            import faiss
        except ImportError:  # pragma: no cover - faiss-cpu is a hard dependency
            self.faiss: Any = None
        else:
            self.faiss = faiss

    def block_topk(self, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if block.shape[0] <= k:
            return _all_rows(self.q, block, k)
        if self.faiss is not None:
            d, i = self.faiss.knn(self.q, block, k + 1, metric=self.faiss.METRIC_INNER_PRODUCT)
        else:  # pragma: no cover
            d, i = _numpy_knn(self.q, block, k + 1)
        return _finish_block(self.q, block, d, i, k)


def _numpy_knn(q: np.ndarray, block: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-kk per row with numpy (ties unordered), in query chunks."""
    nq = q.shape[0]
    chunk = max(1, _MAX_TILE // max(block.shape[0], 1))
    d = np.empty((nq, kk), np.float32)
    i = np.empty((nq, kk), np.int64)
    for a in range(0, nq, chunk):
        s = q[a : a + chunk] @ block.T
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        ps = np.take_along_axis(s, part, axis=1)
        o = np.argsort(-ps, axis=1)
        d[a : a + chunk] = np.take_along_axis(ps, o, axis=1)
        i[a : a + chunk] = np.take_along_axis(part, o, axis=1)
    return d, i


class _TorchBlockSearch:
    """CUDA path: matmul + ``torch.topk`` per (query chunk, block) on the GPU.

    ``device="cpu"`` runs the same code on the CPU (used by the tests, which have
    no GPU, to check the torch top-k and tie repair against the faiss path).
    """

    def __init__(self, q: np.ndarray, device: str) -> None:
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - torch is a dependency
            raise UnavailableError("device='cuda' needs torch; install bobx[gpu].") from exc
        if device == "cuda" and not torch.cuda.is_available():
            raise UnavailableError(
                "device='cuda' was requested but no CUDA GPU is visible; use device='cpu'."
            )
        self.torch = torch
        self.device = device
        self.q = q
        self.q_gpu = torch.from_numpy(q).to(device)

    def block_topk(self, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if block.shape[0] <= k:
            return _all_rows(self.q, block, k)
        torch = self.torch
        b_gpu = torch.from_numpy(block).to(self.device)
        nq = self.q.shape[0]
        chunk = max(1, _MAX_TILE // block.shape[0])
        d = np.empty((nq, k + 1), np.float32)
        i = np.empty((nq, k + 1), np.int64)
        precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")  # no TF32: scores stay float32-exact
        try:
            with torch.no_grad():
                for a in range(0, nq, chunk):
                    s = self.q_gpu[a : a + chunk] @ b_gpu.T
                    val, idx = torch.topk(s, k + 1, dim=1, largest=True, sorted=True)
                    d[a : a + chunk] = val.cpu().numpy()
                    i[a : a + chunk] = idx.cpu().numpy()
        finally:
            torch.set_float32_matmul_precision(precision)
        del b_gpu
        return _finish_block(self.q, block, d, i, k)

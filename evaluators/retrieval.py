"""Retrieval evaluators: Revisited Oxford/Paris (``revisitop``) and label-based retrieval.

Pure functions: numpy arrays (or row blocks) in, plain dicts of floats out. Nothing here
opens a store, parses flags or imports torch.

Conventions shared by every function in this module
---------------------------------------------------
* **Ranking.** The database is ranked by *descending* similarity with a deterministic
  tie-break: among equal scores the item with the smaller database index ranks first (a
  stable sort of ``-score``). The revisitop reference uses numpy's default (unstable) argsort,
  so on exact ties its numbers may differ from ours in the last digits; ours do not depend on
  the sorting algorithm.
* **Ranks are computed by counting.** The rank of an item ``p`` for a query is
  ``#{d : s_d > s_p} + #{d < p : s_d == s_p}``, which equals its position in the stable
  ranking. Only the ranks of the items a metric needs (positives and ignored images for
  revisitop, same-label items for label retrieval) are computed: each block of scores is
  sorted (values only, no argsort) and those items' scores are looked up in it; equal scores
  are resolved by index. This is exact, needs no full ranking and lets the database be
  streamed in blocks.
* **Values are fractions in [0, 1]**, not percent. Published tables print percent:
  rOxford medium mAP 64.67 corresponds to ``0.6467`` here.
* Counts (``n_queries``, ``n_queries_skipped``) are not metrics. Every metric is higher-is-
  better; :data:`HIGHER_IS_BETTER` lists the default names and :func:`higher_is_better`
  answers for any returned name (``map@100``, ``recall@20``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from evaluators._search import UnitRows, exact_topk, l2_normalize
from evaluators.errors import DataError, ShapeError, UnknownNameError

__all__ = [
    "HIGHER_IS_BETTER",
    "SETTINGS",
    "higher_is_better",
    "label_retrieval",
    "load_gnd",
    "revisited_map",
    "revisited_map_from_ranks",
    "revisited_map_streaming",
]

_FAMILIES: dict[str, bool] = {
    "map": True,  # mean average precision (revisitop trapezoid AP or standard AP; see functions)
    "mp": True,  # revisitop mean precision at k, with the min(max(pos), k) shrink
    "mrr": True,  # mean reciprocal rank of the first relevant item
    "recall": True,  # fraction of a query's relevant items found in the top k (BoB's Recall@k)
    "hit": True,  # 1 if any relevant item is in the top k (often also called "recall@k")
    "precision": True,  # relevant items in the top k divided by k
}

#: Direction of every metric name returned with the default ``ks=(1, 5, 10)``, plus the
#: families (``map``, ``mp``, ``mrr``, ``recall``, ``hit``, ``precision``). A name for another k
#: or a cut-off (``map@100``, ``recall@20``) has its family's direction: use
#: :func:`higher_is_better`, which accepts any name returned here.
HIGHER_IS_BETTER: dict[str, bool] = {
    **_FAMILIES,
    **{f"{fam}@{k}": True for fam in ("mp", "recall", "hit", "precision") for k in (1, 5, 10)},
}

#: The three revisitop protocols, in the order results are reported.
SETTINGS: tuple[str, ...] = ("easy", "medium", "hard")

_DEFAULT_BLOCK_ROWS = 65536
_DEFAULT_BLOCK_BYTES = 256 * 2**20

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.floating[Any]]


def higher_is_better(name: str) -> bool:
    """Direction of a metric name returned by this module (``"map@100"`` -> ``True``)."""
    family = name.split("@", 1)[0]
    if family not in HIGHER_IS_BETTER:
        raise UnknownNameError(
            "retrieval metric",
            name,
            HIGHER_IS_BETTER,
            hint="Counts such as n_queries are no metric.",
        )
    return HIGHER_IS_BETTER[family]


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------


def _index_list(value: Any, where: str, n_db: int | None) -> IntArray:
    """Validate one easy/hard/junk list into a 1-D int64 array of unique indices."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise DataError(
            f"{where} must be a list (or 1-D integer array) of database indices, "
            f"got {type(value).__name__}."
        )
    arr = np.asarray(value)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise DataError(
            f"{where} must be a flat list of integer database indices, got an array of "
            f"dtype {arr.dtype} and shape {arr.shape}. Convert it with [int(i) for i in ...]."
        )
    out = arr.astype(np.int64)
    if out.min() < 0:
        raise DataError(f"{where} holds a negative index ({int(out.min())}); indices are 0-based.")
    if n_db is not None and out.max() >= n_db:
        raise DataError(
            f"{where} holds index {int(out.max())} but the database has only {n_db} images "
            f"(valid 0..{n_db - 1}). Is this the ground truth of another dataset?"
        )
    uniq = np.unique(out)
    if uniq.size != out.size:
        dup = uniq[np.bincount(np.searchsorted(uniq, out)) > 1]
        raise DataError(
            f"{where} lists index {int(dup[0])} more than once; each image may appear once "
            "(duplicates would inflate the number of positives)."
        )
    return out


def _validate_entries(gnd: Any, n_db: int | None, *, what: str = "gnd") -> list[dict[str, Any]]:
    """Validate per-query ground-truth dicts; return copies with int64 arrays (and bbx tuple)."""
    if isinstance(gnd, Mapping) and "gnd" in gnd:
        raise DataError(
            f"{what} is the whole ground-truth file (a dict with 'gnd'); pass "
            "load_gnd(obj) or obj['gnd'] instead."
        )
    if isinstance(gnd, str | bytes | Mapping) or not isinstance(gnd, Sequence):
        raise DataError(f"{what} must be a list with one dict per query, got {type(gnd).__name__}.")
    out: list[dict[str, Any]] = []
    for q, entry in enumerate(gnd):
        where = f"{what}[{q}]"
        if not isinstance(entry, Mapping):
            raise DataError(
                f"{where} must be a dict with 'easy', 'hard', 'junk', got {type(entry).__name__}."
            )
        missing = [key for key in ("easy", "hard", "junk") if key not in entry]
        if missing:
            raise DataError(
                f"{where} lacks {', '.join(repr(m) for m in missing)}; every query needs "
                "'easy', 'hard' and 'junk' index lists (use [] for none)."
            )
        lists = {
            key: _index_list(entry[key], f"{where}[{key!r}]", n_db)
            for key in ("easy", "hard", "junk")
        }
        for a, b in (("easy", "hard"), ("easy", "junk"), ("hard", "junk")):
            both = np.intersect1d(lists[a], lists[b])
            if both.size:
                raise DataError(
                    f"{where}: index {int(both[0])} is in both {a!r} and {b!r}; the lists must be "
                    "disjoint (an image has one label per query)."
                )
        clean: dict[str, Any] = dict(lists)
        if "bbx" in entry and entry["bbx"] is not None:
            clean["bbx"] = _bbx(entry["bbx"], f"{where}['bbx']")
        out.append(clean)
    return out


def _bbx(value: Any, where: str) -> tuple[float, float, float, float]:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if isinstance(value, str | bytes) or arr.shape != (4,) or not np.isfinite(arr).all():
        raise DataError(
            f"{where} must be 4 finite numbers (x1, y1, x2, y2) of the query region, got {value!r}."
        )
    x1, y1, x2, y2 = (float(v) for v in arr)
    return x1, y1, x2, y2


def _name_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise DataError(f"{where} must be a list of image names, got {type(value).__name__}.")
    names = list(value)
    bad = [i for i, v in enumerate(names) if not isinstance(v, str)]
    if bad:
        raise DataError(
            f"{where}[{bad[0]}] is {type(names[bad[0]]).__name__}, expected an image name (str)."
        )
    return names


def load_gnd(obj: Any, *, source: str = "gnd file") -> list[dict[str, Any]]:
    """Validate an unpickled revisitop ground-truth structure and return its per-query entries.

    ``obj`` is what ``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl`` hold once safely unpickled: a
    dict with ``imlist`` (the ``n_db`` database names), ``qimlist`` (the query names) and ``gnd``
    (one dict per query with index lists ``easy``, ``hard``, ``junk`` into ``imlist`` and
    ``bbx`` = (x1, y1, x2, y2) of the query region).

    Returns a list of ``len(qimlist)`` dicts with keys ``easy``, ``hard``, ``junk`` (1-D int64
    arrays) and, where present, ``bbx`` (tuple of 4 floats), ready for :func:`revisited_map`.
    Raises :class:`~evaluators.errors.DataError` naming the first problem: a missing key, a
    list/name count mismatch, a non-integer, negative, out-of-range or duplicated index, lists
    of one query that overlap, or a malformed ``bbx``. ``source`` names the ground truth in
    those messages (a file path; ``gnd[3]['easy']`` is then ``<path>: gnd[3]['easy']``).
    """
    if not isinstance(obj, Mapping):
        raise DataError(
            f"A revisitop ground truth is a dict with 'imlist', 'qimlist' and 'gnd', got "
            f"{type(obj).__name__}. Did you pass the file path instead of its unpickled content?"
        )
    missing = [key for key in ("imlist", "qimlist", "gnd") if key not in obj]
    if missing:
        raise DataError(
            f"{source} lacks {', '.join(repr(m) for m in missing)} (has "
            f"{', '.join(repr(k) for k in obj)}); is this a revisitop gnd_*.pkl file?"
        )
    imlist = _name_list(obj["imlist"], f"{source}: imlist")
    qimlist = _name_list(obj["qimlist"], f"{source}: qimlist")
    if not imlist:
        raise DataError(f"{source}: imlist is empty; the database needs at least one image.")
    entries = obj["gnd"]
    is_list = isinstance(entries, Sequence) and not isinstance(entries, str | bytes)
    if is_list and len(entries) != len(qimlist):
        raise DataError(
            f"{source} has {len(qimlist)} query names but {len(entries)} 'gnd' entries; "
            "there must be one entry per query."
        )
    return _validate_entries(entries, len(imlist), what=f"{source}: gnd")


# --------------------------------------------------------------------------------------------
# Rank counting (shared by every exact path)
# --------------------------------------------------------------------------------------------


_TIE_LOOP_MAX = 16  # tied tracked items resolved one by one; more go through _count_binned


def _count_before(
    scores: NDArray[Any], base: int, thr: NDArray[Any], thr_idx: IntArray
) -> IntArray:
    """Count, for each tracked item, the items of one block that rank before it.

    scores: (n,) similarities of database items ``base .. base + n - 1`` to one query.
    thr: (m,) scores of the tracked items, sorted ascending; thr_idx: (m,) their global indices.
        A tracked item inside the block must have exactly its block score as threshold.
    Returns (m,) int64: ``#{d in block : s_d > thr[j] or (s_d == thr[j] and d < thr_idx[j])}``.

    Sorts the block once (SIMD sort, O(n log n)) and looks the thresholds up in it; equal scores
    other than a tracked item's own are resolved by index (rare with float features).
    """
    n = scores.shape[0]
    srt = np.sort(scores)
    right = np.searchsorted(srt, thr, side="right")
    counts = (n - right).astype(np.int64)  # strictly greater
    eq = right - np.searchsorted(srt, thr, side="left")
    tied = np.flatnonzero(eq > 0)
    if tied.size:
        local = thr_idx[tied] - base
        inside = (local >= 0) & (local < n)
        own = np.zeros(tied.size, dtype=bool)
        own[inside] = scores[local[inside]] == thr[tied[inside]]
        rest = tied[~(own & (eq[tied] == 1))]  # not just the item's own score
        if rest.size > _TIE_LOOP_MAX:
            counts[rest] = _count_binned(scores, base, thr[rest], thr_idx[rest])
        else:
            for j in rest:
                lim = min(max(int(thr_idx[j]) - base, 0), n)
                counts[j] += int(np.count_nonzero(scores[:lim] == thr[j]))
    return counts


def _count_binned(
    scores: NDArray[Any], base: int, thr: NDArray[Any], thr_idx: IntArray
) -> IntArray:
    """Same result as :func:`_count_before`, by binning every score against the thresholds:
    O(n log m) plus one step per (item, equal threshold) pair, for blocks with many ties."""
    n, m = scores.shape[0], thr.shape[0]
    hi = np.searchsorted(thr, scores, side="right")  # thresholds <= s_d
    tie = np.flatnonzero((hi > 0) & (thr[np.maximum(hi - 1, 0)] == scores))
    lo = hi.copy()
    lo[tie] = np.searchsorted(thr, scores[tie], side="left")  # thresholds < s_d
    # item d ranks before every threshold j < lo[d]
    counts = n - np.cumsum(np.bincount(lo, minlength=m + 1))[:m]
    # equal scores: d ranks before j iff d has the smaller global index
    lens = hi[tie] - lo[tie]
    j = np.repeat(lo[tie] - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
    d = np.repeat(tie.astype(np.int64) + base, lens)
    counts = counts + np.bincount(j[thr_idx[j] > d], minlength=m)
    return counts.astype(np.int64)


def _ranks_in_row(row: NDArray[Any], items: IntArray) -> IntArray:
    """0-based stable-descending ranks of ``items`` (m,) in one full score row (n_db,)."""
    if items.size == 0:
        return np.zeros(0, dtype=np.int64)
    thr = row[items]
    order = np.argsort(thr, kind="stable")
    counts = _count_before(row, 0, thr[order], items[order])
    ranks = np.empty_like(counts)
    ranks[order] = counts
    return ranks


# --------------------------------------------------------------------------------------------
# Revisited Oxford / Paris
# --------------------------------------------------------------------------------------------


def _check_ks(ks: Iterable[int], cutoff: int | None = None) -> tuple[int, ...]:
    out = tuple(ks)
    for k in out:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ShapeError(f"ks must be positive integers, got {out!r}.")
    if cutoff is not None and out and max(out) > cutoff:
        raise ShapeError(
            f"ks={out!r} asks for k={max(out)} but only the top {cutoff} items are ranked; "
            f"raise top_k to at least {max(out)} or drop the larger k."
        )
    return tuple(int(k) for k in out)


def _trapezoid_ap(pos: IntArray, ign: IntArray, ks: tuple[int, ...]) -> tuple[float, list[float]]:
    """revisitop AP and mP@k of one query in one setting.

    pos: (n_pos,) raw 0-based ranks of all positives, -1 for a positive not in a cut-off list.
    ign: raw 0-based ranks of the ignored images (-1: not in the list).
    """
    n_pos = pos.size
    r = np.sort(pos[pos >= 0])
    ig = np.sort(ign[ign >= 0])
    adj = r - np.searchsorted(ig, r, side="left")  # ignored images ranked before drop out
    j = np.arange(adj.size, dtype=np.float64)
    p0 = np.where(adj == 0, 1.0, j / np.maximum(adj, 1))
    p1 = (j + 1.0) / (adj + 1.0)
    ap = float(np.sum((p0 + p1) / 2.0) / n_pos)
    pos1 = adj + 1
    complete = r.size == n_pos
    mps = []
    for k in ks:
        # cut-off list missing a positive: take max(pos) > k (true if the list holds k
        # non-ignored images; see revisited_map_streaming)
        kq = min(int(pos1[-1]), k) if complete else k
        mps.append(float(np.count_nonzero(pos1 <= kq)) / kq)
    return ap, mps


def _revisited_summary(
    item_ranks: list[tuple[IntArray, IntArray, IntArray]],
    ks: tuple[int, ...],
    cutoff: int | None,
) -> dict[str, dict[str, float | int]]:
    map_key = "map" if cutoff is None else f"map@{cutoff}"
    result: dict[str, dict[str, float | int]] = {}
    for setting in SETTINGS:
        aps: list[float] = []
        mps: list[list[float]] = []
        skipped = 0
        for easy, hard, junk in item_ranks:
            if setting == "easy":
                pos, ign = easy, np.concatenate([junk, hard])
            elif setting == "medium":
                pos, ign = np.concatenate([easy, hard]), junk
            else:
                pos, ign = hard, np.concatenate([junk, easy])
            if pos.size == 0:
                skipped += 1
                continue
            ap, mp = _trapezoid_ap(pos, ign, ks)
            aps.append(ap)
            mps.append(mp)
        nan = float("nan")
        metrics: dict[str, float | int] = {map_key: float(np.mean(aps)) if aps else nan}
        for i, k in enumerate(ks):
            metrics[f"mp@{k}"] = float(np.mean([m[i] for m in mps])) if mps else nan
        metrics["n_queries"] = len(aps)
        metrics["n_queries_skipped"] = skipped
        result[setting] = metrics
    return result


def _split3(ranks: IntArray, entry: Mapping[str, IntArray]) -> tuple[IntArray, IntArray, IntArray]:
    a, b = entry["easy"].size, entry["easy"].size + entry["hard"].size
    return ranks[:a], ranks[a:b], ranks[b:]


def _tracked(entry: Mapping[str, IntArray]) -> IntArray:
    return np.concatenate([entry["easy"], entry["hard"], entry["junk"]]).astype(np.int64)


def revisited_map(
    scores: ArrayLike, gnd: Sequence[Mapping[str, Any]], *, ks: Iterable[int] = (1, 5, 10)
) -> dict[str, dict[str, float | int]]:
    """Revisited Oxford / Paris mAP and mP@k (Radenovic et al. 2018), from a score matrix.

    scores: (n_queries, n_db) similarities, higher = more similar (query images are not part of
        the database). Any real dtype; it is ranked as given.
    gnd: n_queries dicts with index lists ``easy``, ``hard``, ``junk`` into the database
        (``bbx`` optional and ignored), e.g. :func:`load_gnd`'s output.
    ks: the k of mP@k.

    Protocol (bobx guide, protocols.md): Easy = positives easy, ignored junk + hard; Medium =
    positives easy + hard, ignored junk; Hard = positives hard, ignored junk + easy. The database
    is ranked by descending score (ties: ascending database index), ignored images are removed
    from the ranking, AP is revisitop's trapezoid rule (p0 = 1 at adjusted rank 0, else j / r;
    p1 = (j + 1) / (r + 1)), and with 1-based adjusted positive ranks ``pos``,
    mP@k = #(pos <= kq) / kq with kq = min(max(pos), k). Queries without positives in a setting
    are skipped.

    Returns ``{"easy": m, "medium": m, "hard": m}`` with
    ``m = {"map", "mp@k" for k in ks, "n_queries", "n_queries_skipped"}``; metrics are fractions
    in [0, 1] (NaN when every query was skipped), ``n_queries`` counts the evaluated queries.
    """
    s = np.asarray(scores)
    if s.ndim != 2 or s.dtype.kind not in "fiu":
        raise ShapeError(
            f"scores must be a real (n_queries, n_db) matrix, got dtype {s.dtype} shape {s.shape}."
        )
    ks_t = _check_ks(ks)
    entries = _validate_entries(gnd, None)
    if s.shape[0] != len(entries):
        hint = " Pass scores.T." if s.shape[1] == len(entries) else ""
        raise ShapeError(
            f"scores has {s.shape[0]} rows but gnd has {len(entries)} queries; rows are queries, "
            f"columns database images.{hint}"
        )
    if s.dtype.kind == "f" and not np.isfinite(s).all():
        raise ShapeError("scores contain NaN or inf; check the features (zero or NaN rows?).")
    entries = _validate_entries(entries, s.shape[1])
    item_ranks = [_split3(_ranks_in_row(s[q], _tracked(e)), e) for q, e in enumerate(entries)]
    return _revisited_summary(item_ranks, ks_t, None)


def revisited_map_from_ranks(
    ranks: ArrayLike,
    gnd: Sequence[Mapping[str, Any]],
    *,
    ks: Iterable[int] = (1, 5, 10),
    n_db: int | None = None,
) -> dict[str, dict[str, float | int]]:
    """:func:`revisited_map` from precomputed rankings.

    ranks: (n_queries, n_ranked) int, row q = database indices for query q, best first.
        This is the TRANSPOSE of revisitop's ``ranks`` (n_db, n_queries): pass ``ranks.T``.
    n_db: database size; default ``n_ranked`` (each row is a full ranking). With
        ``n_db > n_ranked`` the rows are a top-K cut-off list (K = n_ranked) and the result
        uses the cut-off definition of :func:`revisited_map_streaming` (key ``map@K``).
    Returns the same dict as :func:`revisited_map`.
    """
    r = np.asarray(ranks)
    if r.ndim != 2 or r.dtype.kind not in "iu":
        raise ShapeError(
            f"ranks must be an integer (n_queries, n_ranked) matrix, got dtype {r.dtype} "
            f"shape {r.shape}."
        )
    if r.shape[0] != len(gnd):
        hint = (
            " This looks like revisitop's (n_db, n_queries) layout: pass ranks.T."
            if r.shape[1] == len(gnd)
            else ""
        )
        raise ShapeError(
            f"ranks has {r.shape[0]} rows but gnd has {len(gnd)} queries; rows are queries.{hint}"
        )
    n_ranked = r.shape[1]
    total = n_ranked if n_db is None else int(n_db)
    if total < n_ranked or n_ranked == 0:
        raise ShapeError(
            f"ranks rows hold {n_ranked} items but n_db={total}; a row ranks at most n_db items "
            "and at least one."
        )
    r = r.astype(np.int64)
    if r.size and (r.min() < 0 or r.max() >= total):
        raise DataError(
            f"ranks hold database index {int(r.min() if r.min() < 0 else r.max())} outside "
            f"0..{total - 1}; pass n_db= if the rows are a top-K list of a larger database."
        )
    srt = np.sort(r, axis=1)
    dup_rows = np.flatnonzero((np.diff(srt, axis=1) == 0).any(axis=1))
    if dup_rows.size:
        raise DataError(
            f"ranks row {int(dup_rows[0])} lists a database index twice; each row must be a "
            "ranking (a permutation, or a top-K list of distinct indices)."
        )
    ks_t = _check_ks(ks, None if total == n_ranked else n_ranked)
    entries = _validate_entries(gnd, total)
    item_ranks = []
    for q, e in enumerate(entries):
        item_ranks.append(_split3(_positions(r[q], _tracked(e)), e))
    return _revisited_summary(item_ranks, ks_t, None if total == n_ranked else n_ranked)


def _positions(row: IntArray, items: IntArray) -> IntArray:
    """Position of each of ``items`` in the ranked list ``row`` (-1 if absent)."""
    order = np.argsort(row, kind="stable")
    srt = row[order]
    loc = np.minimum(np.searchsorted(srt, items), srt.size - 1)
    found = srt[loc] == items
    return np.where(found, order[loc], -1).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------


def _as_features(x: ArrayLike, what: str, dim: int | None = None) -> NDArray[np.float32]:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise ShapeError(
            f"{what} must be a real (n, dim) matrix, got dtype {arr.dtype} shape {arr.shape}."
        )
    if dim is not None and arr.shape[1] != dim:
        raise ShapeError(
            f"{what} has dimension {arr.shape[1]} but the queries have {dim}; features of both "
            "sides must come from the same backbone and layer."
        )
    out = arr.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        raise ShapeError(f"{what} contains NaN or inf; re-extract those features.")
    return out


def _block_source(db: Any, block_rows: int) -> tuple[Callable[[], Iterator[Any]], bool]:
    """(make_iterator, reiterable) for an array, a sequence of blocks, a callable or an iterable."""
    if block_rows < 1:
        raise ShapeError(f"block_rows must be >= 1, got {block_rows}.")
    shape = getattr(db, "shape", None)
    if shape is not None and hasattr(db, "__getitem__"):
        if len(shape) != 2:
            raise ShapeError(f"the database must be (n_db, dim), got shape {tuple(shape)}.")

        def slices() -> Iterator[Any]:
            for a in range(0, int(shape[0]), block_rows):
                yield db[a : a + block_rows]

        return slices, True
    if callable(db):
        return (lambda: iter(db())), True
    if isinstance(db, Sequence) and not isinstance(db, str | bytes):
        return (lambda: iter(db)), True
    if isinstance(db, Iterable):
        it = iter(db)
        return (lambda: it), False
    raise ShapeError(
        f"db_blocks must be an (n_db, dim) array, a list of row blocks, a callable returning an "
        f"iterator of blocks, or an iterable of blocks; got {type(db).__name__}."
    )


def _feature_blocks(
    make: Callable[[], Iterator[Any]],
    dim: int,
    normalize: bool,
    norms: NDArray[Any] | None = None,
) -> Iterator[tuple[int, NDArray[np.float32]]]:
    """Yield (base, block) with validated float32 (optionally L2-normalised) blocks.

    Normalised blocks are views of one reused buffer (:class:`~evaluators._search.UnitRows`,
    with the database's stored ``norms`` when given), valid until the next block."""
    base = 0
    unit = UnitRows(norms) if normalize else None
    for i, raw in enumerate(make()):
        what = f"database block {i}"
        if unit is None:
            block = _as_features(raw, what, dim)
        else:
            block = unit(_check_block(raw, what, dim), base, what)
        yield base, block
        base += block.shape[0]
    if unit is not None:
        unit.check_complete()


def _check_block(x: ArrayLike, what: str, dim: int) -> NDArray[Any]:
    """Shape and dtype checks of a block, no conversion (finiteness: by its norms)."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise ShapeError(
            f"{what} must be a real (n, dim) matrix, got dtype {arr.dtype} shape {arr.shape}."
        )
    if arr.shape[1] != dim:
        raise ShapeError(
            f"{what} has dimension {arr.shape[1]} but the queries have {dim}; features of both "
            "sides must come from the same backbone and layer."
        )
    return arr


def _query_chunks(nq: int, nb: int, block_bytes: int) -> list[tuple[int, int]]:
    step = max(1, min(nq, block_bytes // max(4 * nb, 1)))
    return [(a, min(a + step, nq)) for a in range(0, nq, step)]


def revisited_map_streaming(
    query_x: ArrayLike,
    db_blocks: Any,
    gnd: Sequence[Mapping[str, Any]],
    *,
    ks: Iterable[int] = (1, 5, 10),
    top_k: int | None = None,
    normalize: bool = True,
    block_rows: int = _DEFAULT_BLOCK_ROWS,
    block_bytes: int = _DEFAULT_BLOCK_BYTES,
    db_norms: ArrayLike | None = None,
) -> dict[str, dict[str, float | int]]:
    """:func:`revisited_map` from features, streaming the database in row blocks.

    query_x: (n_queries, dim) query features (cropped to ``bbx`` or not: the caller decides).
    db_blocks: the (n_db, dim) database: an array (sliced into ``block_rows`` rows), a list of
        (rows_i, dim) blocks, a zero-argument callable returning a fresh iterator of blocks, or
        (only with ``top_k``) a one-shot iterator of blocks. Any real dtype; computed in float32.
    normalize: L2-normalise both sides (cosine similarity, as revisitop's features are).
    db_norms: (n_db,) the database rows' L2 norms (``evaluators._search.row_norms``, as a store
        keeps them): normalising then needs no pass to compute them. Same result as without.

    ``top_k=None`` (default) is exact: equal to ``revisited_map(q @ db.T, gnd)`` for the same
    float32 scores. It never holds the (n_queries, n_db) matrix: a first pass over the blocks
    collects the scores of each query's easy/hard/junk images, a second pass counts for each of
    them the database images ranked before it (see the module notes). Both passes compute the
    scores identically, hence two passes and a re-iterable ``db_blocks``. Memory: one block plus
    a (chunk, block_rows) float32 score tile of at most ``block_bytes``.

    ``top_k=K`` is the cut-off metric of a top-K search (one pass, via ``exact_topk``): the K
    best database images (ignored ones included, as a search returns them) form the ranked
    list, ignored images are removed from it, AP is the trapezoid sum over the positives found
    in it divided by ALL of the query's positives (positives beyond K add zero precision), and
    the key is ``map@K``. mP@k (k <= K) treats unlisted positives as ranked after the list
    (kq = k then); it equals the exact mP@k whenever the list holds at least k non-ignored
    images, i.e. K >= k + #ignored. This is what revisitop's ``compute_map`` returns for
    truncated ranks, except that it crashes when no positive is listed (AP = mP = 0 here).
    """
    q = _as_features(query_x, "query_x")
    if q.shape[0] == 0:
        raise ShapeError("query_x has no rows; pass one feature row per query.")
    if q.shape[0] != len(gnd):
        raise ShapeError(
            f"query_x has {q.shape[0]} rows but gnd has {len(gnd)} queries; one feature per query."
        )
    qn = l2_normalize(q) if normalize else q
    make, reiterable = _block_source(db_blocks, block_rows)
    entries = _validate_entries(gnd, None)
    norms = None if db_norms is None else np.asarray(db_norms)

    if top_k is not None:
        k_cut = int(top_k)
        ks_t = _check_ks(ks, k_cut)
        n_seen = [0]

        def counted() -> Iterator[NDArray[np.float32]]:
            for _, block in _feature_blocks(make, q.shape[1], normalize, norms):
                n_seen[0] += block.shape[0]
                yield block

        idx = _topk(qn, counted(), k_cut, block_rows)
        n_db = n_seen[0]
        if n_db < k_cut:
            raise ShapeError(
                f"top_k={k_cut} but the database has only {n_db} images; use top_k=None for "
                "the exact full ranking."
            )
        return revisited_map_from_ranks(idx, entries, ks=ks_t, n_db=n_db)

    ks_t = _check_ks(ks)
    if not reiterable:
        raise DataError(
            "Exact revisitop mAP (top_k=None) reads the database twice, but db_blocks is a "
            "one-shot iterator. Pass the array, a list of blocks, or a zero-argument callable "
            "returning a fresh iterator of blocks (or set top_k for a cut-off metric)."
        )
    tracked = [_tracked(e) for e in entries]
    item_order = [np.argsort(t, kind="stable") for t in tracked]
    items_sorted = [t[o] for t, o in zip(tracked, item_order, strict=True)]
    item_scores = [np.full(t.size, np.nan, dtype=np.float32) for t in tracked]

    def tiles() -> Iterator[tuple[int, int, int, NDArray[np.float32]]]:
        for base, block in _feature_blocks(make, q.shape[1], normalize, norms):
            for a, b in _query_chunks(q.shape[0], block.shape[0], block_bytes):
                yield base, a, b, qn[a:b] @ block.T

    # pass 1: the scores of every query's tracked images, from the same tiles as pass 2
    n_db = 0
    for base, a, b, tile in tiles():
        n_db = max(n_db, base + tile.shape[1])
        for i in range(a, b):
            its = items_sorted[i]
            lo, hi = np.searchsorted(its, [base, base + tile.shape[1]])
            item_scores[i][lo:hi] = tile[i - a, its[lo:hi] - base]
    if n_db == 0:
        raise ShapeError("db_blocks yielded no database rows.")
    entries = _validate_entries(entries, n_db)
    # pass 2: count the images ranked before each tracked image
    thr = []
    for its, sc in zip(items_sorted, item_scores, strict=True):
        o = np.argsort(sc, kind="stable")
        thr.append((sc[o], its[o], o))
    counts = [np.zeros(t.size, dtype=np.int64) for t in tracked]
    n_db2 = 0
    for base, a, b, tile in tiles():
        n_db2 = max(n_db2, base + tile.shape[1])
        for i in range(a, b):
            if tracked[i].size:
                counts[i] += _count_before(tile[i - a], base, thr[i][0], thr[i][1])
    if n_db2 != n_db:
        raise DataError(
            f"db_blocks yielded {n_db} rows on the first pass and {n_db2} on the second; the "
            "callable must return the same blocks every time."
        )
    item_ranks = []
    for i, e in enumerate(entries):
        by_item = np.empty_like(counts[i])
        by_item[thr[i][2]] = counts[i]  # back from score order to sorted-index order
        ranks = np.empty_like(by_item)
        ranks[item_order[i]] = by_item  # back to easy/hard/junk order
        item_ranks.append(_split3(ranks, e))
    return _revisited_summary(item_ranks, ks_t, None)


def _topk(queries: NDArray[np.float32], database: Any, k: int, block_rows: int) -> IntArray:
    """Indices (n_queries, k) of the exact inner-product top-k, ties by ascending db index."""
    _, idx = exact_topk(queries, database, k, block_rows=block_rows, metric="ip", device="cpu")
    return np.asarray(idx, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Label-based retrieval
# --------------------------------------------------------------------------------------------


def _labels(y: ArrayLike, n: int, what: str) -> NDArray[Any]:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ShapeError(
            f"{what} must be a 1-D array of {n} labels (one per feature row), got shape "
            f"{arr.shape}."
        )
    return arr


def label_retrieval(
    query_x: ArrayLike,
    query_y: ArrayLike,
    db_x: ArrayLike,
    db_y: ArrayLike,
    *,
    ks: Iterable[int] = (1, 5, 10),
    exclude_self: bool = False,
    top_k: int | None = None,
    block_rows: int = _DEFAULT_BLOCK_ROWS,
    block_bytes: int = _DEFAULT_BLOCK_BYTES,
    db_norms: ArrayLike | None = None,
) -> dict[str, float | int]:
    """Semantic retrieval on class-labelled sets (BoB: CUB-200, iNaturalist, ObjectNet, ...).

    query_x: (n_queries, dim), db_x: (n_db, dim) features, any real dtype (fp16 is computed in
        float32); both are L2-normalised and compared by inner product (cosine similarity).
    query_y: (n_queries,), db_y: (n_db,) labels (ints or strings). Relevant = same label.
    exclude_self: leave-one-out; query i IS gallery item i (requires equal sets): it is removed
        from its own ranking and from its relevant items.
    db_norms: (n_db,) the gallery rows' L2 norms (``evaluators._search.row_norms``, as a store
        keeps them): normalising then needs no pass to compute them. Same result as without.
    The gallery is ranked by descending similarity, ties by ascending database index. Queries
    without any relevant gallery item are skipped (counted in ``n_queries_skipped``).

    Returns, as fractions in [0, 1] averaged over the evaluated queries:
      ``map``: non-interpolated AP, mean over relevant items of precision at their rank
        (not revisitop's trapezoid); ``mrr``: reciprocal rank of the first relevant item;
      ``recall@k``: fraction of the query's relevant items in the top k (BoB's Recall@k);
      ``hit@k``: 1 if any relevant item is in the top k (the "Recall@k" of metric learning);
      ``precision@k``: relevant items in the top k divided by k;
      ``n_queries``, ``n_queries_skipped``.

    ``top_k=None`` is exact over the whole gallery: queries are processed in chunks whose
    (chunk, n_db) float32 score rows fit in ``block_bytes`` (at least one row), filled block by
    block, and the ranks of a query's relevant items are counted (module notes), not sorted.
    ``top_k=K`` ranks only the exact top K (one ``exact_topk`` pass, memory per block): then the
    keys are ``map@K`` (relevant items beyond K add zero, divided by ALL relevant items) and
    ``mrr@K`` (0 when none is in the top K); recall/hit/precision@k are exact for k <= K.
    """
    q = _as_features(query_x, "query_x")
    db = np.asarray(db_x)
    if db.ndim != 2:
        raise ShapeError(f"db_x must be an (n_db, dim) matrix, got shape {db.shape}.")
    if db.shape[1] != q.shape[1]:
        raise ShapeError(
            f"db_x has dimension {db.shape[1]} but query_x has {q.shape[1]}; features of both "
            "sides must come from the same backbone and layer."
        )
    nq, n_db = q.shape[0], db.shape[0]
    if nq == 0:
        raise ShapeError("query_x has no rows; pass at least one query.")
    qy = _labels(query_y, nq, "query_y")
    dy = _labels(db_y, n_db, "db_y")
    if (qy.dtype.kind in "US") != (dy.dtype.kind in "US"):
        raise ShapeError(
            f"query_y ({qy.dtype}) and db_y ({dy.dtype}) must both be numeric or both strings."
        )
    if exclude_self and (nq != n_db or not np.array_equal(qy, dy)):
        raise ShapeError(
            "exclude_self=True means query i is gallery item i, so query and gallery must "
            f"be the same set; got {nq} queries vs {n_db} gallery items"
            + (" with different labels." if nq == n_db else ".")
            + " Use exclude_self=False for separate query and gallery sets."
        )
    n_gallery = n_db - int(exclude_self)
    if n_gallery < 1:
        raise ShapeError("the gallery is empty (after excluding the query itself).")
    qn = l2_normalize(q)

    # group gallery indices by label
    uniq, inv = np.unique(dy, return_inverse=True)
    members = np.argsort(inv, kind="stable").astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(np.bincount(inv, minlength=uniq.size))])
    loc = np.minimum(np.searchsorted(uniq, qy), uniq.size - 1)
    has = uniq[loc] == qy
    n_rel = np.where(has, starts[loc + 1] - starts[loc], 0) - int(exclude_self)

    make, _ = _block_source(db, block_rows)
    if top_k is not None:
        k_cut = int(top_k)
        ks_t = _check_ks(ks, k_cut)
        if k_cut > n_gallery:
            raise ShapeError(
                f"top_k={k_cut} exceeds the gallery size {n_gallery}; use top_k=None for the "
                "exact full ranking."
            )
        norms = None if db_norms is None else np.asarray(db_norms)
        blocks = (b for _, b in _feature_blocks(make, q.shape[1], True, norms))
        idx = _topk(qn, blocks, k_cut + int(exclude_self), block_rows)
        if exclude_self:
            keep = idx != np.arange(nq)[:, None]
            keep[keep.all(axis=1), -1] = False
            idx = idx[keep].reshape(nq, k_cut)
        return _cutoff_metrics(dy[idx] == qy[:, None], n_rel, ks_t, k_cut)

    ks_t = _check_ks(ks)
    stats = _RankStats(ks_t)
    for a, b in _query_chunks(nq, n_db, block_bytes):
        rows = np.empty((b - a, n_db), dtype=np.float32)
        for base, block in _feature_blocks(
            make, q.shape[1], True, None if db_norms is None else np.asarray(db_norms)
        ):
            rows[:, base : base + block.shape[0]] = qn[a:b] @ block.T
        for i in range(a, b):
            if n_rel[i] <= 0:
                stats.skip()
                continue
            rel = members[starts[loc[i]] : starts[loc[i] + 1]]
            row = rows[i - a]
            if exclude_self:
                rel = rel[rel != i]
                row[i] = -np.inf  # ranks after every finite score: out of the ranking
            stats.add(np.sort(_ranks_in_row(row, rel)))
    return stats.result()


class _RankStats:
    """Accumulate label-retrieval metrics from the sorted 0-based ranks of relevant items."""

    def __init__(self, ks: tuple[int, ...]) -> None:
        self.ks = ks
        self.sums: dict[str, float] = {"map": 0.0, "mrr": 0.0}
        for k in ks:
            self.sums[f"recall@{k}"] = self.sums[f"hit@{k}"] = self.sums[f"precision@{k}"] = 0.0
        self.n = 0
        self.skipped = 0

    def skip(self) -> None:
        self.skipped += 1

    def add(self, ranks: IntArray) -> None:
        j = np.arange(1, ranks.size + 1, dtype=np.float64)
        self.sums["map"] += float(np.mean(j / (ranks + 1.0)))
        self.sums["mrr"] += 1.0 / (float(ranks[0]) + 1.0)
        for k in self.ks:
            found = int(np.searchsorted(ranks, k))  # relevant items with rank < k
            self.sums[f"recall@{k}"] += found / ranks.size
            self.sums[f"hit@{k}"] += float(found > 0)
            self.sums[f"precision@{k}"] += found / k
        self.n += 1

    def result(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            key: (val / self.n if self.n else float("nan")) for key, val in self.sums.items()
        }
        out["n_queries"] = self.n
        out["n_queries_skipped"] = self.skipped
        return out


def _cutoff_metrics(
    rel: NDArray[np.bool_], n_rel: IntArray, ks: tuple[int, ...], k_cut: int
) -> dict[str, float | int]:
    """Metrics from (n_queries, K) relevance of the top-K lists and total relevant counts."""
    ok = n_rel > 0
    rel = rel[ok]
    n = n_rel[ok].astype(np.float64)
    out: dict[str, float | int] = {}
    if not ok.any():
        nan = float("nan")
        out = {f"map@{k_cut}": nan, f"mrr@{k_cut}": nan}
        for k in ks:
            out[f"recall@{k}"] = out[f"hit@{k}"] = out[f"precision@{k}"] = nan
    else:
        hits = np.cumsum(rel, axis=1)
        pos = np.arange(1, k_cut + 1, dtype=np.float64)
        out[f"map@{k_cut}"] = float(np.mean(np.sum(rel * hits / pos, axis=1) / n))
        first = np.argmax(rel, axis=1)
        out[f"mrr@{k_cut}"] = float(np.mean(np.where(rel.any(axis=1), 1.0 / (first + 1.0), 0.0)))
        for k in ks:
            found = hits[:, k - 1]
            out[f"recall@{k}"] = float(np.mean(found / n))
            out[f"hit@{k}"] = float(np.mean(found > 0))
            out[f"precision@{k}"] = float(np.mean(found / k))
    out["n_queries"] = int(ok.sum())
    out["n_queries_skipped"] = int((~ok).sum())
    return out

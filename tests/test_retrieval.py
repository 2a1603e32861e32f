"""Tests for evaluators.retrieval: optimised paths against plain oracles on tiny seeded data."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from evaluators.retrieval import (
    HIGHER_IS_BETTER,
    higher_is_better,
    label_retrieval,
    load_gnd,
    revisited_map,
    revisited_map_from_ranks,
    revisited_map_streaming,
)
from featcache.errors import DataError, ShapeError, UnknownNameError

KS = (1, 5, 10)


# ------------------------------------------------------------------------------------------
# Plain oracles (written from the protocol text, loops over explicit rankings)
# ------------------------------------------------------------------------------------------


def stable_ranking(row: np.ndarray) -> np.ndarray:
    """Database indices best first; equal scores by ascending index."""
    return np.argsort(-row, kind="stable")


def oracle_query(ranked: list[int], ok: list[int], ignored: list[int], ks, n_pos: int):
    """revisitop AP and mP@k of one query from an explicit (possibly cut-off) ranked list.

    Walks the list once: ignored images are dropped, every positive gets its adjusted 0-based
    rank. A positive missing from the list contributes nothing to AP; for mP@k it counts as
    ranked after the list (so kq = k), as the bobx cut-off definition states.
    """
    adjusted = []
    kept = 0  # rank among non-ignored images
    ok_set, ign_set = set(ok), set(ignored)
    for item in ranked:
        if item in ign_set:
            continue
        if item in ok_set:
            adjusted.append(kept)
        kept += 1
    ap = 0.0
    for j, r in enumerate(adjusted):
        p0 = 1.0 if r == 0 else j / r
        p1 = (j + 1) / (r + 1)
        ap += (p0 + p1) / 2 / n_pos
    pos1 = [r + 1 for r in adjusted]
    mps = []
    for k in ks:
        kq = min(max(pos1), k) if len(pos1) == n_pos else k
        mps.append(sum(p <= kq for p in pos1) / kq)
    return ap, mps


def oracle_revisited(rankings: list[list[int]], gnd, ks, cutoff=None):
    out = {}
    for setting in ("easy", "medium", "hard"):
        aps, mps = [], []
        for ranked, g in zip(rankings, gnd, strict=True):
            easy, hard, junk = list(g["easy"]), list(g["hard"]), list(g["junk"])
            ok, ign = {
                "easy": (easy, junk + hard),
                "medium": (easy + hard, junk),
                "hard": (hard, junk + easy),
            }[setting]
            if not ok:
                continue
            ap, mp = oracle_query(ranked, ok, ign, ks, len(ok))
            aps.append(ap)
            mps.append(mp)
        res = {("map" if cutoff is None else f"map@{cutoff}"): float(np.mean(aps))}
        for i, k in enumerate(ks):
            res[f"mp@{k}"] = float(np.mean([m[i] for m in mps]))
        res["n_queries"] = len(aps)
        res["n_queries_skipped"] = len(gnd) - len(aps)
        out[setting] = res
    return out


def revisitop_style_map(ranks_db_by_q: np.ndarray, ok_junk: list[tuple[list, list]], ks):
    """Second oracle, structured like revisitop's compute_map: ranks are (n_db, n_queries);
    find the sorted positions of positives and junk, shift each positive down by the junk
    before it, then sum trapezoids. Returns (mAP, [mP@k])."""
    aps, prs = [], []
    for i, (ok, junk) in enumerate(ok_junk):
        if not ok:
            continue
        col = ranks_db_by_q[:, i]
        pos = [p for p in range(len(col)) if col[p] in set(ok)]
        jpos = [p for p in range(len(col)) if col[p] in set(junk)]
        shifted, n_before, jj = [], 0, 0
        for p in pos:
            while jj < len(jpos) and jpos[jj] < p:
                n_before += 1
                jj += 1
            shifted.append(p - n_before)
        ap = 0.0
        for j, r in enumerate(shifted):
            precision_0 = 1.0 if r == 0 else j / r
            ap += (precision_0 + (j + 1) / (r + 1)) / (2 * len(ok))
        aps.append(ap)
        one_based = np.array(shifted) + 1
        prs.append(
            [(one_based <= min(one_based.max(), k)).sum() / min(one_based.max(), k) for k in ks]
        )
    return float(np.mean(aps)), np.mean(prs, axis=0)


def assert_nested_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, val in want.items():
        if isinstance(val, dict):
            assert_nested_close(got[key], val)
        elif isinstance(val, int):
            assert got[key] == val, key
        else:
            assert got[key] == pytest.approx(val, abs=1e-12, nan_ok=True), key


def random_gnd(rng: np.random.Generator, n_q: int, n_db: int, *, empty_every: int = 4):
    """Disjoint easy/hard/junk lists; some queries have no easy or no hard images."""
    gnd = []
    for q in range(n_q):
        perm = rng.permutation(n_db)
        ne, nh, nj = rng.integers(1, 8, size=3)
        if q % empty_every == 1:
            ne = 0
        if q % empty_every == 2:
            nh = 0
        if q % empty_every == 3:
            ne = nh = 0  # skipped in every setting
        gnd.append(
            {
                "easy": perm[:ne].tolist(),
                "hard": perm[ne : ne + nh].tolist(),
                "junk": perm[ne + nh : ne + nh + nj].tolist(),
                "bbx": [1.0, 2.0, 30.5, 40.0],
            }
        )
    return gnd


def exact_tie_features(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    """Rows with four entries +-0.5: norm exactly 1, all dot products exact, many ties."""
    x = np.zeros((n, dim), dtype=np.float32)
    for i in range(n):
        cols = rng.choice(dim, size=4, replace=False)
        x[i, cols] = rng.choice([-0.5, 0.5], size=4)
    return x


# ------------------------------------------------------------------------------------------
# Revisited Oxford / Paris
# ------------------------------------------------------------------------------------------


def test_hand_computed_tiny_case():
    # query 0: all scores tie -> ranking 0,1,2,3,4,5 by index. easy [1,4], hard [3], junk [2]
    # query 1: ranking starts 2 (junk), 4 (easy): junk removal moves 4 to rank 0 -> p0 = 1.
    scores = np.array(
        [[1, 1, 1, 1, 1, 1], [0.5, 0.4, 0.9, 0.1, 0.8, 0.0]],
        dtype=np.float32,
    )
    gnd = [
        {"easy": [1, 4], "hard": [3], "junk": [2]},
        {"easy": [4], "hard": [], "junk": [2]},
    ]
    res = revisited_map(scores, gnd)
    # medium, query 0: positives at raw ranks 1,3,4; junk at 2 -> adjusted 1,2,3
    #   (0 + 1/2)/2 + (1/2 + 2/3)/2 + (2/3 + 3/4)/2 = 37/24, / 3 positives = 37/72
    #   mP@5: pos = 2,3,4 -> kq = min(4, 5) = 4 -> 3/4 (without the shrink it would be 3/5)
    # medium, query 1: adjusted rank 0 -> p0 = 1, p1 = 1 -> AP 1; pos = [1] -> mP@k = 1
    med = res["medium"]
    assert med["map"] == pytest.approx((37 / 72 + 1) / 2)
    assert med["mp@1"] == pytest.approx((0 + 1) / 2)
    assert med["mp@5"] == pytest.approx((3 / 4 + 1) / 2)
    assert med["mp@10"] == pytest.approx((3 / 4 + 1) / 2)
    assert med["n_queries"] == 2 and med["n_queries_skipped"] == 0
    # easy, query 0: positives 1,4; ignored 2,3 (junk + hard) -> adjusted 1,2
    #   (0 + 1/2)/2 + (1/2 + 2/3)/2 = 10/12, / 2 = 5/12; pos = 2,3 -> mP@5 = 2/3
    easy = res["easy"]
    assert easy["map"] == pytest.approx((5 / 12 + 1) / 2)
    assert easy["mp@5"] == pytest.approx((2 / 3 + 1) / 2)
    # hard, query 0: positive 3; ignored 1,2,4 -> adjusted 1 -> AP (0 + 1/2)/2 = 1/4
    #   pos = [2] -> mP@1 = 0, mP@5 = 1/2 (kq = 2). Query 1 has no hard image: skipped.
    hard = res["hard"]
    assert hard["map"] == pytest.approx(0.25)
    assert hard["mp@1"] == 0.0 and hard["mp@5"] == pytest.approx(0.5)
    assert hard["n_queries"] == 1 and hard["n_queries_skipped"] == 1


def test_tie_break_is_ascending_db_index():
    # item 3 (positive) ties with item 1 (negative): 1 ranks first, so AP = (1/2 + 1/2... )
    scores = np.array([[0.1, 0.7, 0.2, 0.7]])
    gnd = [{"easy": [3], "hard": [], "junk": []}]
    assert revisited_map(scores, gnd)["easy"]["map"] == pytest.approx((0 + 0.5) / 2)
    gnd = [{"easy": [1], "hard": [], "junk": []}]
    assert revisited_map(scores, gnd)["easy"]["map"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(6))
def test_revisited_map_matches_oracle(seed):
    rng = np.random.default_rng(seed)
    n_q, n_db = 13, 60
    # few distinct values -> many ties; seed 0 uses floats
    if seed == 0:
        scores = rng.standard_normal((n_q, n_db)).astype(np.float32)
    else:
        scores = rng.integers(0, 6, size=(n_q, n_db)).astype(np.float64)
    gnd = random_gnd(rng, n_q, n_db)
    want = oracle_revisited([stable_ranking(r).tolist() for r in scores], gnd, KS)
    assert_nested_close(revisited_map(scores, gnd, ks=KS), want)
    ranks = np.stack([stable_ranking(r) for r in scores])
    assert_nested_close(revisited_map_from_ranks(ranks, gnd, ks=KS), want)
    # the revisitop-structured oracle agrees (its ranks are our ranks transposed)
    for setting, (ok_of, ign_of) in {
        "easy": (lambda g: g["easy"], lambda g: g["junk"] + g["hard"]),
        "medium": (lambda g: g["easy"] + g["hard"], lambda g: g["junk"]),
        "hard": (lambda g: g["hard"], lambda g: g["junk"] + g["easy"]),
    }.items():
        m, pr = revisitop_style_map(ranks.T, [(ok_of(g), ign_of(g)) for g in gnd], KS)
        assert want[setting]["map"] == pytest.approx(m)
        assert [want[setting][f"mp@{k}"] for k in KS] == pytest.approx(pr)


def test_from_ranks_cutoff_matches_oracle_and_exact_when_long_enough():
    rng = np.random.default_rng(7)
    n_q, n_db, cut = 10, 80, 12
    scores = rng.standard_normal((n_q, n_db))
    gnd = random_gnd(rng, n_q, n_db)
    full = np.stack([stable_ranking(r) for r in scores])
    got = revisited_map_from_ranks(full[:, :cut], gnd, ks=(1, 5), n_db=n_db)
    want = oracle_revisited([r[:cut].tolist() for r in full], gnd, (1, 5), cutoff=cut)
    assert_nested_close(got, want)
    # mP@k is exact once the list holds k non-ignored images (here: K >= k + #ignored)
    k_long = 1 + max(len(g["junk"]) + len(g["easy"]) + len(g["hard"]) for g in gnd)
    got = revisited_map_from_ranks(full[:, :k_long], gnd, ks=(1,), n_db=n_db)
    exact = revisited_map(scores, gnd, ks=(1,))
    for s in ("easy", "medium", "hard"):
        assert got[s]["mp@1"] == pytest.approx(exact[s]["mp@1"])
        assert got[s][f"map@{k_long}"] <= exact[s]["map"] + 1e-12


def test_cutoff_without_any_listed_positive_scores_zero():
    gnd = [{"easy": [5], "hard": [], "junk": []}]
    res = revisited_map_from_ranks(np.array([[0, 1, 2]]), gnd, ks=(1,), n_db=10)
    assert res["easy"]["map@3"] == 0.0 and res["easy"]["mp@1"] == 0.0


def _int_features(rng, n, dim=6):
    # small integers: every dot product is exact in float32, whatever the summation order
    return rng.integers(-2, 3, size=(n, dim)).astype(np.float32)


@pytest.mark.parametrize("block_rows", [1, 7, 64, 1000])
def test_streaming_equals_one_shot(block_rows):
    rng = np.random.default_rng(11)
    n_q, n_db = 9, 64
    q, db = _int_features(rng, n_q), _int_features(rng, n_db)
    db[10] = db[3]  # exact duplicate rows: ties
    gnd = random_gnd(rng, n_q, n_db)
    want = revisited_map(q @ db.T, gnd)
    kw: dict = {"normalize": False, "block_rows": block_rows}
    assert_nested_close(revisited_map_streaming(q, db, gnd, **kw), want)
    blocks = [db[a : a + block_rows] for a in range(0, n_db, block_rows)]
    assert_nested_close(revisited_map_streaming(q, blocks, gnd, **kw), want)
    calls = []

    def source() -> Iterator[np.ndarray]:
        calls.append(1)
        return iter(blocks)

    # block_bytes=1: one query per score tile
    got = revisited_map_streaming(q, source, gnd, normalize=False, block_bytes=1)
    assert_nested_close(got, want)
    assert len(calls) == 2  # exact mode reads the database exactly twice


def test_streaming_normalises_and_accepts_fp16():
    rng = np.random.default_rng(12)
    q = rng.standard_normal((8, 16)).astype(np.float16)
    db = rng.standard_normal((50, 16)).astype(np.float16)
    gnd = random_gnd(rng, 8, 50)
    qn = q.astype(np.float32) / np.linalg.norm(q.astype(np.float32), axis=1, keepdims=True)
    dn = db.astype(np.float32) / np.linalg.norm(db.astype(np.float32), axis=1, keepdims=True)
    assert_nested_close(revisited_map_streaming(q, db, gnd), revisited_map(qn @ dn.T, gnd))


@pytest.mark.parametrize("top_k", [None, 12])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_stored_norms_give_the_same_retrieval(top_k, dtype):
    from evaluators._search import row_norms

    rng = np.random.default_rng(14)
    q = rng.standard_normal((8, 16)).astype(dtype)
    db = (rng.standard_normal((50, 16)) * rng.uniform(0.5, 9, (50, 1))).astype(dtype)
    gnd = random_gnd(rng, 8, 50)
    blocks = [db[a : a + 16] for a in range(0, 50, 16)]
    plain = revisited_map_streaming(q, blocks, gnd, top_k=top_k)
    stored = revisited_map_streaming(q, blocks, gnd, top_k=top_k, db_norms=row_norms(db))
    assert stored == plain
    qy, dy = rng.integers(0, 4, 8), rng.integers(0, 4, 50)
    kw = {"top_k": top_k, "block_rows": 16}
    want = label_retrieval(q, qy, db, dy, **kw)
    assert label_retrieval(q, qy, db, dy, db_norms=row_norms(db), **kw) == want
    with pytest.raises(ShapeError, match="db_norms"):
        label_retrieval(q, qy, db, dy, db_norms=row_norms(db)[:-1], **kw)


def test_streaming_top_k_matches_cutoff_ranks():
    rng = np.random.default_rng(13)
    n_q, n_db, cut = 9, 70, 15
    q, db = _int_features(rng, n_q), _int_features(rng, n_db)
    gnd = random_gnd(rng, n_q, n_db)
    full = np.stack([stable_ranking(r) for r in q @ db.T])
    want = oracle_revisited([r[:cut].tolist() for r in full], gnd, (1, 5), cutoff=cut)
    gen = (db[a : a + 8] for a in range(0, n_db, 8))  # one-shot iterators are fine here
    got = revisited_map_streaming(q, gen, gnd, ks=(1, 5), top_k=cut, normalize=False)
    assert_nested_close(got, want)


def test_streaming_exact_rejects_one_shot_iterator():
    rng = np.random.default_rng(0)
    q, db = _int_features(rng, 2), _int_features(rng, 10)
    gnd = random_gnd(rng, 2, 10)
    with pytest.raises(DataError, match="twice"):
        revisited_map_streaming(q, iter([db]), gnd)


def test_streaming_rejects_gnd_beyond_database():
    rng = np.random.default_rng(0)
    q, db = _int_features(rng, 1), _int_features(rng, 10)
    with pytest.raises(DataError, match="only 10 images"):
        revisited_map_streaming(q, db, [{"easy": [12], "hard": [], "junk": []}])


def test_revisited_shape_errors():
    gnd = [{"easy": [0], "hard": [], "junk": []}] * 3
    with pytest.raises(ShapeError, match=r"scores\.T"):
        revisited_map(np.zeros((5, 3)), gnd)
    with pytest.raises(ShapeError, match=r"ranks\.T"):
        revisited_map_from_ranks(np.zeros((5, 3), dtype=int), gnd)
    with pytest.raises(ShapeError, match="NaN"):
        revisited_map(np.full((3, 5), np.nan), gnd)
    with pytest.raises(DataError, match="twice"):
        revisited_map_from_ranks(np.zeros((3, 5), dtype=int), gnd)
    with pytest.raises(ShapeError, match="top_k"):
        revisited_map_from_ranks(np.tile(np.arange(3), (3, 1)), gnd, ks=(5,), n_db=9)


def test_all_queries_skipped_gives_nan():
    res = revisited_map(np.ones((1, 4)), [{"easy": [], "hard": [], "junk": [1]}])
    assert np.isnan(res["medium"]["map"]) and res["medium"]["n_queries"] == 0


# ------------------------------------------------------------------------------------------
# Ground truth validation
# ------------------------------------------------------------------------------------------


def _gnd_file():
    return {
        "imlist": [f"db{i}" for i in range(6)],
        "qimlist": ["q0", "q1"],
        "gnd": [
            {"easy": [0, 1], "hard": [2], "junk": [3], "bbx": [1, 2, 3.5, 4]},
            {"easy": np.array([5]), "hard": [], "junk": [], "bbx": (0.0, 0.0, 1.0, 1.0)},
        ],
    }


def test_load_gnd_valid():
    gnd = load_gnd(_gnd_file())
    assert len(gnd) == 2
    assert gnd[0]["easy"].dtype == np.int64 and gnd[0]["easy"].tolist() == [0, 1]
    assert gnd[1]["hard"].size == 0 and gnd[0]["bbx"] == (1.0, 2.0, 3.5, 4.0)
    assert revisited_map(np.ones((2, 6)), gnd)["medium"]["n_queries"] == 2


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda o: o.pop("qimlist"), "lacks 'qimlist'"),
        (lambda o: o["gnd"].pop(), "one entry per query"),
        (lambda o: o["gnd"][0].pop("junk"), r"lacks 'junk'"),
        (lambda o: o["gnd"][0].update(easy=[0, 6]), "only 6 images"),
        (lambda o: o["gnd"][0].update(easy=[-1]), "negative"),
        (lambda o: o["gnd"][0].update(easy=[1, 1]), "more than once"),
        (lambda o: o["gnd"][0].update(hard=[1]), "both 'easy' and 'hard'"),
        (lambda o: o["gnd"][0].update(easy=[0.5]), "integer"),
        (lambda o: o["gnd"][0].update(bbx=[1, 2, 3]), "4 finite numbers"),
        (lambda o: o["gnd"][0].update(bbx="abcd"), "4 finite numbers"),
        (lambda o: o["imlist"].__setitem__(0, 3), "expected an image name"),
        (lambda o: o.__setitem__("gnd", {"a": 1}), "list with one dict"),
    ],
)
def test_load_gnd_rejects(mutate, match):
    obj = _gnd_file()
    mutate(obj)
    with pytest.raises(DataError, match=match):
        load_gnd(obj)


def test_load_gnd_rejects_non_dict():
    with pytest.raises(DataError, match="file path"):
        load_gnd("gnd_roxford5k.pkl")


# ------------------------------------------------------------------------------------------
# Label retrieval
# ------------------------------------------------------------------------------------------


def oracle_label(q, qy, db, dy, ks, exclude_self=False):
    qn = q.astype(np.float32) / np.linalg.norm(q.astype(np.float32), axis=1, keepdims=True)
    dn = db.astype(np.float32) / np.linalg.norm(db.astype(np.float32), axis=1, keepdims=True)
    scores = qn @ dn.T
    rows: list[dict | None] = []
    for i in range(len(q)):
        order = stable_ranking(scores[i])
        if exclude_self:
            order = order[order != i]
        rel = dy[order] == qy[i]
        if not rel.any():
            rows.append(None)
            continue
        hits = np.flatnonzero(rel)  # 0-based ranks of relevant items
        row = {
            "map": np.mean([(j + 1) / (r + 1) for j, r in enumerate(hits)]),
            "mrr": 1 / (hits[0] + 1),
        }
        for k in ks:
            found = int(rel[:k].sum())
            row[f"recall@{k}"] = found / rel.sum()
            row[f"hit@{k}"] = float(found > 0)
            row[f"precision@{k}"] = found / k
        rows.append(row)
    kept = [r for r in rows if r is not None]
    out = {key: float(np.mean([r[key] for r in kept])) for key in kept[0]}
    out["n_queries"] = len(kept)
    out["n_queries_skipped"] = len(rows) - len(kept)
    return out


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_label_retrieval_matches_oracle(exclude_self, ties):
    rng = np.random.default_rng(21 + exclude_self + 2 * ties)
    n_db, dim = 90, 8
    make = exact_tie_features if ties else (lambda r, n: r.standard_normal((n, dim)))
    db = make(rng, n_db).astype(np.float32)
    dy = rng.integers(0, 7, size=n_db)
    dy[0] = 99  # a singleton class: skipped under exclude_self
    if exclude_self:
        q, qy = db, dy
    else:
        q = make(rng, 25).astype(np.float32)
        qy = rng.integers(0, 8, size=25)  # label 7 never in the gallery: skipped
    want = oracle_label(q, qy, db, dy, KS, exclude_self)
    assert want["n_queries_skipped"] > 0
    for kw in ({}, {"block_rows": 16, "block_bytes": 4 * n_db * 3}, {"block_bytes": 1}):
        got = label_retrieval(q, qy, db, dy, ks=KS, exclude_self=exclude_self, **kw)
        assert_nested_close(got, want)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_label_retrieval_top_k(exclude_self):
    rng = np.random.default_rng(5)
    db = exact_tie_features(rng, 60)
    dy = rng.integers(0, 4, size=60).astype(str)  # string labels work too
    q, qy = (db, dy) if exclude_self else (exact_tie_features(rng, 20), rng.integers(0, 4, 20))
    qy = np.asarray(qy).astype(str)
    cut = 12
    got = label_retrieval(q, qy, db, dy, ks=(1, 5, 10), exclude_self=exclude_self, top_k=cut)
    exact = label_retrieval(q, qy, db, dy, ks=(1, 5, 10), exclude_self=exclude_self)
    for k in (1, 5, 10):  # exact for k <= K
        for m in ("recall", "hit", "precision"):
            assert got[f"{m}@{k}"] == pytest.approx(exact[f"{m}@{k}"]), (m, k)
    assert got[f"map@{cut}"] <= exact["map"] + 1e-12
    assert got[f"mrr@{cut}"] <= exact["mrr"] + 1e-12
    # map@K, mrr@K by hand from the full ranking: relevant items beyond K add zero
    qn, dn = q, db  # rows have norm exactly 1
    ap, rr = [], []
    for i in range(len(q)):
        order = stable_ranking(qn[i] @ dn.T)
        if exclude_self:
            order = order[order != i]
        rel = dy[order] == qy[i]
        hits = np.flatnonzero(rel[:cut])
        ap.append(sum((j + 1) / (r + 1) for j, r in enumerate(hits)) / rel.sum())
        rr.append(1 / (hits[0] + 1) if hits.size else 0.0)
    assert got[f"map@{cut}"] == pytest.approx(np.mean(ap))
    assert got[f"mrr@{cut}"] == pytest.approx(np.mean(rr))


def test_recall_at_k_differs_from_hit_at_k():
    # one query, 4 relevant items (label 1); the top 2 holds one of them
    db = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.2, 0.8], [0.3, 0.7]], np.float32)
    dy = np.array([1, 0, 1, 1, 0, 1])
    res = label_retrieval(np.array([[1.0, 0.0]]), np.array([1]), db, dy, ks=(2,))
    assert res["recall@2"] == pytest.approx(1 / 4)
    assert res["hit@2"] == 1.0
    assert res["precision@2"] == pytest.approx(1 / 2)
    assert res["mrr"] == 1.0


def test_label_retrieval_fp16_computed_in_float32():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((15, 12)).astype(np.float16)
    db = rng.standard_normal((70, 12)).astype(np.float16)
    qy, dy = rng.integers(0, 5, 15), rng.integers(0, 5, 70)
    got = label_retrieval(q, qy, db, dy)
    assert got == label_retrieval(q.astype(np.float32), qy, db.astype(np.float32), dy)
    assert_nested_close(got, oracle_label(q, qy, db, dy, KS))


def test_label_retrieval_errors():
    x, y = np.ones((4, 3), np.float32), np.arange(4)
    with pytest.raises(ShapeError, match="same set"):
        label_retrieval(x, y, x[:3], y[:3], exclude_self=True)
    with pytest.raises(ShapeError, match="dimension"):
        label_retrieval(x, y, np.ones((4, 2)), y)
    with pytest.raises(ShapeError, match="labels"):
        label_retrieval(x, y[:3], x, y)
    with pytest.raises(ShapeError, match="top_k"):
        label_retrieval(x, y, x, y, top_k=2, ks=(5,))
    with pytest.raises(ShapeError, match="gallery size"):
        label_retrieval(x, y, x, y, top_k=4, ks=(1,), exclude_self=True)


# ------------------------------------------------------------------------------------------
# Metric directions, import hygiene
# ------------------------------------------------------------------------------------------


def test_every_returned_metric_has_a_direction():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 4)), rng.integers(0, 3, 20)
    names = set(label_retrieval(x, y, x, y, exclude_self=True))
    names |= set(label_retrieval(x, y, x, y, top_k=10))
    g = [{"easy": [0], "hard": [], "junk": []}]
    names |= set(revisited_map_from_ranks(np.array([[1, 0]]), g, ks=(2,), n_db=3)["easy"])
    for name in names - {"n_queries", "n_queries_skipped"}:
        assert higher_is_better(name) is True
    defaults = set(label_retrieval(x, y, x, y)) | set(revisited_map(np.ones((1, 3)), g)["easy"])
    assert defaults - {"n_queries", "n_queries_skipped"} <= set(HIGHER_IS_BETTER)
    with pytest.raises(UnknownNameError, match="Did you mean"):
        higher_is_better("mapp")


def test_module_does_not_import_torch():
    code = "import sys, evaluators.retrieval; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("n_values", [3, 500, 10**6])  # many ties (binned), a few (loop), none
def test_count_before_matches_brute_force(n_values):
    from evaluators.retrieval import _count_before

    rng = np.random.default_rng(n_values)
    n_all, base, n = 300, 100, 120  # the block holds items 100..219 of a 300-item database
    all_scores = rng.integers(0, n_values, n_all).astype(np.float32)
    tracked = rng.choice(n_all, 50, replace=False)  # inside and outside the block
    order = np.argsort(all_scores[tracked], kind="stable")
    thr, idx = all_scores[tracked][order], tracked[order].astype(np.int64)
    block = all_scores[base : base + n]
    got = _count_before(block, base, thr, idx)
    d = np.arange(base, base + n)
    want = [
        np.count_nonzero((block > t) | ((block == t) & (d < p)))
        for t, p in zip(thr, idx, strict=True)
    ]
    assert got.tolist() == want

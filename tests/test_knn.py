"""Exact top-k search and the DINO weighted kNN against plain brute-force oracles.

Tie-heavy data is built so float32 arithmetic is exact: integer features for raw
inner products, and unit vectors with entries +-1/4 (D = 16, norm exactly 1) for
the cosine kNN, whose dot products are multiples of 1/16. Any summation order then
gives bit-identical similarities, so exact ties are real ties in every code path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluators._search import METRICS, UnitRows, exact_topk, l2_normalize, row_norms
from evaluators.knn import HIGHER_IS_BETTER, higher_is_better, knn_classify
from featcache.errors import DataError, ShapeError, UnavailableError, UnknownNameError

# ----------------------------------------------------------------------------- oracles


def brute_topk(q: np.ndarray, db: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full similarity matrix; each row sorted by (-score, index); first k."""
    s = q.astype(np.float64) @ db.astype(np.float64).T
    idx = np.array([sorted(range(db.shape[0]), key=lambda j: (-row[j], j))[:k] for row in s])
    return np.take_along_axis(s, idx, axis=1), idx


def brute_knn(train_x, train_y, test_x, test_y, ks, temperature, n_cls):
    """DINO weighted vote written out with loops (float64 throughout)."""
    tr = train_x.astype(np.float64)
    te = test_x.astype(np.float64)
    tr = tr / np.maximum(np.linalg.norm(tr, axis=1, keepdims=True), 1e-12)
    te = te / np.maximum(np.linalg.norm(te, axis=1, keepdims=True), 1e-12)
    sims = te @ tr.T
    hits1 = {k: 0 for k in ks}
    hits5 = {k: 0 for k in ks}
    for i in range(te.shape[0]):
        order = sorted(range(tr.shape[0]), key=lambda j: (-sims[i, j], j))
        for k in ks:
            score = [0.0] * n_cls
            for j in order[:k]:
                score[train_y[j]] += math.exp(sims[i, j] / temperature)
            ranked = sorted(range(n_cls), key=lambda c: (-score[c], c))
            hits1[k] += ranked[0] == test_y[i]
            hits5[k] += test_y[i] in ranked[:5]
    n = te.shape[0]
    return {k: (hits1[k] / n, hits5[k] / n) for k in ks}


def dyadic_unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    return (rng.choice([-1.0, 1.0], size=(n, d)) / math.sqrt(d)).astype(np.float32)


# ----------------------------------------------------------------------------- exact_topk


@pytest.fixture(scope="module")
def int_data():
    rng = np.random.default_rng(0)
    db = rng.integers(-2, 3, size=(700, 6)).astype(np.float32)  # many exact ties
    q = rng.integers(-2, 3, size=(40, 6)).astype(np.float32)
    return q, db


@pytest.mark.parametrize("k", [1, 7, 50])
@pytest.mark.parametrize("block_rows", [700, 64, 5])
def test_exact_topk_equals_brute_force_with_ties(int_data, k, block_rows):
    q, db = int_data
    ref_s, ref_i = brute_topk(q, db, k)
    s, i = exact_topk(q, db, k, block_rows=block_rows)
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == (40, k)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_array_equal(s, ref_s)


def test_exact_topk_iterable_blocks_and_fp16_match_one_shot(int_data):
    q, db = int_data
    ref = exact_topk(q, db, 30)
    uneven = [db[:1], db[1:250], db[250:251], db[251:]]
    gen = (b for b in uneven)
    for database in (uneven, gen):
        s, i = exact_topk(q, database, 30, block_rows=100)
        np.testing.assert_array_equal(i, ref[1])
        np.testing.assert_array_equal(s, ref[0])
    s, i = exact_topk(q.astype(np.float16), db.astype(np.float16), 30, block_rows=77)
    np.testing.assert_array_equal(i, ref[1])
    assert s.dtype == np.float32


def test_exact_topk_tie_order_hand_case():
    db = np.array([[1.0], [2.0], [2.0], [1.0], [2.0], [0.0]], dtype=np.float32)
    q = np.array([[1.0], [-1.0]], dtype=np.float32)
    s, i = exact_topk(q, db, 2)  # the boundary straddles three equal scores of 2
    np.testing.assert_array_equal(i, [[1, 2], [5, 0]])
    np.testing.assert_array_equal(s, [[2, 2], [0, -1]])
    s, i = exact_topk(q, db, 4, block_rows=2)
    np.testing.assert_array_equal(i, [[1, 2, 4, 0], [5, 0, 3, 1]])


@pytest.mark.parametrize("k", [1, 7, 50])
def test_torch_block_search_equals_the_faiss_path(int_data, k):
    # the code behind device="cuda", run on the CPU: torch.topk + the same tie repair
    from evaluators._search import _CpuBlockSearch, _merge, _TorchBlockSearch

    q, db = int_data
    ref = exact_topk(q, db, k, block_rows=128)
    for search in (_TorchBlockSearch(q, "cpu"), _CpuBlockSearch(q)):
        s = np.empty((len(q), 0), np.float32)
        i = np.empty((len(q), 0), np.int64)
        for a in range(0, len(db), 128):
            bs, bi = search.block_topk(np.ascontiguousarray(db[a : a + 128]), k)
            s, i = _merge(s, i, bs, bi + a, k)
        np.testing.assert_array_equal(i, ref[1])
        np.testing.assert_array_equal(s, ref[0])


def _cuda_or_skip() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.mark.gpu
def test_cuda_search_and_knn_equal_the_cpu_path(int_data, tie_problem):
    _cuda_or_skip()
    q, db = int_data
    for k in (1, 50):
        cpu = exact_topk(q, db, k, block_rows=100)
        gpu = exact_topk(q, db, k, block_rows=100, device="cuda")
        np.testing.assert_array_equal(gpu[1], cpu[1])
        np.testing.assert_array_equal(gpu[0], cpu[0])
        # cosine with stored norms, as the runners search, equals it without on the GPU
        # (across devices BLAS rounding of the normalised rows may differ: same device here)
        plain = exact_topk(q, db, k, block_rows=100, metric="cosine", device="cuda")
        stored = exact_topk(q, db, k, block_rows=100, metric="cosine", device="cuda",
                            db_norms=row_norms(db))  # fmt: skip
        np.testing.assert_array_equal(stored[1], plain[1])
        np.testing.assert_array_equal(stored[0], plain[0])
    train_x, train_y, test_x, test_y = tie_problem
    cpu_knn = knn_classify(train_x, train_y, test_x, test_y, ks=(5, 50))
    assert knn_classify(train_x, train_y, test_x, test_y, ks=(5, 50), device="cuda") == cpu_knn
    stored = knn_classify(train_x, train_y, test_x, test_y, ks=(5, 50), device="cuda",
                          train_norms=row_norms(train_x))  # fmt: skip
    assert stored == cpu_knn


def test_cuda_request_without_a_gpu_says_so(int_data):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    q, db = int_data
    with pytest.raises(UnavailableError, match="device='cpu'"):
        exact_topk(q, db, 3, device="cuda")


def test_exact_topk_pads_when_database_is_smaller_than_k():
    db = np.eye(3, dtype=np.float32)
    s, i = exact_topk(db[:1], db, 5)
    np.testing.assert_array_equal(i, [[0, 1, 2, -1, -1]])
    assert s[0, 0] == 1 and np.isneginf(s[0, 3:]).all()


def test_exact_topk_cosine_normalises_both_sides():
    db = np.array([[10.0, 0.0], [0.5, 0.5], [0.0, 3.0]], dtype=np.float32)
    s, i = exact_topk(np.array([[0.0, 2.0]], np.float32), db, 3, metric="cosine")
    np.testing.assert_array_equal(i, [[2, 1, 0]])
    np.testing.assert_allclose(s, [[1.0, math.sqrt(0.5), 0.0]], atol=1e-6)


def test_exact_topk_rejects_bad_input(int_data):
    q, db = int_data
    with pytest.raises(ShapeError, match="dimension"):
        exact_topk(q, db[:, :3], 3)
    with pytest.raises(ShapeError, match="empty"):
        exact_topk(q, [], 3)
    with pytest.raises(ShapeError, match="positive"):
        exact_topk(q, db, 0)
    for value in (np.nan, np.inf, -np.inf):
        bad = db.copy()
        bad[3, 0] = value
        for metric in METRICS:
            with pytest.raises(DataError, match="NaN or infinite"):
                exact_topk(q, bad, 3, metric=metric)
            with pytest.raises(DataError, match="queries"):
                exact_topk(bad, db, 3, metric=metric)
    with pytest.raises(UnknownNameError, match="Did you mean 'cosine'"):
        exact_topk(q, db, 3, metric="cosin")


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("block_rows", [1000, 97])
def test_stored_norms_give_the_same_search_bit_for_bit(dtype, block_rows):
    rng = np.random.default_rng(4)
    db = (rng.standard_normal((1000, 24)) * rng.uniform(0.1, 30, (1000, 1))).astype(dtype)
    db[[5, 500]] = 0  # zero rows (masked images) stay zero
    db[7] = db[8]  # an exact tie
    q = rng.standard_normal((30, 24)).astype(np.float32)
    norms = row_norms(db)
    assert norms.dtype == np.float32 and norms[5] == 0
    np.testing.assert_allclose(norms, np.linalg.norm(db.astype(np.float64), axis=1), rtol=1e-6)
    plain = exact_topk(q, db, 40, metric="cosine", block_rows=block_rows)
    stored = exact_topk(q, db, 40, metric="cosine", block_rows=block_rows, db_norms=norms)
    # an iterable, as a store streams (same blocks: BLAS rounding depends on the shapes)
    blocks = [db[a : a + block_rows] for a in range(0, 1000, block_rows)]
    streamed = exact_topk(q, iter(blocks), 40, metric="cosine", db_norms=norms)
    for got in (stored, streamed):
        np.testing.assert_array_equal(got[0], plain[0])
        np.testing.assert_array_equal(got[1], plain[1])
    # the reused buffer holds l2_normalize's own numbers
    unit = UnitRows(norms)
    np.testing.assert_array_equal(unit(db[:300], 0, "rows"), l2_normalize(db[:300]))
    np.testing.assert_array_equal(unit(db[300:350], 300, "rows"), l2_normalize(db[300:350]))


def test_stored_norms_must_match_the_rows(int_data):
    q, db = int_data
    norms = row_norms(db)
    with pytest.raises(ShapeError, match="db_norms has 699 norms"):
        exact_topk(q, db, 3, metric="cosine", db_norms=norms[:-1])
    with pytest.raises(ShapeError, match="database of 700 rows"):
        exact_topk(q, db, 3, metric="cosine", db_norms=np.append(norms, 1.0))
    with pytest.raises(ShapeError, match="cosine"):
        exact_topk(q, db, 3, metric="ip", db_norms=norms)
    bad = norms.copy()
    bad[9] = np.nan  # the norms stand for the rows' finiteness
    with pytest.raises(DataError, match="NaN or infinite"):
        exact_topk(q, db, 3, metric="cosine", db_norms=bad)


def test_knn_with_stored_norms_equals_without(tie_problem):
    x, y, tx, ty = tie_problem
    plain = knn_classify(x, y, tx, ty, ks=(1, 5))
    stored = knn_classify(x, y, tx, ty, ks=(1, 5), train_norms=row_norms(x))
    assert stored == plain


# ----------------------------------------------------------------------------- knn


def test_knn_hand_case_pins_the_weighting():
    # test item [1, 0]: neighbour A (class 0) at similarity 1, B and C (class 1) at 0.6.
    train_x = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]], np.float32)
    train_y = np.array([0, 1, 1])
    test_x, test_y = np.array([[1.0, 0.0]], np.float32), np.array([0])
    # T = 0.07: exp(1/.07) = 1.6e6 beats 2 * exp(.6/.07) = 1.1e4 -> class 0
    out = knn_classify(train_x, train_y, test_x, test_y, ks=(1, 3), num_classes=2)
    assert out["top1_k1"] == 1.0 and out["top1_k3"] == 1.0
    # T = 10: exp(.1) = 1.105 loses to 2 * exp(.06) = 2.12 -> class 1 (majority)
    out = knn_classify(train_x, train_y, test_x, test_y, ks=(3,), temperature=10.0)
    assert out["top1_k3"] == 0.0 and out["top5_k3"] == 1.0


@pytest.fixture(scope="module")
def tie_problem():
    rng = np.random.default_rng(1)
    train_x = dyadic_unit(rng, 300)
    train_x[150:200] = train_x[:50]  # exact duplicate rows, far apart in index
    train_y = rng.integers(0, 7, 300)
    test_x = np.concatenate([dyadic_unit(rng, 60), train_x[:10]])  # self-matches tie
    test_y = rng.integers(0, 7, 70)
    return train_x, train_y, test_x, test_y


def test_knn_equals_brute_force_on_exact_ties(tie_problem):
    train_x, train_y, test_x, test_y = tie_problem
    ks = (1, 4, 10, 37)
    ref = brute_knn(train_x, train_y, test_x, test_y, ks, 0.07, 7)
    out = knn_classify(train_x, train_y, test_x, test_y, ks=ks, block_rows=64)
    for k in ks:
        assert (out[f"top1_k{k}"], out[f"top5_k{k}"]) == ref[k], k
    # the same answer from fp16 inputs (the +-1/4 entries are exact in fp16)
    out16 = knn_classify(
        train_x.astype(np.float16), train_y, test_x.astype(np.float16), test_y, ks=ks
    )
    assert {k: out16[k] for k in out} == out


def test_knn_equals_brute_force_on_random_features():
    rng = np.random.default_rng(2)
    means = rng.standard_normal((5, 24))
    train_y, test_y = rng.integers(0, 5, 400), rng.integers(0, 5, 50)
    train_x = (means[train_y] + 1.5 * rng.standard_normal((400, 24))).astype(np.float32)
    test_x = (means[test_y] + 1.5 * rng.standard_normal((50, 24))).astype(np.float32)
    ks = (10, 20, 100, 200)
    ref = brute_knn(train_x, train_y, test_x, test_y, ks, 0.07, 5)
    out = knn_classify(train_x, train_y, test_x, test_y)
    for k in ks:
        assert (out[f"top1_k{k}"], out[f"top5_k{k}"]) == ref[k], k
    assert 0.3 < out["top1_k20"] < 1.0  # learnable, not trivial: the oracle is tested


def test_knn_blockwise_and_streamed_equal_one_shot(tie_problem):
    train_x, train_y, test_x, test_y = tie_problem
    one = knn_classify(train_x, train_y, test_x, test_y, ks=(5, 50))
    blocks = knn_classify(train_x, train_y, test_x, test_y, ks=(5, 50), block_rows=7)
    streamed = knn_classify(
        (train_x[a : a + 41] for a in range(0, 300, 41)), train_y, test_x, test_y, ks=(5, 50)
    )
    assert one == blocks == streamed


def test_knn_clips_k_to_the_training_set_and_says_so(tie_problem):
    train_x, train_y, test_x, test_y = tie_problem
    out = knn_classify(train_x[:30], train_y[:30], test_x, test_y, ks=(10, 200))
    full = knn_classify(train_x[:30], train_y[:30], test_x, test_y, ks=(10, 30))
    assert out["ks"] == [10, 200] and out["ks_effective"] == [10, 30]
    assert out["clipped"] and "n_train=30" in out["note"]
    assert out["top1_k200"] == full["top1_k30"] and out["top5_k200"] == full["top5_k30"]
    assert not full["clipped"] and full["note"] == ""


def test_knn_result_keys_and_directions(tie_problem):
    train_x, train_y, test_x, test_y = tie_problem
    out = knn_classify(train_x, train_y, test_x, test_y)
    metric_keys = {k for k in out if k.startswith("top")}
    assert metric_keys == {f"top{t}_k{k}" for t in (1, 5) for k in (10, 20, 100, 200)}
    assert all(HIGHER_IS_BETTER[k] for k in metric_keys)
    assert higher_is_better("top5_k37") is True
    with pytest.raises(UnknownNameError, match="Did you mean"):
        higher_is_better("top_k20")
    assert out["n_train"] == 300 and out["n_test"] == 70 and out["num_classes"] == 7


def test_knn_rejects_mismatched_inputs(tie_problem):
    train_x, train_y, test_x, test_y = tie_problem
    with pytest.raises(ShapeError, match="len\\(train_y\\)"):
        knn_classify(train_x[:-1], train_y, test_x, test_y)
    with pytest.raises(ShapeError, match="yielded 299 rows"):
        knn_classify(iter([train_x[:-1]]), train_y, test_x, test_y)
    with pytest.raises(ShapeError, match="num_classes"):
        knn_classify(train_x, train_y, test_x, test_y, num_classes=3)
    with pytest.raises(ShapeError, match="negative"):
        knn_classify(train_x, -train_y - 1, test_x, test_y)


def test_cosine_equals_ip_on_normalised_rows():
    rng = np.random.default_rng(5)
    db = rng.standard_normal((500, 16)).astype(np.float32) * rng.uniform(0.5, 2, (500, 1))
    q = rng.standard_normal((7, 16)).astype(np.float32)
    s1, i1 = exact_topk(q, db, 10, metric="cosine")
    s2, i2 = exact_topk(l2_normalize(q), l2_normalize(db), 10, metric="ip")
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(i1, i2)

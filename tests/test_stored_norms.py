"""Row norms kept beside every feature set: written with each chunk (extraction and
import-features share FeatureWriter.write_chunk), read by FeatureSet.norms(), computed
for sets written before bobx kept them; equal to what the search would compute."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from evaluators._search import exact_topk, row_norms


@pytest.fixture
def imported(store):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1100, 12)) * rng.uniform(0.1, 40, (1100, 1))).astype(np.float32)
    x[17] = 0.0
    store.import_features("bb", "ds", "train", x, labels=rng.integers(0, 3, 1100))
    # small chunks: several of them, and a last partial one
    writer = store.create_features(
        "bb", "ds", "small", n=1100, dim=12, cache_key="k", dtype="float32", chunk_rows=256
    )
    for index in writer.missing_chunks():
        a, b = writer.chunk_range(index)
        writer.write_chunk(index, x[a:b], labels=np.zeros(b - a, np.int64), ids=[""] * (b - a))
    writer.finalize()
    return store, x


def test_norms_are_written_with_the_chunks(imported):
    store, x = imported
    for split, dtype in (("train", np.float16), ("small", np.float32)):
        fs = store.features("bb", "ds", split)
        stored = fs.norms()
        assert stored.dtype == np.float32 and stored.shape == (1100,) and stored[17] == 0
        # the norms of the stored (fp16-rounded) rows, bit for bit what the search computes
        np.testing.assert_array_equal(stored, row_norms(fs.embeddings()))
        np.testing.assert_array_equal(stored, row_norms(x.astype(dtype)))
        assert not np.isnan(np.asarray(fs._array("norms")[...])).any()  # read, not computed
        q = x[:20]
        plain = exact_topk(q, fs.iter_blocks(), 15, metric="cosine")
        fast = exact_topk(q, fs.iter_blocks(), 15, metric="cosine", db_norms=stored)
        np.testing.assert_array_equal(plain[1], fast[1])
        np.testing.assert_array_equal(plain[0], fast[0])


def test_sets_without_norms_compute_them(imported):
    store, x = imported
    fs = store.features("bb", "ds", "small")
    want = fs.norms()
    # a chunk written before bobx kept norms: its rows hold the fill value
    arr = zarr.open_array(store=store.zstore, path=f"{fs.key}/norms", mode="r+")
    arr[256:512] = np.nan
    np.testing.assert_array_equal(store.features("bb", "ds", "small").norms(), want)
    # a whole set from before: no norms array at all
    store.objects.delete_prefix(f"{fs.key}/norms")
    assert not store.objects.exists(f"{fs.key}/norms/zarr.json")
    np.testing.assert_array_equal(store.features("bb", "ds", "small").norms(), want)

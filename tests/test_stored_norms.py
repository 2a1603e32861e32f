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
        stored_raw = zarr.open_array(store=store.zstore, path=f"{fs.data_key}/norms", mode="r")
        assert not np.isnan(np.asarray(stored_raw[...])).any()  # read, not computed
        q = x[:20]
        plain = exact_topk(q, fs.iter_blocks(), 15, metric="cosine")
        fast = exact_topk(q, fs.iter_blocks(), 15, metric="cosine", db_norms=stored)
        np.testing.assert_array_equal(plain[1], fast[1])
        np.testing.assert_array_equal(plain[0], fast[0])


def _as_legacy_set(store, key: str, data_key: str) -> None:
    """Rewrite a set as bobx wrote it before generations and row norms: arrays and
    markers directly under the set's key, no ``norms`` array, no generation in its spec."""
    for obj in store.objects.list_prefix(data_key + "/"):
        rest = obj[len(data_key) + 1 :]
        if not rest.startswith("norms/"):
            store.objects.put(f"{key}/{rest}", store.objects.get(obj))
    store.objects.delete_prefix(data_key + "/")
    spec = store.objects.get_json(f"{key}/_bobx/spec.json")
    spec.pop("generation")
    store.objects.put_json(f"{key}/_bobx/spec.json", spec)


def test_sets_without_norms_compute_them(imported):
    store, x = imported
    fs = store.features("bb", "ds", "small")
    want, rows = fs.norms(), fs.embeddings()
    # a whole set from before bobx kept norms: no norms array at all
    _as_legacy_set(store, fs.key, fs.data_key)
    old = store.features("bb", "ds", "small")
    assert old.data_key == fs.key and not store.objects.exists(f"{fs.key}/norms/zarr.json")
    np.testing.assert_array_equal(old.norms(), want)
    np.testing.assert_array_equal(old.embeddings(), rows)

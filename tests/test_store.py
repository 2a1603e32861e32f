"""The store contract, run on local disk, memory and a real S3 server alike."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import featcache
from featcache.errors import (
    DataError,
    IncompleteError,
    IntegrityError,
    InvalidNameError,
    ShapeError,
    StaleCacheError,
    UnknownNameError,
)
from featcache.names import validate_name
from tests._store_workers import CHUNK, DIM, N, reference_data
from tests.test_leases import LeaseContract

WORKER = str(Path(__file__).with_name("_store_workers.py"))
ROOT = str(Path(__file__).resolve().parent.parent)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": ROOT}


def _small(store: featcache.Store, split: str, x: np.ndarray, *, key: str = "s1", **kw):
    """A small set (4 chunks of 25 rows) written in full: cheap on every backend."""
    writer = store.create_features(
        "bb", "ds", split, n=len(x), dim=x.shape[1], cache_key=key, chunk_rows=25, **kw
    )
    for index in writer.missing_chunks():
        _chunk(writer, index, x)
    return writer


def _chunk(writer, index: int, x: np.ndarray) -> None:
    a, b = writer.chunk_range(index)
    writer.write_chunk(
        index, x[a:b], labels=np.arange(a, b) % 5, ids=[f"i{i}" for i in range(a, b)]
    )


def _key_of(store: featcache.Store, split: str, suffix: str) -> str:
    """The object key ending in ``suffix`` inside feature set bb/ds/<split> (any layout)."""
    [key] = [k for k in store.objects.list_prefix(f"features/bb/ds/{split}/") if k.endswith(suffix)]
    return key


def _write(store: featcache.Store, *, key: str = "k1", dtype: str = "float16", **kw):
    x, y, ids = reference_data()
    writer = store.create_features(
        "bb", "ds", "train", n=N, dim=DIM, cache_key=key, chunk_rows=CHUNK, dtype=dtype, **kw
    )
    for index in writer.missing_chunks():
        a, b = writer.chunk_range(index)
        writer.write_chunk(index, x[a:b], labels=y[a:b], ids=ids[a:b])
    assert writer.finalize()
    return x, y, ids


class TestStoreContract(LeaseContract):
    """Every backend must pass every test here (zarr's StoreTests idea); the lease
    checks come from :class:`tests.test_leases.LeaseContract`."""

    @pytest.mark.parametrize("dtype", ["float16", "float32"])
    def test_roundtrip(self, store, dtype):
        x, y, ids = _write(store, dtype=dtype)
        fs = store.features("bb", "ds", "train")
        assert (fs.n, fs.dim, fs.dtype, fs.cache_key) == (N, DIM, dtype, "k1")
        np.testing.assert_array_equal(fs.embeddings(dtype=None), x.astype(dtype))
        np.testing.assert_array_equal(fs.labels(), y)
        assert list(fs.ids()) == ids
        assert fs.valid().all() and fs.n_invalid == 0
        assert fs.spec["created_by"] and fs.spec["versions"]["zarr"].startswith("3.")

    def test_blocks_equal_whole(self, store):
        _write(store)
        fs = store.features("bb", "ds", "train")
        blocks = list(fs.iter_blocks(block_rows=200))
        assert all(len(b) % CHUNK == 0 for b in blocks[:-1])
        np.testing.assert_array_equal(np.concatenate(blocks), fs.embeddings())

    def test_incomplete_is_refused_then_resumed(self, store):
        x, y, ids = reference_data()
        writer = store.create_features(
            "bb", "ds", "train", n=N, dim=DIM, cache_key="k1", chunk_rows=CHUNK
        )
        for index in (0, 3, 5):
            a, b = writer.chunk_range(index)
            writer.write_chunk(index, x[a:b], labels=y[a:b], ids=ids[a:b])
        assert not writer.finalize()
        with pytest.raises(IncompleteError, match="re-run `bobx extract"):
            store.features("bb", "ds", "train")
        assert [i.status for i in store.list_features()] == ["partial (3/16 chunks)"]
        again = store.create_features(
            "bb", "ds", "train", n=N, dim=DIM, cache_key="k1", chunk_rows=CHUNK
        )
        assert 0 not in again.missing_chunks() and len(again.missing_chunks()) == 13
        _write(store)
        np.testing.assert_array_equal(
            store.features("bb", "ds", "train").embeddings(),
            x.astype(np.float16).astype(np.float32),
        )

    def test_stale_cache_key(self, store):
        _write(store, key="k1")
        with pytest.raises(StaleCacheError, match="--overwrite"):
            store.create_features("bb", "ds", "train", n=N, dim=DIM, cache_key="k2")
        _write(store, key="k2", overwrite=True)
        assert store.features("bb", "ds", "train").cache_key == "k2"

    def test_complete_set_is_not_rewritten(self, store):
        _write(store)
        writer = store.create_features(
            "bb", "ds", "train", n=N, dim=DIM, cache_key="k1", chunk_rows=CHUNK
        )
        assert writer.complete and writer.missing_chunks() == []

    def test_masked_rows_and_multilabel(self, store):
        rng = np.random.default_rng(1)
        x = rng.standard_normal((10, 4)).astype(np.float32)
        y = rng.integers(0, 2, (10, 5)).astype(np.int8)
        writer = store.create_features(
            "bb", "chex", "test", n=10, dim=4, cache_key="c", label_shape=(5,), chunk_rows=256
        )
        valid = np.ones(10, bool)
        valid[3] = False
        writer.write_chunk(0, x, labels=y, ids=[str(i) for i in range(10)], valid=valid)
        writer.finalize()
        fs = store.features("bb", "chex", "test")
        assert fs.multilabel and fs.n_invalid == 1
        xs, ys, ids = fs.load()
        assert xs.shape == (9, 4) and ys.shape == (9, 5) and "3" not in list(ids)

    def test_shape_checks(self, store):
        writer = store.create_features("bb", "ds", "x", n=10, dim=4, cache_key="c")
        with pytest.raises(ShapeError):
            writer.write_chunk(0, np.zeros((9, 4)), labels=np.zeros(9), ids=["a"] * 9)
        with pytest.raises(ShapeError, match="non-finite"):
            writer.write_chunk(0, np.full((10, 4), 1e6), labels=np.zeros(10), ids=["a"] * 10)

    def test_unknown_feature_set_suggests(self, store):
        _write(store)
        with pytest.raises(UnknownNameError, match="Did you mean 'bb/ds/train'"):
            store.features("bb", "ds", "trian")

    @pytest.mark.parametrize("bad", ["../x", "a/b", "/abs", "", ".hidden", "a b", "x..y", "c:\\d"])
    def test_bad_names_rejected(self, store, bad):
        with pytest.raises(InvalidNameError):
            store.create_features(bad, "ds", "train", n=1, dim=1, cache_key="c")
        with pytest.raises(InvalidNameError):
            store.features("bb", bad, "train")
        with pytest.raises(InvalidNameError):
            store.record(backbone="bb", task="t", dataset="d", metric=bad, value=1.0)

    def test_records_roundtrip_filter_compact(self, store):
        for i, bb in enumerate(["a", "b", "c"]):
            store.record(
                backbone=bb,
                task="classification",
                dataset="d",
                metric="top1",
                value=0.5 + i / 10,
                params={"k": 20},
            )
        store.record(
            backbone="a",
            task="calibration",
            dataset="d",
            metric="ece",
            value=0.1,
            higher_is_better=False,
        )
        df = store.results()
        assert len(df) == 4 and df["id"].is_unique
        assert json.loads(df.iloc[0]["params"]) == {"k": 20}
        assert list(store.results(task="calibration")["higher_is_better"]) == [False]
        assert len(store.results(backbone=["a", "b"])) == 3
        assert store.compact_records() == 4
        store.record(backbone="d", task="classification", dataset="d", metric="top1", value=0.9)
        after = store.results()
        assert len(after) == 5 and set(after["backbone"]) == {"a", "b", "c", "d"}
        assert store.compact_records() == 1 and len(store.results()) == 5

    def test_overwrite_fences_the_writer_it_replaced(self, store):
        x = np.random.default_rng(2).standard_normal((100, 8)).astype(np.float32)
        a = store.create_features("bb", "ds", "train", n=100, dim=8, cache_key="k1", chunk_rows=25)
        _chunk(a, 0, x)
        _chunk(a, 1, x)
        b = store.create_features(
            "bb", "ds", "train", n=100, dim=8, cache_key="k2", chunk_rows=25, dtype="float32",
            overwrite=True,
        )  # fmt: skip
        with pytest.raises(StaleCacheError, match="replaced"):
            _chunk(a, 2, x)  # the old writer stops at its next chunk ...
        assert b.missing_chunks() == [0, 1, 2, 3]  # ... and nothing of it counts for B
        for index in b.missing_chunks():
            _chunk(b, index, 2 * x)
        assert b.finalize()
        with pytest.raises(StaleCacheError, match="replaced"):
            a.finalize()
        fs = store.features("bb", "ds", "train")
        assert fs.cache_key == "k2"
        np.testing.assert_array_equal(fs.embeddings(dtype=None), 2 * x)

    def test_lost_chunk_objects_and_wrong_metadata_are_refused(self, store):
        x = np.random.default_rng(3).standard_normal((100, 8)).astype(np.float32)
        assert _small(store, "a", x).finalize()
        lost = {"embeddings": 1, "labels": 2, "ids": 3, "valid": 0}
        for array, index in lost.items():
            tail = f"/{array}/c/{index}" + ("/0" if array == "embeddings" else "")
            store.objects.delete(_key_of(store, "a", tail))
        with pytest.raises(
            IntegrityError,
            match="bb/ds/a is damaged: chunk 1 of embeddings.*3 more.*verify --repair",
        ):
            store.features("bb", "ds", "a")
        check = store.check_features("bb", "ds", "a")
        assert check.bad_chunks == [0, 1, 2, 3] and not check.fatal
        assert all(f"chunk {i} of {a}" in " ".join(check.problems) for a, i in lost.items())
        assert _small(store, "e", x).finalize()
        meta_key = _key_of(store, "e", "/embeddings/zarr.json")
        meta = store.objects.get_json(meta_key)
        store.objects.put_json(meta_key, {**meta, "shape": [99, 8]})
        with pytest.raises(IntegrityError, match="bb/ds/e.*embeddings.*spec.json"):
            store.features("bb", "ds", "e")
        assert [i.status for i in store.list_features()] == ["complete"] * 2  # a listing is cheap

    def test_all_zero_chunks_are_stored_and_checked(self, store):
        x = np.zeros((100, 8), np.float32)  # zarr skips chunks equal to the fill value by default
        writer = store.create_features("bb", "ds", "z", n=100, dim=8, cache_key="z", chunk_rows=25)
        for index in range(4):
            a, b = writer.chunk_range(index)
            writer.write_chunk(
                index, x[a:b], labels=np.full(b - a, -1), ids=[""] * (b - a), valid=np.zeros(b - a)
            )
        assert writer.finalize()
        fs = store.features("bb", "ds", "z")
        assert fs.n_invalid == 100 and not fs.valid().any()

    def test_sets_of_the_layout_before_generations_still_read_and_resume(self, store):
        """A set bobx wrote before generations: arrays and markers directly under the set."""
        import zarr

        x = np.random.default_rng(4).standard_normal((60, 4)).astype(np.float32)
        key = "features/bb/ds/old"
        spec = {"format": 1, "cache_key": "k0", "n": 60, "dim": 4, "dtype": "float32"}
        spec.update(label_shape=[], chunk_rows=25, attrs={}, created_at="2026-01-01")
        store.objects.put_new_json(f"{key}/_bobx/spec.json", spec)
        arrays = {
            "embeddings": (x, 0.0, None),
            "labels": (np.arange(60) % 3, -1, "auto"),
            "ids": (np.array([f"i{i}" for i in range(60)], dtype=object), "", "auto"),
            "valid": (np.ones(60, bool), False, "auto"),
        }
        for name, (data, fill, comp) in arrays.items():
            arr = zarr.create_array(
                store=store.zstore, name=f"{key}/{name}", shape=data.shape, fill_value=fill,
                chunks=(25, *data.shape[1:]), dtype=str if name == "ids" else data.dtype,
                compressors=comp,
            )  # fmt: skip
            arr[:50] = data[:50]  # chunks 0 and 1 written, chunk 2 not yet
        for index in (0, 1):
            store.objects.put_new_json(f"{key}/_bobx/chunks/{index:08d}.json", {"n_invalid": 0})
        writer = store.create_features(
            "bb", "ds", "old", n=60, dim=4, cache_key="k0", dtype="float32"
        )
        assert writer.data_key == key and writer.missing_chunks() == [2]
        writer.write_chunk(
            2, x[50:], labels=np.arange(50, 60) % 3, ids=[f"i{i}" for i in range(50, 60)]
        )
        assert writer.finalize()
        fs = store.features("bb", "ds", "old")
        np.testing.assert_array_equal(fs.embeddings(), x)
        assert list(fs.ids()) == [f"i{i}" for i in range(60)]

    def test_non_finite_values_are_refused(self, store):
        for value in (float("inf"), float("-inf"), float("nan")):
            with pytest.raises(DataError, match="finite|NaN"):
                store.record(backbone="a", task="t", dataset="d", metric="m", value=value)
        assert store.results().empty

    def test_retracted_records_stay_hidden(self, store):
        keep = store.record(backbone="a", task="t", dataset="d", metric="m", value=1.0)
        drop = store.record(backbone="b", task="t", dataset="d", metric="m", value=2.0)
        assert store.retract(drop.id, reason="wrong run") is True
        assert store.retract(drop.id) is False  # create-only: the first tombstone stays
        assert list(store.results()["id"]) == [keep.id]
        assert store.compact_records() == 2
        assert list(store.results()["id"]) == [keep.id]
        with pytest.raises(UnknownNameError, match="record"):
            store.retract("20200101T000000000000-0123456789abcdef")

    def test_check_writable_leaves_nothing(self, store):
        before = store.objects.list_prefix("")
        store.check_writable()
        assert store.objects.list_prefix("") == before

    def test_create_only_objects(self, store):
        assert store.objects.put_new("x/one.json", b"1")
        assert not store.objects.put_new("x/one.json", b"2")
        assert store.objects.get("x/one.json") == b"1"

    def test_artifacts_and_meta(self, store):
        w = np.arange(12, dtype=np.float32).reshape(3, 4)
        store.put_artifact("probe", "bb", "ds", "run1", {"weights": w}, {"C": 0.1})
        arrays, attrs = store.get_artifact("probe", "bb", "ds", "run1")
        np.testing.assert_array_equal(arrays["weights"], w)
        assert attrs == {"C": 0.1}
        assert store.list_artifacts("probe", "bb", "ds") == ["run1"]
        store.put_meta("roxford5k", "gnd", {"gnd": [{"easy": [1]}]})
        assert store.get_meta("roxford5k", "gnd") == {"gnd": [{"easy": [1]}]}
        with pytest.raises(UnknownNameError):
            store.get_artifact("probe", "bb", "ds", "run2")

    def test_artifact_files(self, store):
        data = b'[{"image_id": 1, "score": 0.5}]'
        store.put_artifact("preds", "bb", "ds", "r", {}, {"n": 1}, files={"p.json": data})
        assert store.get_artifact_file("preds", "bb", "ds", "r", "p.json") == data
        assert store.get_artifact("preds", "bb", "ds", "r") == ({}, {"n": 1})
        store.put_artifact("preds", "bb", "ds", "r", {}, {"n": 0})  # a rewrite drops old files
        with pytest.raises(UnknownNameError, match="p.json"):
            store.get_artifact_file("preds", "bb", "ds", "r", "p.json")
        with pytest.raises(InvalidNameError):
            store.put_artifact("preds", "bb", "ds", "r", {}, files={"../x": b""})

    def test_import_features(self, store):
        x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
        fs = store.import_features("ext", "ds", "train", x, labels=np.arange(300) % 3)
        np.testing.assert_allclose(fs.embeddings(), x, atol=2e-3)
        with pytest.raises(ShapeError):
            store.import_features("ext", "ds", "val", x, labels=np.arange(299))


def test_names_alphabet():
    assert validate_name("clip_vitb_laion2b@224") == "clip_vitb_laion2b@224"
    for bad in ("..", "a/../b", "~x", "-x", "x" * 129, None, 3):
        with pytest.raises(InvalidNameError):
            validate_name(bad)


def test_nothing_written_outside_root(tmp_path):
    root = tmp_path / "store"
    store = featcache.open_store(str(root))
    before = set(tmp_path.iterdir())
    for bad in ("../evil", "..", "/tmp/evil", "a/../../evil"):
        with pytest.raises(InvalidNameError):
            store.create_features(bad, "ds", "s", n=1, dim=1, cache_key="c")
        with pytest.raises(InvalidNameError):
            store.put_meta(bad, "gnd", {})
        with pytest.raises(InvalidNameError):
            store.put_artifact("probe", "bb", bad, "r", {"w": np.zeros(1)})
    assert set(tmp_path.iterdir()) == before


@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_concurrent_record_writers(backend, tmp_path, request):
    """16 processes x 100 records at the same time (8 x 50 on the loopback S3 server,
    whose one process serialises requests): every record intact, exactly once."""
    url = str(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_url")
    writers, each = (16, 100) if backend == "local" else (8, 50)
    featcache.open_store(url)
    procs = [
        subprocess.Popen([sys.executable, WORKER, "records", url, str(w), str(each)], env=_env())
        for w in range(writers)
    ]
    assert all(p.wait(timeout=600) == 0 for p in procs)
    df = featcache.open_store(url).results()
    assert len(df) == writers * each and df["id"].is_unique
    got = sorted(zip(df["backbone"], df["value"], strict=True))
    want = sorted((f"bb{w}", float(w * 1000 + i)) for w in range(writers) for i in range(each))
    assert got == want


@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_sigkill_then_resume_is_bit_identical(backend, tmp_path, request):
    if backend == "local":
        url, ref_url = str(tmp_path / "store"), str(tmp_path / "ref")
    else:
        url = request.getfixturevalue("s3_url")
        ref_url = str(tmp_path / "ref")
    proc = subprocess.Popen(
        [sys.executable, WORKER, "write-set", url, "all", "0.15"],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:
        seen += line.startswith("chunk")
        if seen == 5:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = featcache.open_store(url)
    with pytest.raises(IncompleteError):
        store.features("bb", "ds", "train")
    done = len(
        store.create_features(
            "bb", "ds", "train", n=N, dim=DIM, cache_key="k1", chunk_rows=CHUNK
        ).done_chunks()
    )
    assert 5 <= done < 16
    subprocess.run([sys.executable, WORKER, "write-set", url, "all", "0"], env=_env(), check=True)
    subprocess.run(
        [sys.executable, WORKER, "write-set", ref_url, "all", "0"], env=_env(), check=True
    )
    got, ref = (
        store.features("bb", "ds", "train"),
        featcache.open_store(ref_url).features("bb", "ds", "train"),
    )
    assert got.embeddings(dtype=None).tobytes() == ref.embeddings(dtype=None).tobytes()
    assert got.labels().tobytes() == ref.labels().tobytes()
    assert list(got.ids()) == list(ref.ids())


def test_two_writers_disjoint_chunks(tmp_path):
    url = str(tmp_path / "store")
    even = ",".join(str(i) for i in range(0, 16, 2))
    odd = ",".join(str(i) for i in range(1, 16, 2))
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, "write-set", url, part, "0.01"],
            env=_env(),
            stdout=subprocess.DEVNULL,
        )
        for part in (even, odd)
    ]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    fs = featcache.open_store(url).features("bb", "ds", "train")
    x, _, _ = reference_data()
    np.testing.assert_array_equal(fs.embeddings(dtype=None), x.astype(np.float16))

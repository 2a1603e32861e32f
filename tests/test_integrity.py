"""Data integrity under hostile conditions (issue 16): every case reproduced, then held.

Concurrent overwrites, lost chunk objects, reads racing a compaction, non-finite values,
custom weights, malformed inputs, full and read-only disks, missing S3 buckets and
credentials, pickle bombs and the first-run basics. Backend-independent guarantees
live in ``tests/test_store.py::TestStoreContract``; these are the end-to-end cases.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from zarr.storage import LocalStore

import featcache
from featcache import provenance
from featcache.errors import (
    DataError,
    IncompleteError,
    IntegrityError,
    ShapeError,
    StaleCacheError,
    StoreError,
    UnknownNameError,
)
from featcache.extract import split_lease_key
from featcache.leases import read_lease
from featcache.runners.classification import run_knn
from featcache.verify import verify_store
from tests import _imagegen as gen
from tests._faulty_store import FaultyStore
from tests.test_cli_store import bobx, record_args
from tests.test_extract import TINY, arrays, assert_same_sets, mem, run

TINY_SUP = """
tiny_sup:             # a "pretrained" entry: --weights random must not take its name
  source: timm
  model: resnet10t
  resolution: 32
  style: supervised
"""


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("manifests")
    (root / "backbones").mkdir()
    (root / "backbones" / "tiny.yaml").write_text(TINY + TINY_SUP)
    return root


@pytest.fixture(autouse=True)
def _use_manifests(monkeypatch: pytest.MonkeyPatch, manifests: Path) -> None:
    monkeypatch.setenv("BOBX_MANIFESTS", str(manifests))


def chunk_key(store: featcache.Store, set_key: str, array: str, index: int) -> str:
    """The key of chunk ``index`` of ``array`` in a feature set (any layout)."""
    pattern = re.compile(rf"/{array}/c/{index}(/0)?$")
    [key] = [k for k in store.objects.list_prefix(set_key + "/") if pattern.search(k)]
    return key


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    return proc.stderr


# ------------------------------------------------------ 1. overwrite fences the old writer
def lose_lease(store: featcache.Store, key: str) -> None:
    """End the live generation of lease ``key`` as its expiry would, behind its holder's back."""
    info = read_lease(store, key)
    assert info is not None and info.active()
    store.objects.put_new_json(
        f"leases/{key}/{info.generation:012d}.released.json", {"token": "expired-in-test"}
    )
    assert not read_lease(store, key).active()  # type: ignore[union-attr]


def test_overwrite_while_another_writer_runs_fences_it(tmp_path: Path) -> None:
    """Writer A fills a set slowly; after A's second chunk, writer B overwrites it with
    another dtype. B's set must be B's alone, and A must stop with a clear error."""
    url = str(tmp_path / "store")
    done: dict[str, Any] = {}

    def writer_b(key: str) -> None:  # runs when A writes the data of its 2nd chunk
        if key.endswith("/embeddings/c/1/0") and not done:
            # A paused past its lease's TTL (a GC pause, a partition): its lease is gone,
            # so B takes the set over; A is a zombie writer that only the fence can stop
            lose_lease(featcache.open_store(url), split_lease_key("tiny_resnet", "digits", "test"))
            done["b"] = run(
                url, "tiny_resnet", splits=["test"], limit=96, chunk_rows=16,
                dtype="float32", overwrite=True,
            )  # fmt: skip

    store_a = featcache.Store(url, zstore=FaultyStore(LocalStore(url), on_set=writer_b))
    with pytest.raises(StaleCacheError, match="replaced"):
        run(store_a, "tiny_resnet", splits=["test"], limit=96, chunk_rows=16, batch_size=2)
    assert done["b"][0].status == "complete"
    reference = mem()
    run(reference, "tiny_resnet", splits=["test"], limit=96, chunk_rows=16, dtype="float32")
    store = featcache.open_store(url)
    assert_same_sets(
        arrays(store, "tiny_resnet", "digits", "test"),
        arrays(reference, "tiny_resnet", "digits", "test"),
    )
    # what A wrote after it was replaced is an orphan generation, which --repair deletes
    [finding] = verify_store(store, deep=False, backbone="tiny_resnet").findings
    assert any("orphan generation" in p for p in finding.problems)
    assert verify_store(store, deep=False, repair=True, backbone="tiny_resnet").ok
    assert verify_store(store).ok


# ------------------------------------------------------ 2. lost chunks, verify, repair, rm
def test_lost_chunks_are_refused_then_repaired_and_removed(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    run(url, "tiny_resnet", splits=["test"], limit=64, chunk_rows=16)
    store = featcache.open_store(url)
    before = arrays(store, "tiny_resnet", "digits", "test")
    set_key = "features/tiny_resnet/digits/test"
    store.objects.delete(chunk_key(store, set_key, "embeddings", 2))
    store.objects.delete(chunk_key(store, set_key, "labels", 0))
    rotten = chunk_key(store, set_key, "embeddings", 1)  # same size, other bytes: bit rot
    raw = bytearray(store.objects.get(rotten) or b"")
    raw[10] ^= 0xFF
    store.objects.put(rotten, bytes(raw))
    with pytest.raises(IntegrityError) as err:
        store.features("tiny_resnet", "digits", "test")
    message = str(err.value)
    assert "tiny_resnet/digits/test" in message and "bobx verify --repair" in message
    assert "\n" not in message

    found = bobx("verify", store=url, check=False)
    assert found.returncode == 1, found.stderr
    assert "tiny_resnet/digits/test" in found.stdout and "chunk 2 of embeddings" in found.stdout
    assert "chunk 1 of embeddings differs from its checksum" in found.stdout
    repaired = bobx("verify", "--repair", store=url)
    assert "repaired: recomputed chunk(s) 0, 1, 2" in repaired.stdout
    assert_same_sets(arrays(featcache.open_store(url), "tiny_resnet", "digits", "test"), before)
    assert verify_store(featcache.open_store(url)).ok

    bobx("rm", "--backbone", "tiny_resnet", "--dataset", "digits", store=url)
    store = featcache.open_store(url)
    assert store.list_features() == []
    assert store.objects.list_prefix("features/tiny_resnet/digits/test/") == []
    with pytest.raises(UnknownNameError):
        store.remove_features("tiny_resnet", "digits")


def test_a_per_row_array_added_later_is_checked_too() -> None:
    """An array beside the four first ones (row norms; any a later bobx adds) is covered
    on open like them."""
    store = mem()
    x = np.random.default_rng(0).standard_normal((60, 4)).astype(np.float32)
    fs = store.import_features("b", "d", "s", x, labels=np.arange(60) % 2)
    assert store.objects.exists(f"{fs.data_key}/norms/c/0")
    assert store.features("b", "d", "s").n == 60
    store.objects.delete(f"{fs.data_key}/norms/c/0")
    with pytest.raises(IntegrityError, match="chunk 0 of norms"):
        store.features("b", "d", "s")


def test_verify_repair_of_an_unfinished_set_lets_the_resume_recompute() -> None:
    store = mem()
    x = np.random.default_rng(0).standard_normal((100, 4)).astype(np.float32)
    writer = store.create_features("b", "d", "s", n=100, dim=4, cache_key="k", chunk_rows=25)
    for index in (0, 1):
        a, b = writer.chunk_range(index)
        writer.write_chunk(index, x[a:b], labels=np.zeros(b - a), ids=["i"] * (b - a))
    store.objects.delete(f"{writer.data_key}/embeddings/c/1/0")
    [finding, records] = verify_store(store).findings
    assert (
        finding.status == "partial (2/4 chunks)" and "chunk 1 of embeddings" in finding.problems[0]
    )
    assert records.ok
    assert verify_store(store, repair=True).ok
    assert writer.missing_chunks() == [1, 2, 3]


def test_overwrite_with_the_same_key_rebuilds() -> None:
    store = mem()
    [first] = run(store, "tiny_resnet", splits=["test"], limit=40, chunk_rows=16)
    [again] = run(store, "tiny_resnet", splits=["test"], limit=40, chunk_rows=16, overwrite=True)
    assert again.status == "complete" and again.chunks_written == first.chunks_total == 3
    assert again.cache_key == first.cache_key


# ------------------------------------------------------------ 3. reads during compaction
@pytest.mark.parametrize("backend", ["local", "memory"])
def test_reads_during_compaction_see_every_record_exactly_once(
    backend: str, tmp_path: Path
) -> None:
    url = str(tmp_path / "store") if backend == "local" else f"memory://{uuid.uuid4().hex}"
    writer = featcache.open_store(url)
    expected: set[str] = set()
    for round_ in range(2):
        for i in range(150):
            rec = writer.record(
                backbone=f"b{i % 7}", task="t", dataset="d", metric="m", value=i + round_
            )
            expected.add(rec.id)
        first_get = threading.Event()

        def on_get(key: str, event: threading.Event = first_get) -> None:
            if "records/loose/" in key:
                event.set()

        base = LocalStore(url) if backend == "local" else writer.zstore
        reader = featcache.Store(
            url, zstore=FaultyStore(base, get_latency=0.002, list_latency=0.01, on_get=on_get)
        )
        packed: list[int] = []

        def compact(event: threading.Event = first_get, out: list[int] = packed) -> None:
            event.wait(30)  # the reader is now part-way through its loose GETs
            out.append(featcache.open_store(url).compact_records())

        thread = threading.Thread(target=compact)
        thread.start()
        seen = reader.results()
        thread.join()
        assert packed == [150]
        assert len(seen) == len(expected) and seen["id"].is_unique
        assert set(seen["id"]) == expected


# ----------------------------------------------------- 4. non-finite values, retraction
def test_non_finite_values_are_refused_and_records_can_be_retracted(tmp_path: Path) -> None:
    from featcache.runners.ranking import rank_store

    url = str(tmp_path / "store")
    one_line_error(bobx(*record_args("inf"), store=url, check=False), "finite")
    csv = tmp_path / "r.csv"
    csv.write_text("backbone,task,dataset,metric,value\na,t,d,m,0.5\nb,t,d,m,-inf\n")
    one_line_error(bobx("import-results", str(csv), store=url, check=False), "row 2", "finite")
    store = featcache.open_store(url)
    assert store.results().empty

    # a store written by an older bobx holds an infinite value ...
    setting = {"task": "classification", "dataset": "d", "metric": "top1"}
    old = featcache.make_record(backbone="a", value=0.1, **setting)
    doc = {**old.to_dict(), "value": float("inf")}
    assert store.objects.put_new(f"records/loose/{old.id}.json", json.dumps(doc).encode())
    store.record(backbone="b", value=0.4, **setting)
    # ... which a newer finite record supersedes: latest wins before the finiteness check
    newest = store.record(backbone="a", value=0.6, **setting)
    ranked = json.loads(bobx("rank", "--n-boot", "0", "--json", store=url).stdout)
    assert [r["backbone"] for r in ranked if r["task"] == "classification"] == ["a", "b"]

    # retraction: a create-only tombstone that every reader honours, compaction included
    assert newest.id in bobx("retract", newest.id, "--reason", "wrong run", store=url).stdout
    assert newest.id not in set(store.results()["id"])
    assert "already" in bobx("retract", newest.id, store=url).stdout
    with pytest.raises(DataError, match="inf.*retract"):
        rank_store(store, n_boot=0)
    store.retract(old.id)
    store.compact_records()
    left = featcache.open_store(url).results()
    assert list(left["backbone"]) == ["b"]


# ------------------------------------------------------------- 5. custom weights' names
def test_custom_weights_get_their_own_backbone_name(tmp_path: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(5)
    path = tmp_path / "mine.safetensors"
    save_file(timm.create_model("resnet10t", num_classes=0).state_dict(), str(path))
    sha8 = provenance.sha256_file(path)[:8]
    store = mem()
    kw: dict[str, Any] = {"splits": ["test"], "limit": 8}
    names = [
        run(store, "tiny_resnet", **kw)[0].backbone,
        run(store, "tiny_resnet", weights="random", seed=3, **kw)[0].backbone,
        run(store, "tiny_resnet", weights=str(path), **kw)[0].backbone,
        run(store, "tiny_resnet", weights=str(path), name="my_resnet", **kw)[0].backbone,
        run(store, "tiny_sup", weights="random", **kw)[0].backbone,
    ]
    assert names == [
        "tiny_resnet",
        "tiny_resnet@seed3",
        f"tiny_resnet@w-{sha8}",
        "my_resnet",
        "tiny_sup@seed0",
    ]
    assert sorted(i.backbone for i in store.list_features()) == sorted(names)
    assert sorted(store.results(task="speed")["backbone"]) == sorted(names)


# -------------------------------------------------------- 6. validate before creating
@pytest.mark.parametrize(
    ("labels", "needle"),
    [
        (np.array([0.25, 1, 2, 0]), "integer"),
        (np.array([0, 1, -3, 2]), "-3"),
        (np.array([0, 1, 4e12, 2]), "4000000000000"),
        (np.array([0, 1, np.inf, 2]), "integer"),
    ],
)
def test_import_features_validates_labels_before_creating_anything(
    tmp_path: Path, labels: np.ndarray, needle: str
) -> None:
    url = str(tmp_path / "store")
    np.save(tmp_path / "x.npy", np.ones((4, 3), np.float32))
    np.save(tmp_path / "y.npy", labels)
    args = ["--backbone", "b", "--dataset", "d", "--features", str(tmp_path / "x.npy")]
    proc = bobx(
        "import-features", *args, "--labels", str(tmp_path / "y.npy"), store=url, check=False
    )
    one_line_error(proc, needle)
    assert featcache.open_store(url).list_features() == []


def test_a_failed_import_leaves_nothing_behind() -> None:
    store = mem()
    x = np.ones((600, 4), np.float32)
    x[450] = 1e6  # beyond float16
    with pytest.raises(ShapeError, match="float32"):
        store.import_features("b", "d", "train", x, labels=np.arange(600) % 3)
    assert store.list_features() == [] and store.objects.list_prefix("features/b/d/") == []
    x[450] = 1.0
    fs = store.import_features("b", "d", "train", x, labels=np.arange(600) % 3)
    assert fs.n == 600  # the corrected import needs no --overwrite


@pytest.mark.parametrize("bad", ["inf", "1e30", "-2"])
def test_csv_labels_out_of_range_are_one_line_errors(tmp_path: Path, bad: str) -> None:
    from featcache.datasets import get_dataset_spec, open_split

    gen.make_csv_dataset(tmp_path, [("a.jpg", 0, "train"), ("b.jpg", bad, "train")])
    with pytest.raises(DataError) as err:
        open_split(get_dataset_spec("image_csv"), "train", data_root=tmp_path)
    assert bad in str(err.value) and "\n" not in str(err.value)


def test_bad_chunk_rows_are_refused_and_a_broken_spec_can_be_replaced(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    args = ["extract", "--backbone", "tiny_resnet", "--split", "test", "--limit", "8"]
    proc = bobx(*args, "--chunk-rows", "-5", "--no-progress", store=url, check=False)
    one_line_error(proc, "--chunk-rows")
    store = featcache.open_store(url)
    assert store.list_features() == [] and store.objects.list_prefix("features/") == []
    with pytest.raises(ShapeError, match="chunk_rows"):
        store.create_features("b", "d", "s", n=4, dim=2, cache_key="k", chunk_rows=0)
    # a spec left by an older bobx: a clear error, and --overwrite replaces it
    [res] = run(store, "tiny_resnet", splits=["test"], limit=8)
    spec_key = "features/tiny_resnet/digits/test/_bobx/spec.json"
    spec = store.objects.get_json(spec_key)
    store.objects.put_json(spec_key, {**spec, "chunk_rows": -5})
    with pytest.raises(StoreError, match="--overwrite"):
        run(store, "tiny_resnet", splits=["test"], limit=8)
    [again] = run(store, "tiny_resnet", splits=["test"], limit=8, overwrite=True)
    assert again.status == "complete" and again.cache_key == res.cache_key


# ----------------------------------------------------------------- 7. one error path
def _mount(*args: str) -> bool:
    try:
        proc = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


@contextlib.contextmanager
def mounted(target: Path, *commands: list[str]) -> Iterator[None]:
    """Run ``mount`` commands on ``target`` (unmounted afterwards); skip where not permitted."""
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    done = 0
    try:
        for command in commands:
            if not root or not _mount(*command):
                pytest.skip("mounting a filesystem needs root and CAP_SYS_ADMIN (not here)")
            done += 1
        yield
    finally:
        if done:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def _populated(url: str) -> None:
    """Features for knn and one record: what a team's store holds before the fault."""
    store = featcache.open_store(url)
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 20)):
        store.import_features(
            "bb", "ds", split, rng.standard_normal((n, 8)).astype(np.float32),
            labels=np.arange(n) % 3,
        )  # fmt: skip
    store.record(backbone="bb", task="t", dataset="ds", metric="m", value=0.5)


KNN = ["knn", "--backbone", "bb", "--dataset", "ds", "--k", "5"]
EXTRACT = ["extract", "--backbone", "tiny_resnet", "--split", "test", "--limit", "8"]


def test_read_only_store_gives_one_line_errors_and_still_reads(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    url = str(root / "store")
    _populated(url)
    with mounted(root, ["--bind", str(root), str(root)], ["-o", "remount,ro,bind", str(root)]):
        if _writable(root):
            pytest.skip("the read-only bind mount is writable here")
        for args in (record_args(), ["compact"], KNN, [*EXTRACT, "--no-progress"]):
            one_line_error(bobx(*args, store=url, check=False), "read-only")
        with pytest.raises(StoreError, match="not writable"):  # checked before any read
            run_knn(featcache.open_store(url), "no_such_backbone", "ds")
        assert len(json.loads(bobx("results", "--format", "json", store=url).stdout)) == 1
        assert "bb" in bobx("ls", store=url).stdout


def _writable(directory: Path) -> bool:
    try:
        (directory / ".probe").write_bytes(b"")
    except OSError:
        return False
    (directory / ".probe").unlink()
    return True


def test_full_disk_gives_one_line_errors_and_loses_nothing(tmp_path: Path) -> None:
    root = tmp_path / "small"
    root.mkdir()
    with mounted(root, ["-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)]):
        url = str(root / "store")
        _populated(url)
        filler = root / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        for args in (record_args(), ["compact"], KNN, [*EXTRACT, "--no-progress"]):
            one_line_error(bobx(*args, store=url, check=False), "full")
        filler.unlink()
        assert len(featcache.open_store(url).results()) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.s3
def test_s3_faults_are_one_line_errors(s3_endpoint: str, tmp_path: Path) -> None:
    missing = f"s3://bobx-missing-{uuid.uuid4().hex[:8]}/team"
    one_line_error(bobx("ls", store=missing, check=False), "does not exist")
    no_keys = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    no_keys.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    proc = subprocess.run(
        [*_bobx_cmd(), "ls", "--store", missing], env=no_keys, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    one_line_error(proc, "credentials")
    unreachable = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}
    proc = subprocess.run(
        [*_bobx_cmd(), "ls", "--store", missing], env=unreachable, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    one_line_error(proc, "reach")


def _bobx_cmd() -> list[str]:
    from tests.test_cli_store import BOBX

    return [BOBX] if BOBX else ["python", "-m", "cli"]


def test_checkpoint_with_wrong_shapes_is_one_line(tmp_path: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    sd = timm.create_model("test_vit", num_classes=0, img_size=32).state_dict()
    sd["pos_embed"] = torch.zeros(1, sd["pos_embed"].shape[1] + 4, sd["pos_embed"].shape[-1])
    path = tmp_path / "wrong.safetensors"
    save_file(sd, str(path))
    url = str(tmp_path / "store")
    args = ["extract", "--backbone", "tiny_vit", "--split", "test", "--limit", "4"]
    proc = bobx(*args, "--weights", str(path), "--no-progress", store=url, check=False)
    one_line_error(proc, "pos_embed", "does not fit")


def test_corrupt_store_json_is_one_line(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    _populated(url)
    store = featcache.open_store(url)
    spec_key = "features/bb/ds/train/_bobx/spec.json"
    store.objects.put(spec_key, b'{"cache_key": "abc", "n": 6')  # cut off
    one_line_error(bobx(*KNN, store=url, check=False), "bb/ds/train", "bobx rm")
    assert "corrupt" in bobx("ls", store=url).stdout
    [loose] = store.objects.list_dir("records/loose")
    store.objects.put(f"records/loose/{loose}", b"\x00garbage")
    one_line_error(bobx("results", store=url, check=False), loose, "bobx verify --repair")
    (Path(url) / "zarr.json").write_text("{not json")
    one_line_error(bobx("ls", store=url, check=False), "zarr.json")


# -------------------------------------------------------------- 9. bounded unpickler
def pickle_bomb() -> bytes:
    """~12 KB: six levels of one shared list repeated 1000 times (1000^6 items walked)."""
    inner: list[Any] = []
    for _ in range(6):
        inner = [inner] * 1000
    return pickle.dumps(inner, protocol=2)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def expire(*_: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_pickle_bomb_is_refused_in_well_under_a_second(tmp_path: Path) -> None:
    from featcache.datasets import get_dataset_spec, open_split
    from featcache.datasets.safepickle import safe_loads

    bomb = pickle_bomb()
    assert len(bomb) < 16_000
    t0 = time.perf_counter()
    with deadline(5), pytest.raises(DataError, match="too many"):
        safe_loads(bomb, name="bomb.pkl")
    assert time.perf_counter() - t0 < 0.5
    gen.make_cifar(tmp_path, n_train=10, n_test=4)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(bomb)
    t0 = time.perf_counter()
    with deadline(5), pytest.raises(DataError, match="data_batch_1"):
        open_split(get_dataset_spec("cifar10"), "train", data_root=tmp_path)
    assert time.perf_counter() - t0 < 0.5


# --------------------------------------------------------------- 10. new-user basics
def test_version_and_short_help() -> None:
    cmd = _bobx_cmd()
    out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"bobx {provenance.bobx_version()}"
    for args in (["-h"], ["knn", "-h"]):
        out = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "Usage" in out.stdout, out.stderr


def test_digits_extracts_what_the_evaluators_need_by_default() -> None:
    store = mem()
    results = run(store, "tiny_resnet", limit=8)
    assert [r.split for r in results] == ["train", "test"]
    [extra] = run(store, "tiny_resnet", splits=["all"], limit=8)
    assert extra.status == "complete"


def test_image_folder_without_val_extracts_what_exists(tmp_path: Path) -> None:
    gen.make_folder_dataset(tmp_path, classes=2, per_class=3, splits=["train", "test"])
    store = mem()
    results = run(store, "tiny_resnet", "image_folder", data_root=tmp_path)
    assert [(r.split, r.status) for r in results] == [
        ("train", "complete"),
        ("val", "missing"),
        ("test", "complete"),
    ]
    assert str(tmp_path / "val") in results[1].note
    with pytest.raises(DataError, match="val"):
        run(store, "tiny_resnet", "image_folder", splits=["val"], data_root=tmp_path)


def test_every_bad_image_is_listed_in_one_error(tmp_path: Path) -> None:
    gen.make_folder_dataset(tmp_path, classes=2, per_class=8, splits=["test"])
    bad = [
        tmp_path / "test" / "class_0" / "img_001.jpg",
        tmp_path / "test" / "class_1" / "img_006.jpg",
    ]
    bad.append(tmp_path / "test" / "class_1" / "img_007.jpg")
    for path in bad:
        gen.write_corrupt_jpeg(path)
    store = mem()
    kw: dict[str, Any] = {"splits": ["test"], "data_root": tmp_path, "chunk_rows": 4}
    with pytest.raises(DataError) as err:
        run(store, "tiny_resnet", "image_folder", batch_size=2, **kw)
    message = str(err.value)
    assert "\n" not in message and "3 images" in message
    assert all(str(p) in message for p in bad)
    with pytest.raises(IncompleteError, match="2 of 4 chunks missing"):
        store.features("tiny_resnet", "image_folder", "test")  # the good chunks are kept
    for i in range(25):  # many more: listed up to a cap, counted in full
        gen.write_corrupt_jpeg(tmp_path / "test" / "class_2" / f"img_{i:03d}.jpg")
    with pytest.raises(DataError) as err:
        run(mem(), "tiny_resnet", "image_folder", **kw)
    assert "28 images" in str(err.value) and "and 8 more" in str(err.value)

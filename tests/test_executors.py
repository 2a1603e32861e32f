"""Executors end to end: a 2-backbone x digits suite on local processes, a local Ray
cluster and submitit's local executor ends bit-identical to serial ``bobx extract`` +
evaluators; killed workers are retried to completion from the chunk markers; leases keep
a suite run and a plain ``bobx extract`` on one store from computing a set twice.

Tiny random-init timm models at 32 px (a user manifest in $BOBX_MANIFESTS) on the
built-in digits; the "slow" suite (96 px, 64-row chunks) gives a worker time to die.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import featcache
from featcache.executors import RunOptions, run_suite
from featcache.executors.plan import plan_suite, read_failures
from featcache.executors.scheduler import RunReport
from featcache.leases import read_lease
from tests.test_cli_store import bobx
from tests.test_end_to_end import TINY  # e2e_resnet and e2e_vit: tiny random-init timm models

BACKBONES = (
    TINY
    + """
e2e_slow:
  source: timm
  model: resnet10t
  resolution: 96
  style: random
"""
)

SUITES = """
tiny:
  backbones: [e2e_resnet, e2e_vit]
  extract: {weights: random, chunk_rows: 128, limit: 600}
  grids:
    - datasets: [digits]
      evaluate:
        knn: {k: [10, 20]}
        probe: {shots: [5]}
        calibrate: {}
        retrieve: {}
slow:
  backbones: [e2e_slow]
  extract: {weights: random, chunk_rows: 32}
  grids:
    - datasets: [digits]
      splits: {digits: [test]}
knn_only:
  backbones: [e2e_resnet]
  extract: {weights: random, chunk_rows: 128, limit: 600}
  grids:
    - datasets: [digits]
      evaluate:
        knn: {k: [10, 20]}
jobs:
  backbones: [e2e_resnet]
  extract: {weights: random, limit: 300}
  grids:
    - datasets: [digits]
      evaluate:
        probe: {shots: [5]}
      jobs:
        robustness: {run: shots5-seed0, eps: ["2/255"], steps: 2, limit: 40}
        speed: {batch_sizes: [2], resolution: 32, repeats: 1, latency_runs: 3}
broken:
  backbones: [e2e_resnet]
  extract: {weights: random}
  grids:
    - datasets: [cifar10]
      evaluate: {knn: {k: [10]}}
"""
SLOW_SET = ("e2e_slow", "digits", "test")
FAST = {"lease_ttl_s": 3.0}  # a killed worker's lease expires in 3 s


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("manifests")
    for kind, text in (("backbones", BACKBONES), ("suites", SUITES)):
        (root / kind).mkdir()
        (root / kind / "tiny.yaml").write_text(text)
    mp = pytest.MonkeyPatch()
    mp.setenv("BOBX_MANIFESTS", str(root))
    mp.setenv("OMP_NUM_THREADS", "1")
    mp.delenv("BOBX_DATA_CIFAR10", raising=False)
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def reference(manifests: Path, tmp_path_factory: pytest.TempPathFactory) -> featcache.Store:
    """The tiny suite computed serially, one command after the other, through the library
    twins of `bobx extract`, `knn`, `probe`, `calibrate` and `retrieve` with their
    defaults (what a user types by hand)."""
    import torch
    from threadpoolctl import threadpool_limits

    from featcache.extract import extract
    from featcache.runners.classification import run_calibration, run_knn, run_probe
    from featcache.runners.retrieval import run_retrieval

    store = featcache.open_store(str(tmp_path_factory.mktemp("reference") / "store"))
    # the workers' thread count (OMP_NUM_THREADS=1) for torch and numpy's BLAS: on
    # another count BLAS sums in another order, and probe logits differ in the last bits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            for bb in ("e2e_resnet", "e2e_vit"):
                extract(store, bb, "digits", splits=["train", "test"], weights="random",
                        limit=600, chunk_rows=128, num_workers=0, progress=False)  # fmt: skip
            run_knn(store, "all", "digits", ks=(10, 20))
            run_probe(store, "all", "digits", shots=5)
            run_calibration(store, "all", "digits", run="shots5-seed0")
            run_retrieval(store, "all", "digits")
    finally:
        torch.set_num_threads(threads)
    return store


@pytest.fixture(scope="module")
def slow_reference(manifests: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The slow set extracted in one uninterrupted run."""
    from featcache.extract import extract

    store = featcache.open_store(str(tmp_path_factory.mktemp("slow") / "store"))
    extract(store, "e2e_slow", "digits", splits=["test"], weights="random", chunk_rows=32,
            num_workers=0, progress=False)  # fmt: skip
    return store.features(*SLOW_SET).embeddings(dtype=None)


def _result_rows(store: featcache.Store) -> list[tuple]:
    df = store.results()
    df = df[df["task"] != "speed"]  # throughput is measured, not computed from features
    cols = ["backbone", "task", "dataset", "split", "metric", "params", "value"]
    return sorted(map(tuple, df[cols].itertuples(index=False)))


def assert_same_store(reference: featcache.Store, store: featcache.Store) -> None:
    """Bit-identical features and evaluator results (values compared exactly)."""
    for bb in ("e2e_resnet", "e2e_vit"):
        for split in ("train", "test"):
            a, b = reference.features(bb, "digits", split), store.features(bb, "digits", split)
            assert a.cache_key == b.cache_key
            assert np.array_equal(a.embeddings(dtype=None), b.embeddings(dtype=None))
            assert np.array_equal(a.labels(), b.labels()) and (a.ids() == b.ids()).all()
        ref_art, _ = reference.get_artifact("probe", bb, "digits", "shots5-seed0")
        art, _ = store.get_artifact("probe", bb, "digits", "shots5-seed0")
        assert np.array_equal(ref_art["test_logits"], art["test_logits"])
    rows = _result_rows(store)
    assert rows == _result_rows(reference)
    assert len(rows) == 2 * (4 + 3 + 3 + 11)  # knn (2 k x top1/top5), probe, calibration, retrieval


def _failures(report: RunReport | None) -> list[tuple[str, str]]:
    """What went wrong, for assertion messages."""
    assert report is not None
    bad = [(o.item, o.detail) for o in report.outcomes.values() if o.status == "failed"]
    return bad + [(i, f"skipped: needs {n}") for i, n in report.skipped.items()]


def _speed_records(store: featcache.Store, backbone: str, split: str) -> list[dict]:
    df = store.results(task="speed", backbone=backbone, split=split)
    return [json.loads(p) for p in df["params"]]


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # surfaced by the test after join
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _wait_for(predicate: Callable[[], object], timeout: float = 120, what: str = "") -> object:
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _plain_extract(url: str) -> list[str]:
    """`bobx extract` of the slow set, as a user types it."""
    return [sys.executable, "-m", "cli", "extract", "--backbone", "e2e_slow", "--dataset",
            "digits", "--split", "test", "--weights", "random", "--chunk-rows", "32",
            "--num-workers", "0", "--no-progress", "--store", url]  # fmt: skip


def _first_marker_then_kill(store: featcache.Store) -> int:
    """Wait for the slow set's first chunk marker, SIGKILL the process holding its lease."""

    def started() -> object:
        progress = store.chunk_progress(*SLOW_SET)
        return progress is not None and len(progress[0]) >= 1

    _wait_for(started, what="the first chunk marker")
    lease = read_lease(store, "extract/e2e_slow/digits/test")
    assert lease is not None and lease.active() and lease.pid != os.getpid()
    done, total, _ = store.chunk_progress(*SLOW_SET)  # type: ignore[misc]
    assert len(done) < total, "the extraction finished before the kill; slow it down"
    os.kill(lease.pid, signal.SIGKILL)
    return lease.pid


def _assert_resumed(store: featcache.Store, slow_reference: np.ndarray, report: RunReport) -> None:
    assert report.ok, _failures(report)
    item = "extract/e2e_slow/digits/test"
    assert report.outcomes[item].status == "done"
    assert np.array_equal(store.features(*SLOW_SET).embeddings(dtype=None), slow_reference)
    # the run that finished computed only what the killed one had not: one speed record,
    # for fewer images than the set holds
    (speed,) = _speed_records(store, "e2e_slow", "test")
    assert 0 < speed["images"] < len(slow_reference)


# ----------------------------------------------------------------------------- local
def test_local_processes_match_serial_cli_and_rerun_is_free(reference, tmp_path: Path) -> None:
    store = featcache.open_store(str(tmp_path / "store"))
    plan, report = run_suite(store, "tiny", executor="local", workers=2)
    assert report is not None and report.ok, _failures(report)
    assert len(plan.todo()) == 12 and report.counts()["done"] == 12
    assert_same_store(reference, store)
    n_records = len(store.results())
    plan, report = run_suite(store, "tiny", executor="local", workers=2)
    assert report is not None and report.counts() == {"already_done": 12} and not plan.todo()
    assert len(store.results()) == n_records


@pytest.mark.slow  # the Ray variant runs by default
def test_local_worker_killed_mid_extraction_is_retried(slow_reference, tmp_path: Path) -> None:
    store = featcache.open_store(str(tmp_path / "store"))
    thread, box = _in_thread(
        lambda: run_suite(
            store, "slow", executor="local", workers=1, held_retry_s=0.5, options=RunOptions(**FAST)
        )  # fmt: skip
    )
    _first_marker_then_kill(store)
    thread.join(300)
    assert "error" not in box, box.get("error")
    _, report = box["value"]
    _assert_resumed(store, slow_reference, report)
    (failures,) = read_failures(store).values()
    assert (
        "worker process died" in failures[0]["error"] and report.attempts[failures[0]["item"]] == 2
    )


@pytest.mark.parametrize(
    "executor",
    ["local", pytest.param("ray", marks=pytest.mark.slow)],  # same leases; Ray start ~10 s
)
def test_plain_extract_holding_the_lease_is_not_duplicated(
    executor, slow_reference, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A plain `bobx extract` is computing the set when a suite run starts (in this
    process, or on Ray): the run waits for that lease, then finds the set published and
    computes nothing."""
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    url = str(tmp_path / "store")
    store = featcache.open_store(url)
    plain = subprocess.Popen(
        _plain_extract(url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    events: list[dict] = []
    try:
        _wait_for(lambda: read_lease(store, "extract/e2e_slow/digits/test"), what="the lease")
        _, report = run_suite(
            store, "slow", executor=executor, workers=0 if executor == "local" else 1,
            held_retry_s=0.3, on_event=events.append, options=RunOptions(**FAST),
        )  # fmt: skip
    finally:
        out, err = plain.communicate(timeout=300)
    assert plain.returncode == 0, err
    assert "complete (450 x 512; 15/15 chunks written" in out
    assert report is not None and report.ok
    assert report.outcomes["extract/e2e_slow/digits/test"].status == "cached"
    if executor == "local":  # in this process the run starts at once: it meets the lease
        assert any(e.get("status") == "held" for e in events)
    (speed,) = _speed_records(store, "e2e_slow", "test")  # computed once, by the plain run
    assert speed["images"] == 450
    assert np.array_equal(store.features(*SLOW_SET).embeddings(dtype=None), slow_reference)


def test_extract_waits_for_a_suite_run_holding_the_set(slow_reference, tmp_path, caplog) -> None:
    """The other way round: a suite run holds the set's lease; `extract` (what `bobx
    extract` calls) says it waits, then finds the set published and computes nothing."""
    from featcache.extract import extract

    store = featcache.open_store(str(tmp_path / "store"))
    thread, box = _in_thread(lambda: run_suite(store, "slow", workers=0))
    _wait_for(lambda: read_lease(store, "extract/e2e_slow/digits/test"), what="the run's lease")
    with caplog.at_level("WARNING", logger="featcache.extract"):
        (result,) = extract(store, "e2e_slow", "digits", splits=["test"], weights="random",
                            chunk_rows=32, num_workers=0, progress=False)  # fmt: skip
    thread.join(300)
    assert "error" not in box, box.get("error")
    assert "is held by" in caplog.text and "waiting for it" in caplog.text
    assert result.status == "cached" and result.chunks_written == 0
    assert box["value"][1].outcomes["extract/e2e_slow/digits/test"].status == "done"
    (speed,) = _speed_records(store, "e2e_slow", "test")
    assert speed["images"] == 450


def test_a_dead_holders_lease_expires_and_extract_takes_over(manifests, tmp_path, caplog) -> None:
    """A worker holds the set, then dies (stops heartbeating) while `extract` waits for it:
    its lease expires and `extract` takes the set over."""
    from featcache.extract import extract
    from featcache.leases import acquire

    store = featcache.open_store(str(tmp_path / "store"))
    lease = acquire(store, "extract/e2e_resnet/digits/test", ttl_s=2.0, heartbeat=False)

    def holder() -> None:  # alive until extract says it waits, then gone
        while "waiting for it" not in caplog.text:
            lease.heartbeat()
            time.sleep(0.1)

    beats = threading.Thread(target=holder, daemon=True)
    with caplog.at_level("WARNING", logger="featcache.extract"):
        beats.start()
        (result,) = extract(store, "e2e_resnet", "digits", splits=["test"], weights="random",
                            num_workers=0, progress=False)  # fmt: skip
    beats.join(5)
    assert "is held by" in caplog.text and result.status == "complete"
    assert result.chunks_written == result.chunks_total == 1
    info = read_lease(store, "extract/e2e_resnet/digits/test")
    assert info is not None and info.generation == 2 and info.released


def test_failures_are_kept_and_dependents_skipped(manifests, tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    out = bobx("run", "broken", "--workers", "0", store=url, check=False)
    assert out.returncode == 1
    assert "failed or were skipped" in out.stderr and "bobx status broken" in out.stderr
    store = featcache.open_store(url)
    failures = read_failures(store)
    sets = ["extract/e2e_resnet/cifar10/test", "extract/e2e_resnet/cifar10/train"]
    assert sorted(failures) == sets and all(len(f) == 1 for f in failures.values())  # no retry
    assert "BOBX_DATA_CIFAR10" in failures[sets[1]][0]["error"]
    states = {s.item.id: s.state for s in plan_suite(store, "broken").states}
    assert (
        states[sets[1]] == "failed" and states["knn/e2e_resnet/cifar10/k10-t0.07-train"] == "todo"
    )
    status = json.loads(bobx("status", "--json", store=url).stdout)
    assert sorted(f["id"] for f in status["failures"]) == sets


def test_jobs_run_through_the_job_layer_after_their_needs(manifests, tmp_path: Path) -> None:
    """A robustness job attacks the probe the suite stored first; speed runs per backbone."""
    store = featcache.open_store(str(tmp_path / "store"))
    plan, report = run_suite(store, "jobs", workers=0)
    assert report is not None and report.ok, _failures(report)
    order = list(report.outcomes)  # in the order they finished
    (robust,) = [i for i in plan.items if i.variant.startswith("robustness.")]
    assert robust.needs == ("probe/e2e_resnet/digits/shots5-seed0",)
    assert order.index(robust.needs[0]) < order.index(robust.id)
    assert "job/e2e_resnet/synthetic/speed.default-" in " ".join(order)
    rob = store.results(task="robustness", backbone="e2e_resnet")
    assert sorted(json.loads(p)["eps"] for p in rob["params"]) == ["0", "2/255"]
    speed = store.results(task="speed", dataset="synthetic")
    assert set(speed["metric"]) >= {"images_per_s", "latency_p50_ms", "gflops"}
    plan, report = run_suite(store, "jobs", workers=0)  # everything is in the store now
    assert not plan.todo() and report is not None and report.counts() == {"already_done": 5}


def test_memory_store_needs_in_process_workers() -> None:
    with pytest.raises(featcache.BobxError, match="cannot see the in-memory store"):
        run_suite("memory://executors", "digits", executor="local", workers=2)


# ----------------------------------------------------------------------------- ray
@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """A local Ray cluster with 2 CPUs, shared by the Ray tests."""
    ray = pytest.importorskip(
        "ray", reason="the ray extra (pip install bobx[ray]) is not installed"
    )
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_suite_matches_serial_cli(reference, ray_cluster, tmp_path: Path) -> None:
    store = featcache.open_store(str(tmp_path / "store"))
    _, report = run_suite(store, "tiny", executor="ray", workers=2)
    assert report is not None and report.ok, _failures(report)
    assert report.counts()["done"] == 12
    assert_same_store(reference, store)
    # each actor loads a backbone once, however many of its sets it extracts
    per_worker: dict[str, set[str]] = {}
    loads: dict[str, int] = {}
    for o in report.outcomes.values():
        if o.item.startswith("extract/"):
            per_worker.setdefault(o.worker, set()).add(o.item.split("/")[1])
            loads[o.worker] = max(loads.get(o.worker, 0), o.models_loaded)
    assert all(loads[w] == len(bbs) for w, bbs in per_worker.items()), (loads, per_worker)
    assert sum(len(b) for b in per_worker.values()) < 4  # not once per set


def test_ray_worker_killed_mid_task_is_retried(slow_reference, ray_cluster, tmp_path) -> None:
    store = featcache.open_store(str(tmp_path / "store"))
    thread, box = _in_thread(
        lambda: run_suite(
            store, "slow", executor="ray", workers=1, held_retry_s=0.5, options=RunOptions(**FAST)
        )  # fmt: skip
    )
    killed = _first_marker_then_kill(store)
    thread.join(300)
    assert "error" not in box, box.get("error")
    _, report = box["value"]
    _assert_resumed(store, slow_reference, report)
    assert int(report.outcomes["extract/e2e_slow/digits/test"].worker.split(":")[1]) != killed


def test_without_ray_the_error_names_the_extra(manifests, tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"  # what an install without the extra sees
        "import cli; cli.main(['run', 'tiny', '--executor', 'ray', '--store', sys.argv[1]])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: The ray executor needs Ray, which is not installed here (ray); "
        "pip install bobx[ray]"
    ]


# ----------------------------------------------------------------------------- slurm
def test_submitit_local_executor_matches_serial_cli(reference, tmp_path: Path) -> None:
    """Two waves of job arrays (the extractions, then kNN) through submitit's local executor."""
    pytest.importorskip("submitit", reason="the slurm extra (pip install bobx[slurm]) is missing")
    store = featcache.open_store(str(tmp_path / "store"))
    slurm = {"folder": tmp_path / "submitit", "cluster": "local", "timeout_min": 10}
    _, report = run_suite(store, "knn_only", executor="slurm", slurm=slurm)
    assert report is not None and report.ok and report.counts()["done"] == 3, report.to_dict()
    for split in ("train", "test"):
        a, b = (
            reference.features("e2e_resnet", "digits", split),
            store.features("e2e_resnet", "digits", split),
        )
        assert np.array_equal(a.embeddings(dtype=None), b.embeddings(dtype=None))
    knn = _result_rows(store)
    assert len(knn) == 4 and set(knn) <= set(_result_rows(reference))
    assert len(list((tmp_path / "submitit").glob("*_submitted.pkl"))) == 3


@pytest.mark.slow
def test_submitit_full_suite_matches_serial_cli(reference, tmp_path: Path) -> None:
    pytest.importorskip("submitit", reason="the slurm extra (pip install bobx[slurm]) is missing")
    store = featcache.open_store(str(tmp_path / "store"))
    slurm = {"folder": tmp_path / "submitit", "cluster": "local", "timeout_min": 10}
    _, report = run_suite(store, "tiny", executor="slurm", slurm=slurm)
    assert report is not None and report.ok, _failures(report)
    assert_same_store(reference, store)


def test_submitit_preempted_job_requeues_and_resumes(slow_reference, tmp_path: Path) -> None:
    """Slurm signals a job (USR2) before preemption or its time limit: submitit calls the
    task's checkpoint and requeues it; the requeued item resumes from its chunk markers."""
    pytest.importorskip("submitit", reason="the slurm extra (pip install bobx[slurm]) is missing")
    store = featcache.open_store(str(tmp_path / "store"))
    slurm = {"folder": tmp_path / "submitit", "cluster": "local", "timeout_min": 10}
    thread, box = _in_thread(
        lambda: run_suite(
            store,
            "slow",
            executor="slurm",
            slurm=slurm,
            held_retry_s=0.5,
            options=RunOptions(**FAST),
        )  # fmt: skip
    )

    def started() -> object:
        progress = store.chunk_progress(*SLOW_SET)
        return progress is not None and len(progress[0]) >= 1

    _wait_for(started, what="the first chunk marker")
    lease = read_lease(store, "extract/e2e_slow/digits/test")
    assert lease is not None
    os.kill(lease.pid, signal.SIGUSR2)  # the job's task process, as Slurm signals it
    thread.join(300)
    assert "error" not in box, box.get("error")
    _, report = box["value"]
    _assert_resumed(store, slow_reference, report)
    assert report.attempts["extract/e2e_slow/digits/test"] == 1  # requeued by submitit itself
    (log,) = (tmp_path / "submitit").glob("*_0_log.out")
    assert "Requeued job" in log.read_text()


# ----------------------------------------------------------------------------- gpu
def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.skipif("not _has_cuda()", reason="needs a CUDA GPU")
@pytest.mark.parametrize("executor", ["local", "ray", "slurm"])
def test_gpu_workers_extract_on_their_device(
    executor, slow_reference, tmp_path, request: pytest.FixtureRequest
) -> None:
    """One worker per GPU (a local process, a Ray actor, a submitit job with a GPU): the
    set is extracted on the GPU the worker was given and matches the CPU features."""
    import torch

    if executor == "slurm":
        pytest.importorskip("submitit")
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    store = featcache.open_store(str(tmp_path / "store"))
    slurm = {"folder": tmp_path / "submitit", "cluster": "local", "timeout_min": 10}
    _, report = run_suite(store, "slow", executor=executor, gpus=1, slurm=slurm)
    assert report is not None and report.ok, _failures(report)
    (speed,) = _speed_records(store, "e2e_slow", "test")
    assert speed["device"] == "cuda" and speed["device_name"] == torch.cuda.get_device_name(0)
    gpu = store.features(*SLOW_SET).embeddings()
    np.testing.assert_allclose(gpu, slow_reference.astype(np.float32), rtol=2e-2, atol=2e-2)

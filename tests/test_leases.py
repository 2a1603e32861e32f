"""Leases: create-only, expiring claims on units of work (local, memory and S3 alike).

:class:`LeaseContract` holds the backend-independent checks; the store's conformance
suite (``tests/test_store.py::TestStoreContract``) inherits it, so every backend runs
them. The process tests below contend from separate processes, as team members do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import featcache
from featcache.errors import BobxError, InvalidNameError
from featcache.leases import (
    LeaseHeldError,
    LeaseLostError,
    acquire,
    lease_key,
    list_leases,
    read_lease,
)

WORKER = str(Path(__file__).with_name("_lease_workers.py"))
ROOT = str(Path(__file__).resolve().parent.parent)


class LeaseContract:
    """Lease behaviour every store backend must show (mixed into TestStoreContract)."""

    def test_lease_acquire_held_release(self, store):
        key = lease_key("job", "run1")
        lease = acquire(store, key, ttl_s=30)
        info = read_lease(store, key)
        assert info is not None and info.state == "held" and info.generation == 1
        assert (info.pid, info.token) == (os.getpid(), lease.token)
        with pytest.raises(LeaseHeldError) as err:
            acquire(store, key, ttl_s=30)
        text = str(err.value)
        assert f"pid {os.getpid()}" in text and info.host in text and "heartbeat" in text
        assert err.value.heartbeat_age_s < 30 and "\n" not in text
        lease.release()
        assert read_lease(store, key).state == "released"
        with acquire(store, key, ttl_s=30) as again:
            assert again.generation == 2
        assert read_lease(store, key).state == "released"

    def test_lease_expired_is_taken_over_and_old_holder_knows(self, store):
        key = lease_key("extract", "bb", "ds", "train")
        old = acquire(store, key, ttl_s=0.3, heartbeat=False)  # a holder that stops beating
        with pytest.raises(LeaseHeldError):
            acquire(store, key, ttl_s=0.3)
        time.sleep(0.4)
        assert read_lease(store, key).state == "expired"
        new = acquire(store, key, ttl_s=5)
        assert new.generation == 2 and read_lease(store, key).token == new.token
        with pytest.raises(LeaseLostError, match="taken the work over"):
            old.check(refresh=True)
        with pytest.raises(LeaseLostError):
            old.heartbeat()
        old.release()  # a lost lease is left alone: the new holder keeps it
        assert read_lease(store, key).state == "held"
        new.release()

    def test_lease_heartbeat_keeps_it_alive(self, store):
        key = lease_key("job", "beating")
        with acquire(store, key, ttl_s=0.4) as lease:
            time.sleep(1.0)  # > 2 TTLs: only the heartbeat thread keeps it
            lease.check(refresh=True)
            with pytest.raises(LeaseHeldError):
                acquire(store, key, ttl_s=0.4)

    def test_lease_wait_until_released(self, store):
        key = lease_key("job", "waited")
        lease = acquire(store, key, ttl_s=30)
        threading.Timer(0.3, lease.release).start()
        t0 = time.time()
        with acquire(store, key, ttl_s=30, wait=True, poll_s=0.05) as got:
            assert got.generation == 2 and time.time() - t0 >= 0.25
        held = acquire(store, key, ttl_s=30)
        with pytest.raises(LeaseHeldError, match="waited"):
            acquire(store, key, ttl_s=30, wait=True, timeout_s=0.2, poll_s=0.05)
        held.release()

    def test_lease_listing_and_pruning(self, store):
        for part in ("a", "b"):
            acquire(store, lease_key("job", part), ttl_s=30).release()
        key = lease_key("job", "c")
        for _ in range(4):
            acquire(store, key, ttl_s=30).release()
        infos = list_leases(store)
        assert [i.key for i in infos] == ["job/a", "job/b", "job/c"]
        assert [i.key for i in list_leases(store, "job")] == ["job/a", "job/b", "job/c"]
        assert infos[-1].generation == 4 and infos[-1].to_dict()["state"] == "released"
        kept = store.objects.list_dir("leases/job/c")
        assert not any(n.startswith("000000000001") for n in kept)  # old generations pruned

    def test_lease_threads_race_for_one_expired_lease(self, store):
        key = lease_key("job", "race")
        acquire(store, key, ttl_s=0.05, heartbeat=False)
        time.sleep(0.1)
        won, held, barrier = [], [], threading.Barrier(8)

        def contend() -> None:
            other = featcache.open_store(store.url)  # its own Store object, as a process has
            barrier.wait()
            try:
                won.append(acquire(other, key, ttl_s=30))
            except LeaseHeldError:
                held.append(1)

        threads = [threading.Thread(target=contend) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(held) == 7 and won[0].generation == 2
        won[0].release()


def test_lease_key_validates_parts():
    assert lease_key("extract", "dino_vitb", "cifar100", "train") == (
        "extract/dino_vitb/cifar100/train"
    )
    for bad in (("job", "../x"), ("job", "a/b"), ("", "x"), ("job", "")):
        with pytest.raises(InvalidNameError):
            lease_key(*bad)
    with pytest.raises(BobxError, match="at least one part"):
        lease_key("job")
    with pytest.raises(BobxError):
        acquire(featcache.open_store(f"memory://{uuid.uuid4().hex}"), "job", ttl_s=1)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": ROOT}


@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_processes_race_for_an_expired_lease(backend, tmp_path, request):
    """Six processes try to take the same expired lease at the same instant: one wins."""
    url = str(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_url")
    store = featcache.open_store(url)
    key = lease_key("job", "contended")
    acquire(store, key, ttl_s=0.1, heartbeat=False)  # its holder "died"
    start = time.time() + 8.0  # after every process has imported bobx
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, "contend", url, key, "30", str(start)],
            env=_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    try:
        lines = [p.stdout.readline().strip() for p in procs if p.stdout is not None]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert sorted(lines) == ["held"] * 5 + ["won 2"], lines
    assert read_lease(store, key).generation == 2


@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_sigkilled_holder_is_taken_over(backend, tmp_path, request):
    """A live holder keeps its lease past its TTL; once SIGKILLed on this machine its
    lease is dead at once (same process table, pid gone), elsewhere after the TTL."""
    url = str(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_url")
    key = lease_key("job", "killed")
    proc = subprocess.Popen(
        [sys.executable, WORKER, "hold", url, key, "1.5"],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held 1"
    store = featcache.open_store(url)
    time.sleep(2.0)  # longer than the TTL: the live holder's heartbeat keeps it
    with pytest.raises(LeaseHeldError, match=f"pid {proc.pid}"):
        acquire(store, key, ttl_s=5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_lease(store, key).holder_gone()
    with acquire(store, key, ttl_s=5) as lease:  # no waiting for the TTL
        assert lease.generation == 2
    # seen from another machine (another process table) the dead lease lives out its TTL
    doc_key = f"leases/{key}/000000000003.json"
    acquire(store, key, ttl_s=0.5, heartbeat=False)
    doc = store.objects.get_json(doc_key)
    store.objects.put(doc_key, json.dumps({**doc, "process_table": "elsewhere"}).encode())
    with pytest.raises(LeaseHeldError):
        acquire(store, key, ttl_s=5)
    time.sleep(0.6)
    assert acquire(store, key, ttl_s=5).generation == 4

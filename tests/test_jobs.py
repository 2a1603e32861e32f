"""The job layer: recipes, run ids, checkpoints, resume, leases, sweeps and records.

The training loop plugged in here is a real one (tests/_job_workers.py: SGD on digits
pixels with shuffling and dropout); the fine-tuning tests drive the same layer with timm
models (tests/test_finetune.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

import featcache
from featcache.errors import BobxError, ManifestError, UnknownNameError
from featcache.jobs import JobState, get_recipe, list_sweeps, run_job, run_sweep
from featcache.jobs.recipes import load_recipes, overrides_from, parse_override
from featcache.leases import LeaseHeldError, acquire, lease_key, read_lease
from tests._job_workers import DigitsSoftmax, digits_job, toy_records

WORKER = str(Path(__file__).with_name("_job_workers.py"))
ROOT = str(Path(__file__).resolve().parent.parent)


@pytest.fixture
def mem() -> featcache.Store:
    return featcache.open_store(f"memory://{uuid.uuid4().hex}")


def _run(store, job=None, **kw):
    made = []
    crash_after = kw.pop("crash_after", None)

    def factory(j):
        made.append(j)
        return DigitsSoftmax(j, crash_after=crash_after)

    out = run_job(store, job or digits_job(), factory, records=toy_records, **kw)
    return out, made


# --------------------------------------------------------------------------- one job
def test_job_trains_records_and_keeps_its_state(mem):
    out, _ = _run(mem)
    assert out.status == "done" and out.metrics["test_top1"] > 0.85  # chance is 0.1
    df = mem.results()
    assert len(df) == 1 and df["cache_key"].iloc[0] == out.run_id
    assert json.loads(df["params"].iloc[0]) == {"protocol": "toy", "seed": 0}
    state = JobState(mem, out.run_id)
    done = state.done()
    assert done["metrics"] == out.metrics and len(done["curve"]) == 3
    assert state.checkpoint_steps() == []  # dropped once finished; the weights stay
    tensors, meta = state.get_weights()
    assert meta["run_id"] == out.run_id and tensors["1.weight"].shape == (10, 64)
    arrays, attrs = mem.get_artifact("toy_curve", "softmax", "digits", out.run_id)
    np.testing.assert_array_equal(arrays["epoch"], [1, 2, 3])
    assert arrays["train_loss"][0] > arrays["train_loss"][-1]  # it learns
    assert attrs["run_id"] == out.run_id and attrs["protocol"] == "toy"
    assert state.job()["point"] == {"lr": 0.05, "epochs": 3}
    assert read_lease(mem, lease_key("job", out.run_id)).state == "released"


def test_finished_job_is_not_rerun_unless_overwrite(mem):
    first, _ = _run(mem)
    again, made = _run(mem)
    assert again.status == "cached" and made == []  # not even a trainer was built
    assert again.metrics == first.metrics and [r.id for r in again.records] == [
        r.id for r in first.records
    ]
    assert len(mem.results()) == 1
    third, made = _run(mem, overwrite=True)
    assert third.status == "done" and len(made) == 1 and len(mem.results()) == 2
    assert third.metrics == first.metrics  # same seed, same numbers


def test_run_id_hashes_what_changes_the_result():
    ids = {
        digits_job().run_id,
        digits_job(0.05).run_id,
        digits_job(seed=1).run_id,
        digits_job(epochs=4).run_id,
        digits_job(0.1).run_id,
    }
    assert len(ids) == 4 and digits_job().run_id.startswith("toy-")


def test_crash_then_resume_is_bit_identical(mem, tmp_path):
    ref, _ = _run(featcache.open_store(str(tmp_path / "ref")))
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(mem, crash_after=30, checkpoint_every_steps=7)
    state = JobState(mem, ref.run_id)
    assert state.done() is None and state.checkpoint_steps() == [
        21,
        28,
    ]  # every 7 updates and epoch ends (18): the two newest
    out, _ = _run(mem, checkpoint_every_steps=7)
    assert out.resumed_from == 28 and out.status == "done"
    assert out.metrics == ref.metrics and out.curve == ref.curve
    got, want = (
        JobState(mem, out.run_id).get_weights()[0],
        JobState(featcache.open_store(str(tmp_path / "ref")), ref.run_id).get_weights()[0],
    )
    assert all(got[k].equal(want[k]) for k in want)


def test_damaged_checkpoint_falls_back_to_the_previous_one(mem):
    with pytest.raises(RuntimeError):
        _run(mem, crash_after=30, checkpoint_every_steps=7)
    state = JobState(mem, digits_job().run_id)
    mem.objects.put(f"{state.prefix}/checkpoints/{28:010d}.pt", b"torn write")
    marker, saved = state.latest_checkpoint()
    assert marker["step"] == 21 and saved["trainer"]["position"][2] == 21
    out, _ = _run(mem, checkpoint_every_steps=7)
    assert out.resumed_from == 21 and out.metrics["test_top1"] > 0.85


def test_checkpoints_are_read_weights_only(mem):
    import pickle

    state = JobState(mem, "toy-evil")
    evil = pickle.dumps({"x": os.system})  # would be code on load with weights_only=False
    mem.objects.put(f"{state.prefix}/checkpoints/{1:010d}.pt", evil)
    from featcache import provenance

    mem.objects.put_new_json(
        f"{state.prefix}/checkpoints/{1:010d}.json",
        {"step": 1, "sha256": provenance.sha256_bytes(evil)},
    )
    with pytest.raises(BobxError, match="weights-only"):
        state.latest_checkpoint()


def test_records_are_repaired_never_duplicated_after_a_crash(mem):
    """A crash between publishing done.json and writing its records: the next call
    writes exactly those records."""
    out, _ = _run(mem)
    doc = JobState(mem, out.run_id).done()
    for key in mem.objects.list_dir("records/loose"):
        mem.objects.delete(f"records/loose/{key}")
    assert len(mem.results()) == 0
    again, _ = _run(mem)
    assert again.status == "cached" and list(mem.results()["id"]) == [doc["records"][0]["id"]]
    _run(mem)
    assert len(mem.results()) == 1


# --------------------------------------------------------------------------- leases
def test_a_held_job_names_its_holder_or_is_waited_for(mem):
    job = digits_job()
    lease = acquire(mem, lease_key("job", job.run_id), ttl_s=30)
    with pytest.raises(LeaseHeldError, match=f"pid {os.getpid()}") as err:
        _run(mem)
    assert "\n" not in str(err.value) and "--wait" in str(err.value)
    threading.Timer(0.5, lease.release).start()
    out, _ = _run(mem, wait=True, lease_ttl_s=1)  # polls every TTL / 4
    assert out.status == "done"


@pytest.mark.slow  # the CLI fine-tune test runs the same contention through bobx
def test_two_processes_on_one_job_one_runs_the_other_names_it(tmp_path):
    url = str(tmp_path / "store")
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, WORKER, "run", url, "0.05", "0.02"], env=env, stdout=subprocess.PIPE
    )
    assert first.stdout is not None and first.stdout.readline().startswith(b"step")
    second = subprocess.run(
        [sys.executable, WORKER, "run", url, "0.05", "0"], env=env, capture_output=True, text=True
    )
    assert second.returncode != 0 and f"pid {first.pid}" in second.stderr
    assert "LeaseHeldError" in second.stderr
    first.wait(timeout=300)
    assert first.returncode == 0
    assert len(featcache.open_store(url).results()) == 1


def test_sigkilled_job_resumes_in_a_new_process(tmp_path):
    url = str(tmp_path / "store")
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, WORKER, "run", url, "0.05", "0.01"], env=env, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == b"step 22":
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = featcache.open_store(url)
    run_id = digits_job().run_id
    assert JobState(store, run_id).done() is None and JobState(store, run_id).checkpoint_steps()
    assert read_lease(store, lease_key("job", run_id)).holder_gone()
    rerun = subprocess.run(
        [sys.executable, WORKER, "run", url, "0.05", "0"], env=env, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    # the uninterrupted reference runs in a process with the same thread settings (a
    # different thread count sums the loss in another order: 1e-9 apart, not bit-equal)
    ref_url = str(tmp_path / "ref")
    ref = subprocess.run(
        [sys.executable, WORKER, "run", ref_url, "0.05", "0"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ref.returncode == 0, ref.stderr
    assert rerun.stdout.strip().splitlines()[-1] == ref.stdout.strip().splitlines()[-1]
    ref_done = JobState(featcache.open_store(ref_url), run_id).done()
    assert JobState(store, run_id).done()["curve"] == ref_done["curve"]


# --------------------------------------------------------------------------- sweeps
def _sweep(store, lrs=(0.5, 0.05, 0.001), **kw):
    jobs = [digits_job(lr) for lr in lrs]
    return run_sweep(store, jobs, DigitsSoftmax, select="val_top1", records=toy_records, **kw), jobs


def test_sweep_selects_on_validation_and_records_the_choice(mem):
    out, jobs = _sweep(mem)
    vals = {p.run_id: p.metrics["val_top1"] for p in out.points}
    assert out.selected == max(vals, key=lambda r: (vals[r], -list(vals).index(r)))
    df = mem.results()
    assert len(df) == 1 and df["cache_key"].iloc[0] == out.selected
    for job in jobs:
        _, attrs = mem.get_artifact("toy_curve", "softmax", "digits", job.run_id)
        assert attrs["selected"] is (job.run_id == out.selected)
    assert [s["sweep_id"] for s in list_sweeps(mem, kind="toy")] == [out.sweep_id]
    again, _ = _sweep(mem)
    assert again.status == "cached" and again.selected == out.selected
    assert [r.id for r in again.records] == [r.id for r in out.records] and len(mem.results()) == 1


def test_sweep_leaves_held_points_to_their_holder(mem):
    jobs = [digits_job(lr) for lr in (0.5, 0.05)]
    lease = acquire(mem, lease_key("job", jobs[1].run_id), ttl_s=30)
    with pytest.raises(LeaseHeldError):
        _sweep(mem, lrs=(0.5, 0.05))
    assert JobState(mem, jobs[0].run_id).done() is not None  # the free point ran
    assert JobState(mem, jobs[1].run_id).done() is None
    threading.Timer(0.3, lease.release).start()
    out, _ = _sweep(mem, lrs=(0.5, 0.05), wait=True, lease_ttl_s=1)
    assert {p.status for p in out.points} == {"cached", "done"} and len(mem.results()) == 1


# --------------------------------------------------------------------------- recipes
def test_packaged_recipes_resolve_to_bobs_grids():
    recipes, problems = load_recipes()
    assert problems == [] and {"bob", "bob_lowshot", "quick"} <= set(recipes)
    bob = get_recipe("bob", "finetune")
    points = bob.resolve({"random_init": False})
    assert [(p["lr"], p["weight_decay"]) for p in points] == [
        (lr, wd) for lr in (1e-3, 5e-4, 1e-4) for wd in (0.05, 1e-3)
    ]
    assert all(p["batch_size"] == 1024 and p["layer_decay"] == 0.75 for p in points)
    assert [p["lr"] for p in bob.resolve({"random_init": True})][::2] == [
        1e-2,
        5e-3,
        1e-3,
        5e-4,
        1e-4,
    ]
    low = get_recipe("bob_lowshot")
    vit = low.resolve({"family": "vit", "fraction": 0.1})
    assert {(p["lr"], p["layer_decay"]) for p in vit} == {
        (lr, ld) for lr in (1e-4, 2.5e-4, 5e-4) for ld in (0.65, 0.75)
    }
    assert all(p["optimizer"] == "adamw" and p["mixup"] == 0.8 for p in vit)
    cnn = low.resolve({"family": "cnn", "fraction": 0.01})
    assert [(p["optimizer"], p["lr"], p["layer_decay"], p["mixup"], p["reprob"]) for p in cnn] == [
        ("sgd", 0.1, None, 0.0, 0.0),
        ("sgd", 0.05, None, 0.0, 0.0),
    ]
    assert all(p["weight_decay"] == 0.05 for p in vit + cnn)


def test_recipe_overrides():
    quick = get_recipe("quick")
    (point,) = quick.resolve({}, overrides_from(["epochs=3", "scale=[0.2, 1.0]"], lr=0.01))
    assert (point["epochs"], point["scale"], point["lr"]) == (3, (0.2, 1.0), 0.01)
    points = quick.resolve({}, overrides_from(["lr=[1e-3, 5e-4]"]))
    assert [p["lr"] for p in points] == [1e-3, 5e-4]
    (no_aa,) = get_recipe("bob").resolve({}, {"auto_augment": None, "lr": 1e-3, "weight_decay": 0})
    assert no_aa["auto_augment"] is None
    with pytest.raises(UnknownNameError, match="Did you mean 'epochs'"):
        quick.resolve({}, {"epoch": 3})
    with pytest.raises(BobxError, match="lr must be > 0"):
        quick.resolve({}, {"lr": -1.0})
    with pytest.raises(BobxError, match="optimizer must be one of"):
        quick.resolve({}, {"optimizer": "adamm"})
    assert parse_override("auto_augment=null") == ("auto_augment", None)
    with pytest.raises(BobxError, match="key=value"):
        parse_override("lr")
    with pytest.raises(UnknownNameError, match="recipe"):
        get_recipe("bobb")


BAD_RECIPES = {
    "unknown field": ("bad:\n  kind: finetune\n  lrr: 0.1\n", "did you mean 'lr'"),
    "bad kind": ("bad:\n  kind: finetun\n", "did you mean 'finetune'"),
    "bad type": ("bad:\n  kind: finetune\n  epochs: many\n", "'epochs' must be a number"),
    "yaml float": ("bad:\n  kind: finetune\n  lr: 1e-3\n", "write 1.0e-3"),
    "empty grid": ("bad:\n  kind: finetune\n  grid: {lr: []}\n", "non-empty list"),
    "bad when": (
        "bad:\n  kind: finetune\n  variants:\n    - when: {familly: cnn}\n",
        "did you mean 'family'",
    ),
    "bad auto_augment": ("bad:\n  kind: finetune\n  auto_augment: rand-zz9\n", "cannot parse"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECIPES))
def test_bad_recipes_are_named_by_validate(case, tmp_path, monkeypatch):
    from featcache.backbones import validate_manifests

    text, message = BAD_RECIPES[case]
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text(text)
    monkeypatch.setenv("BOBX_MANIFESTS", str(tmp_path))
    problems = validate_manifests(check_registries=False)["recipes"]["problems"]
    assert len(problems) == 1 and message in problems[0] and "mine.yaml" in problems[0]
    assert "recipe 'bad'" in problems[0]
    if case != "bad auto_augment":
        with pytest.raises(ManifestError, match="mine.yaml"):
            get_recipe("bad")


def test_user_recipe_without_code_change(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text(
        "tiny:\n  kind: finetune\n  epochs: 1\n  grid:\n    lr: [1.0e-3, 1.0e-4]\n"
    )
    monkeypatch.setenv("BOBX_MANIFESTS", str(tmp_path))
    assert [p["lr"] for p in get_recipe("tiny").resolve()] == [1e-3, 1e-4]

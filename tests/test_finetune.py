"""`bobx finetune`: tiny timm models (random init, 32 px) really fine-tuned on digits.

The `quick` recipe trains a few dozen AdamW updates per epoch; chance is 0.10."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import featcache
from featcache.errors import BobxError, DataError, UnknownNameError
from featcache.jobs import JobState, list_sweeps
from featcache.leases import list_leases
from tests import _imagegen as gen
from tests._tiny import extract_digits, tiny_manifests
from tests.test_cli_store import BOBX, bobx

ROOT = str(Path(__file__).resolve().parent.parent)
QUICK = ["--recipe", "quick", "--weights", "random", "--num-workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_manifests(tmp_path_factory.mktemp("manifests"), "ft")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, manifests: Path):
    """Both tiny backbones fine-tuned on digits with `quick` (2 epochs), in process (the
    CLI runs in the tests below)."""
    from featcache.runners.finetune import run_finetune

    mp = pytest.MonkeyPatch()
    mp.setenv("BOBX_MANIFESTS", str(manifests))
    store = str(tmp_path_factory.mktemp("ft") / "store")
    out = {
        bb: [
            r.to_dict()
            for r in run_finetune(
                featcache.open_store(store),
                bb,
                "digits",
                recipe="quick",
                weights="random",
                device="cpu",
                num_workers=0,
            ).records
        ]
        for bb in ("ft_resnet", "ft_vit")
    }
    yield store, out
    mp.undo()


def test_finetune_learns_and_records(tuned):
    store_url, out = tuned
    store = featcache.open_store(store_url)
    for bb, rows in out.items():
        assert [r["metric"] for r in rows] == ["top1", "top5"]
        top1 = rows[0]["value"]
        assert top1 > 0.35, (bb, top1)  # chance: 0.10; 2 short epochs from random init
        params = rows[0]["params"]
        assert params["protocol"] == "finetune" and params["recipe"] == "quick"
        assert params["selection"] == "holdout" and params["seed"] == 0
        assert "lr" not in params  # the recipe's, not a per-backbone knob
        run_id = rows[0]["cache_key"]
        arrays, attrs = store.get_artifact("finetune_curve", bb, "digits", run_id)
        np.testing.assert_array_equal(arrays["epoch"], [1, 2])
        assert set(arrays) == {"epoch", "train_loss", "lr", "val_top1", "test_top1"}
        assert arrays["train_loss"][1] < arrays["train_loss"][0]
        assert arrays["test_top1"][-1] == pytest.approx(top1)
        assert attrs["selected"] is True and attrs["protocol"] == "finetune"
        state = JobState(store, run_id)
        assert state.has_weights() and state.checkpoint_steps() == []
        assert state.job()["identity"]["point"]["lr"] == 1e-3
    df = store.results(task="classification")
    assert len(df) == 4 and df["params"].nunique() == 1  # one setting for both backbones
    assert {s["backbone"] for s in list_sweeps(store, kind="finetune")} == set(out)
    assert {i.state for i in list_leases(store)} == {"released"}


def test_finished_finetune_prints_the_stored_result(tuned, manifests, monkeypatch):
    store, out = tuned
    monkeypatch.setenv("BOBX_MANIFESTS", str(manifests))
    again = bobx("finetune", "--backbone", "ft_vit", "--dataset", "digits", *QUICK, store=store)
    assert "already finished" in again.stdout and "cached" in again.stdout
    assert f"{out['ft_vit'][0]['value']:.4f}" in again.stdout
    assert len(featcache.open_store(store).results(task="classification")) == 4


def test_finetune_ranks_beside_the_probe(tuned, manifests, monkeypatch):
    from featcache.runners.classification import run_probe
    from featcache.runners.ranking import rank_store

    monkeypatch.setenv("BOBX_MANIFESTS", str(manifests))
    store = featcache.open_store(tuned[0])
    for bb in ("ft_resnet", "ft_vit"):
        extract_digits(store, bb)
        run_probe(store, bb, "digits", dtype="float32", c_grid=[0.01, 1.0])
    ranked = rank_store(store, tasks=["classification"], n_boot=0)
    rows = ranked[ranked["task"] == "classification"]
    assert set(rows["backbone"]) == {"ft_resnet", "ft_vit"}
    # 3 probe settings (top1, top5, recall) + 2 fine-tune settings (top1, top5)
    assert set(rows["n_settings"]) == {5}


def test_lowshot_subsets_are_the_probes(manifests, monkeypatch):
    """The fine-tune's training rows are exactly the rows the probe fits on."""
    from evaluators.probe import linear_probe
    from featcache.datasets import get_dataset_spec
    from featcache.runners.finetune import prepare_splits

    spec = get_dataset_spec("digits")
    for fraction, shots in ((0.1, None), (0.01, None), (None, 5)):
        splits = prepare_splits(spec, seed=3, fraction=fraction, shots=shots)
        y = splits.train.labels
        x = np.random.default_rng(0).standard_normal((len(y), 4))
        probe = linear_probe(
            x, y, x[:20], y[:20], seed=3, fraction=fraction, shots=shots, c_grid=[1.0]
        )
        np.testing.assert_array_equal(splits.fit_rows, probe["train_indices"])
        np.testing.assert_array_equal(splits.val_rows, probe["val_indices"])
        assert splits.test.split == "test" and splits.selection == "holdout"
        assert not set(splits.fit_rows) & set(splits.val_rows)


def test_lowshot_recipe_grids_by_family(manifests, monkeypatch):
    from featcache.backbones import get_backbone_spec
    from featcache.datasets import get_dataset_spec
    from featcache.jobs import get_recipe
    from featcache.models import plan_backbone
    from featcache.runners.finetune import finetune_jobs, prepare_splits

    monkeypatch.setenv("BOBX_MANIFESTS", str(manifests))
    dspec = get_dataset_spec("digits")
    got = {}
    for bb in ("ft_resnet", "ft_vit"):
        for fraction in (0.01, 0.1):
            splits = prepare_splits(dspec, fraction=fraction)
            jobs = finetune_jobs(
                plan_backbone(get_backbone_spec(bb), "random"),
                dspec,
                splits,
                get_recipe("bob_lowshot"),
                fraction=fraction,
                shots=None,
                seed=0,
                overrides={},
                precision="fp32",
                micro_batch=64,
            )
            got[bb, fraction] = [
                (j.point["optimizer"], j.point["lr"], j.point["mixup"]) for j in jobs
            ]
            assert len({j.run_id for j in jobs}) == len(jobs)
            assert len({json.dumps(dict(j.params), sort_keys=True) for j in jobs}) == 1
    assert got["ft_resnet", 0.01] == [("sgd", 0.1, 0.0), ("sgd", 0.05, 0.0)]
    assert got["ft_resnet", 0.1] == [("sgd", 0.1, 0.8), ("sgd", 0.05, 0.8)]
    assert len(got["ft_vit", 0.1]) == 6 and {o for o, _, _ in got["ft_vit", 0.1]} == {"adamw"}


def _env(manifests: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": ROOT,
        "BOBX_MANIFESTS": str(manifests),
        "OMP_NUM_THREADS": "1",
    }


def _cmd(store: str, *extra: str) -> list[str]:
    cmd = [BOBX] if BOBX else [sys.executable, "-m", "cli"]
    return [
        *cmd,
        "finetune",
        "--backbone",
        "ft_resnet",
        "--dataset",
        "digits",
        *QUICK,
        "--epochs",
        "1",
        "--checkpoint-every",
        "5",
        "--store",
        store,
        *extra,
    ]


def test_sigkill_then_resume_equals_an_uninterrupted_run(manifests, tmp_path):
    """Two processes start the same job: one runs, the other names it and exits. The
    runner is SIGKILLed after its first checkpoint; the rerun resumes from it and
    records exactly an uninterrupted run's numbers."""
    from featcache.leases import read_lease

    store = str(tmp_path / "store")
    env = _env(manifests)
    procs = {
        p.pid: p
        for p in (
            subprocess.Popen(
                _cmd(store, "--json"),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        )
    }
    checkpoints = tmp_path / "store" / "jobs"
    deadline = time.time() + 300
    while not list(checkpoints.glob("*/checkpoints/*.json")):
        assert time.time() < deadline and all(p.poll() in (None, 2) for p in procs.values())
        time.sleep(0.1)
    (lease,) = list_leases(featcache.open_store(store), "job")
    runner = procs.pop(lease.pid)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    (other,) = procs.values()
    _, err = other.communicate(timeout=120)
    assert other.returncode == 2 and f"(pid {runner.pid})" in err
    assert err.startswith("error:") and err.count("\n") == 1
    assert read_lease(featcache.open_store(store), lease.key).holder_gone()
    resumed = subprocess.run(_cmd(store, "--json"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    ref_store = str(tmp_path / "ref")
    ref = subprocess.run(_cmd(ref_store, "--json"), env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    got, want = json.loads(resumed.stdout), json.loads(ref.stdout)
    assert [(r["metric"], r["value"]) for r in got] == [(r["metric"], r["value"]) for r in want]
    run_id = got[0]["cache_key"]
    assert run_id == want[0]["cache_key"]
    done = JobState(featcache.open_store(store), run_id).done()
    assert done["resumed_from"] and done["resumed_from"] % 5 == 0
    assert done["curve"] == JobState(featcache.open_store(ref_store), run_id).done()["curve"]


def test_multilabel_finetune_uses_bce_and_macro_auc(manifests, tmp_path, monkeypatch):
    from featcache.runners.finetune import run_finetune

    monkeypatch.setenv("BOBX_MANIFESTS", str(manifests))
    gen.make_chexpert(tmp_path / "chex", n_train=40, n_valid=12)
    result = run_finetune(
        featcache.open_store(f"memory://{tmp_path.name}"),
        "ft_resnet",
        "chexpert",
        recipe="quick",
        overrides={"epochs": 1, "batch_size": 8},
        weights="random",
        data_root=tmp_path / "chex",
        device="cpu",
        batch_size=8,
        num_workers=0,
    )
    (rec,) = result.records
    assert rec.metric == "macro_auc" and 0 <= rec.value <= 1 and rec.split == "valid"
    assert result.select_metric == "val_macro_auc"
    assert "val_macro_auc" in result.sweep.points[0].metrics


def test_bad_input_gets_one_line_errors(manifests, tmp_path, monkeypatch):
    store = str(tmp_path / "store")
    monkeypatch.setenv("BOBX_MANIFESTS", str(manifests))
    bad = bobx(
        "finetune",
        "--backbone",
        "ft_resnet",
        "--dataset",
        "digits",
        "--set",
        "lrr=1",
        store=store,
        check=False,
    )
    assert bad.returncode == 2 and "Did you mean 'lr'" in bad.stderr
    assert bad.stderr.count("\n") == 1
    from featcache.runners.finetune import run_finetune

    with pytest.raises(UnknownNameError, match="Unknown recipe 'fast'"):
        run_finetune(featcache.open_store(store), "ft_resnet", "digits", recipe="fast")
    gen.make_csv_dataset(
        tmp_path / "unlabelled",
        [(f"img/{i}.jpg", "", "train" if i < 6 else "test") for i in range(8)],
    )
    with pytest.raises(DataError, match="has no labels"):
        run_finetune(
            featcache.open_store(store),
            "ft_resnet",
            "image_csv",
            recipe="quick",
            weights="random",
            data_root=tmp_path / "unlabelled",
            device="cpu",
        )
    with pytest.raises(BobxError, match="fraction or shots"):
        run_finetune(
            featcache.open_store(store),
            "ft_resnet",
            "digits",
            fraction=0.1,
            shots=2,
            weights="random",
        )
    assert featcache.open_store(store).results().empty  # nothing written


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_finetune_on_cuda(manifests, monkeypatch, precision):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from featcache.runners.finetune import run_finetune

    monkeypatch.setenv("BOBX_MANIFESTS", str(manifests))
    store = featcache.open_store(f"memory://cuda-{precision}")
    result = run_finetune(
        store,
        "ft_resnet",
        "digits",
        recipe="quick",
        weights="random",
        device="cuda",
        precision=precision,
        num_workers=2,
        checkpoint_every_steps=10,
    )
    assert result.records[0].value > 0.35 and result.records[0].params["precision"] == precision
    again = run_finetune(
        store, "ft_resnet", "digits", recipe="quick", weights="random", device="cuda",
        precision=precision, num_workers=2,
    )  # fmt: skip
    assert again.status == "cached"


@pytest.mark.slow
def test_torchrun_trains_one_job_with_two_processes(manifests, tmp_path):
    """`torchrun --nproc-per-node 2 bobx finetune`: DistributedDataParallel on gloo (CPU);
    rank 0 alone writes and prints, the run id knows the world size."""
    store = str(tmp_path / "store")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-port", str(29400 + os.getpid() % 500), "-m", "cli",
        "finetune", "--backbone", "ft_resnet", "--dataset", "digits", *QUICK, "--epochs", "1",
        "--store", store, "--json",
    ]  # fmt: skip
    out = subprocess.run(cmd, env=_env(manifests), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)  # one JSON document: rank 1 printed nothing
    assert [r["metric"] for r in rows] == ["top1", "top5"] and rows[0]["value"] > 0.2
    state = JobState(featcache.open_store(store), rows[0]["cache_key"])
    assert state.job()["identity"]["world_size"] == 2 and state.has_weights()
    assert len(featcache.open_store(store).results()) == 2

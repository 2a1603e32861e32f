"""The evaluator commands as a new user types them, on a store of imported features.

The design card's usage lines run verbatim (``bobx probe``, ``bobx retrieve --dataset
roxford``, and ``bobx extract --backbone dino_vitb --dataset cifar100`` reaching
extraction); ``--backbone`` defaults to every backbone with features; a bare evaluator
command evaluates what is pending and says what it ran and skipped, and why; every
command resolves catalog aliases the way extraction does; ``bobx rank`` keeps speed out
of "overall"; ``bobx correlate`` copes with one backbone and with imported ones.
No downloads: features come from ``import-features`` and records from ``record``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import featcache
from tests import _imagegen as gen
from tests.test_cli_store import bobx

ROOT = Path(__file__).resolve().parents[1]


def verbatim(line: str, store: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command line exactly as written (the store comes from $BOBX_STORE)."""
    argv = line.split()
    assert argv[0] == "bobx"
    full_env = {**os.environ, "BOBX_STORE": store, **env}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "cli", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        env=full_env,
        cwd=ROOT,
    )


def clusters(seed: int, n: int, dim: int = 24, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian class clusters: features a probe and kNN can learn from."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).standard_normal((k, dim)) * 2.0
    y = rng.integers(0, k, n)
    return (centers[y] + rng.standard_normal((n, dim))).astype(np.float32), y


def imported_store(tmp: Path) -> str:
    """cifar100 features of two catalog backbones (stored under their canonical names, as
    extraction stores them) and of one of the user's own; roxford5k query/database sets
    and its ground truth (as extraction copies it) for two; an unlabelled set."""
    url = str(tmp / "store")
    st = featcache.open_store(url)
    for i, backbone in enumerate(("dino_vitb_in1k", "rand_resnet18", "mine")):
        for split, n in (("train", 240), ("test", 80)):
            x, y = clusters(10 * i + len(split), n)
            x = x * (1.0 + 0.3 * i)  # a different scale per backbone: norms matter
            st.import_features(backbone, "cifar100", split, x, labels=y)
    gnd = gen.make_roxford(tmp / "data", n_db=12, n_q=3)  # writes the gnd pickle only
    for name in ("gnd", "imlist", "qimlist"):
        st.put_meta("roxford5k", name, gnd[name])
    rng = np.random.default_rng(5)
    for backbone in ("dino_vitb_in1k", "mine"):
        st.import_features(backbone, "roxford5k", "database", rng.standard_normal((12, 24)))
        st.import_features(backbone, "roxford5k", "query", rng.standard_normal((3, 24)))
    st.import_features("mine", "unlabelled", "train", rng.standard_normal((30, 24)))
    st.import_features("mine", "unlabelled", "test", rng.standard_normal((10, 24)))
    return url


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The imported store after `bobx probe` and `bobx retrieve --dataset roxford5k`."""
    url = imported_store(tmp_path_factory.mktemp("evaluated"))
    bobx("probe", store=url)
    bobx("retrieve", "--dataset", "roxford5k", store=url)
    return url


def lines(proc: subprocess.CompletedProcess[str], word: str) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith(word)]


def test_card_lines_run_verbatim(tmp_path):
    store_dir = imported_store(tmp_path)
    probe = verbatim("bobx probe", store_dir)
    assert probe.returncode == 0, probe.stderr
    ran = lines(probe, "ran ")
    assert sorted(r.split()[1] for r in ran) == [
        "dino_vitb_in1k/cifar100",
        "mine/cifar100",
        "rand_resnet18/cifar100",
    ]
    skipped = "\n".join(lines(probe, "skipped "))
    assert "dino_vitb_in1k/roxford5k: no complete 'train' split" in skipped
    assert "mine/unlabelled: 'train' has no labels (imported without --labels)" in skipped
    assert "ran 3, skipped 3, failed 0 of 6" in probe.stderr

    for line in ("bobx retrieve --dataset roxford", "bobx retrieve --dataset roxford5k"):
        proc = verbatim(line + " --json", store_dir)
        assert proc.returncode == 0, proc.stderr
        rows = json.loads(proc.stdout)
        assert {r["backbone"] for r in rows} == {"dino_vitb_in1k", "mine"}
        assert {r["dataset"] for r in rows} == {"roxford5k"}
        assert {r["split"] for r in rows} == {"easy", "medium", "hard"}


def test_card_extraction_line_is_extraction(tmp_path):
    """Offline and without the weights, the line reaches extraction (the data found, the
    backbone planned) and stops with the one-line error naming both fixes, having
    written no feature set."""
    gen.make_cifar(tmp_path / "cifar", n_train=6, n_test=4, variant="cifar100")
    store = str(tmp_path / "store")
    proc = verbatim(
        "bobx extract --backbone dino_vitb --dataset cifar100",
        store,
        BOBX_DATA_CIFAR100=str(tmp_path / "cifar"),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
    )
    assert proc.returncode == 2, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: Pretrained weights of 'dino_vitb_in1k'")
    assert "--weights PATH" in error and "pre-populate that cache" in error
    assert featcache.open_store(store).list_features() == []


def test_bare_runs_skip_what_is_done_and_run_new_knobs(store_dir):
    again = bobx("probe", store=store_dir)
    assert "ran 0, skipped 6" in again.stderr
    assert len(lines(again, "skipped ")) == 6
    assert "dino_vitb_in1k/cifar100: already probed with these knobs" in again.stderr
    assert "dino_vitb_in1k/roxford5k: no complete 'train' split" in again.stderr
    low = bobx("probe", "--fraction", "0.1", "--json", store=store_dir)
    assert "ran 3, skipped 3" in low.stderr
    assert {r["params"]["fraction"] for r in json.loads(low.stdout)} == {0.1}

    knn = bobx("knn", "--k", "5,10", "--json", store=store_dir)
    rows = json.loads(knn.stdout)
    assert {(r["backbone"], r["params"]["k"]) for r in rows if r["metric"] == "top1"} == {
        (b, k) for b in ("dino_vitb_in1k", "mine", "rand_resnet18") for k in (5, 10)
    }
    assert min(r["value"] for r in rows if r["metric"] == "top1") > 0.5  # chance is 0.2
    assert "ran 0" in bobx("knn", "--k", "5,10", store=store_dir).stderr
    assert "ran 3" in bobx("knn", "--k", "7", store=store_dir).stderr

    cal = bobx("calibrate", "--json", store=store_dir)
    assert {r["backbone"] for r in json.loads(cal.stdout)} == {
        "dino_vitb_in1k",
        "mine",
        "rand_resnet18",
    }
    assert "mine/roxford5k: no stored probe run 'full' (run `bobx probe` first)" in cal.stderr
    assert "ran 0" in bobx("calibrate", store=store_dir).stderr


def test_probe_records_its_convergence_and_the_cold_path(store_dir):
    st = featcache.open_store(store_dir)
    out = bobx(
        "probe", "--backbone", "mine", "--dataset", "cifar100", "--no-warm-start", "--json",
        store=store_dir,
    )  # fmt: skip
    params = json.loads(out.stdout)[0]["params"]
    bobx("probe", "--backbone", "mine", "--dataset", "cifar100", store=store_dir)  # warm
    assert params["warm_start"] is False and params["n_unconverged"] >= 0
    _, attrs = st.get_artifact("probe", "mine", "cifar100", "full")
    sweep = attrs["sweep"]
    assert len(sweep) == 45
    assert {"C", "val_score", "n_iter", "converged", "objective"} <= set(sweep[0])
    assert sum(not p["converged"] for p in sweep) <= params["n_unconverged"]
    assert all(p["objective"] > 0 and p["n_iter"] >= 1 for p in sweep)
    # the cold run and the warm one differ in a knob: two settings, not one
    warm = st.results(backbone="mine", dataset="cifar100", task="classification", metric="top1")
    probes = [json.loads(p) for p in warm["params"]]
    probes = [p for p in probes if p["protocol"] == "dinov2_logreg" and p["fraction"] is None]
    assert {p["warm_start"] for p in probes} == {True, False}


def test_aliases_resolve_like_extraction(store_dir):
    # random_resnet18 is rand_resnet18's alias, c100 cifar100's, roxf roxford5k's
    knn = bobx(
        "knn", "--backbone", "random_resnet18", "--dataset", "c100", "--k", "3", "--json",
        store=store_dir,
    )  # fmt: skip
    rows = json.loads(knn.stdout)
    assert {(r["backbone"], r["dataset"]) for r in rows} == {("rand_resnet18", "cifar100")}
    two = bobx(
        "retrieve", "--dataset", "roxf", "--backbone", "dino_vitb", "--backbone", "mine",
        "--json", store=store_dir,
    )  # fmt: skip
    assert {r["backbone"] for r in json.loads(two.stdout)} == {"dino_vitb_in1k", "mine"}
    found = bobx(
        "results", "--backbone", "random_resnet18", "--dataset", "c100", "--format", "json",
        store=store_dir,
    )  # fmt: skip
    assert {r["backbone"] for r in json.loads(found.stdout)} == {"rand_resnet18"}
    missing = bobx("knn", "--backbone", "dino_vits", "--dataset", "cifar100", store=store_dir,
                   check=False)  # fmt: skip
    assert missing.returncode == 2
    assert "bobx extract --backbone dino_vits_in1k --dataset cifar100" in missing.stderr
    cat = json.loads(verbatim("bobx datasets --json", store_dir).stdout)
    aliases = {d["name"]: d["aliases"] for d in cat}
    assert "roxford" in aliases["roxford5k"] and "in1k" in aliases["imagenet"]
    table = verbatim("bobx datasets", store_dir).stdout
    assert "roxford" in table and "rparis" in table


def test_rank_keeps_speed_out_of_overall(store_dir, tmp_path):
    st = featcache.open_store(store_dir)
    for backbone, rate in (("dino_vitb_in1k", 5.0), ("rand_resnet18", 50.0), ("mine", 5000.0)):
        for dataset in ("cifar100", "roxford5k"):
            st.record(backbone=backbone, task="speed", dataset=dataset, metric="images_per_s",
                      value=rate)  # fmt: skip
        st.record(backbone=backbone, task="calibration", dataset="cifar100", metric="ece",
                  value=rate / 1e4, higher_is_better=False)  # fmt: skip
    default = bobx("rank", "--n-boot", "0", "--json", store=store_dir)
    ranked = json.loads(default.stdout)
    tasks = {r["task"]: r["in_overall"] for r in ranked}
    assert tasks["speed"] is False and tasks["classification"] is True
    assert tasks["calibration"] is False and tasks["overall"] is True
    table = bobx("rank", "--n-boot", "0", store=store_dir).stdout
    assert "overall = mean of classification, retrieval" in table
    assert "ranked on their own only: calibration, speed" in table

    def overall(proc: subprocess.CompletedProcess[str]) -> dict[str, float]:
        return {
            r["backbone"]: r["score"] for r in json.loads(proc.stdout) if r["task"] == "overall"
        }

    without = st.results()
    without = without[without["task"] != "speed"]
    csv = tmp_path / "no_speed.csv"
    without.to_csv(csv, index=False)
    other = str(tmp_path / "other")
    bobx("import-results", str(csv), store=other)
    assert overall(bobx("rank", "--n-boot", "0", "--json", store=other)) == overall(default)
    everything = bobx("rank", "--n-boot", "0", "--overall-tasks", "all", "--json",
                      store=store_dir)  # fmt: skip
    assert overall(everything) != overall(default)
    bad = bobx("rank", "--overall-tasks", "detection", store=store_dir, check=False)
    assert bad.returncode == 2 and "Unknown task for overall 'detection'" in bad.stderr


def test_correlate_with_one_backbone_and_with_imported_ones(store_dir, tmp_path):
    one = str(tmp_path / "one")
    bobx("record", "--backbone", "rand_resnet18", "--task", "classification", "--dataset",
         "digits", "--metric", "top1", "--value", "0.5", store=one)  # fmt: skip
    proc = bobx("correlate", store=one, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: Nothing to correlate")
    mixed = bobx("correlate", "--json", store=store_dir)  # catalog + the user's own
    payload = json.loads(mixed.stdout)
    assert payload["metadata_task"] == "overall"
    assert payload["overall_tasks"] == ["classification", "retrieval"]
    families = {row["family"] for row in payload["metadata"]}
    assert {"all", "unknown", "vit", "cnn"} <= families


@pytest.mark.slow
def test_card_extraction_line_runs_from_a_warm_hub_cache(tmp_path):
    """With the weights in the Hugging Face cache (here: a random ViT-B/16 saved where the
    hub keeps timm's DINO checkpoint), the line extracts offline, verbatim; run again, it
    finds the sets cached and loads no model."""
    import timm
    from safetensors.torch import save_file

    snapshot = tmp_path / "hf" / "hub" / "models--timm--vit_base_patch16_224.dino"
    revision = "0" * 40
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text(revision)
    (snapshot / "snapshots" / revision).mkdir(parents=True)
    net = timm.create_model("vit_base_patch16_224.dino", pretrained=False, num_classes=0)
    save_file(net.state_dict(), str(snapshot / "snapshots" / revision / "model.safetensors"))
    del net
    gen.make_cifar(tmp_path / "cifar", n_train=6, n_test=4, variant="cifar100")
    env = {
        "BOBX_DATA_CIFAR100": str(tmp_path / "cifar"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    store = str(tmp_path / "store")
    line = "bobx extract --backbone dino_vitb --dataset cifar100"
    first = verbatim(line, store, **env)
    assert first.returncode == 0, first.stderr
    assert "dino_vitb_in1k/cifar100/train: complete (6 x 768" in first.stdout
    assert "dino_vitb_in1k/cifar100/test: complete (4 x 768" in first.stdout
    again = verbatim(line, store, **env)
    assert "dino_vitb_in1k/cifar100/train: cached" in again.stdout
    fs = featcache.open_store(store).features("dino_vitb_in1k", "cifar100", "test")
    assert fs.attrs["weights"]["kind"] == "pretrained"
    np.testing.assert_allclose(fs.norms(), np.linalg.norm(fs.embeddings(), axis=1), rtol=1e-6)

"""The whole flow through the `bobx` command, as a user runs it: extract -> evaluate -> rank.

Tiny random-init timm models (a user manifest in $BOBX_MANIFESTS, no code change) on
the built-in digits (scikit-learn's 1,797 real handwritten digits) and on a
revisited-Oxford-format fixture written by the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import featcache
from evaluators.retrieval import revisited_map
from tests import _imagegen as gen
from tests.test_cli_store import bobx

TINY = """
e2e_resnet:
  source: timm
  model: resnet10t
  resolution: 32
  style: random
e2e_vit:
  source: timm
  model: test_vit
  model_kwargs: {img_size: 32}
  resolution: 32
  family: vit
  style: random
"""


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("manifests")
    (root / "backbones").mkdir()
    (root / "backbones" / "tiny.yaml").write_text(TINY)
    return root


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory: pytest.TempPathFactory, manifests: Path) -> str:
    """Both tiny backbones extracted on digits train/test through the CLI."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BOBX_MANIFESTS", str(manifests))
    store = str(tmp_path_factory.mktemp("digits") / "store")
    for bb in ("e2e_resnet", "e2e_vit"):
        bobx(
            "extract",
            "--backbone",
            bb,
            "--dataset",
            "digits",
            "--split",
            "train",
            "--split",
            "test",
            "--weights",
            "random",
            "--num-workers",
            "0",
            store=store,
        )
    yield store
    mp.undo()


def _records(proc) -> list[dict]:
    rows = json.loads(proc.stdout)
    assert rows and all({"id", "backbone", "metric", "value", "params"} <= set(r) for r in rows)
    return rows


def _value(rows: list[dict], metric: str, **params) -> float:
    hits = [
        r["value"]
        for r in rows
        if r["metric"] == metric and all(r["params"].get(k) == v for k, v in params.items())
    ]
    assert len(hits) == 1, (metric, params, rows)
    return hits[0]


def test_digits_extract_evaluate_rank(digits_store):
    def digits(command: str, backbone: str, *options: str) -> list[dict]:
        """`bobx COMMAND --backbone B --dataset digits OPTIONS --json`, as records."""
        argv = (command, "--backbone", backbone, "--dataset", "digits", *options, "--json")
        return _records(bobx(*argv, store=digits_store))

    listing = json.loads(bobx("ls", "--json", store=digits_store).stdout)
    sets = {(s["backbone"], s["split"]): s for s in listing["feature_sets"]}
    assert sets["e2e_resnet", "train"]["n"] == 1347 and sets["e2e_resnet", "test"]["n"] == 450
    assert all(s["status"] == "complete" for s in sets.values())

    knn = digits("knn", "all", "--k", "10,20")
    assert {r["backbone"] for r in knn} == {"e2e_resnet", "e2e_vit"}
    for r in knn:
        assert r["task"] == "classification" and r["params"]["temperature"] == 0.07
    resnet = [r for r in knn if r["backbone"] == "e2e_resnet"]
    assert _value(resnet, "top1", k=20) > 0.5  # chance is 0.1

    probe = digits("probe", "e2e_resnet")
    assert _value(probe, "top1") > 0.5
    assert probe[0]["params"]["protocol"] == "dinov2_logreg"
    low = digits("probe", "e2e_resnet", "--fraction", "0.1", "--seed", "1")
    assert low[0]["params"]["fraction"] == 0.1 and _value(low, "top1") > 0.2
    clip = digits("probe", "e2e_resnet", "--protocol", "clip_benchmark", "--eval-on", "digits")
    cls = [r for r in clip if r["task"] == "classification"]
    assert cls[0]["params"]["protocol"] == "clip_benchmark_adamw"
    assert cls[0]["params"]["epochs"] == 10 and _value(cls, "top1") > 0.5
    # the stored weights apply to normalised features: evaluated on the same test set
    # through the OOD path, the probe gives exactly its own test accuracy
    same = [r for r in clip if r["task"] == "ood_classification"]
    assert _value(same, "top1") == _value(cls, "top1")

    cal = digits("calibrate", "e2e_resnet")
    assert {r["metric"]: r["higher_is_better"] for r in cal} == {
        "ece": False,
        "nll": False,
        "brier": False,
    }
    assert 0 <= _value(cal, "ece") < 1 and _value(cal, "nll") > 0
    clip_cal = digits("calibrate", "e2e_resnet", "--run", "clip-full", "--temperature-scale")
    assert clip_cal[0]["params"]["probe_run"] == "clip-full"
    assert 0 <= _value(clip_cal, "ece") < 1 and _value(clip_cal, "nll") > 0

    ret = digits("retrieve", "e2e_resnet")
    assert _value(ret, "map") > 0.1 and _value(ret, "hit@1") > 0.5
    assert ret[0]["params"]["gallery"] == "leave-one-out"

    ranked = json.loads(bobx("rank", "--n-boot", "50", "--json", store=digits_store).stdout)
    overall = [r for r in ranked if r["task"] == "overall"]
    assert sorted(r["rank"] for r in overall) == [1, 2]
    # every evaluator's records are in the store, in the schema `results --format json` prints
    stored = json.loads(bobx("results", "--format", "json", store=digits_store).stdout)
    made = knn + probe + low + clip + cal + clip_cal + ret
    assert {r["id"] for r in made} <= {r["id"] for r in stored}


def test_calibrate_without_probe_is_a_clear_error(digits_store):
    proc = bobx(
        "calibrate", "--backbone", "e2e_vit", "--dataset", "digits", store=digits_store, check=False
    )
    assert proc.returncode == 2 and "bobx probe --backbone e2e_vit" in proc.stderr
    proc = bobx(
        "calibrate", "--backbone", "e2e_vit", "--dataset", "digits", "--run", "clip-full",
        store=digits_store, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "--protocol clip_benchmark" in proc.stderr


def test_unknown_backbone_suggests(digits_store):
    proc = bobx(
        "knn", "--backbone", "e2e_resnt", "--dataset", "digits", store=digits_store, check=False
    )
    assert proc.returncode == 2 and "e2e_resnet" in proc.stderr


def test_roxford_extract_then_retrieve(tmp_path, manifests, monkeypatch):
    monkeypatch.setenv("BOBX_MANIFESTS", str(manifests))
    gnd = gen.make_roxford(tmp_path / "data", n_db=12, n_q=3)
    store = str(tmp_path / "store")
    bobx(
        "extract",
        "--backbone",
        "e2e_resnet",
        "--dataset",
        "roxford5k",
        "--data-root",
        str(tmp_path / "data" / "roxford5k"),
        "--weights",
        "random",
        "--num-workers",
        "0",
        store=store,
    )
    rows = _records(
        bobx(
            "retrieve", "--backbone", "e2e_resnet", "--dataset", "roxford5k", "--json", store=store
        )
    )
    got = {(r["split"], r["metric"]): r["value"] for r in rows}
    assert {s for s, _ in got} == {"easy", "medium", "hard"}
    assert {m for _, m in got} == {"map", "mp@1", "mp@5", "mp@10"}
    assert all(r["params"]["query_crop"] == "bbx" for r in rows)
    # the numbers are the protocol's on the cached features and the stored ground truth
    st = featcache.open_store(store)
    q = st.features("e2e_resnet", "roxford5k", "query").embeddings()
    db = st.features("e2e_resnet", "roxford5k", "database").embeddings()
    qn, dbn = (
        q / np.linalg.norm(q, axis=1, keepdims=True),
        db / np.linalg.norm(db, axis=1, keepdims=True),
    )
    want = revisited_map(qn @ dbn.T, gnd["gnd"])
    for setting in ("easy", "medium", "hard"):
        assert got[setting, "map"] == pytest.approx(want[setting]["map"], abs=1e-6)
    # asking for uncropped queries against bbx-cropped features is refused, naming the fix
    proc = bobx(
        "retrieve",
        "--backbone",
        "e2e_resnet",
        "--dataset",
        "roxford5k",
        "--query-crop",
        "none",
        store=store,
        check=False,
    )
    assert proc.returncode == 2 and "--query-crop none --overwrite" in proc.stderr

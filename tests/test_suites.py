"""Suites and plans: YAML specs validated like the catalogs, work items with their needs,
and each item's state read from a store alone (no model runs in this file)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import featcache
from featcache.errors import ManifestError, UnknownNameError
from featcache.executors.plan import plan_suite, record_failure, store_status
from featcache.leases import acquire, lease_key
from featcache.suites import WorkItem, expand_suite, get_suite, list_suites, suite_from_fields
from tests.test_end_to_end import TINY  # the tiny random-init timm backbones

SUITE = """
mini:
  description: two evaluations and a job
  backbones: [e2e_resnet]
  extract: {weights: random, limit: 300}
  grids:
    - datasets: [digits]
      evaluate:
        knn: {k: [10, 20]}
        probe: {fractions: [full, 0.1], seeds: [0, 1]}
        calibrate: {runs: [full]}
        retrieve: {}
      jobs:
        finetune: {recipe: quick}
        detect: {}
"""


@pytest.fixture
def manifests(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """$BOBX_MANIFESTS with a tiny backbone and a suite file written by the test."""
    root = tmp_path / "manifests"
    (root / "backbones").mkdir(parents=True)
    (root / "suites").mkdir()
    (root / "backbones" / "tiny.yaml").write_text(TINY)
    (root / "suites" / "mini.yaml").write_text(SUITE)
    monkeypatch.setenv("BOBX_MANIFESTS", str(root))

    def write(text: str, name: str = "mine.yaml") -> Path:
        path = root / "suites" / name
        path.write_text(text)
        return path

    return write


def _fields(text: str) -> tuple[str, dict]:
    import yaml

    ((name, fields),) = yaml.safe_load(text).items()
    return name, fields


# ----------------------------------------------------------------------------- specs
def test_packaged_suites_are_valid_and_expand() -> None:
    names = {s.name for s in list_suites()}
    assert {"digits", "bob_table3_small", "bob_table1"} <= names
    small = get_suite("bob_table3_small")
    assert small.backbones == (
        "sup_resnet18_in1k",
        "sup_efficientnet_b0_in1k",
        "sup_regnetx_400mf_in1k",
    )
    assert {"cifar100", "imagenet", "roxford5k", "cub200_retrieval"} <= set(small.datasets)
    items = expand_suite("digits")
    assert [i.id for i in items if i.backbone == "rand_resnet18"] == [
        "extract/rand_resnet18/digits/train",
        "extract/rand_resnet18/digits/test",
        "knn/rand_resnet18/digits/k10+20-t0.07-train",
        "probe/rand_resnet18/digits/full",
        "probe/rand_resnet18/digits/frac0.1-seed0",
        "retrieve/rand_resnet18/digits/label-test",
        "calibrate/rand_resnet18/digits/full-b15",
        "calibrate/rand_resnet18/digits/frac0.1-seed0-b15",
    ]


def test_expansion_needs_come_first_and_name_the_right_splits() -> None:
    items = expand_suite("bob_table3_small")
    seen: set[str] = set()
    for item in items:
        assert set(item.needs) <= seen, item.id
        seen.add(item.id)
    by_id = {i.id: i for i in items}
    bb = "sup_resnet18_in1k"
    # flowers102 has an official val split: the probe reads it, so it is extracted
    assert by_id[f"probe/{bb}/flowers102/full"].needs == (
        f"extract/{bb}/flowers102/train",
        f"extract/{bb}/flowers102/test",
        f"extract/{bb}/flowers102/val",
    )
    # ImageNet's test set is its val; the OOD probe needs the shifted sets' features too
    ood = by_id[f"probe/{bb}/imagenet/frac0.01-seed0"]
    assert ood.options["test_split"] == "val" and ood.options["val_split"] is None
    assert f"extract/{bb}/imagenet_a/test" in ood.needs
    # revisited Oxford: queries and database; label retrieval: the one split, leave-one-out
    assert by_id[f"retrieve/{bb}/roxford5k/revisited-bbx"].needs == (
        f"extract/{bb}/roxford5k/query",
        f"extract/{bb}/roxford5k/database",
    )
    assert by_id[f"retrieve/{bb}/inaturalist/label-val"].options["query_split"] == "val"
    assert by_id[f"calibrate/{bb}/cifar100/frac0.1-seed0-b15"].needs == (
        f"probe/{bb}/cifar100/frac0.1-seed0",
    )
    # chexpert's evaluation split is named in the suite (it has no test split)
    assert by_id[f"probe/{bb}/chexpert/full"].options["test_split"] == "valid"
    # jobs: robustness attacks the stored probe; speed runs once per backbone
    robust = by_id[f"job/{bb}/imagenet/robustness.default"]
    assert robust.needs == (f"probe/{bb}/imagenet/full",)
    assert [i.id for i in items if i.variant == "speed.default" and i.backbone == bb] == [
        f"job/{bb}/synthetic/speed.default"
    ]
    assert f"job/{bb}/cifar100/finetune.default" in by_id


def test_user_suite_with_seeds_shards_and_a_layer(manifests) -> None:
    manifests(
        """
sharded:
  backbones: [e2e_resnet]
  grids:
    - datasets: [digits]
      splits: {digits: [all]}
      shards: 3
      extract: {layer: "block:-1", weights: random}
"""
    )
    items = {i.id: i for i in expand_suite("mini")}
    probes = sorted(i.variant for i in items.values() if i.kind == "probe")
    assert probes == ["frac0.1-seed0", "frac0.1-seed1", "full", "full-seed1"]
    assert [i for i in items if i.startswith("calibrate/")] == [
        "calibrate/e2e_resnet/digits/full-b15"
    ]
    job = items["job/e2e_resnet/digits/finetune.quick"]
    assert job.options["recipe"] == "quick" and job.options["weights"] == "random"
    sharded = expand_suite("sharded")
    assert [i.id for i in sharded] == [
        f"extract/e2e_resnet@block-1/digits/all.shard-{k}-of-3" for k in range(3)
    ]
    assert sharded[2].options["shard_index"] == 2 and sharded[2].options["backbone"] == "e2e_resnet"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "x:\n  grids: [{datasets: [digits]}]\n  backbones: [e2e_resnet]\n  colour: red\n",
            "unknown field 'colour'",
        ),
        (
            "x:\n  backbones: [e2e_resnt]\n  grids: [{datasets: [digits]}]\n",
            "Did you mean 'e2e_resnet'",
        ),
        (
            "x:\n  backbones: [e2e_resnet]\n  grids: [{datasets: [digitz]}]\n",
            "Did you mean 'digits'",
        ),
        (
            "x:\n  backbones: [e2e_resnet]\n  grids: [{datasets: [digits], evaluate: {knnn: {}}}]\n",
            "did you mean 'knn'",
        ),
        (
            "x:\n  backbones: [e2e_resnet]\n  grids: [{datasets: [digits], evaluate: {knn: {kk: 3}}}]\n",
            "unknown field 'kk'",
        ),
        (
            "x:\n  backbones: [e2e_resnet]\n  grids: [{datasets: [digits], splits: [val]}]\n",
            "digits has no split 'val'",
        ),
        (
            "x:\n  backbones: [e2e_resnet]\n  grids: [{datasets: [digits], evaluate: {probe: {fractions: [2]}}}]\n",
            "fractions",
        ),
        (
            "x:\n  backbones: [e2e_resnet]\n  grids: [{datasets: [digits], jobs: {finetun: {}}}]\n",
            "did you mean 'finetune'",
        ),
        ("x:\n  backbones: [e2e_resnet]\n  grids: []\n", "'grids' must be a non-empty list"),
        (
            "x:\n  backbones: [e2e_resnet]\n  extract: {precision: fp64}\n  grids: [{datasets: [digits]}]\n",
            "precision",
        ),
    ],
)
def test_invalid_suites_are_refused_with_file_entry_and_fix(manifests, text, message) -> None:
    path = manifests(text)
    name, fields = _fields(text)
    with pytest.raises(ManifestError) as err:
        suite_from_fields(name, {**fields, "_source": str(path)})
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_validate_checks_suites_and_expansion(manifests) -> None:
    from featcache.backbones import validate_manifests

    assert validate_manifests(check_registries=False)["suites"]["problems"] == []
    manifests(
        "bad:\n  backbones: [e2e_resnet]\n  grids:\n    - datasets: [digits]\n"
        "      evaluate: {knn: {train_split: all, test_split: val}}\n"
    )
    report = validate_manifests(check_registries=False)["suites"]
    assert report["count"] >= 3
    (problem,) = report["problems"]
    assert "suite 'bad'" in problem and "no split 'val'" in problem


def test_unknown_suite_suggests() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'digits'"):
        get_suite("digitz")


def test_work_item_names_are_store_safe() -> None:
    with pytest.raises(featcache.InvalidNameError):
        WorkItem("extract", "../x", "digits", "train")
    item = expand_suite("digits")[3]
    assert WorkItem.from_dict(json.loads(json.dumps(item.to_dict()))) == item


# ----------------------------------------------------------------------------- plans
def _import(store: featcache.Store, backbone: str, split: str, n: int) -> None:
    rng = np.random.default_rng(0)
    store.import_features(
        backbone, "digits", split, rng.normal(size=(n, 8)), labels=np.arange(n) % 10
    )


def test_plan_states_come_from_the_store_alone(manifests, tmp_path: Path) -> None:
    store = featcache.open_store(str(tmp_path / "store"))
    plan = plan_suite(store, "mini")
    counts = plan.counts()
    assert counts["todo"] == len(plan.states) - 1 and counts["unavailable"] == 1
    (detect,) = [s for s in plan.states if s.state == "unavailable"]
    assert detect.item.id == "job/e2e_resnet/digits/detect.default"
    assert "needs a detection dataset; digits is a classification dataset" in detect.detail

    _import(store, "e2e_resnet", "train", 300)  # the train set: done
    writer = store.create_features(  # the test set: 1 of 2 chunks written
        "e2e_resnet", "digits", "test", n=300, dim=8, cache_key="k", chunk_rows=256
    )
    writer.write_chunk(0, np.zeros((256, 8)), labels=np.zeros(256, int), ids=["a"] * 256)
    lease = acquire(store, lease_key("retrieve", "e2e_resnet", "digits", "label-test"), ttl_s=30)
    failing = next(s.item for s in plan.states if s.item.variant == "full-seed1")
    record_failure(store, failing, "DataError: no images", attempt=1, executor="local")
    try:
        states = {s.item.id: s for s in plan_suite(store, "mini").states}
    finally:
        lease.release()
    assert states["extract/e2e_resnet/digits/train"].state == "done"
    test = states["extract/e2e_resnet/digits/test"]
    assert test.state == "partial" and test.detail == "1/2 chunks"
    retrieve = states["retrieve/e2e_resnet/digits/label-test"]
    assert retrieve.state == "leased" and retrieve.lease is not None
    assert "heartbeat" in retrieve.detail and retrieve.lease["pid"] > 0
    failed = states["probe/e2e_resnet/digits/full-seed1"]
    assert failed.state == "failed" and "no images" in failed.detail and failed.failures == 1

    # finish the test set and run kNN by hand (outside any suite): the records alone make
    # the kNN item done, when their knobs are the suite's
    from featcache.runners.classification import run_knn

    store.delete_features("e2e_resnet", "digits", "test")
    _import(store, "e2e_resnet", "test", 300)
    run_knn(store, "e2e_resnet", "digits", ks=(10, 20))
    states = {s.item.id: s for s in plan_suite(store, "mini").states}
    assert states["knn/e2e_resnet/digits/k10+20-t0.07-train"].state == "done"
    assert states["retrieve/e2e_resnet/digits/label-test"].state == "todo"  # released
    run_knn(store, "e2e_resnet", "digits", ks=(10,), temperature=0.1)  # other knobs: no match
    assert plan_suite(store, "mini").counts()["done"] == 3

    status = store_status(store)
    assert status["counts"]["done"] == 2 and status["counts"]["failed"] == 1
    assert status["failures"][0]["id"] == "probe/e2e_resnet/digits/full-seed1"


def test_unavailable_backbones_block_their_evaluations() -> None:
    states = plan_suite(featcache.open_store("memory://plan-sd"), "bob_table1").states
    sd = {s.item.id: s for s in states if s.item.backbone == "sd_laion2b"}
    assert sd["extract/sd_laion2b/cifar100/train"].state == "unavailable"
    assert "diffusers" in sd["extract/sd_laion2b/cifar100/train"].detail
    assert sd["knn/sd_laion2b/cifar100/k10+20+100+200-t0.07-train"].state == "blocked"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_plan_status_dry_run(manifests, tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    out = _cli("plan", "mini", "--json", "--store", store)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["suite"] == "mini" and plan["counts"]["unavailable"] == 1
    first = plan["items"][0]
    assert first["id"] == "extract/e2e_resnet/digits/train" and first["state"] == "todo"
    assert first["options"]["limit"] == 300
    out = _cli("status", "mini", "--store", store)
    assert out.returncode == 0 and "unavailable" in out.stdout
    out = _cli("status", "--store", store, "--json")
    assert json.loads(out.stdout)["counts"] == {"done": 0, "partial": 0, "leased": 0, "failed": 0}
    out = _cli("run", "mini", "--dry-run", "--store", store)
    assert out.returncode == 0 and "would run 10 of 11" in out.stdout
    out = _cli("plan", "nosuch", "--store", store)
    assert out.returncode == 2 and out.stderr.startswith("error: Unknown suite 'nosuch'")

"""Detection jobs end to end: tiny random-init timm models (a CNN and a ViT) train the
``detect_quick`` recipe for a few dozen updates on generated shapes, Sim10k-style VOC and
Cityscapes-style polygons; records, artifacts, the three protocols, kill-and-resume, the
CLI and the evaluation of outside predictions files."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import featcache
from evaluators.detection import AP_NAMES, coco_ap
from featcache.jobs import JobState
from tests import _imagegen as gen
from tests.test_cli_store import BOBX

ROOT = str(Path(__file__).resolve().parent.parent)
TINY = """
det_resnet:
  source: timm
  model: resnet10t
  resolution: 64
  style: random
det_vit:
  source: timm
  model: test_vit
  family: vit
  resolution: 64
  style: random
"""
DATASETS = """
shapes:
  format: coco
  splits: [train, val]
  num_classes: 3
  options: {annotations: "annotations/{split}.json", images: "images/{split}"}
"""
#: The quick recipe at the generated images' own 128 px.
SMALL = {"test_size": 128, "max_size": 128}
CPU = {"device": "cpu", "num_workers": 0, "batch_size": 4}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("det")
    (root / "cfg" / "backbones").mkdir(parents=True)
    (root / "cfg" / "datasets").mkdir()
    (root / "cfg" / "backbones" / "tiny.yaml").write_text(TINY)
    (root / "cfg" / "datasets" / "shapes.yaml").write_text(DATASETS)
    gen.make_coco_shapes(root / "shapes", {"train": 16, "val": 6})
    gen.make_voc(root / "sim10k", 8, size=(192, 112))
    gen.make_cityscapes(root / "cityscapes", "val", 4)
    mp = pytest.MonkeyPatch()
    mp.setenv("BOBX_MANIFESTS", str(root / "cfg"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI runs below (OMP_NUM_THREADS=1): same numbers
    yield {"root": root, "shapes": root / "shapes", "store": root / "store"}
    torch.set_num_threads(threads)
    mp.undo()


@pytest.fixture(scope="module")
def shapes_runs(env) -> dict[str, object]:
    """The CNN and the ViT, same recipe and knobs (one ranking setting), in one store."""
    from featcache.runners.detection import run_detection

    store = featcache.open_store(str(env["store"]))
    return {  # the ViT skips the per-epoch AP, which leaves its results (and params) alone
        bb: run_detection(
            store,
            bb,
            "shapes",
            recipe="quick",
            data_root=env["shapes"],
            overrides={**SMALL, "eval_each_epoch": bb == "det_resnet"},
            **CPU,
        )
        for bb in ("det_resnet", "det_vit")
    }


# ------------------------------------------------------------------------------ the model
def test_pyramids_of_a_cnn_and_a_vit(env):
    from featcache.detection.model import build_detector

    x = torch.zeros(1, 3, 96, 128)
    for backbone, neck, pyramid in (
        ("det_resnet", "bob", "fpn"),
        ("det_vit", "bob", "fpn_lastmap"),
        ("det_vit", "vitdet", "simple_pyramid"),
    ):
        model, info = build_detector(
            backbone, num_classes=3, masks=True, weights="random", neck=neck, fpn_channels=32
        )
        assert info.pyramid == pyramid and info.head == "mask_rcnn"
        with torch.no_grad():
            maps = model.backbone(x)
        assert list(maps) == ["0", "1", "2", "3", "pool"]
        assert [m.shape[-2:] for m in maps.values()] == [
            (24, 32),
            (12, 16),
            (6, 8),
            (3, 4),
            (2, 2),
        ]  # strides 4 .. 64
        assert all(m.shape[1] == 32 for m in maps.values())
    model, info = build_detector("det_vit", num_classes=1, masks=False, weights="random")
    assert info.head == "faster_rcnn" and info.strides == (16,)


def _steps(model, root: Path, n: int = 2) -> None:
    """``n`` real updates on generated shapes (images and targets from the reader)."""
    from featcache.datasets import get_dataset_spec, open_split
    from featcache.detection.data import DetectionDataset, collate
    from featcache.detection.engine import train_one_epoch

    split = open_split(get_dataset_spec("shapes"), "train", data_root=root)
    data = DetectionDataset(split, masks=True)
    batches = [collate([data[2 * k], data[2 * k + 1]]) for k in range(n)]
    params = [p for p in model.parameters() if p.requires_grad]
    stats = train_one_epoch(model, torch.optim.SGD(params, lr=0.01), batches)
    assert stats.updates == n and math.isfinite(stats.loss)


@pytest.mark.parametrize("protocol", ["frozen", "finetune", "scratch"])
def test_protocols_move_what_they_should(env, protocol):
    from featcache.detection.model import body_of, build_detector, state_checksum

    model, info = build_detector(
        "det_resnet",
        num_classes=3,
        masks=True,
        protocol=protocol,
        weights="random",
        min_size=128,
        max_size=128,
        fpn_channels=32,
        box_head_dim=64,
    )
    body = body_of(model)
    weights = {k: v.clone() for k, v in body.state_dict().items() if "running" not in k}
    stats = {k: v.clone() for k, v in body.state_dict().items() if "running_mean" in k}
    before = state_checksum(body)
    _steps(model, env["shapes"])
    after = body.state_dict()
    moved_w = any(not torch.equal(v, after[k]) for k, v in weights.items())
    moved_s = any(not torch.equal(v, after[k]) for k, v in stats.items())
    if protocol == "frozen":
        assert state_checksum(body) == before and info.trainable_params_m < info.params_m
    else:
        assert state_checksum(body) != before
    assert moved_w == (protocol != "frozen")
    assert moved_s == (protocol == "scratch")  # finetune keeps BatchNorm statistics (norm_eval)


# ------------------------------------------------------------------------------ the job
def test_quick_recipe_trains_records_and_keeps_predictions(env, shapes_runs):
    store = featcache.open_store(str(env["store"]))
    result = shapes_runs["det_resnet"]
    point = result.sweep.points[0]
    curve = point.curve
    assert len(curve) == 6 and all(math.isfinite(r["train_loss"]) for r in curve)
    assert curve[-1]["train_loss_objectness"] < curve[0]["train_loss_objectness"]
    # learning: from nothing after the first epoch to a real detector after 24 updates
    assert curve[0]["val_ap_box"] < 0.02 and point.metrics["ap50_box"] > 0.15
    keys = {f"{n}_{s}" for n in AP_NAMES for s in ("box", "mask")}
    assert keys <= set(point.metrics)
    recs = {(r.task, r.metric): r for r in result.records}
    finite = {k for k in keys if not math.isnan(point.metrics[k])}
    assert {m for _, m in recs} == finite and "apl_box" not in finite  # no large shapes
    assert {t for t, _ in recs} == {"detection", "segmentation"}
    rec = recs["detection", "ap_box"]
    assert rec.split == "val" and rec.higher_is_better and rec.cache_key == point.run_id
    assert rec.params["protocol"] == "finetune" and rec.params["recipe"] == "detect_quick"
    assert rec.params["test_size"] == 128 and "lr" not in rec.params  # backbone-free params
    assert "eval_each_epoch" not in rec.params
    rows = json.loads(
        store.get_artifact_file(
            "detection_predictions", "det_resnet", "shapes", point.run_id, "predictions.json"
        )
    )
    _, attrs = store.get_artifact("detection_predictions", "det_resnet", "shapes", point.run_id)
    assert attrs["detector"]["pyramid"] == "fpn" and attrs["n_predictions"] == len(rows)
    from featcache.runners.detection import open_detection_split

    gt = open_detection_split("shapes", "val", data_root=env["shapes"]).ground_truth
    assert coco_ap(gt, rows)["ap_box"] == rec.value  # the kept file is what was scored
    assert coco_ap(gt, rows, iou_type="segm")["ap_mask"] == recs["segmentation", "ap_mask"].value
    arrays, _ = store.get_artifact("detection_curve", "det_resnet", "shapes", point.run_id)
    assert len(arrays["epoch"]) == 6


def test_vit_job_and_ranking(env, shapes_runs):
    from featcache.runners.ranking import rank_store

    vit = shapes_runs["det_vit"]
    assert all(math.isfinite(r["train_loss"]) for r in vit.sweep.points[0].curve)
    store = featcache.open_store(str(env["store"]))
    _, attrs = store.get_artifact(
        "detection_predictions", "det_vit", "shapes", vit.sweep.points[0].run_id
    )
    assert attrs["detector"]["pyramid"] == "fpn_lastmap"
    table = rank_store(store, n_boot=50)
    det = table[table["task"] == "detection"]
    assert set(det["backbone"]) == {"det_resnet", "det_vit"}
    assert set(table["task"]) >= {"detection", "segmentation", "overall"}


def test_finished_job_is_cached(env, shapes_runs):
    from featcache.runners.detection import run_detection

    again = run_detection(
        featcache.open_store(str(env["store"])),
        "det_resnet",
        "shapes",
        recipe="quick",
        data_root=env["shapes"],
        overrides={**SMALL, "eval_each_epoch": True},
        **CPU,
    )
    assert again.status == "cached"
    assert [r.id for r in again.records] == [r.id for r in shapes_runs["det_resnet"].records]


def _main(args: list[str]) -> int:
    """``bobx`` in this process (the console script's own entry point); its exit status."""
    import cli

    with pytest.raises(SystemExit) as info:
        cli.main(args)
    return int(info.value.code or 0)


def _cli(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    cmd = [BOBX] if BOBX else [sys.executable, "-m", "cli"]
    proc = subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _detect_args(env, store: Path, *extra: str) -> list[str]:
    return [
        "detect",
        "--backbone",
        "det_resnet",
        "--dataset",
        "shapes",
        "--data-root",
        str(env["shapes"]),
        "--recipe",
        "quick",
        "--set",
        "test_size=128",
        "--set",
        "max_size=128",
        "--epochs",
        "2",
        "--set",
        "eval_each_epoch=false",
        "--limit",
        "8",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--store",
        str(store),
        *extra,
    ]


def test_killed_job_resumes_bit_identical(env, tmp_path):
    from featcache.runners.detection import run_detection

    ref = run_detection(
        featcache.open_store(str(tmp_path / "ref")),
        "det_resnet",
        "shapes",
        recipe="quick",
        data_root=env["shapes"],
        overrides={**SMALL, "epochs": 2, "eval_each_epoch": False},
        limit=8,
        device="cpu",
        num_workers=0,
        batch_size=2,
    )
    store = tmp_path / "store"
    cmd = [BOBX] if BOBX else [sys.executable, "-m", "cli"]
    proc = subprocess.Popen(
        [*cmd, *_detect_args(env, store, "--checkpoint-every", "1")],
        env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while not list(store.glob("jobs/detection-*/checkpoints/*.json")):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_id = ref.sweep.selected
    st = featcache.open_store(str(store))
    assert JobState(st, run_id).done() is None and JobState(st, run_id).checkpoint_steps()
    out = _cli(*_detect_args(env, store, "--json"))
    got = {(r["task"], r["metric"]): r["value"] for r in json.loads(out.stdout)}
    want = {(r.task, r.metric): r.value for r in ref.records}
    assert got == want  # bit-identical to the run that was never interrupted
    done = JobState(st, run_id).done()
    assert done["resumed_from"] >= 1

    def untimed(curve):
        return [{k: v for k, v in row.items() if k != "images_per_s"} for row in curve]

    assert untimed(done["curve"]) == untimed(ref.sweep.points[0].curve)


def test_sim10k_to_cityscapes_and_outside_predictions(env, tmp_path, capsys):
    """Train box-only on Sim10k-style VOC (frozen backbone), score Cityscapes-style cars;
    then score the kept predictions file again as an outside tool's."""
    store = tmp_path / "store"
    base = ["--store", str(store), "--json"]
    status = _main(
        [
            "detect",
            "--backbone",
            "det_resnet",
            "--dataset",
            "sim10k",
            "--data-root",
            str(env["root"] / "sim10k"),
            "--eval-on",
            f"cityscapes={env['root'] / 'cityscapes'}",
            "--protocol",
            "frozen",
            "--recipe",
            "quick",
            "--epochs",
            "2",
            "--set",
            "test_size=256",
            "--set",
            "max_size=256",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--num-workers",
            "0",
            *base,
        ]
    )
    assert status == 0
    recs = json.loads(capsys.readouterr().out)
    assert [(r["task"], r["dataset"], r["split"], r["metric"]) for r in recs] == [
        ("ood_detection", "cityscapes", "val", "ap50")
    ]
    rec = recs[0]
    assert rec["params"]["train"] == "sim10k" and rec["params"]["protocol"] == "frozen"
    assert 0.0 <= rec["value"] <= 1.0
    st = featcache.open_store(str(store))
    run_id = rec["cache_key"]
    _, attrs = st.get_artifact("detection_predictions", "det_resnet", "cityscapes", run_id)
    assert attrs["body_checksum_before"] == attrs["body_checksum_after"]  # frozen
    assert attrs["detector"]["head"] == "faster_rcnn"
    data = st.get_artifact_file(
        "detection_predictions", "det_resnet", "cityscapes", run_id, "predictions.json"
    )
    assert json.loads(data), "no detection at all: the re-scoring below would be trivial"
    preds = tmp_path / "preds.json"
    preds.write_bytes(data)
    status = _main(
        [
            "detect",
            "--eval-only",
            "--predictions",
            str(preds),
            "--backbone",
            "other_tool",
            "--dataset",
            "cityscapes",
            "--data-root",
            str(env["root"] / "cityscapes"),
            "--trained-on",
            "sim10k",
            "--protocol",
            "frozen",
            *base,
        ]
    )
    assert status == 0
    again = json.loads(capsys.readouterr().out)
    assert [(r["task"], r["metric"], r["value"]) for r in again] == [
        ("ood_detection", "ap50", rec["value"])
    ]
    assert again[0]["params"]["train"] == "sim10k"


def test_eval_only_scores_a_coco_results_file(env, tmp_path, capsys):
    from featcache.runners.detection import open_detection_split

    gt = open_detection_split("shapes", "val", data_root=env["shapes"]).ground_truth
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1}
        for a in gt["annotations"]
    ]
    path = tmp_path / "perfect.json"
    path.write_text(json.dumps(perfect))
    args = ["detect", "--eval-only", "--dataset", "shapes", "--data-root", str(env["shapes"])]
    store = ["--store", str(tmp_path / "s"), "--json"]
    assert _main([*args, "--predictions", str(path), "--backbone", "mmdet_model", *store]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert {r["metric"]: r["value"] for r in recs}["ap_box"] == 1.0
    assert all(r["task"] == "detection" and r["split"] == "val" for r in recs)
    assert recs[0]["cache_key"].startswith("sha256:")
    perfect[4]["image_id"] = 4242
    path.write_text(json.dumps(perfect))
    assert _main([*args, "--predictions", str(path), "--backbone", "mmdet_model", *store]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: prediction 4 (image id 4242)") and "\n" not in err


def test_bad_annotations_stop_detect_with_one_line(env, tmp_path, capsys):
    import shutil

    root = tmp_path / "shapes"
    shutil.copytree(env["shapes"], root)
    path = root / "annotations" / "train.json"
    doc = json.loads(path.read_text())
    doc["annotations"][5]["bbox"] = [120.0, 4.0, 30.0, 10.0]
    path.write_text(json.dumps(doc))
    image_id = doc["annotations"][5]["image_id"]
    args = ["detect", "--backbone", "det_resnet", "--dataset", "shapes", "--data-root", str(root)]
    assert _main([*args, "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"image id {image_id}" in err and "outside the 128x128 image" in err
    assert str(path) in err and "\n" not in err
    # a classification dataset is not a detection one
    assert _main(["detect", "--backbone", "det_resnet", "--dataset", "digits"]) == 2
    assert "is a classification dataset" in capsys.readouterr().err


# ------------------------------------------------------------------------------ long / GPU
@pytest.mark.slow
def test_overfits_two_images(env, tmp_path):
    """Train and evaluate on the same two images: box AP50 well above 0.5."""
    import shutil

    from featcache.runners.detection import run_detection

    root = tmp_path / "two"
    gen.make_coco_shapes(root, {"train": 2}, seed=5)
    shutil.copy(root / "annotations" / "train.json", root / "annotations" / "val.json")
    shutil.copytree(root / "images" / "train", root / "images" / "val")
    out = run_detection(
        featcache.open_store(str(tmp_path / "s")),
        "det_resnet",
        "shapes",
        recipe="quick",
        data_root=root,
        overrides={**SMALL, "epochs": 60, "batch_size": 2, "eval_each_epoch": False},
        device="cpu",
        num_workers=0,
        batch_size=2,
    )
    assert out.sweep.points[0].metrics["ap50_box"] > 0.5


def _cuda() -> bool:
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_autocast_and_accumulation(env, tmp_path, precision):
    """The CUDA path: autocast (a GradScaler for fp16), micro-batches of 2 accumulated to
    the recipe's batch of 8, masks, and a frozen ViT whose checksum holds on the GPU."""
    from featcache.runners.detection import run_detection

    for backbone, protocol in (("det_resnet", "finetune"), ("det_vit", "frozen")):
        out = run_detection(
            featcache.open_store(str(tmp_path / f"{precision}-{backbone}")),
            backbone,
            "shapes",
            protocol=protocol,
            recipe="quick",
            data_root=env["shapes"],
            overrides={**SMALL, "batch_size": 8, "epochs": 4},
            device="cuda",
            precision=precision,
            batch_size=2,
            num_workers=2,
        )
        point = out.sweep.points[0]
        assert all(math.isfinite(r["train_loss"]) for r in point.curve)
        assert out.records and all(math.isfinite(r.value) for r in out.records)
        assert out.records[0].params["precision"] == precision
        _, attrs = featcache.open_store(str(tmp_path / f"{precision}-{backbone}")).get_artifact(
            "detection_predictions", backbone, "shapes", point.run_id
        )
        if protocol == "frozen":
            assert attrs["body_checksum_before"] == attrs["body_checksum_after"]
    assert np.isfinite(point.metrics["ap_box"])

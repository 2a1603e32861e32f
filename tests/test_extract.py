"""Extraction end to end on tiny random-init models and generated images (CPU, offline).

The oracle everywhere is a plain forward pass: the library's own model and transform,
built here independently of featcache.models, applied to the split's images one by one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import featcache
from featcache import provenance
from featcache.backbones import get_backbone_spec
from featcache.datasets import get_dataset_spec, open_split
from featcache.errors import DataError, IncompleteError, StaleCacheError, UnknownNameError
from featcache.extract import chunk_batches, extract, shard_chunks
from tests import _imagegen as gen

TINY = """
tiny_vit:
  source: timm
  model: test_vit
  model_kwargs: {img_size: 32}
  resolution: 32
  family: vit
  style: random
tiny_resnet:
  source: timm
  model: resnet10t
  resolution: 32
  style: random
slow_resnet:          # slow enough on CPU to be killed half-way
  source: timm
  model: resnet10t
  resolution: 96
  style: random
tiny_clip:
  source: open_clip
  model: ViT-S-32
  resolution: 64
  family: vit
  style: random
tiny_vit_mocov3:      # a published-checkpoint entry in MoCo v3's key layout
  source: checkpoint
  model: test_vit
  model_kwargs: {img_size: 32}
  url: https://example.invalid/tiny-vit-300ep.pth.tar
  key_map: mocov3
  resolution: 32
  family: vit
  method: mocov3
  style: self-supervised
"""


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("manifests")
    (root / "backbones").mkdir()
    (root / "backbones" / "tiny.yaml").write_text(TINY)
    return root


@pytest.fixture(autouse=True)
def _use_manifests(monkeypatch: pytest.MonkeyPatch, manifests: Path) -> None:
    monkeypatch.setenv("BOBX_MANIFESTS", str(manifests))


def mem() -> featcache.Store:
    return featcache.open_store(f"memory://{uuid.uuid4().hex}")


def run(store: Any, backbone: str, dataset: str = "digits", **kw: Any) -> list[Any]:
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", False)
    kw.setdefault("num_workers", 0)
    return extract(store, backbone, dataset, **kw)


def direct(backbone: str, images: list[Any], *, seed: int = 0) -> np.ndarray:
    """Plain forward of ``backbone``'s random init (seeded as the catalog says)."""
    spec = get_backbone_spec(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.source == "open_clip":
            import open_clip

            model, _, pre = open_clip.create_model_and_transforms(
                spec.model, pretrained=None, force_image_size=spec.resolution
            )
            forward: Callable[[torch.Tensor], torch.Tensor] = model.encode_image
        else:
            import timm
            from timm.data import create_transform, resolve_model_data_config

            model = timm.create_model(
                spec.model, pretrained=False, num_classes=0, **dict(spec.model_kwargs)
            )
            cfg = resolve_model_data_config(model)
            cfg["input_size"] = (3, spec.resolution, spec.resolution)
            pre = create_transform(**cfg, is_training=False)
            forward = model
    model.eval()
    with torch.no_grad():
        return forward(torch.stack([pre(im) for im in images])).numpy()


def assert_fp16_close(stored: np.ndarray, expected: np.ndarray) -> None:
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-3 * scale)


def arrays(store: featcache.Store, backbone: str, dataset: str, split: str) -> dict[str, Any]:
    fs = store.features(backbone, dataset, split)
    return {
        "x": fs.embeddings(dtype=None),
        "y": fs.labels(),
        "ids": fs.ids(),
        "valid": fs.valid(),
    }


def assert_same_sets(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["x"].dtype == b["x"].dtype
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# --------------------------------------------------------------------------- layouts
def _csv(root: Path) -> None:
    rows = [(f"img/{i}.jpg", i % 3, "train" if i < 6 else "test") for i in range(9)]
    gen.make_csv_dataset(root, rows)


def _imagenet(root: Path) -> None:
    from featcache.datasets.imagenet_info import in1k_wnids

    gen.make_imagenet(root, in1k_wnids()[:3], per_class=2)


LAYOUTS: dict[str, tuple[str, Callable[[Path], Any] | None]] = {
    "digits": ("test", None),
    "image_folder": ("test", lambda r: gen.make_folder_dataset(r, 3, 3, splits=["test"])),
    "image_csv": ("train", _csv),
    "image_shards": ("train", lambda r: gen.make_webdataset(r, shards=2, per_shard=3)),
    "cifar10": ("test", lambda r: gen.make_cifar(r, n_train=4, n_test=6)),
    "eurosat": ("test", lambda r: gen.make_eurosat(r, per_class=5)),
    "flowers102": ("train", lambda r: gen.make_flowers102(r, n=12, n_classes=3)),
    "chexpert": ("valid", lambda r: gen.make_chexpert(r)),
    "visda": ("real", lambda r: gen.make_visda(r)),
    "cub200": ("test", lambda r: gen.make_cub(r)),
    "imagenet": ("val", _imagenet),
    "roxford5k": ("query", lambda r: gen.make_roxford(r)),
}


def make_layout(dataset: str, tmp_path: Path) -> tuple[str, Path | None]:
    """Write the dataset's generated files under tmp_path: (split to extract, data root)."""
    split_name, make = LAYOUTS[dataset]
    if make is None:  # built in (digits)
        return split_name, None
    make(tmp_path)
    return split_name, tmp_path


@pytest.mark.parametrize("dataset", list(LAYOUTS))
def test_features_equal_a_direct_forward_in_every_layout(dataset: str, tmp_path: Path) -> None:
    split_name, root = make_layout(dataset, tmp_path)
    store = mem()
    [res] = run(
        store,
        "tiny_vit",
        dataset,
        splits=[split_name],
        data_root=root,
        limit=40,
        chunk_rows=16,
        batch_size=8,
    )
    assert res.status == "complete" and res.images == res.n
    split = open_split(get_dataset_spec(dataset), split_name, data_root=root, limit=40)
    got = arrays(store, "tiny_vit", dataset, split_name)
    assert got["ids"].tolist() == split.ids
    np.testing.assert_array_equal(got["y"], split.labels)
    assert got["valid"].all()
    assert_fp16_close(got["x"], direct("tiny_vit", [split.load(i) for i in range(len(split))]))


@pytest.mark.parametrize(("dataset", "layer"), [("image_folder", None), ("digits", "block:-2")])
def test_open_clip_backbone_equals_a_direct_forward(
    dataset: str, layer: str | None, tmp_path: Path
) -> None:
    split_name, root = make_layout(dataset, tmp_path)
    store = mem()
    [res] = run(
        store, "tiny_clip", dataset, splits=[split_name], data_root=root, limit=12, layer=layer
    )
    split = open_split(get_dataset_spec(dataset), split_name, data_root=root, limit=12)
    got = arrays(store, res.backbone, dataset, split_name)["x"]
    if layer is None:
        assert res.dim == 384
        assert_fp16_close(got, direct("tiny_clip", [split.load(i) for i in range(len(split))]))
    else:  # an intermediate block, spatially averaged: same width, different numbers
        assert res.backbone == "tiny_clip@block-2"
        assert res.dim == 384 and not np.allclose(got, 0)


def test_multilabel_labels_and_metadata_are_stored(tmp_path: Path) -> None:
    gen.make_chexpert(tmp_path)
    store = mem()
    run(store, "tiny_resnet", "chexpert", data_root=tmp_path)
    for split in ("train", "valid"):
        fs = store.features("tiny_resnet", "chexpert", split)
        truth = open_split(get_dataset_spec("chexpert"), split, data_root=tmp_path)
        assert fs.multilabel and fs.labels().dtype == np.int8
        np.testing.assert_array_equal(fs.labels(), truth.labels)
        attrs = fs.spec["attrs"]
        assert attrs["backbone"]["name"] == "tiny_resnet"
        assert attrs["weights"] == {"kind": "random", "seed": 0}
        assert attrs["preprocess"]["data_config"]["input_size"] == [3, 32, 32]
        assert attrs["ids_digest"] == truth.ids_digest()
        assert fs.cache_key == provenance.digest(attrs["cache_recipe"])


# ------------------------------------------------------------------- cache and resume
def test_complete_set_is_not_recomputed_and_the_key_guards_it(monkeypatch) -> None:
    store = mem()
    [first] = run(store, "tiny_resnet", splits=["test"], limit=50, chunk_rows=16)
    assert first.status == "complete" and first.chunks_written == 4

    import featcache.models

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("a cached set must not load the model")

    with monkeypatch.context() as patch:
        patch.setattr(featcache.models, "load_backbone", boom)
        [again] = run(store, "tiny_resnet", splits=["test"], limit=50, chunk_rows=16)
        assert again.status == "cached" and again.chunks_written == 0
        assert again.cache_key == first.cache_key
        with pytest.raises(StaleCacheError, match="--overwrite"):
            run(store, "tiny_resnet", splits=["test"], limit=50, dtype="float32")
    [other] = run(store, "tiny_resnet", splits=["test"], limit=50, dtype="float32", overwrite=True)
    assert other.status == "complete" and other.cache_key != first.cache_key
    speed = store.results(task="speed")
    assert len(speed) == 2 and set(speed["metric"]) == {"images_per_s"}
    assert speed["higher_is_better"].all() and (speed["value"] > 0).all()
    assert json.loads(speed["params"].iloc[0])["device"] == "cpu"


def test_each_knob_that_changes_bytes_changes_the_key() -> None:
    keys = set()
    for kw in (
        {},
        {"precision": "bf16"},
        {"dtype": "float32"},
        {"layer": "block:2"},
        {"weights": "random", "seed": 1},
        {"limit": 9},
    ):
        [r] = run(mem(), "tiny_resnet", splits=["test"], **{"limit": 10, **kw})
        keys.add(r.cache_key)
    assert len(keys) == 6
    [a] = run(mem(), "tiny_resnet", splits=["test"], limit=10, batch_size=3, num_workers=1)
    [b] = run(mem(), "tiny_resnet", splits=["test"], limit=10)
    assert a.cache_key == b.cache_key  # batch size and workers are provenance, not key


def test_another_feature_point_is_stored_beside_the_default() -> None:
    store = mem()
    [a] = run(store, "tiny_resnet", splits=["test"], limit=8)
    [b] = run(store, "tiny_resnet", splits=["test"], limit=8, layer="block:2")
    [c] = run(store, "tiny_resnet@block2", splits=["test"], limit=8)
    assert (a.backbone, b.backbone, c.status) == ("tiny_resnet", "tiny_resnet@block2", "cached")
    assert b.dim == 128 and a.dim == 512 and b.cache_key == c.cache_key
    assert get_backbone_spec("tiny_resnet@block:2").name == "tiny_resnet@block2"
    assert get_backbone_spec("tiny_resnet@pooled").name == "tiny_resnet"
    with pytest.raises(UnknownNameError):
        get_backbone_spec("tiny_resnet@layer3")


def test_shards_cover_every_chunk_exactly_once() -> None:
    for n in range(0, 30):
        for shards in range(1, 7):
            parts = [shard_chunks(n, i, shards) for i in range(shards)]
            assert sorted(c for p in parts for c in p) == list(range(n))
    with pytest.raises(UnknownNameError):
        shard_chunks(4, 2, 2)


def test_batches_stay_inside_chunks() -> None:
    class W:
        n, chunk_rows = 37, 16

        def chunk_range(self, i: int) -> tuple[int, int]:
            return i * 16, min(37, i * 16 + 16)

    batches = chunk_batches(W(), [2, 0], 6)  # type: ignore[arg-type]
    assert batches == [
        [32, 33, 34, 35, 36],
        list(range(0, 6)),
        list(range(6, 12)),
        list(range(12, 16)),
    ]


def _cli(*args: str, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def _env(manifests: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "BOBX_MANIFESTS": str(manifests), **extra}


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path: Path, manifests: Path) -> None:
    url = str(tmp_path / "store")
    args = [
        "extract",
        "--backbone",
        "slow_resnet",
        "--dataset",
        "digits",
        "--split",
        "test",
        "--limit",
        "160",
        "--chunk-rows",
        "8",
        "--batch-size",
        "4",
        "--num-workers",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--store",
        url,
    ]
    folder = tmp_path / "store/features/slow_resnet/digits/test"
    pattern = "*/_bobx/chunks/*.json"  # <generation>/_bobx/chunks/<i>.json
    proc = subprocess.Popen(
        _cli(*args), env=_env(manifests), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if folder.is_dir() and len(list(folder.glob(pattern))) >= 2:
            break  # 2 of 20 chunks written: kill it mid-way
        time.sleep(0.005)
    assert proc.poll() is None, "extraction ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    store = featcache.open_store(url)
    with pytest.raises(IncompleteError, match="re-run"):
        store.features("slow_resnet", "digits", "test")
    done = len(list(folder.glob(pattern)))
    [res] = run(url, "slow_resnet", splits=["test"], limit=160, chunk_rows=8, batch_size=4)
    assert res.status == "complete" and res.chunks_written == res.chunks_total - done
    reference = mem()
    run(reference, "slow_resnet", splits=["test"], limit=160, chunk_rows=8, batch_size=4)
    assert_same_sets(
        arrays(featcache.open_store(url), "slow_resnet", "digits", "test"),
        arrays(reference, "slow_resnet", "digits", "test"),
    )


def test_two_concurrent_shards_equal_one_unsharded_run(tmp_path: Path, manifests: Path) -> None:
    url = str(tmp_path / "store")
    procs = [
        subprocess.Popen(
            _cli(
                "extract",
                "--backbone",
                "tiny_resnet",
                "--dataset",
                "digits",
                "--split",
                "test",
                "--limit",
                "200",
                "--chunk-rows",
                "32",
                "--shard-index",
                str(i),
                "--num-shards",
                "2",
                "--device",
                "cpu",
                "--no-progress",
                "--json",
                "--store",
                url,
            ),
            env=_env(manifests),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    results = [json.loads(o[0])[0] for o in outs]
    assert sum(r["chunks_written"] for r in results) == 7  # 200 rows / 32, each once
    assert {r["status"] for r in results} <= {"complete", "partial"}
    reference = mem()
    run(reference, "tiny_resnet", splits=["test"], limit=200, chunk_rows=32)
    store = featcache.open_store(url)
    assert_same_sets(
        arrays(store, "tiny_resnet", "digits", "test"),
        arrays(reference, "tiny_resnet", "digits", "test"),
    )
    assert len(store.results(task="speed")) == 2


# ---------------------------------------------------------------------- bad images
def test_corrupt_jpeg_is_named_or_masked(tmp_path: Path) -> None:
    gen.make_folder_dataset(tmp_path, classes=2, per_class=6, splits=["test"])
    clean = mem()
    run(clean, "tiny_vit", "image_folder", splits=["test"], data_root=tmp_path, chunk_rows=4)
    bad = tmp_path / "test" / "class_1" / "img_002.jpg"
    gen.write_corrupt_jpeg(bad)
    store = mem()
    with pytest.raises(DataError) as err:
        run(store, "tiny_vit", "image_folder", splits=["test"], data_root=tmp_path, chunk_rows=4)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(IncompleteError):
        store.features("tiny_vit", "image_folder", "test")
    [res] = run(
        store,
        "tiny_vit",
        "image_folder",
        splits=["test"],
        data_root=tmp_path,
        chunk_rows=4,
        on_bad_image="skip",
    )
    assert res.status == "complete" and res.n_invalid == 1
    fs = store.features("tiny_vit", "image_folder", "test")
    ref = arrays(clean, "tiny_vit", "image_folder", "test")
    got = arrays(store, "tiny_vit", "image_folder", "test")
    row = got["ids"].tolist().index("test/class_1/img_002.jpg")
    assert not got["valid"][row] and got["valid"].sum() == 11 and fs.n_invalid == 1
    assert not got["x"][row].any()
    keep = np.arange(12) != row
    np.testing.assert_array_equal(got["x"][keep], ref["x"][keep])  # no other row moved
    np.testing.assert_array_equal(got["ids"], ref["ids"])
    assert fs.completion["invalid_ids"] == ["test/class_1/img_002.jpg"]
    x, y, ids = fs.load()
    assert len(x) == len(y) == len(ids) == 11


# -------------------------------------------------------------------------- retrieval
def test_roxford_queries_cropped_to_bbx_and_ground_truth_in_store(tmp_path: Path) -> None:
    gnd = gen.make_roxford(tmp_path, n_db=8, n_q=3)
    store = mem()
    results = run(store, "tiny_vit", "roxford5k", data_root=tmp_path)
    assert [r.split for r in results] == ["database", "query"]
    assert store.get_meta("roxford5k", "gnd") == [
        {**g, "bbx": [float(v) for v in g["bbx"]]} for g in gnd["gnd"]
    ]
    assert store.get_meta("roxford5k", "qimlist") == gnd["qimlist"]
    cropped = arrays(store, "tiny_vit", "roxford5k", "query")["x"]
    spec = get_backbone_spec("tiny_vit")
    q = open_split(get_dataset_spec("roxford5k"), "query", data_root=tmp_path)
    assert q.load(0).size != (48, 40)
    assert_fp16_close(cropped, direct(spec.name, [q.load(i) for i in range(len(q))]))
    whole = mem()
    run(whole, "tiny_vit", "roxford5k", splits=["query"], data_root=tmp_path, query_crop="none")
    uncropped = arrays(whole, "tiny_vit", "roxford5k", "query")["x"]
    assert not np.allclose(cropped.astype(np.float32), uncropped.astype(np.float32), atol=1e-2)
    fs = whole.features("tiny_vit", "roxford5k", "query")
    assert fs.spec["attrs"]["reader_params"] == {"query_crop": "none"}


def test_malicious_gnd_pickle_is_refused(tmp_path: Path) -> None:
    gen.make_roxford(tmp_path)
    marker = tmp_path / "pwned"
    gen.write_malicious_pickle(tmp_path / "roxford5k" / "gnd_roxford5k.pkl", marker)
    store = mem()
    with pytest.raises(DataError):
        run(store, "tiny_vit", "roxford5k", data_root=tmp_path)
    assert not marker.exists() and store.list_features() == []


# ------------------------------------------------------------------------ checkpoints
def test_checkpoints_load_back_by_path_with_identical_features(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    store = mem()
    [ref] = run(store, "tiny_vit", splits=["test"], limit=20, weights="random", seed=7)
    assert ref.backbone == "tiny_vit@seed7"  # not the catalog seed: its own name
    expected = arrays(store, ref.backbone, "digits", "test")
    torch.manual_seed(7)
    sd = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32).state_dict()
    files = {
        "tiny_vit": [tmp_path / "w.safetensors", tmp_path / "w.pth"],
        "tiny_vit_mocov3": [tmp_path / "moco.pth.tar"],
    }
    save_file(sd, str(files["tiny_vit"][0]))
    torch.save({**sd, "head.weight": torch.zeros(1000, 64)}, files["tiny_vit"][1])
    torch.save(
        {
            "epoch": 300,
            "arch": "vit_small",
            "optimizer": {"lr": 1.5e-4},
            "state_dict": {
                **{f"module.base_encoder.{k}": v for k, v in sd.items()},
                **{f"module.momentum_encoder.{k}": v * 0 for k, v in sd.items()},
                "module.base_encoder.head.0.weight": torch.ones(8, 64),
            },
        },
        files["tiny_vit_mocov3"][0],
    )
    for backbone, paths in files.items():
        for path in paths:
            st = mem()
            [res] = run(st, backbone, splits=["test"], limit=20, weights=str(path))
            assert res.cache_key != ref.cache_key
            assert res.backbone == f"{backbone}@w-{provenance.sha256_file(path)[:8]}"
            np.testing.assert_array_equal(
                arrays(st, res.backbone, "digits", "test")["x"], expected["x"]
            )
            weights = st.features(res.backbone, "digits", "test").spec["attrs"]["weights"]
            assert weights["sha256"] == provenance.sha256_file(path)
            assert weights["path"] == str(path.resolve())
    wrong = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("resnet10t", num_classes=0).state_dict(), str(wrong))
    with pytest.raises(DataError, match="does not fit"):
        run(mem(), "tiny_vit", splits=["test"], limit=4, weights=str(wrong))


@pytest.mark.parametrize("backbone", ["sup_resnet18_in1k", "clip_resnet50_openai"])
def test_offline_pretrained_is_one_clear_line_and_writes_nothing(
    backbone: str, tmp_path: Path, manifests: Path
) -> None:
    url = str(tmp_path / "store")
    args = ["extract", "--backbone", backbone, "--limit", "4", "--no-progress", "--store", url]
    proc = subprocess.run(
        _cli(*args),
        env=_env(manifests, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert backbone in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    assert "network access" in lines[0] and "--weights PATH" in lines[0]
    assert featcache.open_store(url).list_features() == []

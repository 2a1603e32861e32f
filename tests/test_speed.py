"""`bobx speed`: throughput, latency, memory, FLOPs; sane records with directions."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from featcache.training.timing import count_gflops, measure_speed
from tests._tiny import tiny_manifests
from tests.test_cli_store import bobx


def test_flop_count_of_known_layers():
    lin = nn.Linear(64, 10)
    assert count_gflops(lin, torch.zeros(1, 64)) == pytest.approx(2 * 64 * 10 / 1e9)
    conv = nn.Conv2d(3, 8, 3, bias=False)
    # 8 x 3 x 3 x 3 multiply-adds at each of 6 x 6 outputs, 2 FLOPs each
    assert count_gflops(conv, torch.zeros(1, 3, 8, 8)) == pytest.approx(2 * 8 * 27 * 36 / 1e9)


def test_measure_speed_is_sane():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    out = measure_speed(
        net,
        input_size=(3, 64, 64),
        batch_sizes=(1, 16),
        device="cpu",
        warmup=1,
        repeats=3,
        iters=2,
        latency_runs=10,
        make_input=lambda bs: torch.rand(bs, 3, 64, 64),
    )
    assert set(out["throughput"]) == {1, 16} and min(out["throughput"].values()) > 0
    assert 0 < out["latency_p50_ms"] <= out["latency_p95_ms"]
    assert out["gflops"] == pytest.approx(2 * 16 * 27 * 64 * 64 / 1e9, rel=0.01)
    assert out["params_m"] == pytest.approx((16 * 27 + 16) / 1e6)
    assert out["memory"] == "rss_delta" and all(v >= 0 for v in out["peak_memory_mb"].values())


def test_speed_records(tmp_path, monkeypatch):
    monkeypatch.setenv("BOBX_MANIFESTS", str(tiny_manifests(tmp_path / "m", "sp")))
    rows = json.loads(
        bobx(
            "speed", "--backbone", "sp_resnet", "--backbone", "sp_vit", "--batch-size", "1,4",
            "--device", "cpu", "--repeats", "2", "--json", store=str(tmp_path / "s"),
        ).stdout
    )  # fmt: skip
    metrics = {
        "images_per_s": True,
        "peak_memory_mb": False,
        "latency_p50_ms": False,
        "latency_p95_ms": False,
        "gflops": False,
        "params_m": False,
    }
    for bb in ("sp_resnet", "sp_vit"):
        mine = [r for r in rows if r["backbone"] == bb]
        assert {r["metric"] for r in mine} == set(metrics)
        assert len(mine) == 2 * 2 + 4  # per batch size: throughput, memory; then 4 more
        for r in mine:
            assert (r["task"], r["dataset"]) == ("speed", "synthetic")
            assert r["higher_is_better"] is metrics[r["metric"]]
            assert r["value"] >= 0 and r["value"] == r["value"]
            p = r["params"]
            assert p["device"] == "cpu" and p["precision"] == "fp32" and p["resolution"] == 32
            assert "torch" in p["versions"] and "timm" in p["versions"]
        rate = {
            r["params"]["batch_size"]: r["value"] for r in mine if r["metric"] == "images_per_s"
        }
        assert set(rate) == {1, 4} and min(rate.values()) > 0
        gflops = next(r["value"] for r in mine if r["metric"] == "gflops")
        assert gflops > 0
    p50 = {r["backbone"]: r["value"] for r in rows if r["metric"] == "latency_p50_ms"}
    p95 = {r["backbone"]: r["value"] for r in rows if r["metric"] == "latency_p95_ms"}
    assert all(p50[b] <= p95[b] for b in p50)
    resnet = next(
        r["value"] for r in rows if r["metric"] == "params_m" and r["backbone"] == "sp_resnet"
    )
    assert resnet == pytest.approx(4.92, abs=0.05)  # timm resnet10t without its classifier


def test_speed_at_another_resolution(tmp_path, monkeypatch):
    from featcache.runners.speed import run_speed
    from featcache.store import open_store

    monkeypatch.setenv("BOBX_MANIFESTS", str(tiny_manifests(tmp_path / "m", "sp")))
    store = open_store(f"memory://{tmp_path.name}")
    recs = run_speed(
        store, ["sp_vit", "sp_resnet"], batch_sizes=[2], device="cpu", resolution=48, repeats=1,
        latency_runs=3,
    )  # fmt: skip
    assert {r.params["resolution"] for r in recs} == {48}
    flops = {r.backbone: r.value for r in recs if r.metric == "gflops"}
    assert flops["sp_vit"] > 0 and flops["sp_resnet"] > 0


@pytest.mark.gpu
def test_speed_on_cuda(tmp_path, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from featcache.runners.speed import run_speed
    from featcache.store import open_store

    monkeypatch.setenv("BOBX_MANIFESTS", str(tiny_manifests(tmp_path / "m", "sp")))
    recs = run_speed(
        open_store(f"memory://{tmp_path.name}"), ["sp_resnet"], batch_sizes=[1, 64],
        device="cuda", precision="bf16", repeats=3,
    )  # fmt: skip
    memory = [r for r in recs if r.metric == "peak_memory_mb"]
    assert all(r.params["memory"] == "cuda_allocator" and r.value > 0 for r in memory)
    assert all(r.params["device"] == "cuda" for r in recs)

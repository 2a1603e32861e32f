"""`bobx` store and record commands, run as a user would (the installed console script)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import featcache

_SCRIPT = Path(sys.executable).with_name("bobx")
BOBX = str(_SCRIPT) if _SCRIPT.exists() else (shutil.which("bobx") or "")


def bobx(*args: str, store: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [BOBX] if BOBX else [sys.executable, "-m", "cli"]
    proc = subprocess.run(
        [*cmd, *args, "--store", store], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def record_args(value: str = "0.5", backbone: str = "a") -> list[str]:
    """``bobx record`` of one top-1 value (store given by :func:`bobx`)."""
    return [
        "record",
        "--backbone",
        backbone,
        "--task",
        "classification",
        "--dataset",
        "d",
        "--metric",
        "top1",
        "--value",
        value,
    ]


def test_record_results_roundtrip(tmp_path):
    store = str(tmp_path / "s")
    out = bobx(
        "record",
        "--backbone",
        "dino_vitb",
        "--task",
        "classification",
        "--dataset",
        "cifar100",
        "--metric",
        "top1",
        "--value",
        "81.5",
        "--param",
        "k=20",
        "--param",
        "temperature=0.07",
        "--json",
        store=store,
    )
    written = json.loads(out.stdout)
    bobx(
        "record",
        "--backbone",
        "dino_vitb",
        "--task",
        "calibration",
        "--dataset",
        "imagenet",
        "--metric",
        "ece",
        "--value",
        "0.04",
        "--lower-is-better",
        store=store,
    )
    rows = json.loads(bobx("results", "--format", "json", store=store).stdout)
    assert len(rows) == 2
    assert rows[0] == written[0]  # evaluators' --json == results --format json
    assert rows[0]["params"] == {"k": 20, "temperature": 0.07}
    assert [r["higher_is_better"] for r in rows] == [True, False]
    assert (
        bobx("results", "--task", "calibration", "--format", "csv", store=store).stdout.count("\n")
        == 2
    )
    md = bobx("results", "--format", "markdown", store=store).stdout
    assert "| dino_vitb" in md
    pq = tmp_path / "r.parquet"
    bobx("results", "--format", "parquet", "--output", str(pq), store=store)
    assert len(pd.read_parquet(pq)) == 2


def test_import_results_csv_and_jsonl(tmp_path):
    store = str(tmp_path / "s")
    csv = tmp_path / "r.csv"
    csv.write_text(
        "backbone,task,dataset,metric,value,higher_is_better,params\n"
        'a,classification,cifar100,top1,80.1,true,"{""fraction"": 0.1}"\n'
        "b,calibration,imagenet,ece,0.05,false,\n"
    )
    jl = tmp_path / "r.jsonl"
    jl.write_text(
        json.dumps(
            {
                "backbone": "c",
                "task": "retrieval",
                "dataset": "roxford5k",
                "metric": "map",
                "value": 0.4,
                "split": "medium",
            }
        )
        + "\n"
    )
    bobx("import-results", str(csv), store=store)
    bobx("import-results", str(jl), store=store)
    df = featcache.open_store(store).results()
    assert sorted(df["backbone"]) == ["a", "b", "c"]
    row = df[df.backbone == "a"].iloc[0]
    assert json.loads(row["params"]) == {"fraction": 0.1}
    assert not df[df.backbone == "b"].iloc[0]["higher_is_better"]
    assert df[df.backbone == "c"].iloc[0]["split"] == "medium"


def test_import_features_and_ls(tmp_path):
    store = str(tmp_path / "s")
    x = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(50) % 5)
    (tmp_path / "ids.txt").write_text("\n".join(f"im{i}" for i in range(50)))
    bobx(
        "import-features",
        "--backbone",
        "mine",
        "--dataset",
        "ds",
        "--split",
        "train",
        "--features",
        str(tmp_path / "x.npy"),
        "--labels",
        str(tmp_path / "y.npy"),
        "--ids",
        str(tmp_path / "ids.txt"),
        "--dtype",
        "float32",
        store=store,
    )
    listing = json.loads(bobx("ls", "--json", store=store).stdout)
    (fs,) = listing["feature_sets"]
    assert (fs["backbone"], fs["n"], fs["dim"], fs["dtype"], fs["status"]) == (
        "mine",
        50,
        6,
        "float32",
        "complete",
    )
    got = featcache.open_store(store).features("mine", "ds", "train")
    np.testing.assert_array_equal(got.embeddings(), x)
    assert list(got.ids())[:2] == ["im0", "im1"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            [
                "record",
                "--backbone",
                "../x",
                "--task",
                "t",
                "--dataset",
                "d",
                "--metric",
                "m",
                "--value",
                "1",
            ],
            "Invalid backbone name",
        ),
        (["import-results", "missing.csv"], "not found"),
        (
            ["import-features", "--backbone", "b", "--dataset", "d", "--features", "nope.npy"],
            "not found",
        ),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, args, needle):
    proc = bobx(*args, store=str(tmp_path / "s"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and needle in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_import_results_bad_rows(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("backbone,task,dataset,metric\na,b,c,d\n")
    proc = bobx("import-results", str(bad), store=str(tmp_path / "s"), check=False)
    assert proc.returncode == 2 and "missing column" in proc.stderr
    bad.write_text("backbone,task,dataset,metric,value\na,b,c,d,notanumber\n")
    proc = bobx("import-results", str(bad), store=str(tmp_path / "s"), check=False)
    assert proc.returncode == 2 and "row 1" in proc.stderr
    assert featcache.open_store(str(tmp_path / "s")).results().empty


def test_cli_against_s3(s3_url):
    bobx(*record_args("1.0"), store=s3_url)
    rows = json.loads(bobx("results", "--format", "json", store=s3_url).stdout)
    assert [r["backbone"] for r in rows] == ["a"]

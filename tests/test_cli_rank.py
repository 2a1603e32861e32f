"""`bobx import-results` + `bobx rank` / `bobx correlate` on the paper's own appendix numbers."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.data.bob_paper import paper
from tests.test_cli_store import bobx


@pytest.fixture(scope="module")
def paper_store(tmp_path_factory) -> str:
    """A store holding the paper's main comparison, imported through the CLI."""
    tmp = tmp_path_factory.mktemp("paper")
    records = paper.main_comparison(paper.load_records(), pd.read_csv(paper.META_CSV))
    is_midas_cls = records["backbone"].str.startswith("midas_") & (
        records["task"] == "classification"
    )  # the paper's footnote 2
    csv = tmp / "main.csv"
    records[~is_midas_cls].to_csv(csv, index=False)
    store = str(tmp / "store")
    bobx("import-results", str(csv), store=store)
    return store


def test_rank_reproduces_table2(paper_store):
    out = bobx(
        "rank",
        "--n-boot",
        "0",
        "--weight",
        "setting",
        "--min-tasks",
        "6",
        "--json",
        store=paper_store,
    )
    ranked = pd.DataFrame(json.loads(out.stdout))
    assert {"backbone", "task", "score", "rank", "n_settings", "ci_low", "ci_high"} <= set(
        ranked.columns
    )
    for task in (
        "classification",
        "detection",
        "segmentation",
        "retrieval",
        "ood_detection",
        "overall",
    ):
        top3 = ranked[ranked.task == task].sort_values("rank")["backbone"].head(3).tolist()
        assert top3 == paper.TABLE2[task], task


def test_rank_filters_and_bootstrap(paper_store, tmp_path):
    csv = tmp_path / "rank.csv"
    out = bobx(
        "rank",
        "--task",
        "detection",
        "--n-boot",
        "200",
        "--csv",
        str(csv),
        "--json",
        store=paper_store,
    )
    ranked = pd.DataFrame(json.loads(out.stdout))
    assert set(ranked.task) == {"detection", "overall"}
    first = ranked[ranked["rank"] == 1].iloc[0]
    assert first.ci_low <= first.score <= first.ci_high and 0 < first.p_first <= 1
    assert len(pd.read_csv(csv)) == len(ranked)


def test_correlate_json_and_plot(paper_store, tmp_path):
    png = tmp_path / "heat.png"
    out = bobx(
        "correlate",
        "--json",
        "--plot",
        str(png),
        "--scatter",
        "classification,retrieval",
        "--scatter-plot",
        str(tmp_path / "sc.png"),
        store=paper_store,
    )
    payload = json.loads(out.stdout)
    pair = [
        r for r in payload["tasks"] if {r["task_x"], r["task_y"]} == {"classification", "retrieval"}
    ]
    assert pair and -1 <= pair[0]["rho"] <= 1 and pair[0]["n"] >= 10
    assert png.stat().st_size > 1000 and (tmp_path / "sc.png").stat().st_size > 1000


def test_rank_empty_store_is_a_clear_error(tmp_path):
    proc = bobx("rank", store=str(tmp_path / "empty"), check=False)
    assert proc.returncode == 2 and "bobx import-results" in proc.stderr

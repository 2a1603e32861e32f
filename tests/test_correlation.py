"""Tests of evaluators.correlation: scipy oracles on seeded tables, plots, the BoB paper's claims."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from evaluators.correlation import (
    correlation_matrix,
    metadata_correlations,
    plot_scatter,
    plot_task_heatmap,
    scores_wide,
    spearman,
    task_correlations,
)
from evaluators.ranking import OVERALL, overall_scores, task_scores
from featcache.errors import DataError, UnknownNameError

PAPER_DIR = Path(__file__).parent / "data" / "bob_paper"


def load_paper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bob_paper", PAPER_DIR / "paper.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


paper = load_paper()


def random_scores(seed: int, *, n_backbones=15, missing=0.2) -> pd.DataFrame:
    """Long task scores for 4 correlated tasks, some missing, a few exact ties."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=n_backbones)
    rows = []
    for t, task in enumerate(["classification", "detection", "retrieval", "new_task"]):
        vals = np.round(base * (1 - 0.3 * t) + rng.normal(scale=0.7, size=n_backbones), 1)
        for b in range(n_backbones):
            if rng.random() >= missing:
                rows.append(
                    {
                        "backbone": f"bb{b:02d}",
                        "task": task,
                        "score": float(vals[b]),
                        "n_settings": 1,
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_with_ties_and_nans(seed):
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=30), 1)
    y = np.round(x + rng.normal(size=30), 1)
    y[[3, 7]] = np.nan
    x[11] = np.inf
    ok = np.isfinite(x) & np.isfinite(y)
    want = stats.spearmanr(x[ok], y[ok])
    rho, p, n = spearman(x, y)
    assert n == ok.sum() == 27
    assert rho == pytest.approx(want.statistic, abs=1e-12)
    assert p == pytest.approx(want.pvalue, rel=1e-9)


def test_spearman_undefined_cases_are_nan():
    assert np.isnan(spearman([1.0, 2.0], [2.0, 1.0])[0])  # n < 3
    rho, p, n = spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])  # constant
    assert np.isnan(rho) and np.isnan(p) and n == 4
    with pytest.raises(DataError):
        spearman([1.0, 2.0], [1.0, 2.0, 3.0])


@pytest.mark.parametrize("seed", [3, 4])
def test_task_correlations_pairwise_complete_match_scipy(seed):
    scores = random_scores(seed)
    corr = task_correlations(scores)
    assert list(corr.columns) == ["task_x", "task_y", "rho", "p_value", "n"]
    assert len(corr) == 6  # 4 tasks, unordered pairs
    wide = scores.pivot(index="backbone", columns="task", values="score")
    for tx, ty, rho, p, n in corr.itertuples(index=False):
        both = wide[[tx, ty]].dropna()
        want = stats.spearmanr(both[tx], both[ty])
        assert n == len(both)
        assert rho == pytest.approx(want.statistic, abs=1e-12)
        assert p == pytest.approx(want.pvalue, rel=1e-9)
    # Wide input gives the same answer; task display order: known tasks first.
    pd.testing.assert_frame_equal(task_correlations(wide), corr)
    assert corr["task_x"].iloc[0] == "classification" and corr["task_y"].iloc[-1] == "new_task"


def test_task_correlations_options_and_errors():
    scores = random_scores(5)
    with_overall = pd.concat([scores, overall_scores(scores)])
    assert OVERALL not in set(task_correlations(with_overall)["task_y"])
    assert OVERALL in set(task_correlations(with_overall, overall=True)["task_y"])
    sub = task_correlations(scores, tasks=["retrieval", "detection"])
    assert sub[["task_x", "task_y"]].values.tolist() == [["retrieval", "detection"]]
    with pytest.raises(UnknownNameError, match="Did you mean 'detection'"):
        task_correlations(scores, tasks=["detecton"])
    with pytest.raises(DataError, match="several rows"):
        task_correlations(pd.concat([scores, scores]))
    mat = correlation_matrix(task_correlations(scores))
    assert (np.diag(mat.to_numpy()) == 1.0).all()
    np.testing.assert_allclose(mat.to_numpy(), mat.to_numpy().T)


def test_scores_wide_from_task_scores_of_records():
    df = pd.DataFrame(
        {
            "backbone": ["a", "b", "c", "a", "b", "c"],
            "task": ["retrieval"] * 3 + ["classification"] * 3,
            "dataset": "d",
            "split": "test",
            "metric": "m",
            "value": [1.0, 2.0, 3.0, 3.0, 2.0, 1.0],
            "higher_is_better": True,
            "params": "{}",
        }
    )
    wide = scores_wide(task_scores(df))
    assert list(wide.columns) == ["classification", "retrieval"]
    assert task_correlations(task_scores(df))["rho"].iloc[0] == pytest.approx(-1.0)


def test_metadata_correlations_overall_and_by_family_match_scipy():
    rng = np.random.default_rng(9)
    n = 16
    meta = pd.DataFrame(
        {
            "backbone": [f"bb{i:02d}" for i in range(n)],
            "params_m": rng.uniform(10, 300, n).round(),
            "pretrain_size": rng.choice([1.28e6, 1.42e7, 4e8, 2.3e9], n),
            "throughput": np.where(rng.random(n) < 0.3, np.nan, rng.uniform(100, 3000, n)),
            "family": np.where(np.arange(n) % 3 == 0, "cnn", "vit"),
        }
    )
    scores = pd.DataFrame(
        {
            "backbone": meta["backbone"],
            "task": OVERALL,
            "score": np.log(meta["params_m"]) + rng.normal(scale=0.5, size=n),
        }
    ).iloc[1:]  # one backbone without a score
    got = metadata_correlations(scores, meta)
    assert list(got.columns) == ["variable", "family", "rho", "p_value", "n"]
    assert list(dict.fromkeys(got["family"])) == ["all", "cnn", "vit"]
    merged = scores.merge(meta, on="backbone")
    for variable, family, rho, p, count in got.itertuples(index=False):
        part = merged if family == "all" else merged[merged["family"] == family]
        part = part.dropna(subset=[variable])
        want = stats.spearmanr(part["score"], part[variable])
        assert count == len(part)
        assert rho == pytest.approx(want.statistic, abs=1e-12)
        assert p == pytest.approx(want.pvalue, rel=1e-9)
    pooled = metadata_correlations(scores, meta.drop(columns="family"), by_family=False)
    assert set(pooled["family"]) == {"all"}
    with pytest.raises(DataError, match="family"):
        metadata_correlations(scores, meta.drop(columns="family"))
    with pytest.raises(UnknownNameError):
        metadata_correlations(scores, meta, task="retrieval")


def test_plots_write_images(tmp_path):
    scores = random_scores(6)
    heat = plot_task_heatmap(task_correlations(scores), tmp_path / "heat.png")
    scatter = plot_scatter(scores, "classification", "detection", tmp_path / "fig1.png")
    bare = plot_scatter(scores, "classification", "retrieval", tmp_path / "f.svg", labels=False)
    for path in (heat, scatter):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in bare.read_bytes()[:500]
    with pytest.raises(UnknownNameError):
        plot_scatter(scores, "classification", "segmentaton", tmp_path / "x.png")


# --------------------------------------------------------------------------------------------
# The paper's correlation claims (section 5), from its appendix tables
# --------------------------------------------------------------------------------------------
# Data: the main comparison (tests/data/bob_paper), MiDaS's ImageNet records dropped (the
# paper blames MiDaS for the low retrieval-classification correlation, so MiDaS must be in the
# classification scores there), every transcribed setting of the six Table-2 tasks, ddof=0,
# task scores = mean z per task. What our numbers give (paper in brackets):
#  * classification vs retrieval: rho 0.46, p 0.04, n 20 [0.49, "statistically significant"];
#    without MiDaS and MAE: 0.69, n 17 [0.8]. Qualitatively reproduced: tested below.
#  * "typically rho > 0.8" across task pairs: NOT reproduced. 3 of 15 pairs exceed 0.8
#    (detection-segmentation 0.99, classification-OOD classification 0.82, segmentation-OOD
#    detection 0.82); the median pair is 0.46. Not tested.
#  * parameter count, ViT 0.58 vs CNN 0.35: NOT reproduced with timm parameter counts (the
#    paper prints none): ViT 0.58, CNN 0.72 (overall = mean over tasks). Not tested.
#  * pretraining-set size, ViT 0.72 vs CNN 0.33: the direction reproduces (ViT 0.57, p 0.03,
#    n 15; CNN -0.02, n 9). Tested below.
#  * throughput rho = -0.41: the throughputs are not published; cannot be checked.


@pytest.fixture(scope="module")
def bob_task_scores():
    records = paper.main_comparison(paper.load_records(), paper.load_meta())
    midas_imagenet = records["backbone"].str.startswith("midas_") & (
        (records["task"] == "classification") & (records["dataset"] == "imagenet-1k")
    )
    return task_scores(records[~midas_imagenet])


def _pair(corr, tx, ty):
    return corr[(corr["task_x"] == tx) & (corr["task_y"] == ty)].iloc[0]


def test_retrieval_vs_classification_is_weaker_but_significant(bob_task_scores):
    corr = task_correlations(bob_task_scores)
    cls_ret = _pair(corr, "classification", "retrieval")
    assert 0.0 < cls_ret["rho"] < _pair(corr, "classification", "ood_classification")["rho"]
    assert cls_ret["p_value"] < 0.05
    without = bob_task_scores[~bob_task_scores["backbone"].str.startswith(("midas_", "mae_"))]
    cls_ret_without = _pair(task_correlations(without), "classification", "retrieval")
    assert cls_ret_without["rho"] > cls_ret["rho"] + 0.15


def test_vits_correlate_more_with_pretraining_size_than_cnns(bob_task_scores):
    meta = paper.load_meta()
    got = metadata_correlations(overall_scores(bob_task_scores), meta)
    size = got[got["variable"] == "pretrain_size"].set_index("family")
    rho, p_value = size["rho"].astype(float), size["p_value"].astype(float)
    assert rho["vit"] > rho["cnn"] + 0.3
    assert p_value["vit"] < 0.05

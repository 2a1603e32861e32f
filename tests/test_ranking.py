"""Tests of evaluators.ranking: numpy/scipy oracles on seeded tables, and the BoB paper's tables."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from evaluators import ranking
from evaluators.ranking import (
    OUTCOME_PARAMS,
    OVERALL,
    PERFORMANCE_TASKS,
    group_means,
    latest_records,
    overall_scores,
    rank,
    task_order,
    task_scores,
    top_k,
    zscores,
)
from featcache.errors import BobxError, DataError, UnknownNameError

PAPER_DIR = Path(__file__).parent / "data" / "bob_paper"
# the paper sits in ../shared/reference beside the checkout (CI and every dev machine)
PAPER_TEXT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "bob-paper.txt"


def load_paper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bob_paper", PAPER_DIR / "paper.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


paper = load_paper()


def record(backbone, value, *, task="classification", dataset="d", metric="top1", hib=True,
           params="{}", split="test", **extra):  # fmt: skip
    return {
        "backbone": backbone,
        "task": task,
        "dataset": dataset,
        "split": split,
        "metric": metric,
        "value": value,
        "higher_is_better": hib,
        "params": params,
        **extra,
    }


def random_records(seed: int, *, n_backbones=8, n_settings=12, missing=0.25) -> pd.DataFrame:
    """Seeded long table: 3 tasks (one unknown name), mixed directions, ~25% missing."""
    rng = np.random.default_rng(seed)
    tasks = ("classification", "retrieval", "my_new_task")
    rows = []
    for s in range(n_settings):
        hib = bool(rng.random() > 0.3)
        present = rng.random(n_backbones) >= missing
        present[rng.choice(n_backbones, 2, replace=False)] = True  # >= 2 per setting
        for b in np.flatnonzero(present):
            rows.append(record(f"bb{b}", float(rng.normal(50, 10)), task=tasks[s % 3],
                               dataset=f"ds{s}", metric="m", hib=hib))  # fmt: skip
    return pd.DataFrame(rows)


def oracle_z(df: pd.DataFrame, ddof: int = 0) -> dict[tuple[str, str], float]:
    """(backbone, dataset) -> z via scipy.stats.zscore, sign flipped for lower-is-better."""
    out = {}
    for _, g in df.groupby(["task", "dataset", "split", "metric", "params"]):
        sign = 1.0 if bool(g["higher_is_better"].iloc[0]) else -1.0
        z = stats.zscore(g["value"].to_numpy(), ddof=ddof) * sign
        for b, d, v in zip(g["backbone"], g["dataset"], z, strict=True):
            out[b, d] = float(v)
    return out


def oracle_task_scores(df: pd.DataFrame, ddof: int = 0) -> dict[tuple[str, str], list[float]]:
    z = oracle_z(df, ddof)
    out: dict[tuple[str, str], list[float]] = {}
    for b, d, t in df[["backbone", "dataset", "task"]].itertuples(index=False, name=None):
        out.setdefault((b, t), []).append(z[b, d])
    return out


# --------------------------------------------------------------------------------------------
# z-scores
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ddof", [0, 1])
def test_zscores_match_scipy(seed, ddof):
    df = random_records(seed)
    z = zscores(df, ddof=ddof)
    want = oracle_z(df, ddof)
    got = {(b, d): v for b, d, v in z[["backbone", "dataset", "z"]].itertuples(index=False)}
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=0, atol=1e-12)
    assert list(z.columns) == [
        "backbone", "task", "dataset", "split", "metric", "params", "value",
        "higher_is_better", "z", "n_backbones",
    ]  # fmt: skip


def test_lower_is_better_is_negated_from_the_data_column():
    vals = [1.0, 2.0, 4.0]
    hi = pd.DataFrame([record(b, v, hib=True) for b, v in zip("abc", vals, strict=True)])
    lo = hi.assign(higher_is_better=False)
    z_hi = zscores(hi).set_index("backbone")["z"]
    z_lo = zscores(lo).set_index("backbone")["z"]
    np.testing.assert_allclose(z_lo, -z_hi)
    assert z_lo.idxmax() == "a"  # lowest error is best
    # The metric name plays no part: an "error" metric marked higher_is_better=True is not flipped.
    named = zscores(hi.assign(metric="error")).set_index("backbone")["z"]
    np.testing.assert_allclose(named, z_hi)


def test_population_std_is_the_default():
    df = pd.DataFrame([record(b, v) for b, v in zip("abcd", [1.0, 2.0, 3.0, 10.0], strict=True)])
    x = df["value"].to_numpy()
    np.testing.assert_allclose(zscores(df)["z"], (x - x.mean()) / np.std(x))
    np.testing.assert_allclose(zscores(df, ddof=1)["z"], (x - x.mean()) / np.std(x, ddof=1))


def test_single_backbone_settings_are_dropped_and_ties_give_zero():
    df = pd.DataFrame(
        [
            record("a", 5.0, dataset="alone"),
            record("a", 0.1, dataset="tied"),
            record("b", 0.1, dataset="tied"),
            record("c", 0.1, dataset="tied"),
            record("a", 1.0, dataset="ok"),
            record("b", 3.0, dataset="ok"),
        ]
    )
    z = zscores(df)
    assert "alone" not in set(z["dataset"])
    assert (z.loc[z["dataset"] == "tied", "z"] == 0.0).all()  # exactly 0, no 1e-17 noise
    ts = task_scores(df).set_index("backbone")
    assert ts.loc["a", "n_settings"] == 2  # "alone" does not count
    assert ts.loc["c", "score"] == 0.0 and ts.loc["c", "n_settings"] == 1
    assert len(zscores(df, min_backbones=1).query("dataset == 'alone'")) == 1
    assert len(zscores(df, min_backbones=3)) == 3  # only the tied setting has 3


def test_missing_backbone_is_left_out_of_that_setting():
    df = pd.DataFrame(
        [record(b, v, dataset="d1") for b, v in zip("abc", [1.0, 2.0, 6.0], strict=True)]
        + [record(b, v, dataset="d2") for b, v in zip("ab", [10.0, 30.0], strict=True)]
    )
    z = zscores(df).set_index(["dataset", "backbone"])["z"]
    assert ("d2", "c") not in z.index
    np.testing.assert_allclose(z["d2"].to_numpy(), [-1.0, 1.0])  # mean/std of a, b only
    ts = task_scores(df).set_index("backbone")
    assert ts.loc["c", "n_settings"] == 1 and ts.loc["a", "n_settings"] == 2
    assert ts["score"].astype(float)["c"] == pytest.approx(float(z["d1", "c"]))


def test_nan_values_count_as_not_evaluated():
    df = pd.DataFrame([record("a", 1.0), record("b", 2.0), record("c", np.nan), record("d", 3.0)])
    z = zscores(df)
    assert set(z["backbone"]) == {"a", "b", "d"}
    np.testing.assert_allclose(z["z"], stats.zscore([1.0, 2.0, 3.0]))


# --------------------------------------------------------------------------------------------
# Records: validation, duplicates, params
# --------------------------------------------------------------------------------------------


def test_duplicates_keep_latest_created_at_else_last_row():
    rows = [
        record("a", 1.0, created_at="2024-05-02T00:00:00+00:00"),
        record("a", 9.0, created_at="2024-05-01T00:00:00+00:00"),  # older, later in the table
        record("a", 7.0, created_at=None),  # no timestamp counts as oldest
        record("b", 2.0, created_at="2024-05-01T00:00:00+00:00"),
    ]
    got = latest_records(pd.DataFrame(rows)).set_index("backbone")["value"]
    assert got.to_dict() == {"a": 1.0, "b": 2.0}
    no_stamp = pd.DataFrame(rows).drop(columns="created_at")
    got = latest_records(no_stamp).set_index("backbone")["value"]
    assert got.to_dict() == {"a": 7.0, "b": 2.0}
    # A NaN re-run does not hide the earlier value.
    rows.append(record("b", np.nan, created_at="2025-01-01T00:00:00+00:00"))
    assert latest_records(pd.DataFrame(rows)).set_index("backbone")["value"]["b"] == 2.0


def test_params_are_canonicalised_and_distinguish_settings():
    df = pd.DataFrame(
        [
            record("a", 1.0, params='{"temperature": 0.07, "k": 20}'),
            record("b", 3.0, params='{"k":20,"temperature":0.07}'),
            record("a", 5.0, params='{"k":10,"temperature":0.07}'),
            record("b", 1.0, params='{"k":10,"temperature":0.07}'),
            record("c", 2.0, params=""),
            record("d", 4.0, params="{}"),
        ]
    )
    z = zscores(df)
    assert z.groupby("params").size().to_dict() == {
        "{}": 2, '{"k":10,"temperature":0.07}': 2, '{"k":20,"temperature":0.07}': 2
    }  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.drop(columns="higher_is_better"), "higher_is_better"),
        (lambda d: d.drop(columns="params"), "params='{}'"),
        (lambda d: d.assign(value=["x", 1.0, 2.0]), "not a number"),
        (lambda d: d.assign(value=[np.inf, 1.0, 2.0]), "finite"),
        (lambda d: d.assign(params=["{not json", "{}", "{}"]), "not JSON"),
        (lambda d: d.assign(params=["[1]", "{}", "{}"]), "JSON object"),
        (lambda d: d.assign(higher_is_better=[True, False, True]), "both"),
        (lambda d: d.assign(higher_is_better=["maybe", True, True]), "True/False"),
        (lambda d: d.assign(task=OVERALL), "reserved"),
        (lambda d: d.assign(backbone=[None, "b", "c"]), "no backbone"),
        (lambda d: d.assign(created_at=["yesterday", None, None]), "created_at"),
    ],
)
def test_bad_records_raise_data_error_saying_what_to_fix(mutate, message):
    df = pd.DataFrame([record(b, v) for b, v in zip("abc", [1.0, 2.0, 3.0], strict=True)])
    with pytest.raises(DataError, match=message):
        zscores(mutate(df))


def test_nothing_comparable_to_rank_says_why():
    with pytest.raises(DataError, match="at least two backbones"):
        rank(pd.DataFrame([record("a", 1.0), record("a", 2.0, dataset="e")]))
    assert task_scores(pd.DataFrame([record("a", 1.0)])).empty


def test_string_directions_from_csv_are_accepted():
    df = pd.DataFrame([record(b, v, hib="false") for b, v in zip("ab", [1.0, 2.0], strict=True)])
    assert zscores(df).set_index("backbone")["z"].idxmax() == "a"


def test_unknown_task_suggests_near_miss():
    df = random_records(0)
    with pytest.raises(UnknownNameError, match="Did you mean 'classification'"):
        task_scores(df, tasks=["clasification"])
    with pytest.raises(UnknownNameError):
        rank(df, tasks="detection", n_boot=0)


@pytest.mark.parametrize(
    "kwargs",
    [{"n_boot": -1}, {"ci": 1.0}, {"ci": 0.0}, {"ddof": -1}, {"weight": "x"}, {"min_tasks": 0}],
)
def test_bad_arguments_raise_bobx_errors(kwargs):
    with pytest.raises(BobxError):
        rank(random_records(0), **kwargs)


# --------------------------------------------------------------------------------------------
# Scores and ranks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [3, 4])
def test_task_and_overall_scores_match_numpy(seed):
    df = random_records(seed)
    want = oracle_task_scores(df)
    ts = task_scores(df)
    assert list(ts.columns) == ["backbone", "task", "score", "n_settings"]
    got = {(b, t): (s, n) for b, t, s, n in ts.itertuples(index=False)}
    assert got.keys() == want.keys()
    for key, zs in want.items():
        assert got[key][0] == pytest.approx(np.mean(zs), abs=1e-12)
        assert got[key][1] == len(zs)
    ov = overall_scores(df, overall_tasks="all").set_index("backbone")
    ov_set = overall_scores(df, weight="setting", overall_tasks="all").set_index("backbone")
    for b in ov.index:
        mine = [k for k in want if k[0] == b]
        assert ov.loc[b, "score"] == pytest.approx(np.mean([np.mean(want[k]) for k in mine]))
        assert ov_set.loc[b, "score"] == pytest.approx(np.mean(sum((want[k] for k in mine), [])))
        assert ov.loc[b, "n_tasks"] == len(mine)
        assert ov.loc[b, "n_settings"] == sum(len(want[k]) for k in mine)
    # overall_scores accepts task scores and z-scores too
    pd.testing.assert_frame_equal(overall_scores(ts), overall_scores(df))
    pd.testing.assert_frame_equal(overall_scores(zscores(df)), overall_scores(df))


def test_tasks_are_ordered_known_first_then_new_names_then_overall():
    assert task_order(["zeta", OVERALL, "retrieval", "alpha", "classification"]) == [
        "classification", "retrieval", "alpha", "zeta", OVERALL,
    ]  # fmt: skip
    ranked = rank(random_records(0), n_boot=0)
    assert list(dict.fromkeys(ranked["task"])) == [
        "classification", "retrieval", "my_new_task", OVERALL,
    ]  # fmt: skip


@pytest.mark.parametrize("weight", ["task", "setting"])
def test_rank_scores_and_ranks_match_task_and_overall_scores(weight):
    df = random_records(5)
    ranked = rank(df, n_boot=0, weight=weight)
    assert list(ranked.columns) == [
        "backbone", "task", "score", "rank", "n_settings", "n_tasks", "ci_low", "ci_high",
        "p_first", "in_overall",
    ]  # fmt: skip
    expect = pd.concat([task_scores(df), overall_scores(df, weight=weight)])
    merged = ranked.merge(expect, on=["backbone", "task"], suffixes=("", "_want"))
    assert len(merged) == len(ranked) == len(expect)
    np.testing.assert_allclose(merged["score"], merged["score_want"], atol=1e-12)
    assert (merged["n_settings"] == merged["n_settings_want"]).all()
    for _, g in ranked.groupby("task"):
        want = stats.rankdata(-g["score"].to_numpy(), method="min")
        assert (g["rank"].to_numpy() == want).all()
        assert (np.diff(g["rank"].to_numpy()) >= 0).all()
    assert ranked["ci_low"].isna().all() and ranked["p_first"].isna().all()


def test_rank_ties_share_the_lower_rank():
    df = pd.DataFrame([record(b, v) for b, v in zip("abcd", [3.0, 3.0, 1.0, 5.0], strict=True)])
    got = rank(df, n_boot=0).query("task == 'classification'")
    assert got[["backbone", "rank"]].values.tolist() == [["d", 1], ["a", 2], ["b", 2], ["c", 4]]


def oracle_bootstrap(df, *, n_boot, seed, ci, weight, overall_tasks=None):
    """Plain loops over replicates/backbones, drawing like rank() (multinomial per task)."""
    z = zscores(df)
    rng = np.random.default_rng(seed)
    backbones = sorted(set(z["backbone"]))
    tasks = [t for t in task_order(z["task"])]
    combined = tasks if overall_tasks == "all" else [t for t in tasks if t in PERFORMANCE_TASKS]
    reps = {t: np.full((n_boot, len(backbones)), np.nan) for t in [*tasks, OVERALL]}
    sums = {t: np.zeros((n_boot, len(backbones))) for t in tasks}
    cnts = {t: np.zeros((n_boot, len(backbones))) for t in tasks}
    for t in tasks:
        zt = z[z["task"] == t]
        settings = sorted(set(zt[list(ranking.SETTING_COLUMNS)].itertuples(index=False)))
        draws = rng.multinomial(len(settings), [1 / len(settings)] * len(settings), size=n_boot)
        lookup = {
            (tuple(r[1:6]), r[0]): r[6]
            for r in zt[["backbone", *ranking.SETTING_COLUMNS, "z"]].itertuples(index=False)
        }
        for r in range(n_boot):
            for j, b in enumerate(backbones):
                num = den = 0.0
                for s, setting in enumerate(settings):
                    if (setting, b) in lookup:
                        num += draws[r, s] * lookup[setting, b]
                        den += draws[r, s]
                sums[t][r, j], cnts[t][r, j] = num, den
                if den:
                    reps[t][r, j] = num / den
    for r in range(n_boot):
        for j in range(len(backbones)):
            if weight == "task":
                vals = [reps[t][r, j] for t in combined if not np.isnan(reps[t][r, j])]
                reps[OVERALL][r, j] = np.mean(vals) if vals else np.nan
            else:
                den = sum(cnts[t][r, j] for t in combined)
                reps[OVERALL][r, j] = sum(sums[t][r, j] for t in combined) / den if den else np.nan
    out = {}
    q = [50 * (1 - ci), 50 * (1 + ci)]
    for t, rep in reps.items():
        for j, b in enumerate(backbones):
            col = rep[:, j][~np.isnan(rep[:, j])]
            lo, hi = np.percentile(col, q) if col.size else (np.nan, np.nan)
            first = 0.0
            for r in range(n_boot):
                row = rep[r]
                best = np.nanmax(row)
                winners = np.flatnonzero(row == best)
                if j in winners:
                    first += 1.0 / len(winners)
            out[b, t] = (lo, hi, first / n_boot)
    return out


@pytest.mark.parametrize("overall_tasks", [None, "all"])
@pytest.mark.parametrize("weight", ["task", "setting"])
def test_bootstrap_matches_plain_loop_oracle(weight, overall_tasks):
    df = random_records(6, n_backbones=5, n_settings=7)
    got = rank(df, n_boot=40, seed=11, ci=0.9, weight=weight, overall_tasks=overall_tasks)
    want = oracle_bootstrap(
        df, n_boot=40, seed=11, ci=0.9, weight=weight, overall_tasks=overall_tasks
    )
    for b, t, lo, hi, pf in got[["backbone", "task", "ci_low", "ci_high", "p_first"]].itertuples(
        index=False
    ):
        assert (lo, hi, pf) == pytest.approx(want[b, t], abs=1e-12)


def test_bootstrap_is_seeded_and_independent_of_row_order():
    df = random_records(7)
    a = rank(df, n_boot=200, seed=3)
    pd.testing.assert_frame_equal(a, rank(df.sample(frac=1.0, random_state=1), n_boot=200, seed=3))
    b = rank(df, n_boot=200, seed=4)
    pd.testing.assert_frame_equal(a.drop(columns=["ci_low", "ci_high", "p_first"]),
                                  b.drop(columns=["ci_low", "ci_high", "p_first"]))  # fmt: skip
    assert not np.allclose(a["ci_low"], b["ci_low"])


def test_bootstrap_sanity():
    df = random_records(8)
    # Make bb0 the best in every setting it is in, and put it in every setting.
    boost = {
        d: (g["value"].max() + 100.0) if g["higher_is_better"].iloc[0] else -100.0
        for d, g in df.groupby("dataset")
    }
    best = pd.DataFrame(
        [record("bb0", boost[d], task=t, dataset=d, metric="m", hib=h)
         for d, t, h in df[["dataset", "task", "higher_is_better"]].drop_duplicates().values]
    )  # fmt: skip
    df = pd.concat([df[df["backbone"] != "bb0"], best], ignore_index=True)
    ranked = rank(df, n_boot=300)
    assert ranked.groupby("task")["p_first"].sum().to_numpy() == pytest.approx(1.0)
    top = ranked[ranked["backbone"] == "bb0"]
    assert (top["rank"] == 1).all() and (top["p_first"] == 1.0).all()
    inside = (ranked["ci_low"] <= ranked["score"] + 1e-12) & (
        ranked["score"] <= ranked["ci_high"] + 1e-12
    )
    assert inside.mean() > 0.9
    assert (ranked["ci_low"] <= ranked["ci_high"]).all()


def _classification_and_speed(speed: bool) -> pd.DataFrame:
    rows = [
        record(b, v, dataset=d)
        for d in ("d1", "d2")
        for b, v in zip("abc", [3.0, 2.0, 1.0], strict=True)
    ]
    if speed:  # c extracted on a much faster machine
        rows += [
            record(b, v, task="speed", metric="images_per_s", dataset=d)
            for d in ("d1", "d2")
            for b, v in zip("abc", [10.0, 20.0, 9000.0], strict=True)
        ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("weight", ["task", "setting"])
def test_speed_records_cannot_move_overall(weight):
    without = rank(_classification_and_speed(False), n_boot=100, weight=weight)
    with_speed = rank(_classification_and_speed(True), n_boot=100, weight=weight)
    pd.testing.assert_frame_equal(
        without.query("task == 'overall'").reset_index(drop=True),
        with_speed.query("task == 'overall'").reset_index(drop=True),
    )
    assert with_speed.query("task == 'speed'").iloc[0]["backbone"] == "c"  # its own row
    assert not with_speed.query("task == 'speed'")["in_overall"].any()
    assert with_speed.query("task in ('classification', 'overall')")["in_overall"].all()
    # asked for, speed does move it: c climbs from last
    everything = rank(_classification_and_speed(True), n_boot=0, overall_tasks="all")
    assert everything.query("task == 'overall'").set_index("backbone").loc["c", "rank"] < 3
    assert overall_scores(_classification_and_speed(True))["backbone"].tolist() == list("abc")


def test_overall_covers_the_performance_tasks_whatever_job_wrote_them():
    tasks = ["classification", "detection", "segmentation", "ood_detection", "calibration",
             "robustness", "speed", "my_task"]  # fmt: skip
    rows = [record(b, v, task=t) for t in tasks for b, v in zip("ab", [1.0, 2.0], strict=True)]
    rows += [
        record(b, v, params='{"protocol":"finetune"}')
        for b, v in zip("ab", [5.0, 1.0], strict=True)
    ]
    ranked = rank(pd.DataFrame(rows), n_boot=0)
    combined = set(ranked.loc[ranked["in_overall"], "task"])
    assert combined == {"classification", "detection", "segmentation", "ood_detection", OVERALL}
    assert set(PERFORMANCE_TASKS) >= combined - {OVERALL}
    overall = ranked.query("task == 'overall'").set_index("backbone")
    assert overall.loc["a", "n_tasks"] == 4 and overall.loc["a", "n_settings"] == 5
    chosen = rank(pd.DataFrame(rows), n_boot=0, overall_tasks=["speed", "my_task"])
    assert set(chosen.loc[chosen["in_overall"], "task"]) == {"speed", "my_task", OVERALL}
    with pytest.raises(UnknownNameError, match="ood_classification"):
        rank(pd.DataFrame(rows), n_boot=0, overall_tasks=["ood_classification"])
    only_speed = rank(pd.DataFrame(rows).query("task == 'speed'"), n_boot=0)
    assert OVERALL not in set(only_speed["task"])  # nothing to combine: no overall rows


def test_outcome_params_do_not_split_a_setting():
    assert "n_unconverged" in OUTCOME_PARAMS
    rows = [
        record("a", 1.0, params='{"protocol":"dinov2_logreg","n_unconverged":0}'),
        record("b", 2.0, params='{"n_unconverged":7,"protocol":"dinov2_logreg"}'),
        record("c", 3.0, params={"protocol": "dinov2_logreg", "n_unconverged": 2}),
    ]
    z = zscores(pd.DataFrame(rows))
    assert z["params"].unique().tolist() == ['{"protocol":"dinov2_logreg"}']
    assert (z["n_backbones"] == 3).all()


def test_min_tasks_limits_overall_to_backbones_scored_everywhere():
    df = pd.DataFrame(
        [record(b, v, task="classification") for b, v in zip("abc", [1.0, 2.0, 3.0], strict=True)]
        + [record(b, v, task="retrieval") for b, v in zip("ab", [2.0, 1.0], strict=True)]
    )
    ov = rank(df, n_boot=50, min_tasks=2).query("task == 'overall'")
    assert set(ov["backbone"]) == {"a", "b"}
    assert ov["p_first"].sum() == pytest.approx(1.0)
    assert set(overall_scores(df)["backbone"]) == {"a", "b", "c"}
    assert overall_scores(df).set_index("backbone").loc["c", "n_tasks"] == 1


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def test_top_k_and_group_means():
    df = pd.DataFrame(
        [record(b, v) for b, v in zip("abcde", [5.0, 4.0, 3.0, 2.0, 1.0], strict=True)]
    )
    ranked = rank(df, n_boot=0)
    table = top_k(ranked, k=3)
    assert list(table.columns) == ["task", "top1", "top2", "top3"]
    assert table.values.tolist() == [["classification", "a", "b", "c"], [OVERALL, "a", "b", "c"]]
    assert top_k(ranked, k=6)["top6"].isna().all()
    scores = task_scores(df).set_index("backbone")["score"]
    gm = group_means(task_scores(df), {"a": "g1", "c": "g1", "e": "g1", "b": "g2"}, top=2)
    assert list(gm.columns) == ["task", "group", "score", "n_backbones", "backbones"]
    g1 = gm.set_index("group").loc["g1"]
    assert g1["backbones"] == "a,c" and g1["n_backbones"] == 2
    assert g1["score"] == pytest.approx((scores["a"] + scores["c"]) / 2)
    assert gm.set_index("group").loc["g2", "n_backbones"] == 1


# --------------------------------------------------------------------------------------------
# The BoB paper, from its own appendix numbers (tests/data/bob_paper, see its README.md)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bob():
    return paper.load_records()


@pytest.fixture(scope="module")
def bob_main(bob):
    return paper.main_comparison(bob, paper.load_meta())


@pytest.mark.skipif(not PAPER_TEXT.is_file(), reason="needs the paper's text extraction")
def test_transcription_is_reproducible_from_the_paper_text(bob):
    rows, zrows = paper.build(PAPER_TEXT)
    again = pd.DataFrame(rows)
    pd.testing.assert_frame_equal(again, bob, check_dtype=False)
    assert pd.DataFrame(zrows).equals(pd.read_csv(paper.TABLE19_CSV))


def test_transcription_spot_checks(bob):
    """Cells read off the paper by hand (one per table), against the CSV."""
    cells = bob.set_index(["backbone", "task", "dataset", "metric", "params"])["value"]
    ft, frozen = '{"protocol":"finetune"}', '{"protocol":"frozen"}'
    assert (
        cells[
            "clip_vitb_laion2b",
            "classification",
            "imagenet-1k",
            "top1",
            '{"protocol":"finetune","train_fraction":0.01}',
        ]
        == 66.44
    )  # Table 8
    assert cells["sup_swinv2_b_in21k", "classification", "aircraft", "top1", ft] == 79.46  # T9
    assert cells["mae_vitb_in1k", "calibration", "imagenet-1k", "nll", ft] == 0.75  # Table 10
    assert cells["sup_convnext_b_in21k", "detection", "coco", "ap_box", frozen] == 46.2  # T11
    assert cells["sd_laion2b", "segmentation", "coco", "ap75_mask", ft] == 40.2  # Table 12
    assert cells["sup_convnext_b_in1k", "detection", "lvis-v1", "ap50_box", ft] == 48.8  # T13
    assert (
        cells[
            "clip_vitb_laion2b",
            "ood_classification",
            "imagenet-sketch",
            "top1",
            '{"train":"imagenet-1k"}',
        ]
        == 63.33
    )  # Table 14
    assert (
        cells[
            "sup_convnext_b_in21k",
            "ood_detection",
            "cityscapes",
            "ap50",
            '{"protocol":"frozen","train":"sim10k"}',
        ]
        == 53.9
    )  # Table 15
    assert cells["midas_swinv2_b", "retrieval", "roxford5k", "map", "{}"] == 29.76  # Table 16
    assert cells["mae_vitb_in1k", "retrieval", "copydays", "mrr", "{}"] == 0.61  # Table 17
    assert cells["mae_vitb_in1k", "retrieval", "copydays", "recall@5", "{}"] == 0.542  # T18
    assert (
        cells[
            "mocov3_vitb_in1k",
            "robustness",
            "imagenet-1k",
            "top1",
            '{"attack":"pgd","eps":"2/255","norm":"linf","steps":20}',
        ]
        == 39.49
    )  # T19
    assert len(bob) == 1542 and not bob.duplicated(["backbone", *ranking.SETTING_COLUMNS]).any()


def test_table19_zscores_reproduce_with_population_std(bob):
    """Table 19 prints a robustness z-score per backbone: the mean over the two attack radii of
    per-radius z-scores over the table's 20 backbones, with ddof=0. All 20 match to 0.01 (the
    paper rounds to 2 decimals) except CLIP ResNet-50, whose printed 0.58 has the wrong sign
    (its attacked accuracies 32.78 / 18.55 are below the means 40.9 / 24.2): |z| matches.
    The sample std (ddof=1) misses by up to 0.04: this is how bobx picked ddof=0."""
    printed = pd.read_csv(paper.TABLE19_CSV).set_index("backbone")["z_paper"]
    robust = bob[bob["task"] == "robustness"]
    for ddof, worst in ((0, 0.01), (1, 0.04)):
        ours = task_scores(robust, ddof=ddof).set_index("backbone")["score"]
        assert set(ours.index) == set(printed.index)
        err = (ours - printed).abs().drop("clip_resnet50_openai")
        if ddof == 0:
            assert err.max() <= worst
            assert ours["clip_resnet50_openai"] == pytest.approx(-0.585, abs=0.005)
        else:
            assert err.max() > 0.03


# Table 2 from the appendix tables. Data: paper.main_comparison (no random-init baselines, no
# retrieval-only larger variants), every transcribed setting of the six tasks, ddof=0.
#  * Classification reproduces when MiDaS is left out of the classification comparison
#    (footnote 2: "we exclude MiDaS variants evaluated on ImageNet for this comparison"). If
#    only MiDaS's ImageNet records are dropped, MiDaS SwinV2-B ranks 3rd (ConvNeXt-B 21k 4th).
#  * Detection and segmentation reproduce with frozen + fine-tuned COCO + LVIS settings
#    (without LVIS, segmentation's 3rd place goes to MiDaS SwinV2-B).
#  * Retrieval reproduces (all 8 datasets x mAP, MRR, Recall@5).
#  * OOD detection reproduces (fine-tuned + frozen Sim10k -> Cityscapes).
#  * OOD classification does NOT: in Table 14 CLIP ViT-B beats Sup. SwinV2-B (21k) on all four
#    ImageNet shifts, so SwinV2-B comes 6th, not 2nd; (MiDaS SwinV2-B, 1st on IN-A/R/V2, has to
#    be excluded for CLIP to be 2nd at all). The paper must have used other settings or numbers.
#  * "All" reproduces only as the mean z over all settings pooled across tasks
#    (weight="setting") among backbones evaluated in all six tasks (min_tasks=6). The
#    protocol's mean over tasks gives MiDaS SwinV2-B (or Sup. ConvNeXt-B 1k) 3rd: CLIP ViT-B's
#    frozen detection (21.9 AP) and frozen Sim10k numbers sink its task means.
def _table2_data(bob_main):
    is_midas = bob_main["backbone"].str.startswith("midas_")
    return bob_main[~(is_midas & (bob_main["task"] == "classification"))]


TABLE2_ROWS = [
    pytest.param(task, marks=pytest.mark.xfail(strict=True, reason="see comment above"))
    if task == "ood_classification"
    else task
    for task in paper.TABLE2
]


@pytest.mark.parametrize("task", TABLE2_ROWS)
def test_table2_top3_reproduces(bob_main, task):
    ranked = rank(_table2_data(bob_main), n_boot=0, weight="setting", min_tasks=6)
    got = top_k(ranked).set_index("task").loc[task].tolist()
    assert got == paper.TABLE2[task]


def test_table2_bootstrap_confidence(bob_main):
    """The winners are not flukes of a few settings (bootstrap over settings, seed 0)."""
    ranked = rank(_table2_data(bob_main), weight="setting", min_tasks=6, n_boot=1000, seed=0)
    p_first = ranked[ranked["rank"] == 1].set_index("task")["p_first"].astype(float)
    assert p_first["detection"] > 0.5
    assert p_first["segmentation"] > 0.9
    assert p_first[OVERALL] > 0.9


def test_table20_group_order_reproduces(bob_main):
    """Table 20 (mean z of each group's top 3): within every task, the order of the three groups
    reproduces (e.g. Sup-1k > Sup-21k > SSL only for OOD detection); the values do not (ours
    e.g. classification SSL 0.74 / Sup-1k 0.33 / Sup-21k 0.88 vs the paper's 0.573 / 0.527 /
    0.936): the paper's z pool and settings per task are not fully specified."""
    meta = paper.load_meta()
    groups = dict(meta.dropna(subset=["group"])[["backbone", "group"]].values)
    table = group_means(task_scores(_table2_data(bob_main)), groups, top=3)
    ours = table.pivot(index="task", columns="group", values="score")
    for task, want in paper.TABLE20.items():
        assert sorted(want, key=want.get) == sorted(want, key=ours.loc[task].get), task


def test_module_docstring_example_runs():
    import doctest

    assert doctest.testmod(ranking).failed == 0

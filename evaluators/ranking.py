"""Rank backbones from result records, the Battle-of-the-Backbones way (paper section 4).

Input is a long table of result records (``Store.results()``, ``bobx results --format csv``),
one row per backbone and *setting*. A setting is ``(task, dataset, split, metric, params)``;
``params`` is the canonical JSON of the protocol knobs (``'{}'`` when there are none).

1. :func:`zscores`: within each setting, ``z = (x - mean) / std`` over the backbones evaluated
   there, negated when the record says ``higher_is_better=False``. The direction is read from
   the data, never guessed from the metric name.
2. :func:`task_scores`: a backbone's task score is the mean of its z-scores over that task's
   settings; :func:`overall_scores` averages task scores (every task weighs the same).
3. :func:`rank`: scores, ranks, bootstrap percentile intervals and the bootstrap frequency of
   ranking first, for every task and ``"overall"``.

**What "overall" covers.** By default the paper's Table 2 overall: the performance tasks
:data:`PERFORMANCE_TASKS` (classification, probe and fine-tune alike; detection; segmentation;
retrieval; OOD classification; OOD detection) among those ranked. Calibration, robustness,
speed and any task of your own get their own rows but do not move "overall": images/s
measured on whatever machine extracted must not change which backbone ranks first.
``overall_tasks=[...]`` chooses other tasks, ``overall_tasks="all"`` every ranked task; the
ranking's ``in_overall`` column says which tasks were combined.

Conventions (each one is tested):

* **Standard deviation: population, ``ddof=0``** (numpy's ``np.std`` default). The paper says
  "the standard deviation of the sample" and its public repositories contain no ranking code,
  but its Table 19 prints robustness z-scores: recomputing them from the table's own accuracies
  matches to 0.01 with ``ddof=0`` and misses by up to 0.04 with ``ddof=1`` (pandas'/R's
  default). ``ddof`` is a keyword everywhere.
* **Degenerate settings.** A setting with fewer than ``min_backbones`` (default 2) backbones is
  dropped: one number compares with nothing. A setting where every backbone has the same value
  gives ``z = 0`` to all of them (a tie, not an error).
* **Missing data.** A backbone not evaluated in a setting is left out of that setting's mean
  and std and gets no z there; its task score averages the settings it has, and every score
  carries ``n_settings`` (and ``n_tasks`` for overall) so thin evidence is visible. Records
  with a NaN value count as not evaluated.
* **Outcome params.** Keys of :data:`OUTCOME_PARAMS` (e.g. the probe's ``n_unconverged``)
  report how a run went, not how it was configured: they stay in the record but are dropped
  from the setting, so backbones evaluated with the same knobs share one setting.
* **Re-runs.** Several records for one backbone and setting: the most recent by ``created_at``
  wins when that column exists (records without a timestamp count as oldest; equal times keep
  the later row), otherwise the last row wins.
* **Order.** Tasks come in :data:`KNOWN_TASKS` order, then other task names alphabetically, then
  ``"overall"``; within a task by rank, then backbone name. Results do not depend on the order
  of the input rows (except which duplicate is "last" when there is no ``created_at``).

>>> import pandas as pd
>>> df = pd.DataFrame({"backbone": ["a", "b", "a", "b"], "task": "classification",
...                    "dataset": ["d1", "d1", "d2", "d2"], "split": "test", "metric": "top1",
...                    "value": [80.0, 70.0, 60.0, 50.0], "higher_is_better": True,
...                    "params": "{}"})
>>> rank(df, n_boot=0)[["backbone", "task", "score", "rank", "n_settings"]]
  backbone            task  score  rank  n_settings
0        a  classification    1.0     1           2
1        b  classification   -1.0     2           2
2        a         overall    1.0     1           2
3        b         overall   -1.0     2           2
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from evaluators.canonical import canonical_json
from evaluators.errors import DataError, UnknownNameError

__all__ = [
    "KNOWN_TASKS",
    "OUTCOME_PARAMS",
    "OVERALL",
    "PERFORMANCE_TASKS",
    "RECORD_COLUMNS",
    "SETTING_COLUMNS",
    "group_means",
    "latest_records",
    "overall_scores",
    "overall_task_names",
    "rank",
    "setting_params",
    "task_order",
    "task_scores",
    "top_k",
    "zscores",
]

#: The columns that identify a setting.
SETTING_COLUMNS: tuple[str, ...] = ("task", "dataset", "split", "metric", "params")
#: The columns every input record needs.
RECORD_COLUMNS: tuple[str, ...] = ("backbone", *SETTING_COLUMNS, "value", "higher_is_better")
#: The pseudo-task holding the mean over tasks.
OVERALL = "overall"
#: What "overall" combines by default: BoB's Table 2 performance tasks. A fine-tuning job
#: records task ``classification`` (``params.protocol = "finetune"``), detection jobs
#: ``detection`` / ``segmentation`` / ``ood_detection``: all of them count. Calibration,
#: robustness and speed are ranked on their own rows only.
PERFORMANCE_TASKS: tuple[str, ...] = (
    "classification",
    "detection",
    "segmentation",
    "retrieval",
    "ood_classification",
    "ood_detection",
)
#: Task names with a fixed display order (the paper's); any other task name works too.
KNOWN_TASKS: tuple[str, ...] = (*PERFORMANCE_TASKS, "calibration", "robustness", "speed")
#: ``params`` keys that describe a run's outcome rather than its configuration (the probe's
#: count of unconverged fits): kept in records, left out of the setting.
OUTCOME_PARAMS: tuple[str, ...] = ("n_unconverged",)

_Z_COLUMNS = ("backbone", *SETTING_COLUMNS, "value", "higher_is_better", "z", "n_backbones")


# --------------------------------------------------------------------------------------------
# Records in
# --------------------------------------------------------------------------------------------


def setting_params(value: object) -> str:
    """A record's ``params`` (JSON text or a mapping) as a setting sees them: canonical JSON
    without the :data:`OUTCOME_PARAMS` (``None`` / ``''`` -> ``'{}'``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return "{}"
    if isinstance(value, Mapping):
        return canonical_json(_knobs(value))
    if not isinstance(value, str):
        raise DataError(f"params must be a JSON object string such as '{{}}', got {value!r}.")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"params {value!r} is not JSON; write the protocol knobs as a JSON object, "
            "e.g. '{\"k\":20}', or '{}' for none."
        ) from exc
    if not isinstance(parsed, dict):
        raise DataError(f"params {value!r} must be a JSON object (a dict), e.g. '{{\"k\":20}}'.")
    return canonical_json(_knobs(parsed))


def _knobs(params: Mapping[str, object]) -> dict[str, object]:
    """``params`` without the :data:`OUTCOME_PARAMS` (what identifies a setting)."""
    return {k: v for k, v in params.items() if k not in OUTCOME_PARAMS}


def _as_bool(series: pd.Series) -> pd.Series:
    if series.dtype == bool:
        return series
    mapping = {"true": True, "false": False, "1": True, "0": False}
    out = series.map(lambda v: v if isinstance(v, bool | np.bool_) else mapping.get(str(v).lower()))
    bad = out.isna()
    if bad.any():
        raise DataError(
            f"higher_is_better must be True/False; got {series[bad].iloc[0]!r}. "
            "Each record must state its metric's direction (lower-is-better: False)."
        )
    return out.astype(bool)


def latest_records(df: pd.DataFrame) -> pd.DataFrame:
    """Validated records, one per backbone and setting, params canonicalised.

    Returns a new frame with the :data:`RECORD_COLUMNS` (plus ``created_at`` if present):
    ``value`` float, ``higher_is_better`` bool, ``params`` canonical JSON (sorted keys, no
    spaces; ``''``/missing become ``'{}'``; :data:`OUTCOME_PARAMS` left out). Rows with a NaN
    value are dropped first (not evaluated; a failed re-run does not hide an earlier result).
    Of several rows for one backbone and setting the most recent by ``created_at`` is kept
    (rows without a timestamp count as oldest; equal stamps keep the later row), else the last
    row. Raises :class:`~evaluators.errors.DataError` on missing columns, non-numeric values,
    an infinite value that is the latest of its backbone and setting (checked after "latest
    wins"), or a setting whose rows disagree on ``higher_is_better``.
    """
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"Expected a pandas DataFrame of result records, got {type(df).__name__}.")
    missing = [c for c in RECORD_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"Result records lack column(s) {missing}; need {list(RECORD_COLUMNS)} "
            "(use split='test' and params='{}' when they do not apply)."
        )
    extra = [c for c in ("created_at", "id") if c in df.columns]
    keep = [*RECORD_COLUMNS, *extra]
    out = df.loc[:, keep].reset_index(drop=True)
    for col in ("backbone", "task", "dataset", "split", "metric"):
        if out[col].isna().any():
            row = int(np.flatnonzero(out[col].isna().to_numpy())[0])
            raise DataError(f"Record {row} has no {col}; every record needs one.")
        out[col] = out[col].astype(str)
    if (out["task"] == OVERALL).any():
        raise DataError(f"'{OVERALL}' is reserved for the mean over tasks; rename that task.")
    values = pd.to_numeric(out["value"], errors="coerce")
    bad = values.isna() & out["value"].notna()
    if bad.any():
        raise DataError(f"Record value {out['value'][bad].iloc[0]!r} is not a number.")
    out["value"] = values.astype(float)
    out["higher_is_better"] = _as_bool(out["higher_is_better"])
    out["params"] = [setting_params(p) for p in out["params"]]
    out = out[out["value"].notna()]

    directions = out.groupby(list(SETTING_COLUMNS), sort=False)["higher_is_better"].nunique()
    if (directions > 1).any():
        setting = directions[directions > 1].index[0]
        raise DataError(
            f"Setting {dict(zip(SETTING_COLUMNS, setting, strict=True))} has records with both "
            "higher_is_better=True and False; a metric has one direction, fix those records."
        )

    if "created_at" in out.columns:
        try:
            stamp = pd.to_datetime(out["created_at"], utc=True, format="mixed")
        except (ValueError, TypeError) as exc:
            raise DataError(f"created_at must hold ISO timestamps: {exc}") from exc
        out = (
            out.assign(_ts=stamp, _row=np.arange(len(out)))
            .sort_values(["_ts", "_row"], na_position="first", kind="stable")
            .drop(columns=["_ts", "_row"])
        )
    out = out.drop_duplicates(["backbone", *SETTING_COLUMNS], keep="last")
    # after "latest wins": an infinite value a newer record superseded does no harm
    infinite = np.isinf(out["value"].to_numpy(dtype=float))
    if infinite.any():
        row = out[infinite].iloc[0]
        which = f" (record {row['id']})" if "id" in out.columns else ""
        raise DataError(
            f"Record values must be finite; the latest {row['metric']} of {row['backbone']} "
            f"on {row['dataset']} is {row['value']}{which}; retract that record or record a "
            "newer finite value."
        )
    return out.drop(columns=["id"], errors="ignore").reset_index(drop=True)


def task_order(tasks: Iterable[str]) -> list[str]:
    """``tasks`` deduplicated in display order: known tasks first, others sorted, overall last."""
    names = set(tasks)
    known = [t for t in KNOWN_TASKS if t in names]
    other = sorted(names - set(KNOWN_TASKS) - {OVERALL})
    return known + other + ([OVERALL] if OVERALL in names else [])


def _select_tasks(present: Iterable[str], tasks: Sequence[str] | str | None) -> list[str]:
    present_order = task_order(present)
    if tasks is None:
        return [t for t in present_order if t != OVERALL]
    hint = "No records (or no comparable settings) for it in this data."
    return _pick(present_order, tasks, "task", hint)


def _pick(order: list[str], wanted: Sequence[str] | str, kind: str, hint: str) -> list[str]:
    """The names of ``order`` that are ``wanted`` (in ``order``'s order); each wanted name
    must be in ``order`` (:class:`~evaluators.errors.UnknownNameError` naming ``kind``)."""
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    for name in wanted:
        if name not in order:
            raise UnknownNameError(kind, name, order, hint=hint)
    keep = set(wanted)
    return [t for t in order if t in keep]


def overall_task_names(
    ranked: Iterable[str], overall_tasks: Sequence[str] | str | None = None
) -> list[str]:
    """The tasks "overall" combines, in display order, out of the ``ranked`` task names.

    ``None`` (default): the :data:`PERFORMANCE_TASKS` among them (possibly none);
    ``"all"``: every ranked task; a list: exactly those, each of which must be ranked
    (:class:`~evaluators.errors.UnknownNameError` otherwise).
    """
    names = [t for t in task_order(ranked) if t != OVERALL]
    if overall_tasks is None:
        return [t for t in names if t in PERFORMANCE_TASKS]
    if overall_tasks == "all":
        return names
    hint = "'overall' combines ranked tasks only (or pass 'all')."
    return _pick(names, overall_tasks, "task for overall", hint)


# --------------------------------------------------------------------------------------------
# z-scores and scores
# --------------------------------------------------------------------------------------------


def zscores(df: pd.DataFrame, *, ddof: int = 0, min_backbones: int = 2) -> pd.DataFrame:
    """Per-setting z-scores of result records.

    Args:
        df: result records with at least :data:`RECORD_COLUMNS` (see :func:`latest_records`
            for validation, duplicates and NaN handling).
        ddof: delta degrees of freedom of the std: 0 = population (numpy, and what reproduces
            the paper's Table 19), 1 = sample.
        min_backbones: settings with fewer backbones are dropped (and, whatever this says,
            settings with no more than ``ddof`` backbones, whose std is undefined).

    Returns:
        One row per (backbone, setting) with columns ``backbone, task, dataset, split, metric,
        params, value, higher_is_better, z, n_backbones``. ``z`` is negated for
        lower-is-better metrics, so higher ``z`` is always better; it is 0 for every backbone
        of a setting whose values are all equal.
    """
    if ddof < 0:
        raise DataError(f"ddof must be >= 0, got {ddof}.")
    if min_backbones < 1:
        raise DataError(f"min_backbones must be >= 1, got {min_backbones}.")
    rec = latest_records(df)
    keys = list(SETTING_COLUMNS)
    grouped = rec.groupby(keys, sort=False)["value"]
    n = grouped.transform("size").astype(int)
    rec = rec.assign(n_backbones=n)
    rec = rec[rec["n_backbones"] >= max(min_backbones, ddof + 1)]
    grouped = rec.groupby(keys, sort=False)["value"]
    mean = grouped.transform("mean")
    std = grouped.transform("std", ddof=ddof)
    tied = grouped.transform("max") == grouped.transform("min")
    z = (rec["value"] - mean) / std.where(~tied, 1.0)
    z = z.where(~tied, 0.0)
    z = z.where(rec["higher_is_better"], -z)
    out = rec.assign(z=z.astype(float)).loc[:, list(_Z_COLUMNS)]
    return _sort_settings(out)


def _sort_settings(frame: pd.DataFrame) -> pd.DataFrame:
    order = {t: i for i, t in enumerate(task_order(frame["task"]))}
    key = frame["task"].map(order)
    return (
        frame.assign(_t=key)
        .sort_values(["_t", "dataset", "split", "metric", "params", "backbone"], kind="stable")
        .drop(columns="_t")
        .reset_index(drop=True)
    )


def _as_z(data: pd.DataFrame, ddof: int) -> pd.DataFrame:
    """``data`` if it already holds z-scores (a ``z`` column), else :func:`zscores` of it."""
    if "z" in data.columns:
        missing = [c for c in ("backbone", *SETTING_COLUMNS, "z") if c not in data.columns]
        if missing:
            raise DataError(f"z-score frame lacks column(s) {missing}; pass zscores(records).")
        return data
    return zscores(data, ddof=ddof)


def _sort_scores(frame: pd.DataFrame, by_rank: bool = False) -> pd.DataFrame:
    order = {t: i for i, t in enumerate(task_order(frame["task"]))}
    first = ["rank"] if by_rank else []
    asc = [True] if by_rank else []
    tmp = frame.assign(_t=frame["task"].map(order), _s=-frame["score"])
    tmp = tmp.sort_values(["_t", *first, "_s", "backbone"], ascending=[True, *asc, True, True],
                          kind="stable")  # fmt: skip
    return tmp.drop(columns=["_t", "_s"]).reset_index(drop=True)


def task_scores(
    data: pd.DataFrame, *, tasks: Sequence[str] | str | None = None, ddof: int = 0
) -> pd.DataFrame:
    """Mean z-score of each backbone over each task's settings.

    Args:
        data: result records, or the output of :func:`zscores`.
        tasks: restrict to these tasks (default: every task in the data).
        ddof: passed to :func:`zscores` when ``data`` holds raw records.

    Returns:
        Columns ``backbone, task, score, n_settings`` (settings the score rests on), sorted by
        task and descending score.
    """
    z = _as_z(data, ddof)
    selected = _select_tasks(z["task"], tasks)
    z = z[z["task"].isin(selected)]
    out = (
        z.groupby(["backbone", "task"], sort=False)["z"]
        .agg(score="mean", n_settings="size")
        .reset_index()
    )
    out["n_settings"] = out["n_settings"].astype(int)
    return _sort_scores(out)


def _check_overall_args(weight: str, min_tasks: int) -> None:
    if weight not in ("task", "setting"):
        raise DataError(f"weight must be 'task' or 'setting', got {weight!r}.")
    if min_tasks < 1:
        raise DataError(f"min_tasks must be >= 1, got {min_tasks}.")


def overall_scores(
    data: pd.DataFrame,
    *,
    tasks: Sequence[str] | str | None = None,
    ddof: int = 0,
    weight: Literal["task", "setting"] = "task",
    min_tasks: int = 1,
    overall_tasks: Sequence[str] | str | None = None,
) -> pd.DataFrame:
    """Each backbone's score over the tasks "overall" combines (task ``"overall"``).

    Args:
        data: result records, the output of :func:`zscores`, or of :func:`task_scores`.
        tasks: the tasks in play (default: all in the data).
        overall_tasks: which of them to combine (see :func:`overall_task_names`; default
            the :data:`PERFORMANCE_TASKS`).
        ddof: passed to :func:`zscores` when ``data`` holds raw records.
        weight: ``"task"`` (default, the protocol): the mean of the backbone's task scores,
            every task weighs the same. ``"setting"``: the mean of all its z-scores pooled
            over tasks, so a task weighs by its number of settings (what reproduces the
            paper's "All" row from its appendix tables; see tests/test_ranking.py).
        min_tasks: leave out backbones scored in fewer tasks (default 1: keep all; pass the
            number of tasks to compare only backbones evaluated everywhere).

    Returns:
        Columns ``backbone, task, score, n_settings, n_tasks``; a backbone missing from a task
        is combined over the tasks it has, and ``n_tasks`` / ``n_settings`` say how many.
    """
    _check_overall_args(weight, min_tasks)
    if "score" in data.columns and "z" not in data.columns:
        if "n_settings" not in data.columns:
            raise DataError("Task scores lack n_settings; pass the output of task_scores().")
        ts = data[data["task"] != OVERALL]
        ts = ts[ts["task"].isin(_select_tasks(ts["task"], tasks))]
    else:
        ts = task_scores(data, tasks=tasks, ddof=ddof)
    ts = ts[ts["task"].isin(overall_task_names(ts["task"].unique(), overall_tasks))]
    ts = ts.assign(_sum=ts["score"] * ts["n_settings"])
    out = (
        ts.groupby("backbone", sort=False)
        .agg(
            score=("score", "mean"),
            _sum=("_sum", "sum"),
            n_settings=("n_settings", "sum"),
            n_tasks=("task", "size"),
        )
        .reset_index()
    )
    if weight == "setting":
        out["score"] = out["_sum"] / out["n_settings"]
    out = out.drop(columns="_sum")
    out.insert(1, "task", OVERALL)
    out["n_settings"] = out["n_settings"].astype(int)
    out["n_tasks"] = out["n_tasks"].astype(int)
    out = out[out["n_tasks"] >= min_tasks]
    return _sort_scores(out)


# --------------------------------------------------------------------------------------------
# Ranking with a bootstrap over settings
# --------------------------------------------------------------------------------------------


def rank(
    df: pd.DataFrame,
    *,
    tasks: Sequence[str] | str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    ddof: int = 0,
    weight: Literal["task", "setting"] = "task",
    min_tasks: int = 1,
    overall_tasks: Sequence[str] | str | None = None,
) -> pd.DataFrame:
    """Rank backbones per task and overall, with bootstrap uncertainty.

    Args:
        df: result records (or the output of :func:`zscores`).
        tasks: tasks to rank (default: all in the data).
        overall_tasks: which ranked tasks ``"overall"`` combines (see
            :func:`overall_task_names`; default the :data:`PERFORMANCE_TASKS` among them;
            no ``"overall"`` rows when none is ranked).
        n_boot: bootstrap replicates; 0 skips the bootstrap (``ci_*`` and ``p_first`` NaN).
        seed: seed of ``numpy.random.default_rng``; equal inputs and seed give equal output.
        ci: central coverage of the percentile interval, in (0, 1).
        ddof: std convention of the z-scores (see :func:`zscores`).
        weight, min_tasks: how ``"overall"`` combines tasks (see :func:`overall_scores`).

    Bootstrap: each replicate resamples, with replacement, as many settings as the task has
    from that task's settings (independently per task), recomputes every task score as the
    mean z over the drawn settings (with multiplicity; z-scores themselves are per setting and
    stay fixed), and the overall score from those (as in :func:`overall_scores`). A backbone
    none of whose settings were drawn has no score in that replicate. ``ci_low``/``ci_high``
    are percentiles of the replicate scores; ``p_first`` is the fraction of replicates in
    which the backbone had the highest score (a tie for first shares the credit equally).

    Returns:
        Columns ``backbone, task, score, rank, n_settings, n_tasks, ci_low, ci_high,
        p_first, in_overall``; ``rank`` 1 is best (ties share the lower rank), ``n_tasks`` is
        1 for task rows, ``in_overall`` says whether the row's task is one "overall" combines
        (True on the overall rows). Sorted by task (:func:`task_order`, ``"overall"`` last)
        then rank. Scores equal those of :func:`task_scores` and :func:`overall_scores`.
    """
    if n_boot < 0:
        raise DataError(f"n_boot must be >= 0, got {n_boot}.")
    if not 0.0 < ci < 1.0:
        raise DataError(f"ci is a coverage in (0, 1), e.g. 0.95; got {ci}.")
    _check_overall_args(weight, min_tasks)
    z = _as_z(df, ddof)
    selected = _select_tasks(z["task"], tasks)
    z = z[z["task"].isin(selected)]
    if z.empty:
        raise DataError(
            "Nothing to rank: no setting has at least two backbones with a value. "
            "z-scores compare backbones within a setting; add results for more backbones."
        )
    in_overall = overall_task_names(selected, overall_tasks)
    combine = [selected.index(t) for t in in_overall]
    backbones = sorted(z["backbone"].unique())
    col = {b: i for i, b in enumerate(backbones)}
    n_b = len(backbones)
    rng = np.random.default_rng(seed)
    keys = list(SETTING_COLUMNS)

    # Per task: z sums and counts per backbone, point and bootstrap.
    sums, counts, boot_sums, boot_counts = [], [], [], []
    for task in selected:
        zt = z[z["task"] == task]
        setting_keys = list(zt[keys].itertuples(index=False, name=None))
        settings = sorted(set(setting_keys))
        row = {s: i for i, s in enumerate(settings)}
        mat = np.zeros((len(settings), n_b))
        have = np.zeros((len(settings), n_b))
        rows, cols = [row[s] for s in setting_keys], [col[b] for b in zt["backbone"]]
        mat[rows, cols] = zt["z"].to_numpy(dtype=float)
        have[rows, cols] = 1.0
        sums.append(mat.sum(axis=0))
        counts.append(have.sum(axis=0))
        if n_boot:
            n_s = len(settings)
            draws = rng.multinomial(n_s, np.full(n_s, 1.0 / n_s), size=n_boot).astype(float)
            boot_sums.append(draws @ mat)  # (n_boot, n_b)
            boot_counts.append(draws @ have)

    def pick(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [arrays[i] for i in combine]

    task_score = [_ratio(s, c) for s, c in zip(sums, counts, strict=True)]
    results, n_settings = list(task_score), list(counts)
    n_tasks_col: list[np.ndarray] = [np.ones(n_b) for _ in selected]
    rows_for = list(selected)
    if combine:
        n_tasks = np.sum([c > 0 for c in pick(counts)], axis=0)
        eligible = n_tasks >= min_tasks
        overall = _combine(pick(task_score), pick(sums), pick(counts), weight)
        overall[~eligible] = np.nan
        results.append(overall)
        n_settings.append(np.sum(pick(counts), axis=0))
        n_tasks_col.append(n_tasks)
        rows_for.append(OVERALL)
    boots: list[np.ndarray | None] = [None] * len(results)
    if n_boot:
        boot_scores = [_ratio(s, c) for s, c in zip(boot_sums, boot_counts, strict=True)]
        if combine:
            boot_overall = _combine(pick(boot_scores), pick(boot_sums), pick(boot_counts), weight)
            boot_overall[:, ~eligible] = np.nan
            boot_scores.append(boot_overall)
        boots = list(boot_scores)

    lo_q, hi_q = 100.0 * (1.0 - ci) / 2.0, 100.0 * (1.0 + ci) / 2.0
    frames = []
    for task, scores, n_set, n_tk, boot in zip(
        rows_for, results, n_settings, n_tasks_col, boots, strict=True
    ):
        if boot is not None:
            ci_low, ci_high = _nanpercentiles(boot, lo_q, hi_q)
            p_first = _p_first(boot)
        else:
            ci_low = ci_high = p_first = np.full(n_b, np.nan)
        keep = ~np.isnan(scores)
        frame = pd.DataFrame(
            {
                "backbone": backbones,
                "task": task,
                "score": scores,
                "n_settings": n_set.astype(int),
                "n_tasks": n_tk.astype(int),
                "ci_low": ci_low,
                "ci_high": ci_high,
                "p_first": p_first,
                "in_overall": task == OVERALL or task in in_overall,
            }
        )[keep]
        frame.insert(3, "rank", frame["score"].rank(method="min", ascending=False).astype(int))
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    return _sort_scores(out, by_rank=True)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` where ``den > 0``, NaN elsewhere."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _combine(
    scores: list[np.ndarray], sums: list[np.ndarray], counts: list[np.ndarray], weight: str
) -> np.ndarray:
    """Overall score from per-task arrays (any leading shape): task mean or pooled settings."""
    if weight == "setting":
        return _ratio(np.sum(sums, axis=0), np.sum(counts, axis=0))
    stack = np.stack(scores)
    ok = ~np.isnan(stack)
    return _ratio(np.where(ok, stack, 0.0).sum(axis=0), ok.sum(axis=0))


def _nanpercentiles(boot: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    n_b = boot.shape[1]
    low, high = np.full(n_b, np.nan), np.full(n_b, np.nan)
    for j in range(n_b):
        col = boot[:, j]
        col = col[~np.isnan(col)]
        if col.size:
            low[j], high[j] = np.percentile(col, [lo, hi])
    return low, high


def _p_first(boot: np.ndarray) -> np.ndarray:
    filled = np.where(np.isnan(boot), -np.inf, boot)
    best = filled.max(axis=1, keepdims=True)
    winners = (filled == best) & ~np.isnan(boot)
    share = winners / np.maximum(winners.sum(axis=1, keepdims=True), 1)
    return np.asarray(share.sum(axis=0) / boot.shape[0], dtype=float)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def top_k(ranked: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    """The paper's Tables 2/3: per task, the ``k`` best backbones.

    Args:
        ranked: output of :func:`rank` (or any frame with ``backbone, task, score``).
        k: how many per task.

    Returns:
        One row per task (display order) with columns ``task, top1, ..., top{k}`` holding
        backbone names, best first (the paper prints them right to left). Ties are broken by
        backbone name; a task with fewer than ``k`` backbones has missing cells.
    """
    if k < 1:
        raise DataError(f"k must be >= 1, got {k}.")
    ordered = _sort_scores(ranked[["backbone", "task", "score"]])
    rows = []
    for task in task_order(ordered["task"]):
        names = ordered.loc[ordered["task"] == task, "backbone"].tolist()[:k]
        rows.append({"task": task, **{f"top{i + 1}": n for i, n in enumerate(names)}})
    columns = ["task", *(f"top{i + 1}" for i in range(k))]
    return pd.DataFrame(rows).reindex(columns=columns)


def group_means(scores: pd.DataFrame, groups: Mapping[str, str], *, top: int = 3) -> pd.DataFrame:
    """The paper's Table 20: mean score of the ``top`` best backbones of each group, per task.

    Args:
        scores: output of :func:`task_scores`, :func:`overall_scores` or :func:`rank`.
        groups: backbone -> group name (e.g. ``"ssl"``, ``"sup-1k"``, ``"sup-21k"``);
            backbones not in the mapping are ignored.
        top: how many of each group's best backbones to average.

    Returns:
        Long table with columns ``task, group, score, n_backbones, backbones`` (the averaged
        backbones, best first, comma-separated); ``n_backbones`` < ``top`` when a group has
        fewer scored members in that task. Pivot with
        ``.pivot(index="task", columns="group", values="score")`` for the paper's layout.
    """
    if top < 1:
        raise DataError(f"top must be >= 1, got {top}.")
    known = scores[scores["backbone"].isin(list(groups))]
    known = known.assign(group=known["backbone"].map(dict(groups)))
    known = _sort_scores(known[["backbone", "task", "score", "group"]])
    rows = []
    group_names = sorted(set(groups.values()))
    for task in task_order(known["task"]):
        in_task = known[known["task"] == task]
        for group in group_names:
            best = in_task[in_task["group"] == group].head(top)
            if best.empty:
                continue
            rows.append(
                {
                    "task": task,
                    "group": group,
                    "score": float(best["score"].mean()),
                    "n_backbones": len(best),
                    "backbones": ",".join(best["backbone"]),
                }
            )
    return pd.DataFrame(rows, columns=["task", "group", "score", "n_backbones", "backbones"])

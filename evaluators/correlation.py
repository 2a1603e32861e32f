"""Spearman correlations between backbone scores (Battle of the Backbones, section 5).

* :func:`task_correlations`: every pair of tasks, across the backbones scored in both.
* :func:`metadata_correlations`: a score against parameter count, pretraining-set size and
  throughput, over all backbones and split by architecture family (the paper: ViT vs CNN).
* :func:`plot_task_heatmap`, :func:`plot_scatter`: figures (matplotlib is imported inside them,
  drawn on an Agg canvas, no pyplot state).

Scores come from :mod:`evaluators.ranking` (long: ``backbone, task, score``) or as a wide frame
(index = backbone, one column per task). Every correlation is pairwise complete and reports
``n``, the number of backbones it rests on; with ``n < 3`` or a constant input, ``rho`` and
``p_value`` are NaN (Spearman is undefined there). ``p_value`` is scipy's two-sided p-value
(t-distribution approximation), as :func:`scipy.stats.spearmanr` reports it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from itertools import combinations
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from evaluators.errors import DataError, UnknownNameError
from evaluators.ranking import OVERALL, task_order

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "META_VARIABLES",
    "correlation_matrix",
    "metadata_correlations",
    "plot_scatter",
    "plot_task_heatmap",
    "scores_wide",
    "spearman",
    "task_correlations",
]

#: Metadata columns :func:`metadata_correlations` correlates the score with.
META_VARIABLES: tuple[str, ...] = ("params_m", "pretrain_size", "throughput")


def spearman(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
) -> tuple[float, float, int]:
    """Spearman ``(rho, p_value, n)`` over the pairs where both values are finite."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise DataError(
            f"spearman needs two 1-D sequences of equal length, got {a.shape}, {b.shape}."
        )
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(a.size)
    if n < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan, math.nan, n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(a, b)
    return float(res.statistic), float(res.pvalue), n


def scores_wide(scores: pd.DataFrame) -> pd.DataFrame:
    """Backbone x task score table (index ``backbone``, columns in task display order).

    Accepts the long output of :mod:`evaluators.ranking` (``backbone, task, score``; the
    ``"overall"`` rows are kept as a column) or an already wide frame (returned as floats,
    columns reordered the same way).
    """
    if {"backbone", "task", "score"} <= set(scores.columns):
        if scores.duplicated(["backbone", "task"]).any():
            raise DataError("Scores have several rows for one backbone and task; pass one "
                            "score per backbone and task (e.g. task_scores(records)).")  # fmt: skip
        wide = scores.pivot(index="backbone", columns="task", values="score")
        wide = wide.reindex(columns=task_order(wide.columns))
        wide.columns.name = None
        return wide.astype(float)
    try:
        wide = scores.astype(float)
    except (TypeError, ValueError) as exc:
        raise DataError(
            "Scores must be long (columns backbone, task, score) or wide (index backbone, "
            f"one numeric column per task): {exc}"
        ) from exc
    return wide.reindex(columns=task_order(str(c) for c in wide.columns))


def task_correlations(
    scores: pd.DataFrame, *, tasks: Sequence[str] | None = None, overall: bool = False
) -> pd.DataFrame:
    """Spearman correlation between every pair of tasks, across backbones.

    Args:
        scores: long (``backbone, task, score``) or wide (backbone x task) scores.
        tasks: tasks to correlate (default: all in ``scores``).
        overall: include the ``"overall"`` column if present (default: leave it out; it is
            built from the tasks and would correlate with them by construction).

    Returns:
        One row per unordered pair, in task display order, with columns ``task_x, task_y,
        rho, p_value, n`` (``n``: backbones scored in both tasks).
    """
    wide = scores_wide(scores)
    if tasks is None:
        names = [t for t in wide.columns if overall or t != OVERALL]
    else:
        for name in tasks:
            if name not in wide.columns:
                raise UnknownNameError("task", name, [str(c) for c in wide.columns])
        names = list(tasks)
    rows = []
    for tx, ty in combinations(names, 2):
        rho, p, n = spearman(wide[tx].to_numpy(), wide[ty].to_numpy())
        rows.append({"task_x": tx, "task_y": ty, "rho": rho, "p_value": p, "n": n})
    return pd.DataFrame(rows, columns=["task_x", "task_y", "rho", "p_value", "n"])


def correlation_matrix(corr: pd.DataFrame, value: str = "rho") -> pd.DataFrame:
    """Square symmetric task x task matrix of ``value`` from :func:`task_correlations` output.

    The diagonal is 1 for ``rho`` (NaN for other values).
    """
    names = list(dict.fromkeys([*corr["task_x"], *corr["task_y"]]))
    mat = pd.DataFrame(np.nan, index=names, columns=names)
    for tx, ty, v in corr[["task_x", "task_y", value]].itertuples(index=False, name=None):
        mat.loc[tx, ty] = mat.loc[ty, tx] = v
    if value == "rho":
        for t in names:
            mat.loc[t, t] = 1.0
    return mat


def metadata_correlations(
    scores: pd.DataFrame,
    meta: pd.DataFrame,
    *,
    by_family: bool = True,
    task: str = OVERALL,
    variables: Sequence[str] = META_VARIABLES,
) -> pd.DataFrame:
    """Spearman correlation of a backbone score with its metadata.

    Args:
        scores: long scores (``backbone, task, score``; the ``task`` rows are used) or a
            frame with ``backbone, score`` only.
        meta: one row per backbone with ``backbone`` and the ``variables`` (numbers; NaN where
            unknown), plus ``family`` (e.g. ``"vit"``, ``"cnn"``; missing ones are grouped as
            ``"unknown"``) when ``by_family``.
        by_family: also correlate within each family.
        task: which task's score to use (default ``"overall"``).
        variables: metadata columns to correlate with.

    Returns:
        Columns ``variable, family, rho, p_value, n``: ``family`` is ``"all"`` for the pooled
        rows, then each family value in sorted order; ``n`` counts backbones with both a
        score and that variable.
    """
    if "task" in scores.columns:
        present = sorted(scores["task"].unique())
        if task not in present:
            raise UnknownNameError("task", task, present)
        sc = scores.loc[scores["task"] == task, ["backbone", "score"]]
    elif {"backbone", "score"} <= set(scores.columns):
        sc = scores[["backbone", "score"]]
    else:
        raise DataError("scores need columns backbone and score (and task).")
    need = ["backbone", *variables, *(["family"] if by_family else [])]
    missing = [c for c in need if c not in meta.columns]
    if missing:
        raise DataError(f"meta lacks column(s) {missing}; need {need} (NaN where unknown).")
    if meta["backbone"].duplicated().any():
        raise DataError("meta has several rows for one backbone; give one row per backbone.")
    merged = sc.merge(meta[need], on="backbone", how="inner")
    groups: list[tuple[str, pd.DataFrame]] = [("all", merged)]
    if by_family:
        fam = merged["family"].fillna("unknown").astype(str)  # unknown: not in a catalog
        groups += [(f, merged[fam == f]) for f in sorted(fam.unique())]
    rows = []
    for variable in variables:
        for family, part in groups:
            values = pd.to_numeric(part[variable], errors="coerce").to_numpy(dtype=float)
            rho, p, n = spearman(part["score"].to_numpy(dtype=float), values)
            rows.append({"variable": variable, "family": family, "rho": rho, "p_value": p, "n": n})
    return pd.DataFrame(rows, columns=["variable", "family", "rho", "p_value", "n"])


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        from evaluators.errors import UnavailableError

        raise UnavailableError("Plotting needs matplotlib: pip install matplotlib.") from exc
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_task_heatmap(corr: pd.DataFrame, path: str | PathLike[str]) -> Path:
    """Save a task x task heatmap of Spearman rho (annotated with rho and n) to ``path``.

    ``corr`` is the output of :func:`task_correlations`; the format follows the suffix of
    ``path`` (``.png``, ``.pdf``, ``.svg``). Returns the path written.
    """
    rho_frame = correlation_matrix(corr, "rho")
    names = [str(t) for t in rho_frame.columns]
    rho = rho_frame.to_numpy(dtype=float)
    n = correlation_matrix(corr, "n").to_numpy(dtype=float)
    size = 1.0 + 0.9 * len(names)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(rho, vmin=-1.0, vmax=1.0, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            text = "" if np.isnan(rho[i, j]) else f"{rho[i, j]:.2f}"
            if i != j and not np.isnan(n[i, j]):
                text += f"\nn={int(n[i, j])}"
            dark = not np.isnan(rho[i, j]) and abs(rho[i, j]) > 0.6
            color = "white" if dark else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, label="Spearman rho")
    out = Path(path)
    fig.savefig(out, dpi=150)
    return out


def plot_scatter(
    scores: pd.DataFrame,
    task_x: str,
    task_y: str,
    path: str | PathLike[str],
    *,
    labels: bool = True,
) -> Path:
    """Save a scatter of two task scores across backbones (the paper's Figure 1) to ``path``.

    Each point is a backbone scored in both tasks; ``labels`` writes its name next to it. The
    title carries Spearman rho and n. Returns the path written.
    """
    wide = scores_wide(scores)
    for name in (task_x, task_y):
        if name not in wide.columns:
            raise UnknownNameError("task", name, [str(c) for c in wide.columns])
    both = wide[[task_x, task_y]].dropna()
    rho, _, n = spearman(both[task_x].to_numpy(), both[task_y].to_numpy())
    fig = _figure(6.0, 5.0)
    ax = fig.add_subplot()
    ax.axhline(0.0, color="0.8", lw=0.8)
    ax.axvline(0.0, color="0.8", lw=0.8)
    ax.scatter(both[task_x], both[task_y], s=24)
    if labels:
        for backbone, (x, y) in both.iterrows():
            ax.annotate(
                str(backbone), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6
            )
    ax.set_xlabel(f"{task_x} performance (relative, z)")
    ax.set_ylabel(f"{task_y} performance (relative, z)")
    ax.set_title(f"Spearman rho = {rho:.2f} (n = {n})")
    out = Path(path)
    fig.savefig(out, dpi=150)
    return out

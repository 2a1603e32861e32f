"""Rank and correlate backbones from the store's result records (``bobx rank``, ``bobx correlate``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from featcache.errors import BobxError
from featcache.store import Store


def _records(store: Store, filters: dict[str, Any]) -> pd.DataFrame:
    df = store.results(**{k: v for k, v in filters.items() if v})
    if df.empty:
        raise BobxError(
            "No result records match; run an evaluator (bobx knn / probe / retrieve) or "
            "`bobx import-results FILE` first."
        )
    return df


def rank_store(
    store: Store,
    *,
    tasks: Sequence[str] | None = None,
    backbones: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    weight: str = "task",
    min_tasks: int = 1,
) -> pd.DataFrame:
    """The paper's ranking over the store's records (see :func:`evaluators.ranking.rank`)."""
    from evaluators.ranking import rank

    df = _records(store, {"backbone": backbones, "dataset": datasets})
    return rank(
        df,
        tasks=list(tasks) if tasks else None,
        n_boot=n_boot,
        seed=seed,
        weight=weight,  # type: ignore[arg-type]
        min_tasks=min_tasks,
    )


def backbone_metadata(store: Store, backbones: Sequence[str]) -> pd.DataFrame:
    """Per-backbone metadata for correlations: catalog fields, plus measured throughput.

    Backbones known only from imported results get NaN metadata (they still rank); a
    feature point ``<name>@<point>`` has its backbone's metadata. Throughput is the median
    ``speed/images_per_s`` record of each backbone."""
    from featcache.backbones import BackboneSpec, list_backbone_specs

    catalog: dict[str, BackboneSpec] = {}  # read the catalog once, not once per backbone
    for entry in list_backbone_specs():
        catalog.update(dict.fromkeys((entry.name, *entry.aliases), entry))
    speed = store.results(task="speed", metric="images_per_s")
    rows = []
    for name in backbones:
        spec = catalog.get(name.partition("@")[0])
        if spec is not None:
            meta = {
                "family": spec.family,
                "style": spec.style,
                "params_m": spec.params_m,
                "pretrain_size": spec.pretrain_images,
            }
        else:
            meta = {"family": None, "style": None, "params_m": None, "pretrain_size": None}
        mine = speed[speed["backbone"] == name]["value"]
        rows.append(
            {"backbone": name, **meta, "throughput": float(mine.median()) if len(mine) else None}
        )
    frame = pd.DataFrame(rows)
    for col in ("params_m", "pretrain_size", "throughput"):
        frame[col] = pd.to_numeric(frame[col])
    return frame


def correlate_store(
    store: Store,
    *,
    tasks: Sequence[str] | None = None,
    backbones: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
) -> dict[str, pd.DataFrame]:
    """Task-task Spearman correlations and score-vs-metadata correlations by family."""
    from evaluators.correlation import metadata_correlations, task_correlations
    from evaluators.ranking import overall_scores, task_scores

    df = _records(store, {"backbone": backbones, "dataset": datasets})
    chosen = list(tasks) if tasks else None
    scores = pd.concat(
        [task_scores(df, tasks=chosen), overall_scores(df, tasks=chosen)], ignore_index=True
    )
    meta = backbone_metadata(store, sorted(scores["backbone"].unique()))
    return {
        "scores": scores,
        "tasks": task_correlations(scores),
        "metadata": metadata_correlations(scores, meta),
        "meta": meta,
    }

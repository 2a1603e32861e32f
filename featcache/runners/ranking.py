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
    overall_tasks: Sequence[str] | str | None = None,
) -> pd.DataFrame:
    """The paper's ranking over the store's records (see :func:`evaluators.ranking.rank`).

    "overall" combines the performance tasks unless ``overall_tasks`` says otherwise
    (``"all"`` or a list); the frame's ``in_overall`` column records the choice."""
    from evaluators.ranking import rank

    df = _records(store, _filters(backbones, datasets))
    return rank(
        df,
        tasks=list(tasks) if tasks else None,
        n_boot=n_boot,
        seed=seed,
        weight=weight,  # type: ignore[arg-type]
        min_tasks=min_tasks,
        overall_tasks=overall_tasks,
    )


def _filters(
    backbones: Sequence[str] | None, datasets: Sequence[str] | None
) -> dict[str, list[str] | None]:
    """Record filters with catalog aliases resolved (``dino_vitb`` also finds
    ``dino_vitb_in1k``)."""
    from featcache.runners.names import with_canonical

    return {
        "backbone": with_canonical(backbones, "backbone"),
        "dataset": with_canonical(datasets, "dataset"),
    }


#: Columns of :func:`backbone_metadata`.
META_COLUMNS = ("backbone", "family", "style", "params_m", "pretrain_size", "throughput")
#: Family of a backbone the catalog does not know (imported features or results).
UNKNOWN_FAMILY = "unknown"


def backbone_metadata(store: Store, backbones: Sequence[str]) -> pd.DataFrame:
    """Per-backbone metadata for correlations: catalog fields, plus measured throughput.

    Backbones known only from imported results get NaN metadata and family ``"unknown"``
    (they still rank); a feature point ``<name>@<point>`` has its backbone's metadata.
    Throughput is the median ``speed/images_per_s`` record of each backbone. Always has the
    columns of :data:`META_COLUMNS`, even for no backbones."""
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
                "family": spec.family or UNKNOWN_FAMILY,
                "style": spec.style,
                "params_m": spec.params_m,
                "pretrain_size": spec.pretrain_images,
            }
        else:
            meta = {"family": UNKNOWN_FAMILY, "style": None}
        mine = speed[speed["backbone"] == name]["value"]
        rows.append(
            {"backbone": name, **meta, "throughput": float(mine.median()) if len(mine) else None}
        )
    frame = pd.DataFrame(rows, columns=list(META_COLUMNS))
    for col in ("params_m", "pretrain_size", "throughput"):
        frame[col] = pd.to_numeric(frame[col]).astype(float)
    return frame


def correlate_store(
    store: Store,
    *,
    tasks: Sequence[str] | None = None,
    backbones: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    overall_tasks: Sequence[str] | str | None = None,
) -> dict[str, Any]:
    """Task-task Spearman correlations and score-vs-metadata correlations by family.

    The metadata correlations use the "overall" score (the performance tasks unless
    ``overall_tasks`` says otherwise, as in :func:`rank_store`), or, when no backbone has
    one, the first ranked task's score. Correlations resting on fewer than three backbones
    are NaN (with their ``n``); no comparable setting at all is a one-line error."""
    from evaluators.correlation import metadata_correlations, task_correlations
    from evaluators.ranking import OVERALL, overall_scores, overall_task_names, task_scores

    df = _records(store, _filters(backbones, datasets))
    chosen = list(tasks) if tasks else None
    per_task = task_scores(df, tasks=chosen)
    if per_task.empty:
        raise BobxError(
            "Nothing to correlate: no setting has results of two or more backbones; "
            "evaluate more backbones on the same dataset and knobs first."
        )
    overall = overall_scores(df, tasks=chosen, overall_tasks=overall_tasks)
    scores = pd.concat([per_task, overall], ignore_index=True)
    meta = backbone_metadata(store, sorted(scores["backbone"].unique()))
    by = OVERALL if len(overall) else str(per_task["task"].iloc[0])
    return {
        "scores": scores,
        "tasks": task_correlations(scores),
        "metadata": metadata_correlations(scores, meta, task=by),
        "meta": meta,
        "metadata_task": by,
        "overall_tasks": overall_task_names(per_task["task"].unique(), overall_tasks),
    }

"""Retrieval on cached features: ``bobx retrieve``.

Two protocols, chosen by what the store holds for the dataset:

* **revisited** (rOxford / rParis): the dataset's ground truth (``meta/<dataset>/gnd``,
  copied there by ``bobx extract``) and the ``query`` / ``database`` splits; Easy /
  Medium / Hard mAP and mP@k, the query crop recorded with every number.
* **label** (CUB-200, iNaturalist, ObjectNet, any labelled set): query vs gallery by
  label, from two splits (``--query-split`` / ``--gallery-split``, or the store's
  ``query`` and ``gallery`` splits), else leave-one-out within one split.

Galleries stream from the store chunk by chunk; the search is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from featcache.errors import BobxError, DataError, UnknownNameError
from featcache.records import Record, make_record
from featcache.runners.classification import (
    SEARCH_BLOCK_ROWS,
    Backbones,
    metric_records,
    pair_key,
)
from featcache.runners.names import resolve_backbones, resolve_dataset
from featcache.store import FeatureSet, Store

SETTINGS = ("easy", "medium", "hard")


def _has_gnd(store: Store, dataset: str) -> bool:
    try:
        store.get_meta(dataset, "gnd")
    except UnknownNameError:
        return False
    return True


def run_retrieval(
    store: Store,
    backbone: Backbones,
    dataset: str,
    *,
    protocols: Sequence[str] = SETTINGS,
    query_crop: str = "bbx",
    ks: Sequence[int] = (1, 5, 10),
    top_k: int | None = None,
    query_split: str | None = None,
    gallery_split: str | None = None,
) -> list[Record]:
    """Retrieval metrics on ``dataset`` (an alias such as ``roxford`` works) for one backbone,
    several, or every one with features of it (``None`` / ``"all"``); returns the records."""
    store.check_writable()  # a read-only or full store fails now, not after the work
    records: list[Record] = []
    dataset = resolve_dataset(store, dataset)
    revisited = _has_gnd(store, dataset) and query_split is None and gallery_split is None
    for bb in resolve_backbones(store, backbone, dataset):
        if revisited:
            records += _revisited(store, bb, dataset, protocols, query_crop, ks, top_k)
        else:
            records += _label(store, bb, dataset, ks, top_k, query_split, gallery_split)
    return store.add_records(records)


def _revisited(
    store: Store,
    backbone: str,
    dataset: str,
    protocols: Sequence[str],
    query_crop: str,
    ks: Sequence[int],
    top_k: int | None,
) -> list[Record]:
    from evaluators.retrieval import load_gnd, revisited_map_streaming

    unknown = [p for p in protocols if p not in SETTINGS]
    if unknown:
        raise UnknownNameError("retrieval protocol", unknown[0], SETTINGS)
    query = store.features(backbone, dataset, "query")
    db = store.features(backbone, dataset, "database")
    crop = query.attrs.get("query_crop", "bbx")
    if crop != query_crop:
        raise BobxError(
            f"The cached {dataset} queries of {backbone} were extracted with --query-crop {crop}; "
            f"re-extract with `bobx extract --backbone {backbone} --dataset {dataset} "
            f"--split query --query-crop {query_crop} --overwrite`."
        )
    # extract copies the ground truth as meta/<dataset>/{gnd,imlist,qimlist}.json
    gnd = load_gnd({name: store.get_meta(dataset, name) for name in ("gnd", "imlist", "qimlist")})
    if len(gnd) != query.n:
        raise DataError(
            f"{dataset}: ground truth has {len(gnd)} queries but the query split has {query.n} "
            "rows; re-extract the query split."
        )
    qx = query.embeddings()
    out = revisited_map_streaming(
        qx,
        lambda: db.iter_blocks(block_rows=SEARCH_BLOCK_ROWS, dtype=None),  # as stored
        gnd,
        ks=tuple(ks),
        top_k=top_k,
        db_norms=db.norms(),
    )
    params = {"protocol": "revisited", "query_crop": crop, "top_k": top_k}
    records = []
    for setting in protocols:
        for metric, value in out[setting].items():
            if metric.startswith("n_queries"):
                continue
            records.append(
                make_record(
                    backbone=backbone,
                    task="retrieval",
                    dataset=dataset,
                    split=setting,
                    metric=metric,
                    value=value,
                    params=params,
                    cache_key=pair_key(query, db),
                )
            )
    return records


def _label(
    store: Store,
    backbone: str,
    dataset: str,
    ks: Sequence[int],
    top_k: int | None,
    query_split: str | None,
    gallery_split: str | None,
) -> list[Record]:
    from evaluators.retrieval import higher_is_better, label_retrieval

    have = store.complete_splits(backbone, dataset)
    if query_split is None and gallery_split is None and {"query", "gallery"} <= set(have):
        query_split, gallery_split = "query", "gallery"
    if gallery_split is None or gallery_split == query_split:
        split = query_split or ("test" if "test" in have else (have[0] if have else "test"))
        query: FeatureSet = store.features(backbone, dataset, split)
        gallery, loo = query, True
    else:
        query = store.features(backbone, dataset, query_split or "query")
        gallery, loo = store.features(backbone, dataset, gallery_split), False
    if query.multilabel:
        raise DataError(f"{dataset} is multi-label; label retrieval needs one label per image.")
    qx, qy, _ = query.load()
    gx, gy, _ = (qx, qy, None) if loo else gallery.load()
    norms = gallery.norms()
    if gallery.n_invalid:  # load() dropped the masked rows
        norms = norms[gallery.valid()]
    out = label_retrieval(
        qx, qy, gx, gy, ks=tuple(ks), exclude_self=loo, top_k=top_k, db_norms=norms
    )
    params: dict[str, Any] = {
        "protocol": "label",
        "gallery": "leave-one-out" if loo else gallery.split,
        "top_k": top_k,
    }
    names = [name for name in out if not name.startswith("n_queries")]
    return metric_records(
        out,
        {name: higher_is_better(name) for name in names},
        names=names,
        backbone=backbone,
        task="retrieval",
        dataset=dataset,
        split=query.split,
        params=params,
        cache_key=pair_key(query, gallery),
    )

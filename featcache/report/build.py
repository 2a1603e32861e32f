"""``bobx report``: one self-contained HTML page from a store's records and artifacts.

Everything on the page comes from the store through the library: the ranking from
:func:`featcache.runners.ranking.rank_store`, correlations and backbone metadata from
:func:`~featcache.runners.ranking.correlate_store`, per-setting values and z-scores from
:mod:`evaluators.ranking`, reliability diagrams from the probes' stored test logits,
fine-tuning curves from ``finetune_curve`` artifacts (see :mod:`featcache.report.sections`).
A section appears only when the store holds its records. The page needs nothing at view
time: the styles, the table-sorting script and the figures (matplotlib SVG; Plotly with its
JavaScript inlined, on request) are inside it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from featcache import provenance
from featcache.errors import BobxError, DataError
from featcache.report import sections
from featcache.store import Store


def build_report(
    store: Store, output: str | os.PathLike[str] = "report.html", **options: Any
) -> Path:
    """Write the report of ``store`` to ``output`` (one HTML file) and return its path.

    ``options`` are :func:`report_context`'s: ``tasks`` / ``backbones`` / ``datasets`` filter
    as in ``bobx rank``; ``n_boot``, ``seed``, ``weight`` and ``min_tasks`` go to
    :func:`~featcache.runners.ranking.rank_store`, so the page's ranking equals ``bobx rank``
    with the same options; ``title``; ``interactive`` adds Plotly figures (``pip install
    'bobx[interactive]'``). The file is replaced whole: a reader never sees half a page."""
    out = Path(output)
    if out.is_dir():
        raise DataError(f"{out} is a directory; give a file name such as {out / 'report.html'}.")
    html = render_report(store, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        with open(tmp, "x", encoding="utf-8") as f:  # the umask's permissions, unlike mkstemp
            f.write(html)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def render_report(store: Store, **options: Any) -> str:
    """The report as an HTML string (options as :func:`report_context`)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("featcache.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(**report_context(store, **options))


def redact_url(url: str) -> str:
    """A store URL fit to print: user, password, query and fragment removed."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def report_context(
    store: Store,
    *,
    tasks: Sequence[str] | None = None,
    backbones: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    title: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    weight: str = "task",
    min_tasks: int = 1,
    overall_tasks: Sequence[str] | str | None = None,
    interactive: bool = False,
) -> dict[str, Any]:
    """Everything the template shows.

    Args:
        store: the store to report on.
        tasks, backbones, datasets: only these (as ``bobx rank``); empty or None: all.
        title: the page title (default: the store URL).
        n_boot, seed, weight, min_tasks, overall_tasks: the ranking's, passed to
            :func:`~featcache.runners.ranking.rank_store` (``overall_tasks`` to
            :func:`~featcache.runners.ranking.correlate_store` too).
        interactive: add Plotly figures (plotly.js inlined; needs the ``interactive`` extra).
    """
    from markupsafe import Markup

    from evaluators.ranking import OVERALL, SETTING_COLUMNS, latest_records
    from featcache.report.figures import interactive_html
    from featcache.runners.names import with_canonical
    from featcache.runners.ranking import backbone_metadata, correlate_store, rank_store

    url = redact_url(store.url)
    tasks = list(tasks or [])
    backbones = with_canonical(backbones, "backbone") or []  # aliases, as `bobx rank` takes them
    datasets = with_canonical(datasets, "dataset") or []
    records = store.results(backbone=backbones or None, dataset=datasets or None)
    if records.empty and (backbones or datasets):
        raise BobxError(
            "No result records match the --backbone / --dataset filters; `bobx results` lists "
            "what the store holds."
        )
    feature_sets = [
        fs
        for fs in store.list_features()
        if (not backbones or fs.backbone in backbones) and (not datasets or fs.dataset in datasets)
    ]
    ranked, note = None, None
    if not records.empty:
        try:
            ranked = rank_store(
                store,
                tasks=tasks,
                backbones=backbones,
                datasets=datasets,
                n_boot=n_boot,
                seed=seed,
                weight=weight,
                min_tasks=min_tasks,
                overall_tasks=overall_tasks,
            )
        except DataError as exc:  # e.g. nothing comparable yet: one backbone per setting
            note = str(exc)
        if tasks:
            records = records[records["task"].isin(tasks)].reset_index(drop=True)
    latest = latest_records(records) if len(records) else records
    figs = sections.Figures()
    ctx: dict[str, Any] = {
        "title": title or f"bobx report: {url}",
        "store_url": url,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "bobx_version": provenance.bobx_version(),
        "git_hash": provenance.git_hash(),
        "options": {
            "tasks": tasks,
            "backbones": backbones,
            "datasets": datasets,
            "n_boot": n_boot,
            "seed": seed,
            "weight": weight,
            "min_tasks": min_tasks,
            "overall_tasks": overall_tasks,
            # the tasks "overall" combined (rank_store's in_overall column says which)
            "overall_combines": []
            if ranked is None or "in_overall" not in ranked
            else sorted(set(ranked.loc[ranked["in_overall"].astype(bool), "task"]) - {OVERALL}),
        },
        "ranking": None if ranked is None else sections.ranking(ranked, figs),
        "ranking_note": note,
        "settings": [],
        "correlation": None,
        "reliability": [],
        "finetune": [],
        "detection": [],
        "robustness": [],
        "speed": [],
        "interactive": [],
    }
    if len(latest):
        ctx["settings"] = sections.setting_tables(records, latest, ranked)
        ctx["reliability"] = sections.reliability(store, latest, figs)
        ctx["finetune"] = sections.finetune(store, latest, figs)
        ctx["detection"] = sections.detection(latest)
        ctx["robustness"] = sections.robustness(latest, figs)
    meta = None
    if ranked is not None:
        corr = correlate_store(
            store,
            tasks=tasks,
            backbones=backbones,
            datasets=datasets,
            overall_tasks=overall_tasks,
        )
        meta = corr["meta"]
        ctx["correlation"] = sections.correlation(corr, figs)
        ctx["speed"] = sections.speed(latest, ranked, meta, figs)
    if interactive:
        if meta is None and len(records):
            meta = backbone_metadata(store, sorted(records["backbone"].unique()))
        ctx["interactive"] = [Markup(h) for h in interactive_html(ranked, meta)]
    ctx["provenance"] = sections.provenance(records, feature_sets)
    ctx["counts"] = {
        "records": len(records),
        "backbones": records["backbone"].nunique(),
        "tasks": records["task"].nunique(),
        "settings": len(latest.drop_duplicates(list(SETTING_COLUMNS))),
        "feature_sets": len(feature_sets),
        "by_task": records["task"].value_counts().sort_index().to_dict(),
    }
    return ctx

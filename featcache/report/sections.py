"""The report's sections, each from the store's records (and artifacts) through the library.

Every function returns what the template shows for one section, or an empty value when the
store has nothing for it (the section is then left out of the page).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup

from evaluators.ranking import OVERALL, SETTING_COLUMNS, task_order
from featcache.errors import UnknownNameError
from featcache.report import figures
from featcache.report.tables import (
    cell,
    column,
    count,
    exact,
    knobs,
    missing,
    num,
    params_of,
    short,
    signed,
    table,
    varying_keys,
)
from featcache.store import Store

#: Tasks whose records the AP tables show (the detection jobs' record contract).
DETECTION_TASKS: tuple[str, ...] = ("detection", "segmentation", "ood_detection")
#: Column order of the AP tables; other metrics follow alphabetically.
AP_METRICS: tuple[str, ...] = (
    *(
        f"{m}_{kind}"
        for kind in ("box", "mask")
        for m in ("ap", "ap50", "ap75", "aps", "apm", "apl")
    ),
    "ap50",
)
#: Robustness knobs that change with the budget (one curve joins their records).
PER_EPS_KNOBS: tuple[str, ...] = ("eps", "eps_value", "step_size")
#: Metadata the score-vs-metadata figure plots (column -> axis label).
META_AXES: dict[str, str] = {
    "params_m": "parameters (millions)",
    "pretrain_size": "pretraining images",
    "throughput": "throughput (images/s)",
}
#: The columns :func:`featcache.runners.ranking.rank_store` returns today; any other column
#: it returns is shown as it is.
RANK_COLUMNS: tuple[str, ...] = (
    "backbone", "task", "score", "rank", "n_settings", "n_tasks", "ci_low", "ci_high", "p_first",
)  # fmt: skip
_SETTING = list(SETTING_COLUMNS)
_KEY = ["backbone", *SETTING_COLUMNS]


class Figures:
    """Draws the page's figures as inline SVG (markup the template inserts as it is: drawn
    here, not user input), each with its own id prefix."""

    def __init__(self) -> None:
        self.count = 0

    def _prefix(self) -> str:
        self.count += 1
        return f"fig{self.count}"

    def draw(self, draw: Callable[[], Any], label: str, caption: str = "") -> dict[str, Any] | None:
        """A figure function of :mod:`featcache.report.figures` (``None``: nothing to draw)."""
        svg = figures.svg_of(draw, self._prefix(), label)
        return None if svg is None else {"svg": Markup(svg), "caption": caption or label}

    def from_path(
        self, draw: Callable[[Path], Any], label: str, caption: str = ""
    ) -> dict[str, Any]:
        """A figure function that writes to a path (the evaluators' plots)."""
        svg = figures.svg_from_path(draw, self._prefix(), label)
        return {"svg": Markup(svg), "caption": caption or label}


def _keyed(frame: pd.DataFrame, value: str) -> dict[tuple[Any, ...], Any]:
    """``(backbone, *setting) -> frame[value]``."""
    return {tuple(r[c] for c in _KEY): r[value] for r in frame[[*_KEY, value]].to_dict("records")}


# --------------------------------------------------------------------------------------------
# Rankings
# --------------------------------------------------------------------------------------------


def ranking(ranked: pd.DataFrame, figs: Figures) -> dict[str, Any]:
    """Overall first, then each task: rank, score, bootstrap interval, P(first), as returned
    by ``rank_store`` (columns it adds are shown too, ``ranked.attrs`` as notes)."""
    from evaluators.ranking import top_k

    extra = [str(c) for c in ranked.columns if c not in RANK_COLUMNS]
    order = list(dict.fromkeys(ranked["task"]))
    order = [t for t in order if t == OVERALL] + [t for t in order if t != OVERALL]
    tables = []
    for task in order:
        rows = ranked[ranked["task"] == task]
        overall = task == OVERALL
        columns = [
            column("rank", numeric=True),
            column("backbone"),
            column("score", numeric=True, title="mean z-score (higher is better)"),
            column("95% CI", numeric=True, title="bootstrap percentile interval over settings"),
            column("P(first)", numeric=True, title="share of bootstrap replicates ranked first"),
            column("settings", numeric=True),
            *([column("tasks", numeric=True)] if overall else []),
            *(column(c) for c in extra),
        ]
        body, attrs = [], []
        for r in rows.to_dict("records"):
            ci = "" if missing(r["ci_low"]) else f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
            body.append(
                [
                    count(r["rank"]),
                    cell(r["backbone"]),
                    num(r["score"], signed(r["score"])),
                    num(r["ci_low"], ci),
                    num(r["p_first"], "" if missing(r["p_first"]) else f"{r['p_first']:.2f}"),
                    count(r["n_settings"]),
                    *([count(r["n_tasks"])] if overall else []),
                    *(cell(_text(r[c])) for c in extra),
                ]
            )
            attrs.append(
                {
                    "data-task": task,
                    "data-backbone": r["backbone"],
                    "data-rank": int(r["rank"]),
                    "data-score": exact(r["score"]),
                    "data-ci-low": exact(r["ci_low"]),
                    "data-ci-high": exact(r["ci_high"]),
                    "data-p-first": exact(r["p_first"]),
                    "data-n-settings": int(r["n_settings"]),
                }
            )
        figure = None
        if overall:
            figure = figs.draw(
                partial(figures.ranking_figure, rows, task),
                f"{task} scores with 95% bootstrap intervals",
            )
        tables.append(
            {
                "task": task,
                "figure": figure,
                "table": table(columns, body, name=f"rank-{task}", row_attrs=attrs),
            }
        )
    top = top_k(ranked, 3)
    summary = table(
        [column("task"), column("1st"), column("2nd"), column("3rd")],
        [
            [cell(v if isinstance(v, str) else "") for v in r.values()]
            for r in top.to_dict("records")
        ],
        name="rank-summary",
    )
    notes = {str(k): _text(v) for k, v in ranked.attrs.items()}
    return {"tables": tables, "summary": summary, "notes": notes}


def _text(value: Any) -> str:
    if isinstance(value, list | tuple | set):
        return ", ".join(str(v) for v in value)
    return "" if missing(value) else str(value)


def setting_tables(
    records: pd.DataFrame, latest: pd.DataFrame, ranked: pd.DataFrame | None
) -> list[dict[str, Any]]:
    """Per task, a backbone x setting table of values; each value's tooltip gives its z-score
    and record, its link the record's provenance row."""
    from evaluators.ranking import zscores

    record_id = _keyed(records.drop_duplicates(_KEY, keep="last"), "id")
    zmap = _keyed(zscores(latest), "z")
    values = _keyed(latest, "value")
    task_rank: dict[tuple[str, str], tuple[int, float]] = {}
    if ranked is not None:
        for r in ranked.to_dict("records"):
            task_rank[(r["backbone"], r["task"])] = (int(r["rank"]), float(r["score"]))
    out = []
    for task in task_order(latest["task"]):
        part = latest[latest["task"] == task]
        settings = part.drop_duplicates(_SETTING).sort_values(
            ["dataset", "split", "metric", "params"]
        )
        keys = [tuple(r[c] for c in _SETTING) for r in settings.to_dict("records")]
        better = dict(zip(keys, settings["higher_is_better"].tolist(), strict=True))
        columns = [column("rank", numeric=True), column("backbone"), column("score", numeric=True)]
        columns += _setting_columns(task, keys, better)
        names = sorted(
            part["backbone"].unique(),
            key=lambda b: (task_rank.get((b, task), (10**9, 0.0))[0], b),
        )
        body = []
        for bb in names:
            rank, score = task_rank.get((bb, task), (None, math.nan))
            row = [count(rank), cell(bb), num(score, signed(score))]
            for key in keys:
                full = (bb, *key)
                if full not in values:
                    row.append(num(math.nan))
                    continue
                z = zmap.get(full)
                rid = record_id.get(full)
                tip = "z " + ("n/a (one backbone)" if z is None else f"{z:+.2f}")
                row.append(
                    num(
                        values[full],
                        title=f"{tip}; record {rid}",
                        href=f"#rec-{rid}" if rid else None,
                        data={"value": exact(values[full])},
                    )
                )
            body.append(row)
        out.append(
            {
                "task": task,
                "n_settings": len(keys),
                "table": table(columns, body, name=f"settings-{task}"),
            }
        )
    return out


def _setting_columns(
    task: str, keys: Sequence[tuple[Any, ...]], better: Mapping[tuple[Any, ...], bool]
) -> list[dict[str, Any]]:
    """Headers ``dataset/split metric`` with the protocol and the knobs that tell apart
    settings of one dataset, metric and protocol (e.g. ``k=10`` / ``k=20``)."""
    params = [params_of(k[4]) for k in keys]
    out = []
    for key, p in zip(keys, params, strict=True):
        _, dataset, split, metric, params_json = key
        peers = [
            q
            for k, q in zip(keys, params, strict=True)
            if k[1:4] == key[1:4] and q.get("protocol") == p.get("protocol")
        ]
        sub = " ".join(
            x
            for x in (str(p.get("protocol", "")), knobs(p, varying_keys(peers, ["protocol"])))
            if x
        )
        up = better[key]
        out.append(
            column(
                f"{dataset}/{split} {metric} {'↑' if up else '↓'}",
                numeric=True,
                sub=sub,
                title=f"{task} {dataset}/{split} {metric} ({'higher' if up else 'lower'} is better) "
                f"params {params_json}",
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Correlations and metadata
# --------------------------------------------------------------------------------------------


def correlation(corr: Mapping[str, pd.DataFrame], figs: Figures) -> dict[str, Any] | None:
    """Task-task heatmap and table, the first two-task scatter (the paper's Figure 1), score
    against metadata (figure and table), from ``correlate_store``'s output."""
    from evaluators.correlation import plot_scatter, plot_task_heatmap

    pairs, md = corr["tasks"], corr["metadata"]
    parts = ("heatmap", "pairs", "scatter", "metadata", "meta_figure")
    out: dict[str, Any] = dict.fromkeys(parts)
    if len(pairs) and np.isfinite(pairs["rho"].to_numpy(dtype=float)).any():
        out["heatmap"] = figs.from_path(
            partial(plot_task_heatmap, pairs),
            "Spearman correlation of task scores across backbones",
        )
        out["pairs"] = _rho_table(
            pairs, ["task_x", "task_y"], ["task", "task"], "task-correlations"
        )
        first = pairs[pairs["n"] >= 3].head(1).to_dict("records")
        if first:
            tx, ty = str(first[0]["task_x"]), str(first[0]["task_y"])
            out["scatter"] = figs.from_path(
                partial(plot_scatter, corr["scores"], tx, ty),
                f"{tx} against {ty} score per backbone",
            )
    if len(md) and (md["n"] > 0).any():
        out["metadata"] = _rho_table(
            md[md["n"] > 0], ["variable", "family"], ["variable", "family"], "metadata-correlations"
        )
        scores = corr["scores"]
        overall = scores[scores["task"] == OVERALL][["backbone", "score"]]
        out["meta_figure"] = figs.draw(
            partial(figures.metadata_figure, overall, corr["meta"], META_AXES),
            "overall score against backbone metadata, by family and training style",
        )
    return out if any(out.values()) else None


def _rho_table(
    frame: pd.DataFrame, keys: list[str], labels: list[str], name: str
) -> dict[str, Any]:
    columns = [
        *(column(label) for label in labels),
        column("Spearman rho", numeric=True),
        column("p-value", numeric=True),
        column("backbones", numeric=True),
    ]
    body = [
        [
            *(cell(r[k]) for k in keys),
            num(r["rho"], signed(r["rho"], 2)),
            num(r["p_value"], "" if missing(r["p_value"]) else f"{r['p_value']:.2g}"),
            count(r["n"]),
        ]
        for r in frame.to_dict("records")
    ]
    return table(columns, body, name=name)


# --------------------------------------------------------------------------------------------
# Calibration, fine-tuning, detection, robustness, speed
# --------------------------------------------------------------------------------------------


def reliability(store: Store, latest: pd.DataFrame, figs: Figures) -> list[dict[str, Any]]:
    """A reliability diagram per probe behind a calibration record, from the probe's stored
    test logits (with the record's temperature scaling, if any)."""
    from evaluators.calibration import fit_temperature, reliability_diagram, softmax

    cal = latest[latest["task"] == "calibration"].sort_values(["dataset", "backbone"])
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in cal.to_dict("records"):
        p = params_of(r["params"])
        if p.get("source") != "probe":
            continue
        backbone, dataset = str(r["backbone"]), str(r["dataset"])
        run = str(p.get("probe_run", "full"))
        scaled = bool(p.get("temperature_scaled", False))
        n_bins = int(p.get("n_bins", 15))
        key = (backbone, dataset, run, scaled, n_bins)
        if key in seen:
            continue
        seen.add(key)
        try:
            arrays, _ = store.get_artifact("probe", backbone, dataset, run)
        except UnknownNameError:
            continue  # records imported from elsewhere: the predictions are not here
        temperature = 1.0
        if scaled:
            temperature = float(fit_temperature(arrays["val_logits"], arrays["val_labels"]))
        probs = softmax(arrays["test_logits"], temperature=temperature)
        caption = f"{backbone} on {dataset} (probe run {run}" + (
            f", temperature {temperature:.3g})" if scaled else ")"
        )
        out.append(
            figs.from_path(
                partial(reliability_diagram, probs, arrays["test_labels"], n_bins=n_bins),
                f"reliability diagram: {caption}",
                caption,
            )
        )
    return out


def finetune(store: Store, latest: pd.DataFrame, figs: Figures) -> list[dict[str, Any]]:
    """Per dataset: the per-epoch curves of every fine-tuning run (``finetune_curve``
    artifacts of the backbones with fine-tuning records) and a table of the runs."""
    ft = latest[latest["task"] == "classification"]
    pairs = sorted(
        {
            (str(r["dataset"]), str(r["backbone"]))
            for r in ft.to_dict("records")
            if params_of(r["params"]).get("protocol") == "finetune"
        }
    )
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for dataset, backbone in pairs:
        for name in store.list_artifacts("finetune_curve", backbone, dataset):
            arrays, attrs = store.get_artifact("finetune_curve", backbone, dataset, name)
            if "epoch" in arrays:
                by_dataset.setdefault(dataset, []).append(
                    {"backbone": backbone, "run": name, "arrays": arrays, "attrs": attrs}
                )
    out = []
    for dataset, runs in by_dataset.items():
        for run in runs:
            mine = [o["attrs"] for o in runs if o["backbone"] == run["backbone"]]
            differ = varying_keys(mine, ["selected", "run_id"])
            run["label"] = run["backbone"] + (f" {knobs(run['attrs'], differ)}" if differ else "")
            run["selected"] = bool(run["attrs"].get("selected", False))
        figure = figs.draw(
            partial(figures.finetune_figure, runs, f"fine-tuning on {dataset}"),
            f"fine-tuning curves on {dataset}",
        )
        columns = [
            column("backbone"), column("run"), column("selected"), column("knobs"),
            column("epochs", numeric=True), column("final train loss", numeric=True),
            column("best val top-1", numeric=True), column("final test top-1", numeric=True),
        ]  # fmt: skip
        body = []
        for run in runs:
            a = run["arrays"]
            shown = {k: v for k, v in run["attrs"].items() if k != "selected"}
            body.append(
                [
                    cell(run["backbone"]),
                    cell(short(run["run"], 28), title=run["run"]),
                    cell("yes" if run["selected"] else "no"),
                    cell(
                        knobs(
                            shown,
                            [
                                k
                                for k in ("recipe", "lr", "fraction", "shots", "seed")
                                if k in shown
                            ],
                        ),
                        title=json.dumps(shown, sort_keys=True, default=str),
                    ),
                    count(len(a["epoch"])),
                    num(_end(a.get("train_loss"))),
                    num(_end(a.get("val_top1"), best=True)),
                    num(_end(a.get("test_top1"))),
                ]
            )
        out.append(
            {
                "dataset": dataset,
                "figure": figure,
                "table": table(columns, body, name=f"finetune-{dataset}"),
            }
        )
    return out


def _end(values: Any, *, best: bool = False) -> float:
    """The last (or the best) value of a curve; NaN when there is none."""
    if values is None or len(values) == 0:
        return math.nan
    arr = np.asarray(values, dtype=float)
    return float(np.nanmax(arr) if best else arr[-1])


def detection(latest: pd.DataFrame) -> list[dict[str, Any]]:
    """AP tables, backbone x metric, one per task, dataset, split and protocol knobs."""
    det = latest[latest["task"].isin(DETECTION_TASKS)]
    out: list[dict[str, Any]] = []
    for task in DETECTION_TASKS:
        part = det[det["task"] == task]
        for group in part.drop_duplicates(["dataset", "split", "params"]).to_dict("records"):
            grp = part[
                (part["dataset"] == group["dataset"])
                & (part["split"] == group["split"])
                & (part["params"] == group["params"])
            ]
            names = set(grp["metric"])
            metrics = [m for m in AP_METRICS if m in names] + sorted(names - set(AP_METRICS))
            wide = grp.pivot(index="backbone", columns="metric", values="value").reindex(
                columns=metrics
            )
            wide = wide.sort_values(metrics[0], ascending=False, na_position="last")
            body = [
                [cell(bb), *(num(v, data={"value": exact(v)}) for v in row)]
                for bb, row in zip(wide.index, wide.to_numpy(), strict=True)
            ]
            p = params_of(group["params"])
            caption = f"{task} on {group['dataset']}/{group['split']}" + (
                f": {knobs(p, sorted(p))}" if p else ""
            )
            columns = [column("backbone"), *(column(m, numeric=True) for m in metrics)]
            name = f"ap-{task}-{group['dataset']}-{len(out)}"
            out.append({"caption": caption, "table": table(columns, body, name=name)})
    return out


def attack_eps(params: Mapping[str, Any]) -> float | None:
    """A robustness record's l-inf budget: ``eps_value``, else ``eps`` (``"1/255"``)."""
    if not missing(params.get("eps_value")):
        return float(params["eps_value"])
    if "eps" in params:
        try:
            return float(Fraction(str(params["eps"])))
        except (ValueError, ZeroDivisionError):
            return None
    return None


def robustness(latest: pd.DataFrame, figs: Figures) -> list[dict[str, Any]]:
    """Top-1 under attack against eps, per dataset and attack knobs: a figure (a line per
    backbone) and a backbone x eps table."""
    rob = latest[(latest["task"] == "robustness") & (latest["metric"] == "top1")]
    rows = []
    for r in rob.to_dict("records"):
        p = params_of(r["params"])
        eps = attack_eps(p)
        if eps is not None:
            rest = {k: v for k, v in p.items() if k not in PER_EPS_KNOBS}
            rows.append(
                {"label": r["backbone"], "where": f"{r['dataset']}/{r['split']}", "eps": eps,
                 "value": r["value"], "knobs": json.dumps(rest, sort_keys=True)}
            )  # fmt: skip
    if not rows:
        return []
    frame = pd.DataFrame(rows)
    out: list[dict[str, Any]] = []
    for group in frame.drop_duplicates(["where", "knobs"]).to_dict("records"):
        grp = frame[(frame["where"] == group["where"]) & (frame["knobs"] == group["knobs"])]
        attack = json.loads(group["knobs"])
        title = str(group["where"]) + (f": {knobs(attack, sorted(attack))}" if attack else "")
        figure = figs.draw(
            partial(figures.robustness_figure, grp, str(group["where"])),
            f"top-1 under attack against eps, {title}",
        )
        wide = grp.pivot_table(index="label", columns="eps", values="value", aggfunc="last")
        budgets = sorted(float(e) for e in wide.columns)
        wide = wide.reindex(columns=budgets).sort_values(budgets[-1], ascending=False)
        columns = [
            column("backbone"),
            *(column(f"eps {figures.eps_label(e)}", numeric=True) for e in budgets),
        ]
        body = [
            [cell(bb), *(num(v, data={"value": exact(v)}) for v in vals)]
            for bb, vals in zip(wide.index, wide.to_numpy(), strict=True)
        ]
        name = f"robustness-{len(out)}"
        out.append({"caption": title, "figure": figure, "table": table(columns, body, name=name)})
    return out


def speed(
    latest: pd.DataFrame, ranked: pd.DataFrame, meta: pd.DataFrame, figs: Figures
) -> list[dict[str, Any]]:
    """Throughput (median ``speed/images_per_s`` per backbone) against the overall score,
    one figure per device / precision / batch size / resolution."""
    sp = latest[(latest["task"] == "speed") & (latest["metric"] == "images_per_s")]
    overall = dict(
        zip(
            *(ranked.loc[ranked["task"] == OVERALL, c].tolist() for c in ("backbone", "score")),
            strict=True,
        )
    )
    if sp.empty or not overall:
        return []
    family = dict(zip(meta["backbone"].tolist(), meta["family"].tolist(), strict=True))
    rows = []
    for r in sp.to_dict("records"):
        p = params_of(r["params"])
        parts = [
            str(p.get("device_name") or p.get("device") or "device?"),
            str(p.get("precision", "")),
            f"batch {p['batch_size']}" if "batch_size" in p else "",
            f"{p['resolution']} px" if "resolution" in p else "",
        ]
        rows.append(
            {
                "backbone": r["backbone"],
                "group": " / ".join(x for x in parts if x),
                "value": r["value"],
            }
        )
    frame = pd.DataFrame(rows)
    out = []
    for group in sorted(frame["group"].unique()):
        med = frame[frame["group"] == group].groupby("backbone")["value"].median()
        points = pd.DataFrame(
            {
                "backbone": med.index,
                "images_per_s": med.to_numpy(dtype=float),
                "score": [overall.get(b, math.nan) for b in med.index],
                "family": [family.get(b) for b in med.index],
            }
        ).dropna(subset=["score"])
        if len(points):
            figure = figs.draw(
                partial(figures.speed_figure, points, group),
                f"throughput against overall score, {group}",
            )
            out.append({"caption": group, "figure": figure})
    return out


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------


def provenance(records: pd.DataFrame, feature_sets: Sequence[Any]) -> dict[str, Any]:
    """Every record (cache key, params, host, user, date, bobx version; whether a later record
    of the same backbone and setting supersedes it) and every feature set."""
    superseded = records.duplicated(_KEY, keep="last")
    order = {t: i for i, t in enumerate(task_order(records["task"]))}
    frame = records.assign(_superseded=superseded, _order=records["task"].map(order))
    frame = frame.sort_values(
        ["_order", "dataset", "metric", "backbone", "created_at"], kind="stable"
    )
    columns = [
        column("record"), column("backbone"), column("task"), column("dataset"), column("split"),
        column("metric"), column("value", numeric=True), column("better"), column("params"),
        column("cache key"), column("host"), column("user"), column("created (UTC)"),
        column("bobx"), column("used"),
    ]  # fmt: skip
    body, attrs = [], []
    for r in frame.to_dict("records"):
        rid, key, params = str(r["id"]), _text(r.get("cache_key")), str(r["params"])
        version = " ".join(
            x for x in (_text(r.get("bobx_version")), _text(r.get("git_hash"))[:8]) if x
        )
        body.append(
            [
                cell(rid[-8:], title=rid),
                cell(r["backbone"]),
                cell(r["task"]),
                cell(r["dataset"]),
                cell(r["split"]),
                cell(r["metric"]),
                num(r["value"], data={"value": exact(r["value"])}),
                cell("higher" if r["higher_is_better"] else "lower"),
                cell(short(params, 60), title=params),
                cell(key[:12], title=key or None),
                cell(_text(r.get("host"))),
                cell(_text(r.get("user"))),
                cell(_text(r.get("created_at"))[:19].replace("T", " ")),
                cell(version),
                cell("superseded" if r["_superseded"] else "yes"),
            ]
        )
        attrs.append({"id": f"rec-{rid}"})
    fs_columns = [
        column("backbone"), column("dataset"), column("split"), column("rows", numeric=True),
        column("dim", numeric=True), column("dtype"), column("status"), column("cache key"),
        column("created (UTC)"),
    ]  # fmt: skip
    fs_body = [
        [
            cell(f.backbone),
            cell(f.dataset),
            cell(f.split),
            count(f.n),
            count(f.dim),
            cell(f.dtype),
            cell(f.status),
            cell(f.cache_key[:12], title=f.cache_key),
            cell(f.created_at[:19].replace("T", " ")),
        ]  # fmt: skip
        for f in feature_sets
    ]
    return {
        "records": table(columns, body, name="records", row_attrs=attrs) if body else None,
        "n_records": len(body),
        "n_superseded": int(superseded.sum()),
        "feature_sets": table(fs_columns, fs_body, name="feature-sets") if fs_body else None,
    }

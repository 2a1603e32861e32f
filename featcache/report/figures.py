"""The report's static figures: matplotlib drawn to SVG text, ready to inline in the page.

Figures the evaluators already draw (the task heatmap and two-task scatter of
:mod:`evaluators.correlation`, the reliability diagram of :mod:`evaluators.calibration`)
are reused through :func:`svg_from_path`; the others are drawn here from plain frames. No
pyplot state: each figure is a :class:`matplotlib.figure.Figure` of its own.
"""

from __future__ import annotations

import io
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Text stays text (small, searchable); ids are salted so two builds give the same SVG.
SVG_RC: dict[str, Any] = {"svg.fonttype": "none", "svg.hashsalt": "bobx-report", "font.size": 8}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_SERIES = ("train_loss", "val_top1", "test_top1", "lr")


@contextmanager
def _svg_style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(SVG_RC):  # type: ignore[arg-type]
        yield


def clean_svg(text: str, prefix: str, label: str) -> str:
    """Matplotlib's SVG document as an element to inline in HTML.

    Drops the XML prolog and the ``<metadata>`` block, gives every ``id`` (and each
    reference to it) the ``prefix`` so that figures on one page never share an id, and
    labels the root for assistive technology."""
    start = text.find("<svg")
    if start < 0:
        raise ValueError("not an SVG document")
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", text[start:], flags=re.S)
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', svg)
    label = label.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return svg.replace("<svg", f'<svg class="figure" role="img" aria-label="{label}"', 1)


def svg_of(draw: Callable[[], Figure | None], prefix: str, label: str) -> str | None:
    """Call a figure function of this module in the report's style and render its figure
    (``None`` when it has nothing to draw)."""
    with _svg_style():
        fig = draw()
        if fig is None:
            return None
        buf = io.BytesIO()
        fig.savefig(buf, format="svg")
    return clean_svg(buf.getvalue().decode("utf-8"), prefix, label)


def svg_from_path(draw: Callable[[Path], object], prefix: str, label: str) -> str:
    """Render a figure function that writes to a path (format by suffix), e.g.
    ``lambda p: plot_task_heatmap(corr, p)``."""
    with tempfile.TemporaryDirectory(prefix="bobx-report-") as tmp, _svg_style():
        path = Path(tmp) / "figure.svg"
        draw(path)
        return clean_svg(path.read_text(encoding="utf-8"), prefix, label)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _palette(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _known(values: pd.Series) -> pd.Series:
    """Category labels with missing ones named ``unknown``."""
    return values.map(lambda v: v if isinstance(v, str) and v else "unknown")


def _label_points(ax: Axes, xs: Sequence[float], ys: Sequence[float], names: Sequence[str]) -> None:
    for x, y, name in zip(xs, ys, names, strict=True):
        ax.annotate(name, (x, y), xytext=(3, 2), textcoords="offset points", fontsize=5.5)


def _legend_outside(fig: Figure, ax: Axes, title: str | None = None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=6, title=title)


def ranking_figure(rows: pd.DataFrame, title: str) -> Figure:
    """Scores with their bootstrap interval, best at the top (``rows``: one task of
    :func:`featcache.runners.ranking.rank_store`, in rank order)."""
    n = len(rows)
    fig = _figure(6.0, 0.9 + 0.2 * n)
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]
    score = rows["score"].to_numpy(dtype=float)
    low = rows["ci_low"].to_numpy(dtype=float)
    high = rows["ci_high"].to_numpy(dtype=float)
    has_ci = np.isfinite(low) & np.isfinite(high)
    err = np.vstack([np.where(has_ci, score - low, 0.0), np.where(has_ci, high - score, 0.0)])
    ax.axvline(0.0, color="0.8", lw=0.8)
    ax.errorbar(score, y, xerr=err, fmt="o", ms=3.5, capsize=2, lw=0.9)
    ax.set_yticks(y, rows["backbone"].tolist(), fontsize=6.5)
    ax.set_xlabel("score (mean z; 95% bootstrap interval)")
    ax.set_title(title)
    return fig


def metadata_figure(
    scores: pd.DataFrame, meta: pd.DataFrame, variables: Mapping[str, str]
) -> Figure | None:
    """Score against backbone metadata (one panel per variable with data), coloured by
    architecture family and shaped by training style (the paper's ViT-vs-CNN scatters).

    ``scores``: ``backbone, score``; ``meta``: ``backbone, family, style`` and the
    ``variables`` (column -> axis label). Returns ``None`` when no variable has data."""
    merged = scores.merge(meta, on="backbone", how="inner")
    merged = merged.assign(family=_known(merged["family"]), style=_known(merged["style"]))
    usable = [v for v in variables if (pd.to_numeric(merged[v], errors="coerce") > 0).any()]
    if not usable:
        return None
    families = sorted(merged["family"].unique())
    styles = sorted(merged["style"].unique())
    colour = _palette(families)
    marker = {s: _MARKERS[i % len(_MARKERS)] for i, s in enumerate(styles)}
    fig = _figure(3.3 * len(usable) + 1.4, 3.4)
    axes = fig.subplots(1, len(usable), squeeze=False)[0]
    for ax, var in zip(axes, usable, strict=True):
        x = pd.to_numeric(merged[var], errors="coerce")
        ok = np.isfinite(x) & (x > 0)
        part = merged[ok].assign(_x=x[ok])
        for (fam, sty), grp in part.groupby(["family", "style"]):
            ax.scatter(
                grp["_x"], grp["score"], s=18, color=colour[str(fam)], marker=marker[str(sty)],
                label=f"{fam} / {sty}",
            )  # fmt: skip
        _label_points(ax, part["_x"].tolist(), part["score"].tolist(), part["backbone"].tolist())
        ax.set_xscale("log")
        ax.axhline(0.0, color="0.85", lw=0.8)
        ax.set_xlabel(variables[var])
        ax.set_ylabel("overall score (z)")
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.legend(
        list(handles.values()), list(handles), loc="outside right upper", fontsize=6,
        title="family / style",
    )  # fmt: skip
    return fig


def speed_figure(points: pd.DataFrame, title: str) -> Figure:
    """Throughput against overall score (``points``: ``backbone, images_per_s, score,
    family``), one point per backbone, coloured by family."""
    fam = _known(points["family"])
    families = sorted(fam.unique())
    colour = _palette(families)
    fig = _figure(6.0, 3.8)
    ax = fig.add_subplot()
    for name in families:
        grp = points[fam == name]
        ax.scatter(grp["images_per_s"], grp["score"], s=22, color=colour[name], label=name)
    _label_points(
        ax, points["images_per_s"].tolist(), points["score"].tolist(), points["backbone"].tolist()
    )
    ax.set_xscale("log")
    ax.axhline(0.0, color="0.85", lw=0.8)
    ax.set_xlabel("throughput (images/s, higher is faster)")
    ax.set_ylabel("overall score (z)")
    ax.set_title(title)
    _legend_outside(fig, ax, "family")
    return fig


def robustness_figure(frame: pd.DataFrame, title: str) -> Figure:
    """Accuracy under attack against the attack budget (``frame``: ``label, eps, value``),
    one line per backbone; eps is drawn in units of 1/255."""
    labels = sorted(frame["label"].unique())
    colour = _palette(labels)
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot()
    for name in labels:
        grp = frame[frame["label"] == name].sort_values("eps")
        ax.plot(grp["eps"] * 255.0, grp["value"], marker="o", ms=3, lw=1, color=colour[name],
                label=name)  # fmt: skip
    ticks = sorted(frame["eps"].unique())
    ax.set_xticks([t * 255.0 for t in ticks], [eps_label(t) for t in ticks])
    ax.set_xlabel("l-inf budget eps")
    ax.set_ylabel("top-1 under attack")
    ax.set_title(title)
    _legend_outside(fig, ax)
    return fig


def eps_label(eps: float) -> str:
    k = eps * 255.0
    return "0" if k == 0 else (f"{k:g}/255" if abs(k - round(k)) < 1e-9 else f"{eps:.3g}")


def finetune_figure(curves: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """Per-epoch fine-tuning curves: one panel per series present (train loss, val / test
    top-1, learning rate), one line per run; runs chosen on validation are drawn bold.

    Each curve: ``label``, ``selected`` (bool), ``arrays`` (``epoch`` and any series)."""
    series = [s for s in _SERIES if any(s in c["arrays"] for c in curves)]
    labels = sorted({str(c["label"]) for c in curves})
    colour = _palette(labels)
    fig = _figure(3.0 * max(1, len(series)) + 1.6, 3.0)
    axes = fig.subplots(1, max(1, len(series)), squeeze=False)[0]
    for ax, name in zip(axes, series, strict=False):
        for curve in curves:
            arrays = curve["arrays"]
            if name not in arrays:
                continue
            selected = bool(curve["selected"])
            ax.plot(
                np.asarray(arrays["epoch"], dtype=float),
                np.asarray(arrays[name], dtype=float),
                color=colour[str(curve["label"])],
                lw=1.6 if selected else 0.7,
                alpha=1.0 if selected else 0.45,
                label=str(curve["label"]) + (" (selected)" if selected else ""),
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(name.replace("_", " "))
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=6)
    fig.suptitle(title)
    return fig


def interactive_html(ranked: pd.DataFrame | None, meta: pd.DataFrame | None) -> list[str]:
    """Plotly versions of the ranking and metadata figures (hover names the backbone), as
    HTML fragments; the first one carries plotly.js inline, so the page stays offline.

    Needs the optional ``plotly`` package (``pip install 'bobx[interactive]'``)."""
    try:
        import plotly.express as px
    except ImportError as exc:
        from featcache.errors import UnavailableError

        raise UnavailableError(
            "Interactive figures need plotly: pip install 'bobx[interactive]' "
            "(or build the report without --interactive)."
        ) from exc
    if ranked is None:  # nothing ranked yet
        return []
    overall = ranked[ranked["task"] == "overall"].sort_values("rank")
    figs = []
    if len(overall):
        has_ci = overall["ci_low"].notna()
        fig = px.scatter(
            overall,
            x="score",
            y="backbone",
            error_x=(overall["ci_high"] - overall["score"]).where(has_ci) if has_ci.any() else None,
            error_x_minus=(overall["score"] - overall["ci_low"]).where(has_ci)
            if has_ci.any()
            else None,
            hover_data=["rank", "n_settings", "p_first"],
            title="overall score (95% bootstrap interval)",
        )
        fig.update_yaxes(autorange="reversed")
        figs.append(fig)
    if meta is not None and len(overall):
        merged = overall[["backbone", "score"]].merge(meta, on="backbone")
        for var, label in (("params_m", "parameters (millions)"), ("pretrain_size", "pretraining images"),
                           ("throughput", "throughput (images/s)")):  # fmt: skip
            part = merged[pd.to_numeric(merged[var], errors="coerce") > 0]
            if part.empty:
                continue
            figs.append(
                px.scatter(
                    part.assign(family=_known(part["family"]), style=_known(part["style"])),
                    x=var,
                    y="score",
                    color="family",
                    symbol="style",
                    hover_name="backbone",
                    log_x=True,
                    labels={var: label, "score": "overall score (z)"},
                    title=f"overall score against {label}",
                )
            )
    config = {"displaylogo": False, "responsive": True}
    return [
        fig.to_html(full_html=False, include_plotlyjs=i == 0, include_mathjax=False, config=config)
        for i, fig in enumerate(figs)
    ]

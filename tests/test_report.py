"""`bobx report`: one self-contained HTML page, checked by parsing it and in a real browser.

Two real stores: the paper's own appendix numbers (tests/data/bob_paper, imported as records)
and a short digits flow (tiny random-init timm models, extract -> knn / probe / calibrate),
to which the test adds records and artifacts in exactly the shapes the fine-tuning,
robustness, speed and detection jobs write (the brief's contracts), so those sections are
tested before the jobs land.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from bs4 import BeautifulSoup

import featcache
from evaluators.calibration import calibration_metrics, softmax
from featcache.report import build_report, redact_url
from tests import _browser
from tests.data.bob_paper import paper
from tests.test_cli_store import bobx
from tests.test_end_to_end import manifests  # noqa: F401 (the tiny backbones' catalog)

BACKBONES = ("e2e_resnet", "e2e_vit")  # tiny random-init timm models (test_end_to_end)
SPEED_METRICS = {  # the speed job's contract: name -> higher is better
    "images_per_s": True,
    "latency_p50_ms": False,
    "latency_p95_ms": False,
    "peak_memory_mb": False,
    "gflops": False,
}
AP_BOX = ("ap_box", "ap50_box", "ap75_box", "aps_box", "apm_box", "apl_box")
AP_MASK = ("ap_mask", "ap50_mask", "ap75_mask")

browser = pytest.mark.skipif(_browser.skip_reason() is not None, reason=str(_browser.skip_reason()))


# --------------------------------------------------------------------------------------------
# Stores
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paper_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The paper's records of its main backbones, every task (calibration and robustness
    included), imported through the CLI; MiDaS classification left out (footnote 2)."""
    tmp = tmp_path_factory.mktemp("paper")
    records, meta = paper.load_records(), paper.load_meta()
    main = set(meta.loc[meta["main"], "backbone"])
    keep = records["backbone"].isin(main) & ~(
        records["backbone"].str.startswith("midas_") & (records["task"] == "classification")
    )
    csv = tmp / "paper.csv"
    records[keep].to_csv(csv, index=False)
    store = str(tmp / "store")
    bobx("import-results", str(csv), store=store)
    bobx("compact", store=store)  # one Parquet pack, as a team keeps a big store
    return store


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Any:
    """Digits flow (600 train / 450 test images) plus contract-shaped job outputs."""
    catalog = request.getfixturevalue("manifests")  # test_end_to_end's tiny backbones
    from featcache.extract import extract
    from featcache.runners.classification import run_calibration, run_knn, run_probe

    mp = pytest.MonkeyPatch()
    mp.setenv("BOBX_MANIFESTS", str(catalog))
    url = str(tmp_path_factory.mktemp("digits") / "store")
    store = featcache.open_store(url)
    for bb in BACKBONES:
        extract(store, bb, "digits", splits=["train", "test"], weights="random", num_workers=0,
                limit=600, progress=False)  # fmt: skip
        run_knn(store, bb, "digits", ks=[10])
        run_probe(store, bb, "digits", c_grid=[0.01, 0.1, 1.0, 10.0])
        run_calibration(store, bb, "digits")
    write_job_outputs(store)
    yield store
    mp.undo()


def write_job_outputs(store: featcache.Store) -> None:
    """Records and artifacts in the contracts' shapes: fine-tuning (a two-point lr grid with
    per-epoch curves), PGD robustness (eps 0, 1/255, 2/255, and a later re-run), speed and
    detection / segmentation / OOD detection."""
    rng = np.random.default_rng(0)
    for i, bb in enumerate(BACKBONES):
        for lr, selected in ((1e-3, True), (5e-4, False)):
            run_id = f"{bb}-lr{lr:g}"
            params = {"protocol": "finetune", "recipe": "quick", "lr": lr, "fraction": None,
                      "shots": None, "seed": 0, "run_id": run_id, "epochs": 6}  # fmt: skip
            epoch = np.arange(1, 7)
            val = 0.5 + 0.06 * epoch * (1.2 if selected else 1.0) + 0.02 * i
            curve = {
                "epoch": epoch,
                "train_loss": 2.3 * np.exp(-0.4 * epoch) + rng.uniform(0, 0.02, 6),
                "val_top1": val,
                "test_top1": val - 0.01,
                "lr": lr * 0.5 * (1 + np.cos(np.pi * (epoch - 1) / 6)),
            }
            store.put_artifact("finetune_curve", bb, "digits", run_id, curve,
                               {**params, "selected": selected})  # fmt: skip
            if selected:
                for metric, value in (("top1", curve["test_top1"][-1]), ("top5", 0.99)):
                    store.record(backbone=bb, task="classification", dataset="digits",
                                 metric=metric, value=float(value), params=params)  # fmt: skip
        for eps, k in (("0", 0), ("1/255", 1), ("2/255", 2)):
            eps_value = k / 255
            store.record(
                backbone=bb, task="robustness", dataset="digits", metric="top1",
                value=0.8 - 0.25 * k - 0.05 * i,
                params={"attack": "pgd", "norm": "linf", "eps": eps, "eps_value": eps_value,
                        "steps": 20, "step_size": eps_value / 5, "random_start": True,
                        "head": "probe"},
            )  # fmt: skip
        for metric, hib in SPEED_METRICS.items():
            store.record(
                backbone=bb, task="speed", dataset="synthetic", metric=metric,
                value=float(rng.uniform(10, 1000)), higher_is_better=hib,
                params={"device": "cpu", "precision": "fp32", "batch_size": 32,
                        "resolution": 32, "versions": {"torch": "x"}},
            )  # fmt: skip
        det = {"protocol": "finetune", "recipe": "quick", "lr": 1e-4, "neck": "fpn"}
        for task, metrics, dataset in (("detection", AP_BOX, "shapes"),
                                       ("segmentation", AP_MASK, "shapes"),
                                       ("ood_detection", ("ap50",), "cityscapes")):  # fmt: skip
            for j, metric in enumerate(metrics):
                store.record(backbone=bb, task=task, dataset=dataset, metric=metric,
                             value=0.3 + 0.1 * i - 0.02 * j, params=det)  # fmt: skip
    # a re-run of one robustness setting: the report must use the later record
    store.record(
        backbone=BACKBONES[1], task="robustness", dataset="digits", metric="top1", value=0.123,
        params={"attack": "pgd", "norm": "linf", "eps": "2/255", "eps_value": 2 / 255,
                "steps": 20, "step_size": 2 / 255 / 5, "random_start": True, "head": "probe"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def digits_report(digits_store: featcache.Store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "digits.html"
    return build_report(digits_store, out, n_boot=200)


@pytest.fixture(scope="module")
def paper_report(paper_store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "paper.html"
    proc = bobx("report", "--output", str(out), "--title", "BoB appendix", store=paper_store)
    assert Path(proc.stdout.strip()) == out.resolve()
    return out


# --------------------------------------------------------------------------------------------
# Reading the page
# --------------------------------------------------------------------------------------------


def soup(path: Path) -> BeautifulSoup:
    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def ranking_rows(page: BeautifulSoup) -> list[dict[str, Any]]:
    """The ranking tables' rows, in page order, from their data attributes and cells."""
    rows = []
    for tr in page.select("#ranking tr[data-task]"):
        cells = [td.get_text(strip=True) for td in tr.find_all("td")]
        rows.append(
            {
                "task": tr["data-task"],
                "backbone": tr["data-backbone"],
                "rank": int(tr["data-rank"]),
                "score": float(tr["data-score"]),
                "ci_low": float(tr["data-ci-low"]) if tr["data-ci-low"] else math.nan,
                "ci_high": float(tr["data-ci-high"]) if tr["data-ci-high"] else math.nan,
                "p_first": float(tr["data-p-first"]) if tr["data-p-first"] else math.nan,
                "n_settings": int(tr["data-n-settings"]),
                "cells": cells,
            }
        )
    return rows


def external_references(html: str) -> list[str]:
    """Every reference the page would fetch from elsewhere: src / href / srcset / action /
    poster attributes, CSS url() and @import, <link> and <script src> not inline."""
    page = BeautifulSoup(html, "html.parser")
    found = []
    for tag in page.find_all(True):
        for attr in ("src", "href", "xlink:href", "srcset", "action", "poster", "data"):
            value = tag.get(attr)
            if value and not str(value).startswith(("#", "data:")):
                found.append(f"<{tag.name} {attr}={value}>")
        if tag.name == "link" or (tag.name == "script" and tag.get("src")):
            found.append(str(tag)[:80])
    for style in [s.get_text() for s in page.find_all("style")] + [
        str(t.get("style")) for t in page.find_all(style=True)
    ]:
        found += re.findall(r"url\((?!['\"]?(?:#|data:))[^)]*\)|@import[^;]*", style)
    return found


def rank_json(store: str, *options: str) -> pd.DataFrame:
    return pd.DataFrame(json.loads(bobx("rank", *options, "--json", store=store).stdout))


def assert_ranking_equals(page: BeautifulSoup, ranked: pd.DataFrame) -> None:
    """The page's ranking holds exactly `bobx rank --json`'s rows, in its order per task."""
    rows = ranking_rows(page)
    assert len(rows) == len(ranked)
    want = ranked.set_index(["task", "backbone"])
    for row in rows:
        w = want.loc[(row["task"], row["backbone"])]
        assert row["rank"] == w["rank"] and row["n_settings"] == w["n_settings"]
        for col in ("score", "ci_low", "ci_high", "p_first"):
            assert row[col] == pytest.approx(w[col], abs=1e-9, nan_ok=True), (row, col)
        assert row["cells"][2] == f"{w['score']:+.3f}"  # the number shown
    for task, part in ranked.groupby("task"):
        shown = [r["backbone"] for r in rows if r["task"] == task]
        assert shown == part.sort_values(["rank", "backbone"])["backbone"].tolist()


# --------------------------------------------------------------------------------------------
# The paper's records
# --------------------------------------------------------------------------------------------


def test_paper_report_equals_rank_json_and_is_self_contained(paper_store, paper_report):
    html = paper_report.read_text(encoding="utf-8")
    page = BeautifulSoup(html, "html.parser")
    assert page.title.get_text() == "BoB appendix"
    assert_ranking_equals(page, rank_json(paper_store))
    # overall first, then the tasks in the paper's order
    order = list(dict.fromkeys(r["task"] for r in ranking_rows(page)))
    assert order == ["overall", "classification", "detection", "segmentation", "retrieval",
                     "ood_classification", "ood_detection", "calibration", "robustness"]  # fmt: skip
    assert external_references(html) == []
    without_namespaces = re.sub(r'xmlns(:\w+)?="[^"]*"', "", html)
    assert "http://" not in without_namespaces and "https://" not in without_namespaces
    # sections with records are there; those without (no artifacts, no speed) are not
    for section in ("ranking", "settings", "correlation", "detection", "robustness", "provenance"):
        assert page.find("section", id=section) is not None, section
    for section in ("calibration", "finetune", "speed", "interactive", "empty"):
        assert page.find("section", id=section) is None, section
    assert len(page.select("#correlation svg.figure")) == 3  # heatmap, Fig. 1 scatter, metadata
    heat = page.select("#correlation svg.figure")[0]
    assert {"classification", "detection", "ood_detection"} <= {
        t.get_text() for t in heat.find_all("text")
    }


def test_overall_tasks_pass_through_to_the_ranking(paper_store, paper_report, tmp_path):
    """`bobx report --overall-tasks` ranks as `bobx rank --overall-tasks` does, and the page
    names the tasks "overall" combined (by default BoB's performance tasks, without
    calibration and robustness)."""
    default = soup(paper_report)
    note = default.find("section", id="ranking").get_text(" ", strip=True)
    assert "overall combines the tasks classification, detection" in note
    assert "calibration," not in note.split("overall combines")[1].split("(weight")[0]
    out = tmp_path / "all.html"
    bobx("report", "--output", str(out), "--n-boot", "50", "--overall-tasks", "all",
         store=paper_store)  # fmt: skip
    page = soup(out)
    assert_ranking_equals(page, rank_json(paper_store, "--n-boot", "50", "--overall-tasks", "all"))
    note = page.find("section", id="ranking").get_text(" ", strip=True)
    assert "calibration" in note.split("overall combines")[1].split("(weight")[0]


def test_paper_report_reproduces_table2_top3(paper_store, tmp_path):
    """With the options that reproduce the paper's Table 2 in `bobx rank` (its six tasks,
    settings pooled, backbones in all six), the page's top-3 summary is Table 2 (but for the
    OOD-classification row, which does not follow from the paper's Table 14: see README)."""
    from featcache.runners.ranking import rank_store

    tasks = [t for t in paper.TABLE2 if t != "overall"]
    options = {"tasks": tasks, "n_boot": 0, "weight": "setting", "min_tasks": 6}
    store = featcache.open_store(paper_store)
    page = soup(build_report(store, tmp_path / "table2.html", **options))
    summary = {
        tr.find_all("td")[0].get_text(): [td.get_text() for td in tr.find_all("td")[1:]]
        for tr in page.select("#t-rank-summary tbody tr")
    }
    assert set(summary) == set(paper.TABLE2)
    for task, top3 in paper.TABLE2.items():
        if task != "ood_classification":
            assert summary[task] == top3, task
    assert_ranking_equals(page, rank_store(store, **options))
    assert {r["task"] for r in ranking_rows(page)} == set(paper.TABLE2)


def test_paper_settings_tables_and_provenance_hold_the_records(paper_store, paper_report):
    page = soup(paper_report)
    records = featcache.open_store(paper_store).results()
    by_id = records.set_index("id")
    provenance = page.select("#t-records tbody tr")
    assert len(provenance) == len(records)
    for tr in provenance:
        rid = tr["id"].removeprefix("rec-")
        value = float(tr.find("td", attrs={"data-value": True})["data-value"])
        assert value == by_id.loc[rid, "value"]
    # every value of the per-setting tables links to its own record, with that value
    links = page.select("#settings td[data-value] a")
    assert len(links) == len(records)  # one record per backbone and setting here
    anchors = {tag["id"] for tag in page.find_all(id=True)}
    for a in links:
        rid = a["href"].removeprefix("#rec-")
        assert float(a.parent["data-value"]) == by_id.loc[rid, "value"]
        assert f"rec-{rid}" in anchors
    # the robustness section reads BoB's eps strings
    heads = [th.get_text(" ", strip=True) for th in page.select("#robustness thead th")]
    assert heads == ["backbone", "eps 1/255", "eps 2/255"]


# --------------------------------------------------------------------------------------------
# The digits flow, with the jobs' contract records
# --------------------------------------------------------------------------------------------


def test_digits_report_sections_and_values(digits_store, digits_report):
    html = digits_report.read_text(encoding="utf-8")
    page = BeautifulSoup(html, "html.parser")
    assert external_references(html) == []
    for section in ("ranking", "settings", "correlation", "calibration", "finetune",
                    "detection", "robustness", "speed", "provenance"):  # fmt: skip
        assert page.find("section", id=section) is not None, section
    from featcache.runners.ranking import rank_store

    assert_ranking_equals(page, rank_store(digits_store, n_boot=200))
    ids = [tag["id"] for tag in page.find_all(id=True)]  # figures' own ids included
    assert len(ids) == len(set(ids))
    # footer: version, the store's URL and the record count
    footer = page.find("footer").get_text(" ", strip=True)
    assert digits_store.url in footer and f"{len(digits_store.results())} records" in footer
    assert featcache.provenance.bobx_version() in footer


def test_digits_reliability_diagrams_are_the_probes_predictions(digits_store, digits_report):
    page = soup(digits_report)
    figures = page.select("#calibration figure")
    assert len(figures) == len(BACKBONES)
    for fig, bb in zip(figures, BACKBONES, strict=True):
        assert fig.figcaption.get_text().startswith(f"{bb} on digits")
        arrays, _ = digits_store.get_artifact("probe", bb, "digits", "full")
        m = calibration_metrics(softmax(arrays["test_logits"]), arrays["test_labels"])
        title = " ".join(t.get_text() for t in fig.find_all("text"))
        assert f"ECE {100 * m['ece']:.2f}%" in title
        ece = digits_store.results(backbone=bb, task="calibration", metric="ece")["value"].iloc[0]
        assert ece == pytest.approx(m["ece"])


def test_digits_finetune_curves(digits_store, digits_report):
    page = soup(digits_report)
    section = page.find("section", id="finetune")
    assert section.find("svg", class_="figure") is not None
    texts = {t.get_text() for t in section.find_all("text")}
    assert {"train loss", "val top1", "test top1", "lr"} <= texts  # one panel per series
    rows = section.select("tbody tr")
    assert len(rows) == 4  # two grid points per backbone
    for tr in rows:
        cells = tr.find_all("td")
        bb, run = cells[0].get_text(), cells[1]["title"]
        arrays, attrs = digits_store.get_artifact("finetune_curve", bb, "digits", run)
        assert cells[2].get_text() == ("yes" if attrs["selected"] else "no")
        assert float(cells[-1]["data-sort"]) == pytest.approx(arrays["test_top1"][-1])
        assert float(cells[-2]["data-sort"]) == pytest.approx(arrays["val_top1"].max())
        assert f"lr={attrs['lr']:g}" in cells[3].get_text()


def test_digits_detection_robustness_speed(digits_store, digits_report):
    page = soup(digits_report)
    tables = page.select("#detection table")
    captions = [h.get_text() for h in page.select("#detection h3")]
    assert [c.split(":")[0] for c in captions] == [
        "detection on shapes/test",
        "segmentation on shapes/test",
        "ood_detection on cityscapes/test",
    ]
    heads = [th.get_text() for th in tables[0].select("thead th")]
    assert heads == ["backbone", *AP_BOX]
    recorded = digits_store.results(task="detection").set_index(["backbone", "metric"])["value"]
    for tr in tables[0].select("tbody tr"):
        cells = tr.find_all("td")
        for metric, td in zip(AP_BOX, cells[1:], strict=True):
            assert float(td["data-value"]) == recorded[cells[0].get_text(), metric]
    # rows best first by AP
    aps = [float(tr.find_all("td")[1]["data-value"]) for tr in tables[0].select("tbody tr")]
    assert aps == sorted(aps, reverse=True)

    rob = page.find("section", id="robustness")
    heads = [th.get_text() for th in rob.select("thead th")]
    assert heads == ["backbone", "eps 0", "eps 1/255", "eps 2/255"]
    vit = next(tr for tr in rob.select("tbody tr") if tr.td.get_text() == "e2e_vit")
    assert float(vit.find_all("td")[3]["data-value"]) == 0.123  # the re-run, not the first run
    assert rob.find("svg", class_="figure") is not None
    prov = page.select("#t-records tbody tr")
    assert sum(tr.find_all("td")[-1].get_text() == "superseded" for tr in prov) == 1

    speed = page.find("section", id="speed")
    captions = [f.figcaption.get_text() for f in speed.find_all("figure")]
    assert any("cpu / fp32 / batch 32 / 32 px" in c for c in captions)
    assert {"e2e_resnet", "e2e_vit"} <= {t.get_text() for t in speed.find_all("text")}


def test_digits_provenance_has_cache_keys_hosts_and_feature_sets(digits_store, digits_report):
    page = soup(digits_report)
    records = digits_store.results()
    rows = {tr["id"].removeprefix("rec-"): tr for tr in page.select("#t-records tbody tr")}
    assert set(rows) == set(records["id"])
    for rec in records.to_dict("records"):
        cells = rows[rec["id"]].find_all("td")
        if isinstance(rec["cache_key"], str):
            assert cells[9]["title"] == rec["cache_key"]
        else:  # a record without features (speed, detection): no key, not "nan"
            assert cells[9].get_text() == "" and not cells[9].get("title")
        assert cells[10].get_text() == rec["host"]
        assert cells[12].get_text() == rec["created_at"][:19].replace("T", " ")
        assert json.loads(cells[8]["title"]) == json.loads(rec["params"])
    keys = {td["title"] for td in page.select("#t-feature-sets tbody td[title]")}
    assert keys == {fs.cache_key for fs in digits_store.list_features()}


def test_filters_and_empty_store(digits_store, tmp_path):
    out = build_report(digits_store, tmp_path / "vit.html", backbones=["e2e_vit"], n_boot=0)
    page = soup(out)
    assert {tr["data-backbone"] for tr in page.select("tr[data-backbone]")} == set()  # 1 backbone
    assert "Nothing to rank" in page.find("section", id="ranking").get_text()
    assert {tr.find_all("td")[1].get_text() for tr in page.select("#t-records tbody tr")} == {
        "e2e_vit"
    }
    out = build_report(digits_store, tmp_path / "det.html", tasks=["detection"], n_boot=0)
    assert {r["task"] for r in ranking_rows(soup(out))} == {"detection", "overall"}

    empty = tmp_path / "empty-store"
    proc = bobx("report", "--output", str(tmp_path / "empty.html"), store=str(empty))
    page = soup(Path(proc.stdout.strip()))
    assert page.find("section", id="empty") is not None
    assert page.find("section", id="ranking") is None


def test_bad_input_is_one_line_errors(digits_store, tmp_path):
    url = digits_store.url
    proc = bobx("report", "--output", str(tmp_path / "x.html"), "--task", "detecton", store=url,
                check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "detection" in proc.stderr
    proc = bobx("report", "--output", str(tmp_path / "x.html"), "--backbone", "nope", store=url,
                check=False)  # fmt: skip
    assert proc.returncode == 2 and "bobx results" in proc.stderr
    proc = bobx("report", "--output", str(tmp_path), store=url, check=False)
    assert proc.returncode == 2 and "is a directory" in proc.stderr
    assert not list(tmp_path.glob("*.html"))


def test_backbones_outside_the_catalog_get_unknown_metadata(tmp_path):
    """Imported results of a backbone the catalog does not know (no family, no parameter
    count) beside catalog backbones: the page is built, its family reads "unknown"."""
    from featcache.runners.ranking import correlate_store

    store = featcache.open_store(str(tmp_path / "store"))
    names = ("sup_resnet50_in1k", "dino_vitb_in1k", "clip_vitb_laion2b", "my_model")
    for i, bb in enumerate(names):
        for dataset in ("d1", "d2", "d3"):
            store.record(backbone=bb, task="classification", dataset=dataset, metric="top1",
                         value=0.5 + 0.1 * ((i * 7 + len(dataset)) % 4))  # fmt: skip
            store.record(backbone=bb, task="retrieval", dataset=dataset, metric="map",
                         value=0.2 + 0.05 * ((i * 3 + len(dataset)) % 5))  # fmt: skip
    page = soup(build_report(store, tmp_path / "r.html", n_boot=0))
    assert "my_model" in {tr["data-backbone"] for tr in page.select("tr[data-backbone]")}
    shown = {
        tr.find_all("td")[1].get_text() for tr in page.select("#t-metadata-correlations tbody tr")
    }
    assert shown == {"all", "cnn", "vit"}  # my_model has no metadata to correlate (n = 0)
    corr = correlate_store(store)["metadata"]
    assert set(corr["family"]) == {"all", "cnn", "vit", "unknown"}
    assert (corr.loc[corr["family"] == "unknown", "n"] == 0).all()


def test_output_is_replaced_whole_with_the_umask_permissions(digits_store, tmp_path):
    out = tmp_path / "sub" / "r.html"
    old = os.umask(0o022)
    try:
        build_report(digits_store, out, tasks=["detection"], n_boot=0, title="first")
        build_report(digits_store, out, tasks=["detection"], n_boot=0, title="second")
    finally:
        os.umask(old)
    assert soup(out).title.get_text() == "second"
    assert out.stat().st_mode & 0o777 == 0o644  # a page to send around, not private
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]  # no temporary left


def test_same_store_same_page(digits_store):
    """Two builds differ only in their time stamp (figure ids are salted, not random)."""
    from featcache.report import render_report

    def page() -> str:
        html = render_report(digits_store, tasks=["robustness", "calibration"], n_boot=20)
        return re.sub(r"on \d{4}-\d\d-\d\d \d\d:\d\d UTC", "", html)

    first = page()
    assert "<svg" in first and first == page()


def test_redact_url():
    assert redact_url("s3://AKIA:s3cret@bucket/team/bobx?token=t") == "s3://bucket/team/bobx"
    assert redact_url("http://u:p@minio.local:9000/b/p") == "http://minio.local:9000/b/p"
    assert redact_url("/shared/team/bobx") == "/shared/team/bobx"
    assert redact_url("memory://x") == "memory://x"


def test_interactive_needs_plotly_and_inlines_it(digits_store, tmp_path, monkeypatch):
    pytest.importorskip("plotly")
    out = build_report(digits_store, tmp_path / "i.html", interactive=True, n_boot=50)
    html = out.read_text(encoding="utf-8")
    page = BeautifulSoup(html, "html.parser")
    divs = page.select("#interactive .plotly-graph-div")
    assert len(divs) >= 2  # the ranking and one metadata scatter (throughput)
    assert not page.find("script", src=True) and "Plotly.newPlot" in html
    assert len(html) > 1_000_000  # plotly.js itself is inside
    if _browser.skip_reason() is None:
        with _browser.open_page(out) as (page, visit, url):
            assert visit.errors == [] and visit.console == []
            assert visit.external_requests(url) == []
            assert page.locator(".js-plotly-plot .main-svg").count() >= len(divs)
    monkeypatch.setitem(sys.modules, "plotly.express", None)
    with pytest.raises(featcache.UnavailableError, match=r"bobx\[interactive\]"):
        build_report(digits_store, tmp_path / "j.html", interactive=True, n_boot=0)


# --------------------------------------------------------------------------------------------
# In a real browser
# --------------------------------------------------------------------------------------------


def check_in_browser(path: Path, *, screenshot: Path | None = None) -> dict[str, Any]:
    """Open the report in headless Chromium: no console messages, no uncaught errors, no
    request but the file; tables and figures rendered; a screenshot that is not blank."""
    with _browser.open_page(path) as (page, visit, url):
        assert visit.errors == [] and visit.console == []
        assert visit.external_requests(url) == [] and visit.failed == []
        n_tables = page.locator("table.sortable").count()
        sizes = page.eval_on_selector_all(
            "svg.figure", "els => els.map(e => [e.getBoundingClientRect().width,"
            " e.getBoundingClientRect().height])"
        )  # fmt: skip
        png = page.screenshot()
        stats = _browser.screenshot_stats(png)
    assert n_tables > 0 and sizes and all(w > 100 and h > 50 for w, h in sizes)
    assert stats["std"] > 20 and stats["colours"] > 50 and stats["non_white"] > 0.03, stats
    if screenshot is not None:
        _browser.save_small_png(png, screenshot)
    return {"tables": n_tables, "figures": len(sizes), **stats}


@browser
@pytest.mark.browser
def test_browser_harness_catches_errors_and_network(tmp_path):
    """The checks below can fail: a page with a console error, an uncaught exception and an
    external image is caught on all three counts."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><body><p>x</p><img src='https://example.invalid/a.png'>"
        "<script>console.error('boom'); undefinedFunction();</script></body></html>"
    )
    with _browser.open_page(bad) as (_, visit, url):
        assert ("error", "boom") in visit.console
        assert any("undefinedFunction" in e for e in visit.errors)
        assert visit.external_requests(url) == ["https://example.invalid/a.png"]
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    with _browser.open_page(blank) as (page, _, _):
        assert _browser.screenshot_stats(page.screenshot())["std"] == 0


@browser
@pytest.mark.browser
def test_reports_in_chromium(digits_report, paper_report):
    seen = check_in_browser(digits_report)
    # ranking, metadata, 2 reliability, curves, eps, 2 speed (two backbones: no heatmap,
    # Spearman needs three)
    assert seen["figures"] == len(soup(digits_report).select("svg.figure")) == 8
    shot = os.environ.get("BOBX_REPORT_SCREENSHOT")  # README screenshot: set to docs/report.png
    seen = check_in_browser(paper_report, screenshot=Path(shot) if shot else None)
    # ranking, heatmap, Fig. 1 scatter, metadata, robustness
    assert seen["figures"] == len(soup(paper_report).select("svg.figure")) == 5


@browser
@pytest.mark.browser
def test_tables_sort_in_chromium(paper_report):
    table = "t-settings-classification"
    rows = [tr.find_all("td") for tr in soup(paper_report).select(f"#{table} tbody tr")]
    col = next(  # a setting some backbones lack: their empty cells stay last either way
        c
        for c in range(3, len(rows[0]))
        if {r[c]["data-sort"] == "" for r in rows} == {True, False}
    )
    with _browser.open_page(paper_report) as (page, visit, _):
        before = _browser.rows_of(page, table, col)
        page.click(f"#{table} thead th:nth-child({col + 1})")
        desc = _browser.rows_of(page, table, col)
        page.click(f"#{table} thead th:nth-child({col + 1})")
        asc = _browser.rows_of(page, table, col)
        page.click(f"#{table} thead th:nth-child(2)")  # backbone names, A to Z
        names = _browser.rows_of(page, table, 1)
        sort_state = page.get_attribute(f"#{table} thead th:nth-child(2)", "aria-sort")
        assert visit.errors == [] and visit.console == []
    values = [float(v) for v in before if v != "" and v != "nan"]
    assert 0 < len(values) < len(before)
    assert [float(v) for v in desc[: len(values)]] == sorted(values, reverse=True)
    assert [float(v) for v in asc[: len(values)]] == sorted(values)
    assert set(desc[len(values) :]) == set(asc[len(values) :]) == {""}
    assert names == sorted(names, key=str.lower) and sort_state == "ascending"

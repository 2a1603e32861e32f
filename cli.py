"""The ``bobx`` command: a thin Typer layer over the featcache / evaluators API.

Every command parses its options, calls one library function, and prints. A
:class:`featcache.errors.BobxError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
import warnings
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from featcache.errors import BobxError

app = typer.Typer(
    name="bobx",
    help="Evaluate pretrained vision backbones from a shared feature cache.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from featcache.provenance import bobx_version

        typer.echo(f"bobx {bobx_version()}")
        raise typer.Exit()


@app.callback()
def _bobx(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Evaluate pretrained vision backbones from a shared feature cache."""


StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="BOBX_STORE",
        help="Store URL: a directory, s3://bucket/prefix or memory://name [env BOBX_STORE; "
        "default ./bobx-store].",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _store(url: str | None) -> Any:
    from featcache.store import open_store

    return open_store(url)


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _print_records(records: list[Any], as_json: bool) -> None:
    """Every evaluator prints what it wrote: JSON in ``bobx results --format json``'s schema."""
    if as_json:
        _echo_json([r.to_dict() for r in records])
        return
    from rich.table import Table

    table = Table("backbone", "task", "dataset", "split", "metric", "value", "params")
    for r in records:
        table.add_row(
            r.backbone, r.task, r.dataset, r.split, r.metric, f"{r.value:.4f}", r.params_json
        )
    _console().print(table)


def _console() -> Any:
    """A rich console that does not squeeze tables to 80 columns when piped."""
    import shutil

    from rich.console import Console

    return Console(width=max(shutil.get_terminal_size((160, 24)).columns, 120))


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {item!r}", param_hint="--param")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


# --------------------------------------------------------------------------- store
@app.command("ls")
def ls_cmd(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """List feature sets (and result counts) in the store."""
    st = _store(store)
    sets = [i.to_dict() for i in st.list_features()]
    results = st.results()
    if as_json:
        _echo_json({"store": st.url, "feature_sets": sets, "n_results": len(results)})
        return
    from rich.table import Table

    table = Table("backbone", "dataset", "split", "n", "dim", "dtype", "status", "created")
    for s in sets:
        table.add_row(
            s["backbone"],
            s["dataset"],
            s["split"],
            str(s["n"]),
            str(s["dim"]),
            s["dtype"],
            s["status"],
            s["created_at"][:19],
        )
    console = _console()
    console.print(table)
    console.print(f"{len(results)} result record(s) in {st.url}")


@app.command("import-features")
def import_features_cmd(
    backbone: Annotated[str, typer.Option(help="Backbone name (a slug).")],
    dataset: Annotated[str, typer.Option(help="Dataset name (a slug).")],
    features: Annotated[Path, typer.Option(help="(N, D) .npy array of features.")],
    split: Annotated[str, typer.Option(help="Split name.")] = "test",
    labels: Annotated[Path | None, typer.Option(help="(N,) or (N, C) .npy labels.")] = None,
    ids: Annotated[Path | None, typer.Option(help="Text file, one id per line.")] = None,
    dtype: Annotated[str, typer.Option(help="Stored dtype: float16 or float32.")] = "float16",
    overwrite: Annotated[bool, typer.Option(help="Replace a set with another cache key.")] = False,
    store: StoreOpt = None,
) -> None:
    """Bring features computed by another tool into the store."""
    from featcache.io import load_npy, read_lines

    st = _store(store)
    fs = st.import_features(
        backbone,
        dataset,
        split,
        load_npy(features),
        labels=None if labels is None else load_npy(labels),
        ids=None if ids is None else read_lines(ids),
        dtype=dtype,
        attrs={"imported_from": str(features)},
        overwrite=overwrite,
    )
    typer.echo(f"imported {fs.n} x {fs.dim} features as {backbone}/{dataset}/{split}")


# --------------------------------------------------------------------------- records
@app.command("record")
def record_cmd(
    backbone: Annotated[str, typer.Option()],
    task: Annotated[str, typer.Option(help="e.g. classification, detection, retrieval.")],
    dataset: Annotated[str, typer.Option()],
    metric: Annotated[str, typer.Option(help="e.g. top1, map, ap_box.")],
    value: Annotated[float, typer.Option()],
    split: Annotated[str, typer.Option()] = "test",
    lower_is_better: Annotated[bool, typer.Option(help="The metric is an error/loss.")] = False,
    param: Annotated[
        list[str] | None, typer.Option(help="Protocol knob key=value (repeat).")
    ] = None,
    cache_key: Annotated[str | None, typer.Option(help="Cache key of the features used.")] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record one metric (from any job: fine-tuning, detection, your own script)."""
    rec = _store(store).record(
        backbone=backbone,
        task=task,
        dataset=dataset,
        metric=metric,
        value=value,
        split=split,
        higher_is_better=not lower_is_better,
        params=_parse_params(param),
        cache_key=cache_key,
    )
    _print_records([rec], as_json)


@app.command("import-results")
def import_results_cmd(
    file: Annotated[Path, typer.Argument(help="CSV or JSONL in long format.")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import results (columns backbone, task, dataset, metric, value[, split,
    higher_is_better, params])."""
    from featcache.records import read_result_rows, records_from_rows

    records = records_from_rows(read_result_rows(file), source=str(file))
    _store(store).add_records(records)
    if as_json:
        _print_records(records, True)
    else:
        typer.echo(f"imported {len(records)} record(s) from {file}")


class ResultFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"
    markdown = "markdown"


@app.command("results")
def results_cmd(
    fmt: Annotated[ResultFormat, typer.Option("--format")] = ResultFormat.table,
    output: Annotated[Path | None, typer.Option(help="Write to this file.")] = None,
    backbone: Annotated[list[str] | None, typer.Option(help="Filter (repeatable).")] = None,
    task: Annotated[list[str] | None, typer.Option(help="Filter (repeatable).")] = None,
    dataset: Annotated[list[str] | None, typer.Option(help="Filter (repeatable).")] = None,
    metric: Annotated[list[str] | None, typer.Option(help="Filter (repeatable).")] = None,
    split: Annotated[list[str] | None, typer.Option(help="Filter (repeatable).")] = None,
    store: StoreOpt = None,
) -> None:
    """Show or export result records."""
    from featcache.io import write_results
    from featcache.runners.names import with_canonical

    df = _store(store).results(
        backbone=with_canonical(backbone, "backbone"),
        task=task or None,
        dataset=with_canonical(dataset, "dataset"),
        metric=metric or None,
        split=split or None,
    )
    text = write_results(df, fmt.value, output)
    if text is not None:
        typer.echo(text, nl=not text.endswith("\n"))


@app.command("compact")
def compact_cmd(store: StoreOpt = None) -> None:
    """Fold loose result records into one Parquet pack (faster queries on big stores)."""
    n = _store(store).compact_records()
    typer.echo(f"packed {n} record(s)")


# --------------------------------------------------------------------------- store integrity
@app.command("verify")
def verify_cmd(
    repair: Annotated[
        bool,
        typer.Option(
            help="Recompute lost or corrupt chunks of extracted sets, delete leftovers, "
            "set damaged records aside and retract non-finite ones."
        ),
    ] = False,
    quick: Annotated[
        bool, typer.Option(help="Check objects and sizes only (do not read every chunk).")
    ] = False,
    backbone: Annotated[str | None, typer.Option(help="Only this backbone's sets.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset's sets.")] = None,
    split: Annotated[str | None, typer.Option(help="Only this split.")] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Dataset directory, for --repair to recompute chunks.")
    ] = None,
    device: Annotated[str, typer.Option(help="--repair: auto, cpu or cuda[:i].")] = "auto",
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check every feature set and record (exit 1 when problems remain); --repair fixes."""
    from featcache.verify import verify_store

    report = verify_store(
        _store(store),
        backbone=backbone,
        dataset=dataset,
        split=split,
        deep=not quick,
        repair=repair,
        data_root=data_root,
        device=device,
    )
    if as_json:
        _echo_json(report.to_dict())
    else:
        for f in report.findings:
            state = "" if f.ok else f", {len(f.problems)} problem(s)"
            typer.echo(f"{f.name}: {f.status}{state}")
            for problem in f.problems:
                typer.echo(f"  - {problem}")
            for done in f.repaired:
                typer.echo(f"  repaired: {done}")
            if f.hint and not f.ok:
                typer.echo(f"  fix: {f.hint}")
    if not report.ok:
        raise typer.Exit(code=1)


@app.command("rm")
def rm_cmd(
    backbone: Annotated[str, typer.Option(help="Backbone name as stored (see `bobx ls`).")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")],
    split: Annotated[
        list[str] | None, typer.Option(help="Split (repeatable; default every split).")
    ] = None,
    store: StoreOpt = None,
) -> None:
    """Remove feature sets (in any state); writers still filling them stop."""
    for name in _store(store).remove_features(backbone, dataset, split or None):
        typer.echo(f"removed {name}")


@app.command("retract")
def retract_cmd(
    record_id: Annotated[str, typer.Argument(help="Record id (`bobx results --format json`).")],
    reason: Annotated[str, typer.Option(help="Why (kept with the retraction).")] = "",
    store: StoreOpt = None,
) -> None:
    """Withdraw a result record: readers (results, rank, report) leave it out."""
    if _store(store).retract(record_id, reason=reason):
        typer.echo(f"retracted {record_id}")
    else:
        typer.echo(f"{record_id} was already retracted")


# --------------------------------------------------------------------------- classification
BackboneOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="Backbone name or alias (repeatable; default: every backbone with complete "
        "features of the dataset).",
        show_default=False,
    ),
]
DatasetOpt = Annotated[str, typer.Option(help="Dataset name or alias (see `bobx datasets`).")]
BareDatasetOpt = Annotated[
    str | None,
    typer.Option(
        help="Dataset name or alias. Omitted (with --backbone omitted too): evaluate every "
        "(backbone, dataset) of the store not yet evaluated with these knobs.",
        show_default=False,
    ),
]
TestSplitOpt = Annotated[
    str | None, typer.Option(help="Evaluation split (default: test, else val).")
]


def _backbones(names: list[str] | None) -> list[str] | None:
    """``--backbone`` values; ``all`` (the old spelling) means every backbone, as omitting it."""
    if not names or names == ["all"]:
        return None
    return names


def _evaluate(
    command: str,
    store: str | None,
    backbone: list[str] | None,
    dataset: str | None,
    as_json: bool,
    **knobs: Any,
) -> None:
    """One evaluator command: on ``dataset`` (all or the named backbones), or, with neither
    given, on everything in the store not evaluated yet; prints the records written (what
    ran, what was skipped and why: one line each on stderr)."""
    from featcache.runners.pending import COMMANDS, run_pending

    st = _store(store)
    if dataset is not None:
        _print_records(COMMANDS[command][1](st, _backbones(backbone), dataset, **knobs), as_json)
        return
    if _backbones(backbone) is not None:
        raise typer.BadParameter(
            "pass --dataset with --backbone (or neither: every pair not evaluated yet)",
            param_hint="--dataset",
        )
    result = run_pending(st, command, **knobs)
    for outcome in result.outcomes:
        typer.echo(outcome.line(), err=True)
    typer.echo(result.summary(), err=True)
    _print_records(result.records, as_json)
    if result.failed:
        raise BobxError(f"{len(result.failed)} pair(s) failed; see the lines above.")


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated integers, got {text!r}", param_hint=option
        ) from None
    if not values or min(values) < 1:
        raise typer.BadParameter(f"expected positive integers, got {text!r}", param_hint=option)
    return values


class ProbeProtocol(StrEnum):
    dinov2 = "dinov2"
    clip_benchmark = "clip_benchmark"


class ProbeBackend(StrEnum):
    auto = "auto"
    sklearn = "sklearn"
    torch = "torch"
    cuml = "cuml"


@app.command("knn")
def knn_cmd(
    backbone: BackboneOpt = None,
    dataset: BareDatasetOpt = None,
    k: Annotated[str, typer.Option(help="Neighbour counts, comma-separated.")] = "10,20,100,200",
    temperature: Annotated[float, typer.Option(help="Weight exp(s / T).")] = 0.07,
    train_split: Annotated[str, typer.Option(help="Split searched.")] = "train",
    test_split: TestSplitOpt = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """DINO-weighted kNN classification on cached features (top-1 / top-5 per k)."""
    _evaluate(
        "knn",
        store,
        backbone,
        dataset,
        as_json,
        ks=_int_list(k, "--k"),
        temperature=temperature,
        train_split=train_split,
        test_split=test_split,
        device=device,
    )


@app.command("probe")
def probe_cmd(
    backbone: BackboneOpt = None,
    dataset: BareDatasetOpt = None,
    fraction: Annotated[
        float | None, typer.Option(help="Low-shot: stratified fraction of train (0.01, 0.1).")
    ] = None,
    shots: Annotated[int | None, typer.Option(help="Few-shot: items per class.")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the holdout and low-shot sampling.")] = 0,
    backend: Annotated[ProbeBackend, typer.Option(help="Solver.")] = ProbeBackend.auto,
    device: Annotated[str, typer.Option(help="cpu or cuda (torch / cuml backends).")] = "cpu",
    dtype: Annotated[
        str,
        typer.Option(help="Torch solver precision: float64 (protocol) or float32 (~10x faster)."),
    ] = "float64",
    eval_on: Annotated[
        list[str] | None, typer.Option(help="Also evaluate the probe on this dataset (OOD).")
    ] = None,
    train_split: Annotated[str, typer.Option(help="Training split.")] = "train",
    test_split: TestSplitOpt = None,
    val_split: Annotated[
        str | None, typer.Option(help="Official val split to choose C (default: val if cached).")
    ] = None,
    protocol: Annotated[
        ProbeProtocol,
        typer.Option(help="dinov2: L-BFGS over 45 C; clip_benchmark: AdamW over weight decay."),
    ] = ProbeProtocol.dinov2,
    warm_start: Annotated[
        bool,
        typer.Option(
            help="dinov2: start each C from the solution path (fewer iterations); "
            "--no-warm-start fits every C from zero, DINOv2's cold path."
        ),
    ] = True,
    lr: Annotated[float, typer.Option(help="clip_benchmark: AdamW learning rate.")] = 0.1,
    epochs: Annotated[int, typer.Option(help="clip_benchmark: training epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="clip_benchmark: mini-batch size.")] = 64,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Linear probe: DINOv2 logistic regression (45-value C sweep, refit) or CLIP_benchmark."""
    if fraction is not None and shots is not None:
        raise typer.BadParameter("pass --fraction or --shots, not both")
    if eval_on and dataset is None:
        raise typer.BadParameter("--eval-on needs --dataset (the probe's training set)")
    clip = protocol is ProbeProtocol.clip_benchmark
    if clip and not warm_start:
        raise typer.BadParameter("--no-warm-start belongs to --protocol dinov2")
    _evaluate(
        "probe",
        store,
        backbone,
        dataset,
        as_json,
        fraction=fraction,
        shots=shots,
        seed=seed,
        backend=backend.value,
        device=device,
        dtype=dtype,
        train_split=train_split,
        test_split=test_split,
        val_split=val_split,
        eval_on=eval_on or (),
        protocol=protocol.value,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        **({} if clip else {"warm_start": warm_start}),
    )


@app.command("calibrate")
def calibrate_cmd(
    backbone: BackboneOpt = None,
    dataset: BareDatasetOpt = None,
    run: Annotated[
        str, typer.Option(help="Probe run: full, frac0.1-seed0, shots10-seed0.")
    ] = "full",
    n_bins: Annotated[int, typer.Option(help="Equal-width confidence bins.")] = 15,
    temperature_scale: Annotated[
        bool, typer.Option(help="Fit a temperature on the probe's validation logits first.")
    ] = False,
    plot: Annotated[Path | None, typer.Option(help="Reliability diagram (PNG).")] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """ECE (15 bins), NLL and Brier of a stored probe's test predictions."""
    _evaluate(
        "calibrate",
        store,
        backbone,
        dataset,
        as_json,
        run=run,
        n_bins=n_bins,
        temperature_scale=temperature_scale,
        plot=None if plot is None else str(plot),
    )


# --------------------------------------------------------------------------- retrieval
class QueryCrop(StrEnum):
    bbx = "bbx"
    none = "none"


@app.command("retrieve")
def retrieve_cmd(
    dataset: DatasetOpt,
    backbone: BackboneOpt = None,
    protocol: Annotated[
        str, typer.Option(help="Revisited settings, comma-separated.")
    ] = "easy,medium,hard",
    query_crop: Annotated[
        QueryCrop, typer.Option(help="Queries cropped to their bbx (revisitop) or not.")
    ] = QueryCrop.bbx,
    k: Annotated[str, typer.Option(help="k of mP@k / Recall@k, comma-separated.")] = "1,5,10",
    top_k: Annotated[
        int | None, typer.Option(help="Exact top-K cut-off for huge galleries (map@K).")
    ] = None,
    query_split: Annotated[str | None, typer.Option(help="Label retrieval: query split.")] = None,
    gallery_split: Annotated[
        str | None, typer.Option(help="Label retrieval: gallery split (default: leave-one-out).")
    ] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Image retrieval: revisited Oxford/Paris (E/M/H mAP, mP@k) or by label (mAP, MRR, R@k)."""
    from featcache.runners.retrieval import run_retrieval

    records = run_retrieval(
        _store(store),
        _backbones(backbone),
        dataset,
        protocols=[p.strip() for p in protocol.split(",") if p.strip()],
        query_crop=query_crop.value,
        ks=_int_list(k, "--k"),
        top_k=top_k,
        query_split=query_split,
        gallery_split=gallery_split,
    )
    _print_records(records, as_json)


# --------------------------------------------------------------------------- suites and executors
class Executor(StrEnum):
    local = "local"
    ray = "ray"
    slurm = "slurm"


class SlurmCluster(StrEnum):
    slurm = "slurm"
    local = "local"
    debug = "debug"


def _need_text(item: Any, need: str) -> str:
    """A need without the kind/backbone/dataset it shares with ``item``."""
    kind, _, rest = need.partition("/")
    same = f"{item.backbone}/{item.dataset}/"
    return f"{kind}:{rest[len(same) :]}" if rest.startswith(same) else need


def _print_states(states: list[Any], *, needs: bool = True) -> None:
    from rich.table import Table

    table = Table("item", *(("needs",) if needs else ()), "state", "detail")
    for s in states:
        cells = [s.item.id]
        if needs:
            cells.append(", ".join(_need_text(s.item, n) for n in s.item.needs) or "-")
        table.add_row(*cells, s.state, s.detail)
    _console().print(table)


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts.items() if n)


@app.command("plan")
def plan_cmd(
    suite: Annotated[
        str | None, typer.Argument(help="Suite name (manifests/suites); none: list the suites.")
    ] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A suite's work items, what each needs first, and what the store already has."""
    if suite is None:
        from featcache.suites import list_suites

        suites = list_suites()
        if as_json:
            _echo_json([s.to_dict() for s in suites])
            return
        from rich.table import Table

        table = Table("suite", "backbones", "datasets", "description")
        for spec in suites:
            table.add_row(
                spec.name, str(len(spec.backbones)), str(len(spec.datasets)), spec.description
            )
        _console().print(table)
        return
    from featcache.executors.plan import plan_suite

    plan = plan_suite(_store(store), suite)
    if as_json:
        _echo_json(plan.to_dict())
        return
    _print_states(list(plan.states))
    typer.echo(f"{plan.suite}: {len(plan.states)} work item(s): {_counts_line(plan.counts())}")


def _run_progress(as_json: bool) -> tuple[Any, Any]:
    """A rich progress bar fed by the scheduler's events (none with --json)."""
    if as_json:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=_console()
    )
    task = bar.add_task("bobx run", total=None)
    settled: set[str] = set()

    def on_event(event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            bar.update(task, total=event["total"])
        elif kind == "finished":
            if event["status"] in ("done", "cached", "unavailable", "failed"):
                settled.add(event["item"])
            line = f"{event['item']}: {event['status']} {event['detail']}"
            bar.console.print(line[:300], highlight=False, markup=False)
            bar.update(task, description="bobx run")
        elif kind == "retry":
            settled.discard(event["item"])
        elif kind == "skipped":
            settled.add(event["item"])
        elif kind == "chunks":
            bar.update(task, description=f"{event['item']} {event['done']}/{event['total']} chunks")
        bar.update(task, completed=len(settled))

    return bar, on_event


@app.command("run")
def run_cmd(
    suite: Annotated[str, typer.Argument(help="Suite name (see `bobx plan`).")],
    executor: Annotated[Executor, typer.Option(help="Where items run.")] = Executor.local,
    gpus: Annotated[int, typer.Option(help="One worker per GPU (local, ray; slurm: per job).")] = 0,
    workers: Annotated[
        int | None,
        typer.Option(
            help="CPU workers (local default 1, 0 = this process; ray default: its CPUs)."
        ),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (host:6379 or auto).")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Show what would run; run nothing.")] = False,
    device: Annotated[str, typer.Option(help="Extraction device in the workers.")] = "auto",
    num_workers: Annotated[
        int | None,
        typer.Option(help="Decode workers per extraction (default: the worker's share of cores)."),
    ] = None,
    max_retries: Annotated[int, typer.Option(help="Retries of a failed item.")] = 2,
    lease_ttl: Annotated[
        float, typer.Option(help="Seconds before a dead worker's lease expires.")
    ] = 60.0,
    folder: Annotated[Path, typer.Option(help="slurm: submitit's logs and pickles.")] = Path(
        "bobx-slurm"
    ),
    cluster: Annotated[
        SlurmCluster, typer.Option(help="slurm: slurm, or submitit's local / debug executor.")
    ] = SlurmCluster.slurm,
    partition: Annotated[str | None, typer.Option(help="slurm: partition.")] = None,
    timeout_min: Annotated[int, typer.Option(help="slurm: time limit per job.")] = 240,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Execute what a suite still misses in the store (local processes, Ray or Slurm)."""
    from featcache.executors import RunOptions, run_suite

    bar, on_event = (None, None) if dry_run else _run_progress(as_json)
    slurm = {
        "folder": folder,
        "cluster": cluster.value,
        "partition": partition,
        "timeout_min": timeout_min,
    }
    if bar is not None:
        bar.start()
    try:
        plan, report = run_suite(
            _store(store),
            suite,
            executor=executor.value,
            gpus=gpus,
            workers=workers,
            address=address,
            dry_run=dry_run,
            options=RunOptions(device=device, num_workers=num_workers, lease_ttl_s=lease_ttl),
            max_retries=max_retries,
            slurm=slurm,
            on_event=on_event,
        )
    finally:
        if bar is not None:
            bar.stop()
    if report is None:  # --dry-run
        todo = [s for s in plan.states if s.runnable]
        if as_json:
            _echo_json({**plan.to_dict(), "would_run": [s.item.id for s in todo]})
            return
        _print_states(todo)
        typer.echo(
            f"{plan.suite}: would run {len(todo)} of {len(plan.states)} item(s) on the "
            f"{executor.value} executor ({_counts_line(plan.counts())})"
        )
        return
    if as_json:
        _echo_json(report.to_dict())
    else:
        typer.echo(
            f"{report.suite} on {report.executor}: {_counts_line(report.counts())} "
            f"in {report.seconds:.1f} s"
        )
    if not report.ok:
        bad = sorted(
            [i for i, o in report.outcomes.items() if o.status == "failed"] + list(report.skipped)
        )
        typer.echo(
            f"error: {len(bad)} item(s) failed or were skipped ({bad[0]}, ...); "
            f"`bobx status {suite}` shows why, `bobx run {suite}` resumes them.",
            err=True,
        )
        raise typer.Exit(code=1)


@app.command("status")
def status_cmd(
    suite: Annotated[str | None, typer.Argument(help="Suite name; none: the whole store.")] = None,
    show_done: Annotated[bool, typer.Option("--all", help="List done items too.")] = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Progress from the store alone: complete, partial, leased and failed work."""
    from featcache.executors.plan import plan_suite, store_status

    st = _store(store)
    if suite is not None:
        plan = plan_suite(st, suite)
        if as_json:
            _echo_json({"scope": f"suite {plan.suite}", **plan.to_dict()})
            return
        shown = [s for s in plan.states if show_done or s.state != "done"]
        if shown:
            _print_states(shown, needs=False)
        typer.echo(f"{plan.suite} in {st.url}: {_counts_line(plan.counts())}")
        return
    out = store_status(st)
    if as_json:
        _echo_json(out)
        return
    from rich.table import Table

    console = _console()
    sets = [s for s in out["feature_sets"] if show_done or s["state"] != "done"]
    if sets:
        table = Table("feature set", "state", "chunks", "rows")
        for s in sets:
            table.add_row(
                s["id"], s["state"], f"{s['chunks_done']}/{s['chunks_total']}", str(s["n"])
            )
        console.print(table)
    if out["leases"]:
        table = Table("leased", "holder", "pid", "since", "heartbeat")
        for info in out["leases"]:
            table.add_row(
                info["key"],
                f"{info['holder']}@{info['host']}",
                str(info["pid"]),
                str(info["started_at"])[:19],
                f"{info['heartbeat_age_s']:.0f} s ago",
            )
        console.print(table)
    if out["failures"]:
        table = Table("failed", "attempts", "last error")
        for f in out["failures"]:
            table.add_row(f["id"], str(f["attempts"]), f["last_error"])
        console.print(table)
    c = out["counts"]
    typer.echo(
        f"{st.url}: {c['done']} complete and {c['partial']} partial feature set(s), "
        f"{c['leased']} leased, {c['failed']} failed item(s), {out['records']} record(s)"
    )


# --------------------------------------------------------------------------- ranking
class Weight(StrEnum):
    task = "task"
    setting = "setting"


# the options `bobx rank`, `correlate` and `report` share
OnlyOpt = Annotated[list[str] | None, typer.Option(help="Only these (repeatable).")]
NBootOpt = Annotated[int, typer.Option(help="Bootstrap replicates (0: none).")]
BootSeedOpt = Annotated[int, typer.Option(help="Bootstrap seed.")]
WeightOpt = Annotated[
    Weight, typer.Option(help="overall = mean of task scores, or of all settings.")
]
MinTasksOpt = Annotated[int, typer.Option(help="Overall: backbones in >= this many tasks.")]
OverallTasksOpt = Annotated[
    str | None,
    typer.Option(
        help="Tasks 'overall' combines, comma-separated, or `all` (default: the paper's "
        "performance tasks: classification, detection, segmentation, retrieval, "
        "ood_classification, ood_detection).",
        show_default=False,
    ),
]


def _overall_tasks(text: str | None) -> list[str] | str | None:
    if text is None or text.strip() == "all":
        return None if text is None else "all"
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise typer.BadParameter("expected task names or `all`", param_hint="--overall-tasks")
    return names


def _overall_line(combined: list[str], ranked: list[str]) -> str:
    """Which tasks 'overall' combines and which are ranked on their own rows only."""
    own = [t for t in ranked if t not in combined]
    if not combined:
        return "no overall: none of the ranked tasks is one it combines (see --overall-tasks)"
    tail = f"; ranked on their own only: {', '.join(own)}" if own else ""
    return f"overall = mean of {', '.join(combined)}{tail}"


@app.command("rank")
def rank_cmd(
    task: Annotated[list[str] | None, typer.Option(help="Rank these tasks (repeatable).")] = None,
    backbone: OnlyOpt = None,
    dataset: OnlyOpt = None,
    n_boot: NBootOpt = 1000,
    seed: BootSeedOpt = 0,
    weight: WeightOpt = Weight.task,
    min_tasks: MinTasksOpt = 1,
    overall_tasks: OverallTasksOpt = None,
    top: Annotated[int, typer.Option(help="Backbones per task in the summary.")] = 3,
    csv: Annotated[Path | None, typer.Option(help="Also write the full ranking as CSV.")] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank backbones per task and overall (z-scores per setting, bootstrap CIs)."""
    from featcache.runners.ranking import rank_store

    ranked = rank_store(
        _store(store),
        tasks=task,
        backbones=backbone,
        datasets=dataset,
        n_boot=n_boot,
        seed=seed,
        weight=weight.value,
        min_tasks=min_tasks,
        overall_tasks=_overall_tasks(overall_tasks),
    )
    if csv is not None:
        ranked.to_csv(csv, index=False)
    if as_json:  # every row says whether its task is in overall (in_overall)
        typer.echo(ranked.to_json(orient="records", indent=2))
        return
    from rich.table import Table

    tasks = list(dict.fromkeys(t for t in ranked["task"] if t != "overall"))
    combined = [t for t in tasks if ranked.loc[ranked["task"] == t, "in_overall"].any()]

    table = Table("task", "rank", "backbone", "score", f"{95}% CI", "P(first)", "settings")
    for row in ranked.itertuples():
        if row.rank > top:
            continue
        ci = "" if row.ci_low != row.ci_low else f"[{row.ci_low:+.2f}, {row.ci_high:+.2f}]"
        pf = "" if row.p_first != row.p_first else f"{row.p_first:.2f}"
        table.add_row(
            row.task, str(row.rank), row.backbone, f"{row.score:+.3f}", ci, pf, str(row.n_settings)
        )
    console = _console()
    console.print(table)
    console.print(_overall_line(combined, tasks))


@app.command("correlate")
def correlate_cmd(
    task: Annotated[list[str] | None, typer.Option(help="Only these tasks (repeatable).")] = None,
    backbone: OnlyOpt = None,
    dataset: OnlyOpt = None,
    plot: Annotated[Path | None, typer.Option(help="Heatmap of task-task rho (PNG).")] = None,
    scatter: Annotated[
        str | None, typer.Option(help="TASK_X,TASK_Y: a two-task scatter (paper Fig. 1).")
    ] = None,
    scatter_plot: Annotated[Path, typer.Option(help="Where --scatter goes.")] = Path("scatter.png"),
    overall_tasks: OverallTasksOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Spearman correlations between tasks and with backbone metadata (ViT vs CNN)."""
    from featcache.runners.ranking import correlate_store

    out = correlate_store(
        _store(store),
        tasks=task,
        backbones=backbone,
        datasets=dataset,
        overall_tasks=_overall_tasks(overall_tasks),
    )
    if plot is not None:
        from evaluators.correlation import plot_task_heatmap

        plot_task_heatmap(out["tasks"], plot)
    if scatter:
        from evaluators.correlation import plot_scatter

        task_x, _, task_y = scatter.partition(",")
        if not task_y:
            raise typer.BadParameter("expected TASK_X,TASK_Y", param_hint="--scatter")
        plot_scatter(out["scores"], task_x, task_y, scatter_plot)
    if as_json:
        payload = {k: json.loads(out[k].to_json(orient="records")) for k in ("tasks", "metadata")}
        payload |= {"metadata_task": out["metadata_task"], "overall_tasks": out["overall_tasks"]}
        _echo_json(payload)
        return
    typer.echo("Task-task Spearman correlations across backbones:")
    typer.echo(out["tasks"].to_string(index=False, float_format="%.3f"))
    what = "Overall" if out["metadata_task"] == "overall" else f"{out['metadata_task']!r}"
    typer.echo(f"\n{what} score vs backbone metadata (by architecture family):")
    typer.echo(out["metadata"].to_string(index=False, float_format="%.3f"))
    if out["overall_tasks"]:
        typer.echo(f"(overall = mean of {', '.join(out['overall_tasks'])})")


# --------------------------------------------------------------------------- report
@app.command("report")
def report_cmd(
    output: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
    task: Annotated[list[str] | None, typer.Option(help="Only these tasks (repeatable).")] = None,
    backbone: OnlyOpt = None,
    dataset: OnlyOpt = None,
    title: Annotated[str | None, typer.Option(help="Page title (default: the store URL).")] = None,
    n_boot: NBootOpt = 1000,
    seed: BootSeedOpt = 0,
    weight: WeightOpt = Weight.task,
    min_tasks: MinTasksOpt = 1,
    overall_tasks: OverallTasksOpt = None,
    interactive: Annotated[
        bool, typer.Option(help="Add Plotly figures (plotly.js inlined; needs bobx[interactive]).")
    ] = False,
    store: StoreOpt = None,
) -> None:
    """One self-contained HTML page: rankings, per-setting tables, figures, provenance."""
    from featcache.report import build_report

    path = build_report(
        _store(store),
        output,
        tasks=task,
        backbones=backbone,
        datasets=dataset,
        title=title,
        n_boot=n_boot,
        seed=seed,
        weight=weight.value,
        min_tasks=min_tasks,
        overall_tasks=_overall_tasks(overall_tasks),
        interactive=interactive,
    )
    typer.echo(str(path.resolve()))


# --------------------------------------------------------------------------- jobs
def _floats(text: str | None, option: str) -> float | list[float] | None:
    """``1e-3`` -> 1e-3; ``1e-3,5e-4`` -> a list (the field is swept)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected numbers, got {text!r}", param_hint=option) from None
    if not values:
        raise typer.BadParameter(f"expected numbers, got {text!r}", param_hint=option)
    return values[0] if len(values) == 1 else values


def _print_points(outcomes: list[Any], selected: str, metric: str) -> None:
    from rich.table import Table

    table = Table("run", "grid point", "status", metric, "test top1", "selected")
    for out in outcomes:
        m = out.metrics
        table.add_row(
            out.run_id,
            out.job.label or "-",
            out.status + (f" (resumed at update {out.resumed_from})" if out.resumed_from else ""),
            f"{m.get(metric, float('nan')):.4f}",
            f"{m.get('top1', m.get('macro_auc', float('nan'))):.4f}",
            "*" if out.run_id == selected else "",
        )
    _console().print(table)


@app.command("finetune")
def finetune_cmd(
    backbone: Annotated[str, typer.Option(help="Catalog backbone (see `bobx backbones`).")],
    dataset: Annotated[str, typer.Option(help="Dataset (see `bobx datasets`).")],
    fraction: Annotated[
        float | None, typer.Option(help="Low-shot: the probe's stratified fraction (0.01, 0.1).")
    ] = None,
    shots: Annotated[int | None, typer.Option(help="Few-shot: images per class.")] = None,
    recipe: Annotated[
        str | None,
        typer.Option(help="bob, bob_lowshot, quick or yours (default: bob; bob_lowshot low-shot)."),
    ] = None,
    lr: Annotated[
        str | None, typer.Option(help="Learning rate; comma-separated values sweep it.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the recipe's epochs.")] = None,
    batch_size: Annotated[
        int, typer.Option(help="Images per forward; the recipe's batch is reached by accumulation.")
    ] = 64,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override any recipe field: key=value (repeatable)."),
    ] = None,
    weights: Annotated[
        str, typer.Option(help="pretrained, random, or a .safetensors/.pt checkpoint PATH.")
    ] = "pretrained",
    data_root: Annotated[Path | None, typer.Option(help="Directory of the dataset.")] = None,
    train_split: Annotated[str, typer.Option(help="Training split.")] = "train",
    test_split: Annotated[
        str | None, typer.Option(help="Test split (default: test, else val).")
    ] = None,
    val_split: Annotated[
        str | None, typer.Option(help="Official val split (default: val if any, else a holdout).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds the holdout, subsets, head and training.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:i].")] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (bf16 on a GPU, else fp32), fp32, bf16 or fp16.")
    ] = "auto",
    num_workers: Annotated[int | None, typer.Option(help="Decode workers (0: in process).")] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Also checkpoint every N updates (always every epoch).")
    ] = None,
    deterministic: Annotated[
        bool, typer.Option(help="Deterministic kernels on GPU (slower).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Rerun a finished job.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for a job another process holds.")] = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a backbone end to end with a new head (BoB's protocol; resumable, leased)."""
    from featcache.jobs.recipes import overrides_from
    from featcache.runners.finetune import run_finetune

    if fraction is not None and shots is not None:
        raise typer.BadParameter("pass --fraction or --shots, not both")
    result = run_finetune(
        _store(store),
        backbone,
        dataset,
        recipe=recipe,
        fraction=fraction,
        shots=shots,
        seed=seed,
        overrides=overrides_from(set_, lr=_floats(lr, "--lr"), epochs=epochs),
        weights=weights,
        data_root=data_root,
        train_split=train_split,
        test_split=test_split,
        val_split=val_split,
        device=device,
        precision=precision,
        batch_size=batch_size,
        num_workers=num_workers,
        overwrite=overwrite,
        wait=wait,
        checkpoint_every_steps=checkpoint_every,
        deterministic=deterministic,
    )
    from featcache.jobs.distributed import from_env

    if not from_env().main:  # torchrun: rank 0 speaks for the job
        return
    if not as_json:
        sweep = result.sweep
        _print_points(sweep.points, sweep.selected, result.select_metric)
        if result.status == "cached":
            typer.echo(
                f"already finished ({result.recipe}); the stored result (--overwrite reruns):"
            )
    _print_records(result.records, as_json)


@app.command("robustness")
def robustness_cmd(
    backbone: Annotated[str, typer.Option(help="Catalog backbone (see `bobx backbones`).")],
    dataset: Annotated[str, typer.Option(help="Dataset whose test split is attacked.")],
    head: Annotated[
        str, typer.Option(help="probe (the stored `bobx probe`) or finetune (`bobx finetune`).")
    ] = "probe",
    run: Annotated[
        str | None,
        typer.Option(help="Probe run (full, frac0.1-seed0, ...) or fine-tune run id."),
    ] = None,
    eps: Annotated[str, typer.Option(help="l-inf radii in [0, 1] pixels, comma-separated.")] = (
        "1/255,2/255"
    ),
    steps: Annotated[int, typer.Option(help="PGD steps.")] = 20,
    step_size: Annotated[str, typer.Option(help="eps/5 (BoB), eps*k or an absolute size.")] = (
        "eps/5"
    ),
    random_start: Annotated[
        bool, typer.Option(help="Start at a uniform random point of the ball.")
    ] = False,
    limit: Annotated[
        int | None, typer.Option(help="Attack a seeded random subset of N test images.")
    ] = None,
    weights: Annotated[
        str, typer.Option(help="The weights the probe's features were extracted with.")
    ] = "pretrained",
    data_root: Annotated[Path | None, typer.Option(help="Directory of the dataset.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per attack batch.")] = 64,
    seed: Annotated[int, typer.Option(help="Seeds the subset and random starts.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:i].")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32 (default), bf16 or fp16.")] = "fp32",
    num_workers: Annotated[int | None, typer.Option(help="Decode workers (0: in process).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Rerun a finished attack.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for an attack another process holds.")] = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Top-1 under untargeted l-inf PGD, BoB's Table 19 (clean accuracy as eps 0)."""
    from featcache.runners.robustness import run_robustness

    result = run_robustness(
        _store(store),
        backbone,
        dataset,
        head=head,
        run=run,
        eps=[e.strip() for e in eps.split(",") if e.strip()],
        steps=steps,
        step_size=step_size,
        random_start=random_start,
        limit=limit,
        weights=weights,
        data_root=data_root,
        device=device,
        precision=precision,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        overwrite=overwrite,
        wait=wait,
    )
    if result.status == "cached" and not as_json:
        typer.echo("already attacked; the stored result (--overwrite reruns):")
    _print_records(result.records, as_json)


@app.command("speed")
def speed_cmd(
    backbone: Annotated[list[str], typer.Option(help="Catalog backbone (repeatable).")],
    batch_size: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,32,256",
    precision: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (autocast).")] = "fp32",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:i].")] = "auto",
    resolution: Annotated[
        int | None, typer.Option(help="Input size (default: the backbone's).")
    ] = None,
    weights: Annotated[
        str, typer.Option(help="random (default: speed does not depend on them) or pretrained.")
    ] = "random",
    repeats: Annotated[int, typer.Option(help="Timed runs per batch size (median).")] = 5,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Throughput, batch-1 latency, peak memory, GFLOPs and parameters of backbones."""
    from featcache.runners.speed import run_speed

    records = run_speed(
        _store(store),
        backbone,
        batch_sizes=_int_list(batch_size, "--batch-size"),
        device=device,
        precision=precision,
        resolution=resolution,
        weights=weights,
        repeats=repeats,
    )
    _print_records(records, as_json)


# --------------------------------------------------------------------------- catalog, extraction
class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class BadImage(StrEnum):
    error = "error"
    skip = "skip"


class QueryCrop(StrEnum):
    bbx = "bbx"
    none = "none"


class FeatureDtype(StrEnum):
    float16 = "float16"
    float32 = "float32"


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise typer.BadParameter(
            f"expected a positive integer or auto, got {text!r}", param_hint="--batch-size"
        )
    return value


@app.command("extract")
def extract_cmd(
    backbone: Annotated[
        list[str], typer.Option(help="Catalog name or alias (repeatable); see `bobx backbones`.")
    ],
    dataset: Annotated[str, typer.Option(help="Dataset; see `bobx datasets`.")] = "digits",
    split: Annotated[
        list[str] | None, typer.Option(help="Split (repeatable; default all).")
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="Directory of the dataset.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:i].")] = "auto",
    batch_size: Annotated[str, typer.Option(help="Images per forward, or auto.")] = "64",
    num_workers: Annotated[
        int | None, typer.Option(help="Decode workers (default: by device; 0 = in process).")
    ] = None,
    precision: Annotated[Precision, typer.Option(help="Autocast precision.")] = Precision.fp32,
    weights: Annotated[
        str, typer.Option(help="pretrained, random, or a .safetensors/.pt checkpoint PATH.")
    ] = "pretrained",
    seed: Annotated[int | None, typer.Option(help="Seed of --weights random.")] = None,
    layer: Annotated[
        str | None,
        typer.Option(
            help="Feature point: pooled, cls, patch_mean or block:<i> (stored as "
            "<backbone>@<point>, e.g. dino_vitb_in1k@block-4)."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N images per split.")] = None,
    shard_index: Annotated[int, typer.Option(help="This shard (0-based).")] = 0,
    num_shards: Annotated[int, typer.Option(help="Shards that split the chunks.")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace a set with another cache key.")] = False,
    on_bad_image: Annotated[
        BadImage, typer.Option(help="error (stop, naming the file) or skip (mask the row).")
    ] = BadImage.error,
    query_crop: Annotated[
        QueryCrop, typer.Option(help="Crop retrieval queries to their box (bbx) or not.")
    ] = QueryCrop.bbx,
    dtype: Annotated[FeatureDtype, typer.Option(help="Stored dtype.")] = FeatureDtype.float16,
    chunk_rows: Annotated[int | None, typer.Option(help="Rows per chunk of a new set.")] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Store under this backbone name (default: the catalog name; "
            "<backbone>@w-<sha8> for --weights PATH, <backbone>@seed<N> for another random init)."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Extract backbone features of a dataset into the store (resumable, shardable)."""
    from featcache.extract import extract

    if name is not None and len(backbone) > 1:
        raise typer.BadParameter("--name names one backbone; pass one --backbone")
    st, results = _store(store), []
    for each in backbone:
        results += extract(
            st,
            each,
            dataset,
            splits=split,
            data_root=data_root,
            device=device,
            batch_size=_batch_size(batch_size),
            num_workers=num_workers,
            precision=precision.value,
            weights=weights,
            seed=seed,
            layer=layer,
            limit=limit,
            shard_index=shard_index,
            num_shards=num_shards,
            overwrite=overwrite,
            on_bad_image=on_bad_image.value,
            query_crop=query_crop.value,
            dtype=dtype.value,
            chunk_rows=chunk_rows,
            name=name,
            progress=progress and not as_json,
        )
    if as_json:
        _echo_json([r.to_dict() for r in results])
        return
    for r in results:
        if r.status == "missing":
            typer.echo(f"{r.backbone}/{r.dataset}/{r.split}: missing, skipped ({r.note})")
            continue
        rate = f", {r.images_per_s:,.1f} img/s" if r.images_per_s else ""
        bad = f", {r.n_invalid} invalid" if r.n_invalid else ""
        typer.echo(
            f"{r.backbone}/{r.dataset}/{r.split}: {r.status} ({r.n} x {r.dim}; "
            f"{r.chunks_written}/{r.chunks_total} chunks written{rate}{bad})"
        )


@app.command("backbones")
def backbones_cmd(
    available: Annotated[bool, typer.Option(help="Only backbones that can run here.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the backbone catalog (manifests/backbones and $BOBX_MANIFESTS)."""
    from featcache.backbones import list_backbone_specs

    specs = list_backbone_specs(include_unavailable=not available)
    if as_json:
        _echo_json([s.to_dict() for s in specs])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "name", "library", "family", "style", "pretrain data", "params M", "res", "dim", "ok"
    )
    for s in specs:
        table.add_row(
            s.name,
            f"{s.source}:{s.library_name}",
            s.family,
            s.style,
            s.pretrain_data or "-",
            "-" if s.params_m is None else f"{s.params_m:g}",
            str(s.resolution or "-"),
            str(s.feature_dim or "-"),
            "yes" if s.available else "no",
        )
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    for s in specs:
        if not s.available:
            console.print(f"{s.name}: unavailable: {s.unavailable_reason}")


@app.command("datasets")
def datasets_cmd(as_json: JsonOpt = False) -> None:
    """List the dataset catalog (manifests/datasets and $BOBX_MANIFESTS)."""
    from featcache.datasets import list_dataset_specs

    specs = list_dataset_specs()
    if as_json:
        _echo_json([s.to_dict() for s in specs])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "name", "aliases", "format", "splits", "classes", "task", "data root", "description"
    )
    for s in specs:
        table.add_row(
            s.name,
            ", ".join(s.aliases) or "-",
            s.format,
            ", ".join(s.splits),
            str(s.num_classes or "-"),
            s.task,
            f"${s.root_env}" if s.root_env else "built in",
            s.description,
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@app.command("validate")
def validate_cmd(as_json: JsonOpt = False) -> None:
    """Check every backbone, dataset and recipe manifest (fields, names, library registries)."""
    from featcache.backbones import validate_manifests

    report = validate_manifests()
    if as_json:
        _echo_json(report)
    else:
        for kind, part in report.items():
            for problem in part["problems"]:
                typer.echo(f"error: {problem}", err=True)
            state = "ok" if not part["problems"] else f"{len(part['problems'])} problem(s)"
            typer.echo(f"{kind}: {part['count']} valid, {state}")
    if any(part["problems"] for part in report.values()):
        raise typer.Exit(code=2)


# ----- detection
class DetectProtocol(StrEnum):
    finetune = "finetune"
    frozen = "frozen"
    scratch = "scratch"


class BadAnnotation(StrEnum):
    error = "error"
    skip = "skip"


def _print_detection_points(outcomes: list[Any], selected: str, metric: str) -> None:
    from rich.table import Table

    table = Table("run", "grid point", "status", metric, "selected")
    for out in outcomes:
        resumed = f" (resumed at update {out.resumed_from})" if out.resumed_from else ""
        table.add_row(
            out.run_id,
            out.job.label or "-",
            out.status + resumed,
            f"{out.metrics.get(metric, float('nan')):.4f}",
            "*" if out.run_id == selected else "",
        )
    _console().print(table)


@app.command("detect")
def detect_cmd(
    dataset: Annotated[str, typer.Option(help="Detection dataset (coco, lvis, sim10k, ...).")],
    backbone: Annotated[
        str,
        typer.Option(help="Catalog backbone; with --eval-only, the name to record under."),
    ],
    protocol: Annotated[
        DetectProtocol,
        typer.Option(help="finetune, frozen (backbone fixed) or scratch (random init)."),
    ] = DetectProtocol.finetune,
    recipe: Annotated[
        str | None,
        typer.Option(
            help="bob (COCO), sim10k, lvis, quick or yours (default by dataset: detect_bob, "
            "detect_sim10k for sim10k, detect_lvis for lvis)."
        ),
    ] = None,
    eval_on: Annotated[
        list[str] | None,
        typer.Option(
            help="Also score on another detection dataset, NAME or NAME=DATA_ROOT "
            "(repeatable; recorded as ood_detection, e.g. cityscapes)."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the recipe's epochs.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a recipe field: key=value, a list sweeps it (lr=[1e-4,2e-4], "
            "neck=vitdet; repeatable).",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Images per forward; the recipe's batch is reached by accumulation.")
    ] = 2,
    weights: Annotated[
        str, typer.Option(help="pretrained, random, or a .safetensors/.pt checkpoint PATH.")
    ] = "pretrained",
    data_root: Annotated[Path | None, typer.Option(help="Directory of the dataset.")] = None,
    train_split: Annotated[str, typer.Option(help="Training split.")] = "train",
    eval_split: Annotated[
        str | None,
        typer.Option(help="Evaluation split (default val; with --eval-only the scored split)."),
    ] = None,
    on_bad_annotation: Annotated[
        BadAnnotation | None,
        typer.Option(help="error (stop, naming file and image id) or skip (count in params)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Only the first N images of every split (smoke runs).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds the random init, batches and sampling.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:i].")] = "auto",
    precision: Annotated[Precision, typer.Option(help="Autocast precision.")] = Precision.fp32,
    num_workers: Annotated[int | None, typer.Option(help="Decode workers (0: in process).")] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Also checkpoint every N updates (always every epoch).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Rerun a finished job.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for a job another process holds.")] = False,
    eval_only: Annotated[
        bool, typer.Option(help="Score a COCO results file (--predictions) instead of training.")
    ] = False,
    predictions: Annotated[
        Path | None, typer.Option(help="With --eval-only: a COCO results JSON from any tool.")
    ] = None,
    trained_on: Annotated[
        str | None,
        typer.Option(help="With --eval-only: the training dataset of an OOD result (sim10k)."),
    ] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train and evaluate a detector (COCO AP; resumable, leased), or score predictions."""
    from featcache.jobs.recipes import overrides_from

    bad = on_bad_annotation.value if on_bad_annotation is not None else None
    if eval_only:
        from featcache.runners.detection import score_predictions

        if predictions is None:
            raise typer.BadParameter("--eval-only needs --predictions F.json")
        records = score_predictions(
            _store(store),
            predictions,
            dataset,
            backbone=backbone,
            split=eval_split,
            data_root=data_root,
            protocol=protocol.value,
            trained_on=trained_on,
            on_bad_annotation=bad,
        )
        _print_records(records, as_json)
        return
    if predictions is not None or trained_on is not None:
        raise typer.BadParameter("--predictions and --trained-on go with --eval-only")
    from featcache.runners.detection import run_detection

    result = run_detection(
        _store(store),
        backbone,
        dataset,
        protocol=protocol.value,
        recipe=recipe,
        eval_on=eval_on or (),
        seed=seed,
        overrides=overrides_from(set_, epochs=epochs),
        weights=weights,
        data_root=data_root,
        train_split=train_split,
        eval_split=eval_split,
        on_bad_annotation=bad,
        limit=limit,
        device=device,
        precision=precision.value,
        batch_size=batch_size,
        num_workers=num_workers,
        overwrite=overwrite,
        wait=wait,
        checkpoint_every_steps=checkpoint_every,
    )
    if not as_json:
        sweep = result.sweep
        _print_detection_points(sweep.points, sweep.selected, result.select_metric)
        if result.status == "cached":
            typer.echo(
                f"already finished ({result.recipe}); the stored result (--overwrite reruns):"
            )
    _print_records(result.records, as_json)


# --------------------------------------------------------------------------- entry point
def _one_line_warning(message: Any, category: type[Warning], *args: Any, **kw: Any) -> str:
    """bobx's own warnings as ``warning: ...`` (one line, like ``error: ...``)."""
    if category.__module__.split(".")[0] in ("evaluators", "featcache"):
        return f"warning: {message}\n"
    return _default_formatwarning(message, category, *args, **kw)


_default_formatwarning = warnings.formatwarning


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user errors become one line and exit status 2."""
    warnings.formatwarning = _one_line_warning
    try:
        app(args=argv, standalone_mode=True)
    except BobxError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # a disk / network failure outside the store's own checks
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""Backbone speed on this machine: ``bobx speed``.

:func:`run_speed` builds the backbone's feature extractor (the network every evaluator
runs; weights do not change its speed, so a random init is used unless ``weights`` is
given) and records :func:`featcache.training.timing.measure_speed`'s figures as task
``speed`` on dataset ``synthetic`` (random pixels at the backbone's resolution):

* ``images_per_s`` per batch size (higher is better);
* ``peak_memory_mb`` per batch size, ``latency_p50_ms`` / ``latency_p95_ms`` at batch 1,
  ``gflops`` per image and ``params_m`` (all lower is better).

Params: ``device`` (cpu | cuda), ``device_name``, ``precision``, ``batch_size``,
``resolution``, ``memory`` (how memory was measured), ``torch_threads`` and
``versions`` (torch, timm, ...), so only figures from the same setting are compared.
``bobx correlate`` relates scores to the median ``images_per_s`` of each backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from featcache.errors import BobxError, UnknownNameError
from featcache.records import Record, make_record
from featcache.store import Store

DATASET = "synthetic"


def _at_resolution(spec: Any, resolution: int | None) -> Any:
    """``spec`` at another input size: models that fix it at creation (timm ViTs, Swin)
    get ``img_size`` too; others (CNNs) take any size."""
    import dataclasses

    from featcache.models import plan_backbone

    if resolution is None or resolution == spec.resolution:
        return spec
    sized = dataclasses.replace(
        spec, resolution=resolution, model_kwargs={**spec.model_kwargs, "img_size": resolution}
    )
    if spec.source in ("timm", "checkpoint"):
        try:
            plan_backbone(sized, "random")
            return sized
        except TypeError:  # the architecture takes no img_size
            pass
    return dataclasses.replace(spec, resolution=resolution)


def run_speed(
    store: Store,
    backbones: Sequence[str],
    *,
    batch_sizes: Sequence[int] = (1, 32, 256),
    device: str = "auto",
    precision: str = "fp32",
    resolution: int | None = None,
    weights: str = "random",
    warmup: int = 3,
    repeats: int = 5,
    iters: int = 3,
    latency_runs: int = 30,
) -> list[Record]:
    """Time each backbone and write its speed records; see the module doc."""
    import torch

    from featcache.backbones import get_backbone_spec
    from featcache.extract import (
        PRECISIONS,
        _device_name,
        library_versions,
        resolve_device,
        set_threads,
    )
    from featcache.models import load_backbone, plan_backbone
    from featcache.training.timing import current_rss_mb, measure_speed

    if precision not in PRECISIONS:
        raise UnknownNameError("precision", precision, PRECISIONS)
    if not batch_sizes or min(batch_sizes) < 1:
        raise BobxError("--batch-size needs positive batch sizes, e.g. 1,32,256.")
    if resolution is not None and resolution < 8:
        raise BobxError(f"--resolution must be at least 8 pixels, got {resolution}.")
    dev = resolve_device(device)
    set_threads(dev)
    records: list[Record] = []
    for name in backbones:
        plan = plan_backbone(_at_resolution(get_backbone_spec(name), resolution), weights)
        spec = plan.spec
        base = current_rss_mb()
        model = load_backbone(plan, device=dev)
        res = plan.input_size[-1]
        figures = measure_speed(
            model,
            input_size=plan.input_size,
            batch_sizes=batch_sizes,
            device=dev,
            precision=precision,
            warmup=warmup,
            repeats=repeats,
            iters=iters,
            latency_runs=latency_runs,
            baseline_rss_mb=base,
        )
        common: dict[str, Any] = {
            "device": dev.type,
            "device_name": _device_name(dev),
            "precision": precision,
            "resolution": res,
            "torch_threads": int(torch.get_num_threads()),
            "versions": library_versions(),
        }

        rows: list[tuple[str, float, bool, dict[str, Any]]] = []
        for bs, rate in figures["throughput"].items():
            rows.append(("images_per_s", rate, True, {"batch_size": bs}))
            memory = {"batch_size": bs, "memory": figures["memory"]}
            rows.append(("peak_memory_mb", figures["peak_memory_mb"][bs], False, memory))
        for metric in ("latency_p50_ms", "latency_p95_ms", "gflops"):
            rows.append((metric, figures[metric], False, {"batch_size": 1}))
        rows.append(("params_m", figures["params_m"], False, {}))
        records += [
            make_record(
                backbone=spec.name,
                task="speed",
                dataset=DATASET,
                metric=metric,
                value=value,
                higher_is_better=higher,
                params={**common, **extra},
            )
            for metric, value, higher, extra in rows
        ]
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return store.add_records(records)


__all__ = ["DATASET", "run_speed"]

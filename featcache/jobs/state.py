"""A job's state in the store: its identity, checkpoints, final weights and outcome.

Layout (one folder per run id; every name is a validated slug)::

    jobs/<run_id>/job.json                      create-only: kind, backbone, dataset, the
                                                identity hashed into the run id, params
    jobs/<run_id>/checkpoints/<step>.pt         a checkpoint (torch.save bytes, read back with
                                                torch.load(weights_only=True))
    jobs/<run_id>/checkpoints/<step>.json       create-only marker written *after* its blob:
                                                sha256, size, epoch, step; only a checkpoint
                                                with a marker whose digest matches is used
    jobs/<run_id>/model.safetensors             final weights (safetensors), when the job keeps any
    jobs/<run_id>/done.json                     create-only: the outcome (metrics and the
                                                records, written after it: see driver.py)
    jobs/<sweep_id>/sweep.json                  create-only: a grid's selection and its records

Checkpoint objects are plain bytes: any backend stores them (a multi-part upload on S3 for
large ones); the newest verified one wins, and a corrupt or half-written one is skipped in
favour of the one before it, which is why :meth:`JobState.prune` keeps two.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
from collections.abc import Mapping
from typing import Any

from featcache import provenance
from featcache.errors import DataError
from featcache.names import validate_name

PREFIX = "jobs"
_STEP_DIGITS = 10


def _step_name(step: int, ext: str) -> str:
    return f"{step:0{_STEP_DIGITS}d}.{ext}"


def dumps_checkpoint(state: Mapping[str, Any]) -> bytes:
    """Bytes of a checkpoint: tensors, numbers, strings, lists, dicts (torch.save)."""
    import torch

    buf = io.BytesIO()
    torch.save(dict(state), buf)
    return buf.getvalue()


def loads_checkpoint(data: bytes, where: str = "checkpoint") -> dict[str, Any]:
    """A checkpoint read with ``torch.load(weights_only=True)``: never arbitrary pickles."""
    import torch

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"Cannot read {where} as a weights-only checkpoint ({first}).") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{where} holds a {type(obj).__name__}, not a checkpoint dict.")
    return obj


class JobState:
    """The objects of one run id in a store (see the module doc for the layout)."""

    def __init__(self, store: Any, run_id: str) -> None:
        self.store, self.run_id = store, validate_name(run_id, "run id")
        self.prefix = f"{PREFIX}/{run_id}"

    def __repr__(self) -> str:
        return f"JobState({self.run_id!r})"

    @property
    def objects(self) -> Any:
        return self.store.objects

    # -- identity and outcome ---------------------------------------------------------
    def write_job(self, doc: Mapping[str, Any]) -> None:
        """Record what this run is (first writer wins; later writers describe the same run)."""
        self.objects.put_new_json(f"{self.prefix}/job.json", dict(doc))

    def job(self) -> dict[str, Any] | None:
        return self.objects.get_json(f"{self.prefix}/job.json")

    def done(self) -> dict[str, Any] | None:
        """The outcome of a finished run, or None."""
        return self.objects.get_json(f"{self.prefix}/done.json")

    def mark_done(self, doc: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Publish the outcome (create-only). Returns the published doc and whether it is
        ours (False: another process published first, and ours is discarded)."""
        return self._publish("done.json", doc)

    def sweep(self) -> dict[str, Any] | None:
        return self.objects.get_json(f"{self.prefix}/sweep.json")

    def mark_sweep(self, doc: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        return self._publish("sweep.json", doc)

    def _publish(self, name: str, doc: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        if self.objects.put_new_json(f"{self.prefix}/{name}", dict(doc)):
            return dict(doc), True
        return self.objects.get_json(f"{self.prefix}/{name}") or dict(doc), False

    def clear(self) -> None:
        """Forget this run (``--overwrite``): outcome, checkpoints and weights."""
        self.objects.delete_prefix(self.prefix)

    # -- checkpoints ------------------------------------------------------------------
    def save_checkpoint(self, step: int, state: Mapping[str, Any], **info: Any) -> dict[str, Any]:
        """Write checkpoint ``step`` (blob, then its create-only marker)."""
        data = dumps_checkpoint(state)
        base = f"{self.prefix}/checkpoints/"
        self.objects.put(base + _step_name(step, "pt"), data)
        marker = {
            "step": int(step),
            "size": len(data),
            "sha256": provenance.sha256_bytes(data),
            "written_at": provenance.now_iso(),
            "host": provenance.host(),
            **info,
        }
        if not self.objects.put_new_json(base + _step_name(step, "json"), marker):
            # the same step was checkpointed before (a resumed run): keep the first marker,
            # and the blob it describes
            earlier = self.objects.get_json(base + _step_name(step, "json")) or {}
            if earlier.get("sha256") != marker["sha256"]:
                self.objects.put(base + _step_name(step, "pt"), data)
                self.objects.delete(base + _step_name(step, "json"))
                self.objects.put_new_json(base + _step_name(step, "json"), marker)
        return marker

    def checkpoint_steps(self) -> list[int]:
        names = self.objects.list_dir(f"{self.prefix}/checkpoints")
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def latest_checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """``(marker, state)`` of the newest checkpoint whose bytes match its marker."""
        base = f"{self.prefix}/checkpoints/"
        for step in reversed(self.checkpoint_steps()):
            marker = self.objects.get_json(base + _step_name(step, "json"))
            data = self.objects.get(base + _step_name(step, "pt"))
            if marker is None or data is None:
                continue
            if provenance.sha256_bytes(data) != marker.get("sha256"):
                continue  # a torn or damaged blob: fall back to the one before
            return marker, loads_checkpoint(data, where=f"{base}{_step_name(step, 'pt')}")
        return None

    def checkpoint(self, step: int) -> dict[str, Any]:
        """The state of checkpoint ``step`` (verified against its marker)."""
        base = f"{self.prefix}/checkpoints/"
        marker = self.objects.get_json(base + _step_name(step, "json")) or {}
        data = self.objects.get(base + _step_name(step, "pt"))
        if data is None or provenance.sha256_bytes(data) != marker.get("sha256"):
            raise DataError(f"Checkpoint {step} of run {self.run_id} is missing or damaged.")
        return loads_checkpoint(data, where=f"{base}{_step_name(step, 'pt')}")

    def prune(self, keep: int = 2) -> None:
        """Remove all but the newest ``keep`` checkpoints (``keep=0``: all of them)."""
        steps = self.checkpoint_steps()
        base = f"{self.prefix}/checkpoints/"
        for step in steps[: max(0, len(steps) - keep)]:
            for ext in ("json", "pt"):
                with contextlib.suppress(FileNotFoundError):
                    self.objects.delete(base + _step_name(step, ext))
        if keep == 0:  # blobs whose marker never got written
            for name in self.objects.list_dir(f"{self.prefix}/checkpoints"):
                self.objects.delete(base + name)

    # -- final weights ----------------------------------------------------------------
    def put_weights(self, tensors: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
        """Final weights as safetensors (metadata: JSON strings in the header)."""
        from safetensors.torch import save

        meta = {"bobx": json.dumps(dict(metadata), sort_keys=True, default=str)}
        data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, meta)
        self.objects.put(f"{self.prefix}/model.safetensors", data)

    def has_weights(self) -> bool:
        return bool(self.objects.exists(f"{self.prefix}/model.safetensors"))

    def get_weights(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(tensors, metadata)`` of the final weights (DataError when absent or corrupt)."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        where = f"{self.prefix}/model.safetensors"
        data = self.objects.get(where)
        if data is None:
            raise DataError(f"Run {self.run_id} has no final weights ({where}).")
        try:
            tensors = load(data)
            meta = json.loads(_safetensors_metadata(data).get("bobx", "{}"))
        except (SafetensorError, ValueError, OSError, struct.error) as exc:
            raise DataError(f"Cannot read {where}: {exc}.") from exc
        return dict(tensors), meta


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes: an 8-byte length, then a JSON header."""
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + n]).get("__metadata__")
    return dict(meta) if isinstance(meta, dict) else {}


__all__ = ["JobState", "dumps_checkpoint", "loads_checkpoint"]

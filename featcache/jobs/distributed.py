"""Data-parallel jobs under ``torchrun``: which process this is, and the few collectives.

``torchrun --nproc-per-node N $(which bobx) finetune ...`` starts N processes with
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set; :func:`from_env` reads them (one process,
:class:`Ranks` ``()``, without torchrun). Under several ranks every process trains its
share of each batch through ``DistributedDataParallel`` (NCCL on GPUs, gloo on CPUs);
rank 0 alone talks to the store (lease, checkpoints, records) and tells the others what
to do through :func:`broadcast`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from featcache.errors import BobxError


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> Ranks:
    """The ranks torchrun set in the environment (none: a single process)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise BobxError(f"WORLD_SIZE / RANK / LOCAL_RANK must be integers ({exc}).") from exc
    if world < 1 or not 0 <= rank < world:
        raise BobxError(f"RANK {rank} does not fit WORLD_SIZE {world}.")
    return Ranks(rank, world, local)


def setup(ranks: Ranks, device: Any) -> Any:
    """Join the process group (once) and return this rank's device (``cuda:<local rank>``
    on GPUs)."""
    import torch
    import torch.distributed as dist

    if not ranks.active:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def broadcast(obj: Any, ranks: Ranks) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not ranks.active:
        return obj
    import torch.distributed as dist

    box = [obj if ranks.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ranks.active:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def all_sum(value: Any, ranks: Ranks) -> Any:
    """A tensor summed over the ranks (in place, returned)."""
    if ranks.active:
        import torch.distributed as dist

        dist.all_reduce(value)
    return value


__all__ = ["Ranks", "all_sum", "broadcast", "from_env", "gather", "setup"]

"""Images for training loops: resumable epochs with per-sample seeded augmentation.

A training epoch is a seeded permutation of the training rows cut into fixed batches
(:func:`epoch_batches`); each item carries ``(epoch, position, row)``, and
:class:`SeededImages` seeds Python's, NumPy's and torch's generators from that key
before it runs the (random) transform. So an item's augmentation depends on nothing but
``(seed, epoch, position)``: not on which DataLoader worker draws it, nor on whether
the epoch was resumed half-way. Loaders get an explicit generator, so creating one never
draws from the global RNG the training step uses (dropout, drop path, mixup).

Readers never raise inside a worker (that would surface as a multi-line traceback):
an unreadable image comes back as zeros plus a one-line message, and
:func:`check_batch` raises it as a :class:`DataError` in the main process.
"""

from __future__ import annotations

import multiprocessing
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from featcache.errors import DataError, ShapeError

Key = tuple[int, int, int]  # (epoch, position in the epoch, row of the split)


def epoch_batches(n: int, batch: int, *, seed: int, epoch: int) -> list[list[Key]]:
    """The batches of epoch ``epoch``: a permutation of ``range(n)`` seeded by
    ``(seed, epoch)``, cut into ``n // batch`` full batches (the rest dropped)."""
    perm = np.random.default_rng([int(seed), int(epoch), 7]).permutation(n)
    out = []
    for b in range(n // batch):
        out.append([(epoch, b * batch + i, int(perm[b * batch + i])) for i in range(batch)])
    return out


def sample_seed(seed: int, epoch: int, position: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch), int(position)]).generate_state(1)[0])


class SeededImages:
    """``rows`` of an ImageSplit through ``transform`` (PIL -> uint8 CHW tensor).

    Indexed by a :data:`Key` (training: the transform's randomness is seeded by the key)
    or by a plain position (evaluation: a deterministic transform). Returns
    ``(image, target, error message)``."""

    def __init__(
        self,
        split: Any,
        rows: Sequence[int] | np.ndarray,
        transform: Callable[[Any], Any],
        shape: tuple[int, ...],
        *,
        seed: int = 0,
    ) -> None:
        self.split, self.rows = split, np.asarray(rows, dtype=np.int64)
        self.transform, self.shape, self.seed = transform, tuple(shape), int(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Key | int) -> tuple[Any, Any, str]:
        import torch

        if isinstance(key, tuple):
            epoch, position, index = key
            seeded = sample_seed(self.seed, epoch, position)
        else:
            index, seeded = int(key), None
        row = int(self.rows[index])
        target = torch.as_tensor(self.split.labels[row])
        try:
            image = self.split.load(row)
            if seeded is None:
                x = self.transform(image)
            else:
                x = _with_seed(seeded, self.transform, image)
            if tuple(x.shape) != self.shape or x.dtype != torch.uint8:
                raise ShapeError(
                    f"transform gave {x.dtype} {tuple(x.shape)}, expected uint8 {self.shape}"
                )
            return x, target, ""
        except DataError as exc:
            message = str(exc)
        except Exception as exc:  # a decoder / transform failure on one image
            message = f"Cannot read image {self.split.describe(row)} ({type(exc).__name__}: {exc})"
        return torch.zeros(self.shape, dtype=torch.uint8), target, " ".join(message.split())


def _with_seed(seed: int, fn: Callable[[Any], Any], arg: Any) -> Any:
    """``fn(arg)`` with Python's, NumPy's and torch's CPU generators seeded by ``seed``;
    their previous states are restored afterwards (the main process keeps its streams)."""
    import torch

    saved = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)
    try:
        return fn(arg)
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])


def loader(
    dataset: SeededImages,
    batches: Iterable[list[Any]],
    *,
    num_workers: int,
    pin_memory: bool = False,
) -> Iterator[tuple[Any, Any, list[str]]]:
    """Batches of ``dataset`` in the given order: ``(images uint8 (B, 3, H, W), targets,
    errors)``, decoded by ``num_workers`` processes (0: in this one)."""
    import torch
    from torch.utils.data import DataLoader, default_collate

    batches = list(batches)
    if num_workers <= 0:
        for batch in batches:
            yield default_collate([dataset[k] for k in batch])
        return
    methods = multiprocessing.get_all_start_methods()
    yield from DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_sampler=batches,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator(),  # never the global RNG
        multiprocessing_context="fork" if "fork" in methods else None,
        prefetch_factor=4,
    )


def eval_batches(n: int, batch: int) -> list[list[int]]:
    return [list(range(a, min(n, a + batch))) for a in range(0, n, batch)]


def check_batch(errors: Sequence[str], what: str) -> None:
    """Raise the first unreadable image of a batch as one line."""
    bad = [e for e in errors if e]
    if bad:
        more = f" (and {len(bad) - 1} more in this batch)" if len(bad) > 1 else ""
        raise DataError(f"{bad[0]}{more}; {what} stopped: fix or remove the image and rerun.")


__all__ = [
    "SeededImages",
    "check_batch",
    "epoch_batches",
    "eval_batches",
    "loader",
    "sample_seed",
]

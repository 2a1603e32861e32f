"""Untargeted l-infinity PGD (Madry et al. 2018) in pixel space, and the loop that scores it.

:func:`pgd_linf` attacks any model that takes pixels in [0, 1] (normalisation inside the
model, as :class:`~featcache.training.model.ImageClassifier` does), so ``eps = 1/255`` is
one grey level::

    x_0     = x                      (or x + U(-eps, eps), clipped to [0, 1], with random_start)
    x_{t+1} = clip_[0,1]( clip_[x-eps, x+eps]( x_t + step_size * sign(grad_x CE(f(x_t), y)) ) )

for ``steps`` steps; the loss is the mean cross-entropy of the batch (each image's
gradient is its own: the images do not interact), the model stays in eval mode. BoB's
Table 19 protocol: ``eps`` in {1/255, 2/255}, 20 steps, step size eps / 5; the paper does
not say whether it starts at random, so that is a recorded knob (default: no).

:class:`AttackRun` scores a model under attack for several radii at once, batch by
batch; it implements :class:`featcache.jobs.Trainer` (a position and counts as state),
so a long attack over ImageNet is a resumable, leased job like a fine-tune.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import nn

from featcache.errors import BobxError
from featcache.jobs.driver import EpochEnd, Step
from featcache.training.data import SeededImages, check_batch, eval_batches, loader


def parse_eps(text: str) -> tuple[str, float]:
    """``"1/255"`` -> ``("1/255", 0.00392...)``; ``"0"``, ``"0.5/255"`` and ``"0.004"``
    work too. The string is kept as given (records carry it, as BoB's tables do)."""
    raw = text.strip()
    try:
        num, _, den = raw.partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise BobxError(f"Cannot read eps {text!r}; write it as 1/255, 2/255 or 0.004.") from None
    if not 0 <= value <= 1:
        raise BobxError(f"eps {text!r} = {value:g} is outside [0, 1] (pixels are in [0, 1]).")
    return raw, value


def parse_step_size(text: str, eps: float) -> float:
    """``"eps/5"`` (BoB's), ``"eps*0.25"``, or an absolute ``"1/1020"`` / ``"0.001"``."""
    raw = text.replace(" ", "")
    if raw.startswith("eps"):
        rest = raw[3:]
        try:
            if not rest:
                return eps
            if rest[0] == "/":
                return eps / float(Fraction(rest[1:]))
            if rest[0] == "*":
                return eps * float(Fraction(rest[1:]))
        except (ValueError, ZeroDivisionError):
            pass
        raise BobxError(f"Cannot read --step-size {text!r}; write eps/5, eps*0.25 or 1/1020.")
    return parse_eps(raw)[1]


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Adversarial examples of ``x`` (float pixels in [0, 1], (B, C, H, W)) for labels
    ``y`` within the l-inf ball of radius ``eps`` (see the module doc). ``eps = 0`` (or
    ``steps = 0`` without a random start) returns ``x`` unchanged."""
    if eps < 0 or steps < 0 or step_size < 0:
        raise BobxError("eps, steps and step_size must be non-negative.")
    if x.dtype == torch.uint8:
        raise BobxError("pgd_linf takes float pixels in [0, 1], not uint8.")
    x = x.detach()
    if eps == 0 or (steps == 0 and not random_start):
        return x.clone()
    lower, upper = (x - eps).clamp_(0, 1), (x + eps).clamp_(0, 1)
    adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        adv = torch.minimum(torch.maximum(x + (2 * noise - 1) * eps, lower), upper)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.autocast(
            x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            logits = model(adv)
        loss = nn.functional.cross_entropy(logits.float(), y)
        (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = adv.detach() + step_size * grad.sign()
            adv = torch.minimum(torch.maximum(adv, lower), upper)
    return adv.detach()


class AttackRun:
    """Top-1 of ``model`` on ``rows`` of ``split`` under PGD at every radius of ``eps``.

    A :class:`featcache.jobs.Trainer`: :meth:`run` yields a :class:`Step` after every
    batch (the state is the position and the counts), :meth:`evaluate` returns
    ``{"top1@<eps>": accuracy}`` for each eps string (``"0"``: clean)."""

    def __init__(
        self,
        model: nn.Module,
        split: Any,
        rows: np.ndarray,
        *,
        transform: Any,
        input_size: tuple[int, int, int],
        eps: Sequence[tuple[str, float]],
        steps: int,
        step_size: str,
        random_start: bool = False,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        autocast_dtype: torch.dtype | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.images = SeededImages(split, rows, transform, input_size)
        self.labels = split.labels
        self.rows = np.asarray(rows)
        self.eps, self.steps, self.step_size = list(eps), int(steps), step_size
        self.random_start, self.seed = bool(random_start), int(seed)
        self.batches = eval_batches(len(self.rows), batch_size)
        self.autocast_dtype, self.num_workers = autocast_dtype, num_workers
        self.batch = 0
        self.correct = [0] * len(self.eps)
        self.seen = 0

    def state_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "correct": list(self.correct), "seen": self.seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.batch, self.seen = int(state["batch"]), int(state["seen"])
        self.correct = [int(c) for c in state["correct"]]

    def run(self) -> Iterator[Step | EpochEnd]:
        todo = self.batches[self.batch :]
        for x, y, errors in loader(self.images, todo, num_workers=self.num_workers):
            check_batch(errors, "the attack")
            x = x.to(self.device).float().div_(255)
            y = y.to(self.device)
            for i, (_, eps) in enumerate(self.eps):
                gen = torch.Generator(self.device).manual_seed(self.seed * 100_003 + self.batch)
                adv = pgd_linf(
                    self.model,
                    x,
                    y,
                    eps=eps,
                    steps=self.steps,
                    step_size=parse_step_size(self.step_size, eps),
                    random_start=self.random_start,
                    generator=gen,
                    autocast_dtype=self.autocast_dtype,
                )
                with (
                    torch.no_grad(),
                    torch.autocast(
                        self.device.type,
                        dtype=self.autocast_dtype or torch.float32,
                        enabled=self.autocast_dtype is not None,
                    ),
                ):
                    pred = self.model(adv).argmax(1)
                self.correct[i] += int((pred == y).sum())
            self.seen += len(y)
            self.batch += 1
            yield Step(self.batch, 0)

    def evaluate(self) -> dict[str, float]:
        return {
            f"top1@{name}": c / max(1, self.seen)
            for (name, _), c in zip(self.eps, self.correct, strict=True)
        }

    def weights(self) -> None:
        return None


__all__ = ["AttackRun", "parse_eps", "parse_step_size", "pgd_linf"]

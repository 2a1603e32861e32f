"""Classifiers on pixels: a catalog backbone with a head, normalisation inside the model.

:class:`ImageClassifier` takes images in pixel space (``uint8``, or float in [0, 1]) and
normalises them itself, so training transforms, PGD attacks and timing loops all feed it
pixels. Two ways to build one:

* :func:`finetune_classifier`: the backbone's own network with a new classification
  head (timm's ``reset_classifier``, so timm's ``group_matcher`` still assigns layers
  for layer-wise lr decay; an open_clip tower gets a linear head and a ViT group
  matcher), stochastic depth passed to timm at creation;
* :func:`probe_classifier`: the frozen feature extractor followed by a stored linear
  probe (``bobx probe``'s weights).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from featcache.errors import ShapeError, UnavailableError


class ImageClassifier(nn.Module):
    """``logits = net(normalize(x))`` (+ ``head``): pixels in, class scores out.

    ``net`` maps normalised images to logits (or to features, with ``head``). With
    ``l2_normalize`` the features are L2-normalised before the head (CLIP_benchmark
    probes)."""

    def __init__(
        self,
        net: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        head: nn.Module | None = None,
        l2_normalize: bool = False,
    ) -> None:
        super().__init__()
        self.net, self.head, self.l2 = net, head, l2_normalize
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.channels_last = False

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``uint8`` or [0, 1] float pixels -> the network's normalised float input."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of an already normalised batch (training: after random erasing
        and mixup, which timm applies to normalised tensors)."""
        out = self.net(x)
        if self.head is not None:
            out = out.float()
            if self.l2:
                out = torch.nn.functional.normalize(out, dim=-1)
            out = self.head(out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.normalize(x))


class _OpenClipWithHead(nn.Module):
    """An open_clip visual tower plus a linear head, with timm's ``group_matcher``
    convention for its ViT layout (so layer decay groups its blocks)."""

    def __init__(self, visual: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.visual: Any = visual
        dim = int(getattr(visual, "output_dim", 0))
        if dim <= 0:
            raise ShapeError("open_clip tower without output_dim; cannot size a head.")
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x))

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        if hasattr(self.visual, "transformer") and hasattr(self.visual.transformer, "resblocks"):
            return {
                "stem": r"^visual\.(conv1|class_embedding|positional_embedding|ln_pre)",
                "blocks": [
                    (r"^visual\.transformer\.resblocks\.(\d+)", None),
                    (r"^visual\.(ln_post|proj|attn_pool)", (99999,)),
                    (r"^head", (100000,)),
                ],
            }
        return {"stem": r"^$", "blocks": [(r"^visual\.", (0,)), (r"^head", (1,))]}


def _mean_std(plan: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if plan.mean is None or plan.std is None:
        raise UnavailableError(
            f"{plan.spec.name}'s preprocessing does not end in ToTensor + Normalize, so "
            "bobx cannot feed it pixels; it cannot be fine-tuned or attacked here."
        )
    return tuple(plan.mean), tuple(plan.std)


def finetune_classifier(
    plan: Any, num_classes: int, *, drop_path_rate: float = 0.0, seed: int = 0
) -> tuple[ImageClassifier, dict[str, Any]]:
    """The backbone of ``plan`` with a new ``num_classes`` head (seeded by ``seed``).

    Returns the classifier and facts for provenance: ``drop_path_applied`` (False when
    the architecture has no stochastic depth, or for open_clip towers)."""
    from featcache.models import load_network

    info: dict[str, Any] = {"drop_path_rate": drop_path_rate, "drop_path_applied": False}
    mean, std = _mean_std(plan)
    if plan.spec.source == "open_clip":
        visual = load_network(plan)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net: nn.Module = _OpenClipWithHead(visual, num_classes)
    else:
        try:
            kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate > 0 else {}
            net = load_network(plan, model_kwargs=kwargs)
            info["drop_path_applied"] = bool(kwargs)
        except TypeError:  # the architecture takes no drop_path_rate
            net = load_network(plan)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net.reset_classifier(num_classes)  # type: ignore[operator]
    net.requires_grad_(True)
    return ImageClassifier(net, mean, std), info


def probe_classifier(
    plan: Any, weights: Any, bias: Any, *, l2_normalize: bool = False
) -> ImageClassifier:
    """The frozen feature extractor of ``plan`` followed by a stored linear probe
    (``weights`` (C, D), ``bias`` (C,)), as ``bobx probe`` fitted it."""
    from featcache.models import load_backbone

    mean, std = _mean_std(plan)
    extractor = load_backbone(plan)
    w = torch.as_tensor(weights, dtype=torch.float32)
    if w.ndim != 2 or w.shape[1] != plan.dim:
        raise ShapeError(
            f"The probe's weights have shape {tuple(w.shape)}, but {plan.spec.name}'s "
            f"features have dim {plan.dim}; was the probe fitted on another backbone or layer?"
        )
    head = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    features = _Features(extractor)
    return ImageClassifier(
        features, mean, std, head=head.requires_grad_(False), l2_normalize=l2_normalize
    )


class _Features(nn.Module):
    """A FeatureExtractor fed normalised input (its own ``normalize`` is skipped)."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor.features(x)  # type: ignore[operator]


def load_classifier_weights(model: ImageClassifier, tensors: Mapping[str, torch.Tensor]) -> None:
    """Load a fine-tuned classifier's stored weights (``model.safetensors``) strictly."""
    missing, unexpected = model.load_state_dict(dict(tensors), strict=False)
    if missing or unexpected:
        raise ShapeError(
            f"Stored fine-tuned weights do not fit the model: {len(missing)} missing, "
            f"{len(unexpected)} unexpected keys (e.g. {(missing or unexpected)[:2]})."
        )


__all__ = [
    "ImageClassifier",
    "finetune_classifier",
    "load_classifier_weights",
    "probe_classifier",
]

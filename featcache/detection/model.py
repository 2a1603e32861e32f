"""The detector: any catalog backbone + a feature pyramid + torchvision's (Mask) R-CNN.

* **Backbone body.** The catalog backbone is built and its weights loaded by
  :mod:`featcache.models` (timm, open_clip, checkpoint files, seeded random init), then
  read through the library's ``forward_intermediates`` (what timm's ``features_only``
  getter wraps). Hierarchical networks (ResNets, ConvNeXts, Swins, EfficientNets) give
  the last map of each stride 4, 8, 16 and 32; plain ViTs give the last block's map.
* **Neck.** ``neck="bob"`` (BoB's choice): a torchvision FPN (256 channels, P2-P6) over
  the four strides of a hierarchical backbone; for a ViT, BoB's "FPN on the last map":
  the last map resampled to four strides (two 2x2 transposed convolutions -> s/4, one
  -> s/2, identity, 2x2 max-pool -> 2s) and the same FPN over them. ``neck="vitdet"``
  swaps the ViT neck for ViTDet's simple feature pyramid (Li et al. 2022: the same four
  resamplings, each followed by 1x1 and 3x3 convolutions with LayerNorm, no top-down
  path). Hierarchical backbones use the FPN either way.
* **Heads.** torchvision's Mask R-CNN (boxes + masks) or Faster R-CNN (box-only sets),
  with its default anchors (32-512, three ratios) and test settings (score 0.05, NMS
  0.5, 100 detections). Images are normalised with the backbone's own mean / std.
* **Protocols.** ``scratch``: seeded random init, everything trains, BatchNorm learns
  its statistics. ``finetune``: pretrained weights, everything trains, BatchNorm
  statistics stay fixed (mmdetection's ``norm_eval``, as BoB's configs). ``frozen``: the
  body's weights and norm statistics never change (``requires_grad`` off, always in
  eval mode); :func:`state_checksum` proves it, and neck and heads train.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from featcache.backbones import BackboneSpec, get_backbone_spec
from featcache.errors import ShapeError, UnavailableError, UnknownNameError

PROTOCOLS = ("scratch", "finetune", "frozen")
NECKS = ("bob", "vitdet")
#: The pyramid levels the body feeds the neck (hierarchical backbones).
STRIDES = (4, 8, 16, 32)
FPN_CHANNELS = 256
_DYNAMIC_SIZE_FAMILIES = ("vit", "hierarchical_transformer")


@dataclass(frozen=True)
class DetectorInfo:
    """What was built, for params and artifacts."""

    backbone: str
    protocol: str
    neck: str  # the policy asked for: bob | vitdet
    pyramid: str  # what it resolved to: fpn | fpn_lastmap | simple_pyramid
    head: str  # mask_rcnn | faster_rcnn
    weights: dict[str, Any]
    indices: tuple[int, ...]
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    params_m: float
    trainable_params_m: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("indices", "channels", "strides", "image_mean", "image_std"):
            out[key] = list(out[key])
        return out


# ------------------------------------------------------------------------------ body
class IntermediateBody(nn.Module):
    """A backbone's intermediate maps, as an ordered dict ``{"0": ..., "1": ...}``."""

    def __init__(self, net: nn.Module, indices: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.indices = [int(i) for i in indices]
        self.frozen = False
        self.norm_eval = False

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.net.forward_intermediates(  # type: ignore[operator]
            x, indices=self.indices, intermediates_only=True
        )
        if isinstance(maps, dict):  # open_clip returns a dict
            maps = maps["image_intermediates"]
        return OrderedDict((str(k), m) for k, m in enumerate(maps))

    def train(self, mode: bool = True) -> IntermediateBody:
        super().train(mode and not self.frozen)
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


def _probe(spec: BackboneSpec, resolution: int) -> list[tuple[int, int]]:
    """``(channels, stride)`` of every intermediate map, from the architecture built on
    the ``meta`` device (no memory, no weights)."""
    from featcache.models import _build

    net, _ = _build(spec, pretrained=False, device="meta")
    x = torch.zeros(1, 3, resolution, resolution, device="meta")
    try:
        maps = net.forward_intermediates(x, intermediates_only=True)  # type: ignore[operator]
    except (AttributeError, TypeError, NotImplementedError) as exc:
        raise UnavailableError(
            f"Backbone {spec.name!r} ({type(net).__name__}) does not expose intermediate "
            f"feature maps (forward_intermediates), so it cannot feed a detector: {exc}."
        ) from exc
    if isinstance(maps, dict):
        maps = maps["image_intermediates"]
    out = []
    for m in maps:
        if m.ndim != 4:
            raise ShapeError(
                f"{spec.name}: intermediate map of shape {tuple(m.shape)} is not NCHW."
            )
        out.append((int(m.shape[1]), resolution // int(m.shape[-1])))
    return out


def choose_levels(levels: Sequence[tuple[int, int]]) -> tuple[str, list[int]]:
    """``("plain", [last])`` for a single-stride network (ViT), else ``("hierarchical",
    indices)``: the last map of each stride 4, 8, 16, 32 (8-32 at least)."""
    if len({s for _, s in levels}) == 1:
        return "plain", [len(levels) - 1]
    picked = {s: i for i, (_, s) in enumerate(levels) if s in STRIDES}
    if not {8, 16, 32} <= set(picked):
        have = sorted({s for _, s in levels})
        raise ShapeError(
            f"A feature pyramid needs maps at strides 8, 16 and 32; this backbone has {have}."
        )
    return "hierarchical", [picked[s] for s in STRIDES if s in picked]


# ------------------------------------------------------------------------------ necks
def _up(channels: int, out: int) -> nn.Module:
    return nn.ConvTranspose2d(channels, out, kernel_size=2, stride=2)


def _resamplers(channels: int, *, halve: bool) -> tuple[nn.ModuleList, list[int]]:
    """The four resamplings of a stride-s map to s/4, s/2, s, 2s (ViTDet's and BoB's).

    ``halve`` narrows the upsampled maps as ViTDet does (C/4, C/2); BoB's last-map FPN
    keeps C throughout."""
    from timm.layers import LayerNorm2d

    c4, c2 = (channels // 4, channels // 2) if halve else (channels, channels)
    up4 = nn.Sequential(
        _up(channels, c2 if halve else channels), LayerNorm2d(c2 if halve else channels),
        nn.GELU(), _up(c2 if halve else channels, c4),
    )  # fmt: skip
    ops = nn.ModuleList([up4, _up(channels, c2), nn.Identity(), nn.MaxPool2d(2, 2)])
    return ops, [c4, c2, channels, channels]


class LastMapFPN(nn.Module):
    """BoB's ViT neck: the last map resampled to four strides, then a torchvision FPN."""

    def __init__(self, channels: int, out_channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.resample, dims = _resamplers(channels, halve=False)
        self.fpn = FeaturePyramidNetwork(dims, out_channels, extra_blocks=LastLevelMaxPool())

    def forward(self, maps: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        last = next(reversed(maps.values()))
        pyramid = OrderedDict((str(k), op(last)) for k, op in enumerate(self.resample))
        out: OrderedDict[str, torch.Tensor] = self.fpn(pyramid)
        return out


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid over the last map (no top-down path), plus P6."""

    def __init__(self, channels: int, out_channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        from timm.layers import LayerNorm2d

        self.resample, dims = _resamplers(channels, halve=True)
        self.project = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(d, out_channels, 1, bias=False),
                LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                LayerNorm2d(out_channels),
            )  # fmt: skip
            for d in dims
        )

    def forward(self, maps: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        last = next(reversed(maps.values()))
        out = OrderedDict(
            (str(k), proj(op(last)))
            for k, (op, proj) in enumerate(zip(self.resample, self.project, strict=True))
        )
        out["pool"] = nn.functional.max_pool2d(out["3"], kernel_size=1, stride=2)
        return out


class MultiScaleFPN(nn.Module):
    """torchvision's FPN over a hierarchical backbone's maps (P2-P5, P6 by max-pool)."""

    def __init__(self, channels: Sequence[int], out_channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.fpn = FeaturePyramidNetwork(
            list(channels), out_channels, extra_blocks=LastLevelMaxPool()
        )

    def forward(self, maps: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        out: OrderedDict[str, torch.Tensor] = self.fpn(maps)
        return out


class BackboneWithNeck(nn.Module):
    """Body + neck: images in, five 256-channel maps out (what torchvision's R-CNNs take)."""

    def __init__(self, body: IntermediateBody, neck: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body, self.neck, self.out_channels = body, neck, out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out: OrderedDict[str, torch.Tensor] = self.neck(self.body(x))
        return out


# ------------------------------------------------------------------------------ building
def state_checksum(module: nn.Module) -> str:
    """sha256 over every parameter and buffer (names, dtypes, shapes, bytes), e.g. of a
    frozen body before and after training: equal digests = nothing moved."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _detector_spec(spec: BackboneSpec) -> BackboneSpec:
    """Transformers accept any input size (timm ``dynamic_img_size``)."""
    if spec.source in ("timm", "checkpoint") and spec.family in _DYNAMIC_SIZE_FAMILIES:
        kwargs = {**dict(spec.model_kwargs), "dynamic_img_size": True}
        return dataclasses.replace(spec, model_kwargs=kwargs)
    if spec.source == "open_clip" and spec.family == "vit":
        raise UnavailableError(
            f"Backbone {spec.name!r}: open_clip ViTs have a fixed input size, which "
            "detection's variable image sizes do not fit; use the same weights through "
            "timm (e.g. vit_base_patch16_clip_224.laion2b in a $BOBX_MANIFESTS entry)."
        )
    return spec


def build_detector(
    backbone: str | BackboneSpec,
    *,
    num_classes: int,
    masks: bool,
    protocol: str = "finetune",
    weights: str = "pretrained",
    seed: int | None = None,
    neck: str = "bob",
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    fpn_channels: int = FPN_CHANNELS,
    box_head_dim: int = 1024,
    rcnn_kwargs: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, DetectorInfo]:
    """A torchvision Mask R-CNN (``masks``) or Faster R-CNN over ``backbone``.

    ``num_classes`` counts foreground classes (background is added). ``weights``:
    "pretrained" | "random" | PATH (ignored by ``scratch``, which is a seeded random
    init). ``min_size`` as a sequence means multi-scale training (torchvision picks one
    per image; the last is the test size). ``fpn_channels`` (256) and ``box_head_dim``
    (1024, the two-layer box head) set the head widths (the CPU recipe narrows them);
    ``rcnn_kwargs`` go to torchvision's constructor as they are (``rpn_batch_size_per_image``,
    ``box_batch_size_per_image``, ``box_score_thresh`` ...; torchvision's defaults are
    BoB's test settings). Returns the model (train mode, CPU) and a :class:`DetectorInfo`.
    """
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    from featcache.models import load_backbone, plan_backbone

    if protocol not in PROTOCOLS:
        raise UnknownNameError("detection protocol", protocol, PROTOCOLS)
    if neck not in NECKS:
        raise UnknownNameError("neck", neck, NECKS)
    if num_classes < 1:
        raise ShapeError(f"num_classes must be >= 1 (foreground classes), got {num_classes}.")
    spec = _detector_spec(get_backbone_spec(backbone))
    if protocol == "scratch":
        weights = "random"
    plan = plan_backbone(spec, weights, seed=seed)
    levels = _probe(spec, plan.input_size[-1])
    kind, indices = choose_levels(levels)
    net = load_backbone(plan).net  # weights loaded, eval mode, requires_grad off
    prune = getattr(net, "prune_intermediate_layers", None)
    if callable(prune):  # drop what comes after the last map used (head, final norm)
        prune(indices, prune_norm=True, prune_head=True)
    body = IntermediateBody(net, indices)
    channels = [levels[i][0] for i in indices]
    strides = [levels[i][1] for i in indices]
    # Neck and heads start from ``seed`` whatever ran before in this process (the run id
    # promises the same numbers for the same identity).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if seed is None else int(seed))
        width = int(fpn_channels)
        if kind == "hierarchical":
            neck_module: nn.Module = MultiScaleFPN(channels, width)
            pyramid = "fpn"
        elif neck == "vitdet":
            neck_module, pyramid = SimpleFeaturePyramid(channels[-1], width), "simple_pyramid"
        else:
            neck_module, pyramid = LastMapFPN(channels[-1], width), "fpn_lastmap"
        if kind == "hierarchical" and len(indices) < len(STRIDES):
            raise ShapeError(f"{spec.name}: no stride-4 map for the FPN's P2 (strides {strides}).")
        body.requires_grad_(protocol != "frozen")
        body.frozen = protocol == "frozen"
        body.norm_eval = protocol == "finetune"
        backbone_module = BackboneWithNeck(body, neck_module, width)
        mean = plan.mean or (0.485, 0.456, 0.406)
        std = plan.std or (0.229, 0.224, 0.225)
        sizes = tuple(min_size) if isinstance(min_size, Sequence) else (int(min_size),)
        n_out = num_classes + 1
        heads: dict[str, Any] = {
            "box_head": TwoMLPHead(width * 7 * 7, int(box_head_dim)),
            "box_predictor": FastRCNNPredictor(int(box_head_dim), n_out),
        }
        if masks:  # torchvision's mask head, at the neck's width
            heads["mask_head"] = MaskRCNNHeads(width, [width] * 4, 1)
            heads["mask_predictor"] = MaskRCNNPredictor(width, width, n_out)
        head_cls = MaskRCNN if masks else FasterRCNN
        try:
            model = head_cls(
                backbone_module,
                min_size=sizes,
                max_size=int(max_size),
                image_mean=list(mean),
                image_std=list(std),
                **heads,
                **dict(rcnn_kwargs or {}),
            )
        except TypeError as exc:
            raise UnknownNameError(
                f"{head_cls.__name__} option",
                str(exc).rsplit(" ", 1)[-1].strip("'"),
                hint=f"rcnn_kwargs go to torchvision's {head_cls.__name__} ({exc}).",
            ) from exc
    model.train()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info = DetectorInfo(
        backbone=spec.name,
        protocol=protocol,
        neck=neck,
        pyramid=pyramid,
        head="mask_rcnn" if masks else "faster_rcnn",
        weights=plan.weights.describe(),
        indices=tuple(indices),
        channels=tuple(channels),
        strides=tuple(strides),
        image_mean=tuple(float(m) for m in mean),
        image_std=tuple(float(s) for s in std),
        params_m=round(total / 1e6, 2),
        trainable_params_m=round(trainable / 1e6, 2),
        extra={"family": spec.family, "dynamic_img_size": "dynamic_img_size" in spec.model_kwargs},
    )
    return model, info


def body_of(model: nn.Module) -> IntermediateBody:
    """The backbone body inside a detector built by :func:`build_detector`."""
    body = model.backbone.body  # type: ignore[union-attr]
    assert isinstance(body, IntermediateBody)
    return body


def set_sizes(model: nn.Module, min_sizes: Sequence[int], max_size: int) -> None:
    """Set the resizing of torchvision's transform: a short side drawn from ``min_sizes``
    per training image (the last one at test), the longest side at most ``max_size``."""
    transform: Any = model.transform
    transform.min_size = tuple(int(s) for s in min_sizes)
    transform.max_size = int(max_size)

"""Building backbones: networks, preprocessing and weights (timm, open_clip, checkpoint files).

Two steps, so a complete feature set never needs weights:

* :func:`plan_backbone` builds the architecture on PyTorch's ``meta`` device (no memory,
  no weights) to learn the preprocessing (from the library's own data config), the
  feature dimension and the identity of the weights; this is what the cache key hashes.
* :func:`load_backbone` builds the real network with its weights and returns a
  :class:`FeatureExtractor`: ``uint8`` images (as the CPU transform leaves them) in,
  ``(B, D)`` float32 features out.

Weights (``weights=``): ``"pretrained"`` through timm / open_clip / the Hugging Face hub
(``HF_HUB_OFFLINE`` and the HF cache are honoured by those libraries; a miss becomes
one :class:`UnavailableError` naming the fixes), or a published checkpoint URL whose
sha256 the manifest pins; ``"random"``, a seeded random init; or a PATH to a local
safetensors / torch checkpoint, read with ``torch.load(weights_only=True)`` (never a
plain pickle) and converted by the spec's ``key_map``.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featcache import provenance
from featcache.backbones import KEY_MAPS, BackboneSpec, check_feature, get_backbone_spec
from featcache.errors import DataError, ShapeError, UnavailableError, UnknownNameError

log = logging.getLogger(__name__)

#: Environment variables that mean "never touch the network" (the first is the HF hub's own).
OFFLINE_VARS = ("HF_HUB_OFFLINE", "BOBX_OFFLINE")
_TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in OFFLINE_VARS)


# --------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class WeightsRef:
    """Which weights a run uses. ``identity()`` goes into the cache key."""

    kind: str  # pretrained | random | file
    seed: int | None = None
    path: str | None = None
    sha256: str | None = None
    source: Mapping[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        if self.kind == "random":
            return {"kind": "random", "seed": self.seed}
        if self.kind == "file":
            return {"kind": "file", "sha256": self.sha256}
        return {"kind": "pretrained", **dict(self.source)}

    def describe(self) -> dict[str, Any]:
        """Identity plus where it came from (provenance; paths are not part of the key)."""
        out = self.identity()
        if self.path:
            out["path"] = self.path
        return out


def _pretrained_source(spec: BackboneSpec) -> dict[str, Any]:
    if spec.source == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(spec.library_name)
        return {
            "timm": spec.library_name,
            "hf_hub_id": spec.hf_hub_id or (cfg.hf_hub_id if cfg else None),
            "url": cfg.url if cfg else None,
        }
    if spec.source == "open_clip":
        import open_clip

        cfg = open_clip.get_pretrained_cfg(spec.model, spec.tag or "")
        return {
            "open_clip": spec.model,
            "tag": spec.tag,
            "hf_hub": cfg.get("hf_hub") or None,
            "url": cfg.get("url") or None,
        }
    return {"url": spec.url, "sha256": spec.sha256}


def resolve_weights(
    spec: BackboneSpec, weights: str = "pretrained", *, seed: int | None = None
) -> WeightsRef:
    """Check that ``weights`` ("pretrained" | "random" | PATH) can be used for ``spec``.

    Raises UnavailableError for a backbone that cannot run here, for pretrained weights
    of a checkpoint URL without a pinned sha256 (we never run an unverified download),
    and for random / pretrained requests without a tag; DataError for a missing PATH."""
    if not spec.available:
        raise UnavailableError(
            f"Backbone {spec.name!r} cannot run here: {spec.unavailable_reason}."
        )
    if weights == "random" or (weights == "pretrained" and spec.is_random):
        return WeightsRef("random", seed=spec.seed if seed is None else int(seed))
    if weights == "pretrained":
        if spec.source == "checkpoint" and not spec.sha256:
            raise UnavailableError(
                f"Backbone {spec.name!r} loads {spec.url}, whose sha256 is not pinned in "
                f"{spec.source_file}, and bobx never runs an unverified download: download "
                "it, check it, and pass --weights PATH (its sha256 is recorded), or pin "
                "'sha256' in an override of this entry under $BOBX_MANIFESTS."
            )
        return WeightsRef("pretrained", source=_pretrained_source(spec))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise DataError(
            f"Weights file {path} not found; --weights takes 'pretrained', 'random' or the "
            "path of a .safetensors / .pt / .pth checkpoint."
        )
    return WeightsRef("file", path=str(path.resolve()), sha256=provenance.sha256_file(path))


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint's contents: safetensors, or a torch file loaded with ``weights_only=True``.

    Plain pickles (anything ``weights_only`` refuses: argparse Namespaces, custom classes,
    TorchScript archives) are refused with a DataError saying how to convert them."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"Cannot read safetensors checkpoint {path}: {exc}.") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"Cannot read {path} as a weights-only torch checkpoint ({first}); bobx never "
            "unpickles arbitrary objects: save just the state dict (torch.save(model."
            "state_dict(), ...)) or convert it to .safetensors."
        ) from exc
    if not isinstance(obj, Mapping):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a state dict.")
    return dict(obj)


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _unwrap(ckpt: Mapping[str, Any], prefer: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensor dict inside a training checkpoint (``state_dict`` / ``model`` / ...)."""
    if _is_tensor_dict(ckpt):
        return dict(ckpt)
    for key in (*prefer, "state_dict", "model", "module", "teacher", "net", "params"):
        inner = ckpt.get(key)
        if isinstance(inner, Mapping):
            found = _unwrap(inner, prefer)
            if found:
                return found
    tensors = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    return tensors


def _strip(sd: Mapping[str, torch.Tensor], *prefixes: str) -> dict[str, torch.Tensor]:
    out = dict(sd)
    for prefix in prefixes:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def _select(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys under ``prefix`` (stripped), when any are; else ``sd`` unchanged."""
    picked = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return picked or dict(sd)


def _drop(sd: Mapping[str, torch.Tensor], *prefixes: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.startswith(prefixes)}


def _timm_filter(sd: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint filter timm uses for ``net``'s own original-layout checkpoints."""
    import sys

    module = sys.modules.get(type(net).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    if fn is None:
        raise DataError(f"timm has no checkpoint conversion for {type(net).__name__}.")
    return dict(fn(sd, net))


def _map_auto(ckpt: Mapping[str, Any], net: nn.Module) -> dict[str, torch.Tensor]:
    return _strip(_unwrap(ckpt, ()), "module.", "_orig_mod.")


def _map_mocov3(ckpt: Mapping[str, Any], net: nn.Module) -> dict[str, torch.Tensor]:
    """MoCo v3 ``main_moco.py`` checkpoints: ``state_dict`` with ``module.base_encoder.*``
    (plus momentum encoder and predictor, dropped); the base encoder's ``head`` is the
    projection MLP, not part of the backbone."""
    sd = _strip(_unwrap(ckpt, ("state_dict",)), "module.")
    sd = _select(sd, "base_encoder.")
    return _drop(sd, "head.", "momentum_encoder.", "predictor.")


def _map_dino(ckpt: Mapping[str, Any], net: nn.Module) -> dict[str, torch.Tensor]:
    """DINO: a released backbone file (plain keys) or a training checkpoint's ``teacher``
    (``module.backbone.*`` + the DINO projection ``head.*``, dropped)."""
    sd = _strip(_unwrap(ckpt, ("teacher",)), "module.")
    sd = _select(sd, "backbone.")
    return _drop(sd, "head.", "fc.")


def _map_vicreg(ckpt: Mapping[str, Any], net: nn.Module) -> dict[str, torch.Tensor]:
    """VICReg's ResNet: torchvision key names (its extra input padding has no weights);
    a training checkpoint's ``model`` holds ``backbone.*`` and the ``projector.*``."""
    sd = _strip(_unwrap(ckpt, ("model",)), "module.")
    sd = _select(sd, "backbone.")
    return _drop(sd, "projector.", "fc.")


def _map_vicregl_convnext(ckpt: Mapping[str, Any], net: nn.Module) -> dict[str, torch.Tensor]:
    """VICRegL's ConvNeXt: Facebook's original ConvNeXt layout (timm converts it), its
    final ``norm`` applied before pooling (timm's ``norm_pre`` with head_norm_first)."""
    sd = _select(_strip(_unwrap(ckpt, ("model",)), "module."), "backbone.")
    sd = _timm_filter(_drop(sd, "projector.", "head."), net)
    norm_pre = getattr(net, "norm_pre", None)
    if isinstance(norm_pre, nn.Module) and any(True for _ in norm_pre.parameters()):
        sd = {
            ("norm_pre." + k[len("head.norm.") :] if k.startswith("head.norm.") else k): v
            for k, v in sd.items()
        }
    return sd


def _map_midas_swinv2(ckpt: Mapping[str, Any], net: nn.Module) -> dict[str, torch.Tensor]:
    """MiDaS v3.1 DPT checkpoints: the timm SwinV2 encoder under ``pretrained.model.``,
    in timm 0.6's layout (downsample at the end of a stage), which timm's filter converts."""
    sd = _strip(_unwrap(ckpt, ()), "module.")
    picked = {
        k[len("pretrained.model.") :]: v for k, v in sd.items() if k.startswith("pretrained.model.")
    }
    if not picked:
        raise DataError("Not a MiDaS DPT checkpoint: no 'pretrained.model.*' keys.")
    return _timm_filter(picked, net)


#: Converters from published key layouts into the timm architecture's state dict.
KEY_MAP_FUNCTIONS: dict[str, Callable[[Mapping[str, Any], nn.Module], dict[str, torch.Tensor]]] = {
    "auto": _map_auto,
    "mocov3": _map_mocov3,
    "dino": _map_dino,
    "vicreg": _map_vicreg,
    "vicregl_convnext": _map_vicregl_convnext,
    "midas_swinv2": _map_midas_swinv2,
}
assert set(KEY_MAP_FUNCTIONS) == set(KEY_MAPS)


def convert_state_dict(
    ckpt: Mapping[str, Any], key_map: str | None, net: nn.Module
) -> dict[str, torch.Tensor]:
    """Convert a checkpoint's contents into ``net``'s key layout with ``key_map``."""
    name = key_map or "auto"
    if name not in KEY_MAP_FUNCTIONS:
        raise UnknownNameError("key map", name, KEY_MAP_FUNCTIONS)
    return KEY_MAP_FUNCTIONS[name](ckpt, net)


def _classifier_prefixes(net: nn.Module) -> tuple[str, ...]:
    cfg = getattr(net, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ("head", "fc", "classifier")
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def load_state_into(net: nn.Module, sd: Mapping[str, torch.Tensor], *, what: str) -> None:
    """Load ``sd`` into ``net``: every parameter must be there; only classifier weights
    (which a feature extractor does not have) may be left over."""
    missing, unexpected = net.load_state_dict(dict(sd), strict=False)
    skip = _classifier_prefixes(net)
    unexpected = [k for k in unexpected if not k.startswith(skip)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise DataError(
            f"{what} does not fit {type(net).__name__}: {'; '.join(parts)} keys; check the "
            "backbone (--backbone) and the manifest's key_map."
        )


def _open_clip_visual_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = _strip(sd, "module.")
    if any(k.startswith("visual.") for k in sd):
        return {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    return dict(sd)


def load_weights_file(net: nn.Module, spec: BackboneSpec, path: str | os.PathLike[str]) -> None:
    """Load a local checkpoint into the (timm net | open_clip visual tower) of ``spec``."""
    ckpt = read_state_dict(path)
    if spec.source == "open_clip":
        sd = _open_clip_visual_keys(_unwrap(ckpt, ()))
    else:
        sd = convert_state_dict(ckpt, spec.key_map, net)
    load_state_into(net, sd, what=f"Checkpoint {path}")


def fetch_checkpoint(spec: BackboneSpec) -> Path:
    """The pinned checkpoint of a ``source: checkpoint`` spec, from the torch hub cache or
    downloaded (sha256 checked before use; a mismatch is deleted, never loaded)."""
    assert spec.url and spec.sha256
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(spec.url).name
    if cache.is_file() and provenance.sha256_file(cache) == spec.sha256:
        return cache
    if offline():
        raise UnavailableError(
            f"Checkpoint of {spec.name!r} is not cached at {cache} and the network is off "
            f"({'/'.join(OFFLINE_VARS)}): download {spec.url} there (or anywhere and pass "
            "--weights PATH), or run with network access."
        )
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.partial")
    try:
        torch.hub.download_url_to_file(spec.url, str(tmp), progress=True)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UnavailableError(
            f"Cannot download {spec.url} ({exc}); run with network access, or download it "
            "elsewhere and pass --weights PATH."
        ) from exc
    got = provenance.sha256_file(tmp)
    if got != spec.sha256:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"Download of {spec.url} has sha256 {got}, not the pinned "
            f"{spec.sha256}; refusing to load it."
        )
    os.replace(tmp, cache)
    return cache


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint opens (True behind a proxy)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection(
            (url.hostname or "huggingface.co", url.port or 443), timeout=timeout
        ).close()
    except OSError:
        return False
    return True


@contextmanager
def _hub_cache_only_if_unreachable() -> Iterator[None]:
    """Serve the hub from its cache alone while it cannot be reached, so a cache miss fails at
    once instead of after a minute of retries (cached weights still load)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def _network_error(spec: BackboneSpec, exc: BaseException) -> UnavailableError:
    hf_home = os.environ.get("HF_HOME") or os.environ.get("HF_HUB_CACHE") or "~/.cache/huggingface"
    state = "HF_HUB_OFFLINE=1" if offline() else "the hub is unreachable"
    return UnavailableError(
        f"Pretrained weights of {spec.name!r} ({spec.library_name}) are not in the local "
        f"Hugging Face cache ({hf_home}) and cannot be downloaded ({state}): run once with "
        "network access or pre-populate that cache, or pass --weights PATH to a local "
        f"checkpoint. ({type(exc).__name__})"
    )


# --------------------------------------------------------------------------- building
@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the libraries' 'no pretrained weights loaded' chatter while building."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # failures surface as our own one-line errors
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _timm_kwargs(spec: BackboneSpec) -> dict[str, Any]:
    return {"num_classes": 0, **dict(spec.model_kwargs)}


def _open_clip_kwargs(spec: BackboneSpec) -> dict[str, Any]:
    import open_clip

    kwargs: dict[str, Any] = dict(spec.model_kwargs)
    cfg = open_clip.get_pretrained_cfg(spec.model, spec.tag) if spec.tag else {}
    pre = spec.preprocess
    bad = sorted(set(pre) - {"mean", "std", "interpolation"})
    if bad:
        raise UnknownNameError("open_clip preprocess key", bad[0], ("mean", "std", "interpolation"))
    for key, arg in (
        ("mean", "image_mean"),
        ("std", "image_std"),
        ("interpolation", "image_interpolation"),
        ("resize_mode", "image_resize_mode"),
    ):
        value = pre.get(key, cfg.get(key))
        if value is not None:
            kwargs.setdefault(arg, tuple(value) if isinstance(value, list | tuple) else value)
    if cfg.get("quick_gelu"):
        kwargs.setdefault("force_quick_gelu", True)
    if spec.resolution:
        kwargs.setdefault("force_image_size", spec.resolution)
    return kwargs


def _build(
    spec: BackboneSpec,
    *,
    pretrained: bool,
    device: str = "cpu",
    extra_kwargs: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, Any]:
    """``(net, transform)``: the timm model (num_classes=0) or open_clip visual tower, and
    the library's own inference transform (PIL image -> normalised float tensor).
    ``extra_kwargs`` go to timm's ``create_model`` (e.g. ``drop_path_rate``)."""
    if spec.source in ("timm", "checkpoint"):
        import timm
        from timm.data import create_transform, resolve_model_data_config

        name = spec.library_name if spec.source == "timm" else spec.model
        kwargs = {**_timm_kwargs(spec), **dict(extra_kwargs or {})}
        if spec.hf_hub_id and pretrained:
            kwargs["pretrained_cfg_overlay"] = {"hf_hub_id": spec.hf_hub_id}
        with _quiet(), torch.device(device):
            net = timm.create_model(name, pretrained=pretrained, **kwargs)
        cfg = dict(resolve_model_data_config(net))
        if spec.resolution:
            cfg["input_size"] = (3, spec.resolution, spec.resolution)
        for key, value in spec.preprocess.items():
            cfg[key] = tuple(value) if isinstance(value, list | tuple) else value
        transform = create_transform(**cfg, is_training=False)
        net.bobx_data_config = cfg  # type: ignore[assignment]
        return net, transform
    if spec.source == "open_clip":
        import open_clip

        with _quiet():
            model, _, transform = open_clip.create_model_and_transforms(
                spec.model,
                pretrained=spec.tag if pretrained else None,
                device=device,
                **_open_clip_kwargs(spec),
            )
        visual = model.visual
        cfg = dict(getattr(visual, "preprocess_cfg", {}))
        visual.bobx_data_config = cfg
        return visual, transform
    raise UnavailableError(f"Backbone {spec.name!r}: source {spec.source!r} cannot be built here.")


def split_transform(transform: Any) -> tuple[Callable[[Any], torch.Tensor], Any, Any]:
    """Split a torchvision ``Compose`` ending in ToTensor + Normalize into the CPU part
    (PIL -> uint8 CHW tensor) and the normalisation, which runs on the device.

    ``ToTensor`` is ``uint8.float().div(255)`` and ``Normalize`` ``sub(mean).div(std)``;
    :class:`FeatureExtractor` applies exactly these operations, so the numbers are the
    library's. Returns ``(cpu_transform, mean, std)``; mean/std are None when the
    transform has another shape (then it runs whole on the CPU, in float)."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    if len(steps) >= 2:
        to_tensor, norm = steps[-2], steps[-1]
        if type(to_tensor).__name__ in ("ToTensor", "MaybeToTensor") and isinstance(
            norm, T.Normalize
        ):
            cpu = T.Compose([*steps[:-2], T.PILToTensor()])
            return cpu, tuple(float(m) for m in norm.mean), tuple(float(s) for s in norm.std)
    return transform, None, None


class FeatureExtractor(nn.Module):
    """A backbone with its feature point: images in, ``(B, D)`` float32 features out.

    Input is either ``uint8`` ``(B, 3, H, W)`` (normalised here, on the device) or an
    already normalised float tensor."""

    def __init__(
        self,
        net: nn.Module,
        spec: BackboneSpec,
        feature: str,
        mean: tuple[float, ...] | None,
        std: tuple[float, ...] | None,
    ) -> None:
        super().__init__()
        self.net, self.spec, self.feature = net, spec, feature
        self.channels_last = False
        if mean is not None and std is not None:
            self.register_buffer(
                "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
            )
            self.register_buffer(
                "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
            )
        else:
            self.mean = self.std = None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            if self.mean is None:
                raise ShapeError("uint8 input needs a transform ending in ToTensor + Normalize.")
            x = x.to(torch.float32).div(255).sub(self.mean).div(self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        net, feature = self.net, self.feature
        if feature == "pooled":
            out = net(x)
        elif feature in ("cls", "patch_mean"):
            tokens = net.forward_features(x)  # type: ignore[operator]
            if tokens.ndim != 3:
                raise ShapeError(
                    f"Feature {feature!r} needs a ViT-style token output; "
                    f"{self.spec.name} gives shape {tuple(tokens.shape)}."
                )
            prefix = int(getattr(net, "num_prefix_tokens", 1 if feature == "cls" else 0))
            if feature == "cls":
                if prefix < 1 or getattr(net, "cls_token", None) is None:
                    raise ShapeError(f"{self.spec.name} has no class token; use pooled.")
                out = tokens[:, 0]
            else:
                out = tokens[:, prefix:].mean(dim=1)
        else:
            index = int(feature.split(":", 1)[1])
            got = net.forward_intermediates(  # type: ignore[operator]
                x, indices=[index], intermediates_only=True
            )
            if isinstance(got, Mapping):
                got = got["image_intermediates"]
            t = got[0]
            out = t.mean(dim=(2, 3)) if t.ndim == 4 else t.mean(dim=1)
        return out.reshape(out.shape[0], -1).float()


@dataclass
class BackbonePlan:
    """What a run of ``spec`` will compute, known without loading weights."""

    spec: BackboneSpec
    weights: WeightsRef
    feature: str
    dim: int
    data_config: dict[str, Any]
    transform_repr: str
    cpu_transform: Callable[[Any], torch.Tensor]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    params: int = 0
    #: The library's whole inference transform (PIL -> normalised float tensor).
    transform: Any = None

    @property
    def input_size(self) -> tuple[int, int, int]:
        size = self.data_config.get("input_size") or self.data_config.get("size") or 224
        if isinstance(size, int):
            return (3, size, size)
        size = tuple(int(s) for s in size)
        return (3, *size[-2:]) if len(size) >= 2 else (3, size[0], size[0])

    @property
    def input_dtype(self) -> torch.dtype:
        return torch.uint8 if self.mean is not None else torch.float32

    def preprocess(self) -> dict[str, Any]:
        """The preprocessing as JSON (data config + the transform's repr): provenance and key."""
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.data_config.items()}
        return {
            "data_config": cfg,
            "transform": self.transform_repr,
            "normalize_on_device": self.mean is not None,
        }

    def identity(self) -> dict[str, Any]:
        return {
            "backbone": self.spec.identity(),
            "weights": self.weights.identity(),
            "feature": self.feature,
            "preprocess": self.preprocess(),
        }


def plan_backbone(
    backbone: str | BackboneSpec,
    weights: str = "pretrained",
    *,
    layer: str | None = None,
    seed: int | None = None,
) -> BackbonePlan:
    """Resolve weights, preprocessing and feature dimension of a backbone without
    loading any weights (the architecture is built on the ``meta`` device)."""
    spec = get_backbone_spec(backbone)
    ref = resolve_weights(spec, weights, seed=seed)
    feature = check_feature(layer or spec.feature, where="feature point (--layer)")
    if spec.source == "open_clip" and feature in ("cls", "patch_mean"):
        raise UnknownNameError(
            "feature point for an open_clip backbone", feature, ("pooled", "block:<i>")
        )
    net, transform = _build(spec, pretrained=False, device="meta")
    cpu, mean, std = split_transform(transform)
    net.eval()
    extractor = FeatureExtractor(net, spec, feature, None, None)
    cfg = dict(net.bobx_data_config)  # type: ignore[arg-type]
    plan = BackbonePlan(
        spec,
        ref,
        feature,
        0,
        cfg,
        _transform_repr(transform),
        cpu,
        mean,
        std,
        params=sum(p.numel() for p in net.parameters()),
        transform=transform,
    )
    probe = torch.zeros(2, *plan.input_size, device="meta")
    try:
        out = extractor.features(probe)
    except (IndexError, ValueError, AssertionError) as exc:
        if feature == "pooled" or isinstance(exc, ShapeError):
            raise
        raise UnknownNameError(
            f"feature point of {spec.name}",
            feature,
            ("pooled",),
            hint=f"({exc})".splitlines()[0],
        ) from exc
    plan.dim = int(out.shape[1])
    return plan


def _transform_repr(transform: Any) -> str:
    return " ".join(repr(transform).split())


def load_network(plan: BackbonePlan, *, model_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """``plan``'s network with its weights, on the CPU, trainable: the timm model
    (``num_classes=0``; ``model_kwargs`` such as ``drop_path_rate`` go to timm's
    ``create_model``) or the open_clip visual tower (``model_kwargs`` must be empty)."""
    spec, ref = plan.spec, plan.weights
    extra = dict(model_kwargs or {})
    if extra and spec.source == "open_clip":
        raise UnavailableError(
            f"open_clip backbone {spec.name!r} takes no model options ({', '.join(extra)})."
        )

    def build(pretrained: bool) -> nn.Module:
        return _build(spec, pretrained=pretrained, extra_kwargs=extra)[0]

    if ref.kind == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(ref.seed or 0))
            net = build(False)
    elif ref.kind == "file":
        net = build(False)
        load_weights_file(net, spec, str(ref.path))
    elif spec.source == "checkpoint":
        path = fetch_checkpoint(spec)
        net = build(False)
        load_state_into(
            net,
            convert_state_dict(read_state_dict(path), spec.key_map, net),
            what=f"Checkpoint {spec.url}",
        )
    else:
        try:
            with _hub_cache_only_if_unreachable():
                net = build(True)
        except OSError as exc:  # HF hub misses, URLError, requests errors are all OSErrors
            raise _network_error(spec, exc) from exc
        except RuntimeError as exc:
            if re.search(r"connect|offline|download|resolve", str(exc), re.I):
                raise _network_error(spec, exc) from exc
            raise
    return net


def load_backbone(plan: BackbonePlan, *, device: str | torch.device = "cpu") -> FeatureExtractor:
    """Build ``plan``'s network with its weights, in eval mode on ``device``."""
    net = load_network(plan)
    net.eval().requires_grad_(False)
    extractor = FeatureExtractor(net, plan.spec, plan.feature, plan.mean, plan.std)
    extractor.eval()
    dev = torch.device(device)
    if dev.type == "cuda":
        extractor.channels_last = True
        extractor = extractor.to(dev).to(memory_format=torch.channels_last)
    else:
        extractor = extractor.to(dev)
    return extractor


def count_parameters(module: nn.Module) -> float:
    """Parameters in millions (the catalog's ``params_m``)."""
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 1)


__all__ = [
    "KEY_MAP_FUNCTIONS",
    "BackbonePlan",
    "FeatureExtractor",
    "WeightsRef",
    "convert_state_dict",
    "count_parameters",
    "fetch_checkpoint",
    "load_backbone",
    "load_network",
    "load_state_into",
    "load_weights_file",
    "offline",
    "plan_backbone",
    "read_state_dict",
    "resolve_weights",
    "split_transform",
]

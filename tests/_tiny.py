"""Tiny random-init timm backbones for the job tests, as a user's manifest ($BOBX_MANIFESTS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY = """
{prefix}_resnet:
  source: timm
  model: resnet10t
  resolution: 32
  style: random
{prefix}_vit:
  source: timm
  model: test_vit
  model_kwargs: {{img_size: 32}}
  resolution: 32
  family: vit
  style: random
"""


def tiny_manifests(root: Path, prefix: str) -> Path:
    """``root/backbones/tiny.yaml`` naming ``<prefix>_resnet`` (resnet10t) and
    ``<prefix>_vit`` (test_vit), both at 32 px; returns ``root`` for $BOBX_MANIFESTS."""
    (root / "backbones").mkdir(parents=True, exist_ok=True)
    (root / "backbones" / "tiny.yaml").write_text(TINY.format(prefix=prefix))
    return root


def extract_digits(store: Any, backbone: str, **options: Any) -> None:
    """``backbone``'s features of digits train and test, random weights, on the CPU."""
    from featcache.extract import extract

    extract(
        store,
        backbone,
        "digits",
        splits=["train", "test"],
        weights="random",
        device="cpu",
        num_workers=0,
        progress=False,
        **options,
    )

"""The backbone catalog, weights resolution and checkpoint key conversion (no images, no store)."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from featcache import provenance
from featcache.backbones import (
    FAMILIES,
    STYLES,
    BackboneSpec,
    get_backbone_spec,
    list_backbone_specs,
    load_backbone_specs,
    validate_backbone_manifests,
)
from featcache.errors import DataError, ManifestError, UnavailableError, UnknownNameError
from featcache.models import (
    convert_state_dict,
    load_state_into,
    plan_backbone,
    read_state_dict,
    resolve_weights,
)

PAPER_RESULTS = Path(__file__).parent / "data" / "bob_paper" / "bob_paper_results.csv"

#: The issue's list: Table 1 grid, Table 3 small backbones, Table 16 extra retrieval ones.
EXPECTED = {
    # supervised ImageNet-1k / -21k grid
    "sup_resnet50_in1k", "sup_resnet101_in1k", "sup_resnet50_in21k", "sup_resnet101_in21k",
    "sup_vits_in1k", "sup_vits_in21k", "sup_vitb_in1k", "sup_vitb_in21k",
    "sup_swinv2_t_in1k", "sup_swinv2_b_w8_in1k", "sup_swinv2_b_in21k",
    "sup_convnext_t_in1k", "sup_convnext_t_in21k", "sup_convnext_b_in1k", "sup_convnext_b_in21k",
    # self-supervised, vision-language, depth, generative
    "dino_resnet50_in1k", "dino_vits_in1k", "dino_vitb_in1k", "mocov3_vits_in1k",
    "mocov3_vitb_in1k", "mae_vitb_in1k", "vicreg_resnet50_in1k", "vicregl_convnext_b_in1k",
    "vicregl_convnext_xl_in21k", "clip_resnet50_openai", "clip_resnet101_openai",
    "clip_vitb_laion2b", "midas_swinv2_t", "midas_swinv2_b", "sd_laion2b",
    # Table 3
    "sup_resnet18_in1k", "sup_efficientnet_b0_in1k", "sup_regnetx_400mf_in1k",
    # Table 16
    "sup_convnext_s_in1k", "sup_convnext_s_in21k", "sup_convnext_xl_in21k", "sup_vitl_in21k",
    "sup_swinv2_l_w16_in21k", "sup_swinv2_l_w24_in21k", "sup_swinv2_b_w16_in21k",
    "clip_vitl_laion2b", "clip_resnet50x64_openai", "mae_vitl_in1k",
}  # fmt: skip


@pytest.fixture
def user_manifests(monkeypatch, tmp_path: Path):
    """A $BOBX_MANIFESTS directory; write ``backbones/<file>.yaml`` into it."""
    (tmp_path / "backbones").mkdir()
    monkeypatch.setenv("BOBX_MANIFESTS", str(tmp_path))

    def write(text: str, name: str = "mine.yaml") -> Path:
        path = tmp_path / "backbones" / name
        path.write_text(text)
        return path

    return write


# ------------------------------------------------------------------------------- catalog
def test_packaged_catalog_is_valid_against_installed_registries() -> None:
    assert validate_backbone_manifests() == []


def test_every_paper_backbone_is_in_the_catalog() -> None:
    specs, problems = load_backbone_specs()
    assert problems == []
    with PAPER_RESULTS.open() as fh:
        used = {row["backbone"] for row in csv.DictReader(fh)}
    assert used <= set(specs), sorted(used - set(specs))
    assert set(EXPECTED) <= set(specs), sorted(EXPECTED - set(specs))


def test_every_architecture_has_a_random_baseline() -> None:
    specs = {s.name: s for s in list_backbone_specs()}
    archs = {
        (s.source if s.source != "checkpoint" else "timm", s.model, dict(s.model_kwargs).__repr__())
        for s in specs.values()
        if not s.is_random
    }
    randoms = {
        (s.source, s.model, dict(s.model_kwargs).__repr__()) for s in specs.values() if s.is_random
    }
    assert archs == randoms
    rand = specs["rand_vitb"]
    base = specs[rand.random_init_of or ""]
    assert rand == dataclasses.replace(
        base,
        name="rand_vitb",
        method="random",
        style="random",
        pretrain_data=None,
        pretrain_images=0,
        aliases=rand.aliases,
        paper=rand.paper,
        notes=rand.notes,
        random_init_of=base.name,
        source_file=rand.source_file,
    )
    moco = specs["rand_vits_h12"]
    assert moco.source == "timm" and moco.url is None and moco.model_kwargs == {"num_heads": 12}


def test_metadata_the_analyses_need() -> None:
    for spec in list_backbone_specs():
        assert spec.family in FAMILIES and spec.style in STYLES, spec.name
        assert spec.resolution and spec.arch, spec.name
        if spec.available:
            assert spec.params_m and spec.feature_dim, spec.name
        else:
            assert spec.unavailable_reason, spec.name
        if not spec.is_random:
            assert spec.pretrain_data and spec.pretrain_images, spec.name
        json.dumps(spec.to_dict())
        hash(spec)
    sd = get_backbone_spec("sd_laion2b")
    assert not sd.available and "diffusers" in (sd.unavailable_reason or "")
    assert get_backbone_spec("midas_swinv2_t").style == "depth"
    assert get_backbone_spec("clip_vitl_laion2b").family == "vit"
    assert get_backbone_spec("sup_swinv2_b_in21k").family == "hierarchical_transformer"
    assert get_backbone_spec("sup_swinv2_b_in21k").resolution == 384  # window 24 (App. B.1)


def test_aliases_resolve_to_canonical_names() -> None:
    assert get_backbone_spec("dino_vitb").name == "dino_vitb_in1k"
    assert get_backbone_spec("convnext_b_in21k").name == "sup_convnext_b_in21k"
    assert get_backbone_spec("clip_vitb_laion2b").library_name == "ViT-B-16/laion2b_s34b_b88k"
    spec = get_backbone_spec("mae_vitb")
    assert get_backbone_spec(spec) is spec


def test_unknown_backbone_suggests_near_names() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'dino_vitb_in1k'"):
        get_backbone_spec("dino_vitb_in1")


def test_identity_leaves_out_descriptive_fields() -> None:
    spec = get_backbone_spec("dino_vits_in1k")
    renamed = dataclasses.replace(spec, name="x", params_m=1.0, aliases=("y",), notes="z")
    assert renamed.identity() == spec.identity()
    assert dataclasses.replace(spec, tag="other").identity() != spec.identity()


# ---------------------------------------------------------------------------- user YAML
def test_user_yaml_adds_and_overrides_without_code(user_manifests) -> None:
    user_manifests(
        """
my_tiny:
  source: timm
  model: resnet10t
  style: supervised
  pretrain_data: ImageNet-1k
  pretrain_images: 1281167
  resolution: 32
  aliases: [tiny]
rand_my_tiny:
  random_init_of: my_tiny
mocov3_vits_in1k:
  source: checkpoint
  model: vit_small_patch16_224
  model_kwargs: {num_heads: 12}
  url: https://dl.fbaipublicfiles.com/moco-v3/vit-s-300ep/vit-s-300ep.pth.tar
  sha256: """
        + "ab" * 32
        + """
  key_map: mocov3
  family: vit
  method: mocov3
  style: self-supervised
"""
    )
    assert get_backbone_spec("tiny").name == "my_tiny"
    assert get_backbone_spec("rand_my_tiny").is_random
    assert validate_backbone_manifests() == []
    moco = get_backbone_spec("mocov3_vits_in1k")
    assert moco.sha256 == "ab" * 32 and moco.source_file.endswith("mine.yaml")
    ref = resolve_weights(moco)  # pinned now: no longer refused
    assert ref.identity() == {"kind": "pretrained", "url": moco.url, "sha256": "ab" * 32}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("x:\n  source: timmm\n  model: resnet18\n  style: supervised\n", "Did you mean 'timm'"),
        ("x:\n  source: timm\n  model: resnet18\n  styel: supervised\n", "did you mean 'style'"),
        ("x:\n  source: checkpoint\n  model: resnet18\n  style: random\n", "https:// 'url'"),
        ("x:\n  source: timm\n  model: resnet18\n  style: random\n  feature: mean\n", "block:<i>"),
        ("x:\n  source: timm\n  model: resnet18\n  style: random\n  sha256: abc\n", "64 lower"),
        ("x:\n  random_init_of: nothing_here\n", "random_init_of 'nothing_here'"),
        (
            "x:\n  source: timm\n  model: resnet18\n  style: random\n  aliases: [dino_vitb]\n",
            "also an alias",
        ),
    ],
)
def test_bad_user_entries_are_reported(user_manifests, entry: str, message: str) -> None:
    user_manifests(entry)
    problems = validate_backbone_manifests(check_registries=False)
    assert any(message in p for p in problems), problems
    assert all("mine.yaml" in p for p in problems)
    with pytest.raises(ManifestError):
        get_backbone_spec("dino_vitb")


def test_registry_check_catches_names_the_libraries_do_not_know(user_manifests) -> None:
    user_manifests(
        """
typo_timm: {source: timm, model: resnet5O, style: random}
typo_tag: {source: timm, model: resnet50, tag: a1_in1kk, style: supervised}
typo_clip: {source: open_clip, model: ViT-B-16, tag: laion2b_s34b, style: vision-language}
"""
    )
    problems = "\n".join(validate_backbone_manifests())
    assert "no model 'resnet5O'. Did you mean 'resnet50'" in problems
    assert "no pretrained weights 'resnet50.a1_in1kk'" in problems
    assert "no pretrained tag 'laion2b_s34b' for 'ViT-B-16'" in problems


def test_cli_lists_and_validates(user_manifests, tmp_path: Path) -> None:
    def bobx(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    out = bobx("backbones", "--json")
    assert out.returncode == 0, out.stderr
    names = {b["name"] for b in json.loads(out.stdout)}
    assert names >= EXPECTED
    out = bobx("datasets", "--json")
    assert out.returncode == 0 and "digits" in {d["name"] for d in json.loads(out.stdout)}
    out = bobx("validate")
    assert out.returncode == 0, out.stderr
    assert "backbones:" in out.stdout and "ok" in out.stdout
    user_manifests("broken:\n  source: timm\n  model: resnet5O\n  style: random\n")
    out = bobx("validate")
    assert out.returncode == 2 and "resnet5O" in out.stderr


# ----------------------------------------------------------------------------- weights
def test_unpinned_checkpoint_url_is_refused_with_both_fixes() -> None:
    with pytest.raises(UnavailableError) as err:
        resolve_weights(get_backbone_spec("vicreg_resnet50_in1k"))
    text = str(err.value)
    assert "sha256" in text and "--weights PATH" in text and "$BOBX_MANIFESTS" in text
    assert "\n" not in text


def test_unavailable_backbone_says_why() -> None:
    with pytest.raises(UnavailableError, match="diffusers"):
        resolve_weights(get_backbone_spec("sd_laion2b"))


def test_weights_path_must_exist_and_is_digested(tmp_path: Path) -> None:
    spec = get_backbone_spec("rand_resnet18")
    with pytest.raises(DataError, match="not found"):
        resolve_weights(spec, str(tmp_path / "none.pt"))
    path = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(2)}, path)
    ref = resolve_weights(spec, str(path))
    assert ref.identity() == {"kind": "file", "sha256": provenance.sha256_file(path)}
    assert resolve_weights(spec, "random", seed=3).identity() == {"kind": "random", "seed": 3}
    assert resolve_weights(spec).identity() == {"kind": "random", "seed": 0}  # a random spec


class _NotAState:  # pickled as a global: weights_only refuses it
    pass


def test_read_state_dict_never_unpickles_objects(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {"w": torch.arange(4.0)}
    save_file(tensors, str(tmp_path / "a.safetensors"))
    torch.save({"state_dict": tensors, "epoch": 3, "arch": "x"}, tmp_path / "b.pth")
    assert torch.equal(read_state_dict(tmp_path / "a.safetensors")["w"], tensors["w"])
    assert read_state_dict(tmp_path / "b.pth")["epoch"] == 3
    torch.save({"args": _NotAState(), "w": tensors["w"]}, tmp_path / "c.pth")
    with pytest.raises(DataError, match="weights-only"):
        read_state_dict(tmp_path / "c.pth")
    (tmp_path / "d.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError):
        read_state_dict(tmp_path / "d.pth")


# ------------------------------------------------------------------------ key conversion
def _timm(name: str, **kwargs) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k].reshape(a[k].shape)), k


def test_mocov3_dino_vicreg_layouts_map_to_timm() -> None:
    vit = _timm("test_vit", img_size=32)
    sd = vit.state_dict()
    moco = {
        "epoch": 300,
        "arch": "vit_small",
        "state_dict": {
            **{f"module.base_encoder.{k}": v for k, v in sd.items()},
            "module.base_encoder.head.0.weight": torch.ones(4, 4),
            **{f"module.momentum_encoder.{k}": v + 1 for k, v in sd.items()},
            "module.predictor.0.weight": torch.ones(2, 2),
        },
    }
    _same(convert_state_dict(moco, "mocov3", vit), sd)
    dino = {
        "teacher": {
            **{f"module.backbone.{k}": v for k, v in sd.items()},
            "module.head.mlp.0.weight": torch.ones(3, 3),
        },
        "student": {f"module.backbone.{k}": v + 1 for k, v in sd.items()},
    }
    _same(convert_state_dict(dino, "dino", vit), sd)
    _same(convert_state_dict(dict(sd), "dino", vit), sd)  # the released backbone-only file
    resnet = _timm("resnet10t")
    rsd = resnet.state_dict()
    _same(convert_state_dict(dict(rsd), "vicreg", resnet), rsd)
    full = {
        "epoch": 1,
        "model": {
            **{f"module.backbone.{k}": v for k, v in rsd.items()},
            "module.projector.0.weight": torch.ones(2, 2),
        },
    }
    _same(convert_state_dict(full, "vicreg", resnet), rsd)
    load_state_into(resnet, convert_state_dict(full, "vicreg", resnet), what="test")


def test_midas_swinv2_layout_of_timm_0_6_maps_to_timm() -> None:
    net = _timm(
        "swinv2_tiny_window8_256",
        img_size=32,
        window_size=2,
        embed_dim=24,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
    )
    sd = net.state_dict()
    old = {}  # timm 0.6: downsample at the end of the previous stage, classifier "head"
    for k, v in sd.items():
        k = re.sub(
            r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k
        )
        old[f"pretrained.model.{k}"] = v
    old["pretrained.model.head.weight"] = torch.ones(1000, 192)
    old["pretrained.model.head.bias"] = torch.ones(1000)
    old["scratch.refinenet1.out_conv.weight"] = torch.ones(2)
    old["pretrained.act_postprocess1.0.weight"] = torch.ones(2)
    got = convert_state_dict(old, "midas_swinv2", net)
    load_state_into(net, got, what="midas")
    _same({k: v for k, v in got.items() if not k.startswith("head.")}, sd)


def test_vicregl_facebook_convnext_layout_maps_to_timm() -> None:
    net = _timm("convnext_atto", ls_init_value=None, head_norm_first=True)
    sd = net.state_dict()
    fb = {}
    for k, v in sd.items():
        k2 = k.replace("stem.", "downsample_layers.0.").replace("norm_pre.", "norm.")
        k2 = re.sub(r"stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k2)
        k2 = re.sub(r"stages\.(\d+)\.blocks\.", r"stages.\1.", k2)
        k2 = k2.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        fb[k2] = v
    assert "downsample_layers.1.1.weight" in fb and "norm.weight" in fb
    got = convert_state_dict(fb, "vicregl_convnext", net)
    _same(got, sd)


def test_feature_points_and_their_dimensions() -> None:
    assert plan_backbone("rand_vits", layer="cls").dim == 384
    assert plan_backbone("rand_vits", layer="block:-4").dim == 384
    assert plan_backbone("rand_resnet50", layer="block:3").dim == 1024  # 0 is the stem
    assert plan_backbone("rand_clip_resnet50").dim == 1024
    with pytest.raises(Exception, match="class token|token output"):
        plan_backbone("rand_convnext_t", layer="cls")
    with pytest.raises(UnknownNameError):
        plan_backbone("rand_resnet50", layer="block:9")
    with pytest.raises(UnknownNameError, match="feature point"):
        plan_backbone("rand_resnet50", layer="avgpool")


def test_spec_is_frozen() -> None:
    spec = get_backbone_spec("rand_resnet50")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"  # type: ignore[misc]
    assert isinstance(spec, BackboneSpec)


def test_pinned_checkpoint_url_is_downloaded_once_and_verified(monkeypatch, tmp_path: Path):
    import shutil

    import featcache.models as models

    net = _timm("resnet10t")
    published = tmp_path / "published.pth"
    torch.save(
        {"epoch": 1, "model": {f"module.backbone.{k}": v for k, v in net.state_dict().items()}},
        published,
    )
    spec = dataclasses.replace(
        get_backbone_spec("vicreg_resnet50_in1k"),
        model="resnet10t",
        resolution=32,
        url="https://example.invalid/vicreg-r10t.pth",
        sha256=provenance.sha256_file(published),
    )
    calls: list[str] = []

    def download(url: str, dst: str, progress: bool = True) -> None:
        calls.append(url)
        shutil.copyfile(published, dst)

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("BOBX_OFFLINE", raising=False)
    plan = plan_backbone(spec)
    assert plan.weights.identity() == {"kind": "pretrained", "url": spec.url, "sha256": spec.sha256}
    model = models.load_backbone(plan)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = models.FeatureExtractor(net.eval(), spec, "pooled", plan.mean, plan.std)(x)
        assert torch.equal(model(x), expected)
    models.load_backbone(plan)  # cached: no second download
    assert calls == [spec.url]
    monkeypatch.setenv("BOBX_OFFLINE", "1")
    models.load_backbone(plan)  # cached and verified: works offline
    bad = dataclasses.replace(spec, url="https://example.invalid/other.pth", sha256="0" * 64)
    with pytest.raises(UnavailableError, match="not cached"):
        models.load_backbone(plan_backbone(bad))
    monkeypatch.delenv("BOBX_OFFLINE")
    with pytest.raises(DataError, match="refusing to load it"):
        models.load_backbone(plan_backbone(bad))
    assert not (tmp_path / "hub" / "checkpoints" / "other.pth").exists()


def test_unreachable_hub_fails_fast_from_the_cache(monkeypatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    import featcache.models as models

    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(UnavailableError, match="the hub is unreachable") as err:
        models.load_backbone(plan_backbone("sup_resnet18_in1k"))
    assert time.perf_counter() - t0 < 30 and "--weights PATH" in str(err.value)
    assert constants.HF_HUB_OFFLINE is False  # restored

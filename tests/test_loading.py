"""Loading: unsupported models fail clearly, local checkpoints load offline, family override, a light
``import caap_lens``, ImageNet class names, and converted weights independent of timm's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from caap_lens import HookedViT
from caap_lens.loading import CONVERTERS, FAMILY_EXAMPLES, UnsupportedModelError, from_timm
from conftest import get_timm, images_for, make_timm

FAMILIES = ("vit", "deit", "deit3", "dinov2", "clip")
REPO = Path(__file__).resolve().parents[1]


def _names_all_families(message: str) -> None:
    for family in FAMILIES:
        assert re.search(rf"\b{family} \(e\.g\.", message), (family, message)


def test_family_tables_agree():
    assert set(CONVERTERS) == set(FAMILY_EXAMPLES) == set(FAMILIES)


@pytest.mark.parametrize(
    "name,kwargs,reason",
    [
        ("resnet18", {}, "ResNet is not a timm VisionTransformer"),
        ("vit_tiny_patch16_224", {"qk_norm": True, "depth": 2}, "q_norm"),
        ("vit_tiny_patch16_224", {"global_pool": "", "depth": 2}, "global_pool=''"),
        ("vit_tiny_patch16_224", {"global_pool": "prr", "depth": 2}, "global_pool='prr'"),
        ("no_such_vit_model_xyz", {}, "timm has no model named 'no_such_vit_model_xyz'"),
    ],
    ids=["resnet18", "qk_norm", "global_pool_empty", "global_pool_prr", "unknown_name"],
)
def test_unsupported_models(name, kwargs, reason):
    with pytest.raises(UnsupportedModelError) as info:
        HookedViT.from_timm(name, **kwargs)
    message = str(info.value)
    assert reason in message
    _names_all_families(message)
    assert isinstance(info.value, TypeError)  # UnsupportedModelError is a TypeError


def test_unsupported_module_instance():
    timm = get_timm()
    resnet = timm.create_model("resnet18")
    with pytest.raises(UnsupportedModelError) as info:
        from_timm(resnet)
    _names_all_families(str(info.value))
    with pytest.raises(TypeError, match="only apply when a model name is given"):
        from_timm(make_timm("vit_tiny_patch16_224"), depth=2)


def _save(model: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_checkpoint(tmp_path, suffix):
    name = "deit3_small_patch16_224"
    trained = make_timm(name, seed=11)
    path = tmp_path / f"finetune{suffix}"
    _save(trained, path)
    x = images_for(HookedViT.from_timm(trained), batch=2)
    with torch.no_grad():
        ref = trained(x)
        loaded = HookedViT.from_timm(name, checkpoint_path=str(path), depth=2)
        via_overlay = HookedViT.from_timm(
            name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), depth=2
        )
        torch.manual_seed(123)
        fresh = HookedViT.from_timm(name, depth=2)
        for model in (loaded, via_overlay):
            assert model.cfg.family == "deit3" and model.cfg.n_layers == 2
            torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=0)
        assert (fresh(x) - ref).abs().max() > 1e-2


def test_local_checkpoint_missing_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        HookedViT.from_timm("vit_tiny_patch16_224", checkpoint_path=str(tmp_path / "missing.pth"), depth=2)


def test_family_override():
    timm_model = make_timm("vit_tiny_patch16_224", seed=3)
    model = from_timm(timm_model, family="deit")
    assert model.cfg.family == "deit"
    x = images_for(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), timm_model(x), atol=1e-5, rtol=0)
    assert HookedViT.from_timm("vit_tiny_patch16_224", family="deit", depth=2).cfg.family == "deit"
    # A family whose structure does not match is refused, naming the families.
    with pytest.raises(UnsupportedModelError, match="layer scale") as info:
        from_timm(timm_model, family="deit3")
    _names_all_families(str(info.value))
    with pytest.raises(ValueError, match=r"unknown family 'swin'.*clip.*deit.*deit3.*dinov2.*vit"):
        from_timm(timm_model, family="swin")


def test_family_detection_without_pretrained_cfg():
    """A VisionTransformer built directly (no architecture name) is classified by its structure."""
    timm = get_timm()
    vt = timm.models.vision_transformer.VisionTransformer
    common = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    cases = [
        (dict(), "vit"),
        (dict(pre_norm=True), "clip"),
        (dict(init_values=1.0, no_embed_class=True), "deit3"),
        (dict(init_values=1.0, patch_size=14, img_size=28), "dinov2"),
    ]
    for extra, family in cases:
        torch.manual_seed(0)
        model = vt(**{**common, **extra}).eval()
        assert HookedViT.from_timm(model).cfg.family == family, extra


def test_import_caap_lens_does_not_import_timm():
    code = textwrap.dedent(
        """
        import sys, time
        t0 = time.perf_counter()
        import caap_lens
        elapsed = time.perf_counter() - t0
        assert "timm" not in sys.modules, "import caap_lens imported timm"
        assert "torchvision" not in sys.modules
        caap_lens.PatchGrid  # lazy attribute works without timm
        assert "timm" not in sys.modules
        t0 = time.perf_counter()
        caap_lens.HookedViT  # first use: torch, transformer_lens, the model; still no timm
        first_use = time.perf_counter() - t0
        assert "timm" not in sys.modules, "caap_lens.HookedViT imported timm"
        print(f"IMPORT_SECONDS={elapsed:.4f} FIRST_USE_SECONDS={first_use:.3f}")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seconds = float(re.search(r"IMPORT_SECONDS=([0-9.]+)", result.stdout).group(1))
    first_use = float(re.search(r"FIRST_USE_SECONDS=([0-9.]+)", result.stdout).group(1))
    # -X importtime lines: "import time: self [us] | cumulative | package"
    cumulative = [
        int(m.group(2))
        for m in re.finditer(r"import time:\s*(\d+) \|\s*(\d+) \| caap_lens$", result.stderr, re.M)
    ]
    assert cumulative, result.stderr[-2000:]
    print(f"[import time] import caap_lens: {seconds * 1000:.1f} ms wall, "
          f"{cumulative[0] / 1000:.1f} ms cumulative (-X importtime); "
          f"first caap_lens.HookedViT access (torch, transformer_lens): {first_use:.2f} s")


def test_imagenet_class_names():
    timm_model = make_timm("vit_tiny_patch16_224")
    assert timm_model.num_classes == 1000
    model = HookedViT.from_timm(timm_model)
    assert model.class_names is not None and len(model.class_names) == 1000
    assert all(isinstance(n, str) and n for n in model.class_names)
    assert len(set(model.class_names)) > 900
    # Explicit names win; a wrong count is refused.
    names = [f"c{i}" for i in range(10)]
    small = HookedViT.from_timm(make_timm("vit_tiny_patch16_224", num_classes=10), class_names=names)
    assert small.class_names == tuple(names)
    assert HookedViT.from_timm(make_timm("vit_tiny_patch16_224", num_classes=10)).class_names is None
    with pytest.raises(ValueError, match="3 class names for 10 classes"):
        HookedViT.from_timm(make_timm("vit_tiny_patch16_224", num_classes=10), class_names=names[:3])


def test_converted_weights_are_independent_of_timm():
    timm_model = make_timm("deit3_small_patch16_224", seed=8)
    model = HookedViT.from_timm(timm_model)
    x = images_for(model)
    with torch.no_grad():
        before = model(x)
        assert torch.equal(before, timm_model(x))
    timm_ptrs = {p.untyped_storage().data_ptr() for p in timm_model.parameters()}
    ours_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert not timm_ptrs & ours_ptrs
    with torch.no_grad():
        for p in timm_model.parameters():
            p.mul_(-1.5).add_(0.3)
        assert not torch.allclose(timm_model(x), before)
        assert torch.equal(model(x), before)
    # And the other way round.
    with torch.no_grad():
        timm_out = timm_model(x)
        for p in model.parameters():
            p.zero_()
        assert torch.equal(timm_model(x), timm_out)


# ------------------------------------------------------------------------------------ weights' origin
def test_weights_origin_of_timm_names_modules_and_bundled_models(tmp_path):
    random = HookedViT.from_timm("vit_small_patch16_224", depth=1)  # offline: timm's default pretrained=False
    assert random.cfg.weights_kind == "random"
    assert random.cfg.weights == "random init (timm default; no pretrained weights loaded)"
    assert random.class_names is not None  # ImageNet names on random weights: why the origin is recorded
    assert "weights: random init (timm default; no pretrained weights loaded))" in repr(random)

    trained = make_timm("deit3_small_patch16_224", seed=11)
    path = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))
    pretrained = HookedViT.from_timm("deit3_small_patch16_224", pretrained=True,
                                     pretrained_cfg_overlay=dict(file=str(path)), depth=2)
    assert pretrained.cfg.weights_kind == "pretrained"
    assert pretrained.cfg.weights == f"pretrained: timm deit3_small_patch16_224.fb_in1k (from {path})"

    converted = HookedViT.from_timm(trained)
    assert converted.cfg.weights_kind == "converted"
    assert converted.cfg.weights == "converted from a timm module (origin unknown)"

    bundled = HookedViT.from_pretrained("fashion-scenes-vit")
    assert (bundled.cfg.weights_kind, bundled.cfg.weights) == ("bundled", "bundled: fashion-scenes-vit")
    assert "weights: bundled: fashion-scenes-vit)" in repr(bundled)


def test_weights_origin_round_trips_and_is_checked():
    import dataclasses
    import json

    from caap_lens import HookedViTConfig

    cfg = HookedViT.from_pretrained("fashion-scenes-vit").cfg
    assert HookedViTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    plain = HookedViTConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16, image_size=8, patch_size=4)
    assert (plain.weights_kind, plain.weights) == ("random", "random init (no weights loaded)")
    with pytest.raises(ValueError, match="weights_kind must be one of random, pretrained, checkpoint"):
        dataclasses.replace(plain, weights_kind="trained")

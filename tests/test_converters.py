"""Converters: the layering (model never imports loading; converters import neither), state dicts that fit
`HookedViT` exactly for every family, the family table, pure conversion, and checkpoint introspection."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from caap_lens import HookedViT
from caap_lens.converters import (
    FAMILIES,
    UnsupportedModelError,
    checkpoint_num_classes,
    convert_timm,
    create_timm,
    key_map,
)
from conftest import VARIANT_IDS, VARIANTS, images_for, make_timm

PACKAGE = Path(__file__).resolve().parents[1] / "caap_lens"


def _imported_modules(folder: Path, root: Path) -> dict[str, set[str]]:
    """File under ``folder`` -> every module its imports name, at any depth (function-level ones too).

    ``root`` is the folder holding the top-level package, so relative imports resolve to full names.
    """
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        package = list(path.relative_to(root).parent.parts)
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                names.add(module)
                names.update(f"{module}.{alias.name}" for alias in node.names)  # from caap_lens import loading
        found[str(path.relative_to(root))] = names
    return found


def _offending(folder: Path, forbidden: tuple[str, ...], root: Path = PACKAGE.parent) -> dict[str, list[str]]:
    """File -> the forbidden modules (or their submodules) it imports."""
    bad = {}
    for path, names in _imported_modules(folder, root).items():
        hits = sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))
        if hits:
            bad[path] = hits
    return bad


def test_import_scanner_sees_every_kind_of_import(tmp_path):
    model = tmp_path / "caap_lens" / "model"
    model.mkdir(parents=True)
    (model / "a.py").write_text("def f():\n    from caap_lens.loading.bundled import load_bundled\n")
    (model / "b.py").write_text("import os\nfrom caap_lens import loading\n")
    (model / "c.py").write_text("class C:\n    def m(self):\n        from ..loading import timm_vit\n")
    (model / "d.py").write_text("import caap_lens.loading.real_dinov2 as rd\n")
    (model / "ok.py").write_text("from caap_lens.converters import convert_timm\nfrom . import block\n")
    bad = _offending(model, ("caap_lens.loading",), root=tmp_path)
    assert sorted(Path(p).name for p in bad) == ["a.py", "b.py", "c.py", "d.py"]


def test_model_never_imports_loading():
    assert (PACKAGE / "model" / "hooked_vit.py").is_file()
    assert _offending(PACKAGE / "model", ("caap_lens.loading",)) == {}


def test_converters_import_neither_model_nor_loading():
    assert (PACKAGE / "converters" / "timm_vit.py").is_file()
    assert _offending(PACKAGE / "converters", ("caap_lens.model", "caap_lens.loading")) == {}
    # and, of caap_lens itself, only the layers above them
    allowed = ("caap_lens.config", "caap_lens.grid", "caap_lens.pos_embed", "caap_lens._timm", "caap_lens.converters")
    for path, names in _imported_modules(PACKAGE / "converters", PACKAGE.parent).items():
        ours = {n for n in names if n == "caap_lens" or n.startswith("caap_lens.")}
        assert all(any(n == a or n.startswith(a + ".") for a in allowed) for n in ours), (path, sorted(ours))


@pytest.mark.parametrize("variant", VARIANT_IDS)
def test_state_dict_keys_and_shapes_fit_hooked_vit(variant):
    name, kwargs, family = VARIANTS[variant]
    cfg, state_dict = convert_timm(make_timm(name, **kwargs))
    assert cfg.family == family
    expected = HookedViT(cfg).state_dict()
    assert set(state_dict) == set(expected)
    assert set(key_map(cfg)) == set(expected)
    for key, tensor in expected.items():
        assert state_dict[key].shape == tensor.shape, key


def test_every_family_converts_with_its_own_structure():
    """vit, deit distilled, deit3, dinov2 with registers, clip: the keys each one needs are there."""
    cases = {
        "vit": ("vit_tiny_patch16_224", {}, {"embed.cls_token", "head.weight"}),
        "deit": ("deit_tiny_distilled_patch16_224", {}, {"embed.dist_token", "head_dist.weight"}),
        "deit3": ("deit3_small_patch16_224", {}, {"blocks.1.attn.layer_scale", "blocks.1.mlp.layer_scale"}),
        "dinov2": ("vit_small_patch14_reg4_dinov2", {"img_size": 224}, {"embed.reg_token"}),
        "clip": ("vit_base_patch16_clip_224", {}, {"ln_pre.w", "ln_pre.b"}),
    }
    assert set(cases) == set(FAMILIES)
    for family, (name, kwargs, keys) in cases.items():
        cfg, state_dict = convert_timm(make_timm(name, **kwargs))
        assert cfg.family == family and keys <= set(state_dict), family
        model = HookedViT(cfg)
        model.load_state_dict(state_dict, strict=True)


def test_missing_timm_bias_becomes_zeros():
    """CLIP's patch embedding has no bias in timm; HookedViT's convolution always has one."""
    timm_model = make_timm("vit_base_patch16_clip_224")
    assert "patch_embed.proj.bias" not in timm_model.state_dict()
    _, state_dict = convert_timm(timm_model)
    assert torch.equal(state_dict["embed.proj.bias"], torch.zeros(768))


def test_conversion_is_pure_and_keeps_dtype():
    timm_model = make_timm("deit3_small_patch16_224", seed=4).double()
    before = {k: v.clone() for k, v in timm_model.state_dict().items()}
    timm_model.train()
    cfg, state_dict = convert_timm(timm_model)
    assert timm_model.training  # the converter does not even switch modes
    assert all(torch.equal(v, before[k]) for k, v in timm_model.state_dict().items())
    assert {t.dtype for t in state_dict.values()} == {torch.float64}
    model = HookedViT.from_state_dict(cfg, state_dict)
    assert model.dtype == torch.float64
    x = images_for(model).double()
    with torch.no_grad():
        assert torch.equal(model(x), timm_model.eval()(x))


def test_family_rules_refuse_a_mismatch():
    timm_model = make_timm("vit_tiny_patch16_224")
    with pytest.raises(UnsupportedModelError, match="so it is not a 'deit3' family model"):
        convert_timm(timm_model, family="deit3")
    with pytest.raises(ValueError, match="unknown family 'swin'"):
        convert_timm(timm_model, family="swin")
    assert all(family.rules and family.description and family.examples for family in FAMILIES.values())


def test_create_timm_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_timm("vit_tiny_patch16_224", checkpoint_path=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="is a folder"):
        create_timm("vit_tiny_patch16_224", checkpoint_path=str(tmp_path))
    with pytest.raises(UnsupportedModelError, match="timm has no model named 'no_such_vit'"):
        create_timm("no_such_vit")


# --------------------------------------------------------------------------- checkpoint introspection
def _state(n_classes: int | None) -> dict[str, torch.Tensor]:
    state = {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4), "blocks.0.norm1.weight": torch.ones(8)}
    if n_classes is not None:
        state["head.weight"] = torch.zeros(n_classes, 8)
    return state


def test_checkpoint_num_classes_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file(_state(7), str(tmp_path / "a.safetensors"))
    save_file({f"module.{k}": v for k, v in _state(None).items()}, str(tmp_path / "headless.safetensors"))
    save_file({"fc.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    assert checkpoint_num_classes(tmp_path / "a.safetensors") == 7
    assert checkpoint_num_classes(str(tmp_path / "headless.safetensors")) == 0
    assert checkpoint_num_classes(tmp_path / "other.safetensors") is None


def test_checkpoint_num_classes_pth_with_prefix_and_wrapper(tmp_path):
    wrapped = {"state_dict": {f"module.{k}": v for k, v in _state(12).items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "train.pth")
    torch.save(_state(5), tmp_path / "plain.pth")
    torch.save({"model_ema": _state(None), "state_dict": _state(9)}, tmp_path / "ema.pth")
    assert checkpoint_num_classes(tmp_path / "train.pth") == 12
    assert checkpoint_num_classes(tmp_path / "plain.pth") == 5
    assert checkpoint_num_classes(tmp_path / "ema.pth") == 0  # the first wrapper found wins: EMA weights first


def test_checkpoint_num_classes_unreadable_is_a_value_error(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*broken\.safetensors"):
        checkpoint_num_classes(bad)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        checkpoint_num_classes(tmp_path / "missing.pth")


def test_from_state_dict_is_strict():
    cfg, state_dict = convert_timm(make_timm("vit_tiny_patch16_224"))
    with pytest.raises(RuntimeError, match="Missing key"):
        HookedViT.from_state_dict(cfg, {k: v for k, v in state_dict.items() if k != "head.bias"})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        HookedViT.from_state_dict(cfg, {**state_dict, "blocks.9.ln1.w": torch.ones(192)})


def test_loading_reexports_the_converters_names():
    """Existing imports from caap_lens.loading keep working and name the very same objects."""
    from caap_lens import converters, loading
    from caap_lens.converters import bundled, families, real_dinov2
    from caap_lens.loading import bundled as loading_bundled
    from caap_lens.loading import real_dinov2 as rd
    from caap_lens.loading import timm_vit

    assert loading.checkpoint_num_classes is converters.checkpoint_num_classes
    assert loading.UnsupportedModelError is timm_vit.UnsupportedModelError is families.UnsupportedModelError
    assert loading.CONVERTERS is FAMILIES and loading.detect_family is families.detect_family
    for name in ("checkpoint_path", "state_dict_from_onnx", "resample_grid", "cache_dir", "onnx_path",
                 "MissingRealWeightsError", "TIMM_ARCH", "SIZES", "ONNX_MEMBER"):
        assert getattr(rd, name) is getattr(real_dinov2, name), name
    assert loading_bundled.load_bundled_timm is bundled.bundled_timm
    assert loading_bundled.bundled_config is bundled.bundled_config


def test_checkpoint_num_classes_reads_lightning_and_compiled_prefixes(tmp_path):
    lightning = {"state_dict": {**{f"model.{k}": v for k, v in _state(4).items()}, "loss.weight": torch.ones(3)}}
    torch.save(lightning, tmp_path / "epoch=3.ckpt")
    torch.save({f"_orig_mod.{k}": v for k, v in _state(None).items()}, tmp_path / "compiled.pt")
    assert checkpoint_num_classes(tmp_path / "epoch=3.ckpt") == 4  # loss.weight, outside the ViT, is ignored
    assert checkpoint_num_classes(tmp_path / "compiled.pt") == 0


def test_convert_timm_records_the_data_config_and_an_unknown_origin():
    module = make_timm("vit_base_patch32_clip_224", depth=1)
    cfg, _ = convert_timm(module)
    assert cfg.weights_kind == "converted"  # a module handed in: how its weights were made is not known here
    assert cfg.data_config == {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.9,
                               "crop_mode": "center", "mean": cfg.image_mean, "std": cfg.image_std}
    assert cfg.image_mean == pytest.approx(module.pretrained_cfg["mean"])
    bare = make_timm("vit_tiny_patch16_224", depth=1)
    bare.pretrained_cfg = {}  # a VisionTransformer built without timm's registry has no eval config
    assert convert_timm(bare)[0].data_config is None

"""Parity with Hugging Face: `HookedViT.from_hf` on random-init HF models built from local configs.

Per supported class: the output (logits, pooled output or image embeddings, as `HF_CLASSES` says) and
every residual stream (HF ``output_hidden_states=True`` against ``blocks.{l}.hook_resid_pre`` and the
last ``hook_resid_post``) agree within 1e-5 in fp32, under the plain forward (bit for bit, in fact) and
under a full ``run_with_cache`` (explicit attention: float rounding); at a second image size too. Every parameter is perturbed first (``perturb_``:
LayerNorm weights and biases, zero-initialised tokens and biases leave their defaults; DINOv2's layer
scales are drawn from U(0.5, 1.5)), so a wrongly mapped tensor shows. Also: a saved folder loads
offline (with its image processor), a weights file without its config is refused naming ``from_hf``,
and every unsupported class or option raises `UnsupportedModelError` naming it.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import perturb_

from caap_lens import HookedViT
from caap_lens.converters import HF_CLASSES, UnsupportedModelError, convert_hf, read_hf_model
from caap_lens.converters.hf_config import import_transformers

hf = import_transformers()
TOL = 1e-5
_SMALL = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4)


def _vit(**kw):
    return {**_SMALL, "intermediate_size": 128, "image_size": 32, "patch_size": 8, **kw}


def _dino(**kw):
    return {**_SMALL, "mlp_ratio": 2, "image_size": 42, "patch_size": 14, **kw}


# id -> (HF class, its config, how to read HF's output that HookedViT's output equals)
CASES = {
    "vit_model": (hf.ViTModel, hf.ViTConfig(**_vit()), lambda o: o.last_hidden_state[:, 0]),
    "vit_classifier": (hf.ViTForImageClassification, hf.ViTConfig(**_vit(num_labels=5)), lambda o: o.logits),
    "vit_no_qkv_bias_relu": (hf.ViTForImageClassification,
                             hf.ViTConfig(**_vit(num_labels=5, qkv_bias=False, hidden_act="relu")), lambda o: o.logits),
    "vit_headless_classifier": (hf.ViTForImageClassification, hf.ViTConfig(**_vit(num_labels=0)), lambda o: o.logits),
    "deit_model": (hf.DeiTModel, hf.DeiTConfig(**_vit()), lambda o: o.last_hidden_state[:, 0]),
    "deit_classifier": (hf.DeiTForImageClassification, hf.DeiTConfig(**_vit(num_labels=5)), lambda o: o.logits),
    "deit_with_teacher": (hf.DeiTForImageClassificationWithTeacher, hf.DeiTConfig(**_vit(num_labels=5)),
                          lambda o: o.logits),
    "dinov2": (hf.Dinov2Model, hf.Dinov2Config(**_dino()), lambda o: o.pooler_output),
    "clip": (hf.CLIPVisionModel, hf.CLIPVisionConfig(**_vit()), lambda o: o.pooler_output),
    "clip_projection": (hf.CLIPVisionModelWithProjection, hf.CLIPVisionConfig(**_vit(projection_dim=24)),
                        lambda o: o.image_embeds),
    "clip_gelu": (hf.CLIPVisionModelWithProjection,
                  hf.CLIPVisionConfig(**_vit(projection_dim=24, hidden_act="gelu")), lambda o: o.image_embeds),
    "siglip_no_head": (hf.SiglipVisionModel, hf.SiglipVisionConfig(**_vit(vision_use_head=False)),
                       lambda o: o.last_hidden_state.mean(dim=1)),
    "siglip_classifier": (hf.SiglipForImageClassification,
                          hf.SiglipConfig(vision_config=_vit(), num_labels=5), lambda o: o.logits),
}
CASES["siglip_attention_pool"] = (hf.SiglipVisionModel, hf.SiglipVisionConfig(**_vit()), lambda o: o.pooler_output)
if hasattr(hf, "Dinov2WithRegistersModel"):  # transformers >= 4.48
    CASES["dinov2_registers"] = (hf.Dinov2WithRegistersModel,
                                 hf.Dinov2WithRegistersConfig(**_dino(num_register_tokens=3)), lambda o: o.pooler_output)


def _hf_model(model_class, config, seed: int = 0):
    torch.manual_seed(seed)
    module = model_class(config).eval()
    perturb_(module, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("lambda1"):  # layer scale: far from its init of 1.0, different per layer and branch
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return module


def _images(model: HookedViT, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, model.cfg.n_channels, *model.cfg.image_size, generator=torch.Generator().manual_seed(7))


def _hf_outputs(module, x: torch.Tensor):
    if isinstance(module, hf.SiglipForImageClassification):  # hidden states of its vision tower
        vision = module.vision_model(pixel_values=x, output_hidden_states=True)
        return module(pixel_values=x), vision.hidden_states
    out = module(pixel_values=x, output_hidden_states=True)
    return out, out.hidden_states


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_and_every_residual_stream_match_hf(case, record_diff):
    model_class, config, read = CASES[case]
    module = _hf_model(model_class, config)
    model = HookedViT.from_hf(module)
    x = _images(model)
    with torch.no_grad():
        out, hidden = _hf_outputs(module, x)
        ours, cache = model.run_with_cache(x)
    expected = read(out)
    assert ours.shape == expected.shape
    n = model.cfg.n_layers
    assert len(hidden) == n + 1
    resid = [cache[f"blocks.{layer}.hook_resid_pre"] for layer in range(n)] + [cache[f"blocks.{n - 1}.hook_resid_post"]]
    resid_diff = max((a - b).abs().max().item() for a, b in zip(resid, hidden))
    with torch.no_grad():  # hooks on the residual stream only: attention stays fused, as in the plain forward
        _, plain_cache = model.run_with_cache(x, names_filter=lambda name: "resid" in name)
    plain_resid = [plain_cache[f"blocks.{layer}.hook_resid_pre"] for layer in range(n)]
    plain_resid.append(plain_cache[f"blocks.{n - 1}.hook_resid_post"])
    plain_resid_diff = max((a - b).abs().max().item() for a, b in zip(plain_resid, hidden))
    record_diff(f"hf_{case}", "resid (plain)", plain_resid_diff)
    assert plain_resid_diff < TOL
    out_diff = (ours - expected).abs().max().item()
    record_diff(f"hf_{case}", "output (cached)", out_diff)
    record_diff(f"hf_{case}", "resid (cached)", resid_diff)
    assert out_diff < TOL and resid_diff < TOL
    assert model.cfg.weights_kind == "converted" and "Hugging Face" in model.cfg.weights
    with torch.no_grad():  # the plain forward (no hooks: fused attention, CLS-only last block) agrees too
        plain = (model(x) - expected).abs().max().item()
    record_diff(f"hf_{case}", "output (plain)", plain)
    assert plain < TOL


def test_every_listed_class_has_a_parity_case():
    tested = {model_class.__name__ for model_class, _, _ in CASES.values()} | {"CLIPModel", "SiglipModel"}
    assert set(HF_CLASSES) - {"Dinov2WithRegistersModel"} <= tested


def test_clip_model_converts_its_image_tower():
    config = hf.CLIPConfig(vision_config=_vit(), text_config=dict(hidden_size=32, num_hidden_layers=1,
                                                                  num_attention_heads=2, intermediate_size=64),
                           projection_dim=24)
    module = _hf_model(hf.CLIPModel, config)
    model = HookedViT.from_hf(module)
    x = _images(model)
    with torch.no_grad():
        features = module.get_image_features(pixel_values=x)
        features = getattr(features, "pooler_output", features)
        assert (model(x) - features).abs().max().item() < TOL


def test_siglip_model_converts_its_image_tower():
    config = hf.SiglipConfig(vision_config=_vit(), text_config=dict(hidden_size=32, num_hidden_layers=1,
                                                                    num_attention_heads=2, intermediate_size=64))
    module = _hf_model(hf.SiglipModel, config)
    model = HookedViT.from_hf(module)
    assert model.cfg.pooling == "map"
    x = _images(model)
    with torch.no_grad():
        features = module.get_image_features(pixel_values=x)
        features = getattr(features, "pooler_output", features)
        assert (model(x) - features).abs().max().item() < TOL


def test_class_names_come_from_id2label():
    config = hf.ViTConfig(**_vit(num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"}))
    model = HookedViT.from_hf(_hf_model(hf.ViTForImageClassification, config))
    assert model.class_names == ("cat", "dog", "fox")
    assert HookedViT.from_hf(_hf_model(hf.ViTForImageClassification, hf.ViTConfig(**_vit(num_labels=3)))).class_names \
        is None  # HF's LABEL_i placeholders name nothing


def test_a_saved_folder_loads_offline_with_its_processor(tmp_path):
    config = hf.ViTConfig(**_vit(num_labels=2, id2label={0: "cat", 1: "dog"}))
    module = _hf_model(hf.ViTForImageClassification, config)
    module.save_pretrained(tmp_path)
    hf.ViTImageProcessor(size={"height": 32, "width": 32}, resample=2, image_mean=[0.5, 0.4, 0.3],
                         image_std=[0.2, 0.25, 0.3]).save_pretrained(tmp_path)
    model = HookedViT.from_hf(str(tmp_path))
    x = _images(model)
    with torch.no_grad():
        assert (model(x) - module(pixel_values=x).logits).abs().max().item() < TOL
    assert model.class_names == ("cat", "dog")
    assert model.cfg.weights_kind == "checkpoint" and str(tmp_path) in model.cfg.weights
    assert model.cfg.data_config == {"input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 1.0,
                                     "crop_mode": "squash", "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    assert model.cfg.image_mean == (0.5, 0.4, 0.3)
    from_file = HookedViT.from_hf(tmp_path / "model.safetensors")  # the folder's weights file: the folder
    assert torch.equal(from_file(x), model(x))


def test_a_crop_processor_becomes_timm_center_crop(tmp_path):
    module = _hf_model(hf.Dinov2Model, hf.Dinov2Config(**_dino()))
    module.save_pretrained(tmp_path)
    hf.BitImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 42, "width": 42}).save_pretrained(tmp_path)
    data = HookedViT.from_hf(tmp_path).cfg.data_config
    assert (data["crop_mode"], data["interpolation"], data["input_size"]) == ("center", "bicubic", (3, 42, 42))
    assert int(42 / data["crop_pct"]) == 48  # timm resizes the short side to floor(crop / crop_pct)


def test_a_weights_file_without_its_config_names_from_hf(tmp_path):
    from safetensors.torch import save_file

    module = _hf_model(hf.ViTModel, hf.ViTConfig(**_vit()))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, tmp_path / "weights.safetensors")
    with pytest.raises(ValueError, match="HookedViT.from_hf needs the model's folder"):
        HookedViT.from_hf(tmp_path / "weights.safetensors")
    with pytest.raises(FileNotFoundError, match="neither a saved Hugging Face model folder"):
        HookedViT.from_hf(str(tmp_path / "missing"))


@pytest.mark.parametrize("model_class, config, match", [
    (hf.Dinov2ForImageClassification, hf.Dinov2Config(**_dino(num_labels=3)), "concatenated with the mean patch"),
    (hf.Dinov2Model, hf.Dinov2Config(**_dino(use_swiglu_ffn=True)), "use_swiglu_ffn=True"),
    (hf.Dinov2Model, hf.Dinov2Config(**_dino(image_size=(28, 42))), "square"),
    (hf.ViTModel, hf.ViTConfig(**_vit(hidden_act="silu")), "hidden_act='silu'"),
    (hf.ViTModel, hf.ViTConfig(**_vit(brand_new_option=3)), "brand_new_option=3"),
    (hf.ViTForMaskedImageModeling, hf.ViTConfig(**_vit()), "ViTForMaskedImageModeling is not a supported"),
])
def test_unsupported_options_raise_naming_them(model_class, config, match):
    module = model_class(config)
    with pytest.raises(UnsupportedModelError, match=match):
        convert_hf(module)
    with pytest.raises(UnsupportedModelError, match="HookedViT.from_hf converts"):
        HookedViT.from_hf(module)


def test_a_tensor_the_converter_does_not_read_is_refused():
    module = hf.ViTModel(hf.ViTConfig(**_vit()))
    module.register_parameter("extra", torch.nn.Parameter(torch.zeros(3)))
    with pytest.raises(UnsupportedModelError, match="tensors HookedViT does not model: extra"):
        convert_hf(module)


def test_a_processor_option_without_timm_equivalent_raises(tmp_path):
    hf.ViTModel(hf.ViTConfig(**_vit())).save_pretrained(tmp_path)
    hf.ViTImageProcessor(size={"height": 32, "width": 32}, do_rescale=False).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="do_rescale=False"):
        read_hf_model(tmp_path)


def test_conversion_is_pure():
    module = _hf_model(hf.DeiTForImageClassificationWithTeacher, hf.DeiTConfig(**_vit(num_labels=5)))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    cfg, state_dict = convert_hf(module)
    assert set(state_dict) == set(HookedViT(cfg).state_dict())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_docs_example_runs(capsys):
    """The runnable example of the "Hugging Face models" section of docs/howto/own-model.md."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "howto" / "own-model.md").read_text(encoding="utf-8")
    section = text[text.index("### Hugging Face models"):text.index("## 2. Prepare the images")]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    assert len(blocks) == 1
    exec(compile(blocks[0], "own-model.md", "exec"), {})
    assert capsys.readouterr().out.split("\n")[:3] == ["True", "('cat', 'dog', 'fox') squash", "torch.Size([2, 4, 4])"]


def test_an_hf_state_dict_is_recognised_for_timm_loaders():
    from caap_lens.converters import hf_checkpoint_hint

    for module in (hf.ViTForImageClassification(hf.ViTConfig(**_vit(num_labels=2))),
                   hf.CLIPVisionModel(hf.CLIPVisionConfig(**_vit())), hf.Dinov2Model(hf.Dinov2Config(**_dino()))):
        assert "HookedViT.from_hf" in hf_checkpoint_hint(module.state_dict())


# id -> new image size: HF runs it with interpolate_pos_encoding=True (DINOv2: always)
RESIZED = {"vit_classifier": 48, "deit_with_teacher": 48, "dinov2": 56, "clip_projection": 48,
           "siglip_classifier": 48}
if "dinov2_registers" in CASES:
    RESIZED["dinov2_registers"] = 56


@pytest.mark.parametrize("case", list(RESIZED))
def test_another_image_size_matches_hf_interpolating_its_positions(case, record_diff):
    model_class, config, read = CASES[case]
    module = _hf_model(model_class, config)
    size = RESIZED[case]
    model = HookedViT.from_hf(module, image_size=size)
    assert model.cfg.image_size == (size, size)
    x = _images(model)
    kwargs = {} if case.startswith("dinov2") else {"interpolate_pos_encoding": True}
    with torch.no_grad():
        expected = read(module(pixel_values=x, **kwargs))
        diff = (model(x) - expected).abs().max().item()
    record_diff(f"hf_{case}@{size}", "output (plain)", diff)
    assert diff < TOL


DYNAMIC = [*RESIZED, "siglip_attention_pool", "vit_model"]


@pytest.mark.parametrize("case", DYNAMIC)
def test_dynamic_img_size_matches_hf_at_three_sizes(case, record_diff):
    """``from_hf(dynamic_img_size=True)``: any whole number of patches, as HF with ``interpolate_pos_encoding``."""
    model_class, config, read = CASES[case]
    module = _hf_model(model_class, config)
    model = HookedViT.from_hf(module, dynamic_img_size=True)
    assert model.cfg.dynamic_img_size and model.cfg.pos_embed_resample.startswith("hf")
    p = model.cfg.patch_size[0]
    kwargs = {} if case.startswith("dinov2") else {"interpolate_pos_encoding": True}
    for size in (model.cfg.image_size, (6 * p, 4 * p), (2 * p, 5 * p)):
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
        with torch.no_grad():
            expected = read(module(pixel_values=x, **kwargs))
            diff = (model(x) - expected).abs().max().item()
        record_diff(f"hf_{case} dynamic@{size[0]}x{size[1]}", "output (plain)", diff)
        assert diff < TOL, (case, size, diff)


def test_dynamic_img_size_with_image_size_keeps_the_learned_grid():
    model_class, config, read = CASES["dinov2_registers" if "dinov2_registers" in CASES else "dinov2"]
    module = _hf_model(model_class, config)
    at_56 = HookedViT.from_hf(module, image_size=56)  # resampled once, at conversion
    dynamic = HookedViT.from_hf(module, image_size=56, dynamic_img_size=True)  # resampled per forward
    assert dynamic.cfg.image_size == (56, 56) and dynamic.cfg.pos_embed_grid == (3, 3)
    assert dynamic.cfg.n_pos_embed == HookedViT.from_hf(module).cfg.n_pos_embed
    x = _images(at_56)
    with torch.no_grad():
        assert torch.equal(dynamic(x), at_56(x))
        wide = torch.randn(1, 3, 42, 70)  # the learned 3x3 grid resampled to 3x5, as HF resamples it
        assert (dynamic(wide) - read(module(pixel_values=wide))).abs().max().item() < TOL


def test_dynamic_img_size_needs_a_square_learned_grid():
    module = hf.ViTModel(hf.ViTConfig(**_vit(image_size=(32, 48))))
    cfg, _ = convert_hf(module)
    assert cfg.grid_size == (4, 6)
    with pytest.raises(UnsupportedModelError, match="dynamic_img_size=True: HF resamples only square"):
        convert_hf(module, dynamic_img_size=True)


def test_pos_embed_resample_names_match_the_config():
    from caap_lens.config import POS_EMBED_RESAMPLES
    from caap_lens.pos_embed import RESAMPLE_OPTIONS

    assert tuple(RESAMPLE_OPTIONS) == POS_EMBED_RESAMPLES
    assert RESAMPLE_OPTIONS["timm"] == RESAMPLE_OPTIONS["hf_float32_antialias"]  # the same call, two origins


def test_image_size_needs_whole_patches():
    module = hf.ViTModel(hf.ViTConfig(**_vit()))
    with pytest.raises(UnsupportedModelError, match="not a whole number"):
        convert_hf(module, image_size=44)


OUTPUT_KINDS = {"vit_classifier": "classes", "deit_with_teacher": "classes", "vit_model": "embedding",
                "clip": "embedding", "clip_projection": "embedding", "siglip_attention_pool": "embedding"}


@pytest.mark.parametrize("case", list(OUTPUT_KINDS))
def test_output_kind_says_whether_the_outputs_are_classes(case):
    """A CLIP projection head has n_classes = its width but outputs an embedding; the config says so and
    keeps it through to_dict/from_dict."""
    import json

    from caap_lens.config import HookedViTConfig

    model_class, config, _ = CASES[case]
    cfg, _ = convert_hf(model_class(config))
    assert cfg.output_kind == OUTPUT_KINDS[case]
    assert HookedViTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg

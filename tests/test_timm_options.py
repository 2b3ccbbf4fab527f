"""timm options users' checkpoints have, on named timm models: converted with parity, or refused by name.

Converted (parity with timm in fp32, atol 1e-5, on the output and every residual stream, plain and
cached forward, by `test_parity_timm._check_parity`): ``in_chans`` 1 and 4 (with one mean/std value
per channel), register tokens (``reg_tokens=``) on every family that timm builds with them, with and
without ``no_embed_class``. Refused with an `UnsupportedModelError` that names the option and says
why: ``block_fn=ResPostBlock`` (post-norm), ``dynamic_img_size=True`` and attention pooling
(``global_pool='map'``, SigLIP). The max abs differences are listed in the pytest summary.
"""

from __future__ import annotations

import pytest
import torch

from caap_lens import HookedViT
from caap_lens.converters import UnsupportedModelError

from conftest import get_timm, images_for, make_timm
from test_parity_timm import _check_parity


@pytest.mark.parametrize("channels", [1, 4])
def test_in_chans_converts_with_parity_and_one_mean_per_channel(channels, record_diff):
    timm_model = make_timm("vit_tiny_patch16_224", in_chans=channels)
    model = HookedViT.from_timm(timm_model)
    cfg = model.cfg
    assert cfg.n_channels == channels
    assert len(cfg.image_mean) == len(cfg.image_std) == channels
    assert cfg.data_config["input_size"] == (channels, 224, 224)  # timm's own says 3 channels here
    mean = timm_model.pretrained_cfg["mean"]
    assert cfg.image_mean == pytest.approx((sum(mean) / len(mean),) * channels)
    x = images_for(model)
    assert x.shape[1] == channels
    _check_parity(timm_model, model, x, f"in_chans={channels}", record_diff)


REGISTER_MODELS = {
    "vit": ("vit_tiny_patch16_224", {}),
    "vit_no_embed_class": ("vit_tiny_patch16_224", {"no_embed_class": True}),
    "vit_avg": ("vit_small_patch16_224", {"global_pool": "avg", "no_embed_class": True}),
    "deit": ("deit_tiny_patch16_224", {}),
    "deit3": ("deit3_small_patch16_224", {}),
    "clip": ("vit_base_patch16_clip_224", {"num_classes": 0}),
    "dinov2": ("vit_small_patch14_dinov2", {"img_size": 70}),
}


@pytest.mark.parametrize("variant", list(REGISTER_MODELS))
def test_register_tokens_on_any_family(variant, record_diff):
    name, kwargs = REGISTER_MODELS[variant]
    timm_model = make_timm(name, reg_tokens=3, **kwargs)
    model = HookedViT.from_timm(timm_model)
    cfg = model.cfg
    assert cfg.family == variant.split("_")[0]
    assert cfg.n_register_tokens == 3
    assert cfg.n_prefix_tokens == 4
    assert cfg.pos_embed_on_prefix == (not timm_model.no_embed_class)
    assert model.grid.n_prefix_tokens == 4  # patch i is token 4 + i
    _check_parity(timm_model, model, images_for(model), f"reg_tokens=3 {variant}", record_diff)


def test_res_post_block_is_refused_naming_block_fn_and_why():
    timm = get_timm()
    vt = timm.models.vision_transformer
    module = vt.VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                                  block_fn=vt.ResPostBlock).eval()
    with pytest.raises(UnsupportedModelError, match=r"block_fn=ResPostBlock.*post-norm"):
        HookedViT.from_timm(module)


def test_dynamic_img_size_is_refused_with_what_to_do():
    with pytest.raises(UnsupportedModelError, match=r"dynamic_img_size=True.*dynamic_img_size=False"):
        HookedViT.from_timm("vit_tiny_patch16_224", depth=1, dynamic_img_size=True)
    # the same weights without the option convert: the message's advice works
    assert HookedViT.from_timm("vit_tiny_patch16_224", depth=1, dynamic_img_size=False).cfg.n_layers == 1


def test_siglip_attention_pool_is_refused_naming_global_pool_map():
    with pytest.raises(UnsupportedModelError, match=r"global_pool='map'.*attention pooling"):
        HookedViT.from_timm("vit_base_patch16_siglip_224", depth=1)


def test_siglip_with_mean_pooling_converts(record_diff):
    """The advice of the refusal above: the same SigLIP tower with ``global_pool='avg'`` converts."""
    timm_model = make_timm("vit_base_patch16_siglip_224", global_pool="avg", num_classes=7)
    model = HookedViT.from_timm(timm_model)
    assert model.cfg.pooling == "avg" and not model.cfg.class_token
    _check_parity(timm_model, model, images_for(model), "siglip global_pool='avg'", record_diff)
    with torch.no_grad():
        assert model(images_for(model)).shape == (2, 7)

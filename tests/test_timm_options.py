"""timm options users' checkpoints have, on named timm models: converted with parity, or refused by name.

Converted (parity with timm in fp32, atol 1e-5, on the output and every residual stream, plain and
cached forward, by `test_parity_timm._check_parity`): ``in_chans`` 1 and 4 (with one mean/std value
per channel), register tokens (``reg_tokens=``) on every family that timm builds with them, with and
without ``no_embed_class``. Refused with an `UnsupportedModelError` that names the option and says
why: ``block_fn=ResPostBlock`` (post-norm), ``dynamic_img_pad=True`` and ``global_pool='prr'``.
``dynamic_img_size=True`` converts: `test_dynamic_img_size.py`.
SigLIP's attention pool (``global_pool='map'``) converts with parity, its hook points checked against
the pool's own attention. The max abs differences are listed in the pytest summary.
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


def test_dynamic_img_pad_is_refused_naming_it():
    with pytest.raises(UnsupportedModelError, match=r"dynamic_img_pad=True"):
        HookedViT.from_timm("vit_tiny_patch16_224", depth=1, img_size=32, dynamic_img_pad=True)


@pytest.mark.parametrize("kwargs", [{}, {"num_classes": 7}, {"reg_tokens": 2, "class_token": True},
                                    {"fc_norm": True, "num_classes": 3}],
                         ids=["headless", "head", "prefix_tokens", "fc_norm"])
def test_siglip_attention_pool_converts_with_parity(kwargs, record_diff):
    timm_model = make_timm("vit_base_patch16_siglip_224", img_size=64, **kwargs)
    assert timm_model.global_pool == "map"
    model = HookedViT.from_timm(timm_model)
    assert model.cfg.pooling == "map" and model.attn_pool is not None
    _check_parity(timm_model, model, images_for(model), f"siglip map {kwargs}", record_diff)


def test_attention_pool_hooks_are_the_pools_own_attention():
    """``attn_pool.hook_pattern`` is the pool's softmax over the patch tokens, recomputed from timm's
    modules, and patching it changes the output (its return value is used)."""
    timm_model = make_timm("vit_base_patch16_siglip_224", img_size=64, reg_tokens=1, class_token=True,
                           num_classes=5)
    model = HookedViT.from_timm(timm_model)
    x = images_for(model)
    _, cache = model.run_with_cache(x)
    pattern = cache["attn_pool.hook_pattern"]  # [batch, head, 1, patches]
    heads, patches = model.cfg.n_heads, model.cfg.n_patches
    assert pattern.shape == (2, heads, 1, patches)
    pool = timm_model.attn_pool
    with torch.no_grad():
        tokens = timm_model.forward_features(x)[:, timm_model.num_prefix_tokens:]
        q = pool.q(pool.latent).reshape(1, heads, 1, -1)
        k = pool.kv(tokens)[..., : model.cfg.d_model].reshape(2, patches, heads, -1).transpose(1, 2)
        expected = ((q * pool.scale) @ k.transpose(-2, -1)).softmax(-1)
    torch.testing.assert_close(pattern, expected, atol=1e-6, rtol=0)
    assert {"attn_pool.hook_q", "attn_pool.hook_z", "attn_pool.hook_attn_out", "attn_pool.mlp.hook_post",
            "attn_pool.hook_mlp_out"} <= set(cache.cache_dict)
    uniform = model.run_with_hooks(x, fwd_hooks=[("attn_pool.hook_pattern", lambda p, hook: torch.ones_like(p) / patches)])
    assert (uniform - model(x)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="attention-pooled"):  # no residual direction through the pool
        model.tokens_to_residual_directions(0)


def test_prr_pool_is_refused_naming_global_pool():
    with pytest.raises(UnsupportedModelError, match=r"global_pool='prr'"):
        HookedViT.from_timm("vit_tiny_patch16_224", depth=1, global_pool="prr")


def test_siglip_with_mean_pooling_converts(record_diff):
    """The advice of the refusal above: the same SigLIP tower with ``global_pool='avg'`` converts."""
    timm_model = make_timm("vit_base_patch16_siglip_224", global_pool="avg", num_classes=7)
    model = HookedViT.from_timm(timm_model)
    assert model.cfg.pooling == "avg" and not model.cfg.class_token
    _check_parity(timm_model, model, images_for(model), "siglip global_pool='avg'", record_diff)
    with torch.no_grad():
        assert model(images_for(model)).shape == (2, 7)

"""HookedViT reproduces timm numerically, family by family, on perturbed random-init weights.

Compared in fp32 with atol 1e-5: the output (logits, or the pooled feature of a headless model), the
input of block 0 and the output of every block (``blocks.{l}.hook_resid_post`` against a torch forward
hook on timm's ``model.blocks[l]``), both in a plain forward (fused attention, ``F.layer_norm``) and
under ``run_with_cache`` (explicit softmax and LayerNorm formula, because every hook is attached).
The max abs differences are printed (``-s``) and listed in the terminal summary.
"""

from __future__ import annotations

import pytest
import torch

from conftest import VARIANT_IDS, VARIANTS, images_for, make_timm

ATOL = 1e-5

# Structure each variant must have been converted to (beyond cfg.family).
EXPECTED_CFG = {
    "vit": dict(pooling="token", pre_norm=False, layer_scale=False, n_prefix_tokens=1),
    "vit_avg": dict(pooling="avg", pooled_norm=True, final_norm=False, n_prefix_tokens=1),
    "vit_prenorm": dict(pre_norm=True, pooling="token", n_prefix_tokens=1),
    "clip_b32": dict(pre_norm=True, n_classes=1000, patch_size=(32, 32)),
    "clip_b16": dict(pre_norm=True, n_classes=1000, patch_size=(16, 16)),
    "clip_b16_headless": dict(pre_norm=True, n_classes=0),
    "clip_quickgelu": dict(pre_norm=True, act_fn="quick_gelu"),
    "deit": dict(distilled=False, n_prefix_tokens=1),
    "deit_distilled": dict(distilled=True, pooling="token_dist", n_prefix_tokens=2),
    "deit3": dict(layer_scale=True, pos_embed_on_prefix=False, n_prefix_tokens=1),
    "dinov2": dict(layer_scale=True, patch_size=(14, 14), grid_size=(16, 16), n_prefix_tokens=1),
    "dinov2_reg4": dict(layer_scale=True, n_register_tokens=4, pos_embed_on_prefix=False, n_prefix_tokens=5),
}


def _timm_run(timm_model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """timm's output, the input of block 0 (key 'in') and the output of every block (key l)."""
    captured: dict = {}
    handles = [
        timm_model.blocks[0].register_forward_pre_hook(lambda m, args: captured.__setitem__("in", args[0].clone()))
    ]
    for layer, block in enumerate(timm_model.blocks):
        handles.append(
            block.register_forward_hook(lambda m, args, out, layer=layer: captured.__setitem__(layer, out.clone()))
        )
    try:
        with torch.no_grad():
            out = timm_model(x)
    finally:
        for h in handles:
            h.remove()
    return out, captured


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype == torch.float32
    return (a - b).abs().max().item()


def _check_parity(timm_model, model, x, label, record_diff):
    n = model.cfg.n_layers
    assert n == len(timm_model.blocks)
    ref, ref_resid = _timm_run(timm_model, x)
    # Non-vacuity: the perturbed model separates the two inputs and has non-trivial outputs.
    assert (ref[0] - ref[1]).abs().max() > 1e-2
    assert ref.abs().max() > 0.1

    resid_names = {"blocks.0.hook_resid_pre"} | {f"blocks.{l}.hook_resid_post" for l in range(n)}
    with torch.no_grad():
        plain = model(x)
        # Caching only resid hooks keeps the fused attention and F.layer_norm path.
        plain_again, resid_cache = model.run_with_cache(x, names_filter=lambda name: name in resid_names)
        cached_out, cache = model.run_with_cache(x)
    assert torch.equal(plain, plain_again)

    results = {}
    for mode, out, c in (("plain", plain, resid_cache), ("cached", cached_out, cache)):
        logit_diff = _max_diff(out, ref)
        resid_diff = max(
            [_max_diff(c["blocks.0.hook_resid_pre"], ref_resid["in"])]
            + [_max_diff(c[f"blocks.{l}.hook_resid_post"], ref_resid[l]) for l in range(n)]
        )
        record_diff(label, f"{mode} logits", logit_diff)
        record_diff(label, f"{mode} resid", resid_diff)
        results[mode] = (logit_diff, resid_diff)
    for mode, (logit_diff, resid_diff) in results.items():
        assert logit_diff <= ATOL, f"{label} {mode}: logits differ from timm by {logit_diff:.3e}"
        assert resid_diff <= ATOL, f"{label} {mode}: residual stream differs from timm by {resid_diff:.3e}"
    # The cache really holds the explicit-attention values (not the fused path's).
    assert "blocks.0.attn.hook_pattern" in cache.cache_dict and "blocks.0.ln1.hook_scale" in cache.cache_dict


@pytest.mark.parametrize("variant", VARIANT_IDS)
def test_parity_with_timm(variant, pair, record_diff):
    timm_model, model = pair(variant)
    name, _, family = VARIANTS[variant]
    assert model.cfg.family == family
    assert model.cfg.source == name
    for key, value in EXPECTED_CFG[variant].items():
        assert getattr(model.cfg, key) == value, (variant, key, getattr(model.cfg, key), value)
    expected_out = timm_model.num_classes or timm_model.num_features
    assert model.cfg.n_classes == timm_model.num_classes
    x = images_for(model)
    _check_parity(timm_model, model, x, variant, record_diff)
    with torch.no_grad():
        assert model(x).shape == (2, expected_out)


def test_pooled_return_type_matches_timm_pre_logits(pair):
    """return_type='pooled' is timm's pre-logits feature: after fc_norm for mean pooling, the mean of
    the CLS and distillation tokens for distilled DeiT."""
    for variant in ("vit", "vit_avg", "deit3", "deit_distilled", "clip_b32"):
        timm_model, model = pair(variant)
        x = images_for(model)
        with torch.no_grad():
            ref = timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
            ours = model(x, return_type="pooled")
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_parity_full_depth_vit_small(record_diff):
    from caap_lens import HookedViT

    timm_model = make_timm("vit_small_patch16_224", seed=99, depth=None)
    assert len(timm_model.blocks) == 12
    model = HookedViT.from_timm(timm_model)
    assert model.cfg.n_layers == 12 and model.cfg.family == "vit"
    _check_parity(timm_model, model, images_for(model), "vit_small_full_depth", record_diff)

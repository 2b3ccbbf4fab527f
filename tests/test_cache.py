"""run_with_cache gives a TransformerLens ActivationCache whose analysis methods add up on a ViT, and the
TransformerLens-shaped weight views (W_Q, b_Q, ..., W_O, W_in, W_out, W_U) reproduce the cached values."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.ActivationCache import ActivationCache

from conftest import cache_of, images_for

ATOL = 1e-4


def _close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def test_run_with_cache_returns_activation_cache(pair):
    _, model = pair("vit")
    out, cache = cache_of(model)
    assert isinstance(cache, ActivationCache)
    assert cache.model is model
    assert set(cache.keys()) == set(model.hook_dict) - {f"blocks.{l}.attn.hook_result" for l in range(model.cfg.n_layers)}
    with torch.no_grad():
        assert torch.equal(out, cache["hook_logits"])
    for layer in range(model.cfg.n_layers):
        for short in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"):
            assert torch.equal(cache[short, layer], cache[f"blocks.{layer}.hook_{short}"])
        assert torch.equal(cache["pattern", layer], cache[f"blocks.{layer}.attn.hook_pattern"])
        assert torch.equal(cache["scale", layer, "ln1"], cache[f"blocks.{layer}.ln1.hook_scale"])
    n = model.cfg.n_layers
    assert torch.equal(cache["resid_post", -1], cache[f"blocks.{n - 1}.hook_resid_post"])
    # remove_batch_dim on a batch of one drops the batch axis.
    _, single = cache_of(model, batch=1)
    single.remove_batch_dim()
    assert single["resid_pre", 0].shape == (model.cfg.n_tokens, model.cfg.d_model)


@pytest.mark.parametrize("variant", ["vit", "deit3", "deit_distilled", "dinov2_reg4"])
def test_residual_adds_up(variant, pair):
    """resid_mid = resid_pre + attn_out, resid_post = resid_mid + mlp_out, and embed + pos_embed is the
    input of block 0 (models without ln_pre)."""
    _, model = pair(variant)
    assert not model.cfg.pre_norm
    _, cache = cache_of(model)
    _close(cache["hook_embed"] + cache["hook_pos_embed"], cache["resid_pre", 0], atol=1e-6)
    for layer in range(model.cfg.n_layers):
        _close(cache["resid_pre", layer] + cache["attn_out", layer], cache["resid_mid", layer], atol=1e-6)
        _close(cache["resid_mid", layer] + cache["mlp_out", layer], cache["resid_post", layer], atol=1e-6)
        if layer:
            assert torch.equal(cache["resid_post", layer - 1], cache["resid_pre", layer])


@pytest.mark.parametrize("variant", ["vit", "deit3", "dinov2_reg4"])
def test_decompose_and_accumulated_resid(variant, pair):
    _, model = pair(variant)
    n = model.cfg.n_layers
    _, cache = cache_of(model)
    final = cache["resid_post", n - 1]

    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "pos_embed"] + [f"{l}_{c}_out" for l in range(n) for c in ("attn", "mlp")]
    assert parts.shape == (2 + 2 * n, *final.shape)
    _close(parts.sum(0), final)
    for layer in range(n + 1):
        expected = cache["resid_pre", layer] if layer < n else final
        _close(cache.decompose_resid(layer=layer).sum(0), expected)
    assert cache.decompose_resid(incl_embeds=False).shape[0] == 2 * n

    acc, labels = cache.accumulated_resid(return_labels=True)
    assert labels == [f"{l}_pre" for l in range(n)] + ["final_post"]
    assert acc.shape == (n + 1, *final.shape)
    for layer in range(n):
        assert torch.equal(acc[layer], cache["resid_pre", layer])
    assert torch.equal(acc[n], final)


@pytest.mark.parametrize("variant", ["vit", "deit3", "clip_b32"])
@pytest.mark.parametrize("attn_result", [True, False], ids=["cached_result", "recomputed_from_z"])
def test_stack_head_results_sum_to_attn_out(variant, attn_result, pair):
    _, model = pair(variant)
    cfg = model.cfg
    n = cfg.n_layers
    _, cache = cache_of(model, attn_result=attn_result)
    assert ("blocks.0.attn.hook_result" in cache.cache_dict) == attn_result
    heads, labels = cache.stack_head_results(layer=n, return_labels=True)
    assert labels == [f"L{l}H{h}" for l in range(n) for h in range(cfg.n_heads)]
    assert heads.shape == (n * cfg.n_heads, 2, cfg.n_tokens, cfg.d_model)
    b_O = sum(model.blocks[l].attn.b_O for l in range(n))
    attn_out = sum(cache["attn_out", l] for l in range(n))
    _close(heads.sum(0) + b_O, attn_out)
    # Per layer too, and each head's result is its z through its slice of W_O (layer scale included).
    for layer in range(n):
        attn = model.blocks[layer].attn
        layer_heads = heads[layer * cfg.n_heads : (layer + 1) * cfg.n_heads]
        _close(layer_heads.sum(0) + attn.b_O, cache["attn_out", layer])
        z = cache["z", layer]
        for h in (0, cfg.n_heads - 1):
            _close(layer_heads[h], z[:, :, h] @ attn.W_O[h])
    if cfg.layer_scale:
        # W_O without the layer scale would not add up: the scale is not vacuous.
        attn = model.blocks[0].attn
        raw = attn.proj.weight.T.reshape(cfg.n_heads, cfg.d_head, cfg.d_model)
        unscaled = torch.einsum("bphd,hdm->bpm", cache["z", 0], raw) + attn.proj.bias
        assert (unscaled - cache["attn_out", 0]).abs().max() > 1e-2


@pytest.mark.parametrize("variant", ["vit", "deit3"])
def test_direct_logit_attribution_sums_to_logits(variant, pair):
    _, model = pair(variant)
    cfg = model.cfg
    assert cfg.pooling == "token" and cfg.final_norm and not cfg.pooled_norm and cfg.n_classes
    n = cfg.n_layers
    logits, cache = cache_of(model)
    stack = cache.apply_ln_to_stack(cache.decompose_resid(layer=n), layer=n)[:, :, 0]  # CLS position
    per_component = stack @ (model.ln_final.w[:, None] * model.W_U)  # [component, batch, class]
    assert per_component.shape == (2 + 2 * n, 2, cfg.n_classes)
    total = per_component.sum(0) + model.ln_final.b @ model.W_U + model.b_U
    _close(total, logits)
    # Attribution is not trivially carried by one term.
    assert (per_component.abs().amax(dim=(1, 2)) > 1e-3).sum() >= 3


@pytest.mark.parametrize("variant", ["vit", "deit3", "clip_b32"])
def test_weight_views_reproduce_cached_activations(variant, pair):
    _, model = pair(variant)
    cfg = model.cfg
    _, cache = cache_of(model)
    for layer in range(cfg.n_layers):
        block = model.blocks[layer]
        attn, mlp = block.attn, block.mlp
        assert attn.W_Q.shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
        assert attn.W_O.shape == (cfg.n_heads, cfg.d_head, cfg.d_model)
        assert attn.b_Q.shape == (cfg.n_heads, cfg.d_head)
        ln1 = cache[f"blocks.{layer}.ln1.hook_normalized"]
        for name, W, b in (("q", attn.W_Q, attn.b_Q), ("k", attn.W_K, attn.b_K), ("v", attn.W_V, attn.b_V)):
            recomputed = torch.einsum("bpd,hde->bphe", ln1, W) + b
            _close(recomputed, cache[name, layer])
        scores = torch.einsum("bqhe,bkhe->bhqk", cache["q", layer], cache["k", layer]) / cfg.d_head**0.5
        _close(scores, cache["attn_scores", layer])
        z = torch.einsum("bhqk,bkhe->bqhe", cache["pattern", layer], cache["v", layer])
        _close(z, cache["z", layer])
        attn_out = torch.einsum("bphe,hed->bpd", cache["z", layer], attn.W_O) + attn.b_O
        _close(attn_out, cache["attn_out", layer])
        ln2 = cache[f"blocks.{layer}.ln2.hook_normalized"]
        _close(ln2 @ mlp.W_in + mlp.b_in, cache["pre", layer])
        _close(cache["post", layer] @ mlp.W_out + mlp.b_out, cache["mlp_out", layer])
        # LayerNorm hooks: normalized = (x - mean) / scale * w + b.
        x = cache["resid_pre", layer]
        expected = (x - x.mean(-1, keepdim=True)) / cache["scale", layer, "ln1"] * block.ln1.w + block.ln1.b
        _close(expected, ln1)
    # Embedding views: W_E maps flattened patches, W_pos is the position table.
    x = images_for(model)
    ph, pw = cfg.patch_size
    patches = x.unfold(2, ph, ph).unfold(3, pw, pw)  # [b, c, gh, gw, ph, pw]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(2, cfg.n_patches, -1)
    embed = patches @ model.W_E + model.embed.proj.bias
    _close(embed, cache["hook_embed"][:, cfg.n_prefix_tokens :])
    assert model.W_pos.shape == (cfg.n_pos_embed, cfg.d_model)
    if cfg.n_classes:
        _close(cache["hook_pooled"] @ model.W_U + model.b_U, cache["hook_logits"])

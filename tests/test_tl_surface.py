"""TransformerLens's own patching helpers and cache methods run on HookedViT and give the right numbers.

The models are small perturbed random-init ViTs (`conftest.tiny_vit`) whose LayerNorm weights and biases
are perturbed further (weights U(0.5, 1.5), biases N(0, 0.3)), so a decomposition or a logit attribution
that ignored the norms' affine maps, or a missing bias, would be off by far more than the tolerances.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformer_lens import patching
from transformer_lens.model_protocol import TransformerLensModel, TransformerLensModelWithWeights

from caap_lens import caap
from caap_lens.model.layer_norm import LayerNorm
from caap_lens.model.tl_surface import ViTActivationCache
from caap_lens.patching import patch_hooks
from conftest import images_for, tiny_vit

ATOL = 1e-5
# id -> (tiny_vit kwargs): CLS-pooled, mean-pooled with a norm after pooling (timm's default fc_norm),
# mean-pooled with a per-token final norm, CLS-pooled with layer scale (DeiT3).
MODELS = {
    "cls": {},
    "avg_fc_norm": {"global_pool": "avg"},
    "avg_token_norm": {"global_pool": "avg", "fc_norm": False},
    "deit3": {"name": "deit3_small_patch16_224"},
}
_CACHE: dict[str, object] = {}


def _perturbed(kind: str):
    """A copy of a tiny ViT whose LayerNorms are far from the identity."""
    if kind not in _CACHE:
        kwargs = dict(MODELS[kind])
        model = copy.deepcopy(tiny_vit(kwargs.pop("name", "vit_tiny_patch16_224"), seed=71, depth=2, img_size=32,
                                       class_names=[f"class {i}" for i in range(10)], **kwargs))
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, LayerNorm):
                    module.w.copy_(torch.rand(module.w.shape, generator=gen) + 0.5)
                    module.b.copy_(torch.randn(module.b.shape, generator=gen) * 0.3)
        _CACHE[kind] = model
    model = _CACHE[kind]
    model.reset_hooks(including_permanent=True)
    model.set_use_attn_result(False)
    return model


def _run(model, batch: int = 2):
    x = images_for(model, batch=batch)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
    return x, logits, cache


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _report(what: str, kind: str, diff: float) -> None:
    print(f"[tl surface] {kind:<15} {what:<40} max abs diff {diff:.2e}")


def test_cfg_fields_follow_the_model():
    model = _perturbed("cls")
    cfg = model.cfg
    assert cfg.device == "cpu" and cfg.n_key_value_heads is None
    moved = copy.deepcopy(model).to("meta")
    assert moved.cfg.device == "meta" and model.cfg.device == "cpu"  # each model keeps its own cfg truthful
    assert "device" not in cfg.to_dict() and moved.cfg == cfg  # runtime state: not saved, not compared
    # TransformerLens's structural protocols for its analysis tools are met.
    assert isinstance(model, TransformerLensModel) and isinstance(model, TransformerLensModelWithWeights)


def test_stacked_weights_in_transformer_lens_shapes():
    model = _perturbed("deit3")
    cfg = model.cfg
    n, h, d, e, m = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp
    shapes = {"W_Q": (n, h, d, e), "W_K": (n, h, d, e), "W_V": (n, h, d, e), "W_O": (n, h, e, d),
              "b_Q": (n, h, e), "b_K": (n, h, e), "b_V": (n, h, e), "b_O": (n, d),
              "W_in": (n, d, m), "b_in": (n, m), "W_out": (n, m, d), "b_out": (n, d)}
    for name, shape in shapes.items():
        stacked = getattr(model, name)
        assert stacked.shape == shape, name
        part = model.blocks[1].attn if name[2:] in ("Q", "K", "V", "O") else model.blocks[1].mlp
        assert torch.equal(stacked[1], getattr(part, name)), name
    # The stacks reproduce the run: queries from ln1's output, attn_out from z (layer scale included).
    _, _, cache = _run(model)
    for layer in range(n):
        q = torch.einsum("bpd,hde->bphe", cache[f"blocks.{layer}.ln1.hook_normalized"], model.W_Q[layer])
        torch.testing.assert_close(q + model.b_Q[layer], cache["q", layer], atol=ATOL, rtol=0)
        out = torch.einsum("bphe,hed->bpd", cache["z", layer], model.W_O[layer]) + model.b_O[layer]
        torch.testing.assert_close(out, cache["attn_out", layer], atol=ATOL, rtol=0)
        mlp = cache["post", layer] @ model.W_out[layer] + model.b_out[layer]
        torch.testing.assert_close(mlp, cache["mlp_out", layer], atol=ATOL, rtol=0)


def test_accumulated_bias():
    model = _perturbed("deit3")
    b_O, b_out = model.b_O, model.b_out
    assert torch.equal(model.accumulated_bias(0), torch.zeros(model.cfg.d_model))
    torch.testing.assert_close(model.accumulated_bias(2), b_O.sum(0) + b_out.sum(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.accumulated_bias(2, include_mlp_biases=False), b_O.sum(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.accumulated_bias(1, mlp_input=True), b_O[0] + b_out[0] + b_O[1],
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="outside"):
        model.accumulated_bias(2, mlp_input=True)


@pytest.mark.parametrize("kind", list(MODELS))
def test_decompositions_sum_to_the_residual_stream(kind):
    model = _perturbed(kind)
    n = model.cfg.n_layers
    _, _, cache = _run(model)
    assert isinstance(cache, ViTActivationCache)
    final = cache["resid_post", n - 1]
    parts = cache.decompose_resid()
    diff = _maxdiff(parts.sum(0), final)
    _report("decompose_resid", kind, diff)
    assert diff < ATOL
    # get_full_resid_decomposition: heads, neurons (or MLP layers), embed, pos_embed, biases.
    for layer, mlp_input, target in ((None, False, final), (1, False, cache["resid_pre", 1]),
                                     (1, True, cache["resid_mid", 1])):
        for expand in (True, False):
            full, labels = cache.get_full_resid_decomposition(layer=layer, mlp_input=mlp_input,
                                                              expand_neurons=expand, return_labels=True)
            assert labels[-3:] == ["embed", "pos_embed", "bias"] and len(labels) == full.shape[0]
            diff = _maxdiff(full.sum(0), target)
            _report(f"full decomposition layer={layer} mlp_input={mlp_input} neurons={expand}", kind, diff)
            assert diff < ATOL
    # The bias row matters: without it the parts do not add up.
    full = cache.get_full_resid_decomposition()
    assert _maxdiff(full[:-1].sum(0), final) > 1e-3


def test_pre_norm_decomposition_leaves_out_ln_pre():
    """What does not apply: on a pre-norm model (CLIP's ln_pre) the embed rows are taken before ln_pre,
    so the parts sum to the residual stream only with ln_pre's change of the embeddings added back."""
    model = tiny_vit(seed=71, depth=2, img_size=32, pre_norm=True)
    _, _, cache = _run(model)
    final = cache["resid_post", -1]
    parts = cache.decompose_resid()
    ln_pre_change = cache["resid_pre", 0] - cache["hook_embed"] - cache["hook_pos_embed"]
    assert _maxdiff(parts.sum(0), final) > 1e-2
    assert _maxdiff(parts.sum(0) + ln_pre_change, final) < ATOL


@pytest.mark.parametrize("kind", ["cls", "deit3"])
def test_stack_head_results_sum_to_attn_out(kind):
    model = _perturbed(kind)
    cfg = model.cfg
    _, _, cache = _run(model)
    heads = cache.stack_head_results()  # recomputed from z with W_O
    assert heads.shape == (cfg.n_layers * cfg.n_heads, 2, cfg.n_tokens, cfg.d_model)
    for layer in range(cfg.n_layers):
        layer_heads = heads[layer * cfg.n_heads : (layer + 1) * cfg.n_heads]
        diff = _maxdiff(layer_heads.sum(0) + model.b_O[layer], cache["attn_out", layer])
        _report(f"stack_head_results layer {layer}", kind, diff)
        assert diff < ATOL


def _readout_constant(model, targets):
    norm = model.ln_final if model.ln_final is not None else model.ln_pooled
    return (norm.b @ model.W_U)[targets] + model.b_U[targets]


@pytest.mark.parametrize("kind", list(MODELS))
def test_logit_attrs_sum_to_the_logit(kind):
    """Per component, logit_attrs; summed (pooled as the model pools) plus the final norm's and the head's
    biases, the logit of the target."""
    model = _perturbed(kind)
    cfg = model.cfg
    _, logits, cache = _run(model)
    targets = torch.tensor([3, 7])
    expected = logits[torch.arange(2), targets] - _readout_constant(model, targets)
    stacks = {"decompose_resid": cache.decompose_resid(), "full decomposition": cache.get_full_resid_decomposition()}
    for what, stack in stacks.items():
        if cfg.pooled_norm:  # normalised after pooling: pool the stack first, then the pooled norm's scale
            attrs = cache.logit_attrs(stack[:, :, cfg.n_prefix_tokens :].mean(2), targets)
            total = attrs.sum(0)
        else:
            attrs = cache.logit_attrs(stack, targets)  # [component, batch, pos]
            total = attrs[:, :, 0].sum(0) if cfg.pooling == "token" else attrs[:, :, cfg.n_prefix_tokens :].mean(2).sum(0)
        diff = _maxdiff(total, expected)
        _report(f"logit_attrs ({what})", kind, diff)
        assert diff < ATOL
    # Logit differences and class names work the same way.
    stack = stacks["decompose_resid"]
    if cfg.pooling == "token":
        cls_stack = cache.decompose_resid(pos_slice=0)  # [component, batch, d_model]: the CLS token only
        diff_attrs = cache.logit_attrs(cls_stack, "class 3", incorrect_tokens="class 5", pos_slice=0)
        want = logits[:, 3] - logits[:, 5] - (_readout_constant(model, 3) - _readout_constant(model, 5))
        assert _maxdiff(diff_attrs.sum(0), want) < ATOL
    # The final norm's weight must be folded into the direction: the raw head row does not add up.
    raw = model.tokens_to_residual_directions(targets, fold_norm=False)
    scaled = cache.apply_ln_to_stack(stack[:, :, cfg.n_prefix_tokens :].mean(2) if cfg.pooled_norm else stack)
    raw_total = (scaled * (raw if cfg.pooled_norm else raw[:, None])).sum(-1)
    if not cfg.pooled_norm:
        raw_total = raw_total[:, :, 0] if cfg.pooling == "token" else raw_total[:, :, cfg.n_prefix_tokens :].mean(2)
    assert _maxdiff(raw_total.sum(0), expected) > 1e-2


def test_pooled_norm_refuses_per_token_stacks():
    model = _perturbed("avg_fc_norm")
    _, _, cache = _run(model)
    with pytest.raises(ValueError, match="normalises after pooling"):
        cache.logit_attrs(cache.decompose_resid(), 3)
    with pytest.raises(ValueError, match="normalises after pooling"):
        cache.accumulated_resid(apply_ln=True)
    with pytest.raises(ValueError, match="normalises after pooling"):
        cache.logit_attrs(cache.decompose_resid(pos_slice=0), 3, pos_slice=0)
    # Before the final layer the blocks' own per-token norms apply as in TransformerLens.
    assert cache.decompose_resid(layer=1, apply_ln=True).shape[-2] == model.cfg.n_tokens


@pytest.mark.parametrize("kind", ["cls", "avg_fc_norm"])
def test_accumulated_resid(kind):
    model = _perturbed(kind)
    cfg = model.cfg
    _, logits, cache = _run(model)
    acc, labels = cache.accumulated_resid(return_labels=True, incl_mid=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    assert torch.equal(acc[2], cache["resid_pre", 1]) and torch.equal(acc[-1], cache["resid_post", -1])
    if cfg.pooled_norm:  # the logit lens on pooled streams: the pooled norm recomputed per entry
        pooled = cache.accumulated_resid()[:, :, cfg.n_prefix_tokens :].mean(2)
        lens = cache.apply_ln_to_stack(pooled, recompute_ln=True) @ model.W_U + model.b_U
    else:
        lens = cache.accumulated_resid(apply_ln=True)[:, :, 0] @ model.W_U + model.b_U
    diff = _maxdiff(lens[-1], logits)
    _report("accumulated_resid logit lens, final entry", kind, diff)
    assert diff < ATOL and _maxdiff(lens[0], logits) > 1e-2


def test_tokens_to_residual_directions():
    model = _perturbed("cls")
    d = model.cfg.d_model
    folded = model.head.weight * model.ln_final.w
    assert torch.equal(model.tokens_to_residual_directions(4), folded[4])
    assert torch.equal(model.tokens_to_residual_directions("class 4"), folded[4])
    assert torch.equal(model.tokens_to_residual_directions(4, fold_norm=False), model.head.weight[4])
    assert model.tokens_to_residual_directions(torch.tensor(4)).shape == (d,)
    assert model.tokens_to_residual_directions(torch.tensor([[1, 2, 3]])).shape == (1, 3, d)
    with pytest.raises(ValueError, match=r"outside|lie in"):
        model.tokens_to_residual_directions(torch.tensor([10]))
    with pytest.raises(ValueError, match="unknown class"):
        model.to_single_token("zebra")
    headless = tiny_vit(seed=71, depth=1, img_size=32, num_classes=0)
    with pytest.raises(ValueError, match="headless"):
        headless.tokens_to_residual_directions(0)
    distilled = tiny_vit("deit_tiny_distilled_patch16_224", seed=71, depth=1, img_size=32)
    with pytest.raises(ValueError, match="distilled"):
        distilled.tokens_to_residual_directions(0)


@pytest.mark.parametrize("kind", ["cls", "avg_fc_norm"])
def test_get_act_patch_resid_pre_equals_caap(kind):
    """TransformerLens's patching of resid_pre at (layer, pos), corrupted = context image, clean = source,
    equals CAAP's single-layer window (layer, layer + 1) at the patch tokens, and caap_lens's own
    patching hooks at the prefix tokens."""
    model = _perturbed(kind)
    cfg = model.cfg
    x = images_for(model, batch=2, seed=99)
    source, context = x[:1], x[1:]
    target = 6
    with torch.no_grad():
        _, clean = model.run_with_cache(source)
        tl = patching.get_act_patch_resid_pre(model, context, clean, lambda logits: logits[0, target],
                                              index_axis_names=None, index_df=model.patching_index("layer", "pos"))
    tl = tl.reshape(cfg.n_layers, cfg.n_tokens)
    assert tl[:, cfg.n_prefix_tokens :].std() > 1e-3  # the patches differ: a comparison that can fail
    for layer in range(cfg.n_layers):
        result = caap(model, source, target=target, layers=(layer, layer + 1), context=context, hook="resid_pre",
                      score="logit", relative=False)
        diff = _maxdiff(tl[layer, cfg.n_prefix_tokens :], result.map[0].flatten())
        _report(f"get_act_patch_resid_pre vs caap, layer {layer}", kind, diff)
        assert diff < ATOL
        mask = torch.zeros(1, cfg.n_tokens, dtype=torch.bool)
        mask[0, 0] = True  # the CLS token
        with torch.no_grad():
            own = model.run_with_hooks(context, fwd_hooks=patch_hooks(clean, "resid_pre", [layer], mask))
        assert _maxdiff(tl[layer, 0], own[0, target]) < ATOL


def test_get_act_patch_attn_head_out_all_pos_equals_patch_hooks():
    """Patching one head's z at every position: TransformerLens's loop equals one batched run of
    caap_lens's hooks (one row per head)."""
    model = _perturbed("deit3")
    cfg = model.cfg
    x = images_for(model, batch=2, seed=98)
    source, context = x[:1], x[1:]
    target = 2
    with torch.no_grad():
        _, clean = model.run_with_cache(source)
        tl = patching.get_act_patch_attn_head_out_all_pos(model, context, clean, lambda logits: logits[0, target])
        assert tl.shape == (cfg.n_layers, cfg.n_heads)
        mask = torch.zeros(cfg.n_heads, cfg.n_tokens, cfg.n_heads, dtype=torch.bool)
        mask[torch.arange(cfg.n_heads), :, torch.arange(cfg.n_heads)] = True  # row h: head h, every token
        rows = context.expand(cfg.n_heads, -1, -1, -1)
        own = torch.stack([model.run_with_hooks(rows, fwd_hooks=patch_hooks(clean, "z", [layer], mask,
                                                                             torch.zeros(cfg.n_heads, dtype=torch.long)))
                           [:, target] for layer in range(cfg.n_layers)])
    assert tl.std() > 1e-3
    diff = _maxdiff(tl, own)
    _report("get_act_patch_attn_head_out_all_pos", "deit3", diff)
    assert diff < ATOL

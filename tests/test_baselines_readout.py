"""Attention baselines read the rows the model itself reads; methods named for what they are (issue 11).

Defect 1: the attention baselines read the CLS row whenever a prefix token existed, but a model with a
CLS token that pools the mean of its patch tokens (the bundled model) never uses that row: the
gradient of its output on it is exactly 0. `HookedViTConfig.readout_rows` is the one description of
the rows the pooling reads; these tests check it against the model's own gradients and check that
every attention method reads those rows. Defect 3: the renamed methods and the added attention
Grad-CAM, each against an independent computation from TransformerLens hooks.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from caap_lens.baselines import attribute, gradcam, transformer_attribution
from conftest import images_for, one_layer_rollout, tiny_vit


MODELS = {  # kind -> conftest.tiny_vit arguments
    # CLS token present, output = mean of the patch tokens (as the bundled model)
    "avg": dict(seed=21, depth=2, img_size=32, global_pool="avg"),
    "token": dict(seed=22, depth=2, img_size=32),
    "dist": dict(name="deit_tiny_distilled_patch16_224", seed=23, depth=2, img_size=32),
}


def get_model(kind: str):
    return tiny_vit(**MODELS[kind])


def pattern_and_grad(model, x, targets, layer):
    """The layer's pattern and d(sum of target logits)/d(pattern), from TransformerLens backward hooks."""
    frozen = copy.deepcopy(model).requires_grad_(False)
    store = {}
    name = f"blocks.{layer}.attn.hook_pattern"
    with frozen.hooks(fwd_hooks=[(name, lambda a, hook: store.update(a=a.detach()))],
                      bwd_hooks=[(name, lambda g, hook: store.update(g=g.detach()))]):
        logits = frozen(x.clone().requires_grad_(True))
        logits[torch.arange(x.shape[0]), targets].sum().backward()
    return store["a"], store["g"]


@pytest.mark.parametrize("kind,rows", [("avg", None), ("token", (0,)), ("dist", (0, 1))])
def test_readout_rows_are_the_rows_the_output_depends_on(kind, rows):
    model = get_model(kind)
    expected = tuple(range(1, model.cfg.n_tokens)) if rows is None else rows
    assert model.cfg.readout_rows == expected
    # The same set, read off the model: rows of the final residual stream with a nonzero gradient.
    x = images_for(model, 1, seed=1)
    store = {}
    name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    frozen = copy.deepcopy(model).requires_grad_(False)
    with frozen.hooks(fwd_hooks=[(name, lambda a, hook: store.update(a=a))]):
        out = frozen(x.requires_grad_(True))
        (grad,) = torch.autograd.grad(out[0, 3], store["a"])
    used = tuple(torch.nonzero(grad[0].abs().amax(-1) > 0).flatten().tolist())
    assert used == expected


def test_avg_pooled_models_never_use_the_cls_row_so_attention_methods_do_not_read_it():
    """Regression (issue 11, defect 1): on a CLS + mean-pooling model the baselines read the CLS row."""
    model = get_model("avg")
    x, targets = images_for(model, 2, seed=2), torch.tensor([1, 4])
    last = model.cfg.n_layers - 1
    pattern, grad = pattern_and_grad(model, x, targets, last)
    assert torch.count_nonzero(grad[:, :, 0]) == 0  # the CLS query row: exactly no gradient
    patch_rows = slice(1, None)
    # raw attention: the mean over the patch-query rows, heads averaged
    expected = pattern[:, :, patch_rows, 1:].mean(2).mean(1).reshape(2, 2, 2)
    got = attribute("raw_attention", model, x, targets).map
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, pattern[:, :, 0, 1:].mean(1).reshape(2, 2, 2), atol=1e-4)  # not the CLS row
    # attention Grad-CAM from the same rows: nonzero, and equal to the hand computation
    weights = grad[:, :, patch_rows, 1:].mean(2).mean(-1, keepdim=True)
    cam = (weights * pattern[:, :, patch_rows, 1:].mean(2)).mean(1).clamp(min=0).reshape(2, 2, 2)
    assert torch.allclose(attribute("attention_gradcam", model, x, targets).map, cam, atol=1e-6, rtol=1e-4)
    # gradient-weighted attention: the relevance matrix's patch-query rows
    relevance = torch.eye(model.cfg.n_tokens).repeat(2, 1, 1)
    for layer in range(model.cfg.n_layers):
        a, g = pattern_and_grad(model, x, targets, layer)
        relevance = relevance + (g * a).clamp(min=0).mean(1) @ relevance
    expected = relevance[:, patch_rows, 1:].mean(1).reshape(2, 2, 2)
    got = attribute("gradient_weighted_attention", model, x, targets).map
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4)
    assert got.abs().max() > 0


def test_attention_gradcam_is_chefers_recipe_on_cls_models():
    model = get_model("token")
    x, targets = images_for(model, 2, seed=3), torch.tensor([2, 7])
    pattern, grad = pattern_and_grad(model, x, targets, model.cfg.n_layers - 1)
    cam = pattern[:, :, 0, 1:]  # [batch, head, patches]: the CLS row, as Chefer et al.'s code
    weights = grad[:, :, 0, 1:].mean(-1, keepdim=True)
    expected = (cam * weights).mean(1).clamp(min=0).reshape(2, 2, 2)
    got = attribute("attention_gradcam", model, x, targets).map
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4)
    other = attribute("attention_gradcam", model, x, targets, layer=0).map
    assert not torch.allclose(other, got)


def test_old_names_still_work_with_a_deprecation_warning():
    model = get_model("token")
    x, targets = images_for(model, 2, seed=4), [1, 2]
    with pytest.warns(DeprecationWarning, match="gradient_weighted_attention"):
        old = attribute("transformer_attribution", model, x, targets)
    assert torch.equal(old.map, attribute("gradient_weighted_attention", model, x, targets).map)
    assert old.method == "gradient_weighted_attention"
    with pytest.warns(DeprecationWarning, match="token_gradcam"):
        old = attribute("gradcam", model, x, targets)
    assert torch.equal(old.map, attribute("token_gradcam", model, x, targets).map)
    with pytest.warns(DeprecationWarning):
        gradcam(model, x, torch.tensor(targets))
    with pytest.warns(DeprecationWarning):
        transformer_attribution(model, x, torch.tensor(targets))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attribute("token_gradcam", model, x, targets)  # the new names do not warn


def test_rollout_start_layer_one_as_chefer_evaluates():
    model = get_model("token")
    x = images_for(model, 2, seed=5)
    _, cache = model.run_with_cache(x)
    rolled = one_layer_rollout(cache["pattern", 1])
    got = attribute("rollout", model, x, 0, start_layer=1).map
    assert torch.allclose(got, rolled[:, 0, 1:].reshape(2, 2, 2), atol=1e-6)
    assert not torch.allclose(got, attribute("rollout", model, x, 0).map, atol=1e-5)


def test_attention_pooled_models_weight_each_row_by_what_the_pool_reads():
    """pooling='map' (SigLIP): the readout rows are the pooled tokens, each weighted by the pool's own
    attention (heads averaged), checked against hand computations from TransformerLens hooks."""
    model = copy.deepcopy(tiny_vit(seed=24, depth=2, img_size=32, patch_size=8, global_pool="map",
                                   class_token=False, num_classes=5))
    with torch.no_grad():  # a sharper pool, as trained ones are: its weights then differ clearly from 1/16
        model.attn_pool.latent.normal_(generator=torch.Generator().manual_seed(0))
        model.attn_pool.q.weight.mul_(30.0)
    x, targets = images_for(model, 2, seed=6), torch.tensor([1, 3])
    with torch.no_grad():
        _, cache = model.run_with_cache(x)
    w = cache["attn_pool.hook_pattern"].mean(1)[:, 0]  # [batch, 16 pooled tokens]: the pool's weights
    assert w.shape == (2, 16) and (w.amax(-1) > 2 / 16).all()  # far from uniform: the weighting matters
    last = cache["pattern", 1]  # [batch, head, query, key]

    def weighted(rows):  # rows [batch, (head,) query, key] -> sum_q w_q rows[q]
        shape = (2, 1, 16, 1) if rows.ndim == 4 else (2, 16, 1)
        return (w.reshape(shape) * rows).sum(-2)

    got = attribute("raw_attention", model, x, targets).map
    assert torch.allclose(got, weighted(last.mean(1)).reshape(2, 4, 4), atol=1e-6)
    assert not torch.allclose(got, last.mean(1).mean(1).reshape(2, 4, 4), atol=1e-3)  # equal weights differ
    rolled = one_layer_rollout(cache["pattern", 1]) @ one_layer_rollout(cache["pattern", 0])
    assert torch.allclose(attribute("rollout", model, x, targets).map, weighted(rolled).reshape(2, 4, 4), atol=1e-6)
    pattern, grad = pattern_and_grad(model, x, targets, 1)
    head_w = weighted(grad).mean(-1, keepdim=True)
    cam = (head_w * weighted(pattern)).mean(1).clamp(min=0).reshape(2, 4, 4)
    assert torch.allclose(attribute("attention_gradcam", model, x, targets).map, cam, atol=1e-6, rtol=1e-4)
    relevance = torch.eye(16).repeat(2, 1, 1)
    for layer in range(2):
        a, g = pattern_and_grad(model, x, targets, layer)
        relevance = relevance + (g * a).clamp(min=0).mean(1) @ relevance
    got = attribute("gradient_weighted_attention", model, x, targets).map
    assert torch.allclose(got, weighted(relevance).reshape(2, 4, 4), atol=1e-6, rtol=1e-4)

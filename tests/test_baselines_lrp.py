"""AttnLRP (`caap_lens.baselines.lrp`): its rules against lxt's, and conservation of relevance.

* The three rules (identity rule, uniform rule as gradient division, LayerNorm with its scale
  detached) give the same gradients as ``lxt.efficient.rules`` (loaded from its file: the package's
  ``__init__`` imports transformers' LLM classes) on random tensors.
* Conservation on a model without biases (every linear/LayerNorm bias, position embedding and CLS
  token zero): with CP-LRP's attention rule the input relevance sums to the target logit exactly;
  with AttnLRP's it sums to the logit minus what the softmax rule leaves unassigned, measured
  independently at each layer's ``hook_attn_scores`` and ``hook_pattern`` (the softmax rule is the one
  AttnLRP rule that does not conserve: ``Σ_i x_i s_i (g_i - Σ_j s_j g_j) ≠ Σ_i s_i g_i``).
"""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch

from caap_lens.baselines import attribute
from caap_lens.baselines.lrp import identity_rule, lrp_hooks, scale_gradient
from conftest import make_timm, no_hooks_left


def lxt_rules():
    spec = importlib.util.find_spec("lxt")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("lxt absent: independent check of the rules skipped")
    path = f"{spec.submodule_search_locations[0]}/efficient/rules.py"
    module_spec = importlib.util.spec_from_file_location("lxt_efficient_rules", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def _bias_free(pool: str):
    from caap_lens import HookedViT

    model = HookedViT.from_timm(make_timm("vit_tiny_patch16_224", seed=5, depth=2, img_size=32, num_classes=10,
                                          global_pool=pool)).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".b", "bias", "b_in", "W_pos", "cls_token")):
                p.zero_()
    return model


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_rules_match_lxt():
    rules = lxt_rules()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, dtype=torch.float64, generator=gen)
    upstream = torch.randn(4, 7, dtype=torch.float64, generator=gen)
    for fn in (torch.nn.functional.gelu, torch.tanh, torch.nn.functional.silu):
        a = x.clone().requires_grad_(True)
        identity_rule(a, fn(a)).backward(upstream)
        b = x.clone().requires_grad_(True)
        rules.identity_rule_implicit(fn, b).backward(upstream)
        assert torch.allclose(a.grad, b.grad, atol=1e-9)
        # the rule itself: relevance x * grad passes the non-linearity unchanged
        assert torch.allclose(x * a.grad, fn(x) * upstream, atol=1e-9)
    for factor in (2, 4):
        a = x.clone().requires_grad_(True)
        (scale_gradient(a, 1 / factor) * 3).sum().backward()
        b = x.clone().requires_grad_(True)
        (rules.divide_gradient(b, factor) * 3).sum().backward()
        assert torch.equal(a.grad, b.grad)
    # LayerNorm as a linear map: lxt stops the gradient through the std; we detach hook_scale.
    from caap_lens.model.layer_norm import LayerNorm

    ln = LayerNorm(7).double()
    with torch.no_grad():
        ln.w.uniform_(0.5, 1.5, generator=gen)
    a = x.clone().requires_grad_(True)
    with torch.enable_grad():
        handle = ln.hook_scale.register_forward_hook(lambda module, inp, out: out.detach())
        ln(a).backward(upstream)
        handle.remove()
    b = x.clone().requires_grad_(True)
    centred = b - b.mean(-1, keepdim=True)
    (centred / rules.stop_gradient((centred.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()) * ln.w).backward(upstream)
    assert torch.allclose(a.grad, b.grad, atol=1e-9)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_cp_lrp_conserves_relevance_exactly_on_a_bias_free_model(pool):
    model = _bias_free(pool)
    model.reset_hooks(including_permanent=True)
    result = attribute("attnlrp", model, images(), [1, 2, 3], softmax="cp")
    assert torch.allclose(result.info["relevance_sum"], result.info["score"], rtol=1e-5, atol=1e-7)
    assert torch.allclose(result.map.sum((1, 2)), result.info["score"], rtol=1e-5, atol=1e-7)
    assert torch.allclose(result.pixels.sum((1, 2)), result.info["score"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_attnlrp_conserves_relevance_up_to_what_the_softmax_rule_leaves(pool):
    model = _bias_free(pool)
    model.reset_hooks(including_permanent=True)
    x, targets = images(), torch.tensor([1, 2, 3])
    result = attribute("attnlrp", model, x, targets)
    # Independently: relevance x * grad at each layer's softmax input (scores) and output (pattern),
    # under the same rules. The A-side of A @ v gets half of A * dA; the scores side passes on half of
    # scores * dscores (the 1/4 on q and k): what is lost is half the difference.
    store = {}

    def keep(act, *, hook):
        store[hook.name] = act
        return act

    names = [f"blocks.{layer}.attn.{h}" for layer in range(model.cfg.n_layers) for h in ("hook_attn_scores", "hook_pattern")]
    with torch.enable_grad(), model.hooks(fwd_hooks=lrp_hooks(model) + [(n, keep) for n in names]):
        inp = x.clone().requires_grad_(True)
        score = model(inp)[torch.arange(3), targets]
        grads = torch.autograd.grad(score.sum(), [inp] + [store[n] for n in names])
    leaked = torch.zeros(3, dtype=torch.float64)
    for layer in range(model.cfg.n_layers):
        s, a = store[names[2 * layer]], store[names[2 * layer + 1]]
        gs, ga = grads[1 + 2 * layer], grads[2 + 2 * layer]
        leaked += 0.5 * ((a * ga).flatten(1).sum(1) - (s * gs).flatten(1).sum(1)).detach()
    total = (inp.detach() * grads[0]).flatten(1).sum(1)
    assert torch.allclose(total.float(), result.info["relevance_sum"], atol=1e-6)  # same relevance either way
    assert torch.allclose(total + leaked, score.detach(), rtol=1e-6, atol=1e-9)
    assert leaked.abs().max() > 1e-4  # the softmax rule does leave something on this model


def test_attnlrp_changes_no_forward_value_and_leaves_nothing_behind():
    from caap_lens import HookedViT

    model = HookedViT.from_timm(make_timm("vit_tiny_patch16_224", seed=6, depth=2, img_size=32, num_classes=10))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(x)
        with model.hooks(fwd_hooks=lrp_hooks(model)):
            hooked = model(x)
    assert torch.allclose(plain, hooked, atol=1e-5)
    result = attribute("attnlrp", model, x, [0, 1])
    assert all(p.grad is None for p in model.parameters())
    assert no_hooks_left(model)
    assert result.pixels.shape == (2, 32, 32) and torch.isfinite(result.map).all()
    with pytest.raises(ValueError, match="softmax"):
        attribute("attnlrp", model, x, [0, 1], softmax="none")


def test_attnlrp_refuses_the_attention_pool_readout():
    from conftest import images_for, tiny_vit

    from caap_lens.baselines import attribute

    model = tiny_vit(seed=4, depth=2, img_size=32, patch_size=8, global_pool="map", class_token=False)
    assert model.cfg.pooling == "map"
    with pytest.raises(ValueError, match="no rule here for the attention-pool readout"):
        attribute("attnlrp", model, images_for(model, 1), 0)

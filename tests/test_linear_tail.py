"""`linear_tail`: exact through the window, first-order after it (issue 16).

Checked against exact `caap` where the expansion is exact (no tail; a tail made affine by hand), against
a finite difference of the exact tail for one row (the directional-derivative identity), at the
expansion point itself, and for hook and gradient hygiene.
"""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

from caap_lens import HookedViT
from benchmarks import linear_tail as lt_module
from caap_lens.attribution.contexts import resolve_context
from caap_lens.attribution.engine import caap
from benchmarks.linear_tail import linear_tail, linear_tail_map, tail_gradient
from caap_lens.attribution.runner import finish, run_blocks, source_run
from caap_lens.attribution.scores import resolve_score, self_similarity
from caap_lens.patching import patch_from_source, patchable_hook_name, token_mask_for_patches
from tests.conftest import images_for, make_timm

N_LAYERS = 4


def build(seed: int = 0, **kwargs) -> HookedViT:
    """A perturbed random-init ViT-Ti: 4 blocks, 64 px (4 x 4 patches), 10 classes, CLS readout."""
    kwargs = {"img_size": 64, "num_classes": 10, **kwargs}
    return HookedViT.from_timm(make_timm("vit_tiny_patch16_224", seed=seed, depth=N_LAYERS, **kwargs))


@pytest.fixture(scope="module")
def model() -> HookedViT:
    return build()


@pytest.fixture(scope="module")
def images(model) -> torch.Tensor:
    return images_for(model, batch=2)


def make_tail_affine(model: HookedViT, stop: int) -> HookedViT:
    """Blocks ``[stop, n)`` and the readout made affine in the residual, still mixing tokens.

    Layer norms become identities, queries and keys zero (so attention is a uniform average of the
    values over all tokens: patch tokens still reach the CLS readout), the MLP's activation the identity,
    and the final norm is removed. The logit is then an affine function of the residual at ``stop``.
    """
    width = model.cfg.n_heads * model.cfg.d_head
    with torch.no_grad():
        for block in model.blocks[stop:]:
            block.ln1, block.ln2 = nn.Identity(), nn.Identity()
            block.attn.qkv.weight[: 2 * width] = 0
            block.attn.qkv.bias[: 2 * width] = 0
            block.mlp.act = lambda x: x
    model.ln_final = None
    return model


def no_hooks_left(model: HookedViT) -> bool:
    return not any(hp.fwd_hooks or hp.bwd_hooks or hp._forward_hooks for hp in model.hook_dict.values())


def test_no_tail_equals_exact_caap(model, images):
    for window in [(1, N_LAYERS), (0, N_LAYERS), (3, N_LAYERS)]:
        exact = caap(model, images, target=[3, 7], layers=window)
        result = linear_tail(model, images, target=[3, 7], layers=window)
        assert result.map.shape == exact.map.shape == (2, 4, 4)
        torch.testing.assert_close(result.map, exact.map, atol=1e-5, rtol=0)
        torch.testing.assert_close(result.context_score, exact.context_score, atol=1e-5, rtol=0)
        torch.testing.assert_close(result.source_score, exact.source_score, atol=1e-5, rtol=0)
        assert result.timing["tail_block_evals"] == 0


def test_no_tail_equals_exact_for_prob_relative_and_headless(images):
    model = build(seed=3)
    kw = dict(target="predicted", layers=(2, N_LAYERS), score="prob", relative=True)
    torch.testing.assert_close(linear_tail_map(model, images, **kw), caap(model, images, **kw).map, atol=1e-6, rtol=0)
    headless = build(seed=4, num_classes=0, global_pool="avg")  # mean pooling: every token is read
    with torch.inference_mode():
        score = self_similarity(headless(images))
    kw = dict(target=torch.arange(2), layers=(1, N_LAYERS), score=score)
    torch.testing.assert_close(linear_tail_map(headless, images, **kw), caap(headless, images, **kw).map,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("stop", [2, 3])  # stop = n - 1: the tail is the readout-only last block
def test_affine_tail_equals_exact_caap(images, stop):
    model = make_tail_affine(build(seed=1), stop)
    exact = caap(model, images, target=[2, 5], layers=(1, stop))
    result = linear_tail(model, images, target=[2, 5], layers=(1, stop))
    assert float(exact.map.std()) > 1e-3  # the patches do move the score
    torch.testing.assert_close(result.map, exact.map, atol=1e-4, rtol=1e-5)
    # and on the original, non-linear tail the expansion is not exact: the comparison above can fail
    original = build(seed=1)
    diff = (linear_tail_map(original, images, target=[2, 5], layers=(1, stop))
            - caap(original, images, target=[2, 5], layers=(1, stop)).map).abs().max()
    assert float(diff) > 1e-3


def _one_row(model, images, start, stop, patch):
    """The context's and one patched row's residual at ``stop`` (image 0, one patch), computed by hand."""
    with torch.inference_mode():
        names = {patchable_hook_name("resid_pre", layer) for layer in range(start, stop)}
        _, source = source_run(model, images, names)
        ctx = resolve_context("mean").residuals(model, images, [start])[start][:1]
        ctx_stop = run_blocks(model, ctx, start, stop)
        mask = token_mask_for_patches(model.grid, torch.tensor([patch]))
        resid = ctx
        for layer in range(start, stop):
            name = patchable_hook_name("resid_pre", layer)
            with model.hooks(fwd_hooks=[(name, patch_from_source(source[name], mask, torch.tensor([0])))]):
                resid = run_blocks(model, resid, layer, layer + 1)
    return ctx_stop, resid


@pytest.mark.parametrize("stop", [2, 3])
def test_linear_term_is_the_directional_derivative(stop):
    model = build(seed=2).double()
    images = images_for(model, batch=2).double()
    start, patch, target = 1, 6, torch.tensor([4])

    def fn(output, target):  # the logit, kept in float64 (the built-in casts to float32)
        return output.gather(1, target[:, None])[:, 0]

    result = linear_tail(model, images, target=[4, 4], layers=(start, stop), score=fn)
    ctx_stop, resid = _one_row(model, images, start, stop, patch)
    delta = resid - ctx_stop
    eps = 1e-4
    with torch.inference_mode():
        up = fn(finish(model, ctx_stop + eps * delta, stop), target)
        down = fn(finish(model, ctx_stop - eps * delta, stop), target)
    derivative = float((up - down) / (2 * eps))
    linear_term = float(result.map.flatten(1)[0, patch] - result.context_score[0])
    assert abs(derivative) > 1e-4
    assert linear_term == pytest.approx(derivative, rel=1e-4, abs=1e-6)  # float32 map


def test_tail_gradient_is_wrt_the_full_residual(model, images):
    """The readout-only last block (`HookedViT.output_from`) still gives the full-residual gradient."""
    stop = N_LAYERS - 1
    with torch.inference_mode():
        resid = model(images, stop_at_layer=stop)
    value, grad = tail_gradient(model, resid, stop, resolve_score("logit"), torch.tensor([1, 8]))
    point = resid.clone().requires_grad_(True)
    out = model.unembed(model.blocks[stop](point))  # every token through the full block
    (ref,) = torch.autograd.grad(out.gather(1, torch.tensor([[1], [8]])).sum(), point)
    torch.testing.assert_close(grad, ref, atol=1e-6, rtol=1e-4)
    assert float(grad[:, 1:].abs().max()) > 1e-4  # patch tokens reach the score through attention
    assert not any(p.grad is not None for p in model.parameters())


def test_value_at_the_expansion_point_is_the_context_score(model):
    images = torch.zeros(2, 3, 64, 64)  # the "mean" context itself: every patched residual is the context's
    result = linear_tail(model, images, target=[0, 9], layers=(1, 2))
    exact = caap(model, images, target=[0, 9], layers=(1, 2))
    expected = exact.context_score[:, None, None].expand(2, 4, 4)
    torch.testing.assert_close(result.map, expected, atol=0, rtol=0)
    torch.testing.assert_close(exact.map, expected, atol=1e-5, rtol=0)
    relative = linear_tail_map(model, images, target=[0, 9], layers=(1, 2), relative=True)
    assert float(relative.abs().max()) == 0.0


def test_shapes_timing_and_settings(model, images):
    result = linear_tail(model, images[:1], target=3, layers=(1, 3), batch_size=5)
    assert result.map.shape == (1, 4, 4) and result.targets.tolist() == [3]
    assert result.timing["rows"] == 16
    assert result.timing["block_evals"] == 16 * 2 and result.timing["tail_block_evals"] == 1
    assert result.settings["layers"] == (1, 3) and result.settings["tail"] == "linear"
    default = linear_tail(model, images[:1], target=3)
    assert default.settings["layers"] == (1, 2)  # the middle third, as in caap
    same = linear_tail_map(model, images[:1], target=3, layers=(1, 3), batch_size=64)
    torch.testing.assert_close(same, result.map, atol=1e-6, rtol=0)  # chunking changes nothing


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layers": (2, 2)}, "window"),
        ({"layers": (0, 5)}, "window"),
        ({"layers": "4:8"}, "layers"),
        ({"batch_size": 0}, "batch_size"),
        ({"hook": "resid_nowhere"}, "unknown hook"),
        ({"score": "nonsense"}, "unknown score"),
        ({"target": 10}, "out of range"),
    ],
)
def test_validation_errors(model, images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        linear_tail(model, images, **{"target": 0, **kwargs})
    assert no_hooks_left(model)


def test_no_hooks_or_grads_left_after_an_exception(model, images):
    calls = []

    def fails_with_grad(output, target):
        calls.append(torch.is_grad_enabled())
        if torch.is_grad_enabled():
            raise RuntimeError("boom in the tail")
        return output[:, 0]

    with pytest.raises(RuntimeError, match="boom"):
        linear_tail(model, images, target=0, layers=(1, 2), score=fails_with_grad)
    assert True in calls
    assert no_hooks_left(model)
    assert not any(p.grad is not None for p in model.parameters())
    wrong = lambda output, target: output.sum()  # noqa: E731  reduces over rows
    with pytest.raises(ValueError, match="one value per row"):
        linear_tail(model, images, target=0, layers=(1, 2), score=wrong)
    assert no_hooks_left(model)
    # and the model still gives the same exact maps afterwards
    torch.testing.assert_close(caap(model, images, target=0, layers=(1, 4)).map,
                               linear_tail_map(model, images, target=0, layers=(1, 4)), atol=1e-5, rtol=0)


def test_docstring_examples_run():
    failures, tried = doctest.testmod(lt_module, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0

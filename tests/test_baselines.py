"""Attribution baselines (`caap_lens.baselines`): each method against an independent computation.

Every reference here avoids the code under test: attention from ``run_with_cache``, gradients from
TransformerLens backward hooks or central finite differences (in float64), occlusion and RISE from
naive loops of full forwards, IG against completeness. Models are perturbed random-init timm models
(conftest.make_timm) converted to HookedViT: a ViT-Tiny with 4 blocks (64 px, 4x4 grid, 1 prefix
token), a distilled DeiT on 32x48 px (a 2x3 grid, 2 prefix tokens: grids and prefixes are never
guessed) and a 1-block ViT for rollout.
"""

from __future__ import annotations

import copy

import pytest
import torch

from caap_lens.attribution.engine import caap
from caap_lens.baselines import (
    METHODS,
    Attribution,
    attribute,
    fidelity,
    rise_masks,
)
from caap_lens.model.layer_norm import has_hooks
from conftest import images_for, no_hooks_left, one_layer_rollout, tiny_vit

TARGETS = [1, 7]
FAST = {"rise": {"n_masks": 48}, "integrated_gradients": {"n_steps": 8}}  # keep CPU runs short
CLASS_SPECIFIC = ["caap", "gradient_weighted_attention", "attention_gradcam", "token_gradcam",
                  "integrated_gradients", "attnlrp", "occlusion", "rise", "attribution_patching"]
PIXEL_METHODS = ("integrated_gradients", "rise", "attnlrp")
MAY_BE_FLAT = ("attention_gradcam",)  # ReLU of a head-weighted mean: can be all zero on a random model


MODELS = {  # kind -> conftest.tiny_vit arguments
    "vit": dict(seed=3, depth=4, img_size=64),
    # a non-square 2x3 grid, CLS + distillation token
    "deit_distilled": dict(name="deit_tiny_distilled_patch16_224", seed=6, depth=2, img_size=(32, 48)),
    "vit1": dict(seed=8, depth=1, img_size=32),
}


def get_model(kind: str):
    """A model of ``MODELS``; ``"<kind>_f64"`` is its float64 copy."""
    return tiny_vit(**MODELS[kind.removesuffix("_f64")], f64=kind.endswith("_f64"))


def logits_of(model, x):
    with torch.no_grad():
        return model(x)


def grad_free(model) -> bool:
    return all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- uniform call shape
@pytest.mark.parametrize("kind", ["vit", "deit_distilled"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_gives_finite_maps_on_the_models_grid(kind, method):
    model = get_model(kind)
    x = images_for(model, 2, seed=1)
    result = attribute(method, model, x, TARGETS, **FAST.get(method, {}))
    assert isinstance(result, Attribution)
    assert result.method == method
    assert result.map.shape == (2, *model.grid.grid_size)
    assert result.map.dtype == torch.float32 and result.map.device.type == "cpu"
    assert torch.isfinite(result.map).all()
    assert result.targets.tolist() == TARGETS
    assert result.to_pixels().shape == (2, *model.cfg.image_size)
    if method in PIXEL_METHODS:
        assert result.pixels is not None and torch.isfinite(result.pixels).all()
        assert torch.equal(result.to_pixels(), result.pixels)
    else:
        assert result.pixels is None
    spread = result.map.amax((1, 2)) - result.map.amin((1, 2))
    assert (spread.max() if method in MAY_BE_FLAT else spread.min()) > 0  # not a flat, vacuous map
    assert result.seconds > 0 and result.settings
    assert no_hooks_left(model) and grad_free(model)


@pytest.mark.parametrize("method", CLASS_SPECIFIC)
def test_class_specific_methods_follow_the_target(method):
    model = get_model("vit")
    x = images_for(model, 2, seed=2)
    both = attribute(method, model, x, [1, 7], **FAST.get(method, {})).map
    swapped = attribute(method, model, x, [7, 1], **FAST.get(method, {})).map
    assert not torch.allclose(both, swapped, atol=1e-6)
    single = attribute(method, model, x[1:], 7, **FAST.get(method, {})).map
    assert torch.allclose(both[1:], single, atol=1e-5, rtol=1e-4)  # images do not leak into each other


@pytest.mark.parametrize("method", sorted(METHODS))
def test_methods_are_deterministic(method):
    model = get_model("deit_distilled")
    x = images_for(model, 2, seed=3)
    first = attribute(method, model, x, TARGETS, **FAST.get(method, {}))
    second = attribute(method, model, x, TARGETS, **FAST.get(method, {}))
    assert torch.equal(first.map, second.map)


def test_predicted_target_and_preprocessing_of_raw_images():
    model = get_model("vit")
    x = images_for(model, 2, seed=4)
    result = attribute("raw_attention", model, x)
    assert result.targets.tolist() == logits_of(model, x).argmax(-1).tolist()
    pixels = torch.rand(2, 3, 64, 64)  # 0..1 images are normalised by model.preprocess
    assert attribute("rollout", model, pixels).map.shape == (2, 4, 4)


def test_a_user_function_is_a_method():
    model = get_model("deit_distilled")

    def centre_prior(model, images, targets, *, scale: float = 1.0):
        gh, gw = model.grid.grid_size
        return torch.full((images.shape[0], gh, gw), scale), None

    result = attribute(centre_prior, model, images_for(model, seed=0), 0, scale=2.0)
    assert result.method == "centre_prior" and result.settings == {"scale": 2.0}
    assert torch.equal(result.map, torch.full((2, 2, 3), 2.0))


# ------------------------------------------------------------------------------------ attention
@pytest.mark.parametrize("kind", ["vit", "deit_distilled"])
def test_raw_attention_is_the_cached_readout_rows(kind):
    model = get_model(kind)
    x = images_for(model, 2, seed=5)
    _, cache = model.run_with_cache(x)
    n_prefix, n = model.grid.n_prefix_tokens, model.cfg.n_layers
    rows = [0] if kind == "vit" else [0, 1]  # CLS; CLS and distillation token (their heads are averaged)
    for layer, heads in [(-1, "mean"), (0, "max"), (n - 1, 1)]:
        pattern = cache["pattern", layer % n][:, :, rows, n_prefix:]  # [batch, head, rows, n_patches]
        # heads are reduced first, per (query, key), then the readout rows averaged
        reduced = {"mean": pattern.mean(1), "max": pattern.amax(1), 1: pattern[:, 1]}[heads]
        expected = reduced.mean(1)
        got = attribute("raw_attention", model, x, 0, layer=layer, head_fusion=heads).map
        assert torch.allclose(got, expected.reshape(2, *model.grid.grid_size), atol=1e-6)


def test_rollout_of_one_layer_is_half_attention_plus_identity():
    model = get_model("vit1")
    x = images_for(model, 2, seed=6)
    _, cache = model.run_with_cache(x)
    expected = one_layer_rollout(cache["pattern", 0])[:, 0, 1:].reshape(2, *model.grid.grid_size)
    assert torch.allclose(attribute("rollout", model, x, 0).map, expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["vit", "deit_distilled"])
def test_rollout_multiplies_later_layers_on_the_left(kind):
    model = get_model(kind)
    x = images_for(model, 2, seed=7)
    _, cache = model.run_with_cache(x)
    n = model.cfg.n_layers
    eye = torch.eye(model.grid.n_tokens)
    result = eye
    for layer in range(n - 2, n):
        a = 0.5 * cache["pattern", layer].amax(1) + 0.5 * eye
        result = (a / a.sum(-1, keepdim=True)) @ result
    rows = list(model.cfg.readout_rows)
    expected = result[:, rows, model.grid.n_prefix_tokens :].mean(1).reshape(2, *model.grid.grid_size)
    got = attribute("rollout", model, x, 0, start_layer=-2, head_fusion="max").map
    assert torch.allclose(got, expected, atol=1e-6)


def finite_difference_grad(model, x, targets, name, eps=1e-6):
    """d(target logit)/d(activation at ``name``) per image, by central differences, every entry."""
    _, cache = model.run_with_cache(x, names_filter=name)
    shape = cache[name].shape[1:]
    n = shape.numel()
    grads = torch.empty(x.shape[0], n, dtype=torch.float64)
    steps = torch.cat([torch.eye(n), -torch.eye(n)]).to(x.dtype).reshape(2 * n, *shape) * eps

    def nudge(act, hook):
        return act + steps

    for i in range(x.shape[0]):
        with torch.no_grad():
            logits = model.run_with_hooks(x[i : i + 1].expand(2 * n, -1, -1, -1), fwd_hooks=[(name, nudge)])
        score = logits[:, targets[i]].double()
        grads[i] = (score[:n] - score[n:]) / (2 * eps)
    return cache[name], grads.reshape(x.shape[0], *shape)


def test_gradient_weighted_attention_matches_finite_difference_gradients():
    model = get_model("deit_distilled_f64")
    x = images_for(model, 2, seed=8)
    targets = [2, 5]
    relevance = torch.eye(model.grid.n_tokens, dtype=torch.float64).repeat(2, 1, 1)
    for layer in range(model.cfg.n_layers):
        pattern, grad = finite_difference_grad(model, x, targets, f"blocks.{layer}.attn.hook_pattern")
        cam = (grad * pattern).clamp(min=0).mean(1)
        relevance = relevance + cam @ relevance
    expected = relevance[:, :2, 2:].mean(1).reshape(2, 2, 3).float()  # CLS and distillation rows
    got = attribute("gradient_weighted_attention", model, x, targets).map
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7)
    assert expected.abs().max() > 1e-4  # the gradients are not all clipped away


# ------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("kind,hook", [("vit", None), ("deit_distilled", None), ("vit", "blocks.2.hook_resid_post")])
def test_gradcam_equals_manual_grad_cam_from_backward_hooks(kind, hook):
    model = get_model(kind)
    x = images_for(model, 2, seed=9)
    name = hook or f"blocks.{model.cfg.n_layers - 1}.ln1.hook_normalized"
    frozen = copy.deepcopy(model).requires_grad_(False)  # backward() here must not touch the model's .grad
    acts, grads = {}, {}
    with frozen.hooks(
        fwd_hooks=[(name, lambda a, hook: acts.update(a=a.detach()))],
        bwd_hooks=[(name, lambda g, hook: grads.update(g=g.detach()))],
    ):
        logits = frozen(x.clone().requires_grad_(True))
        logits[[0, 1], TARGETS].sum().backward()
    n_prefix = model.grid.n_prefix_tokens
    weights = grads["g"][:, n_prefix:].mean(1, keepdim=True)
    cam = (acts["a"][:, n_prefix:] * weights).sum(-1)
    signed = attribute("token_gradcam", model, x, TARGETS, hook_name=hook, relu=False).map
    relu = attribute("token_gradcam", model, x, TARGETS, hook_name=hook).map
    assert torch.allclose(signed, cam.reshape(2, *model.grid.grid_size), atol=1e-5, rtol=1e-4)
    assert torch.equal(relu, signed.clamp(min=0))
    assert (signed < 0).any() and (signed > 0).any()


def test_integrated_gradients_completeness_improves_with_steps():
    model = get_model("vit_f64")
    x = images_for(model, 2, seed=10)
    baseline = torch.zeros_like(x)  # the "mean" context: a zero normalised input
    gap = (logits_of(model, x) - logits_of(model, baseline))[[0, 1], TARGETS].float()
    errors = []
    for n_steps in (4, 16, 64):  # observed errors 0.25, 0.022, 0.00094 for a gap of 0.18
        result = attribute("integrated_gradients", model, x, TARGETS, n_steps=n_steps, internal_batch_size=13)
        assert torch.allclose(result.map.sum((1, 2)), result.pixels.sum((1, 2)), atol=1e-4)
        errors.append((result.map.sum((1, 2)) - gap).abs().max().item())
    assert errors[2] < 0.01 * gap.abs().max().item()
    assert errors[0] > 8 * errors[1] > 64 * errors[2]  # the trapezoid rule's O(1/n^2) (16x per 4x steps)


def test_integrated_gradients_takes_any_image_context_as_baseline():
    model = get_model("vit_f64")
    x = images_for(model, 2, seed=11)
    given = images_for(model, 1, seed=12)[0]
    result = attribute("integrated_gradients", model, x, TARGETS, baseline=given, n_steps=32)
    gap = (logits_of(model, x) - logits_of(model, given[None].expand(2, -1, -1, -1)))[[0, 1], TARGETS]
    assert torch.allclose(result.map.sum((1, 2)).double(), gap, atol=1e-2 * gap.abs().max().item())
    black = attribute("integrated_gradients", model, x, TARGETS, baseline="black", n_steps=4).map
    assert not torch.allclose(black, result.map)


# ---------------------------------------------------------------------------------- perturbation
@pytest.mark.parametrize("kind,context", [("vit", "mean"), ("deit_distilled", "blur"), ("deit_distilled", "noise")])
def test_occlusion_equals_a_naive_loop_of_full_forwards(kind, context):
    from caap_lens.attribution.contexts import resolve_context

    model = get_model(kind)
    x = images_for(model, 2, seed=13)
    ctx = resolve_context(context).image(model, x).expand(2, -1, -1, -1)
    expected = torch.empty(2, model.grid.n_patches)
    for i in range(2):
        original = logits_of(model, x[i : i + 1])[0, TARGETS[i]]
        for patch in range(model.grid.n_patches):
            top, left, bottom, right = model.grid.pixel_box(patch)
            occluded = x[i].clone()
            occluded[:, top:bottom, left:right] = ctx[i, :, top:bottom, left:right]
            expected[i, patch] = original - logits_of(model, occluded[None])[0, TARGETS[i]]
    got = attribute("occlusion", model, x, TARGETS, context=context, batch_size=5).map
    assert torch.allclose(got, model.grid.to_grid(expected), atol=1e-5)


def test_rise_masks_are_seeded_shifted_upsampled_grids():
    masks = rise_masks(64, (32, 48), (2, 3), p=0.5, seed=0)
    assert masks.shape == (64, 32, 48) and masks.min() >= 0 and masks.max() <= 1
    assert torch.equal(masks, rise_masks(64, (32, 48), (2, 3), p=0.5, seed=0))
    assert not torch.equal(masks, rise_masks(64, (32, 48), (2, 3), p=0.5, seed=1))
    assert 0.3 < rise_masks(400, (32, 48), (2, 3), p=0.5, seed=2).mean() < 0.7
    assert torch.allclose(rise_masks(16, (32, 48), (2, 3), p=1.0), torch.ones(16, 32, 48))  # every cell kept
    assert len(rise_masks(32, (32, 48), (2, 3), seed=3).flatten(1).unique(dim=0)) > 1


def test_rise_equals_the_formula_with_its_masks():
    model = get_model("deit_distilled")
    x = images_for(model, 2, seed=14)
    n, p = 40, 0.4
    masks = rise_masks(n, model.cfg.image_size, model.grid.grid_size, p=p, seed=5)
    expected = torch.empty(2, *model.cfg.image_size)
    for i in range(2):
        masked = masks[:, None] * x[i] + (1 - masks[:, None]) * 0.0  # the "mean" context is a zero input
        probs = logits_of(model, masked).softmax(-1)[:, TARGETS[i]]
        expected[i] = torch.einsum("n,nhw->hw", probs, masks) / (n * p)
    for batch_size in (7, 64):  # the masks, hence the map, do not depend on batching
        result = attribute("rise", model, x, TARGETS, n_masks=n, p=p, seed=5, batch_size=batch_size)
        assert torch.allclose(result.pixels, expected, atol=1e-5)
        assert torch.allclose(result.map, model.grid.pool_pixels(expected), atol=1e-5)
    other_seed = attribute("rise", model, x, TARGETS, n_masks=n, p=p, seed=6).pixels
    assert not torch.allclose(other_seed, expected, atol=1e-3)


# ------------------------------------------------------------------------- attribution patching
@pytest.mark.parametrize("hook,window", [("resid_pre", (2, 3)), ("resid_pre", (1, 3)), ("z", (0, 2))])
def test_attribution_patching_is_a_finite_difference_directional_derivative(hook, window):
    # AtP(p) = sum over window layers of d/de score(context run + e * (source - context) at (layer, t_p)).
    from caap_lens.patching import patchable_hook_name

    model = get_model("vit_f64")
    x = images_for(model, 2, seed=15)
    ctx_image = torch.zeros_like(x)  # the "mean" context
    names = [patchable_hook_name(hook, layer) for layer in range(*window)]
    _, src = model.run_with_cache(x, names_filter=lambda n: n in names)
    _, ctx = model.run_with_cache(ctx_image, names_filter=lambda n: n in names)
    grid, eps = model.grid, 1e-5
    expected = torch.zeros(2, grid.n_patches, dtype=torch.float64)
    for i in range(2):
        for name in names:
            delta = src[name][i] - ctx[name][i]  # [pos, ...]
            rows = []
            for patch in range(grid.n_patches):
                step = torch.zeros_like(delta)
                step[grid.token_of(patch)] = eps * delta[grid.token_of(patch)]
                rows += [step, -step]
            steps = torch.stack(rows)

            def nudge(act, hook, steps=steps):
                return act + steps

            runs = ctx_image[i : i + 1].expand(len(rows), -1, -1, -1)
            with torch.no_grad():
                logits = model.run_with_hooks(runs, fwd_hooks=[(name, nudge)])
            score = logits[:, TARGETS[i]]
            expected[i] += (score[0::2] - score[1::2]) / (2 * eps)
    got = attribute("attribution_patching", model, x, TARGETS, layers=window, hook=hook).map
    assert torch.allclose(got.double(), grid.to_grid(expected), rtol=1e-4, atol=1e-6)
    assert expected.abs().max() > 1e-3


def test_attribution_patching_matches_caap_where_caap_is_linear():
    # Source = context + a tiny perturbation: CAAP(relative) is then its own first-order term.
    model = get_model("vit_f64")
    noise = images_for(model, 2, seed=16)
    x = 1e-3 * noise  # the "mean" context is the zero image
    caap_map = caap(model, x, TARGETS, layers=(2, 3), relative=True).map
    atp = attribute("attribution_patching", model, x, TARGETS, layers=(2, 3)).map
    assert torch.allclose(atp, caap_map, atol=1e-2 * caap_map.abs().max().item())
    result = fidelity(model, x, TARGETS, layers=(2, 3))
    assert (result["spearman"] > 0.99).all() and (result["pearson"] > 0.999).all()


def test_fidelity_reports_correlations_in_range():
    model = get_model("vit")
    x = images_for(model, 2, seed=17)
    result = fidelity(model, x, TARGETS, layers=(1, 3), context="blur")
    for key in ("spearman", "pearson"):
        assert result[key].shape == (2,)
        assert ((result[key] >= -1 - 1e-6) & (result[key] <= 1 + 1e-6)).all()
        assert -1 <= result[f"{key}_mean"] <= 1
    assert result["atp"].method == "attribution_patching" and result["caap"].method == "caap"
    assert result["caap"].settings["relative"] is True
    assert torch.equal(result["caap"].map, caap(model, x, TARGETS, layers=(1, 3), context="blur", relative=True).map)


# ------------------------------------------------------------------------------ hygiene and errors
@pytest.mark.parametrize("method", sorted(METHODS))
def test_no_parameter_grads_and_work_inside_inference_mode(method):
    model = get_model("vit")
    x = images_for(model, 2, seed=18)
    flags = [p.requires_grad for p in model.parameters()]
    outside = attribute(method, model, x, TARGETS, **FAST.get(method, {})).map
    with torch.inference_mode():
        inside = attribute(method, model, x, TARGETS, **FAST.get(method, {})).map
    assert torch.equal(inside, outside)
    assert grad_free(model) and [p.requires_grad for p in model.parameters()] == flags
    assert not any(has_hooks(b.attn.hook_pattern) for b in model.blocks)  # fused attention is back


@pytest.mark.parametrize("method", sorted(METHODS))
def test_hooks_are_removed_when_a_run_fails(method, monkeypatch):
    model = get_model("vit")

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(model.blocks[-1].mlp, "forward", boom)
    with pytest.raises(RuntimeError, match="injected failure"):
        METHODS[method](model, images_for(model, seed=0), torch.tensor(TARGETS), **FAST.get(method, {}))
    assert no_hooks_left(model) and grad_free(model)


def test_a_failing_score_mid_backward_leaves_nothing_behind():
    model = get_model("vit")

    def bad_score(output, target):
        raise ValueError("bad score")

    for method in ("gradient_weighted_attention", "attention_gradcam", "token_gradcam", "integrated_gradients",
                   "attnlrp", "attribution_patching"):
        with pytest.raises(ValueError, match="bad score"):
            METHODS[method](model, images_for(model, seed=0), torch.tensor(TARGETS), score=bad_score)
        assert no_hooks_left(model) and grad_free(model)


def test_unknown_method_lists_the_methods():
    model = get_model("vit")
    with pytest.raises(ValueError, match="unknown attribution method 'saliency'") as err:
        attribute("saliency", model, images_for(model, seed=0))
    for name in METHODS:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "method,kwargs,error,match",
    [
        ("rollout", {"depth": 3}, TypeError, "its options are start_layer, head_fusion$"),
        ("rollout", {"head_fusion": "median"}, ValueError, "head_fusion must be"),
        ("raw_attention", {"layer": 4}, ValueError, "outside"),
        ("token_gradcam", {"hook_name": "blocks.9.hook_resid_pre"}, ValueError, "unknown hook"),
        ("token_gradcam", {"hook_name": "hook_pooled"}, ValueError, "token activation"),
        ("integrated_gradients", {"baseline": torch.zeros(3, 32, 32)}, ValueError, "context image must be"),
        ("integrated_gradients", {"n_steps": 0}, ValueError, "n_steps"),
        ("occlusion", {"context": "mean_activation"}, ValueError, "activation space"),
        ("rise", {"p": 0.0}, ValueError, "p must be"),
        ("attribution_patching", {"layers": (3, 2)}, ValueError, "window"),
        ("caap", {"region": True}, TypeError, "unexpected keyword"),
    ],
)
def test_bad_options_are_clear_errors(method, kwargs, error, match):
    model = get_model("vit")
    with pytest.raises(error, match=match):
        attribute(method, model, images_for(model, seed=0), TARGETS, **kwargs)
    assert no_hooks_left(model)


def test_bad_targets_images_and_maps_are_clear_errors():
    model = get_model("vit")
    x = images_for(model, seed=0)
    with pytest.raises(ValueError, match="out of range for 10 classes"):
        attribute("token_gradcam", model, x, [1, 10])
    with pytest.raises(ValueError, match="got 3 targets for 2 images"):
        attribute("occlusion", model, x, [1, 2, 3])
    with pytest.raises(ValueError, match="expected images"):
        attribute("rollout", model, torch.randn(2, 3, 32, 32))

    def square_guess(model, images, targets):
        return torch.zeros(images.shape[0], 14, 14), None

    with pytest.raises(ValueError, match=r"patch grid is \(4, 4\)"):
        attribute(square_guess, model, x)


def test_old_option_names_still_work_with_a_deprecation_warning():
    model = get_model("vit")
    x = images_for(model, seed=0)
    for method, old, new in [
        ("rollout", {"heads": "max"}, {"head_fusion": "max"}),
        ("raw_attention", {"heads": 1}, {"head_fusion": 1}),
        ("token_gradcam", {"hook": "blocks.0.hook_resid_post"}, {"hook_name": "blocks.0.hook_resid_post"}),
    ]:
        with pytest.warns(DeprecationWarning, match=f"{next(iter(old))}= is now {next(iter(new))}="):
            by_old = attribute(method, model, x, TARGETS, **old)
        assert torch.equal(by_old.map, attribute(method, model, x, TARGETS, **new).map)
        assert next(iter(old)) not in attribute(method, model, x, TARGETS, **new).settings
    with pytest.raises(TypeError, match="give head_fusion= only"):
        attribute("rollout", model, x, TARGETS, heads="max", head_fusion=0)

"""`caap()` and `patched_scores()`: the batched, prefix-cached runner against the naive one-run-per-patch
loop, the method's invariants, per-head / per-layer / region maps, bf16, user hooks, result helpers and
clear errors for bad input.

Models are perturbed random-init timm models (conftest.make_timm) converted to HookedViT, small enough
for CPU: a ViT-Tiny with 4 blocks (64 px, 4x4 grid, 10 named classes), a DeiT3 (layer scale), a
DINOv2 with 4 registers (5 prefix tokens, layer scale) and a distilled DeiT (2 prefix tokens).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caap_lens.attribution.engine import caap, caap_settings, patched_scores
from caap_lens.attribution.reference import caap_naive
from caap_lens.attribution.scores import logit_diff
from caap_lens.attribution.units import Units, head_units, patch_units
from caap_lens.patching import patch_hooks
from caap_lens.stats import spearman
from conftest import images_for, no_hooks_left, tiny_vit

CLASS_NAMES = tuple(f"class_{i}" for i in range(10))
FP32_TOL = 1e-4  # fast path vs naive loop: same maths, different batching -> float32 rounding only
MAX_DIFFS: dict[str, float] = {}


MODELS = {  # kind -> conftest.tiny_vit arguments
    "vit": dict(seed=3, depth=4, img_size=64, class_names=CLASS_NAMES),
    "deit3": dict(name="deit3_small_patch16_224", seed=4, depth=3, img_size=64),
    "dinov2_reg": dict(name="vit_small_patch14_reg4_dinov2", seed=5, depth=3, img_size=56),
    "deit_distilled": dict(name="deit_tiny_distilled_patch16_224", seed=6, depth=3, img_size=64),
}


def get_model(kind: str):
    return tiny_vit(**MODELS[kind])


@pytest.fixture
def vit():
    return get_model("vit")


def record(what: str, value: float) -> None:
    MAX_DIFFS[what] = max(MAX_DIFFS.get(what, 0.0), float(value))
    print(f"[max abs diff] {what:<60} {value:.3e}")


def mirrored_half(model, images):
    """A callable context: the source mirrored left-right at half contrast."""
    return images.flip(-1) * 0.5


def make_context(model, spec):
    if spec == "tensor":  # one given image [C, H, W] for every source
        return images_for(model, 1, seed=77)[0]
    if spec == "tensor_batch":  # one given image per source [batch, C, H, W]
        return images_for(model, 2, seed=78)
    if spec == "callable":
        return mirrored_half
    return spec


def make_score(spec):
    return logit_diff(2) if spec == "logit_diff" else spec


# -------------------------------------------------------------------------- fast path == naive loop
# (model, hook, window, context, score, batch_size, target). Every hook, every context kind and every
# built-in score appears; windows include (0, 1) and (k, n_layers); batch sizes split the 32 rows
# (2 images x 16 patches) unevenly; the ViT has class names, so targets mix indices and names.
FAST_VS_NAIVE = [
    ("vit", "resid_pre", (0, 1), "mean", "logit", 7, [3, "class_7"]),
    ("vit", "resid_mid", (1, 3), "black", "prob", 5, ["class_1", 8]),
    ("vit", "resid_post", (2, 4), "blur", "log_prob", 7, [0, 9]),
    ("vit", "attn_out", (0, 4), "noise", "margin", 64, ["class_4", "class_2"]),
    ("vit", "mlp_out", (2, 4), "mean_activation", "logit_diff", 7, [5, 6]),
    ("vit", "z", (1, 2), "tensor", "logit", 7, [2, "class_3"]),
    ("vit", "mlp_post", (0, 2), "callable", "prob", 3, [7, 1]),
    ("vit", "resid_pre", (1, 4), "tensor_batch", "margin", 7, [6, 0]),
    ("vit", "z", (0, 4), "mean_activation", "log_prob", 9, "predicted"),
    ("deit3", "z", (0, 3), "mean", "logit", 7, [1, 8]),
    ("deit3", "resid_mid", (1, 2), "mean_activation", "log_prob", 5, [4, 2]),
    ("dinov2_reg", "mlp_post", (1, 3), "blur", "margin", 7, [3, 9]),
    ("dinov2_reg", "resid_pre", (0, 3), "mean_activation", "logit", 11, [0, 5]),
    ("deit_distilled", "attn_out", (0, 2), "noise", "log_prob", 7, [2, 7]),
    ("deit_distilled", "resid_post", (1, 3), "mean", "logit_diff", 6, "predicted"),
]


@pytest.mark.parametrize(
    "kind,hook,window,context,score,batch_size,target",
    FAST_VS_NAIVE,
    ids=[f"{c[0]}-{c[1]}-{c[2][0]}_{c[2][1]}-{c[3]}-{c[4]}-bs{c[5]}" for c in FAST_VS_NAIVE],
)
def test_fast_path_equals_naive_loop(kind, hook, window, context, score, batch_size, target):
    model = get_model(kind)
    x = images_for(model, 2, seed=sum(window) + len(hook))
    ctx = make_context(model, context)
    result = caap(
        model, x, target, layers=window, context=ctx, hook=hook, score=make_score(score), batch_size=batch_size
    )
    naive = caap_naive(model, x, target, layers=window, context=ctx, hook=hook, score=make_score(score))
    assert result.map.shape == (2, *model.grid.grid_size)
    diff = (result.map - naive).abs().max().item()
    record(f"fast vs naive {kind} {hook} {window} {context} {score}", diff)
    assert diff < FP32_TOL
    # Guard against a vacuous pass: the map really varies over patches.
    # Guard against a vacuous pass (a patch that does nothing gives a flat map in both paths): every
    # map spans well over the tolerance (observed spans 8e-4 .. 0.19).
    flat = result.map.flatten(1)
    assert (flat.amax(1) - flat.amin(1)).min() > 5e-4
    if target != "predicted":
        names = {n: i for i, n in enumerate(CLASS_NAMES)}
        expected = [names[t] if isinstance(t, str) else t for t in target]
        assert result.targets.tolist() == expected
    else:
        with torch.no_grad():
            assert result.targets.tolist() == model(x).argmax(-1).tolist()
    assert no_hooks_left(model)


def test_targets_per_image_really_select_classes(vit):
    x = images_for(vit, 2, seed=5)
    both = caap(vit, x, [3, "class_7"], layers=(1, 3)).map
    first = caap(vit, x[:1], 3, layers=(1, 3)).map
    second = caap(vit, x[1:], "CLASS_7", layers=(1, 3)).map  # names are case-insensitive
    assert torch.allclose(both, torch.cat([first, second]), atol=1e-5)
    other = caap(vit, x, [7, 3], layers=(1, 3)).map
    assert not torch.allclose(both, other, atol=1e-3)
    # Numpy integers and integer-valued tensors work as indices.
    assert caap(vit, x, np.int64(3), layers=(1, 3)).targets.tolist() == [3, 3]
    assert caap(vit, x, torch.tensor([3.0, 7.0]), layers=(1, 3)).targets.tolist() == [3, 7]


# ------------------------------------------------------------------------------------ invariants
@pytest.mark.parametrize("kind", ["vit", "deit3", "dinov2_reg", "deit_distilled"])
@pytest.mark.parametrize("context", ["mean", "black", "blur", "noise", "tensor", "callable", "mean_activation"])
def test_patching_every_patch_at_the_first_layer_reproduces_the_source(kind, context):
    # At resid_pre of block 0 the prefix tokens (CLS, registers, distillation) do not depend on the
    # image, so copying every patch token of the source makes the whole residual the source's.
    model = get_model(kind)
    x = images_for(model, 2, seed=21)
    region = torch.ones(model.grid.grid_size, dtype=torch.bool)
    result = caap(model, x, [1, 6], layers=(0, 1), hook="resid_pre", context=make_context(model, context), region=region)
    assert result.map.shape == (2, 1)
    with torch.no_grad():
        logits = model(x)
    assert torch.allclose(result.source_score, logits[[0, 1], [1, 6]], atol=1e-5)
    diff = (result.map[:, 0] - result.source_score).abs().max().item()
    record(f"all patches (0,1) vs source {kind} {context}", diff)
    assert diff < 1e-5
    assert (result.source_score - result.context_score).abs().min() > 1e-3  # a real gap to recover
    assert torch.allclose(result.recovered, torch.ones(2, 1), atol=1e-4)


@pytest.mark.parametrize("kind,hook", [("vit", "mlp_out"), ("vit", "resid_post"), ("deit_distilled", "attn_out")])
def test_patch_tokens_after_the_last_attention_change_nothing(kind, hook):
    # Token-pooled models read only the prefix tokens after the last block, so a patch token's
    # attn_out / mlp_out / resid_post in the last block reaches no output: map == context score.
    model = get_model(kind)
    n = model.cfg.n_layers
    result = caap(model, images_for(model, 2, seed=26), [1, 3], layers=(n - 1, n), hook=hook)
    context = result.context_score[:, None, None].expand_as(result.map)
    assert torch.allclose(result.map, context, atol=1e-5)
    # ... while one block earlier the same hook does matter.
    earlier = caap(model, images_for(model, 2, seed=26), [1, 3], layers=(n - 2, n), hook=hook)
    assert (earlier.map - earlier.context_score[:, None, None]).abs().max() > 1e-3


def test_context_and_source_scores_are_those_of_the_plain_runs(vit):
    x = images_for(vit, 2, seed=22)
    result = caap(vit, x, [2, 5], layers=(1, 3), context="mean", score="log_prob")
    with torch.no_grad():
        src = vit(x).log_softmax(-1)
        ctx = vit(torch.zeros_like(x)).log_softmax(-1)  # "mean" = the mean colour = zero normalised input
    assert torch.allclose(result.source_score, src[[0, 1], [2, 5]], atol=1e-5)
    assert torch.allclose(result.context_score, ctx[[0, 1], [2, 5]], atol=1e-5)


@pytest.mark.parametrize("score", ["logit", "prob", "margin"])
def test_relative_is_raw_minus_context_score(vit, score):
    x = images_for(vit, 2, seed=23)
    raw = caap(vit, x, [4, 0], layers=(1, 3), context="blur", score=score)
    rel = caap(vit, x, [4, 0], layers=(1, 3), context="blur", score=score, relative=True)
    assert torch.allclose(rel.map, raw.map - raw.context_score[:, None, None], atol=1e-6)
    assert torch.equal(rel.context_score, raw.context_score)
    assert torch.allclose(rel.effect, raw.effect, atol=1e-6)
    assert torch.allclose(rel.recovered, raw.recovered, atol=1e-5)


def test_effect_and_recovered_are_consistent(vit):
    x = images_for(vit, 2, seed=24)
    r = caap(vit, x, [1, 2], layers=(1, 4))
    assert torch.allclose(r.effect, r.map - r.context_score[:, None, None])
    gap = (r.source_score - r.context_score)[:, None, None]
    assert torch.allclose(r.recovered, r.effect / gap)
    assert torch.allclose(r.recovered * gap + r.context_score[:, None, None], r.map, atol=1e-5)


def test_per_layer_context_scores_follow_each_layer(vit):
    # "mean_activation" gives each window start its own context run, so per-layer maps need per-layer
    # context scores for `effect` to mean "map minus the context score" layer by layer.
    x = images_for(vit, 2, seed=25)
    raw = caap(vit, x, [1, 2], layers=(0, 3), heads=True, per_layer=True, context="mean_activation")
    rel = caap(vit, x, [1, 2], layers=(0, 3), heads=True, per_layer=True, context="mean_activation", relative=True)
    assert raw.context_score.shape == (2, 3)
    for i, layer in enumerate(range(0, 3)):
        alone = caap(vit, x, [1, 2], layers=(layer, layer + 1), heads=True, context="mean_activation")
        assert torch.allclose(raw.context_score[:, i], alone.context_score, atol=1e-6)
    assert not torch.allclose(raw.context_score[:, 0], raw.context_score[:, 1], atol=1e-4)
    assert torch.allclose(raw.effect, rel.map, atol=1e-5)
    gap = raw.source_score[:, None] - raw.context_score
    assert torch.allclose(raw.recovered, raw.effect / gap[:, :, None, None, None], atol=1e-5)


# ------------------------------------------------------------------------------------ per head
def test_all_heads_at_a_token_equals_z_token_patching(vit):
    x = images_for(vit, 2, seed=30)
    grid, n_heads = vit.grid, vit.cfg.n_heads
    per_head = head_units(patch_units(grid), n_heads)  # [1, heads * patches, pos, head], heads first
    assert per_head.masks.shape == (1, n_heads * grid.n_patches, grid.n_tokens, n_heads)
    all_heads = per_head.masks.reshape(1, n_heads, grid.n_patches, grid.n_tokens, n_heads).any(1)
    units = Units(all_heads, grid.grid_size)
    settings = caap_settings(vit, windows=[(1, 3)], hook="z", batch_size=7)
    by_heads = patched_scores(vit, x, [5, 1], settings, units=units).maps
    by_token = patched_scores(vit, x, [5, 1], settings).maps
    diff = (by_heads["logit"] - by_token["logit"]).abs().max().item()
    record("all heads at a token vs z token patching", diff)
    assert diff < 1e-5
    assert by_heads["logit"].shape == (1, 2, *grid.grid_size)


def _naive_head_score(model, x, ctx_image, target, window, image, head, patch):
    """One hooked run: head ``head`` of patch ``patch`` at attn.hook_z over ``window``, from image ``image``."""
    with torch.no_grad():
        _, cache = model.run_with_cache(x[image : image + 1], names_filter=lambda n: n.endswith("hook_z"))
        mask = torch.zeros(1, model.grid.n_tokens, model.cfg.n_heads, dtype=torch.bool)
        mask[0, model.grid.token_of(patch), head] = True
        hooks = patch_hooks(cache, "z", range(*window), mask)
        return float(model.run_with_hooks(ctx_image, fwd_hooks=hooks)[0, target])


def test_heads_map_equals_patching_each_head_alone(vit):
    x = images_for(vit, 2, seed=31)
    window, targets = (1, 3), [6, 3]
    result = caap(vit, x, targets, layers=window, heads=True, batch_size=10)
    assert result.map.shape == (2, vit.cfg.n_heads, *vit.grid.grid_size)
    assert result.settings["hook"] == "z"
    zero_ctx = torch.zeros(1, 3, 64, 64)  # the default "mean" context
    worst = 0.0
    for image in range(2):
        for head in range(vit.cfg.n_heads):
            for patch in (0, 6, 13):
                row, col = vit.grid.rc_of(patch)
                naive = _naive_head_score(vit, x, zero_ctx, targets[image], window, image, head, patch)
                worst = max(worst, abs(float(result.map[image, head, row, col]) - naive))
    record("heads=True vs one head alone (naive)", worst)
    assert worst < FP32_TOL
    # Heads differ from each other (a per-head map is not the same map repeated).
    assert (result.map[:, 0] - result.map[:, 1]).abs().max() > 1e-3
    # A subset of heads, in any order, is the same maps.
    subset = caap(vit, x, targets, layers=window, heads=[2, 0])
    assert subset.map.shape == (2, 2, *vit.grid.grid_size)
    assert torch.allclose(subset.map, result.map[:, [2, 0]], atol=1e-5)


def test_per_layer_equals_single_layer_windows(vit):
    x = images_for(vit, 2, seed=32)
    result = caap(vit, x, [2, 9], layers=(1, 4), heads=True, per_layer=True, batch_size=13)
    assert result.map.shape == (2, 3, vit.cfg.n_heads, *vit.grid.grid_size)
    worst = 0.0
    for i, layer in enumerate(range(1, 4)):
        alone = caap(vit, x, [2, 9], layers=(layer, layer + 1), heads=True).map
        worst = max(worst, (result.map[:, i] - alone).abs().max().item())
    record("per_layer vs single-layer windows", worst)
    assert worst < 1e-5
    assert (result.map[:, 0] - result.map[:, 2]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------ regions
def _regions(grid) -> torch.Tensor:
    gh, gw = grid.grid_size
    regions = torch.zeros(3, gh, gw, dtype=torch.bool)
    regions[0, :, : gw // 2] = True  # left half
    regions[1, : gh // 2, : gw // 2] = True  # top-left quadrant
    regions[2, 1, 2] = regions[2, 3, 0] = regions[2, 0, 3] = True  # three scattered patches
    return regions


def _naive_region_scores(model, x, targets, window, hook, regions_per_image):
    """One hooked run per (image, region) from the zero ("mean") context."""
    out = torch.empty(x.shape[0], regions_per_image.shape[1])
    with torch.no_grad():
        _, cache = model.run_with_cache(x)
        for b in range(x.shape[0]):
            source = {k: v[b : b + 1] for k, v in cache.items()}
            for r in range(regions_per_image.shape[1]):
                mask = model.grid.token_mask(regions_per_image[b, r][None])
                hooks = patch_hooks(source, hook, range(*window), mask)
                out[b, r] = model.run_with_hooks(torch.zeros_like(x[:1]), fwd_hooks=hooks)[0, targets[b]]
    return out


def test_region_map_equals_naive_region_patch(vit):
    x = images_for(vit, 2, seed=40)
    regions = _regions(vit.grid)
    result = caap(vit, x, [3, 8], layers=(1, 3), hook="resid_mid", region=regions, batch_size=4)
    assert result.map.shape == (2, 3)
    naive = _naive_region_scores(vit, x, [3, 8], (1, 3), "resid_mid", regions[None].expand(2, -1, -1, -1))
    diff = (result.map - naive).abs().max().item()
    record("region map vs naive region patch", diff)
    assert diff < FP32_TOL
    # A single-patch region is that patch's value in the patch map.
    one = torch.zeros(1, *vit.grid.grid_size, dtype=torch.bool)
    one[0, 2, 1] = True
    patch_map = caap(vit, x, [3, 8], layers=(1, 3), hook="resid_mid").map
    assert torch.allclose(caap(vit, x, [3, 8], layers=(1, 3), hook="resid_mid", region=one).map[:, 0],
                          patch_map[:, 2, 1], atol=1e-5)


def test_per_image_regions(vit):
    x = images_for(vit, 2, seed=41)
    shared = _regions(vit.grid)
    per_image = torch.stack([shared, shared.flip(-1)])  # image 1 gets the mirrored regions
    result = caap(vit, x, [0, 4], layers=(0, 2), region=per_image, batch_size=5)
    assert result.map.shape == (2, 3)
    naive = _naive_region_scores(vit, x, [0, 4], (0, 2), "resid_pre", per_image)
    diff = (result.map - naive).abs().max().item()
    record("per-image regions vs naive", diff)
    assert diff < FP32_TOL
    # Image 0 used the shared regions, image 1 the mirrored ones (not the shared ones).
    with_shared = caap(vit, x, [0, 4], layers=(0, 2), region=shared).map
    assert torch.allclose(result.map[0], with_shared[0], atol=1e-5)
    assert not torch.allclose(result.map[1], with_shared[1], atol=1e-3)
    # Heads in front of regions.
    by_head = caap(vit, x, [0, 4], layers=(0, 2), region=per_image, heads=True)
    assert by_head.map.shape == (2, vit.cfg.n_heads, 3)


# ------------------------------------------------------------------------------------ bf16
def test_bf16_map_ranks_like_fp32(vit):
    # The perturbed model's patch maps spread over ~0.1-0.4 logits (std), far above bf16's rounding
    # (max |bf16 - fp32| about 5e-3 to 1e-2 here), so the ranking of patches should survive bf16. Over
    # 3 seeds x 2 windows x 4 images (also with all block weights scaled 2-3x) the per-image Spearman
    # was >= 0.93 (typically 0.99+) and the pooled one >= 0.996: 0.9 per image and 0.98 pooled hold
    # with margin while still failing for a broken bf16 path (e.g. random maps give ~0).
    x = images_for(vit, 4, seed=50)
    fp32 = caap(vit, x, "predicted", layers=(1, 3))
    bf16 = caap(vit, x, "predicted", layers=(1, 3), dtype=torch.bfloat16)
    assert bf16.settings["dtype"] == "torch.bfloat16"
    assert not torch.equal(fp32.map, bf16.map), "bf16 gave bit-identical maps: autocast did not run"
    assert bf16.map.dtype == torch.float32
    per_image = spearman(fp32.map, bf16.map).tolist()  # caap_lens.stats, checked against SciPy in test_metrics
    pooled = float(spearman(fp32.map.reshape(1, -1), bf16.map.reshape(1, -1))[0])
    print(f"[bf16 spearman] per image {[round(s, 4) for s in per_image]} pooled {pooled:.4f} "
          f"max|diff| {(fp32.map - bf16.map).abs().max():.3e} fp32 map std {fp32.map.std():.3f}")
    assert min(per_image) > 0.9
    assert pooled > 0.98
    assert torch.equal(fp32.targets, bf16.targets)


def test_float32_dtype_changes_nothing(vit):
    x = images_for(vit, 2, seed=51)
    default = caap(vit, x, [1, 2], layers=(1, 3), heads=[0, 2])
    explicit = caap(vit, x, [1, 2], layers=(1, 3), heads=[0, 2], dtype=torch.float32)
    assert torch.equal(default.map, explicit.map)
    assert torch.equal(default.context_score, explicit.context_score)
    assert torch.equal(default.source_score, explicit.source_score)


# ------------------------------------------------------------------------------------ user hooks
def test_fwd_hooks_are_active_and_removed(vit):
    x = images_for(vit, 2, seed=60)
    calls = []

    def zero_head_0(z, hook):
        calls.append(z.shape[0])
        z = z.clone()
        z[:, :, 0] = 0.0
        return z

    hooks = [("blocks.1.attn.hook_z", zero_head_0)]
    plain = caap(vit, x, [2, 7], layers=(1, 3), context="blur", batch_size=7)
    hooked = caap(vit, x, [2, 7], layers=(1, 3), context="blur", batch_size=7, fwd_hooks=hooks)
    assert no_hooks_left(vit)
    assert calls, "the user hook never ran"
    assert (hooked.map - plain.map).abs().max() > 1e-3
    assert (hooked.source_score - plain.source_score).abs().max() > 1e-4  # source run hooked too
    # Same as the naive loop run with the user's hook active everywhere.
    with vit.hooks(fwd_hooks=hooks):
        naive = caap_naive(vit, x, [2, 7], layers=(1, 3), context="blur")
    diff = (hooked.map - naive).abs().max().item()
    record("fwd_hooks map vs naive loop under the same hook", diff)
    assert diff < FP32_TOL
    assert no_hooks_left(vit)
    assert torch.equal(caap(vit, x, [2, 7], layers=(1, 3), context="blur", batch_size=7).map, plain.map)


def test_fwd_hooks_removed_after_a_user_hook_raises(vit):
    x = images_for(vit, 2, seed=61)
    before = caap(vit, x, [2, 7], layers=(0, 2)).map
    count = []

    def fail_later(act, hook):
        count.append(1)
        if len(count) > 3:  # fails in the patched runs, after the source and context runs
            raise RuntimeError("user hook exploded")
        return act

    with pytest.raises(RuntimeError, match="user hook exploded"):
        caap(vit, x, [2, 7], layers=(0, 2), batch_size=5, fwd_hooks=[("blocks.1.hook_mlp_out", fail_later)])
    assert no_hooks_left(vit)
    assert torch.equal(caap(vit, x, [2, 7], layers=(0, 2)).map, before)


# ------------------------------------------------------------------------------------ result helpers
def test_to_pixels_is_nearest_upsampling(vit):
    x = images_for(vit, 2, seed=70)
    r = caap(vit, x, [1, 2], layers=(1, 3))
    px = r.to_pixels()
    assert px.shape == (2, 64, 64)
    rows = torch.arange(64) // vit.grid.patch_size[0]
    cols = torch.arange(64) // vit.grid.patch_size[1]
    assert torch.equal(px, r.map[:, rows][:, :, cols])
    for patch in (0, 9, 15):
        top, left, bottom, right = vit.grid.pixel_box(patch)
        row, col = vit.grid.rc_of(patch)
        assert bool((px[1, top:bottom, left:right] == r.map[1, row, col]).all())
    assert r.to_pixels("bilinear").shape == (2, 64, 64)
    heads = caap(vit, x, [1, 2], layers=(1, 3), heads=True)
    assert torch.equal(heads.to_pixels(), heads.map[..., rows, :][..., cols])
    region = caap(vit, x, [1, 2], layers=(1, 3), region=_regions(vit.grid))
    with pytest.raises(ValueError, match="patch map"):
        region.to_pixels()


def test_top_patches_sorted_and_on_the_grid(vit):
    x = images_for(vit, 2, seed=71)
    r = caap(vit, x, [1, 2], layers=(1, 3))
    for image in (0, 1):
        top = r.top_patches(5, image=image)
        values = [t["value"] for t in top]
        assert values == sorted(values, reverse=True) and len(top) == 5
        expected = r.map[image].flatten().argsort(descending=True)[:5].tolist()
        assert [t["patch"] for t in top] == expected
        for t in top:
            assert (t["row"], t["col"]) == vit.grid.rc_of(t["patch"])
            assert t["value"] == pytest.approx(float(r.map[image, t["row"], t["col"]]))
    assert len(r.top_patches(100)) == vit.grid.n_patches
    with pytest.raises(ValueError, match=r"\[batch, gh, gw\]"):
        caap(vit, x, [1, 2], layers=(1, 3), heads=True).top_patches(3)


# ------------------------------------------------------------------------------------ bad input
BAD_INPUT = [
    (dict(layers=(0, 5)), ValueError, r"0 <= start < stop <= n_layers=4"),
    (dict(layers=(-1, 2)), ValueError, r"0 <= start < stop <= n_layers=4"),
    (dict(layers=(2, 2)), ValueError, r"0 <= start < stop"),
    (dict(layers=(3, 1)), ValueError, r"0 <= start < stop"),
    (dict(layers=(1, 2, 3)), ValueError, r"\(start, stop\) pair of ints"),
    (dict(layers=2), ValueError, r"\(start, stop\) pair of ints"),
    (dict(layers=(1.5, 3)), ValueError, r"\(start, stop\) pair of ints"),
    (dict(hook="resid"), ValueError, r"unknown hook 'resid'.*resid_pre.*mlp_post"),
    (dict(context="grey"), ValueError, r"unknown context 'grey'.*mean, black, blur, noise, mean_activation"),
    (dict(context=torch.zeros(3, 32, 32)), ValueError, r"context image must be \[C, H, W\].*\(2, 3, 64, 64\)"),
    (dict(context=torch.zeros(3, 3, 64, 64)), ValueError, r"context image must be .*\[1 or batch, C, H, W\]"),
    (dict(target=10), ValueError, r"target 10 is out of range for 10 classes"),
    (dict(target=[1, -1]), ValueError, r"target -1 is out of range for 10 classes"),
    (dict(target="platypus"), ValueError, r"unknown class name 'platypus'"),
    (dict(target="class"), ValueError, r"unknown class name 'class' \(did you mean class_0"),
    (dict(target=[1, 2, 3]), ValueError, r"got 3 targets for 2 images: give one per image"),
    (dict(target=[2.5, 1]), ValueError, r"target 2.5 is not a class index"),
    (dict(region=torch.ones(3, 3, dtype=torch.bool)), ValueError, r"patch grid \(4, 4\)"),
    (dict(region=torch.ones(4, 4)), TypeError, r"region must be a bool tensor"),
    (dict(region=torch.zeros(2, 4, 4, dtype=torch.bool)), ValueError, r"every region must contain at least one patch"),
    (dict(region=torch.ones(3, 2, 4, 4, dtype=torch.bool)), ValueError, r"\[batch=2, n_regions, gh, gw\]"),
    (dict(heads=[3]), ValueError, r"heads must be indices in \[0, 3\)"),
    (dict(heads=[-1, 0]), ValueError, r"heads must be indices in \[0, 3\)"),
    (dict(heads=[]), ValueError, r"heads must be indices in \[0, 3\)"),
    (dict(heads=True, hook="resid_pre"), ValueError, r"per-head maps patch attn.hook_z.*hook='z'"),
    (dict(per_layer=True), ValueError, r"per_layer=True needs heads=True"),
    (dict(batch_size=0), ValueError, r"batch_size must be >= 1, got 0"),
    (dict(score="accuracy"), ValueError, r"unknown score 'accuracy'.*logit, prob, sigmoid, log_prob, margin"),
    (dict(dtype=torch.float64), ValueError, r"dtype must be None, torch.bfloat16 or torch.float16"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_INPUT, ids=[f"{k}" for k, _, _ in BAD_INPUT])
def test_bad_input_is_a_clear_error(vit, kwargs, error, match):
    x = images_for(vit, 2, seed=80)
    kwargs = dict(kwargs)
    target = kwargs.pop("target", [1, 2])
    with pytest.raises(error, match=match):
        caap(vit, x, target, **kwargs)
    assert no_hooks_left(vit)


@pytest.mark.parametrize(
    "images,match",
    [
        (torch.zeros(2, 3, 32, 32), r"expected images \[batch, 3, 64, 64\], got \(2, 3, 32, 32\)"),
        (torch.zeros(2, 1, 64, 64), r"expected images \[batch, 3, 64, 64\]"),
        (torch.zeros(3, 64, 64), r"unbatched image.*unsqueeze\(0\)"),
    ],
)
def test_images_of_the_wrong_size(vit, images, match):
    with pytest.raises(ValueError, match=match):
        caap(vit, images)


def test_class_names_without_class_names_on_the_model():
    model = get_model("deit3")
    with pytest.raises(ValueError, match=r"class name but the model has no class_names"):
        caap(model, images_for(model, 1, seed=0), "cat")


def test_settings_reject_bad_windows_and_duplicate_score_names(vit):
    with pytest.raises(ValueError, match="no windows given"):
        caap_settings(vit, windows=[])
    with pytest.raises(ValueError, match=r"window \(1, 9\) must satisfy"):
        caap_settings(vit, windows=[(0, 2), (1, 9)])
    with pytest.raises(TypeError, match="build it with caap_settings"):
        patched_scores(vit, images_for(vit, 1, seed=81), 1, [(0, 2)])

    def mine(out, target):
        return out[:, 0]

    def also_mine(out, target):
        return out[:, 1]

    also_mine.__name__ = "mine"
    with pytest.raises(ValueError, match=r"distinct names.*\['mine', 'mine'\]"):
        caap_settings(vit, windows=[(0, 2)], scores=[mine, also_mine])


def test_sigmoid_score_is_the_sigmoid_of_the_logit_map():
    from caap_lens import HookedViT

    # Multi-label models score classes independently; "sigmoid" must equal sigmoid(logit) per patch.
    from caap_lens.attribution.scores import resolve_score

    model = HookedViT.from_timm("vit_tiny_patch16_224", depth=2, img_size=32)
    images = torch.randn(2, 3, 32, 32)
    logits = caap(model, images, target=[1, 4], layers=(0, 1), score="logit")
    probs = caap(model, images, target=[1, 4], layers=(0, 1), score="sigmoid")
    torch.testing.assert_close(probs.map, torch.sigmoid(logits.map))
    torch.testing.assert_close(probs.source_score, torch.sigmoid(logits.source_score))
    out = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    torch.testing.assert_close(resolve_score("sigmoid")(out, torch.tensor([1, 0])), torch.sigmoid(torch.tensor([2.0, 1.0])))


def test_bf16_restores_the_model_weights_exactly_even_after_an_error():
    # dtype=bf16 swaps the blocks' parameter data for bf16 copies during the call; the float32
    # originals (same Parameter objects) must come back bit for bit, also when a hook raises.
    from caap_lens import HookedViT

    model = HookedViT.from_timm("vit_tiny_patch16_224", depth=2, img_size=32)
    images = torch.randn(1, 3, 32, 32)
    before = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    plain = caap(model, images, layers=(0, 2)).map

    caap(model, images, layers=(0, 2), dtype=torch.bfloat16)

    def boom(act, *, hook):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        caap(model, images, layers=(0, 2), dtype=torch.bfloat16, fwd_hooks=[("blocks.1.hook_mlp_out", boom)])
    for name, param in model.named_parameters():
        original, value = before[name]
        assert param is original and param.dtype == torch.float32, name
        assert torch.equal(param.detach(), value), name
    assert torch.equal(caap(model, images, layers=(0, 2)).map, plain)

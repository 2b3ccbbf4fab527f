"""Evaluation metrics (`caap_lens.metrics`): localisation against masks, perturbation curves, the
randomisation sanity check and the statistics helpers.

Every metric is checked where its answer is known by construction (a map that *is* the mask, its
inverse, a constant map at chance; perturbed inputs inspected unit by unit; curve endpoints equal
to direct model runs), and against Quantus where it has the same metric (skipped without Quantus).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from caap_lens.attribution.engine import caap
from caap_lens.grid import PatchGrid
from caap_lens.metrics import (
    average_ranks,
    chance_level,
    curve_auc,
    deletion_curve,
    insertion_curve,
    mask_auroc,
    mask_energy,
    mean_ci,
    perturbation_curve,
    perturbed_images,
    pointing_game,
    randomisation_check,
    randomise_layers,
    spearman,
    substrate_images,
    top_overlap,
    unit_order,
)
from caap_lens.stats import pearson, t_quantile
from conftest import images_for, tiny_vit

GRID = PatchGrid(grid_size=(4, 4), patch_size=(16, 16), n_prefix_tokens=1)


def _build():
    return tiny_vit(seed=11, depth=4, img_size=64)


@pytest.fixture
def vit():
    return _build()


def caap_map(model, images, targets):
    return caap(model, images, targets).map


def random_masks(n: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, 64, 64, generator=gen) < 0.05
    for i in range(n):
        top, left = torch.randint(0, 40, (2,), generator=gen).tolist()
        masks[i, top : top + 20, left : left + 17] = True
    return masks


# --------------------------------------------------------------------------------- localisation
def test_mask_as_map_is_perfect_and_inverse_is_zero():
    masks = random_masks()
    for maps, expected in ((masks.float(), 1.0), ((~masks).float(), 0.0)):
        assert pointing_game(maps, masks).tolist() == [expected] * 3
        assert pointing_game(maps, masks, ties="any").tolist() == [expected] * 3
        assert torch.allclose(mask_energy(maps, masks, offset="min"), torch.full((3,), expected))
        assert torch.allclose(mask_energy(maps, masks, offset="zero"), torch.full((3,), expected))
        assert mask_auroc(maps, masks).tolist() == [expected] * 3


def test_patch_aligned_mask_as_patch_map_is_perfect():
    patch_mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    patch_mask[0, 1:3, 2] = True
    patch_mask[1, 0, :] = True
    masks = GRID.to_pixels(patch_mask.float()) > 0.5
    for grid in (GRID, _build()):  # a PatchGrid or a model
        assert pointing_game(patch_mask.float(), masks, grid=grid).tolist() == [1.0, 1.0]
        assert mask_energy(patch_mask.float(), masks, grid=grid).tolist() == [1.0, 1.0]
        assert mask_auroc(patch_mask.float(), masks, grid=grid).tolist() == [1.0, 1.0]
        assert mask_auroc((~patch_mask).float(), masks, grid=grid).tolist() == [0.0, 0.0]


def test_constant_map_is_at_chance():
    masks = random_masks(4, seed=1)
    constant = torch.full((4, 64, 64), 0.7)
    area = masks.flatten(1).float().mean(1)
    assert torch.equal(chance_level(masks), area)
    assert torch.equal(mask_auroc(constant, masks), torch.full((4,), 0.5, dtype=torch.float64))  # exactly
    assert torch.allclose(pointing_game(constant, masks), area, atol=1e-7)  # ties="fraction"
    assert torch.allclose(mask_energy(constant, masks), area, atol=1e-6)
    assert torch.allclose(pointing_game(constant, masks, tolerance_px=3), chance_level(masks, 3), atol=1e-7)
    assert (chance_level(masks, 3) > area).all()
    # The documented alternative rule is not at chance: a constant map always "hits".
    assert pointing_game(constant, masks, ties="any").tolist() == [1.0] * 4
    # A constant patch map, upsampled, is at chance too.
    assert torch.equal(mask_auroc(torch.ones(4, 4, 4), masks, grid=GRID), torch.full((4,), 0.5, dtype=torch.float64))


def test_pointing_game_ties_tolerance_and_patch_upsampling():
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:20, 10:20] = True
    maps = torch.zeros(1, 64, 64)
    maps[0, 15, 15] = maps[0, 40, 40] = 1.0  # two maxima, one inside
    assert pointing_game(maps, masks).tolist() == [0.5]
    assert pointing_game(maps, masks, ties="any").tolist() == [1.0]
    maps = torch.zeros(1, 64, 64)
    maps[0, 22, 15] = 1.0  # 3 px below the mask
    assert pointing_game(maps, masks, tolerance_px=2).tolist() == [0.0]
    assert pointing_game(maps, masks, tolerance_px=3).tolist() == [1.0]
    patch = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0))
    for fn in (pointing_game, mask_energy, mask_auroc):
        assert torch.equal(fn(patch, masks, grid=GRID), fn(GRID.to_pixels(patch), masks))
    # The top patch (rows/cols 0..15) overlaps the mask on 6x6 of its 256 pixels.
    top = torch.zeros(1, 4, 4)
    top[0, 0, 0] = 1.0
    assert pointing_game(top, masks, grid=GRID).tolist() == [pytest.approx(36 / 256)]


def test_mask_energy_offsets_and_nan_cases():
    masks = random_masks(2, seed=2)
    maps = torch.where(masks, 1.0, -5.0)
    assert mask_energy(maps, masks).tolist() == [1.0, 1.0]  # all mass above the median is inside
    assert mask_energy(maps, masks, offset="zero").tolist() == [1.0, 1.0]  # negatives clamped
    # No positive mass: chance under "zero" (it used to be NaN, dropped from means: issue 11 defect 2).
    assert torch.allclose(mask_energy(-torch.rand(2, 64, 64), masks, offset="zero"), chance_level(masks))
    empty = masks.clone()
    empty[1] = False
    for fn in (pointing_game, mask_energy, mask_auroc):
        out = fn(torch.rand(2, 64, 64), empty)
        assert not out[0].isnan() and out[1].isnan()
    assert mask_auroc(torch.rand(1, 64, 64), torch.ones(1, 64, 64, dtype=torch.bool)).isnan().all()


def test_mask_auroc_equals_pairwise_probability_with_ties():
    gen = torch.Generator().manual_seed(3)
    maps = torch.randint(0, 4, (3, 8, 8), generator=gen).float()  # many ties
    masks = torch.rand(3, 8, 8, generator=gen) < 0.4
    got = mask_auroc(maps, masks)
    for i in range(3):
        inside, outside = maps[i][masks[i]], maps[i][~masks[i]]
        diff = inside[:, None] - outside[None, :]
        expected = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean()
        assert got[i].item() == pytest.approx(expected.item(), abs=1e-12)


# ----------------------------------------------------------------------------------------- stats
def test_average_ranks_spearman_and_mean_ci():
    values = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert average_ranks(values).tolist() == [[4.0, 1.0, 4.0, 2.0, 4.0], [3.0] * 5]
    a = torch.randn(2, 50, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(spearman(a, a * 3 + 1), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(spearman(a, -a.exp()), -torch.ones(2, dtype=torch.float64))
    assert spearman(a, torch.ones(2, 50)).isnan().all()  # constant map: undefined
    assert t_quantile(0.975, 2) == pytest.approx(4.302652729749464, abs=1e-8)
    assert t_quantile(0.975, 30) == pytest.approx(2.042272456301238, abs=1e-8)
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0, float("nan")])  # NaN dropped
    half = 4.302652729749464 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n), sd = 1
    assert (mean, lo, hi) == pytest.approx((2.0, 2 - half, 2 + half))
    boot = mean_ci(torch.arange(20.0), method="bootstrap", seed=1)
    assert boot == mean_ci(torch.arange(20.0), method="bootstrap", seed=1) and boot[1] < 9.5 < boot[2]
    x = torch.randn(3, 6).double()
    assert torch.equal(top_overlap(x, x), torch.ones(3))


def test_stats_agree_with_scipy():
    stats = pytest.importorskip("scipy.stats", reason="SciPy absent: independent rank/t check skipped")
    x = torch.randint(0, 6, (4, 40), generator=torch.Generator().manual_seed(1)).float()
    y = torch.randn(4, 40, generator=torch.Generator().manual_seed(2))
    assert np.allclose(average_ranks(x).numpy(), stats.rankdata(x.numpy(), axis=1))
    expected = [stats.spearmanr(x[i], y[i]).statistic for i in range(4)]
    assert np.allclose(spearman(x, y).numpy(), expected, atol=1e-12)
    # Maps [batch, gh, gw]: one correlation per image over its flattened patches, ties included.
    maps_a, maps_b = x.view(4, 5, 8), y.view(4, 5, 8)
    assert np.allclose(spearman(maps_a, maps_b).numpy(), expected, atol=1e-12)
    pearsons = [stats.pearsonr(x[i], y[i]).statistic for i in range(4)]
    assert np.allclose(pearson(maps_a, maps_b).numpy(), pearsons, atol=1e-12)
    for df in (1, 3, 10, 100):
        assert t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-7)


# ---------------------------------------------------------------------------------------- curves
def test_curve_auc_is_the_trapezoid_rule():
    x = torch.tensor([0.0, 0.1, 0.4, 1.0], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.5, 0.25, 0.0], [0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    by_hand = [sum((x[i + 1] - x[i]) * (row[i] + row[i + 1]) / 2 for i in range(3)).item() for row in y]
    assert curve_auc(x, y).tolist() == pytest.approx(by_hand)
    assert by_hand == pytest.approx([0.075 + 0.1125 + 0.075, 0.05 + 0.3 + 0.6])


def _replaced_patches(model, perturbed, images, substrate):
    """Per patch: True where the patch is all substrate, False where it is all source (never mixed)."""
    is_substrate = (perturbed == substrate).all(dim=-3)  # [..., H, W]; random images never equal it
    is_source = (perturbed == images).all(dim=-3)
    assert (is_substrate ^ is_source).all()
    pooled = model.grid.pool_pixels(is_substrate.float(), "mean")
    assert ((pooled == 0) | (pooled == 1)).all()  # whole patches only
    return pooled.flatten(-2) == 1


def test_perturbed_images_replace_exactly_the_ranked_units(vit):
    images = images_for(vit, 2, seed=0)
    gen = torch.Generator().manual_seed(0)
    maps = torch.stack([torch.randperm(16, generator=gen).float().view(4, 4) for _ in range(2)])
    top_first = maps.flatten(1).argsort(dim=1, descending=True)
    counts = [0, 1, 5, 15, 16]
    substrate = substrate_images(vit, images, "black")
    for mode in ("deletion", "insertion", "positive", "negative"):
        out = perturbed_images(vit, images, maps, counts, mode=mode, substrate="black")
        assert out.shape == (2, len(counts), 3, 64, 64)
        replaced = _replaced_patches(vit, out, images[:, None], substrate[:, None])
        for b, (j, k) in itertools.product(range(2), enumerate(counts)):
            expected = torch.zeros(16, dtype=torch.bool)
            if mode in ("deletion", "positive"):
                expected[top_first[b, :k]] = True
            elif mode == "negative":
                expected[top_first[b, 16 - k :]] = True
            else:
                expected[:] = True
                expected[top_first[b, :k]] = False
            assert torch.equal(replaced[b, j], expected), (mode, b, k)
    pos, neg = (
        _replaced_patches(vit, perturbed_images(vit, images, maps, [k], mode=mode), images[:, None], substrate[:, None])
        for k, mode in ((5, "positive"), (11, "negative"))
    )
    assert torch.equal(pos ^ neg, torch.ones_like(pos))  # complementary sets


def test_pixel_units_and_ties_are_deterministic(vit):
    flat = torch.tensor([[0.0, 2.0, 2.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0]])
    order, unit = unit_order(vit, flat.view(1, 4, 4))
    assert unit == "patch" and order.tolist() == [[15, 1, 2, 4, 3, 0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]
    assert torch.equal(unit_order(vit, torch.zeros(1, 4, 4))[0], torch.arange(16)[None])
    pixel_order, unit = unit_order(vit, flat.view(1, 4, 4), unit="pixel")
    first_patch = pixel_order[0, :256]  # patch 15 (bottom right), row-major inside it
    rows, cols = first_patch // 64, first_patch % 64
    assert unit == "pixel" and (rows >= 48).all() and (cols >= 48).all()
    assert torch.equal(first_patch, torch.sort(first_patch).values)
    # Pixel units on a pixel map: after k pixels, exactly the top-k pixels are substrate.
    images = images_for(vit, 1, seed=4)
    pixel_map = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(5))
    out = perturbed_images(vit, images, pixel_map, [100, 4096], mode="deletion", substrate="mean")
    top = pixel_map.flatten().argsort(descending=True)[:100]
    replaced = (out[0, 0] == 0).all(dim=0).flatten()  # the "mean" substrate is a zero input
    assert set(replaced.nonzero().flatten().tolist()) == set(top.tolist())
    assert (out[0, 1] == 0).all()


def test_deletion_and_insertion_endpoints_and_chunking(vit):
    images = images_for(vit, 3, seed=6)
    maps = caap_map(vit, images, "predicted")
    with torch.no_grad():
        clean = vit(images).softmax(-1)
        targets = clean.argmax(-1)
        black = vit(substrate_images(vit, images, "black")).softmax(-1)
        blurred = vit(substrate_images(vit, images, "rise_blur")).softmax(-1)

    def pick(probs):
        return probs.gather(1, targets[:, None])[:, 0].double()

    deletion = deletion_curve(vit, images, maps, "predicted", substrate="black", batch_size=64)
    assert deletion.x.tolist() == [k / 16 for k in range(17)] and deletion.y.shape == (3, 17)
    assert torch.equal(deletion.targets, targets)
    assert torch.allclose(deletion.y[:, 0], pick(clean), atol=1e-6)
    assert torch.allclose(deletion.y[:, -1], pick(black), atol=1e-6)
    assert torch.allclose(deletion.auc, curve_auc(deletion.x, deletion.y))
    insertion = insertion_curve(vit, images, maps, targets, steps=4)
    assert insertion.x.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert torch.allclose(insertion.y[:, 0], pick(blurred), atol=1e-6)
    assert torch.allclose(insertion.y[:, -1], pick(clean), atol=1e-6)
    for batch_size in (1, 7):
        again = deletion_curve(vit, images, maps, "predicted", substrate="black", batch_size=batch_size)
        assert torch.allclose(again.y, deletion.y, atol=1e-6, rtol=0)
    # A pixel map that is the upsampled patch map, ranked by patch (mean pooling), is the same curve.
    pooled = deletion_curve(vit, images, vit.grid.to_pixels(maps), "predicted", substrate="black", unit="patch")
    assert torch.allclose(pooled.y, deletion.y, atol=1e-6) and pooled.settings["unit"] == "patch"
    pixels = deletion_curve(vit, images, maps, "predicted", unit="pixel", steps=8)
    assert pixels.settings["counts"] == [512 * s for s in range(9)]
    uneven = deletion_curve(vit, images, maps, "predicted", steps=3)  # k_s = floor(s * 16 / 3)
    assert uneven.settings["counts"] == [0, 5, 10, 16] and uneven.x.tolist() == [0.0, 5 / 16, 10 / 16, 1.0]


def test_perturbation_curve(vit):
    images = images_for(vit, 3, seed=7)
    maps = caap_map(vit, images, "predicted")
    pos = perturbation_curve(vit, images, maps, positive=True)
    neg = perturbation_curve(vit, images, maps, positive=False)
    assert pos.settings["counts"] == [0, 1, 3, 4, 6, 8, 9, 11, 12, 14]  # floor(f * 16)
    assert pos.y[:, 0].tolist() == [1.0] * 3 and neg.y[:, 0].tolist() == [1.0] * 3  # 0 %: still predicted
    assert set(pos.y.flatten().tolist()) <= {0.0, 1.0}
    assert torch.allclose(pos.auc, curve_auc(pos.x, pos.y))
    prob = perturbation_curve(vit, images, maps, positive=False, score="prob", fractions=(0.0, 0.5))
    with torch.no_grad():
        p = vit(images).softmax(-1).max(-1).values.double()
    assert torch.allclose(prob.y[:, 0], p, atol=1e-6)
    # Positive at k and negative at n - k replace complementary halves: same images as the reversed ranking.
    half_pos = perturbation_curve(vit, images, maps, fractions=(0.5,), score="logit")
    half_neg = perturbation_curve(vit, images, -maps, fractions=(0.5,), score="logit", positive=False)
    assert all(row.unique().numel() == 16 for row in maps.flatten(1))  # no ties: the rankings agree
    assert torch.allclose(half_pos.y, half_neg.y, atol=1e-6)


def test_deletion_matches_quantus_region_perturbation(vit):
    quantus = pytest.importorskip("quantus", reason="Quantus absent: independent cross-check skipped")
    images = images_for(vit, 3, seed=8)
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(9))  # distinct values: no ties
    with torch.no_grad():
        targets = vit(images).argmax(-1)
    metric = quantus.RegionPerturbation(patch_size=16, regions_evaluation=16, order="morf", abs=False,
                                        normalise=False, perturb_baseline=0.0, disable_warnings=True)
    theirs = np.asarray(metric(model=vit, x_batch=images.numpy(), y_batch=targets.numpy(),
                               a_batch=vit.grid.to_pixels(maps)[:, None].numpy(), softmax=True,
                               device="cpu", channel_first=True))
    ours = deletion_curve(vit, images, maps, targets, substrate="mean", score="prob")  # "mean" = zero input
    assert theirs.shape == (3, 16)
    assert np.allclose((ours.y[:, :1] - ours.y[:, 1:]).numpy(), theirs, atol=1e-6)


def test_localisation_matches_quantus():
    quantus = pytest.importorskip("quantus", reason="Quantus absent: independent cross-check skipped")
    masks = random_masks(4, seed=10)
    gen = torch.Generator().manual_seed(11)
    cases = {"random": torch.randn(4, 64, 64, generator=gen),
             "ties": torch.randint(0, 3, (4, 64, 64), generator=gen).float(),
             "mask": masks.float() + 0.1 * torch.rand(4, 64, 64, generator=gen)}
    x = np.zeros((4, 3, 64, 64), np.float32)
    y = np.zeros(4, np.int64)
    common = {"abs": False, "normalise": False, "disable_warnings": True}
    for name, maps in cases.items():
        kwargs = {"model": None, "x_batch": x, "y_batch": y, "a_batch": maps[:, None].numpy(),
                  "s_batch": masks[:, None].numpy(), "channel_first": True}
        pg = np.asarray(quantus.PointingGame(**common)(**kwargs), dtype=float)
        auc = np.asarray(quantus.AUC(**common)(**kwargs), dtype=float)
        localisation = quantus.AttributionLocalisation(positive_attributions=True, **common)
        energy = np.asarray(localisation(**kwargs), dtype=float)
        assert np.array_equal(pointing_game(maps, masks, ties="any").numpy(), pg), name
        assert np.allclose(mask_auroc(maps, masks).numpy(), auc, atol=1e-12), name
        # Quantus with positive_attributions=True clamps like offset="zero" (every case has positive
        # mass); for the default offset see tests/test_metrics_ground_truth.py.
        assert np.allclose(mask_energy(maps, masks, offset="zero").numpy(), energy, atol=1e-6), name


# ---------------------------------------------------------------------------------------- sanity
def test_randomising_all_layers_changes_caap_maps_and_leaves_model_alone(vit):
    images = images_for(vit, 6, seed=12)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    report = randomisation_check(caap_map, vit, images, "predicted", start_layers=[4, 0], seed=0)
    assert report["start_layers"] == (4, 0) and report["spearman"].shape == (2, 6)
    assert report["mean_spearman"][1] < 0.5 and bool(report["differs"][1])
    assert report["spearman"][1].max() < 0.9
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in before.items())  # original untouched
    default = randomisation_check(caap_map, vit, images[:2], 3)
    assert default["start_layers"] == (4, 3, 2, 1, 0, "embed") and default["targets"].tolist() == [3, 3]


def test_randomising_zero_layers_gives_correlation_one(vit):
    images = images_for(vit, 3, seed=13)
    report = randomisation_check(caap_map, vit, images, "predicted", start_layers=[4], head=False)
    assert torch.allclose(report["spearman"], torch.ones(1, 3, dtype=torch.float64))
    assert report["top_overlap"].tolist() == [[1.0] * 3] and not report["differs"][0]


def test_randomise_layers_is_a_nested_cascade(vit):
    shallow, deep = randomise_layers(vit, 2, seed=5), randomise_layers(vit, 1, seed=5)
    state, s_shallow, s_deep = vit.state_dict(), shallow.state_dict(), deep.state_dict()
    for name in state:
        layer = int(name.split(".")[1]) if name.startswith("blocks.") else None
        is_weight = name.endswith("weight") and state[name].ndim >= 2
        if layer is not None and layer >= 2:
            assert torch.equal(s_shallow[name], s_deep[name]), name  # same draw at every stage
        if layer is None and not name.startswith(("head", "ln_final")):
            assert torch.equal(s_shallow[name], state[name]), name  # embedding never randomised
        if layer is not None and layer < 2:
            assert torch.equal(s_shallow[name], state[name]), name
            if layer == 1 and is_weight:
                assert not torch.equal(s_deep[name], state[name]), name
    assert s_deep["head.weight"].std().item() == pytest.approx(0.02 * 0.88, rel=0.1)  # trunc. N(0, 0.02)
    assert not torch.equal(randomise_layers(vit, 0, seed=6).state_dict()["blocks.0.attn.qkv.weight"],
                           randomise_layers(vit, 0, seed=5).state_dict()["blocks.0.attn.qkv.weight"])


# ------------------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors(vit):
    images = images_for(vit, 2, seed=0)
    maps = torch.rand(2, 4, 4)
    masks = random_masks(2)
    with pytest.raises(TypeError, match="masks must be bool"):
        pointing_game(torch.rand(2, 64, 64), masks.float())
    with pytest.raises(ValueError, match=r"masks must be \[batch, H, W\].*masks\[None\]"):
        mask_energy(torch.rand(1, 64, 64), masks[0])
    with pytest.raises(ValueError, match="pass grid=model"):
        mask_auroc(maps, masks)
    with pytest.raises(ValueError, match=r"masks must be \[batch, 64, 64\]"):
        mask_auroc(maps, torch.ones(2, 32, 32, dtype=torch.bool), grid=GRID)
    with pytest.raises(ValueError, match=r"expected pixel maps \[batch, 64, 64\] or patch maps \[batch, 4, 4\]"):
        pointing_game(torch.rand(2, 5, 5), masks, grid=GRID)
    with pytest.raises(ValueError, match="batch size mismatch: 3 maps for 2 masks"):
        pointing_game(torch.rand(3, 64, 64), masks)
    with pytest.raises(ValueError, match="ties must be"):
        pointing_game(torch.rand(2, 64, 64), masks, ties="first")
    with pytest.raises(ValueError, match="maps contain NaN"):
        mask_energy(torch.full((2, 64, 64), float("nan")), masks)
    with pytest.raises(ValueError, match=r"patch maps \[batch, 4, 4\] or pixel maps \[batch, 64, 64\]"):
        deletion_curve(vit, images, torch.rand(2, 7, 7))
    with pytest.raises(ValueError, match="batch size mismatch: 3 maps for 2 images"):
        insertion_curve(vit, images, torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="out of range for 10 classes"):
        deletion_curve(vit, images, maps, 12)
    with pytest.raises(ValueError, match="got 3 targets for 2 images"):
        perturbation_curve(vit, images, maps, [1, 2, 3])
    with pytest.raises(ValueError, match=r"expected images \[batch, 3, 64, 64\]"):
        deletion_curve(vit, torch.rand(2, 3, 32, 32), maps)
    with pytest.raises(ValueError, match=r"fractions must be .* in \[0, 1\]"):
        perturbation_curve(vit, images, maps, fractions=(0.0, 1.5))
    with pytest.raises(ValueError, match="steps must be a positive int"):
        deletion_curve(vit, images, maps, steps=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        deletion_curve(vit, images, maps, batch_size=0)
    with pytest.raises(ValueError, match="unit must be 'patch', 'pixel' or None"):
        deletion_curve(vit, images, maps, unit="token")
    with pytest.raises(ValueError, match="activation-level context"):
        deletion_curve(vit, images, maps, substrate="mean_activation")
    with pytest.raises(ValueError, match="unknown score"):
        perturbation_curve(vit, images, maps, score="top5")
    with pytest.raises(ValueError, match=r"counts must be .* in \[0, 16\]"):
        perturbed_images(vit, images, maps, [17])
    with pytest.raises(ValueError, match=r"start_layer must be in \[0, 4\]"):
        randomise_layers(vit, 5)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        randomise_layers(vit, 0, seed=-1)
    with pytest.raises(ValueError, match=r"method_fn must return maps \[batch=2, ...\]"):
        randomisation_check(lambda m, x, t: torch.rand(3, 4, 4), vit, images, start_layers=[4])
    with pytest.raises(ValueError, match="at least one value"):
        mean_ci([float("nan")])

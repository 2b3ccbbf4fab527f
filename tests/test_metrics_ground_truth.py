"""Ground-truth metrics (object removal, target specificity), mask energy's convention and counted means.

Every expected value is worked out by hand from maps built so that the answer is known. The Quantus
cross-check for mask energy compares with what Quantus' ``AttributionLocalisation`` actually computes
(signed sums), on the maps where the two definitions agree, and shows where they differ.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from caap_lens.grid import PatchGrid
from caap_lens.metrics import MeanCI, item_mass, mask_energy, mean_ci, object_removal, target_specificity

GRID = PatchGrid(grid_size=(4, 4), patch_size=(16, 16), n_prefix_tokens=1)


def quadrant_items(batch: int = 1) -> torch.Tensor:
    """Four items on a 4x4 pixel image, one per 2x2 quadrant: [batch, 4, 4, 4]."""
    items = torch.zeros(batch, 4, 4, 4, dtype=torch.bool)
    for k, (r, c) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
        items[:, k, r : r + 2, c : c + 2] = True
    return items


def quadrant_map(values) -> torch.Tensor:
    """A 4x4 pixel map whose quadrants hold ``values`` (top-left, top-right, bottom-left, bottom-right)."""
    out = torch.zeros(4, 4)
    for v, (r, c) in zip(values, [(0, 0), (0, 2), (2, 0), (2, 2)]):
        out[r : r + 2, c : c + 2] = v
    return out


# ------------------------------------------------------------------------------ object removal
def test_object_removal_is_the_rank_correlation_of_item_means_with_true_effects():
    items = quadrant_items(4)
    effects = torch.tensor([[4.0, 3.0, 2.0, 1.0]] * 4)
    maps = torch.stack([
        quadrant_map([9, 5, 2, 0]),   # same order as the effects: +1
        quadrant_map([0, 2, 5, 9]),   # reversed: -1
        quadrant_map([9, 0, 5, 2]),   # ranks (4, 1, 3, 2) vs (4, 3, 2, 1): rho = 0.4
        quadrant_map([1, 1, 1, 1]),   # flat: no ranking, 0 by convention
    ])
    got = object_removal(maps, items, effects)
    assert got.tolist() == pytest.approx([1.0, -1.0, 0.4, 0.0])
    # Mass is the mean over the item's pixels, so only the comparison matters: offset and scale free.
    assert object_removal(maps * 3.0 - 7.0, items, effects).tolist() == pytest.approx(got.tolist())


def test_object_removal_uses_the_mean_over_each_items_pixels_not_the_sum():
    items = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    items[0, 0, :, :3] = True  # 12 pixels at value 1: sum 12, mean 1
    items[0, 1, :, 3] = True   # 4 pixels at value 2: sum 8, mean 2
    maps = torch.ones(1, 4, 4)
    maps[0, :, 3] = 2.0
    assert item_mass(maps, items).tolist() == [[1.0, 2.0]]
    assert object_removal(maps, items, torch.tensor([[0.1, 0.9]])).tolist() == [1.0]


def test_object_removal_padding_ties_and_undefined_cases():
    items = quadrant_items(4)
    items[0, 3] = False  # scene 0 has 3 items (item 3 padded)
    effects = torch.tensor([[3.0, 2.0, 1.0, float("nan")],
                            [1.0, float("nan"), float("nan"), float("nan")],  # one item left: undefined
                            [2.0, 2.0, 2.0, 2.0],                             # constant effects: undefined
                            [3.0, 1.0, 2.0, 2.0]])                            # tied effects: average ranks
    maps = torch.stack([quadrant_map([5, 4, 3, 100]), quadrant_map([1, 2, 3, 4]),
                        quadrant_map([1, 2, 3, 4]), quadrant_map([4, 1, 2, 3])])
    got = object_removal(maps, items, effects)
    assert got[0] == pytest.approx(1.0)  # the padded item's huge value is ignored
    assert math.isnan(got[1]) and math.isnan(got[2])
    # ranks of effects (4, 1, 2.5, 2.5), of masses (4, 1, 2, 3): Pearson of the ranks
    a, b = torch.tensor([4, 1, 2.5, 2.5]), torch.tensor([4.0, 1, 2, 3])
    a, b = a - a.mean(), b - b.mean()
    assert got[3] == pytest.approx(float((a * b).sum() / (a.norm() * b.norm())))
    summary = mean_ci(got)
    assert summary.n == 2 and summary.n_dropped == 2  # the undefined scenes are counted, not hidden


def test_object_removal_reads_patch_maps_through_the_grid():
    items = torch.zeros(1, 2, 64, 64, dtype=torch.bool)
    items[0, 0, :16, :16] = True   # patch (0, 0)
    items[0, 1, 48:, 40:56] = True  # half of patches (3, 2) and (3, 3)
    patch_map = torch.zeros(1, 4, 4)
    patch_map[0, 0, 0] = 1.0
    patch_map[0, 3, 2], patch_map[0, 3, 3] = 3.0, 5.0
    assert item_mass(patch_map, items, grid=GRID).tolist() == [[1.0, 4.0]]
    assert object_removal(patch_map, items, torch.tensor([[0.0, 1.0]]), grid=GRID).tolist() == [1.0]
    with pytest.raises(ValueError, match="grid="):
        object_removal(patch_map, items, torch.tensor([[0.0, 1.0]]))
    with pytest.raises(TypeError, match="bool"):
        object_removal(patch_map, items.float(), torch.tensor([[0.0, 1.0]]), grid=GRID)
    with pytest.raises(ValueError, match="true_effects"):
        object_removal(patch_map, items, torch.tensor([0.0, 1.0]), grid=GRID)


# --------------------------------------------------------------------------- target specificity
def test_target_specificity_counts_other_items_with_strictly_less_mass():
    items = quadrant_items(3)
    target, others = items[:, 0], items[:, 1:]
    maps = torch.stack([quadrant_map([5, 1, 2, 3]),   # target above all three others
                        quadrant_map([2, 1, 3, 2]),   # above one, below one, tied with one (a tie is no win)
                        quadrant_map([7, 7, 7, 7])])  # flat: no win
    assert target_specificity(maps, target, others).tolist() == pytest.approx([1.0, 1 / 3, 0.0])


def test_target_specificity_padding_and_no_other_item():
    items = quadrant_items(2)
    others = items[:, 1:].clone()
    others[0, 1:] = False  # scene 0: one other item
    others[1] = False      # scene 1: no other item
    maps = torch.stack([quadrant_map([1, 2, 9, 9]), quadrant_map([1, 2, 3, 4])])
    got = target_specificity(maps, items[:, 0], others)
    assert got[0] == 0.0 and math.isnan(got[1])
    assert (mean_ci(got).n, mean_ci(got).n_dropped) == (1, 1)


# ------------------------------------------------------------------------ mask energy (defect 2)
def test_mask_energy_is_defined_for_every_map():
    """Regression (issue 11, defect 2): a map without positive values used to give NaN, and the means
    dropped it silently. Now it is defined (offset-invariant by default; chance without mass)."""
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True  # a quarter of the image
    negative = -torch.arange(16.0).reshape(1, 4, 4).repeat(3, 1, 1) - 1  # no positive value anywhere
    got = mask_energy(negative, masks)
    assert not got.isnan().any()
    # above the median (-8.5): values -1 .. -8 -> mass 7.5, 6.5, ..., 0.5 (32 in all); the top-left
    # quadrant holds -1, -2, -5, -6 -> 7.5 + 6.5 + 3.5 + 2.5 = 20
    assert got.tolist() == pytest.approx([20 / 32] * 3)
    # a - min(a): the quadrant's mass 15 + 14 + 11 + 10 of 120 in all
    assert mask_energy(negative, masks, offset="min").tolist() == pytest.approx([50 / 120] * 3)
    assert torch.allclose(mask_energy(negative + 100.0, masks), got)  # offset-invariant
    # "zero": mass is relu(a); a map with no positive mass makes no claim: chance (the area fraction).
    assert mask_energy(negative, masks, offset="zero").tolist() == [0.25] * 3
    assert mask_energy(torch.full((3, 4, 4), 2.0), masks).tolist() == [0.25] * 3  # constant: chance
    with pytest.raises(ValueError, match="offset"):
        mask_energy(negative, masks, offset="abs")


def test_mask_energy_offset_zero_clamps_negative_values():
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 0] = True
    maps = torch.full((1, 4, 4), -3.0)
    maps[0, 0, :2] = 1.0
    maps[0, 3, 0] = 2.0  # positive mass 1 + 1 inside, 2 outside
    assert mask_energy(maps, masks, offset="zero").tolist() == [0.5]
    # from the minimum (-3): inside 4 + 4 + 0 + 0, outside 5 + 0 * 11: 8 / 13
    assert mask_energy(maps, masks, offset="min").tolist() == pytest.approx([8 / 13])
    assert mask_energy(maps, masks).tolist() == pytest.approx([8 / 13])  # the median is -3 here too


# ------------------------------------------------------------------- Quantus cross-check (defect 6)
def test_mask_energy_against_what_quantus_computes():
    """Regression (issue 11, defect 6): Quantus' AttributionLocalisation sums *signed* values (and takes
    |a| by default); mask energy measures mass above the map's median. They agree on non-negative maps
    (so on relu(a - median a)); on signed maps they differ, as documented."""
    quantus = pytest.importorskip("quantus", reason="Quantus absent: independent cross-check skipped")
    gen = torch.Generator().manual_seed(21)
    masks = torch.rand(4, 32, 32, generator=gen) < 0.02
    masks[:, 4:20, 6:18] = True
    signed = torch.randn(4, 32, 32, generator=gen)
    x = np.zeros((4, 3, 32, 32), np.float32)
    y = np.zeros(4, np.int64)

    def theirs(a, **options):
        metric = quantus.AttributionLocalisation(abs=False, normalise=False, disable_warnings=True, **options)
        return np.asarray(metric(model=None, x_batch=x, y_batch=y, a_batch=a[:, None].numpy(),
                                 s_batch=masks[:, None].numpy(), channel_first=True), dtype=float)

    above_median = (signed - signed.flatten(1).quantile(0.5, dim=1)[:, None, None]).clamp(min=0)
    assert np.allclose(mask_energy(signed, masks).numpy(), theirs(above_median), atol=1e-6)
    shifted = signed - signed.flatten(1).min(1).values[:, None, None]
    assert np.allclose(mask_energy(signed, masks, offset="min").numpy(), theirs(shifted), atol=1e-6)
    assert np.allclose(mask_energy(signed, masks, offset="zero").numpy(),
                       theirs(signed, positive_attributions=True), atol=1e-6)
    # Where the definitions differ: Quantus on the raw signed map is not our number.
    raw = theirs(signed)
    assert not np.allclose(np.nan_to_num(raw, nan=-1.0), mask_energy(signed, masks).numpy(), atol=1e-3)


# ------------------------------------------------------------------------------- counted means
def test_mean_ci_reports_n_used_and_n_dropped_and_stays_a_tuple():
    result = mean_ci([1.0, 2.0, 3.0, float("nan"), float("nan")])
    assert isinstance(result, MeanCI) and isinstance(result, tuple) and len(result) == 3
    mean, lo, hi = result
    assert (result.mean, result.lo, result.hi) == (mean, lo, hi) and mean == 2.0
    assert (result.n, result.n_dropped) == (3, 2)
    assert result.as_dict()["n_dropped"] == 2
    assert "(n=3, 2 NaN dropped)" in result.format()
    assert mean_ci([1.0, 2.0]).format(1) == f"1.5 [{mean_ci([1.0, 2.0]).lo:.1f}, {mean_ci([1.0, 2.0]).hi:.1f}] (n=2)"
    boot = mean_ci(torch.tensor([0.0, 1.0, float("nan")]), method="bootstrap")
    assert (boot.n, boot.n_dropped) == (2, 1)
    single = mean_ci([4.0, float("nan")])
    assert single.n == 1 and single.n_dropped == 1 and math.isnan(single.lo)
    with pytest.raises(ValueError, match="all NaN"):
        mean_ci([float("nan")] * 3)


def test_mask_energy_from_the_median():
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 0, :2] = True
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0], maps[0, 0, 1], maps[0, 3, 3] = 3.0, 1.0, 4.0  # median 0: mass 3 + 1 inside, 4 outside
    maps[0, 2, 2] = -10.0  # an extreme minimum does not change the median's mass
    assert mask_energy(maps, masks, offset="median").tolist() == [0.5]
    assert mask_energy(maps + 5.0, masks, offset="median").tolist() == [0.5]
    assert mask_energy(torch.ones(1, 4, 4), masks, offset="median").tolist() == [2 / 16]  # no mass: chance

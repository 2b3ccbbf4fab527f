"""Ground-truth metrics for scenes of several items: does a map rank the items as removing them does?

Both metrics read a map's **mass on an item** as the *mean of the map over the item's pixels*, on the
map *as it is* (patch maps ``[batch, gh, gw]`` are first upsampled nearest with ``grid``, so each
pixel carries its patch's value; pixel maps ``[batch, H, W]`` are used directly). The mean (not the
sum) keeps large items from winning by size alone. Both metrics only *compare* masses of one map, so
they are invariant to adding a constant to the map (CAAP with or without ``relative=True`` scores the
same) and to scaling it by a positive factor; they are defined for every map.

Items are given as bool masks ``[batch, K, H, W]``, padded with all-False masks where a scene has
fewer than K items. An item *takes part* when its mask has at least one pixel (and, for
`object_removal`, its true effect is finite); the others are ignored.

* `object_removal` — per map, Spearman's rank correlation (average ranks for ties) between the mass
  on each item and the item's *true effect*: ``score(scene) - score(scene without item k)`` for the
  map's target, as rendered by a scene generator that can remove items. Ground truth in the sense of
  Hooker et al.'s and Zhou et al.'s object-level evaluations, but without re-training: the effect is
  measured on the same model. **Conventions**: NaN when fewer than 2 items take part or their true
  effects are all equal (the scene gives no ranking to compare with); 0.0 when the map puts the same
  mass on every item (it gives no ranking: uninformative, so chance). The NaNs are counted by
  `caap_lens.stats.mean_ci` (``n_dropped``).
* `target_specificity` — per map, the share of the *other* items whose mass is strictly smaller than
  the mass on the target's own item; the mean over maps is the share of (target, other item) pairs
  ranked correctly. Ties count as failures, so a constant map scores 0 and a random one ≈ 0.5.
  NaN when there is no other item, or the target's mask is empty (counted by `mean_ci`).

Example:
    >>> maps = torch.tensor([[[3.0, 1.0], [2.0, 0.0]]])  # a 2x2 pixel map
    >>> items = torch.zeros(1, 3, 2, 2, dtype=torch.bool)
    >>> items[0, 0, 0, 0] = items[0, 1, 1, 0] = items[0, 2, 1, 1] = True  # one pixel each
    >>> object_removal(maps, items, torch.tensor([[0.9, 0.5, 0.1]]))
    tensor([1.], dtype=torch.float64)
    >>> target_specificity(maps, items[:, 1], items[:, [0, 2]])  # mass 2: above 0, below 3
    tensor([0.5000], dtype=torch.float64)
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from caap_lens.metrics.localisation import _grid_of
from caap_lens.stats import spearman

ItemMasks = Bool[Tensor, "batch items height width"]


def _pixel_maps(maps: Any, size: tuple[int, int], grid: Any) -> Tensor:
    """Maps as float64 pixel maps ``[batch, H, W]`` of the masks' size (patch maps upsampled with ``grid``)."""
    maps = torch.as_tensor(maps)
    if maps.dtype == torch.bool or maps.is_complex():
        raise TypeError(f"maps must hold real numbers, got dtype {maps.dtype}")
    if maps.ndim != 3:
        raise ValueError(f"maps must be [batch, H, W] or [batch, gh, gw], got shape {tuple(maps.shape)}")
    if torch.isnan(maps).any():
        raise ValueError("maps contain NaN")
    if tuple(maps.shape[1:]) != size:
        grid = _grid_of(grid)
        if grid is None or tuple(maps.shape[1:]) != grid.grid_size or grid.image_size != size:
            raise ValueError(
                f"maps {tuple(maps.shape)} do not fit masks of {size} pixels: give pixel maps "
                f"[batch, {size[0]}, {size[1]}], or patch maps with grid= (a PatchGrid or the model)"
            )
        maps = grid.to_pixels(maps.float(), mode="nearest")
    return maps.double()


def _check_item_masks(masks: Any, name: str, ndim: int) -> Tensor:
    masks = torch.as_tensor(masks)
    if masks.dtype != torch.bool:
        raise TypeError(f"{name} must be bool, got dtype {masks.dtype}; threshold them first, e.g. masks > 0.5")
    if masks.ndim != ndim:
        shape = "[batch, K, H, W]" if ndim == 4 else "[batch, H, W]"
        raise ValueError(f"{name} must be {shape}, got shape {tuple(masks.shape)}")
    return masks


def item_mass(maps: Any, item_masks: Any, *, grid: Any = None) -> Float[Tensor, "batch items"]:
    """Mean of each map over each item's pixels ``[batch, K]`` (NaN for an empty, padded item).

    Example:
        >>> items = torch.tensor([[[[True, True], [False, False]], [[False, False], [False, False]]]])
        >>> item_mass(torch.tensor([[[1.0, 3.0], [5.0, 7.0]]]), items)
        tensor([[2., nan]], dtype=torch.float64)
    """
    item_masks = _check_item_masks(item_masks, "item_masks", 4)
    maps = _pixel_maps(maps, tuple(item_masks.shape[-2:]), grid)
    if maps.shape[0] != item_masks.shape[0]:
        raise ValueError(f"batch size mismatch: {maps.shape[0]} maps for {item_masks.shape[0]} sets of item masks")
    m = item_masks.to(maps.device).double()
    size = m.sum(dim=(2, 3))
    total = torch.einsum("bhw,bkhw->bk", maps, m)
    return torch.where(size > 0, total / size.clamp(min=1), torch.full_like(total, float("nan")))


def object_removal(
    maps: Any, item_masks: Any, true_effects: Any, *, grid: Any = None
) -> Float[Tensor, " batch"]:
    """Spearman correlation, per map, of its mass on each item with the item's true removal effect.

    See the module docstring for the mass and the conventions (NaN: fewer than 2 items or constant
    effects; 0: equal mass on every item).

    Args:
        maps: Patch maps ``[batch, gh, gw]`` (with ``grid``) or pixel maps ``[batch, H, W]``.
        item_masks: Bool ``[batch, K, H, W]``, all-False for padded items.
        true_effects: ``[batch, K]``: ``score(scene) - score(scene without item k)`` for the map's
            target; NaN for padded items.
        grid: A `PatchGrid` or the model, for patch maps.

    Returns:
        ``[batch]`` float64 in [-1, 1], or NaN (see above).

    Raises:
        TypeError: masks not bool. ValueError: shapes that do not fit, NaN in the maps.

    Example:
        >>> items = torch.zeros(2, 2, 4, 4, dtype=torch.bool); items[:, 0, :2] = True; items[:, 1, 2:] = True
        >>> maps = torch.zeros(2, 4, 4); maps[0, :2] = 1.0  # map 0 favours item 0, map 1 is flat
        >>> object_removal(maps, items, torch.tensor([[2.0, 1.0], [2.0, 1.0]]))
        tensor([1., 0.], dtype=torch.float64)
    """
    item_masks = _check_item_masks(item_masks, "item_masks", 4)
    mass = item_mass(maps, item_masks, grid=grid)
    effects = torch.as_tensor(true_effects, dtype=torch.float64).to(mass.device)
    if effects.shape != mass.shape:
        raise ValueError(f"true_effects must be [batch, K] = {tuple(mass.shape)}, got {tuple(effects.shape)}")
    present = ~torch.isnan(mass) & torch.isfinite(effects)
    out = torch.full((mass.shape[0],), float("nan"), dtype=torch.float64)
    for b in range(mass.shape[0]):
        keep = present[b]
        if int(keep.sum()) < 2:
            continue
        m, e = mass[b, keep][None], effects[b, keep][None]
        if bool((e == e[:, :1]).all()):
            continue  # the ground truth ranks nothing: undefined
        if bool((m == m[:, :1]).all()):
            out[b] = 0.0  # the map ranks nothing: uninformative
            continue
        out[b] = float(spearman(m, e)[0])
    return out


def target_specificity(
    maps: Any, target_masks: Any, other_masks: Any, *, grid: Any = None
) -> Float[Tensor, " batch"]:
    """Share of the other items on which a map puts strictly less mass than on the target's item.

    Args:
        maps: Patch maps ``[batch, gh, gw]`` (with ``grid``) or pixel maps ``[batch, H, W]``.
        target_masks: Bool ``[batch, H, W]``: the item of the map's target class.
        other_masks: Bool ``[batch, M, H, W]``: the scene's other items, all-False for padding.
        grid: A `PatchGrid` or the model, for patch maps.

    Returns:
        ``[batch]`` float64 in [0, 1]; NaN with no other item or an empty target mask.

    Example:
        >>> target = torch.zeros(1, 4, 4, dtype=torch.bool); target[0, :2] = True
        >>> others = torch.zeros(1, 2, 4, 4, dtype=torch.bool); others[0, 0, 2:] = True  # one real, one padded
        >>> maps = torch.zeros(1, 4, 4); maps[0, :2] = 1.0
        >>> target_specificity(maps, target, others), target_specificity(torch.ones(1, 4, 4), target, others)
        (tensor([1.], dtype=torch.float64), tensor([0.], dtype=torch.float64))
    """
    target_masks = _check_item_masks(target_masks, "target_masks", 3)
    other_masks = _check_item_masks(other_masks, "other_masks", 4)
    if target_masks.shape[0] != other_masks.shape[0] or target_masks.shape[-2:] != other_masks.shape[-2:]:
        raise ValueError(f"target_masks {tuple(target_masks.shape)} and other_masks {tuple(other_masks.shape)} "
                         "must share batch size and image size")
    mass = item_mass(maps, torch.cat([target_masks[:, None], other_masks], dim=1), grid=grid)
    target, others = mass[:, :1], mass[:, 1:]
    present = ~torch.isnan(others)
    n_other = present.sum(1)
    wins = ((others < target) & present).sum(1).double()
    valid = (n_other > 0) & ~torch.isnan(target[:, 0])
    return torch.where(valid, wins / n_other.clamp(min=1), torch.full_like(wins, float("nan"))).cpu()

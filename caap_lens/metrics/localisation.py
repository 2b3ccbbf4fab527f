"""Localisation metrics: does an attribution map point at the ground-truth object mask?

All metrics are computed on pixels. A patch map ``[batch, gh, gw]`` is first upsampled with the
grid's nearest-neighbour upsampling (`PatchGrid.to_pixels`: each patch a flat block), so a patch
map is judged at the resolution it actually has; a pixel map ``[batch, H, W]`` is used as it is.
Masks are bool ``[batch, H, W]`` (e.g. ``SceneSet.class_mask``). One value per image, defined for
every map; the only NaN is an image whose mask is empty (and, for AUROC, a mask covering the whole
image) — a property of the input, not of the map; `caap_lens.stats.mean_ci` counts them (``n_dropped``).

Protocols:

* `pointing_game` (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016) —
  a hit when the map's maximum lies in the mask, dilated by ``tolerance_px`` (the paper uses 15 px;
  the default here is 0). **Tie rule**: the maximum of a map is often a *set* of pixels (every pixel
  of the top patch of a patch map; a plateau). With ``ties="fraction"`` (default) the score is the
  fraction of that set inside the (dilated) mask — the expected hit when one maximal point is drawn
  uniformly — so a unique maximal pixel scores 0 or 1 and a constant map scores exactly the mask's
  area fraction, the chance level. ``ties="any"`` counts a hit when *any* maximal point is inside
  (Quantus' ``PointingGame``); a constant map then always hits, so it is not at chance.
* `mask_energy` (the "energy-based pointing game" of Score-CAM, Wang et al., CVPR-W 2020) — the
  share of the map's mass inside the mask, ``sum(w · m) / sum(w)``, with the mass ``w`` of a map
  ``a`` defined by ``offset``:

  - ``"median"`` (default): ``w = relu(a - median(a))``, mass is what stands above the map's typical
    value. *Offset-invariant*: a map and the same map plus a constant (e.g. CAAP with and without
    ``relative=True``) score the same, and every map is defined. For signed maps centred on 0
    (integrated gradients, occlusion, AttnLRP) it is close to ``"zero"``; a map that is flat except
    for a few patches (as CAAP's often is) is judged by those patches. A binary map whose high value
    covers more than half of the image has no mass (chance);
  - ``"min"``: ``w = a - min(a)``, measured from the map's own minimum, also offset-invariant; one
    extreme low patch gives every other patch mass, so signed maps score near chance;
  - ``"zero"``: ``w = relu(a)``, for maps whose 0 means "no effect" (negative values are evidence
    against the class, not mass to be localised).

  A map with no mass at all (a constant map under ``"min"``, a map with no positive value under
  ``"zero"``) makes no claim about where the object is and scores the **chance level** (the mask's
  area fraction), as a constant positive map does. Earlier versions returned NaN there and dropped
  those maps from the means (CAAP's mask energy was once averaged over 111 of 495 pairs).
  *Quantus* (``AttributionLocalisation``, 0.6) computes ``sum(a · m) / (sum(a) + 1e-9)`` on the
  raw, *signed* values (``abs=True`` by default takes ``|a|`` first; ``positive_attributions=True``
  clamps like ``"zero"``), NaN when that ratio exceeds 1: the definitions agree on non-negative maps
  with some mass (so on ``relu(a - median a)``, tested), and differ on signed maps and on maps
  without mass. On 40 bundled-scene pairs the default moved CAAP's mask energy from 0.50 on the 8
  pairs it was defined for to 0.29 on all 40.
* `mask_auroc` — the area under the ROC curve of the map's pixel values used to classify pixels as
  in/out of the mask (Quantus' ``AUC``), computed exactly as the Mann–Whitney U statistic with
  average ranks for ties: ``(R_in - n_in (n_in + 1) / 2) / (n_in n_out)``. Ties count one half, so a
  constant map scores exactly 0.5 and the mask itself 1.
* `chance_level` — the mask's area fraction (after dilation by ``tolerance_px``): the expected
  pointing game and energy of a random or constant map.

Example:
    >>> masks = torch.zeros(1, 64, 64, dtype=torch.bool); masks[:, :32] = True
    >>> maps = torch.zeros(1, 8, 8); maps[0, 1, 2] = 1.0  # a patch map of a 64-px model with 8-px patches
    >>> pointing_game(maps, masks, grid=model.grid)
    tensor([1.])
    >>> mask_auroc(masks.float(), masks), chance_level(masks)
    (tensor([1.], dtype=torch.float64), tensor([0.5000]))
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from caap_lens.grid import PatchGrid
from caap_lens.stats import average_ranks

Maps = Float[Tensor, "batch h w"]
Masks = Bool[Tensor, "batch height width"]


def _grid_of(grid: Any) -> PatchGrid | None:
    if grid is None or isinstance(grid, PatchGrid):
        return grid
    if isinstance(getattr(grid, "grid", None), PatchGrid):
        return grid.grid  # a model
    raise TypeError(f"grid must be a PatchGrid, a model with .grid, or None; got {type(grid).__name__}")


def check_masks(masks: Any) -> Masks:
    """Masks as a bool tensor ``[batch, H, W]``; raises TypeError/ValueError otherwise."""
    masks = torch.as_tensor(masks)
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be bool [batch, H, W], got dtype {masks.dtype}; "
                        "threshold them first, e.g. masks > 0.5")
    if masks.ndim != 3:
        raise ValueError(f"masks must be [batch, H, W], got shape {tuple(masks.shape)}"
                         + ("; add a batch axis with masks[None]" if masks.ndim == 2 else ""))
    return masks


def pixel_maps(maps: Any, masks: Any, grid: Any = None) -> tuple[Maps, Masks]:
    """Checked ``(pixel maps, masks)`` of one shape; patch maps are upsampled (nearest) with ``grid``.

    Args:
        maps: ``[batch, H, W]`` pixel maps matching the masks, or ``[batch, gh, gw]`` patch maps.
        masks: Bool ``[batch, H, W]``.
        grid: A `PatchGrid` or a model with ``.grid``; needed for patch maps.

    Raises:
        TypeError: masks not bool, maps not real numbers.
        ValueError: shapes that do not fit, batch sizes that differ, NaN in the maps.

    Example:
        >>> masks = torch.ones(2, 64, 64, dtype=torch.bool)
        >>> maps, masks = pixel_maps(torch.rand(2, 8, 8), masks, model)
        >>> maps.shape
        torch.Size([2, 64, 64])
    """
    masks = check_masks(masks)
    maps = torch.as_tensor(maps)
    if maps.dtype == torch.bool or maps.is_complex():
        raise TypeError(f"maps must hold real numbers, got dtype {maps.dtype}")
    maps = maps.float()
    if maps.ndim != 3:
        raise ValueError(f"maps must be [batch, H, W] or [batch, gh, gw], got shape {tuple(maps.shape)}")
    if maps.shape[0] != masks.shape[0]:
        raise ValueError(f"batch size mismatch: {maps.shape[0]} maps for {masks.shape[0]} masks")
    if torch.isnan(maps).any():
        raise ValueError("maps contain NaN")
    grid = _grid_of(grid)
    size = tuple(masks.shape[1:])
    if tuple(maps.shape[1:]) != size:
        if grid is None or tuple(maps.shape[1:]) != grid.grid_size:
            hint = f" or patch maps [batch, {grid.grid_size[0]}, {grid.grid_size[1]}]" if grid else \
                " (pass grid=model or a PatchGrid for patch maps)"
            raise ValueError(f"maps {tuple(maps.shape)} do not fit masks {tuple(masks.shape)}: expected "
                             f"pixel maps [batch, {size[0]}, {size[1]}]{hint}")
        if grid.image_size != size:
            raise ValueError(f"masks must be [batch, {grid.image_size[0]}, {grid.image_size[1]}] "
                             f"(the grid's image size) for patch maps, got {tuple(masks.shape)}")
        maps = grid.to_pixels(maps, mode="nearest")
    return maps, masks.to(maps.device)


def dilate(masks: Masks, tolerance_px: float) -> Masks:
    """Pixels within Euclidean distance ``tolerance_px`` of a mask pixel (the mask itself for 0).

    Example:
        >>> m = torch.zeros(1, 5, 5, dtype=torch.bool); m[0, 2, 2] = True
        >>> int(dilate(m, 1).sum())  # the centre and its 4 neighbours
        5
    """
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    r = int(tolerance_px)
    if r == 0:
        return masks
    offsets = torch.arange(-r, r + 1, dtype=torch.float32, device=masks.device)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= tolerance_px**2).float()
    hit = F.conv2d(masks[:, None].float(), disk[None, None], padding=r)[:, 0]
    return hit > 0.5


def chance_level(masks: Any, tolerance_px: float = 0) -> Float[Tensor, " batch"]:
    """Area fraction of each (dilated) mask: the expected pointing game / energy of a random map.

    Example:
        >>> chance_level(torch.tensor([[[True, False], [False, False]]]))
        tensor([0.2500])
    """
    masks = dilate(check_masks(masks), tolerance_px)
    return masks.flatten(1).float().mean(dim=1)


def _nan_where_empty(values: Tensor, masks: Masks) -> Tensor:
    return torch.where(masks.flatten(1).any(dim=1), values, torch.full_like(values, float("nan")))


def pointing_game(
    maps: Any,
    masks: Any,
    *,
    grid: Any = None,
    tolerance_px: float = 0,
    ties: Literal["fraction", "any"] = "fraction",
) -> Float[Tensor, " batch"]:
    """Pointing game per image: is the map's maximum inside the mask (dilated by ``tolerance_px``)?

    See the module docstring for the tie rule. With ``ties="fraction"`` the value is in [0, 1]
    (0 or 1 for a unique maximal pixel); with ``ties="any"`` it is 0 or 1. The mean over images is the
    pointing-game accuracy. NaN for an empty mask.

    Args:
        maps: Pixel maps ``[batch, H, W]`` or patch maps ``[batch, gh, gw]`` (with ``grid``).
        masks: Bool ``[batch, H, W]``.
        grid: A `PatchGrid` or a model, for patch maps.
        tolerance_px: Dilation radius of the mask in pixels (Zhang et al. use 15).
        ties: ``"fraction"`` or ``"any"``.

    Example:
        >>> pointing_game(masks.float(), masks)
        tensor([1., 1.])
    """
    maps, masks = pixel_maps(maps, masks, grid)
    target = dilate(masks, tolerance_px).flatten(1)
    flat = maps.flatten(1)
    is_max = flat == flat.max(dim=1, keepdim=True).values
    if ties == "fraction":
        hits = (is_max & target).sum(1).float() / is_max.sum(1).float()
    elif ties == "any":
        hits = (is_max & target).any(1).float()
    else:
        raise ValueError(f"ties must be 'fraction' or 'any', got {ties!r}")
    return _nan_where_empty(hits, masks)


def mask_energy(
    maps: Any, masks: Any, *, grid: Any = None, offset: Literal["median", "min", "zero"] = "median"
) -> Float[Tensor, " batch"]:
    """Share of the map's mass inside the mask, ``sum(w m) / sum(w)`` (see the module docstring).

    ``offset="median"`` (default) measures mass above the map's median (``w = relu(a - median a)``,
    offset-invariant); ``"min"`` from the map's minimum (``w = a - min a``); ``"zero"`` from 0
    (``w = relu(a)``). A map without mass scores the mask's area fraction (chance). NaN only for
    an empty mask.

    Args:
        maps: Pixel maps ``[batch, H, W]`` or patch maps ``[batch, gh, gw]`` (with ``grid``).
        masks: Bool ``[batch, H, W]``.
        grid: A `PatchGrid` or a model, for patch maps.
        offset: ``"median"``, ``"min"`` or ``"zero"``.

    Example:
        >>> masks = torch.tensor([[[True, False], [False, False]]])
        >>> mask_energy(torch.tensor([[[3.0, 1.0], [1.0, 1.0]]]), masks)  # all mass above the median is inside
        tensor([1.])
        >>> mask_energy(torch.tensor([[[3.0, 1.0], [1.0, 1.0]]]), masks, offset="zero")
        tensor([0.5000])
        >>> mask_energy(torch.ones(1, 2, 2), masks)  # no mass: chance
        tensor([0.2500])
    """
    maps, masks = pixel_maps(maps, masks, grid)
    flat = maps.flatten(1).double()
    if offset == "min":
        mass = flat - flat.min(dim=1, keepdim=True).values
    elif offset == "median":
        mass = (flat - flat.quantile(0.5, dim=1, keepdim=True)).clamp(min=0)  # the median, as numpy's
    elif offset == "zero":
        mass = flat.clamp(min=0)
    else:
        raise ValueError(f"offset must be 'min', 'median' or 'zero', got {offset!r}")
    inside_mask = masks.flatten(1)
    total = mass.sum(1)
    inside = (mass * inside_mask).sum(1)
    chance = inside_mask.double().mean(1)
    energy = torch.where(total > 0, inside / total.clamp(min=torch.finfo(total.dtype).tiny), chance)
    return _nan_where_empty(energy.float(), masks)


def mask_auroc(maps: Any, masks: Any, *, grid: Any = None) -> Float[Tensor, " batch"]:
    """AUROC of the map's pixel values as a classifier of mask membership (Mann–Whitney U).

    Ties get average ranks, i.e. count one half: a constant map scores exactly 0.5, the mask itself 1
    and the inverted mask 0. NaN when the mask is empty or covers the whole image.

    Args:
        maps: Pixel maps ``[batch, H, W]`` or patch maps ``[batch, gh, gw]`` (with ``grid``).
        masks: Bool ``[batch, H, W]``.
        grid: A `PatchGrid` or a model, for patch maps.

    Example:
        >>> mask_auroc(torch.tensor([[[0.9, 0.1], [0.5, 0.5]]]), torch.tensor([[[True, False], [True, False]]]))
        tensor([0.8750], dtype=torch.float64)
    """
    maps, masks = pixel_maps(maps, masks, grid)
    inside = masks.flatten(1)
    ranks = average_ranks(maps.flatten(1))
    n_in = inside.sum(1).double()
    n_out = inside.shape[1] - n_in
    u = (ranks * inside).sum(1) - n_in * (n_in + 1) / 2
    valid = (n_in > 0) & (n_out > 0)
    return torch.where(valid, u / (n_in * n_out).clamp(min=1), torch.full_like(u, float("nan")))

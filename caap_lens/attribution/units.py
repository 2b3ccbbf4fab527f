"""Units: what one patched run copies from the source — a patch, a region, or a head at either.

A `Units` holds one boolean mask per unit over token positions (``[.., n_units, pos]``) or over
positions and heads (``[.., n_units, pos, head]``), shared by all images (leading axis 1) or given per
image (leading axis ``batch``), and the shape its scores take per image (``(grid_h, grid_w)`` for
patches, ``(n_regions,)`` for regions, ``(n_heads, ...)`` in front for heads).

Example:
    >>> units = patch_units(PatchGrid((2, 2), (8, 8), 1))
    >>> units.masks.shape, units.shape
    (torch.Size([1, 4, 5]), (2, 2))
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from caap_lens.grid import PatchGrid


@dataclass
class Units:
    """Per-unit patch masks and the per-image shape of the resulting map."""

    masks: Tensor  # [1 or batch, n_units, pos] or [1 or batch, n_units, pos, head], bool
    shape: tuple[int, ...]

    @property
    def n_units(self) -> int:
        return self.masks.shape[1]

    def rows(self, image_index: Tensor, unit_index: Tensor) -> Tensor:
        """The masks of a chunk of rows ``[rows, pos(, head)]``."""
        if self.masks.shape[0] == 1:
            return self.masks[0, unit_index]
        return self.masks[image_index, unit_index]


def patch_units(grid: PatchGrid) -> Units:
    """One unit per patch, in row-major order."""
    eye = torch.zeros(grid.n_patches, grid.n_tokens, dtype=torch.bool)
    eye[torch.arange(grid.n_patches), torch.arange(grid.n_patches) + grid.n_prefix_tokens] = True
    return Units(eye.unsqueeze(0), grid.grid_size)


def region_units(grid: PatchGrid, region: Tensor, batch: int) -> Units:
    """One unit per region mask: ``[gh, gw]``, ``[n_regions, gh, gw]`` or ``[batch, n_regions, gh, gw]``."""
    if not isinstance(region, Tensor) or region.dtype != torch.bool:
        raise TypeError("region must be a bool tensor [gh, gw], [n_regions, gh, gw] or [batch, n_regions, gh, gw]")
    grid.check_map(region, "region mask")
    if region.ndim == 2:
        region = region[None, None]
    elif region.ndim == 3:
        region = region[None]
    elif region.ndim != 4 or region.shape[0] not in (1, batch):
        raise ValueError(
            f"region mask must be [gh, gw], [n_regions, gh, gw] or [batch={batch}, n_regions, gh, gw], "
            f"got {tuple(region.shape)}"
        )
    if region.shape[1] == 0:
        raise ValueError(f"region mask {tuple(region.shape)} holds no regions: give at least one [gh, gw] mask")
    if not bool(region.flatten(-2).any(-1).all()):
        raise ValueError("every region must contain at least one patch")
    return Units(grid.token_mask(region.cpu()), (region.shape[1],))


def check_heads(heads: Any, n_heads: int) -> bool | list[int] | None:
    """``heads`` checked: None (no per-head maps), True (every head) or a list of distinct head indices.

    Raises:
        ValueError: a single int (write ``[2]``), a non-integer or bool index, a repeat, or an index
            outside ``[0, n_heads)``.
    """
    if heads is None or heads is False:
        return None
    if heads is True:
        return True
    if isinstance(heads, Tensor):
        heads = heads.tolist() if heads.ndim else [heads.item()]
    hint = f"heads must be indices in [0, {n_heads}): True for all heads, or a list of distinct ints"
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Sequence):
        try:
            one = operator.index(heads)
        except TypeError:
            raise ValueError(f"{hint}, got {heads!r}") from None
        raise ValueError(f"{hint}, got the single value {heads!r}: write heads=[{one}]")
    chosen = []
    for h in heads:
        try:
            if isinstance(h, bool):
                raise TypeError
            chosen.append(operator.index(h))  # 1.7 is not silently head 1
        except TypeError:
            raise ValueError(f"{hint}; {h!r} in {list(heads)!r} is not an int") from None
    if not chosen:
        raise ValueError(f"{hint}, got an empty list")
    if len(set(chosen)) != len(chosen):
        repeated = sorted({h for h in chosen if chosen.count(h) > 1})
        raise ValueError(f"{hint}; {repeated} repeated in {chosen} (each head would give the same map twice)")
    outside = [h for h in chosen if not 0 <= h < n_heads]
    if outside:
        raise ValueError(f"{hint}; {outside} outside the range")
    return chosen


def head_units(units: Units, n_heads: int, heads: Sequence[int] | None = None) -> Units:
    """Each unit split per head: head ``h`` of the unit's tokens (patched at ``attn.hook_z``)."""
    checked = check_heads(True if heads is None else heads, n_heads)
    chosen = list(range(n_heads)) if checked is True else list(checked or [])
    onehot = torch.zeros(len(chosen), n_heads, dtype=torch.bool)
    onehot[torch.arange(len(chosen)), torch.tensor(chosen)] = True
    tok = units.masks  # [lead, n_units, pos]
    masks = tok[:, None, :, :, None] & onehot[None, :, None, None, :]  # [lead, heads, units, pos, head]
    return Units(masks.flatten(1, 2), (len(chosen), *units.shape))

"""Resampling a learned position embedding to another patch grid, the way timm or Hugging Face does it.

A ViT run on a grid other than the one its position embedding was learned on resizes the embedding's
patch rows bicubically (prefix rows are kept). The libraries differ in two details, and a bit-for-bit
port has to follow each: whether the resize runs in float32 whatever the weights' dtype, and whether it
antialiases. ``cfg.pos_embed_resample`` names the way:

=========================  ==========  =========  ====================================================
name                       float32     antialias  used by
=========================  ==========  =========  ====================================================
``"timm"``                 yes         yes        timm (``resample_abs_pos_embed``), every family
``"hf"``                   no          no         HF ViT, DeiT, CLIP, SigLIP (``interpolate_pos_encoding``)
``"hf_float32"``           yes         no         HF DINOv2
``"hf_float32_antialias"`` yes         yes        HF DINOv2 with registers
=========================  ==========  =========  ====================================================

Example:
    >>> cells = torch.arange(8.0).reshape(4, 2)  # a 2x2 grid of 2-d embeddings
    >>> resample_cells(cells, (2, 2), (2, 2)) is cells, tuple(resample_cells(cells, (2, 2), (3, 1)).shape)
    (True, (3, 2))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from caap_lens.config import POS_EMBED_RESAMPLES  # noqa: F401 - the names, listed where the config checks them

__all__ = ["RESAMPLE_OPTIONS", "resample_cells", "check_resample"]

#: Each way's ``(in float32, antialias)``, by its name in `caap_lens.config.POS_EMBED_RESAMPLES`.
RESAMPLE_OPTIONS: dict[str, tuple[bool, bool]] = {
    "timm": (True, True),
    "hf": (False, False),
    "hf_float32": (True, False),
    "hf_float32_antialias": (True, True),
}


def check_resample(how: str) -> str:
    """``how`` if it names a way in `RESAMPLE_OPTIONS`, else a ValueError listing them."""
    if how not in RESAMPLE_OPTIONS:
        raise ValueError(f"pos_embed_resample must be one of {', '.join(RESAMPLE_OPTIONS)}; got {how!r}")
    return how


def resample_cells(
    cells: Float[Tensor, "n_cells d_model"],
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    how: str = "timm",
) -> Float[Tensor, "n_new d_model"]:
    """The patch rows of a position embedding (row-major over ``old_grid``) resized to ``new_grid``.

    On the same grid the rows come back untouched (the tensor itself), as both libraries skip the resize.
    """
    if tuple(new_grid) == tuple(old_grid):
        return cells
    in_float32, antialias = RESAMPLE_OPTIONS[check_resample(how)]
    d_model = cells.shape[-1]
    grid = cells.reshape(1, *old_grid, d_model).permute(0, 3, 1, 2)  # [1, d_model, gh, gw]
    if in_float32:
        grid = grid.float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=antialias)
    return grid.permute(0, 2, 3, 1).reshape(-1, d_model).to(cells.dtype)

"""Running an HF model at another image size: its position embedding resampled once, as HF resamples it.

HF ViTs can run at sizes other than the config's: ViT, DeiT, CLIP and SigLIP with
``interpolate_pos_encoding=True``, DINOv2 always. Each forward then resizes the patch rows of the
position embedding (a square grid) bicubically to the input's grid, the prefix rows unchanged. HookedViT
runs at one size, so `resample_pos_embed` does that resize once, at conversion, with the same call HF
makes for the family (DINOv2 in float32, DINOv2-with-registers with antialiasing as well): the converted
model at ``image_size`` equals HF at that size.

Example:
    >>> import torch
    >>> from caap_lens.config import HookedViTConfig
    >>> cfg = HookedViTConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16, image_size=16, patch_size=8)
    >>> new_cfg, state = resample_pos_embed(cfg, {"pos_embed.W_pos": torch.randn(5, 8)}, 32)
    >>> new_cfg.grid_size, tuple(state["pos_embed.W_pos"].shape)
    ((4, 4), (17, 8))
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from caap_lens.config import HookedViTConfig
from caap_lens.converters.hf_config import unsupported_hf

__all__ = ["resample_pos_embed"]


def resample_pos_embed(cfg: HookedViTConfig, state_dict: dict[str, Tensor],
                       image_size: int | tuple[int, int]) -> tuple[HookedViTConfig, dict[str, Tensor]]:
    """``(cfg, state_dict)`` of the same HF model run at ``image_size`` (a new dict; the input is unchanged).

    Raises:
        UnsupportedModelError: The config's patch grid is not square (HF cannot resample it), or
            ``image_size`` is not a whole number of patches.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if size == cfg.image_size:
        return cfg, dict(state_dict)
    grid_h, grid_w = cfg.grid_size
    if grid_h != grid_w:
        raise unsupported_hf(f"image_size={image_size!r}: HF resamples only square position grids; this model's "
                             f"is {cfg.grid_size}")
    if size[0] % cfg.patch_size[0] or size[1] % cfg.patch_size[1]:  # type: ignore[index]
        raise unsupported_hf(f"image_size={image_size!r} is not a whole number of {cfg.patch_size} patches")
    new_grid = (size[0] // cfg.patch_size[0], size[1] // cfg.patch_size[1])  # type: ignore[index]
    pos = state_dict["pos_embed.W_pos"]
    n_prefix = pos.shape[0] - grid_h * grid_w
    patches = pos[n_prefix:].reshape(1, grid_h, grid_w, -1).permute(0, 3, 1, 2)
    dinov2 = cfg.family == "dinov2"
    antialias = dinov2 and cfg.n_register_tokens > 0
    resized = F.interpolate(patches.to(torch.float32) if dinov2 else patches, size=new_grid, mode="bicubic",
                            align_corners=False, antialias=antialias).to(pos.dtype)
    resized = resized.permute(0, 2, 3, 1).reshape(math.prod(new_grid), -1)
    state = dict(state_dict)
    state["pos_embed.W_pos"] = torch.cat([pos[:n_prefix], resized])
    return dataclasses.replace(cfg, image_size=size, data_config=None), state

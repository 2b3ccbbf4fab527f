"""Running an HF model at another image size: its position embedding resampled as HF resamples it.

HF ViTs can run at sizes other than the config's: ViT, DeiT, CLIP and SigLIP with
``interpolate_pos_encoding=True``, DINOv2 always. Each forward then resizes the patch rows of the
position embedding (a square grid) bicubically to the input's grid, the prefix rows unchanged, each
family in its own way (`hf_resample`: DINOv2 in float32, DINOv2-with-registers with antialiasing as
well; `caap_lens.pos_embed`). A converted model records that way as ``cfg.pos_embed_resample``. Two uses:
`resample_pos_embed` does the resize once, at conversion (``from_hf(image_size=)``), and
``from_hf(dynamic_img_size=True)`` leaves it to each forward, so the model runs on any whole number of
patches, as HF does. Either way the converted model at a size equals HF at that size.

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

import torch
from torch import Tensor

from caap_lens.config import HookedViTConfig
from caap_lens.converters.hf_config import unsupported_hf
from caap_lens.pos_embed import resample_cells

__all__ = ["resample_pos_embed", "hf_resample", "check_dynamic"]


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
    resized = resample_cells(pos[n_prefix:], (grid_h, grid_w), new_grid, cfg.pos_embed_resample)
    state = dict(state_dict)
    state["pos_embed.W_pos"] = torch.cat([pos[:n_prefix], resized])
    return dataclasses.replace(cfg, image_size=size, data_config=None), state


def hf_resample(family: str, n_register_tokens: int) -> str:
    """How HF resamples the position embedding of a family (a `caap_lens.pos_embed` name).

    Example:
        >>> hf_resample("vit", 0), hf_resample("dinov2", 0), hf_resample("dinov2", 4)
        ('hf', 'hf_float32', 'hf_float32_antialias')
    """
    if family != "dinov2":
        return "hf"
    return "hf_float32_antialias" if n_register_tokens else "hf_float32"


def check_dynamic(cfg: HookedViTConfig) -> HookedViTConfig:
    """``cfg`` marked dynamic-size, or an `UnsupportedModelError` when HF itself could not resample it."""
    if cfg.grid_size[0] != cfg.grid_size[1]:
        raise unsupported_hf(f"dynamic_img_size=True: HF resamples only square position grids; this model's is "
                             f"{cfg.grid_size}")
    return dataclasses.replace(cfg, dynamic_img_size=True)

"""Patch embedding with prefix tokens, and the learned position embedding.

``PatchEmbed`` returns the token embeddings of the whole sequence ``[batch, pos, d_model]``: the learned
prefix tokens (CLS, then distillation or register tokens, in timm's order) followed by one projected
vector per patch, in row-major patch order. ``PosEmbed`` returns the position embedding over the same
positions (zeros on prefix tokens when the model adds no position to them, as DeiT3 and DINOv2-reg).
Their sum is the residual stream before block 0 (before ``ln_pre`` in pre-norm models).

Example:
    >>> embed = PatchEmbed(d_model=64, patch_size=(8, 8), n_channels=3, class_token=True)
    >>> embed(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 17, 64])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from caap_lens.pos_embed import check_resample, resample_cells


class PatchEmbed(nn.Module):
    """A strided convolution over non-overlapping patches, after learned prefix tokens."""

    def __init__(
        self,
        d_model: int,
        patch_size: tuple[int, int],
        n_channels: int = 3,
        class_token: bool = True,
        distilled: bool = False,
        n_register_tokens: int = 0,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(n_channels, d_model, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model)) if class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d_model)) if distilled else None
        self.reg_token = (
            nn.Parameter(torch.zeros(1, n_register_tokens, d_model)) if n_register_tokens else None
        )

    @property
    def W_E(self) -> Float[Tensor, "d_patch d_model"]:
        """The projection as a matrix from a flattened ``[channel, ph, pw]`` patch to ``d_model``."""
        return self.proj.weight.flatten(1).T

    def forward(self, images: Float[Tensor, "batch channel height width"]) -> Float[Tensor, "batch pos d_model"]:
        patches = F.conv2d(images, self.proj.weight, self.proj.bias, stride=self.patch_size)
        patches = patches.flatten(2).transpose(1, 2)  # [batch, n_patches, d_model]
        prefix = [t for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]
        if not prefix:
            return patches
        batch = images.shape[0]
        return torch.cat([t.expand(batch, -1, -1) for t in prefix] + [patches], dim=1)


class PosEmbed(nn.Module):
    """Learned absolute position embedding, broadcast over the batch, resampled to the input's grid.

    ``W_pos`` holds the rows for the prefix tokens that get a position (all of them, or none) and then
    one row per cell of ``learned_grid``. An input on another grid (a dynamic-size model) gets the
    patch rows resampled the way ``resample`` names (`caap_lens.pos_embed`: timm's by default); the
    prefix rows are kept. On the learned grid nothing is resampled.

    Example:
        >>> pos = PosEmbed(d_model=4, learned_grid=(2, 2), n_prefix=1, pos_on_prefix=True)
        >>> pos(2).shape, pos(1, grid_size=(3, 2)).shape
        (torch.Size([2, 5, 4]), torch.Size([1, 7, 4]))
    """

    def __init__(self, d_model: int, learned_grid: tuple[int, int], n_prefix: int, pos_on_prefix: bool,
                 resample: str = "timm"):
        super().__init__()
        self.learned_grid = tuple(learned_grid)
        self.resample = check_resample(resample)
        self.n_embedded_prefix = n_prefix if pos_on_prefix else 0  # prefix rows in W_pos
        self.n_unembedded = 0 if pos_on_prefix else n_prefix  # leading prefix tokens that get no position
        n_rows = self.n_embedded_prefix + learned_grid[0] * learned_grid[1]
        self.W_pos = nn.Parameter(torch.zeros(n_rows, d_model))

    def resampled(self, grid_size: tuple[int, int]) -> Float[Tensor, "n_pos d_model"]:
        """``W_pos`` on ``grid_size``: the learned rows themselves on the learned grid."""
        pos = self.W_pos
        if tuple(grid_size) == self.learned_grid:
            return pos
        cells = resample_cells(pos[self.n_embedded_prefix :], self.learned_grid, grid_size, self.resample)
        return torch.cat([pos[: self.n_embedded_prefix], cells], dim=0)

    def forward(self, batch: int, grid_size: tuple[int, int] | None = None) -> Float[Tensor, "batch pos d_model"]:
        pos = self.resampled(self.learned_grid if grid_size is None else grid_size)
        if self.n_unembedded:
            pos = torch.cat([pos.new_zeros(self.n_unembedded, pos.shape[1]), pos], dim=0)
        return pos.unsqueeze(0).expand(batch, -1, -1)

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
    """Learned absolute position embedding, broadcast over the batch."""

    def __init__(self, n_pos_embed: int, d_model: int, n_tokens: int):
        super().__init__()
        self.W_pos = nn.Parameter(torch.zeros(n_pos_embed, d_model))
        self.n_unembedded = n_tokens - n_pos_embed  # leading prefix tokens that get no position

    def forward(self, batch: int) -> Float[Tensor, "batch pos d_model"]:
        pos = self.W_pos
        if self.n_unembedded:
            pos = torch.cat([pos.new_zeros(self.n_unembedded, pos.shape[1]), pos], dim=0)
        return pos.unsqueeze(0).expand(batch, -1, -1)

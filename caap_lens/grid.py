"""The explicit mapping between image patches, grid cells, token positions and pixels.

Patches are numbered in row-major order, as the patch embedding flattens them: patch ``i`` sits at
row ``i // grid_w``, column ``i % grid_w``, and is token ``n_prefix_tokens + i`` of the sequence.
Nobody has to guess a grid size: every model carries its `PatchGrid` (``model.grid``).

Example:
    >>> grid = PatchGrid(grid_size=(14, 14), patch_size=(16, 16), n_prefix_tokens=1)
    >>> grid.token_of(15), grid.rc_of(15), grid.patch_of_rc(1, 1)
    (16, (1, 1), 15)
    >>> grid.pixel_box(15)  # (top, left, bottom, right), exclusive ends
    (16, 16, 32, 32)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor


@dataclass(frozen=True)
class PatchGrid:
    """Patch ↔ (row, col) ↔ token ↔ pixel mapping of one model.

    Args:
        grid_size: ``(grid_h, grid_w)`` patches.
        patch_size: ``(patch_h, patch_w)`` pixels.
        n_prefix_tokens: Tokens (CLS, registers, distillation) before the first patch token.
    """

    grid_size: tuple[int, int]
    patch_size: tuple[int, int]
    n_prefix_tokens: int

    @property
    def n_patches(self) -> int:
        """Number of patches."""
        return self.grid_size[0] * self.grid_size[1]

    @property
    def n_tokens(self) -> int:
        """Sequence length."""
        return self.n_prefix_tokens + self.n_patches

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels covered by the grid."""
        return (self.grid_size[0] * self.patch_size[0], self.grid_size[1] * self.patch_size[1])

    def _check_patch(self, patch: int) -> int:
        if not 0 <= patch < self.n_patches:
            raise IndexError(f"patch index {patch} is outside [0, {self.n_patches})")
        return int(patch)

    def token_of(self, patch: int) -> int:
        """Token position of a patch."""
        return self.n_prefix_tokens + self._check_patch(patch)

    def patch_of_token(self, token: int) -> int:
        """Patch index of a token position; prefix tokens have none."""
        if not self.n_prefix_tokens <= token < self.n_tokens:
            raise IndexError(
                f"token {token} is not a patch token: patch tokens are "
                f"[{self.n_prefix_tokens}, {self.n_tokens})"
            )
        return int(token) - self.n_prefix_tokens

    def rc_of(self, patch: int) -> tuple[int, int]:
        """``(row, col)`` of a patch in the grid."""
        return divmod(self._check_patch(patch), self.grid_size[1])

    def patch_of_rc(self, row: int, col: int) -> int:
        """Patch index of grid cell ``(row, col)``."""
        if not (0 <= row < self.grid_size[0] and 0 <= col < self.grid_size[1]):
            raise IndexError(f"cell ({row}, {col}) is outside the {self.grid_size} grid")
        return int(row) * self.grid_size[1] + int(col)

    def pixel_box(self, patch: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` pixel box of a patch; bottom and right are exclusive."""
        row, col = self.rc_of(patch)
        ph, pw = self.patch_size
        return (row * ph, col * pw, (row + 1) * ph, (col + 1) * pw)

    def to_grid(self, values: Float[Tensor, "*batch n_patches"]) -> Float[Tensor, "*batch gh gw"]:
        """Reshapes per-patch values (last axis) into the grid."""
        if values.shape[-1] != self.n_patches:
            raise ValueError(
                f"expected a last axis of {self.n_patches} patches, got shape {tuple(values.shape)}"
            )
        return values.reshape(*values.shape[:-1], *self.grid_size)

    def check_map(self, patch_map: Tensor, name: str = "map") -> None:
        """Raises ValueError unless the last two axes of ``patch_map`` are this grid."""
        if patch_map.ndim < 2 or tuple(patch_map.shape[-2:]) != self.grid_size:
            raise ValueError(
                f"{name} must end in the model's patch grid {self.grid_size} "
                f"(grid_h, grid_w), got shape {tuple(patch_map.shape)}"
            )

    def token_mask(self, patch_mask: Bool[Tensor, "*batch gh gw"]) -> Bool[Tensor, "*batch pos"]:
        """Turns a boolean patch mask into a mask over token positions (prefix tokens False)."""
        self.check_map(patch_mask, "patch mask")
        if patch_mask.dtype != torch.bool:
            raise TypeError(f"patch mask must be a bool tensor, got {patch_mask.dtype}")
        flat = patch_mask.reshape(*patch_mask.shape[:-2], self.n_patches)
        prefix = flat.new_zeros(*flat.shape[:-1], self.n_prefix_tokens)
        return torch.cat([prefix, flat], dim=-1)

    def to_pixels(
        self, patch_map: Float[Tensor, "*batch gh gw"], mode: str = "nearest"
    ) -> Float[Tensor, "*batch height width"]:
        """Upsamples a patch map to pixels: ``"nearest"`` (each patch a flat block) or ``"bilinear"``."""
        self.check_map(patch_map)
        lead = patch_map.shape[:-2]
        flat = patch_map.reshape(-1, 1, *self.grid_size).float()
        if mode == "nearest":
            out = flat.repeat_interleave(self.patch_size[0], dim=-2)
            out = out.repeat_interleave(self.patch_size[1], dim=-1)
        elif mode == "bilinear":
            out = F.interpolate(flat, size=self.image_size, mode="bilinear", align_corners=False)
        else:
            raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
        return out.reshape(*lead, *self.image_size)

    def compose(
        self,
        shown: Bool[Tensor, "rows gh gw"],
        images: Float[Tensor, "rows channel height width"],
        other: Float[Tensor, "rows channel height width"],
    ) -> Float[Tensor, "rows channel height width"]:
        """``images`` on the patches where ``shown`` is True and ``other`` everywhere else.

        The one way patches are composited over a substrate: deletion/insertion curves and the
        ``layers="auto"`` criterion both call it.

        Example:
            >>> grid = PatchGrid(grid_size=(1, 2), patch_size=(1, 1), n_prefix_tokens=0)
            >>> grid.compose(torch.tensor([[[True, False]]]), torch.ones(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
            tensor([[[[1., 0.]]]])
        """
        pixels = self.to_pixels(shown.float()) > 0.5  # [rows, H, W]
        return torch.where(pixels[:, None].to(images.device), images, other)

    def pool_pixels(
        self, pixel_map: Float[Tensor, "*batch height width"], reduce: str = "mean"
    ) -> Float[Tensor, "*batch gh gw"]:
        """Aggregates a pixel map to patches (``"mean"`` or ``"sum"`` over each patch)."""
        if tuple(pixel_map.shape[-2:]) != self.image_size:
            raise ValueError(
                f"pixel map must end in the image size {self.image_size}, got {tuple(pixel_map.shape)}"
            )
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        gh, gw = self.grid_size
        ph, pw = self.patch_size
        x = pixel_map.reshape(*pixel_map.shape[:-2], gh, ph, gw, pw).float()
        return x.sum(dim=(-3, -1)) if reduce == "sum" else x.mean(dim=(-3, -1))

"""LayerNorm with TransformerLens's two hook points.

``hook_scale`` is the per-token divisor ``sqrt(var + eps)`` and ``hook_normalized`` the output after
the affine map, as in TransformerLens. While nobody hooks ``hook_scale`` the module calls
``F.layer_norm`` (bit-identical to timm); a hook on ``hook_scale`` switches to the explicit formula so
the hooked value is the one used (results then differ from timm by float rounding, ~1e-7).

Example:
    >>> ln = LayerNorm(8, eps=1e-6)
    >>> ln(torch.randn(2, 5, 8)).shape
    torch.Size([2, 5, 8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint


def has_hooks(hook_point: HookPoint) -> bool:
    """Whether any forward or backward hook is attached to ``hook_point`` (so its value must be computed)."""
    return bool(hook_point._forward_hooks or hook_point._backward_hooks)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with ``hook_scale`` and ``hook_normalized``."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1] (or [batch, 1] on pooled vectors)
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        if x.dtype != self.w.dtype:  # a float32 residual stream entering a lower-precision block
            x = x.to(self.w.dtype)
        if not has_hooks(self.hook_scale):
            out = F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)
            return self.hook_normalized(out)
        centred = x - x.mean(dim=-1, keepdim=True)
        scale = self.hook_scale((centred.pow(2).mean(dim=-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(centred / scale * self.w + self.b)

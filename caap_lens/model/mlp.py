"""The MLP of a ViT block, with ``hook_pre`` and ``hook_post`` as in TransformerLens.

Weights use timm's ``fc1``/``fc2`` layout; ``W_in`` ``[d_model, d_mlp]`` and ``W_out``
``[d_mlp, d_model]`` are read-only TransformerLens-shaped views (``W_out``/``b_out`` include layer scale).

Example:
    >>> mlp = MLP(d_model=64, d_mlp=256, act_fn="gelu")
    >>> mlp(torch.randn(2, 5, 64)).shape
    torch.Size([2, 5, 64])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint


def quick_gelu(x: Tensor) -> Tensor:
    """OpenAI CLIP's GELU approximation ``x * sigmoid(1.702 x)``."""
    return x * torch.sigmoid(1.702 * x)


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU with the tanh approximation."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": gelu_tanh, "quick_gelu": quick_gelu, "relu": F.relu}


class MLP(nn.Module):
    """Two linear maps around a non-linearity."""

    def __init__(
        self, d_model: int, d_mlp: int, act_fn: str = "gelu", layer_scale: bool = False, bias: bool = True
    ):
        super().__init__()
        if act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn must be one of {sorted(ACTIVATIONS)}, got {act_fn!r}")
        self.act = ACTIVATIONS[act_fn]
        self.fc1 = nn.Linear(d_model, d_mlp, bias=bias)
        self.fc2 = nn.Linear(d_mlp, d_model, bias=bias)
        self.layer_scale = nn.Parameter(torch.ones(d_model)) if layer_scale else None
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(self.fc1(x))
        post = self.hook_post(self.act(pre))
        out = self.fc2(post)
        return out if self.layer_scale is None else out * self.layer_scale

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return self.fc1.weight.T

    @property
    def b_in(self) -> Float[Tensor, "d_mlp"]:
        return self.fc1.bias if self.fc1.bias is not None else self.fc1.weight.new_zeros(self.fc1.out_features)

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        w = self.fc2.weight.T
        return w if self.layer_scale is None else w * self.layer_scale

    @property
    def b_out(self) -> Float[Tensor, "d_model"]:
        b = self.fc2.bias if self.fc2.bias is not None else self.fc2.weight.new_zeros(self.fc2.out_features)
        return b if self.layer_scale is None else b * self.layer_scale

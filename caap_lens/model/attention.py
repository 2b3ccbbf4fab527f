"""Multi-head self-attention with TransformerLens hook points, computed as timm computes it.

Weights are stored in timm's layout (one fused ``qkv`` linear, one ``proj`` linear), so a converted
model runs the same kernels as timm. TransformerLens-shaped views (``W_Q`` ``[head, d_model, d_head]``,
``W_O`` ``[head, d_head, d_model]``, ...) are read-only properties.

Attention probabilities are only materialised when something hooks ``hook_attn_scores`` or
``hook_pattern`` (e.g. ``run_with_cache``); otherwise the fused ``scaled_dot_product_attention``
runs, as in timm. Either way every hook's return value is used.

Layer scale (DeiT3, DINOv2) lives here: ``hook_result`` and ``W_O``/``b_O`` include it, so head results
plus ``b_O`` sum to ``hook_attn_out``, the block's actual addition to the residual stream.

Example:
    >>> attn = Attention(d_model=64, n_heads=4, d_head=16)
    >>> attn(torch.randn(2, 5, 64)).shape
    torch.Size([2, 5, 64])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from caap_lens.model.layer_norm import has_hooks


class Attention(nn.Module):
    """Self-attention over all tokens (no mask), with per-head hook points."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_head: int,
        qkv_bias: bool = True,
        layer_scale: bool = False,
        proj_bias: bool = True,
    ):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.scale = d_head**-0.5
        self.qkv = nn.Linear(d_model, 3 * n_heads * d_head, bias=qkv_bias)
        self.proj = nn.Linear(n_heads * d_head, d_model, bias=proj_bias)
        self.layer_scale = nn.Parameter(torch.ones(d_model)) if layer_scale else None
        self.use_attn_result = False
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, pos, head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos], scaled, pre-softmax
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model]; only when use_attn_result

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        batch, pos, _ = x.shape
        qkv = self.qkv(x).reshape(batch, pos, 3, self.n_heads, self.d_head)
        q = self.hook_q(qkv[:, :, 0])
        k = self.hook_k(qkv[:, :, 1])
        v = self.hook_v(qkv[:, :, 2])
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [batch, head, pos, d_head]
        if has_hooks(self.hook_attn_scores) or has_hooks(self.hook_pattern):
            scores = self.hook_attn_scores((q * self.scale) @ k.transpose(-2, -1))
            pattern = self.hook_pattern(scores.softmax(dim=-1))
            z = pattern @ v
        else:
            z = F.scaled_dot_product_attention(q, k, v)
        z = self.hook_z(z.transpose(1, 2))  # [batch, pos, head, d_head]
        if self.use_attn_result:
            result = self.hook_result(torch.einsum("bphd,hdm->bphm", z, self.W_O))
            return result.sum(dim=2) + self.b_O
        out = self.proj(z.reshape(batch, pos, self.n_heads * self.d_head))
        return out if self.layer_scale is None else out * self.layer_scale

    def _split_qkv(self, tensor: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return tensor.reshape(3, self.n_heads, self.d_head, *tensor.shape[1:]).unbind(0)

    @property
    def W_Q(self) -> Float[Tensor, "head d_model d_head"]:
        return self._split_qkv(self.qkv.weight)[0].transpose(1, 2)

    @property
    def W_K(self) -> Float[Tensor, "head d_model d_head"]:
        return self._split_qkv(self.qkv.weight)[1].transpose(1, 2)

    @property
    def W_V(self) -> Float[Tensor, "head d_model d_head"]:
        return self._split_qkv(self.qkv.weight)[2].transpose(1, 2)

    def _qkv_bias(self, index: int) -> Float[Tensor, "head d_head"]:
        if self.qkv.bias is None:
            return self.qkv.weight.new_zeros(self.n_heads, self.d_head)
        return self.qkv.bias.reshape(3, self.n_heads, self.d_head)[index]

    @property
    def b_Q(self) -> Float[Tensor, "head d_head"]:
        return self._qkv_bias(0)

    @property
    def b_K(self) -> Float[Tensor, "head d_head"]:
        return self._qkv_bias(1)

    @property
    def b_V(self) -> Float[Tensor, "head d_head"]:
        return self._qkv_bias(2)

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        """Output map of each head, layer scale included."""
        w = self.proj.weight.T.reshape(self.n_heads, self.d_head, -1)
        return w if self.layer_scale is None else w * self.layer_scale

    @property
    def b_O(self) -> Float[Tensor, "d_model"]:
        """Output bias, layer scale included (zeros when the projection has no bias)."""
        b = self.proj.bias if self.proj.bias is not None else self.proj.weight.new_zeros(self.proj.out_features)
        return b if self.layer_scale is None else b * self.layer_scale

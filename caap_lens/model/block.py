"""One pre-norm transformer block with TransformerLens's residual-stream hook points.

``resid_mid = resid_pre + attn_out`` and ``resid_post = resid_mid + mlp_out`` hold exactly, layer
scale included in ``attn_out``/``mlp_out``.

Example:
    >>> import torch
    >>> block = TransformerBlock(d_model=64, n_heads=4, d_head=16, d_mlp=256)
    >>> block(torch.randn(2, 5, 64)).shape
    torch.Size([2, 5, 64])
"""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from caap_lens.model.attention import Attention
from caap_lens.model.layer_norm import LayerNorm
from caap_lens.model.mlp import MLP


class TransformerBlock(nn.Module):
    """LayerNorm → attention → residual add, LayerNorm → MLP → residual add."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_head: int,
        d_mlp: int,
        act_fn: str = "gelu",
        eps: float = 1e-6,
        qkv_bias: bool = True,
        layer_scale: bool = False,
        proj_bias: bool = True,
    ):
        super().__init__()
        self.ln1 = LayerNorm(d_model, eps)
        self.attn = Attention(
            d_model, n_heads, d_head, qkv_bias=qkv_bias, layer_scale=layer_scale, proj_bias=proj_bias
        )
        self.ln2 = LayerNorm(d_model, eps)
        self.mlp = MLP(d_model, d_mlp, act_fn=act_fn, layer_scale=layer_scale, bias=proj_bias)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid_pre)))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)

    def hook_points(self) -> list[HookPoint]:
        """Every hook point inside this block."""
        return [m for m in self.modules() if isinstance(m, HookPoint)]

    def forward_queries(
        self, resid: Float[Tensor, "batch pos d_model"], n_query: int
    ) -> Float[Tensor, "batch n_query d_model"]:
        """The block's output at the first ``n_query`` positions only, skipping every hook point.

        Keys and values are still computed from every token; queries, the attention output and the
        MLP only for the first ``n_query`` rows. This is the last block of a CLS-pooled model when
        only its readout tokens matter; callers must make sure nothing is hooked here.
        """
        attn = self.attn
        x = self.ln1(resid)
        width = attn.n_heads * attn.d_head
        w, b = attn.qkv.weight, attn.qkv.bias
        batch, pos, _ = x.shape
        q = F.linear(x[:, :n_query], w[:width], None if b is None else b[:width])
        kv = F.linear(x, w[width:], None if b is None else b[width:])
        q = q.reshape(batch, n_query, attn.n_heads, attn.d_head).transpose(1, 2)
        kv = kv.reshape(batch, pos, 2, attn.n_heads, attn.d_head)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        z = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, n_query, width)
        attn_out = attn.proj(z)
        if attn.layer_scale is not None:
            attn_out = attn_out * attn.layer_scale
        resid_mid = resid[:, :n_query] + attn_out
        return resid_mid + self.mlp(self.ln2(resid_mid))

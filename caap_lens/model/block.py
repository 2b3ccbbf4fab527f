"""One pre-norm transformer block with TransformerLens's residual-stream hook points.

``resid_mid = resid_pre + attn_out`` and ``resid_post = resid_mid + mlp_out`` hold exactly, layer
scale included in ``attn_out``/``mlp_out``.

Example:
    >>> block = TransformerBlock(d_model=64, n_heads=4, d_head=16, d_mlp=256)
    >>> block(torch.randn(2, 5, 64)).shape
    torch.Size([2, 5, 64])
"""

from __future__ import annotations

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
    ):
        super().__init__()
        self.ln1 = LayerNorm(d_model, eps)
        self.attn = Attention(d_model, n_heads, d_head, qkv_bias=qkv_bias, layer_scale=layer_scale)
        self.ln2 = LayerNorm(d_model, eps)
        self.mlp = MLP(d_model, d_mlp, act_fn=act_fn, layer_scale=layer_scale)
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

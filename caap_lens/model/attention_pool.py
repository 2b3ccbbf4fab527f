"""Attention-pool readout (SigLIP's "MAP" head, timm's ``global_pool='map'``), with hook points.

Instead of reading the CLS token or averaging the patch tokens, the model pools with one more
attention layer: a learned *latent* query attends over the patch tokens of the final (normed) residual
stream (every token with ``pool_include_prefix``), its heads are projected back to ``d_model``, and an MLP is added on top,
``pooled = a + mlp(norm(a))`` with ``a = proj(attention(latent, tokens))``. This is timm's
``AttentionPoolLatent`` with one latent and ``pool_type='token'``, the form timm builds for
``global_pool='map'``: the query projection ``q``, the fused key/value projection ``kv`` and the
output ``proj`` all have biases; heads, MLP width, activation and LayerNorm eps are the blocks'.

Hook points (``attn_pool.`` in `HookedViT`):

    hook_q                [batch, 1, head, d_head]     the latent's query
    hook_k / hook_v       [batch, pos, head, d_head]   keys and values of the pooled tokens
    hook_attn_scores      [batch, head, 1, pos]        scaled, pre-softmax (only when hooked)
    hook_pattern          [batch, head, 1, pos]        how much each token is read (only when hooked)
    hook_z                [batch, 1, head, d_head]
    hook_attn_out         [batch, 1, d_model]          ``a`` above (at the latent's one position)
    ln.hook_scale/normalized, mlp.hook_pre/post        the pool's MLP branch
    hook_mlp_out          [batch, 1, d_model]

The pattern (``attn_pool.hook_pattern[:, :, 0]``) is exactly the weight each pooled token gets in the readout.

Example:
    >>> pool = AttentionPool(d_model=16, n_heads=2, d_mlp=32)
    >>> pool(torch.randn(3, 5, 16)).shape
    torch.Size([3, 16])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from caap_lens.model.layer_norm import LayerNorm, has_hooks
from caap_lens.model.mlp import MLP

__all__ = ["AttentionPool"]


class AttentionPool(nn.Module):
    """A learned latent query attending over the tokens it is given, then ``+ mlp(norm(.))``: one vector per image."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int, act_fn: str = "gelu", eps: float = 1e-6):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"attention pool: d_model ({d_model}) is not divisible by n_heads ({n_heads})")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, d_model))
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln = LayerNorm(d_model, eps)
        self.mlp = MLP(d_model, d_mlp, act_fn=act_fn)
        self.hook_q = HookPoint()  # [batch, 1, head, d_head]
        self.hook_k = HookPoint()  # [batch, pos, head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, 1, pos]
        self.hook_pattern = HookPoint()  # [batch, head, 1, pos]
        self.hook_z = HookPoint()  # [batch, 1, head, d_head]
        self.hook_attn_out = HookPoint()  # [batch, 1, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, 1, d_model]

    def forward(self, tokens: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_model"]:
        batch, pos, d_model = tokens.shape
        q = self.q(self.latent.expand(batch, -1, -1)).reshape(batch, 1, self.n_heads, self.d_head)
        kv = self.kv(tokens).reshape(batch, pos, 2, self.n_heads, self.d_head)
        q = self.hook_q(q).transpose(1, 2)  # [batch, head, 1, d_head]
        k = self.hook_k(kv[:, :, 0]).transpose(1, 2)  # [batch, head, pos, d_head]
        v = self.hook_v(kv[:, :, 1]).transpose(1, 2)
        if has_hooks(self.hook_attn_scores) or has_hooks(self.hook_pattern):
            scores = self.hook_attn_scores((q * self.d_head**-0.5) @ k.transpose(-2, -1))
            z = self.hook_pattern(scores.softmax(dim=-1)) @ v
        else:
            z = F.scaled_dot_product_attention(q, k, v)  # timm's fused path: the same kernel
        z = self.hook_z(z.transpose(1, 2))  # [batch, 1, head, d_head]
        attn_out = self.hook_attn_out(self.proj(z.reshape(batch, 1, d_model)))  # [batch, 1, d_model]
        return (attn_out + self.hook_mlp_out(self.mlp(self.ln(attn_out))))[:, 0]

"""Hugging Face tensor names -> `HookedViT` state-dict keys: one key map for every HF ViT layout.

HF families name the same pieces differently (``layernorm_before`` / ``norm1`` / ``layer_norm1``,
``attention`` / ``self_attn``, ...). A `Layout` lists one family's names; `key_map` turns a layout
and a `HookedViTConfig` into ``HookedViT key -> tuple of HF keys``: one key for a renamed tensor,
three for the fused ``qkv`` projection (HF keeps query, key and value apart; they are concatenated
in that order), none for a bias HF does not have (HookedViT holds zeros there, which is exact).
`assemble` reads a state dict through such a map. The position embedding and prefix tokens take
HookedViT's shapes (``[pos, d_model]``, ``[1, n, d_model]``).

Example:
    >>> from caap_lens.config import HookedViTConfig
    >>> cfg = HookedViTConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16, image_size=8, patch_size=4)
    >>> keys = key_map(cfg, VIT_LAYOUT)
    >>> keys["blocks.0.attn.qkv.weight"][1], keys["ln_final.w"]
    ('layers.0.attention.k_proj.weight', ('layernorm.weight',))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from caap_lens.config import HookedViTConfig

__all__ = ["CLIP_LAYOUT", "DINOV2_LAYOUT", "Layout", "VIT_LAYOUT", "assemble", "key_map"]


@dataclass(frozen=True)
class Layout:
    """Where one HF family keeps each tensor (names relative to the vision backbone).

    ``patch`` is the patch projection (a ``Conv2d``); ``cls_token``, ``dist_token`` and ``reg_token``
    the prefix tokens, in HookedViT's order ("" when absent); ``pos_embed`` the position embedding (a
    parameter, or an ``nn.Embedding``'s ``.weight``); ``pre_norm`` the norm before block 0 ("" when
    none); ``layer`` the prefix of block ``{i}``, inside which ``norm1``, ``q``, ``k``, ``v``, ``o``,
    ``norm2``, ``fc1``, ``fc2`` and the layer scales ``ls1``, ``ls2`` ("" when none) are found;
    ``final_norm`` the norm after the last block.
    """

    patch: str
    cls_token: str
    pos_embed: str
    layer: str
    norm1: str
    q: str
    k: str
    v: str
    o: str
    norm2: str
    fc1: str
    fc2: str
    final_norm: str
    dist_token: str = ""
    reg_token: str = ""
    pre_norm: str = ""
    ls1: str = ""
    ls2: str = ""


#: ViT and DeiT (DeiT's distillation token is ``embeddings.distillation_token``).
VIT_LAYOUT = Layout(
    patch="embeddings.patch_embeddings.projection", cls_token="embeddings.cls_token",
    dist_token="embeddings.distillation_token", pos_embed="embeddings.position_embeddings", layer="layers.{}",
    norm1="layernorm_before", q="attention.q_proj", k="attention.k_proj", v="attention.v_proj",
    o="attention.o_proj", norm2="layernorm_after", fc1="mlp.fc1", fc2="mlp.fc2", final_norm="layernorm",
)
#: DINOv2 with and without registers.
DINOV2_LAYOUT = Layout(
    patch="embeddings.patch_embeddings.projection", cls_token="embeddings.cls_token",
    reg_token="embeddings.register_tokens", pos_embed="embeddings.position_embeddings", layer="encoder.layer.{}",
    norm1="norm1", q="attention.q_proj", k="attention.k_proj", v="attention.v_proj", o="attention.o_proj",
    norm2="norm2", fc1="mlp.fc1", fc2="mlp.fc2", ls1="layer_scale1.lambda1", ls2="layer_scale2.lambda1",
    final_norm="layernorm",
)
#: CLIP and SigLIP image towers (SigLIP: no CLS token, no pre-norm).
CLIP_LAYOUT = Layout(
    patch="embeddings.patch_embedding", cls_token="embeddings.class_embedding",
    pos_embed="embeddings.position_embedding.weight", pre_norm="pre_layrnorm", layer="encoder.layers.{}",
    norm1="layer_norm1", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.out_proj",
    norm2="layer_norm2", fc1="mlp.fc1", fc2="mlp.fc2", final_norm="post_layernorm",
)


def key_map(cfg: HookedViTConfig, layout: Layout, prefix: str = "",
            head: str = "", head_dist: str = "") -> dict[str, tuple[str, ...]]:
    """`HookedViT` key -> the HF keys it is read from (``()``: a bias HF lacks, zeros).

    Args:
        cfg: The converted config; its flags say which tensors exist.
        layout: The family's names.
        prefix: The backbone's prefix in the HF state dict (``"vit."``, ``"vision_model."``, ...).
        head: The classifier (its full HF name, no prefix added); used when ``cfg.n_classes``.
        head_dist: The distillation classifier of a distilled model (full name).

    Returns:
        A dict with exactly the keys of ``HookedViT(cfg).state_dict()``. The final norm is read into
        ``ln_final`` or, for a model that normalises the pooled token only (CLIP), ``ln_pooled``.
    """
    p = prefix
    keys: dict[str, tuple[str, ...]] = {"embed.proj.weight": (f"{p}{layout.patch}.weight",)}
    keys["embed.proj.bias"] = (f"{p}{layout.patch}.bias",)
    for present, ours, theirs in ((cfg.class_token, "embed.cls_token", layout.cls_token),
                                  (cfg.distilled, "embed.dist_token", layout.dist_token),
                                  (cfg.n_register_tokens, "embed.reg_token", layout.reg_token)):
        if present:
            keys[ours] = (f"{p}{theirs}",)
    keys["pos_embed.W_pos"] = (f"{p}{layout.pos_embed}",)

    def norm(ours: str, theirs: str) -> None:
        keys[f"{ours}.w"], keys[f"{ours}.b"] = (f"{theirs}.weight",), (f"{theirs}.bias",)

    if cfg.pre_norm:
        norm("ln_pre", p + layout.pre_norm)
    for layer in range(cfg.n_layers):
        ours, theirs = f"blocks.{layer}", p + layout.layer.format(layer)
        norm(f"{ours}.ln1", f"{theirs}.{layout.norm1}")
        keys[f"{ours}.attn.qkv.weight"] = tuple(f"{theirs}.{n}.weight" for n in (layout.q, layout.k, layout.v))
        if cfg.qkv_bias:
            keys[f"{ours}.attn.qkv.bias"] = tuple(f"{theirs}.{n}.bias" for n in (layout.q, layout.k, layout.v))
        keys[f"{ours}.attn.proj.weight"], keys[f"{ours}.attn.proj.bias"] = (
            (f"{theirs}.{layout.o}.weight",), (f"{theirs}.{layout.o}.bias",))
        norm(f"{ours}.ln2", f"{theirs}.{layout.norm2}")
        for fc in ("fc1", "fc2"):
            name = getattr(layout, fc)
            keys[f"{ours}.mlp.{fc}.weight"], keys[f"{ours}.mlp.{fc}.bias"] = (
                (f"{theirs}.{name}.weight",), (f"{theirs}.{name}.bias",))
        if cfg.layer_scale:
            keys[f"{ours}.attn.layer_scale"] = (f"{theirs}.{layout.ls1}",)
            keys[f"{ours}.mlp.layer_scale"] = (f"{theirs}.{layout.ls2}",)
    if cfg.final_norm:
        norm("ln_final", p + layout.final_norm)
    if cfg.pooled_norm:
        norm("ln_pooled", p + layout.final_norm)
    if cfg.n_classes:
        keys["head.weight"], keys["head.bias"] = (f"{head}.weight",), (f"{head}.bias",)
        if cfg.distilled:
            keys["head_dist.weight"], keys["head_dist.bias"] = (f"{head_dist}.weight",), (f"{head_dist}.bias",)
    return keys


_SHAPES = {"embed.cls_token": "token", "embed.dist_token": "token", "embed.reg_token": "token",
           "pos_embed.W_pos": "pos"}


def assemble(theirs: Mapping[str, Tensor], keys: Mapping[str, tuple[str, ...]],
             d_model: int) -> dict[str, Tensor]:
    """Reads ``theirs`` (an HF state dict) through ``keys`` (from `key_map`) into a HookedViT state dict.

    A missing ``.bias`` becomes zeros of its weight's output size (HF layers built with
    ``bias=False``); the fused ``qkv`` tensors are the concatenation of the three HF ones.

    Raises:
        KeyError: A tensor other than a bias is missing (the message names it).

    Example:
        >>> import torch
        >>> assemble({"a.weight": torch.ones(2, 3)}, {"x.weight": ("a.weight",), "x.bias": ("a.bias",)}, 3)["x.bias"]
        tensor([0., 0.])
    """
    out: dict[str, Tensor] = {}
    for ours, names in keys.items():
        parts = []
        for name in names:
            tensor = theirs.get(name)
            if tensor is None and name.endswith(".bias") and name[:-4] + "weight" in theirs:
                weight = theirs[name[:-4] + "weight"]
                tensor = weight.new_zeros(weight.shape[0])
            if tensor is None:
                raise KeyError(f"the Hugging Face state dict has no {name!r} (needed for {ours})")
            parts.append(tensor.detach())
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        kind = _SHAPES.get(ours)
        if kind == "token":
            tensor = tensor.reshape(1, -1, d_model)
        elif kind == "pos":
            tensor = tensor.reshape(-1, d_model)
        out[ours] = tensor
    return out

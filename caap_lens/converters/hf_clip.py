"""Hugging Face CLIP and SigLIP image towers -> `HookedViT` config and state dict.

What the HookedViT output is, per class:

================================  ==========================================================================
``CLIPVisionModel``               headless: HF's ``pooler_output``, ``post_layernorm`` of the CLS token.
                                  HF normalises the pooled token only (its ``last_hidden_state`` is not
                                  normed), so HookedViT has ``final_norm=False, pooled_norm=True``; the
                                  ``pre_layrnorm`` is ``ln_pre``; the patch projection has no bias (zeros)
``CLIPVisionModelWithProjection``  the image embeddings: ``visual_projection`` (no bias, zeros) as the head,
                                  recorded as ``output_kind="embedding"`` (its outputs are not classes)
``CLIPModel``                     its image tower as ``CLIPVisionModelWithProjection``; the text tower,
                                  ``text_projection`` and ``logit_scale`` are not converted
``SiglipForImageClassification``  logits: ``classifier`` on the mean of ``last_hidden_state`` (the
                                  post-normed tokens; SigLIP has no CLS token). The vision model's
                                  attention-pool head, if its config has one, is unused there and not
                                  converted
``SiglipVisionModel``             headless: HF's ``pooler_output``, the attention-pool head
                                  (``vision_use_head=True``, the released checkpoints) as HookedViT's
                                  ``pooling="map"`` readout (`caap_lens.model.attention_pool`): ``probe``
                                  is the latent query, ``nn.MultiheadAttention``'s fused input projection
                                  is split into ``q`` and ``kv``. With ``vision_use_head=False``: the mean
                                  of ``last_hidden_state`` (HF gives no pooled output; this is the readout
                                  ``SiglipForImageClassification`` uses)
``SiglipModel``                   its image tower as ``SiglipVisionModel`` (``get_image_features``); the
                                  text tower, ``logit_scale`` and ``logit_bias`` are not converted
================================  ==========================================================================

Where the installed `HookedViTConfig` has no ``pooling="map"``, an attention-pool head raises
`UnsupportedModelError` saying so; none is faked.

Example:
    >>> from caap_lens.converters.hf_config import import_transformers
    >>> hf = import_transformers()
    >>> config = hf.CLIPVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                              intermediate_size=64, image_size=16, patch_size=8, projection_dim=8)
    >>> cfg, state_dict = convert_hf_clip(hf.CLIPVisionModelWithProjection(config))
    >>> cfg.pre_norm, cfg.final_norm, cfg.pooled_norm, cfg.act_fn, cfg.n_classes, cfg.output_kind
    (True, False, True, 'quick_gelu', 8, 'embedding')
"""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from caap_lens.config import HookedViTConfig
from caap_lens.converters.hf_config import check_options, hf_base_fields, hf_output_activation, unsupported_hf
from caap_lens.converters.hf_keys import CLIP_LAYOUT
from caap_lens.converters.hf_vit import read_hf

__all__ = ["HF_CLIP_CLASSES", "convert_hf_clip"]

#: The classes `convert_hf_clip` converts.
HF_CLIP_CLASSES = ("CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel", "SiglipVisionModel",
                   "SiglipModel", "SiglipForImageClassification")
_SIGLIP_LAYOUT = dataclasses.replace(CLIP_LAYOUT, cls_token="", pre_norm="")


def convert_hf_clip(module: nn.Module, source: str = "") -> tuple[HookedViTConfig, dict[str, Tensor]]:
    """The `HookedViTConfig` and state dict of an HF CLIP or SigLIP image tower (see the module's table).

    Pure: the module is read, never changed.

    Args:
        module: One of `HF_CLIP_CLASSES`.
        source: Recorded as ``cfg.source``; default ``"hf:<class name>"``.

    Raises:
        UnsupportedModelError: Another class, or a config option HookedViT cannot run (named). SigLIP's
            attention-pool head converts to ``pooling="map"``.
    """
    name = type(module).__name__
    if name not in HF_CLIP_CLASSES:
        raise unsupported_hf(f"{name} is not an HF CLIP or SigLIP class convert_hf_clip knows")
    config = module.config
    vision = getattr(config, "vision_config", None) or config  # two-tower configs nest the image tower's
    common = {"source": source or f"hf:{name}", "weights_kind": "converted", **hf_base_fields(vision)}
    if name.startswith("CLIP"):
        check_options(vision, ("projection_dim",))
        prefix = "" if name == "CLIPVisionModel" else "vision_model."
        head = "" if name == "CLIPVisionModel" else "visual_projection"
        n_classes = int(module.visual_projection.out_features) if head else 0
        cfg = HookedViTConfig(**common, family="clip", pre_norm=True, final_norm=False, pooled_norm=True,
                              n_classes=n_classes, output_activation="logits", output_kind="embedding")
        not_converted = ("text_model.", "text_projection.", "logit_scale") if name == "CLIPModel" else ()
        return cfg, read_hf(module, cfg, CLIP_LAYOUT, prefix, head, not_converted=not_converted)
    check_options(vision, ("vision_use_head",))
    if name in ("SiglipVisionModel", "SiglipModel"):
        prefix = "" if name == "SiglipVisionModel" else "vision_model."
        not_converted = () if prefix == "" else ("text_model.", "logit_scale", "logit_bias")
        if not vision.vision_use_head:
            cfg = HookedViTConfig(**common, family="siglip", class_token=False, pooling="avg", n_classes=0,
                                  output_activation="logits")
            return cfg, read_hf(module, cfg, _SIGLIP_LAYOUT, prefix, not_converted=not_converted)
        cfg = HookedViTConfig(**common, family="siglip", class_token=False, pooling="map", n_classes=0,
                              output_activation="logits")
        state = read_hf(module, cfg, _SIGLIP_LAYOUT, prefix, not_converted=(*not_converted, prefix + "head."))
        return cfg, {**state, **_attention_pool(module.state_dict(), prefix + "head.", cfg.d_model)}
    heads = isinstance(getattr(module, "classifier", None), nn.Linear)
    n_classes = int(config.num_labels) if heads else 0
    cfg = HookedViTConfig(**common, family="siglip", class_token=False, pooling="avg", n_classes=n_classes,
                          output_activation=hf_output_activation(config, n_classes))
    return cfg, read_hf(module, cfg, _SIGLIP_LAYOUT, "vision_model.", "classifier" if heads else "",
                        not_converted=("vision_model.head.",))


def _attention_pool(theirs: dict[str, Tensor], head: str, d_model: int) -> dict[str, Tensor]:
    """HookedViT's ``attn_pool.*`` tensors from SigLIP's attention-pool head; every head tensor is read."""
    names = {"attn_pool.latent": "probe", "attn_pool.proj.weight": "attention.out_proj.weight",
             "attn_pool.proj.bias": "attention.out_proj.bias", "attn_pool.ln.w": "layernorm.weight",
             "attn_pool.ln.b": "layernorm.bias", "attn_pool.mlp.fc1.weight": "mlp.fc1.weight",
             "attn_pool.mlp.fc1.bias": "mlp.fc1.bias", "attn_pool.mlp.fc2.weight": "mlp.fc2.weight",
             "attn_pool.mlp.fc2.bias": "mlp.fc2.bias"}
    fused = ("attention.in_proj_weight", "attention.in_proj_bias")  # [q; k; v]: q, then the fused kv
    unread = sorted(k for k in theirs if k.startswith(head) and k[len(head):] not in {*names.values(), *fused})
    if unread:
        raise unsupported_hf(f"the attention-pool head has tensors HookedViT does not model: {', '.join(unread)}")
    out = {ours: theirs[head + name] for ours, name in names.items()}
    out["attn_pool.latent"] = out["attn_pool.latent"].reshape(1, 1, d_model)
    w, b = (theirs[head + name] for name in fused)
    out.update({"attn_pool.q.weight": w[:d_model], "attn_pool.q.bias": b[:d_model],
                "attn_pool.kv.weight": w[d_model:], "attn_pool.kv.bias": b[d_model:]})
    return {k: v.detach() for k, v in out.items()}

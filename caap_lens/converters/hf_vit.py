"""Hugging Face ViT, DeiT and DINOv2 (with and without registers) -> `HookedViT` config and state dict.

The three families share one block (pre-norm attention and MLP, separate query/key/value) and
differ in names (`caap_lens.converters.hf_keys`), prefix tokens and readout. What the HookedViT
output is, per class:

=========================================  =====================================================
``ViTModel``, ``DeiTModel``                 headless: the final-norm CLS token
                                            (``last_hidden_state[:, 0]``). Their ``pooler`` (dense +
                                            tanh) is not a classifier head and is not converted.
``ViTForImageClassification``               logits: ``classifier`` on the final-norm CLS token
``DeiTForImageClassification``              logits: ``classifier`` on the CLS token; the
                                            distillation token stays in the sequence (the head does
                                            not read it), so it is converted as one register token
``DeiTForImageClassificationWithTeacher``   logits: mean of the CLS and distillation heads
                                            (``distilled=True``, ``pooling="token_dist"``)
``Dinov2Model``                             headless: the final-norm CLS token (HF's
                                            ``pooler_output``); layer scale
``Dinov2WithRegistersModel``                as ``Dinov2Model``, with the register tokens after CLS.
                                            HF adds no position to them: their rows of ``W_pos``
                                            are zeros
=========================================  =====================================================

``Dinov2ForImageClassification`` (and its registers variant) raise `UnsupportedModelError`: the
classifier reads the CLS token concatenated with the mean patch token, a readout HookedViT does not
have; convert the backbone (``model.dinov2``) instead. The masked-image-modelling ``mask_token`` is
not converted: HF uses it only when a ``bool_masked_pos`` input is given, and HookedViT has none.
The model runs at the config's ``image_size``; another size (HF's ``interpolate_pos_encoding``) is a
conversion option (`caap_lens.converters.hf_pos_embed`). DINOv2 configs must be square, since HF
interpolates the position embedding of any other input.

Example:
    >>> from caap_lens.converters.hf_config import import_transformers
    >>> hf = import_transformers()
    >>> config = hf.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    ...                       image_size=16, patch_size=8, num_labels=3)
    >>> cfg, state_dict = convert_hf_vit(hf.ViTForImageClassification(config))
    >>> cfg.family, cfg.n_classes, cfg.eps, tuple(state_dict["blocks.0.attn.qkv.weight"].shape)
    ('vit', 3, 1e-12, (96, 32))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from caap_lens.config import HookedViTConfig
from caap_lens.converters.hf_config import check_options, hf_base_fields, hf_output_activation, unsupported_hf
from caap_lens.converters.hf_keys import DINOV2_LAYOUT, VIT_LAYOUT, Layout, assemble, key_map

__all__ = ["HF_VIT_CLASSES", "convert_hf_vit", "read_hf"]

#: The classes `convert_hf_vit` converts.
HF_VIT_CLASSES = ("ViTModel", "ViTForImageClassification", "DeiTModel", "DeiTForImageClassification",
                  "DeiTForImageClassificationWithTeacher", "Dinov2Model", "Dinov2WithRegistersModel")
_VIT_OPTIONS = ("qkv_bias", "encoder_stride", "pooler_output_size", "pooler_act")  # the last three: not converted
_DINOV2_OPTIONS = ("qkv_bias", "mlp_ratio", "layerscale_value", "use_mask_token", "num_register_tokens",
                   "out_features", "out_indices", "stage_names", "apply_layernorm", "reshape_hidden_states")


def read_hf(module: nn.Module, cfg: HookedViTConfig, layout: Layout, prefix: str = "", head: str = "",
            head_dist: str = "", not_converted: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """The HookedViT state dict of ``module``: every tensor mapped, or named in ``not_converted``.

    Raises:
        UnsupportedModelError: ``module`` has a tensor that is neither read nor explicitly not converted
            (HookedViT would silently lose it).
    """
    theirs = module.state_dict()
    keys = key_map(cfg, layout, prefix, head, head_dist)
    read = {name for names in keys.values() for name in names}
    unread = sorted(k for k in set(theirs) - read if not k.startswith(not_converted))
    if unread:
        raise unsupported_hf(f"{type(module).__name__} has tensors HookedViT does not model: {', '.join(unread[:6])}")
    return assemble(theirs, keys, cfg.d_model)


def _heads(module: nn.Module, *names: str) -> bool:
    """Whether the named classifier attributes are real linear heads (HF uses Identity for num_labels=0)."""
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in names)


def convert_hf_vit(module: nn.Module, source: str = "") -> tuple[HookedViTConfig, dict[str, Tensor]]:
    """The `HookedViTConfig` and state dict of an HF ViT, DeiT or DINOv2 (see the module's table).

    Pure: the module is read, never changed.

    Args:
        module: One of `HF_VIT_CLASSES`.
        source: Recorded as ``cfg.source``; default ``"hf:<class name>"``.

    Raises:
        UnsupportedModelError: Another class, or a config option HookedViT cannot run (named).
    """
    name = type(module).__name__
    config = module.config
    source = source or f"hf:{name}"
    if name.startswith("Dinov2") and name.endswith("ForImageClassification"):
        backbone = "dinov2_with_registers" if "Registers" in name else "dinov2"
        raise unsupported_hf(
            f"{name}'s classifier reads the CLS token concatenated with the mean patch token, a readout HookedViT "
            f"does not have; convert the backbone instead: HookedViT.from_hf(model.{backbone}) (headless)")
    if name not in HF_VIT_CLASSES:
        raise unsupported_hf(f"{name} is not an HF ViT, DeiT or DINOv2 class convert_hf_vit knows")
    common: dict[str, Any] = {"source": source, "weights_kind": "converted"}
    if name.startswith("Dinov2"):
        return _dinov2(module, config, name, common)
    check_options(config, _VIT_OPTIONS)
    fields = {**hf_base_fields(config), **common, "qkv_bias": bool(config.qkv_bias),
              "family": "deit" if name.startswith("DeiT") else "vit"}
    layout, prefix, heads = VIT_LAYOUT, "", ()
    not_converted: tuple[str, ...] = ("embeddings.mask_token",)
    if name in ("ViTModel", "DeiTModel"):
        not_converted += ("pooler.",)
    else:
        prefix = "vit." if name.startswith("ViT") else "deit."
        not_converted = tuple(prefix + n for n in not_converted)
    if name.startswith("DeiT") and name != "DeiTForImageClassificationWithTeacher":
        layout = dataclasses.replace(VIT_LAYOUT, dist_token="", reg_token="embeddings.distillation_token")
        fields["n_register_tokens"] = 1  # the head never reads it: a register, not a second readout
    if name == "ViTForImageClassification" or name == "DeiTForImageClassification":
        heads = ("classifier",) if _heads(module, "classifier") else ()
    if name == "DeiTForImageClassificationWithTeacher":
        fields.update(distilled=True, pooling="token_dist")
        heads = ("cls_classifier", "distillation_classifier") if _heads(
            module, "cls_classifier", "distillation_classifier") else ()
    n_classes = int(config.num_labels) if heads else 0
    cfg = HookedViTConfig(**fields, n_classes=n_classes, output_activation=hf_output_activation(config, n_classes))
    head, head_dist = (heads + ("", ""))[:2]
    return cfg, read_hf(module, cfg, layout, prefix, head, head_dist, not_converted)


def _dinov2(module: nn.Module, config: Any, name: str,
            common: dict[str, Any]) -> tuple[HookedViTConfig, dict[str, Tensor]]:
    check_options(config, _DINOV2_OPTIONS, required={"use_swiglu_ffn": False})
    fields = hf_base_fields(config, d_mlp=int(config.hidden_size * config.mlp_ratio))
    if fields["image_size"][0] != fields["image_size"][1]:
        raise unsupported_hf(f"{name} with image_size={config.image_size!r}: HF interpolates the position "
                             "embedding of non-square inputs, HookedViT runs square DINOv2 configs only")
    n_reg = int(getattr(config, "num_register_tokens", 0)) if "Registers" in name else 0
    cfg = HookedViTConfig(**fields, **common, family="dinov2", qkv_bias=bool(config.qkv_bias), layer_scale=True,
                          n_register_tokens=n_reg, n_classes=0, output_activation="logits")
    state = read_hf(module, cfg, DINOV2_LAYOUT, not_converted=("embeddings.mask_token",))
    if n_reg:  # HF: CLS + pos[0], registers (no position), patches + pos[1:]; HookedViT: one row per token
        pos = state["pos_embed.W_pos"]
        state["pos_embed.W_pos"] = torch.cat([pos[:1], pos.new_zeros(n_reg, pos.shape[1]), pos[1:]])
    return cfg, state

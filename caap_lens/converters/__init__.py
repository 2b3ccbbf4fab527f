"""Converters: pure functions from a source model or file to ``(HookedViTConfig, state_dict)``.

This package sits below `caap_lens.model`: it imports only `caap_lens.config`, `caap_lens.grid`,
`caap_lens._timm`, torch, timm, safetensors and onnx, never `caap_lens.model` or `caap_lens.loading`.
``HookedViT.from_timm`` and ``HookedViT.from_pretrained`` build the model from what it returns with
``HookedViT(cfg).load_state_dict(state_dict, strict=True)``; `caap_lens.loading` (above the model)
adds the conveniences that need a model or the network.

* `caap_lens.converters.families` -- the supported families as one table, and family detection;
* `caap_lens.converters.timm_config` -- a timm module's structure -> `HookedViTConfig`;
* `caap_lens.converters.timm_vit` -- `convert_timm`, `create_timm`, `imagenet_class_names`;
* `caap_lens.converters.checkpoint` -- checkpoint files: `checkpoint_num_classes`, `read_checkpoint`,
  `load_checkpoint` (prefixes stripped, a one-line error when it does not fit);
* `caap_lens.converters.real_dinov2` -- the real DINOv2-S/14 weights: ONNX -> timm state dict, cache;
* `caap_lens.converters.bundled` -- the models shipped inside caap_lens;
* `caap_lens.converters.hf_models` -- Hugging Face models: `HF_CLASSES`, `convert_hf`, `read_hf_model`
  (module, saved folder or hub name), with the family converters `caap_lens.converters.hf_vit`
  (ViT, DeiT, DINOv2) and `caap_lens.converters.hf_clip` (CLIP, SigLIP), the shared key map
  `caap_lens.converters.hf_keys`, option checks `caap_lens.converters.hf_config`, the image
  processor `caap_lens.converters.hf_processor` and other image sizes `caap_lens.converters.hf_pos_embed`.

Example:
    >>> from caap_lens.converters import convert_timm, create_timm
    >>> cfg, state_dict = convert_timm(create_timm("vit_tiny_patch16_224", depth=1))
    >>> cfg.family, len(state_dict)
    ('vit', 20)
"""

from caap_lens.converters.checkpoint import (
    CheckpointMismatchError,
    checkpoint_num_classes,
    load_checkpoint,
    read_checkpoint,
)
from caap_lens.converters.families import FAMILIES, FAMILY_EXAMPLES, UnsupportedModelError, detect_family
from caap_lens.converters.hf_models import HF_CLASSES, convert_hf, hf_checkpoint_hint, hf_class_names, read_hf_model
from caap_lens.converters.timm_vit import convert_timm, create_timm, imagenet_class_names, key_map, timm_origin

__all__ = ["FAMILIES", "FAMILY_EXAMPLES", "HF_CLASSES", "CheckpointMismatchError", "UnsupportedModelError",
           "checkpoint_num_classes", "convert_hf", "convert_timm", "create_timm", "detect_family", "hf_checkpoint_hint",
           "hf_class_names", "imagenet_class_names", "key_map", "load_checkpoint", "read_checkpoint", "read_hf_model",
           "timm_origin"]

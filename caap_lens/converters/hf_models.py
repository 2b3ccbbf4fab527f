"""Hugging Face models: which classes convert, and reading a module, a saved directory or a hub name.

`convert_hf` dispatches an HF module to its family's pure converter (`caap_lens.converters.hf_vit`,
`caap_lens.converters.hf_clip`); `HF_CLASSES` says, per class, what the converted model outputs.
`read_hf_model` also accepts a directory written by ``model.save_pretrained(...)`` (loaded offline, with
the image processor of its ``preprocessor_config.json`` recorded as ``cfg.data_config``,
`caap_lens.converters.hf_processor`), its ``model.safetensors`` file, or a hub name (from the local
cache when offline). ``HookedViT.from_hf`` builds the model from what it returns.

Example:
    >>> import tempfile
    >>> from caap_lens.converters.hf_config import import_transformers
    >>> hf = import_transformers()
    >>> config = hf.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    ...                       image_size=16, patch_size=8, num_labels=2, id2label={0: "cat", 1: "dog"})
    >>> folder = tempfile.mkdtemp()
    >>> hf.ViTForImageClassification(config).save_pretrained(folder)
    >>> cfg, state_dict, class_names = read_hf_model(folder)
    >>> cfg.n_classes, class_names, cfg.weights_kind
    (2, ('cat', 'dog'), 'checkpoint')
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Iterable

from torch import Tensor, nn

from caap_lens.config import HookedViTConfig
from caap_lens.converters.hf_clip import HF_CLIP_CLASSES, convert_hf_clip
from caap_lens.converters.hf_config import hf_class_names as _names_from_config
from caap_lens.converters.hf_config import import_transformers, unsupported_hf
from caap_lens.converters.hf_pos_embed import check_dynamic, hf_resample, resample_pos_embed
from caap_lens.converters.hf_processor import hf_data_config, read_processor_config
from caap_lens.converters.hf_vit import HF_VIT_CLASSES, convert_hf_vit

__all__ = ["HF_CLASSES", "convert_hf", "hf_checkpoint_hint", "hf_class_names", "read_hf_model"]

#: HF class -> what the converted HookedViT outputs (``model(x)``).
HF_CLASSES: dict[str, str] = {
    "ViTModel": "the final-norm CLS token (headless; the tanh pooler is not converted)",
    "ViTForImageClassification": "logits",
    "DeiTModel": "the final-norm CLS token (headless; the tanh pooler is not converted)",
    "DeiTForImageClassification": "logits (CLS head; the distillation token is a register)",
    "DeiTForImageClassificationWithTeacher": "logits: mean of the CLS and distillation heads",
    "Dinov2Model": "the final-norm CLS token (pooler_output; headless)",
    "Dinov2WithRegistersModel": "the final-norm CLS token (pooler_output; headless)",
    "CLIPVisionModel": "pooler_output: post_layernorm of the CLS token (headless)",
    "CLIPVisionModelWithProjection": "image_embeds (the projection is the head; output_kind='embedding')",
    "CLIPModel": "its image tower's image embeds (get_image_features); the text tower is not converted",
    "SiglipVisionModel": "pooler_output: the attention-pool head as pooling='map' (vision_use_head=False: the mean "
                         "of last_hidden_state); headless",
    "SiglipModel": "its image tower's pooler_output (get_image_features); the text tower is not converted",
    "SiglipForImageClassification": "logits (classifier on the mean of last_hidden_state)",
}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# a patch projection's name in each HF layout (any prefix): how an HF state dict is recognised
_HF_PATCH_KEYS = ("embeddings.patch_embeddings.projection.weight", "embeddings.patch_embedding.weight")


def hf_checkpoint_hint(keys: Iterable[str]) -> str | None:
    """A sentence pointing to ``HookedViT.from_hf`` when ``keys`` are a Hugging Face ViT's state dict, else None.

    For loaders of timm checkpoints: an HF ``model.safetensors`` has no timm keys, and this says what to
    do instead of listing them.

    Example:
        >>> hf_checkpoint_hint(["vit.embeddings.patch_embeddings.projection.weight"])[:50]
        'this is a Hugging Face state dict: load its folder'
        >>> hf_checkpoint_hint(["patch_embed.proj.weight"]) is None
        True
    """
    if not any(key.endswith(_HF_PATCH_KEYS) for key in keys):
        return None
    return ("this is a Hugging Face state dict: load its folder (config.json next to model.safetensors) with "
            "HookedViT.from_hf(folder)")


def convert_hf(module: nn.Module, source: str = "", image_size: int | tuple[int, int] | None = None,
               dynamic_img_size: bool = False) -> tuple[HookedViTConfig, dict[str, Tensor]]:
    """The `HookedViTConfig` and `HookedViT` state dict of an HF vision model (one of `HF_CLASSES`).

    Pure: the module is read, never changed; ``HookedViT(cfg).load_state_dict(state_dict, strict=True)``
    works. The config records no preprocessing (a module carries none; `read_hf_model` adds the
    processor of a saved directory).

    Args:
        module: The HF model.
        source: Recorded as ``cfg.source``; default ``"hf:<class name>"``.
        image_size: Run at this size instead of the config's: the position embedding is resampled as HF
            does for it (``interpolate_pos_encoding=True``; DINOv2 always), see
            `caap_lens.converters.hf_pos_embed`.
        dynamic_img_size: Run on images of any whole number of patches, the position embedding resampled
            on every forward as HF does (``cfg.dynamic_img_size``; `caap_lens.model.sizing`). With
            ``image_size``, that size becomes the model's default (``cfg.image_size``) and the embedding
            keeps the grid it was learned on.

    Raises:
        UnsupportedModelError: Not a supported class, or an option HookedViT cannot run (named).

    Example:
        >>> hf = import_transformers()
        >>> config = hf.Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...                                       image_size=28, patch_size=14, num_register_tokens=2)
        >>> cfg, state_dict = convert_hf(hf.Dinov2WithRegistersModel(config))
        >>> cfg.n_register_tokens, cfg.n_tokens, tuple(state_dict["pos_embed.W_pos"].shape)
        (2, 7, (7, 32))
    """
    name = type(module).__name__
    if name in HF_VIT_CLASSES or name.startswith("Dinov2"):
        cfg, state_dict = convert_hf_vit(module, source)
    elif name in HF_CLIP_CLASSES:
        cfg, state_dict = convert_hf_clip(module, source)
    else:
        hint = " (a timm model: use HookedViT.from_timm)" if type(module).__module__.startswith("timm") else ""
        raise unsupported_hf(f"{name} is not a supported Hugging Face vision model{hint}")
    cfg = dataclasses.replace(cfg, pos_embed_resample=hf_resample(cfg.family, cfg.n_register_tokens))
    if dynamic_img_size:
        cfg = check_dynamic(cfg)
        return (cfg, state_dict) if image_size is None else (cfg.at_size(image_size), state_dict)
    return (cfg, state_dict) if image_size is None else resample_pos_embed(cfg, state_dict, image_size)


def hf_class_names(module: nn.Module) -> tuple[str, ...] | None:
    """The classifier's output names from ``module.config.id2label`` (None for headless models or HF's
    placeholder ``LABEL_i`` names)."""
    cfg, _ = convert_hf(module)
    return _names_from_config(module.config, cfg.n_classes)


def _load(path_or_name: str) -> tuple[nn.Module, str, str]:
    """The HF module a directory, weights file or hub name holds, and its ``(weights_kind, weights)``."""
    hf = import_transformers()
    path = os.fspath(path_or_name)
    if os.path.isfile(path):
        folder, file = os.path.split(os.path.abspath(path))
        if file not in _WEIGHT_FILES or not os.path.isfile(os.path.join(folder, "config.json")):  # no config
            raise ValueError(
                f"{path} is a weights file without its Hugging Face config: HookedViT.from_hf needs the model's "
                f"folder (config.json next to model.safetensors), as model.save_pretrained(folder) writes it. "
                "A timm checkpoint loads with HookedViT.from_timm(arch, checkpoint_path=...)")
        path = folder
    local = os.path.isdir(path)
    if local and not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path} has no config.json: it is not a folder written by save_pretrained")
    try:
        config = hf.AutoConfig.from_pretrained(path, local_files_only=local)
    except OSError as err:
        raise FileNotFoundError(f"{path_or_name!r} is neither a saved Hugging Face model folder nor a hub name "
                                f"available here (offline: only cached models load): {err}") from err
    arch = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(hf, arch, None) if arch else None
    if model_class is None:
        model_class = hf.AutoModel
    module = model_class.from_pretrained(path, local_files_only=local)
    if local:
        return module.eval(), "checkpoint", f"Hugging Face folder: {os.path.abspath(path)}"
    return module.eval(), "pretrained", f"pretrained: Hugging Face {path_or_name}"


def read_hf_model(model_or_path: nn.Module | str | os.PathLike, image_size: int | tuple[int, int] | None = None,
                  dynamic_img_size: bool = False) -> tuple[HookedViTConfig, dict[str, Tensor], tuple[str, ...] | None]:
    """``(cfg, state_dict, class_names)`` of an HF module, saved folder, its weights file, or hub name.

    For a folder with a ``preprocessor_config.json``, the processor's resize, crop, filter, mean and
    std become ``cfg.data_config`` and ``cfg.image_mean``/``image_std``. When the processor's output
    size differs from the model's (the config's, or ``image_size``; see `convert_hf`), the model's
    size is kept, with a warning that suggests ``image_size=``.

    Raises:
        UnsupportedModelError: The model (or processor) cannot be converted; the message says why.
        ValueError: A weights file without its ``config.json``.
        FileNotFoundError: Neither a folder nor a loadable hub name.
    """
    if isinstance(model_or_path, nn.Module):
        cfg, state_dict = convert_hf(model_or_path, image_size=image_size, dynamic_img_size=dynamic_img_size)
        cfg = dataclasses.replace(cfg, weights="converted from a Hugging Face module (origin unknown)")
        return cfg, state_dict, _names_from_config(model_or_path.config, cfg.n_classes)
    module, kind, weights = _load(model_or_path)
    cfg, state_dict = convert_hf(module, source=os.fspath(model_or_path), image_size=image_size,
                                 dynamic_img_size=dynamic_img_size)
    cfg = dataclasses.replace(cfg, weights_kind=kind, weights=weights)
    folder = os.fspath(model_or_path)
    folder = os.path.dirname(os.path.abspath(folder)) if os.path.isfile(folder) else folder
    processor = read_processor_config(folder) if os.path.isdir(folder) else None
    if processor is not None:
        data: dict[str, Any] = hf_data_config(processor, cfg.n_channels)
        if tuple(data["input_size"][1:]) != cfg.image_size:
            warnings.warn(f"the image processor makes {data['input_size'][1:]} inputs but the model runs at "
                          f"{cfg.image_size}; HookedViT keeps the model's size (pass image_size={data['input_size'][1]} "
                          "to run at the processor's, its position embedding resampled as HF does)", stacklevel=2)
            data["input_size"] = (cfg.n_channels, *cfg.image_size)
        cfg = dataclasses.replace(cfg, image_mean=data["mean"], image_std=data["std"], data_config=data)
    return cfg, state_dict, _names_from_config(module.config, cfg.n_classes)

"""Converting a timm ViT to `HookedViT`'s config and state dict: one generic, pure converter.

`convert_timm` reads the module's structure into a `HookedViTConfig` (`timm_config`), checks the
family's rules (`caap_lens.converters.families`), and renames timm's tensors to `HookedViT`'s keys
(`key_map`). It builds no model and changes nothing: ``HookedViT.from_timm`` does
``HookedViT(cfg).load_state_dict(state_dict, strict=True)`` with the result. An unsupported module
fails before any weight is read, with an error naming the supported families.

`create_timm` wraps ``timm.create_model`` with clear errors for an unknown name, and loads a local
checkpoint itself (class count read from it, prefixes stripped, a one-line error when it does not fit);
`timm_origin` says where the weights of such a model came from; `imagenet_class_names` names an ImageNet
head's outputs.

Example:
    >>> module = create_timm("vit_tiny_patch16_224", depth=2)  # random init, no download
    >>> cfg, state_dict = convert_timm(module)
    >>> cfg.family, cfg.n_layers, tuple(state_dict["pos_embed.W_pos"].shape)
    ('vit', 2, (197, 192))
"""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor, nn

from caap_lens._timm import import_timm
from caap_lens.config import HookedViTConfig
from caap_lens.converters.checkpoint import checkpoint_num_classes, load_checkpoint, read_checkpoint
from caap_lens.converters.families import FAMILIES, check_family, detect_family, unsupported
from caap_lens.converters.timm_config import timm_config

__all__ = ["convert_timm", "create_timm", "imagenet_class_names", "key_map", "timm_origin"]


def key_map(cfg: HookedViTConfig) -> dict[str, str]:
    """`HookedViT` state-dict key -> the timm ``VisionTransformer`` key it is read from.

    The keys are exactly those of ``HookedViT(cfg).state_dict()``. Every tensor keeps its timm shape
    except the position embedding (timm ``[1, pos, d_model]``, ours ``[pos, d_model]``).

    Example:
        >>> cfg = HookedViTConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16, image_size=8, patch_size=4)
        >>> key_map(cfg)["blocks.0.ln1.w"], key_map(cfg)["pos_embed.W_pos"]
        ('blocks.0.norm1.weight', 'pos_embed')
    """
    keys = {"embed.proj.weight": "patch_embed.proj.weight", "embed.proj.bias": "patch_embed.proj.bias"}
    for present, ours, theirs in (
        (cfg.class_token, "embed.cls_token", "cls_token"),
        (cfg.distilled, "embed.dist_token", "dist_token"),
        (cfg.n_register_tokens, "embed.reg_token", "reg_token"),
    ):
        if present:
            keys[ours] = theirs
    keys["pos_embed.W_pos"] = "pos_embed"

    def norm(ours: str, theirs: str) -> None:
        keys.update({f"{ours}.w": f"{theirs}.weight", f"{ours}.b": f"{theirs}.bias"})

    def linear(ours: str, theirs: str, bias: bool) -> None:
        keys[f"{ours}.weight"] = f"{theirs}.weight"
        if bias:
            keys[f"{ours}.bias"] = f"{theirs}.bias"

    if cfg.pre_norm:
        norm("ln_pre", "norm_pre")
    for layer in range(cfg.n_layers):
        block = f"blocks.{layer}"
        norm(f"{block}.ln1", f"{block}.norm1")
        linear(f"{block}.attn.qkv", f"{block}.attn.qkv", cfg.qkv_bias)
        linear(f"{block}.attn.proj", f"{block}.attn.proj", cfg.proj_bias)
        if cfg.layer_scale:
            keys[f"{block}.attn.layer_scale"] = f"{block}.ls1.gamma"
        norm(f"{block}.ln2", f"{block}.norm2")
        linear(f"{block}.mlp.fc1", f"{block}.mlp.fc1", cfg.proj_bias)
        linear(f"{block}.mlp.fc2", f"{block}.mlp.fc2", cfg.proj_bias)
        if cfg.layer_scale:
            keys[f"{block}.mlp.layer_scale"] = f"{block}.ls2.gamma"
    if cfg.final_norm:
        norm("ln_final", "norm")
    if cfg.pooling == "map":
        keys["attn_pool.latent"] = "attn_pool.latent"
        for ours, theirs in (("q", "q"), ("kv", "kv"), ("proj", "proj"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            linear(f"attn_pool.{ours}", f"attn_pool.{theirs}", True)
        norm("attn_pool.ln", "attn_pool.norm")
    if cfg.pooled_norm:
        norm("ln_pooled", "fc_norm")
    if cfg.n_classes:
        linear("head", "head", True)
        if cfg.distilled:
            linear("head_dist", "head_dist", True)
    return keys


def _state_dict(module: nn.Module, cfg: HookedViTConfig) -> dict[str, Tensor]:
    theirs = module.state_dict()
    keys = key_map(cfg)
    unread = sorted(set(theirs) - set(keys.values()))
    if unread:  # a tensor HookedViT has no place for: the conversion would silently drop it
        raise unsupported(f"the model has tensors HookedViT does not model: {', '.join(unread[:6])}")
    state: dict[str, Tensor] = {}
    for ours, key in keys.items():
        tensor = theirs.get(key)
        if tensor is None and key.endswith(".bias"):  # a timm layer without a bias: ours holds zeros
            weight = theirs[key[: -len("bias")] + "weight"]
            tensor = weight.new_zeros(weight.shape[0])
        state[ours] = tensor.detach()
    state["pos_embed.W_pos"] = state["pos_embed.W_pos"].reshape(-1, cfg.d_model)
    return state


def convert_timm(
    module: nn.Module, family: str | None = None, source: str = ""
) -> tuple[HookedViTConfig, dict[str, Tensor]]:
    """The `HookedViTConfig` and `HookedViT` state dict of a timm ViT.

    Pure: the module is read, never changed. The tensors keep the module's dtype and device and may
    share its memory; ``HookedViT.load_state_dict`` copies them.

    Args:
        module: A timm ``VisionTransformer`` of one of the `FAMILIES`.
        family: Check this family's rules instead of detecting the family (`detect_family`).
        source: Recorded as ``cfg.source``; default: the timm architecture name.

    Returns:
        ``(cfg, state_dict)``; ``HookedViT(cfg).load_state_dict(state_dict, strict=True)`` works.

    Raises:
        UnsupportedModelError: The module is not a supported timm ViT (the message says why).
        ValueError: Unknown ``family``.

    Example:
        >>> cfg, state_dict = convert_timm(create_timm("deit3_small_patch16_224", depth=1))
        >>> cfg.family, cfg.layer_scale, state_dict["blocks.0.attn.layer_scale"].shape
        ('deit3', True, torch.Size([384]))
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(FAMILIES)}")
    detected = detect_family(module)  # also refuses anything but a timm VisionTransformer
    family = family or detected
    if not source:
        source = str((getattr(module, "pretrained_cfg", None) or {}).get("architecture", type(module).__name__))
    cfg = timm_config(module, family, source)
    check_family(family, cfg, module)
    return cfg, _state_dict(module, cfg)


def create_timm(name: str, **timm_kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **timm_kwargs)`` in eval mode, with clear errors.

    With ``checkpoint_path=``, the checkpoint is loaded here rather than by timm
    (`caap_lens.converters.checkpoint.load_checkpoint`): ``num_classes`` defaults to the checkpoint's
    head size, wrappers and prefixes (``state_dict``, ``module.``, ``model.``) are understood, and a
    checkpoint that does not fit is named in one line.

    Raises:
        FileNotFoundError: ``checkpoint_path`` is given but is not a file.
        UnsupportedModelError: timm has no model called ``name``.
        CheckpointMismatchError: The checkpoint's tensors do not fit the model (a ValueError).

    Example:
        >>> type(create_timm("vit_tiny_patch16_224", depth=1)).__name__
        'VisionTransformer'
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    checkpoint = timm_kwargs.pop("checkpoint_path", None)
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            what = "is a folder, not a checkpoint file" if os.path.isdir(checkpoint) else "does not exist"
            raise FileNotFoundError(
                f"checkpoint_path={str(checkpoint)!r} {what}: give the path of a timm checkpoint "
                "(.safetensors, .pth, ...)"
            )
        if timm_kwargs.get("num_classes") is None:
            n_classes = checkpoint_num_classes(checkpoint)
            if n_classes is None:
                from caap_lens.converters.hf_models import hf_checkpoint_hint  # loads the HF converters

                hint = hf_checkpoint_hint(read_checkpoint(checkpoint)) or "is it a timm VisionTransformer's state dict?"
                raise ValueError(f"checkpoint {checkpoint} holds no ViT (no patch_embed.proj.weight under any "
                                 f"prefix): {hint}")
            timm_kwargs["num_classes"] = n_classes
    try:
        module = import_timm().create_model(name, **timm_kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise unsupported(f"timm has no model named {name!r}") from err
        raise
    if checkpoint is not None:
        load_checkpoint(module, checkpoint, arch=name)
    return module.eval()


def timm_origin(module: nn.Module, pretrained: bool = False, checkpoint_path: Any = None) -> tuple[str, str]:
    """``(weights_kind, weights)`` of a model `create_timm` made (see `HookedViTConfig`).

    A checkpoint wins over pretrained weights (it is loaded last); with neither, the weights are
    timm's random init (``pretrained=False`` is timm's default).

    Example:
        >>> timm_origin(create_timm("vit_tiny_patch16_224", depth=1))
        ('random', 'random init (timm default; no pretrained weights loaded)')
        >>> timm_origin(create_timm("vit_tiny_patch16_224", depth=1), pretrained=True)[1]
        'pretrained: timm vit_tiny_patch16_224.augreg_in21k_ft_in1k'
    """
    if checkpoint_path is not None:
        return "checkpoint", f"checkpoint: {os.path.abspath(checkpoint_path)}"
    if not pretrained:
        return "random", "random init (timm default; no pretrained weights loaded)"
    pcfg = getattr(module, "pretrained_cfg", None) or {}
    name = str(pcfg.get("architecture") or type(module).__name__)
    name += f".{pcfg['tag']}" if pcfg.get("tag") else ""
    local = pcfg.get("file")
    return "pretrained", f"pretrained: timm {name}" + (f" (from {local})" if local else "")


def imagenet_class_names(module: nn.Module, n_classes: int) -> tuple[str, ...] | None:
    """Short ImageNet class names for a timm model with an ImageNet head, else None.

    Example:
        >>> names = imagenet_class_names(create_timm("vit_tiny_patch16_224", depth=1), 1000)
        >>> len(names), names[0]
        (1000, 'tench')
    """
    if n_classes not in (1000, 11821, 21841, 21843):
        return None
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(module)
        if subset is None:
            return None
        names = ImageNetInfo(subset).label_descriptions()
        return tuple(n.split(",")[0] for n in names) if len(names) == n_classes else None
    except Exception:  # class names are a convenience; the model converts without them
        return None

"""Converting timm Vision Transformers to `HookedViT`, one converter per family.

Supported families (all built on timm's ``VisionTransformer``):

============  =======================================================================================
``vit``       original and augreg ViTs (``vit_*_patch*_224``), CLS or mean pooling, optional pre-norm
``deit``      DeiT, including distilled models (a second prefix token and head, logits averaged)
``deit3``     DeiT III: layer scale, no position embedding on the CLS token
``dinov2``    DINOv2 with and without registers (patch 14, layer scale); create with ``img_size=224``
``clip``      CLIP image towers as timm builds them (``vit_*_clip_*``): pre-norm, quick-GELU variants,
              with a head (classifier or projection) or headless
============  =======================================================================================

Each family converter checks the structure it relies on *before* anything is built, so an unsupported
module fails with an error naming the supported families and nothing is half-loaded. Weights are
copied, not shared: the converted model is independent of the timm model.

Example:
    >>> model = from_timm("vit_tiny_patch16_224", depth=2)  # random init, no download
    >>> model.cfg.family, model.cfg.n_layers
    ('vit', 2)
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
from torch import nn

from caap_lens._timm import import_timm
from caap_lens.config import HookedViTConfig
from caap_lens.model.hooked_vit import HookedViT

FAMILY_EXAMPLES = {
    "vit": "vit_small_patch16_224, vit_base_patch16_224.augreg_in21k_ft_in1k",
    "deit": "deit_small_patch16_224, deit_tiny_distilled_patch16_224",
    "deit3": "deit3_small_patch16_224",
    "dinov2": "vit_small_patch14_dinov2, vit_small_patch14_reg4_dinov2 (with img_size=224)",
    "clip": "vit_base_patch16_clip_224.openai, vit_base_patch16_clip_quickgelu_224",
}


class UnsupportedModelError(TypeError):
    """The timm model is not one of the supported ViT families."""


def _supported() -> str:
    return "; ".join(f"{family} (e.g. {names})" for family, names in FAMILY_EXAMPLES.items())


def _unsupported(what: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{what}. caap_lens converts timm VisionTransformer models of these families: {_supported()}"
    )


def _is(module: nn.Module, *class_names: str) -> bool:
    return type(module).__name__ in class_names


def _layer_norm(module: nn.Module, where: str) -> nn.Module | None:
    """The LayerNorm at ``where``, or None for Identity; anything else is unsupported."""
    if _is(module, "Identity"):
        return None
    if isinstance(module, nn.LayerNorm) and module.elementwise_affine and module.weight is not None:
        return module
    raise _unsupported(
        f"{where} is {type(module).__name__} (timm option norm_layer), expected LayerNorm or Identity"
    )


def _activation(act: nn.Module) -> str:
    if _is(act, "QuickGELU"):
        return "quick_gelu"
    if _is(act, "GELU"):
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    if _is(act, "GELUTanh"):
        return "gelu_tanh"
    if _is(act, "ReLU"):
        return "relu"
    raise _unsupported(
        f"MLP activation {type(act).__name__} (timm option act_layer) is not supported; "
        "act_layer='gelu', 'gelu_tanh', 'quick_gelu' or 'relu' are"
    )


def _check_blocks(model: nn.Module, eps: float) -> None:
    block0 = model.blocks[0]
    for i, block in enumerate(model.blocks):
        where = f"blocks[{i}]"
        if not _is(block, "Block"):
            raise _unsupported(
                f"{where} is {type(block).__name__} (timm option block_fn), expected timm's pre-norm Block"
            )
        attn, mlp = block.attn, block.mlp
        if not _is(attn, "Attention") or not hasattr(attn, "qkv"):
            raise _unsupported(
                f"{where}.attn is {type(attn).__name__} (timm option attn_layer), expected Attention with fused qkv"
            )
        if not _is(getattr(attn, "q_norm", nn.Identity()), "Identity") or not _is(
            getattr(attn, "k_norm", nn.Identity()), "Identity"
        ):
            raise _unsupported(f"{where}.attn has q_norm/k_norm: it normalises queries and keys (timm option qk_norm=True)")
        if not _is(getattr(attn, "norm", nn.Identity()), "Identity"):
            raise _unsupported(f"{where}.attn normalises its output (timm option scale_attn_norm=True)")
        if getattr(attn, "gate", None) is not None:
            raise _unsupported(f"{where}.attn has an output gate (timm Attention option gated=True)")
        if not _is(mlp, "Mlp") or getattr(mlp, "fc1", None) is None or not isinstance(mlp.fc1, nn.Linear):
            raise _unsupported(
                f"{where}.mlp is {type(mlp).__name__} (timm option mlp_layer), expected a plain two-layer Mlp"
            )
        if not _is(getattr(mlp, "norm", nn.Identity()), "Identity"):
            raise _unsupported(f"{where}.mlp normalises its hidden layer (timm option scale_mlp_norm=True)")
        for name in ("norm1", "norm2"):
            norm = _layer_norm(getattr(block, name), f"{where}.{name}")
            if norm is None or norm.eps != eps:
                raise _unsupported(f"{where}.{name} must be a LayerNorm with eps={eps} (timm option norm_layer)")
        for name in ("ls1", "ls2"):
            if not _is(getattr(block, name), "Identity", "LayerScale"):
                raise _unsupported(f"{where}.{name} is {type(getattr(block, name)).__name__} (timm option init_values)")
        # every block must have the shape the config records from block 0
        same = (
            attn.num_heads == block0.attn.num_heads
            and attn.head_dim == block0.attn.head_dim
            and mlp.fc1.out_features == block0.mlp.fc1.out_features
            and (attn.qkv.bias is None) == (block0.attn.qkv.bias is None)
            and (attn.proj.bias is None) == (block0.attn.proj.bias is None)
            and (mlp.fc1.bias is None) == (attn.proj.bias is None)
            and (mlp.fc2.bias is None) == (attn.proj.bias is None)
            and _is(block.ls1, type(block0.ls1).__name__)
            and _is(block.ls2, type(block0.ls1).__name__)
            and _activation(mlp.act) == _activation(block0.mlp.act)
        )
        if not same:
            raise _unsupported(
                f"{where} differs from blocks[0] in heads, MLP width, biases (timm options qkv_bias, proj_bias), "
                "layer scale or activation; HookedViT needs identical blocks"
            )


_POOLS = ("token", "avg", "max", "avgmax")


def _base_config(model: nn.Module, family: str, source: str) -> HookedViTConfig:
    """The config shared by every family, after checking the structure it relies on.

    Every constructor option of timm's ``VisionTransformer`` is either read into the config (and
    modelled by `HookedViT`, with parity tests), has no effect in eval mode (dropout rates, patch
    dropout, weight init), or is rejected here with an `UnsupportedModelError` naming the option.
    """
    pool = model.global_pool
    if getattr(model, "attn_pool", None) is not None or pool not in _POOLS:
        what = "attention pooling" if pool in ("map", "prr") else "no pooling (per-token outputs)" if not pool else "it"
        raise _unsupported(
            f"global_pool={pool!r} is not supported ({what}); create the model with "
            f"global_pool={' or '.join(repr(p) for p in _POOLS)}"
        )
    if len(model.blocks) == 0:
        raise _unsupported("the model has no transformer blocks (timm option depth=0); depth must be >= 1")
    if getattr(model, "pos_embed", None) is None:
        raise _unsupported(
            "models without a learned absolute position embedding (timm option pos_embed='none', or RoPE) "
            "are not supported"
        )
    pe = model.patch_embed
    proj = getattr(pe, "proj", None)
    if not _is(pe, "PatchEmbed") or not isinstance(proj, nn.Conv2d):
        raise _unsupported(f"patch embedding {type(pe).__name__} (timm option embed_layer) is not timm's PatchEmbed")
    if tuple(proj.kernel_size) != tuple(proj.stride) or tuple(proj.padding) != (0, 0):
        raise _unsupported("the patch embedding's convolution overlaps or pads (timm option embed_layer)")
    if not _is(pe.norm, "Identity"):
        raise _unsupported("the patch embedding has a norm (timm option embed_norm_layer)")
    if getattr(pe, "dynamic_img_pad", False):
        raise _unsupported("dynamic padding of the input (timm option dynamic_img_pad=True) is not supported")
    if hasattr(model, "dist_token"):  # timm's VisionTransformerDistilled reads CLS and distillation tokens only
        if getattr(model, "reg_token", None) is not None:
            raise _unsupported(
                "register tokens with a distillation token (timm option reg_tokens on a distilled model: "
                "timm's distilled forward drops them) are not supported"
            )
        if model.no_embed_class:
            raise _unsupported(
                "no_embed_class=True on a distilled model (timm's VisionTransformerDistilled cannot run it: "
                "its position embedding covers the prefix tokens) is not supported"
            )
    if tuple(model.pos_embed.shape[1:]) != (
        pe.num_patches + (0 if model.no_embed_class else model.num_prefix_tokens),
        model.embed_dim,
    ):
        raise _unsupported(f"position embedding of shape {tuple(model.pos_embed.shape)} does not fit the patch grid")
    block0 = model.blocks[0]
    if not _is(block0, "Block"):
        raise _unsupported(
            f"blocks[0] is {type(block0).__name__} (timm option block_fn), expected timm's pre-norm Block"
        )
    norm1 = _layer_norm(block0.norm1, "blocks[0].norm1")
    if norm1 is None:
        raise _unsupported("blocks[0].norm1 is Identity (timm option norm_layer), expected LayerNorm")
    eps = norm1.eps
    _check_blocks(model, eps)
    norms = {name: _layer_norm(getattr(model, name), name) for name in ("norm_pre", "norm", "fc_norm")}
    if any(n is not None and n.eps != eps for n in norms.values()):
        raise _unsupported("all LayerNorms must share one eps (timm option norm_layer)")
    head = model.head
    if not (_is(head, "Identity") or isinstance(head, nn.Linear)):
        raise _unsupported(f"head is {type(head).__name__}, expected Linear or Identity")
    distilled = hasattr(model, "dist_token")
    pcfg = getattr(model, "pretrained_cfg", {}) or {}
    img_size = tuple(pe.img_size)
    n_classes = head.out_features if isinstance(head, nn.Linear) else 0
    n_channels = proj.in_channels
    mean = tuple(pcfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(pcfg.get("std", (0.229, 0.224, 0.225)))
    if len(mean) != n_channels:  # in_chans differs from the pretrained config's: average its channels
        mean = (sum(mean) / len(mean),) * n_channels
    if len(std) != n_channels:
        std = (sum(std) / len(std),) * n_channels
    pooling = "token_dist" if distilled else pool
    return HookedViTConfig(
        n_layers=len(model.blocks),
        d_model=model.embed_dim,
        n_heads=block0.attn.num_heads,
        d_head=block0.attn.head_dim,
        d_mlp=block0.mlp.fc1.out_features,
        image_size=img_size,
        patch_size=tuple(proj.kernel_size),
        n_classes=n_classes,
        n_channels=n_channels,
        class_token=model.cls_token is not None,
        n_register_tokens=int(getattr(model, "num_reg_tokens", 0) or 0),
        distilled=distilled,
        pos_embed_on_prefix=not model.no_embed_class,
        pooling=pooling,
        pool_include_prefix=bool(getattr(model, "pool_include_prefix", False)) and pooling not in ("token", "token_dist"),
        pre_norm=norms["norm_pre"] is not None,
        final_norm=norms["norm"] is not None,
        pooled_norm=norms["fc_norm"] is not None,
        layer_scale=_is(block0.ls1, "LayerScale"),
        qkv_bias=block0.attn.qkv.bias is not None,
        proj_bias=block0.attn.proj.bias is not None,
        act_fn=_activation(block0.mlp.act),
        eps=eps,
        image_mean=mean,
        image_std=std,
        family=family,
        source=source,
    )


def _copy(dst: torch.Tensor | None, src: torch.Tensor | None) -> None:
    if dst is None:
        return
    with torch.no_grad():
        if src is None:
            dst.zero_()  # timm layer without a bias: ours holds zeros
        else:
            dst.copy_(src.reshape(dst.shape))


def _copy_linear(dst: nn.Linear, src: nn.Linear) -> None:
    _copy(dst.weight, src.weight)
    _copy(dst.bias, src.bias)


def _copy_norm(dst: Any, src: nn.Module | None) -> None:
    if dst is not None and src is not None:
        _copy(dst.w, src.weight)
        _copy(dst.b, src.bias)


def _copy_weights(hooked: HookedViT, model: nn.Module) -> None:
    _copy(hooked.embed.proj.weight, model.patch_embed.proj.weight)
    _copy(hooked.embed.proj.bias, model.patch_embed.proj.bias)
    _copy(hooked.embed.cls_token, model.cls_token)
    _copy(hooked.embed.dist_token, getattr(model, "dist_token", None))
    _copy(hooked.embed.reg_token, getattr(model, "reg_token", None))
    _copy(hooked.pos_embed.W_pos, model.pos_embed)
    _copy_norm(hooked.ln_pre, model.norm_pre if hooked.ln_pre is not None else None)
    for ours, theirs in zip(hooked.blocks, model.blocks):
        _copy_norm(ours.ln1, theirs.norm1)
        _copy_norm(ours.ln2, theirs.norm2)
        _copy_linear(ours.attn.qkv, theirs.attn.qkv)
        _copy_linear(ours.attn.proj, theirs.attn.proj)
        _copy_linear(ours.mlp.fc1, theirs.mlp.fc1)
        _copy_linear(ours.mlp.fc2, theirs.mlp.fc2)
        if ours.attn.layer_scale is not None:
            _copy(ours.attn.layer_scale, theirs.ls1.gamma)
            _copy(ours.mlp.layer_scale, theirs.ls2.gamma)
    _copy_norm(hooked.ln_final, model.norm if hooked.ln_final is not None else None)
    _copy_norm(hooked.ln_pooled, model.fc_norm if hooked.ln_pooled is not None else None)
    if hooked.head is not None:
        _copy_linear(hooked.head, model.head)
    if hooked.head_dist is not None:
        _copy_linear(hooked.head_dist, model.head_dist)


def _class_names(model: nn.Module, n_classes: int) -> tuple[str, ...] | None:
    if n_classes not in (1000, 11821, 21841, 21843):
        return None
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset is None:
            return None
        names = ImageNetInfo(subset).label_descriptions()
        return tuple(n.split(",")[0] for n in names) if len(names) == n_classes else None
    except Exception:  # class names are a convenience; the model converts without them
        return None


def _build(model: nn.Module, cfg: HookedViTConfig, class_names: Any) -> HookedViT:
    names = class_names if class_names is not None else _class_names(model, cfg.n_classes)
    hooked = HookedViT(cfg, class_names=names)
    hooked.to(dtype=next(model.parameters()).dtype)
    _copy_weights(hooked, model)
    return hooked.to(next(model.parameters()).device)


# ------------------------------------------------------------------------------ family converters
def _family_mismatch(family: str, what: str) -> UnsupportedModelError:
    return _unsupported(
        f"{what}, so it is not a {family!r} family model: leave family unset to detect the family "
        "from the model's structure, or pass another family="
    )


def convert_vit(model: nn.Module, source: str = "", class_names: Any = None) -> HookedViT:
    """ViT (original, augreg, and timm's ViT variants with registers, layer scale or no CLS token)."""
    cfg = _base_config(model, "vit", source)
    if cfg.distilled:
        raise _family_mismatch("vit", "the model has a distillation token")
    return _build(model, cfg, class_names)


def convert_deit(model: nn.Module, source: str = "", class_names: Any = None) -> HookedViT:
    """DeiT, distilled or not (a distilled model averages its CLS and distillation heads)."""
    cfg = _base_config(model, "deit", source)
    if cfg.distilled and not hasattr(model, "head_dist"):
        raise _unsupported("distilled DeiT without head_dist")
    if cfg.distilled and cfg.pooled_norm:
        raise _unsupported(
            "a distilled DeiT with a pooled norm is not supported (timm option fc_norm, "
            "or global_pool='avg', which turns it on)"
        )
    return _build(model, cfg, class_names)


def convert_deit3(model: nn.Module, source: str = "", class_names: Any = None) -> HookedViT:
    """DeiT III: layer scale, position embedding on patch tokens only."""
    cfg = _base_config(model, "deit3", source)
    if not cfg.layer_scale:
        raise _family_mismatch("deit3", "the model has no layer scale (timm option init_values)")
    return _build(model, cfg, class_names)


def convert_dinov2(model: nn.Module, source: str = "", class_names: Any = None) -> HookedViT:
    """DINOv2 with or without registers; runs at the size the timm model was created for."""
    cfg = _base_config(model, "dinov2", source)
    if not cfg.layer_scale:
        raise _family_mismatch("dinov2", "the model has no layer scale (timm option init_values)")
    return _build(model, cfg, class_names)


def convert_clip(model: nn.Module, source: str = "", class_names: Any = None) -> HookedViT:
    """CLIP image tower: pre-norm; the head (if any) is the classifier or the image projection."""
    cfg = _base_config(model, "clip", source)
    if not cfg.pre_norm:
        raise _family_mismatch("clip", "the model has no pre-norm (timm option pre_norm=True)")
    return _build(model, cfg, class_names)


CONVERTERS: dict[str, Callable[..., HookedViT]] = {
    "vit": convert_vit,
    "deit": convert_deit,
    "deit3": convert_deit3,
    "dinov2": convert_dinov2,
    "clip": convert_clip,
}


def detect_family(model: nn.Module) -> str:
    """The family of a timm model: by architecture name when timm recorded one, else by structure."""
    timm = import_timm()
    vt = timm.models.vision_transformer.VisionTransformer
    if not isinstance(model, vt):
        raise _unsupported(f"{type(model).__name__} is not a timm VisionTransformer")
    arch = str((getattr(model, "pretrained_cfg", None) or {}).get("architecture", "") or "")
    for family, prefix in (("deit3", "deit3_"), ("deit", "deit_"), ("clip", "_clip_"), ("dinov2", "_dinov2")):
        if prefix in arch or arch.startswith(prefix):
            return family
    if hasattr(model, "dist_token"):
        return "deit"
    if not _is(model.norm_pre, "Identity") and not arch.startswith("vit_"):
        return "clip"  # unnamed pre-norm model; a named vit_* without "_clip_" is a pre-norm ViT
    if len(model.blocks) == 0:
        raise _unsupported("the model has no transformer blocks (timm option depth=0); depth must be >= 1")
    if _is(getattr(model.blocks[0], "ls1", nn.Identity()), "LayerScale"):  # other blocks: refused later
        patch = tuple(model.patch_embed.proj.kernel_size)
        return "dinov2" if patch == (14, 14) else "deit3"
    return "vit"


def from_timm(
    model_or_name: nn.Module | str,
    family: str | None = None,
    class_names: Any = None,
    **timm_kwargs: Any,
) -> HookedViT:
    """Converts a timm ViT to `HookedViT`.

    Args:
        model_or_name: A timm model, or a name for ``timm.create_model``.
        family: Force a family converter instead of detecting it (see ``CONVERTERS``).
        class_names: Names of the classifier outputs (ImageNet names are filled in when timm
            recognises an ImageNet head).
        **timm_kwargs: Passed to ``timm.create_model`` when a name is given, e.g.
            ``pretrained=True``, ``checkpoint_path="my_finetune.safetensors"`` (a local timm
            checkpoint: the way to load your own weights), ``num_classes=10``, ``img_size=224``.

    Returns:
        The hooked model in eval mode, on the timm model's device and dtype.

    Example:
        >>> model = from_timm("deit3_small_patch16_224", depth=2)
        >>> model.cfg.layer_scale
        True
    """
    timm = import_timm()
    if isinstance(model_or_name, str):
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        name = model_or_name
        checkpoint = timm_kwargs.get("checkpoint_path")
        if checkpoint is not None and not os.path.isfile(checkpoint):
            what = "is a folder, not a checkpoint file" if os.path.isdir(checkpoint) else "does not exist"
            raise FileNotFoundError(
                f"checkpoint_path={str(checkpoint)!r} {what}: give the path of a timm checkpoint "
                "(.safetensors, .pth, ...)"
            )
        try:
            model = timm.create_model(name, **timm_kwargs)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise _unsupported(f"timm has no model named {name!r}") from err
            raise
    else:
        if timm_kwargs:
            raise TypeError(
                f"timm keyword arguments {sorted(timm_kwargs)} only apply when a model name is given"
            )
        model = model_or_name
        name = str((getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__))
    family = family or detect_family(model)
    if family not in CONVERTERS:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(CONVERTERS)}")
    model.eval()
    return CONVERTERS[family](model, source=name, class_names=class_names)

"""Reading a timm ``VisionTransformer``'s structure into a `HookedViTConfig`, refusing what it cannot hold.

`timm_config` is the one place that decides whether a timm module is convertible. Every constructor
option of timm's ``VisionTransformer`` is either read into the config (and modelled by `HookedViT`,
with parity tests), has no effect in eval mode (dropout rates, patch dropout, weight init), or is
rejected with an `UnsupportedModelError` naming the option, before any weight is read. Refused, with
the reason in the message: ``dynamic_img_pad=True`` (the input padded to whole patches),
``block_fn=ResPostBlock`` (post-norm: its norms sit where TransformerLens's ``ln1``/``ln2`` hooks do
not), ``global_pool='prr'`` and no pooling (``''``). ``global_pool='map'`` (SigLIP's attention pool)
is modelled by `caap_lens.model.attention_pool`, ``dynamic_img_size=True`` by
`caap_lens.model.sizing`.

Example:
    >>> from caap_lens.converters.timm_vit import create_timm
    >>> cfg = timm_config(create_timm("vit_tiny_patch16_224", depth=2), "vit")
    >>> cfg.n_layers, cfg.d_model, cfg.grid_size
    (2, 192, (14, 14))
"""

from __future__ import annotations

import re

from torch import nn

from caap_lens.config import HookedViTConfig
from caap_lens.converters.families import UnsupportedModelError, is_type, unsupported

__all__ = ["timm_config"]


def _layer_norm(module: nn.Module, where: str) -> nn.Module | None:
    """The LayerNorm at ``where``, or None for Identity; anything else is unsupported."""
    if is_type(module, "Identity"):
        return None
    if isinstance(module, nn.LayerNorm) and module.elementwise_affine and module.weight is not None:
        return module
    raise unsupported(
        f"{where} is {type(module).__name__} (timm option norm_layer), expected LayerNorm or Identity"
    )


def _activation(act: nn.Module) -> str:
    if is_type(act, "QuickGELU"):
        return "quick_gelu"
    if is_type(act, "GELU"):
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    if is_type(act, "GELUTanh"):
        return "gelu_tanh"
    if is_type(act, "ReLU"):
        return "relu"
    raise unsupported(
        f"MLP activation {type(act).__name__} (timm option act_layer) is not supported; "
        "act_layer='gelu', 'gelu_tanh', 'quick_gelu' or 'relu' are"
    )


def _block_fn_error(where: str, block: nn.Module):
    """The refusal of a block that is not timm's pre-norm ``Block``, naming ``block_fn=<its class>``."""
    name = type(block).__name__
    why = {
        "ResPostBlock": "it is post-norm (x + norm1(attn(x)), then x + norm2(mlp(x))): its norms act on the "
        "attention and MLP outputs, not on their inputs where HookedViT's ln1/ln2 hooks (and TransformerLens's "
        "folded-norm decompositions) sit, so the hook names would mean something else",
        "ParallelBlock": "it runs attention and MLP in parallel: there is no resid_mid between them",
        "ParallelScalingBlock": "it runs attention and MLP in parallel from one fused projection: there is no "
        "resid_mid between them",
    }.get(name, "HookedViT models timm's pre-norm Block only")
    return unsupported(f"{where} is {name} (timm option block_fn={name}), which is not supported: {why}")


def _check_blocks(model: nn.Module, eps: float) -> None:
    block0 = model.blocks[0]
    for i, block in enumerate(model.blocks):
        where = f"blocks[{i}]"
        if not is_type(block, "Block"):
            raise _block_fn_error(where, block)
        attn, mlp = block.attn, block.mlp
        if not is_type(attn, "Attention") or not hasattr(attn, "qkv"):
            raise unsupported(
                f"{where}.attn is {type(attn).__name__} (timm option attn_layer), expected Attention with fused qkv"
            )
        if not is_type(getattr(attn, "q_norm", nn.Identity()), "Identity") or not is_type(
            getattr(attn, "k_norm", nn.Identity()), "Identity"
        ):
            raise unsupported(f"{where}.attn has q_norm/k_norm: it normalises queries and keys (timm option qk_norm=True)")
        if not is_type(getattr(attn, "norm", nn.Identity()), "Identity"):
            raise unsupported(f"{where}.attn normalises its output (timm option scale_attn_norm=True)")
        if getattr(attn, "gate", None) is not None:
            raise unsupported(f"{where}.attn has an output gate (timm Attention option gated=True)")
        if not is_type(mlp, "Mlp") or getattr(mlp, "fc1", None) is None or not isinstance(mlp.fc1, nn.Linear):
            raise unsupported(
                f"{where}.mlp is {type(mlp).__name__} (timm option mlp_layer), expected a plain two-layer Mlp"
            )
        if not is_type(getattr(mlp, "norm", nn.Identity()), "Identity"):
            raise unsupported(f"{where}.mlp normalises its hidden layer (timm option scale_mlp_norm=True)")
        for name in ("norm1", "norm2"):
            norm = _layer_norm(getattr(block, name), f"{where}.{name}")
            if norm is None or norm.eps != eps:
                raise unsupported(f"{where}.{name} must be a LayerNorm with eps={eps} (timm option norm_layer)")
        for name in ("ls1", "ls2"):
            if not is_type(getattr(block, name), "Identity", "LayerScale"):
                raise unsupported(f"{where}.{name} is {type(getattr(block, name)).__name__} (timm option init_values)")
        # every block must have the shape the config records from block 0
        same = (
            attn.num_heads == block0.attn.num_heads
            and attn.head_dim == block0.attn.head_dim
            and mlp.fc1.out_features == block0.mlp.fc1.out_features
            and (attn.qkv.bias is None) == (block0.attn.qkv.bias is None)
            and (attn.proj.bias is None) == (block0.attn.proj.bias is None)
            and (mlp.fc1.bias is None) == (attn.proj.bias is None)
            and (mlp.fc2.bias is None) == (attn.proj.bias is None)
            and is_type(block.ls1, type(block0.ls1).__name__)
            and is_type(block.ls2, type(block0.ls1).__name__)
            and _activation(mlp.act) == _activation(block0.mlp.act)
        )
        if not same:
            raise unsupported(
                f"{where} differs from blocks[0] in heads, MLP width, biases (timm options qkv_bias, proj_bias), "
                "layer scale or activation; HookedViT needs identical blocks"
            )


_POOLS = ("token", "avg", "max", "avgmax")


def _check_attn_pool(model: nn.Module) -> None:
    """Refuses a ``global_pool='map'`` pool unless it is the form `HookedViT`'s ``AttentionPool`` holds."""
    pool, block0 = getattr(model, "attn_pool", None), model.blocks[0] if len(model.blocks) else None

    def refuse(what: str) -> UnsupportedModelError:
        return unsupported(f"global_pool='map' with {what} is not supported: HookedViT's attention pool is "
                           "timm's AttentionPoolLatent as VisionTransformer builds it (one latent query, "
                           "q/kv/proj with biases, LayerNorm + MLP of the blocks' width and activation)")

    if not is_type(pool, "AttentionPoolLatent"):
        raise refuse(f"attn_pool {type(pool).__name__}")
    if block0 is None or not (is_type(block0, "Block") and is_type(block0.mlp, "Mlp")):
        return  # depth=0, block_fn and mlp_layer are refused next, with their own messages
    if pool.latent.shape[1] != 1 or pool.pool != "token" or pool.pos_embed is not None:
        raise refuse("several latents, pool_type or a position embedding in the pool")
    if pool.num_heads != block0.attn.num_heads or pool.head_dim * pool.num_heads != model.embed_dim:
        raise refuse("another head count than the blocks'")
    linears = (pool.q, pool.kv, pool.proj, getattr(pool.mlp, "fc1", None), getattr(pool.mlp, "fc2", None))
    if not all(isinstance(m, nn.Linear) and m.bias is not None for m in linears):
        raise refuse("a pool without query projection, MLP or biases")
    if not (is_type(pool.q_norm, "Identity") and is_type(pool.k_norm, "Identity")):
        raise refuse("q_norm/k_norm in the pool")
    if pool.mlp.fc1.out_features != block0.mlp.fc1.out_features or not is_type(pool.mlp.norm, "Identity"):
        raise refuse("an MLP width other than the blocks'")
    if _activation(pool.mlp.act) != _activation(block0.mlp.act):
        raise refuse("an MLP activation other than the blocks'")
    norm = _layer_norm(pool.norm, "attn_pool.norm")
    if norm is None or norm.eps != _layer_norm(block0.norm1, "blocks[0].norm1").eps:
        raise refuse("a pool norm other than the blocks' LayerNorm")


def timm_config(model: nn.Module, family: str = "vit", source: str = "") -> HookedViTConfig:
    """The `HookedViTConfig` of a timm ``VisionTransformer``, after checking the structure it relies on.

    Only the structure is checked here; the family's own rules are `check_family`'s.

    Args:
        model: A timm ``VisionTransformer`` (or ``VisionTransformerDistilled``).
        family: Recorded as ``cfg.family``.
        source: Recorded as ``cfg.source`` (the timm name or file it came from).

    Raises:
        UnsupportedModelError: The module has a structure `HookedViT` does not model; the message
            names the timm option and lists the supported families.
    """
    pool = model.global_pool
    if pool == "map":
        _check_attn_pool(model)
    elif getattr(model, "attn_pool", None) is not None or pool not in _POOLS:
        what = {
            "prr": "attention pooling with one learned query per output token (AttentionPoolPrr): HookedViT "
            "models global_pool='map' only",
            "": "no pooling: the output is per token, not one vector per image",
        }.get(pool, "an unknown pooling")
        raise unsupported(
            f"global_pool={pool!r} is not supported ({what}); create the model with "
            f"global_pool={' or '.join(repr(p) for p in _POOLS + ('map',))}"
        )
    if len(model.blocks) == 0:
        raise unsupported("the model has no transformer blocks (timm option depth=0); depth must be >= 1")
    if getattr(model, "pos_embed", None) is None:
        raise unsupported(
            "models without a learned absolute position embedding (timm option pos_embed='none', or RoPE) "
            "are not supported"
        )
    pe = model.patch_embed
    proj = getattr(pe, "proj", None)
    if not is_type(pe, "PatchEmbed") or not isinstance(proj, nn.Conv2d):
        raise unsupported(f"patch embedding {type(pe).__name__} (timm option embed_layer) is not timm's PatchEmbed")
    if tuple(proj.kernel_size) != tuple(proj.stride) or tuple(proj.padding) != (0, 0):
        raise unsupported("the patch embedding's convolution overlaps or pads (timm option embed_layer)")
    if not is_type(pe.norm, "Identity"):
        raise unsupported("the patch embedding has a norm (timm option embed_norm_layer)")
    if getattr(pe, "dynamic_img_pad", False):
        raise unsupported("dynamic padding of the input (timm option dynamic_img_pad=True) is not supported")
    if hasattr(model, "dist_token"):  # timm's VisionTransformerDistilled reads CLS and distillation tokens only
        if getattr(model, "reg_token", None) is not None:
            raise unsupported(
                "register tokens with a distillation token (timm option reg_tokens on a distilled model: "
                "timm's distilled forward drops them) are not supported"
            )
        if model.no_embed_class:
            raise unsupported(
                "no_embed_class=True on a distilled model (timm's VisionTransformerDistilled cannot run it: "
                "its position embedding covers the prefix tokens) is not supported"
            )
    if tuple(model.pos_embed.shape[1:]) != (
        pe.num_patches + (0 if model.no_embed_class else model.num_prefix_tokens),
        model.embed_dim,
    ):
        raise unsupported(f"position embedding of shape {tuple(model.pos_embed.shape)} does not fit the patch grid")
    block0 = model.blocks[0]
    if not is_type(block0, "Block"):
        raise _block_fn_error("blocks[0]", block0)
    norm1 = _layer_norm(block0.norm1, "blocks[0].norm1")
    if norm1 is None:
        raise unsupported("blocks[0].norm1 is Identity (timm option norm_layer), expected LayerNorm")
    eps = norm1.eps
    _check_blocks(model, eps)
    norms = {name: _layer_norm(getattr(model, name), name) for name in ("norm_pre", "norm", "fc_norm")}
    if any(n is not None and n.eps != eps for n in norms.values()):
        raise unsupported("all LayerNorms must share one eps (timm option norm_layer)")
    head = model.head
    if not (is_type(head, "Identity") or isinstance(head, nn.Linear)):
        raise unsupported(f"head is {type(head).__name__}, expected Linear or Identity")
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
    output_kind = "embedding" if _is_clip_projection(model, family, pcfg, n_classes) else "classes"
    data_config = _data_config(model, pcfg, (n_channels, *img_size), mean, std)
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
        pool_include_prefix=bool(getattr(model, "pool_include_prefix", False)) and pooling in (*_POOLS[1:], "map"),
        pre_norm=norms["norm_pre"] is not None,
        final_norm=norms["norm"] is not None,
        pooled_norm=norms["fc_norm"] is not None,
        layer_scale=is_type(block0.ls1, "LayerScale"),
        qkv_bias=block0.attn.qkv.bias is not None,
        proj_bias=block0.attn.proj.bias is not None,
        act_fn=_activation(block0.mlp.act),
        eps=eps,
        image_mean=mean,
        image_std=std,
        family=family,
        source=source,
        data_config=data_config,
        output_kind=output_kind,
        weights_kind="converted",
        dynamic_img_size=bool(getattr(model, "dynamic_img_size", False)),
    )


_FINE_TUNED = re.compile(r"(^|_)(ft|in1k|in12k|in21k|in22k)(_|$)")


def _is_clip_projection(model: nn.Module, family: str, pcfg: dict, n_classes: int) -> bool:
    """Whether the ``head`` of a timm CLIP tower is its image-text projection, not a classifier.

    timm stores both as one ``nn.Linear``; what tells them apart is the pretrained config. An image-text
    tag (``openai``, ``laion2b``, ``dfn2b``, ``metaclip_*``, ...) records the projection's width as its
    ``num_classes``; a fine-tuned tag (``*_ft_in1k``, ``*_in12k``, ...) records its classes. So the head
    is a projection when the family is ``clip``, the tag is not a fine-tuned one, and the head has the
    tag's ``num_classes`` outputs (a model created with another ``num_classes=`` has a new classifier).
    A checkpoint fine-tuned to exactly the projection's number of classes on an image-text tag is
    taken for a projection; pass ``num_classes`` of another size, or set ``cfg.output_kind``, then.

    Example:
        >>> from caap_lens.converters.timm_vit import create_timm
        >>> tower = create_timm("vit_base_patch16_clip_224.openai", depth=1)
        >>> _is_clip_projection(tower, "clip", tower.pretrained_cfg, tower.head.out_features)
        True
        >>> tuned = create_timm("vit_base_patch16_clip_224.openai_ft_in1k", depth=1)
        >>> _is_clip_projection(tuned, "clip", tuned.pretrained_cfg, tuned.head.out_features)
        False
    """
    if family != "clip" or not n_classes:
        return False
    tag = str(pcfg.get("tag", "") or "")
    if not tag or _FINE_TUNED.search(tag):
        return False
    return n_classes == pcfg.get("num_classes")


def _data_config(
    model: nn.Module, pcfg: dict, input_size: tuple[int, ...], mean: tuple[float, ...], std: tuple[float, ...]
) -> dict | None:
    """timm's eval data config of the module, for the size and channels it was built with; None without one.

    A module has one when its ``pretrained_cfg`` says how it is evaluated (``crop_pct`` or
    ``interpolation``: every registered timm model; not a ``VisionTransformer`` built directly). The
    values are timm's ``resolve_data_config(model=...)``, except ``input_size`` (the module's own, e.g.
    224 for a DINOv2 created with ``img_size=224`` whose pretrained config says 518) and ``mean``/``std``
    (the config's, averaged over channels when ``in_chans`` differs from the pretrained config's).
    """
    if "crop_pct" not in pcfg and "interpolation" not in pcfg:
        return None
    from caap_lens._timm import import_timm

    import_timm()
    from timm.data import resolve_data_config

    resolved = resolve_data_config(model=model)
    return {"input_size": input_size, "interpolation": resolved["interpolation"],
            "crop_pct": float(resolved["crop_pct"]), "crop_mode": resolved.get("crop_mode", "center"),
            "mean": mean, "std": std}

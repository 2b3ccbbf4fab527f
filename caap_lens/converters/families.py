"""The timm ViT families caap_lens converts: one table row per family, and how a family is detected.

Every family is a timm ``VisionTransformer``; they differ only in which structure they are expected to
have. A row of `FAMILIES` names that structure as `Rule` s checked on the config read from the module
(`caap_lens.converters.timm_config`), so one generic converter serves all five families:

============  =======================================================================================
``vit``       original and augreg ViTs (``vit_*_patch*_224``), CLS or mean pooling, optional pre-norm
``deit``      DeiT, including distilled models (a second prefix token and head, logits averaged)
``deit3``     DeiT III: layer scale, no position embedding on the CLS token
``dinov2``    DINOv2 with and without registers (patch 14, layer scale); create with ``img_size=224``
``clip``      CLIP image towers as timm builds them (``vit_*_clip_*``): pre-norm, quick-GELU variants,
              with a head (classifier or projection) or headless
============  =======================================================================================

Example:
    >>> sorted(FAMILIES)
    ['clip', 'deit', 'deit3', 'dinov2', 'vit']
    >>> FAMILIES["deit3"].rules[0].otherwise
    'the model has no layer scale (timm option init_values)'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from caap_lens._timm import import_timm
from caap_lens.config import HookedViTConfig

__all__ = ["FAMILIES", "FAMILY_EXAMPLES", "Family", "Rule", "UnsupportedModelError", "check_family",
           "detect_family"]


class UnsupportedModelError(TypeError):
    """The timm model is not one of the supported ViT families."""


@dataclass(frozen=True)
class Rule:
    """One structural requirement of a family.

    Args:
        holds: ``holds(cfg, module)`` is True when the converted config and timm module satisfy it.
        otherwise: What is wrong when it does not hold (the start of the error message).
        mismatch: True when another family may fit (the message suggests ``family=``); False when
            the structure is unsupported outright.
    """

    holds: Callable[[HookedViTConfig, nn.Module], bool]
    otherwise: str
    mismatch: bool = True


@dataclass(frozen=True)
class Family:
    """A supported family: what it is, timm names that belong to it, and the rules it checks."""

    description: str
    examples: str
    rules: tuple[Rule, ...] = ()


_NO_LAYER_SCALE = Rule(lambda cfg, m: cfg.layer_scale, "the model has no layer scale (timm option init_values)")

#: Family name -> its description, example timm names and structural rules.
FAMILIES: dict[str, Family] = {
    "vit": Family(
        "ViT (original, augreg, and timm's ViT variants with registers, layer scale or no CLS token)",
        "vit_small_patch16_224, vit_base_patch16_224.augreg_in21k_ft_in1k",
        (Rule(lambda cfg, m: not cfg.distilled, "the model has a distillation token"),),
    ),
    "deit": Family(
        "DeiT, distilled or not (a distilled model averages its CLS and distillation heads)",
        "deit_small_patch16_224, deit_tiny_distilled_patch16_224",
        (
            Rule(lambda cfg, m: not cfg.distilled or hasattr(m, "head_dist"), "distilled DeiT without head_dist",
                 mismatch=False),
            Rule(lambda cfg, m: not (cfg.distilled and cfg.pooled_norm),
                 "a distilled DeiT with a pooled norm is not supported (timm option fc_norm, "
                 "or global_pool='avg', which turns it on)", mismatch=False),
        ),
    ),
    "deit3": Family(
        "DeiT III: layer scale, position embedding on patch tokens only",
        "deit3_small_patch16_224",
        (_NO_LAYER_SCALE,),
    ),
    "dinov2": Family(
        "DINOv2 with or without registers; runs at the size the timm model was created for",
        "vit_small_patch14_dinov2, vit_small_patch14_reg4_dinov2 (with img_size=224)",
        (_NO_LAYER_SCALE,),
    ),
    "clip": Family(
        "CLIP image tower: pre-norm; the head (if any) is the classifier or the image projection",
        "vit_base_patch16_clip_224.openai, vit_base_patch16_clip_quickgelu_224",
        (Rule(lambda cfg, m: cfg.pre_norm, "the model has no pre-norm (timm option pre_norm=True)"),),
    ),
}

#: Family name -> example timm model names (the text every `UnsupportedModelError` lists).
FAMILY_EXAMPLES: dict[str, str] = {name: family.examples for name, family in FAMILIES.items()}


def unsupported(what: str) -> UnsupportedModelError:
    """An `UnsupportedModelError` saying ``what`` and listing the supported families.

    Example:
        >>> "deit3 (e.g. deit3_small_patch16_224)" in str(unsupported("no"))
        True
    """
    supported = "; ".join(f"{family} (e.g. {names})" for family, names in FAMILY_EXAMPLES.items())
    return UnsupportedModelError(
        f"{what}. caap_lens converts timm VisionTransformer models of these families: {supported}"
    )


def is_type(module: nn.Module, *class_names: str) -> bool:
    """Whether ``module``'s class is named one of ``class_names`` (timm classes, without importing timm)."""
    return type(module).__name__ in class_names


def check_family(family: str, cfg: HookedViTConfig, module: nn.Module) -> None:
    """Raises `UnsupportedModelError` unless ``module`` (read into ``cfg``) fits ``family``'s rules.

    Raises:
        ValueError: ``family`` is not in `FAMILIES`.

    Example:
        >>> cfg = HookedViTConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16, image_size=8, patch_size=4)
        >>> check_family("deit3", cfg, nn.Identity())
        Traceback (most recent call last):
        ...
        caap_lens.converters.families.UnsupportedModelError: the model has no layer scale ...
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(FAMILIES)}")
    for rule in FAMILIES[family].rules:
        if rule.holds(cfg, module):
            continue
        if rule.mismatch:
            raise unsupported(
                f"{rule.otherwise}, so it is not a {family!r} family model: leave family unset to detect the "
                "family from the model's structure, or pass another family="
            )
        raise unsupported(rule.otherwise)


def detect_family(module: nn.Module) -> str:
    """The family of a timm model: by architecture name when timm recorded one, else by structure.

    Raises:
        UnsupportedModelError: ``module`` is not a timm ``VisionTransformer`` (or has no blocks).

    Example:
        >>> from caap_lens.converters.timm_vit import create_timm
        >>> detect_family(create_timm("deit_tiny_distilled_patch16_224", depth=1))
        'deit'
    """
    vt = import_timm().models.vision_transformer.VisionTransformer
    if not isinstance(module, vt):
        raise unsupported(f"{type(module).__name__} is not a timm VisionTransformer")
    arch = str((getattr(module, "pretrained_cfg", None) or {}).get("architecture", "") or "")
    for family, marker in (("deit3", "deit3_"), ("deit", "deit_"), ("clip", "_clip_"), ("dinov2", "_dinov2")):
        if marker in arch or arch.startswith(marker):
            return family
    if hasattr(module, "dist_token"):
        return "deit"
    if not is_type(module.norm_pre, "Identity") and not arch.startswith("vit_"):
        return "clip"  # unnamed pre-norm model; a named vit_* without "_clip_" is a pre-norm ViT
    if len(module.blocks) == 0:
        raise unsupported("the model has no transformer blocks (timm option depth=0); depth must be >= 1")
    if is_type(getattr(module.blocks[0], "ls1", nn.Identity()), "LayerScale"):  # other blocks: refused later
        patch = tuple(module.patch_embed.proj.kernel_size)
        return "dinov2" if patch == (14, 14) else "deit3"
    return "vit"

"""Converting timm Vision Transformers to `HookedViT`: a thin re-export, kept for existing imports.

The conversion itself is pure and lives below the model, in `caap_lens.converters` (the family table
in `caap_lens.converters.families`, the converter in `caap_lens.converters.timm_vit`);
`HookedViT.from_timm` builds the model from it. This module re-exports those names and `from_timm`,
the function form of `HookedViT.from_timm`. ``CONVERTERS`` is the family table
(`caap_lens.converters.families.FAMILIES`): family name -> description, examples and rules.

Example:
    >>> model = from_timm("vit_tiny_patch16_224", depth=2)  # random init, no download
    >>> model.cfg.family, model.cfg.n_layers
    ('vit', 2)
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from caap_lens.converters.families import FAMILIES, FAMILY_EXAMPLES, UnsupportedModelError, detect_family
from caap_lens.model.hooked_vit import HookedViT

__all__ = ["CONVERTERS", "FAMILY_EXAMPLES", "UnsupportedModelError", "detect_family", "from_timm"]

#: Family name -> `caap_lens.converters.families.Family` (the one table the converter checks).
CONVERTERS = FAMILIES


def from_timm(
    model_or_name: nn.Module | str,
    family: str | None = None,
    class_names: Sequence[str] | None = None,
    **timm_kwargs: Any,
) -> HookedViT:
    """Converts a timm ViT to `HookedViT`: exactly `HookedViT.from_timm` (see it for the arguments).

    Example:
        >>> from_timm("deit3_small_patch16_224", depth=2).cfg.layer_scale
        True
    """
    return HookedViT.from_timm(model_or_name, family=family, class_names=class_names, **timm_kwargs)

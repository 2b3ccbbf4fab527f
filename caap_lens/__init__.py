"""caap_lens: which image patches cause a Vision Transformer's prediction, by activation patching.

``import caap_lens`` is light: it does not import timm, and the public names below are loaded on
first use.

Example:
    >>> import caap_lens
    >>> model = caap_lens.HookedViT.from_timm("vit_tiny_patch16_224", depth=2)  # doctest: +SKIP
    >>> model = caap_lens.HookedViT.from_pretrained("fashion-scenes-vit")  # bundled, offline
    >>> result = caap_lens.caap(model, images, target="predicted")
    >>> result.map.shape  # [batch, grid_h, grid_w]
    torch.Size([2, 8, 8])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # the lazy names below, for type checkers and IDEs (nothing is imported at run time)
    from caap_lens._timm import import_timm
    from caap_lens.attribution.engine import caap
    from caap_lens.attribution.result import CAAPResult
    from caap_lens.attribution.settings import CAAPSettings, caap_settings
    from caap_lens.baselines import attribute
    from caap_lens.config import HookedViTConfig
    from caap_lens.grid import PatchGrid
    from caap_lens.loading.timm_vit import from_timm
    from caap_lens.model.hooked_vit import HookedViT
    from caap_lens.model.protocol import HookedViTLike
    from caap_lens.sweeps import depth_profile, window_sweep

_EXPORTS = {
    "HookedViT": "caap_lens.model.hooked_vit",
    "HookedViTLike": "caap_lens.model.protocol",
    "CAAPSettings": "caap_lens.attribution.settings",
    "caap_settings": "caap_lens.attribution.settings",
    "import_timm": "caap_lens._timm",
    "HookedViTConfig": "caap_lens.config",
    "PatchGrid": "caap_lens.grid",
    "from_timm": "caap_lens.loading.timm_vit",
    "caap": "caap_lens.attribution.engine",
    "CAAPResult": "caap_lens.attribution.result",
    "window_sweep": "caap_lens.sweeps",
    "depth_profile": "caap_lens.sweeps",
    "attribute": "caap_lens.baselines",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'caap_lens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

"""Loading: timm models (one converter per family), local checkpoints and bundled models."""

from caap_lens.loading.timm_vit import CONVERTERS, FAMILY_EXAMPLES, UnsupportedModelError, detect_family, from_timm

__all__ = ["CONVERTERS", "FAMILY_EXAMPLES", "UnsupportedModelError", "detect_family", "from_timm"]

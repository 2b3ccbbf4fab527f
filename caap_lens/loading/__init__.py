"""Loading: timm models, local checkpoints, bundled models and the real DINOv2, as `HookedViT`.

This package sits above `caap_lens.model`; the pure conversions it builds on are in
`caap_lens.converters` (below the model). The names here are re-exported for existing imports.
"""

from caap_lens.converters.checkpoint import checkpoint_num_classes
from caap_lens.loading.timm_vit import CONVERTERS, FAMILY_EXAMPLES, UnsupportedModelError, detect_family, from_timm

__all__ = ["CONVERTERS", "FAMILY_EXAMPLES", "UnsupportedModelError", "checkpoint_num_classes", "detect_family",
           "from_timm"]

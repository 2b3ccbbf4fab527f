"""The hooked Vision Transformer and its components (one module per component)."""

from caap_lens.model.hooked_vit import HookedViT
from caap_lens.model.protocol import HookedViTLike

__all__ = ["HookedViT", "HookedViTLike"]

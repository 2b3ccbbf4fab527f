"""`HookedViTLike`: what caap_lens's algorithms need from a model.

CAAP, the sweeps, the baselines and the metrics are written against this protocol, not against
`HookedViT` itself: a model that offers these members (a wrapper, a subclass, a test double) works
with them. `HookedViT` implements it; ``isinstance(model, HookedViTLike)`` checks that the members
exist (not their signatures). A model with ``cfg.dynamic_img_size=True`` needs one more,
``at_size(image_size)``: the model at another size (`caap_lens.model.sizing`).

Example:
    >>> from caap_lens.config import HookedViTConfig
    >>> from caap_lens.model.hooked_vit import HookedViT
    >>> model = HookedViT(HookedViTConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, image_size=16,
    ...                                   patch_size=8, n_classes=2))
    >>> isinstance(model, HookedViTLike), isinstance(object(), HookedViTLike)
    (True, False)
"""

from __future__ import annotations

from typing import Any, ContextManager, Protocol, Sequence, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from caap_lens.config import HookedViTConfig
from caap_lens.grid import PatchGrid


@runtime_checkable
class HookedViTLike(Protocol):
    """The members of `HookedViT` that the algorithms use.

    Attributes:
        cfg: The architecture (depth, heads, image size, mean/std, pooling, ...).
        grid: Patch ↔ token ↔ pixel mapping.
        blocks: The transformer blocks, indexable and sliceable (``blocks[start:stop]``).
        hook_dict: Hook points by full TransformerLens name.
        class_names: Names of the outputs, or None.
    """

    cfg: HookedViTConfig
    grid: PatchGrid
    blocks: Any
    hook_dict: dict[str, Any]
    class_names: Sequence[str] | None

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The forward pass: images (or a residual with ``start_at_layer``) → outputs ``[batch, n_out]``."""
        ...

    def check_images(self, images: Any) -> Float[Tensor, "batch channel height width"]: ...

    def preprocess(self, images: Any, resize: bool = True) -> Float[Tensor, "batch channel height width"]: ...

    def embed_images(self, images: Float[Tensor, "batch channel height width"]) -> Float[Tensor, "batch pos d_model"]: ...

    def output_from(self, resid: Float[Tensor, "batch pos d_model"], start: int) -> Tensor:
        """Unpatched run from block ``start`` to the output."""
        ...

    def hooks(self, *args: Any, **kwargs: Any) -> ContextManager[Any]:
        """TransformerLens's ``hooks(fwd_hooks=..., bwd_hooks=...)`` context manager."""
        ...

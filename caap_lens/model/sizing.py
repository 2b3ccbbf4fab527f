"""A dynamic-size model at the size of its input.

A model converted with timm's ``dynamic_img_size=True`` (``cfg.dynamic_img_size``) takes images of any
size that is a whole number of patches: its forward resamples the position embedding to the input's
grid, as timm does. What maps patches to tokens — ``model.grid``, ``cfg.n_tokens``, the shape of every
patch map — depends on that size, so `HookedViT.at_size` returns the model *at* one size: a view that
shares every module, parameter, hook point and the lock with the model, with a config and a `PatchGrid`
for that size (`HookedViTConfig.at_size`: ``cfg.pos_embed_grid`` keeps the grid the embedding was learned
on).

Every caap_lens function that takes a model and images calls `at_image_size` first, so ``caap(model, x)``
on ``x`` of another size returns maps on ``x``'s grid, and ``result.grid`` says which. Images that are not
yet tensors are preprocessed to ``cfg.image_size``, the size the model was built for.

Example:
    >>> from caap_lens.config import HookedViTConfig
    >>> from caap_lens.model.hooked_vit import HookedViT
    >>> model = HookedViT(HookedViTConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, image_size=16,
    ...                                   patch_size=8, n_classes=2, dynamic_img_size=True))
    >>> at_image_size(model, torch.randn(1, 3, 24, 40)).grid.grid_size
    (3, 5)
    >>> at_image_size(model, torch.randn(1, 3, 16, 16)) is model
    True
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from caap_lens.config import HookedViTConfig
from caap_lens.grid import PatchGrid

__all__ = ["at_image_size", "grid_of"]


def at_image_size(model: Any, images: Any) -> Any:
    """``model`` at the size of ``images`` when it is a dynamic-size model and they are a batch of another size.

    Anything else — a fixed-size model, images of the model's own size, images that are not a 4-d tensor
    — returns ``model`` itself (a fixed-size model then rejects wrongly sized tensors in
    ``check_images``, with a message that says what to do).
    """
    if not (isinstance(images, Tensor) and images.ndim == 4):
        return model
    cfg = model.cfg
    size = tuple(images.shape[-2:])
    if size == tuple(cfg.image_size) or not getattr(cfg, "dynamic_img_size", False):
        return model
    at_size = getattr(model, "at_size", None)
    if at_size is None:
        raise TypeError(
            f"{type(model).__name__} has cfg.dynamic_img_size=True but no at_size(image_size) method, so caap_lens "
            f"cannot map {size} images to patches; give it one (see caap_lens.model.sizing) or resize the images "
            f"to {tuple(cfg.image_size)}"
        )
    return at_size(size)


def grid_of(cfg: HookedViTConfig) -> PatchGrid:
    """The `PatchGrid` of a config."""
    return PatchGrid(cfg.grid_size, cfg.patch_size, cfg.n_prefix_tokens)  # type: ignore[arg-type]


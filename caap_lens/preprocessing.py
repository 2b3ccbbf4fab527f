"""Turning user images into model input with the model's own size, mean and std.

Accepts PIL images, numpy arrays (``HW``, ``HWC`` or ``NHWC``; uint8 in 0..255 or floats in 0..1) and
torch tensors (``CHW`` or ``NCHW``; uint8 or floats in 0..1), alone or in a list. Grayscale is repeated
to RGB and an alpha channel dropped; images of another size are resized (bilinear, antialiased) to the
model's ``image_size``. The result is a float32 ``[batch, channel, height, width]`` tensor normalised
with the model's ``image_mean``/``image_std``.

Example:
    >>> import numpy as np
    >>> x = preprocess(np.zeros((32, 32, 3), dtype=np.uint8), image_size=(64, 64),
    ...                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    >>> x.shape, float(x[0, 0, 0, 0])
    (torch.Size([1, 3, 64, 64]), -1.0)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


def _to_nchw(image: Any) -> Tensor:
    """One image or a batch, as float ``[n, c, h, w]`` in 0..1 (channels not yet fixed)."""
    if type(image).__module__.startswith("PIL"):
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4:
            raise ValueError(f"numpy images must be HW, HWC or NHWC, got shape {image.shape}")
        array = np.ascontiguousarray(image)
        if not array.flags.writeable:  # e.g. np.asarray(PIL image): torch warns on read-only arrays
            array = array.copy()
        tensor = torch.from_numpy(array).permute(0, 3, 1, 2)
    elif isinstance(image, Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 2:
            tensor = tensor[None]
        if tensor.ndim == 3:
            tensor = tensor[None]
        if tensor.ndim != 4:
            raise ValueError(f"tensor images must be CHW or NCHW, got shape {tuple(tensor.shape)}")
    else:
        raise TypeError(
            f"expected a PIL image, numpy array or torch tensor (or a list of them), got {type(image).__name__}"
        )
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    if not tensor.is_floating_point():
        raise TypeError(f"images must be uint8 (0..255) or float (0..1), got {tensor.dtype}")
    return tensor.float()


def _fix_channels(x: Tensor, n_channels: int) -> Tensor:
    c = x.shape[1]
    if c == n_channels:
        return x
    if c == 4 and n_channels == 3:
        return x[:, :3]
    if c == 1 and n_channels == 3:
        return x.expand(-1, 3, -1, -1)
    if c in (3, 4) and n_channels == 1:
        return (x[:, :3] * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    raise ValueError(f"cannot convert {c}-channel images to the model's {n_channels} channels")


def preprocess(
    images: Any | Sequence[Any],
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    resize: bool = True,
) -> Float[Tensor, "batch channel height width"]:
    """Converts images to a normalised model-input batch.

    Args:
        images: A PIL image, array or tensor (see the module docstring), or a list of them.
        image_size: Target ``(height, width)``.
        mean: Per-channel mean subtracted after scaling to 0..1.
        std: Per-channel standard deviation divided by.
        resize: Resize images of another size; if False, such images raise ValueError.

    Returns:
        Float32 tensor ``[batch, channel, height, width]``.
    """
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("no images given")
    n_channels = len(mean)
    batches = []
    for item in items:
        x = _fix_channels(_to_nchw(item), n_channels)
        if tuple(x.shape[-2:]) != tuple(image_size):
            if not resize:
                raise ValueError(
                    f"image is {tuple(x.shape[-2:])} pixels, the model takes {tuple(image_size)}"
                )
            x = F.interpolate(x, size=tuple(image_size), mode="bilinear", antialias=True, align_corners=False)
        batches.append(x)
    x = torch.cat(batches, dim=0)
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def denormalize(
    images: Float[Tensor, "batch channel height width"], mean: Sequence[float], std: Sequence[float]
) -> Float[Tensor, "batch channel height width"]:
    """Inverts the normalisation of `preprocess`: back to 0..1 pixel values (clamped)."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)

"""Turning user images into model input with the model's own eval preprocessing.

Accepts PIL images, numpy arrays (``HW``, ``HWC`` or ``NHWC``; uint8 in 0..255 or floats in 0..1) and
torch tensors (``CHW`` or ``NCHW``; uint8 or floats in 0..1), alone or in a list. Float pixels far outside
0..1 (beyond [-0.5, 1.5]: 0..255 floats, or an already normalised tensor) and NaN/inf values raise
ValueError rather than being used silently. Grayscale is repeated to RGB and an alpha channel dropped
(for PIL images, ``image.convert("RGB")``). The result is a float32 ``[batch, channel, height, width]``
tensor normalised with the model's mean and std.

Two pipelines, chosen by whether the model has a timm data config (``cfg.data_config``):

* **timm's own eval transform** (models converted from timm): ``timm.data.create_transform`` with the
  model's ``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean`` and ``std`` -- for
  ``vit_small_patch16_224`` a bicubic resize of the short side to 248 and a centre crop of 224, applied
  to every image, even one already 224 px. PIL images (and uint8 arrays/tensors, made PIL images first)
  give exactly timm's values; float pixels go through the same transforms on tensors.
* **without one** (configs built directly, the bundled models): images of another size are resized
  (bilinear, antialiased, aspect ratio not kept) to ``image_size``; others are only normalised.

Example:
    >>> import numpy as np
    >>> x = preprocess(np.zeros((32, 32, 3), dtype=np.uint8), image_size=(64, 64),
    ...                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    >>> x.shape, float(x[0, 0, 0, 0])
    (torch.Size([1, 3, 64, 64]), -1.0)
    >>> timm_like = {"input_size": (3, 64, 64), "interpolation": "bicubic", "crop_pct": 0.9,
    ...              "crop_mode": "center", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    >>> preprocess(np.zeros((80, 100, 3), dtype=np.uint8), (64, 64), (0.5,) * 3, (0.5,) * 3,
    ...            data_config=timm_like).shape
    torch.Size([1, 3, 64, 64])
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor


class UnnormalisedInputWarning(UserWarning):
    """A float batch passed as normalised model input looks like 0..1 pixels (shown once per process)."""


_warned_unnormalised = False
_PIXEL_SLACK = 0.5  # float pixels this far outside 0..1 (overshoot, synthetic tests) are used as given


def check_finite(images: Tensor, what: str = "image") -> None:
    """Raises ValueError naming the first images that hold NaN or ±inf values.

    Example:
        >>> check_finite(torch.tensor([[[[0.0]]], [[[float("nan")]]]]))
        Traceback (most recent call last):
        ...
        ValueError: image 1 of the batch contains NaN or infinite values (1 of 1 values); ...
    """
    if images.numel() == 0 or bool(torch.isfinite(images).all()):
        return
    bad_values = ~torch.isfinite(images.reshape(images.shape[0], -1))
    bad = bad_values.any(dim=1).nonzero().flatten().tolist()
    first = bad[0]
    listed = ", ".join(str(i) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
    who = f"{what} {listed} of the batch contains" if len(bad) == 1 else f"{what}s {listed} of the batch contain"
    raise ValueError(
        f"{who} NaN or infinite values ({int(bad_values[first].sum())} of {bad_values.shape[1]} values"
        f"{' in ' + what + ' ' + str(first) if len(bad) > 1 else ''}); the map would be NaN: fix or drop "
        "those images (e.g. torch.nan_to_num)"
    )


def warn_if_unnormalised(images: Tensor) -> None:
    """Warns once per process when a float batch taken as normalised input has every value in [0, 1].

    Normalised input (``(pixel - mean) / std``) is negative wherever a pixel is darker than the
    mean, so a batch with no negative value is almost surely 0..1 pixels that skipped
    ``model.preprocess``. The input is still used as given (the convention of timm and Captum).
    An all-zero batch (the mean-colour image) does not warn.
    """
    global _warned_unnormalised
    if _warned_unnormalised or images.numel() == 0:
        return
    low, high = float(images.min()), float(images.max())
    if low >= 0.0 and high <= 1.0 and high > 0.0:
        _warned_unnormalised = True
        warnings.warn(
            "the images look un-normalised: every value is within [0, 1], as 0..1 pixels are. Tensors are "
            "taken as normalised model input ((pixel - mean) / std, as in timm and Captum); if these are "
            "pixels, pass model.preprocess(images) instead. Shown once; silence it with warnings."
            "filterwarnings('ignore', category=caap_lens.preprocessing.UnnormalisedInputWarning)",
            UnnormalisedInputWarning,
            stacklevel=3,
        )


def _check_pixel_range(tensor: Tensor, kind: str) -> None:
    if tensor.numel() == 0:
        return
    low, high = float(tensor.min()), float(tensor.max())
    if low >= -_PIXEL_SLACK and high <= 1.0 + _PIXEL_SLACK:
        return
    if low >= 0.0 and high <= 255.0:
        hint = "they look like 0..255 pixels: divide by 255, or pass them as uint8"
    elif low < 0.0:
        hint = ("they look already normalised: pass the tensor straight to caap/the model "
                "(preprocess is for raw pixels)")
    else:
        hint = "scale them to 0..1, or pass uint8 0..255 pixels"
    raise ValueError(f"float {kind} images must hold pixels in 0..1, got values in [{low:.4g}, {high:.4g}]; {hint}")


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
    if tensor.dtype == torch.bool or not tensor.is_floating_point():
        raise TypeError(f"images must be uint8 (0..255) or float (0..1), got {tensor.dtype}")
    tensor = tensor.float()
    check_finite(tensor)
    _check_pixel_range(tensor, "numpy" if isinstance(image, np.ndarray) else "tensor")
    return tensor


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


def _is_pil(image: Any) -> bool:
    return type(image).__module__.startswith("PIL")


@functools.lru_cache(maxsize=16)
def _timm_transform(key: tuple[tuple[str, Any], ...]) -> Callable[[Any], Tensor]:
    from caap_lens._timm import import_timm

    import_timm()  # the torchvision work-around before timm.data imports torchvision
    from timm.data import create_transform

    return create_transform(**dict(key), is_training=False)


def timm_transform(data_config: Mapping[str, Any]) -> Callable[[Any], Tensor]:
    """timm's eval transform for a data config: ``timm.data.create_transform(**data_config)`` (cached).

    Example:
        >>> t = timm_transform({"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.9,
        ...                     "crop_mode": "center", "mean": (0.5,) * 3, "std": (0.5,) * 3})
        >>> [type(step).__name__ for step in t.transforms]
        ['Resize', 'CenterCrop', 'MaybeToTensor', 'Normalize']
    """
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in data_config.items()))
    return _timm_transform(key)


def _uint8_nhwc(item: np.ndarray | Tensor) -> np.ndarray:
    """A uint8 array (``HW``, ``HWC``, ``NHWC``) or tensor (``HW``, ``CHW``, ``NCHW``) as ``NHWC``."""
    if isinstance(item, Tensor):
        array = item.detach().cpu().numpy()
        if array.ndim not in (2, 3, 4):
            raise ValueError(f"tensor images must be CHW or NCHW, got shape {tuple(item.shape)}")
        array = array[None] if array.ndim == 2 else np.moveaxis(array, -3, -1)  # HW -> 1HW; CHW -> HWC
    else:
        array = item
        if array.ndim not in (2, 3, 4):
            raise ValueError(f"numpy images must be HW, HWC or NHWC, got shape {array.shape}")
    if array.ndim == 2:
        array = array[:, :, None]
    return array[None] if array.ndim == 3 else array


def _pil_images(item: Any, n_channels: int) -> list[Any] | None:
    """The PIL images timm's transform is given for ``item``, or None for float pixels (tensor path)."""
    from PIL import Image

    if n_channels not in (1, 3):  # no PIL mode to convert to: the transforms run on the tensor
        return None
    if _is_pil(item):
        images = [item]
    elif isinstance(item, (np.ndarray, Tensor)) and item.dtype in (np.uint8, torch.uint8):
        images = []
        for one in _uint8_nhwc(item):
            if one.shape[-1] not in (1, 3, 4):
                raise ValueError(f"cannot convert {one.shape[-1]}-channel images to the model's {n_channels} channels")
            images.append(Image.fromarray(np.ascontiguousarray(one[..., 0] if one.shape[-1] == 1 else one)))
    else:
        return None
    mode = "L" if n_channels == 1 else "RGB"
    return [image if image.mode == mode else image.convert(mode) for image in images]


def _timm_preprocess(item: Any, n_channels: int, data_config: Mapping[str, Any]) -> Tensor:
    transform = timm_transform(data_config)
    images = _pil_images(item, n_channels)
    if images is not None:
        return torch.stack([transform(image) for image in images])
    x = _fix_channels(_to_nchw(item), n_channels)  # float pixels in 0..1: the same transforms on tensors
    return torch.stack([transform(image) for image in x])


def preprocess(
    images: Any | Sequence[Any],
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    resize: bool = True,
    data_config: Mapping[str, Any] | None = None,
) -> Float[Tensor, "batch channel height width"]:
    """Converts images to a normalised model-input batch.

    Args:
        images: A PIL image, array or tensor (see the module docstring), or a list of them.
        image_size: Target ``(height, width)``.
        mean: Per-channel mean subtracted after scaling to 0..1.
        std: Per-channel standard deviation divided by.
        resize: Resize (and with ``data_config``, crop) images; if False, images of another size raise
            ValueError and the others are only normalised.
        data_config: timm's eval-transform arguments (``cfg.data_config``); its ``input_size``, ``mean``
            and ``std`` are replaced by ``image_size``, ``mean`` and ``std``. None: resize to
            ``image_size`` (bilinear) when the size differs.

    Returns:
        Float32 tensor ``[batch, channel, height, width]``.
    """
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("no images given")
    n_channels = len(mean)
    timm_config = None
    if data_config is not None and resize:
        timm_config = {**data_config, "input_size": (n_channels, *image_size),
                       "mean": tuple(mean), "std": tuple(std)}
    batches = []
    for index, item in enumerate(items):
        try:
            if timm_config is not None:
                batches.append(_timm_preprocess(item, n_channels, timm_config))
                continue
            x = _fix_channels(_to_nchw(item), n_channels)
        except (TypeError, ValueError) as err:
            if len(items) == 1:
                raise
            raise type(err)(f"image {index} of the list: {err}") from None
        if tuple(x.shape[-2:]) != tuple(image_size):
            if not resize:
                raise ValueError(
                    f"image is {tuple(x.shape[-2:])} pixels, the model takes {tuple(image_size)}"
                )
            x = F.interpolate(x, size=tuple(image_size), mode="bilinear", antialias=True, align_corners=False)
        batches.append(x)
    if timm_config is not None:
        return torch.cat(batches, dim=0)
    x = torch.cat(batches, dim=0)
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


_NOT_GEOMETRY = ("MaybeToTensor", "ToTensor", "Normalize", "MaybePILToTensor", "PILToTensor")


def preprocess_mask(
    mask: Any,
    image_size: tuple[int, int],
    data_config: Mapping[str, Any] | None = None,
    n_channels: int = 3,
) -> Bool[Tensor, "height width"]:
    """A boolean ``[H, W]`` mask of an image, moved to where `preprocess` moves the image's pixels.

    The same geometry as the image, with nearest-neighbour sampling: timm's resize and centre crop
    (``data_config``; its interpolation replaced by ``"nearest"``), or, without a data config, the
    same stretch to ``image_size``. A mask of the image's own pixels then marks the same content
    in the model input, whatever the crop.

    Example:
        >>> m = np.zeros((80, 100), dtype=bool); m[:, 50:] = True  # the right half of an 80x100 image
        >>> timm_like = {"input_size": (3, 64, 64), "interpolation": "bicubic", "crop_pct": 1.0,
        ...              "crop_mode": "center", "mean": (0.5,) * 3, "std": (0.5,) * 3}
        >>> out = preprocess_mask(m, (64, 64), timm_like)  # short side to 64 (64x80), centre crop
        >>> tuple(out.shape), int(out[0].sum())  # 40 of the 80 columns were right of centre; 32 kept
        ((64, 64), 32)
    """
    m = torch.as_tensor(np.asarray(mask)).bool()
    if m.ndim != 2:
        raise ValueError(f"a mask must be [height, width], got shape {tuple(m.shape)}")
    if data_config is None:
        if tuple(m.shape) == tuple(image_size):
            return m
        return F.interpolate(m[None, None].float(), size=tuple(image_size), mode="nearest")[0, 0].bool()
    from PIL import Image

    config = {**data_config, "input_size": (n_channels, *image_size), "interpolation": "nearest"}
    image = Image.fromarray(m.numpy().astype(np.uint8) * 255)
    for step in timm_transform(config).transforms:
        if type(step).__name__ not in _NOT_GEOMETRY:
            image = step(image)
    out = torch.from_numpy(np.asarray(image) > 127)
    if tuple(out.shape) != tuple(image_size):  # pragma: no cover - timm's eval transform always ends at input_size
        raise ValueError(f"the mask came out {tuple(out.shape)}, not the model's {tuple(image_size)}")
    return out


def denormalize(
    images: Float[Tensor, "*batch channel height width"], mean: Sequence[float], std: Sequence[float]
) -> Float[Tensor, "*batch channel height width"]:
    """Inverts the normalisation of `preprocess`: back to 0..1 pixel values (clamped).

    Example:
        >>> x = torch.full((3, 2, 2), -1.0)
        >>> denormalize(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).unique().tolist()
        [0.0]
    """
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)

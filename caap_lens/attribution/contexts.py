"""Neutral target contexts: what the model sees where the source image is not patched in.

CAAP runs the model on a *neutral* context and copies the source's activations in at one patch. The
paper does not say what "neutral" is, so it is a choice here. Every context answers one question:
what is the residual stream before block ``layer`` in the context run?

Image-level contexts build an input image and run the model up to ``layer``:

* ``"mean"`` (default) — every pixel the dataset-mean colour (the model's ``image_mean``), i.e. an
  all-zero normalised input: no edges, no texture, no colour cue, and the same for every source.
* ``"black"`` — every pixel 0.
* ``"blur"`` — the source blurred (Gaussian, ``sigma`` in pixels): keeps layout and colour, removes
  detail; the most "in-distribution" choice and the least neutral.
* ``"noise"`` — uniform random pixels (seeded).
* a tensor — any given image ``[C, H, W]`` or ``[batch, C, H, W]`` in the model's normalised space.
* a callable ``f(model, images) -> images`` — your own image context.

Activation-level contexts build the residual directly:

* ``"mean_activation"`` — at the window start, every patch token holds the mean patch-token residual
  (over the reference images and all patch positions) and each prefix token its mean over the
  reference images. By default each image is its own reference: its patch tokens hold the mean of
  its own patch tokens and its prefix tokens stay its own, so a map never depends on which other
  images share the batch (the prefix tokens still carry the source's information once the window
  starts after block 0). Pass ``reference=`` (``MeanActivationContext(reference=images)``) to use
  one shared data set instead.

Example:
    >>> ctx = resolve_context("blur")
    >>> resid = ctx.residuals(model, images, [2])[2]
    >>> resid.shape  # [batch, tokens, d_model]
    torch.Size([2, 65, 64])
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from caap_lens.model.protocol import HookedViTLike

Images = Float[Tensor, "batch channel height width"]
ContextImages = Float[Tensor, "#batch channel height width"]  # one image for all, or one per image
Resid = Float[Tensor, "batch pos d_model"]


class Context(Protocol):
    """Anything that gives the context's residual stream before given blocks."""

    name: str

    def residuals(self, model: HookedViTLike, images: Images, layers: Sequence[int]) -> dict[int, Resid]:
        """Residual stream ``[batch, pos, d_model]`` before each block in ``layers``."""
        ...


def residuals_of_images(model: HookedViTLike, images: Images, layers: Sequence[int]) -> dict[int, Resid]:
    """Runs ``images`` once, up to the deepest layer asked for, and keeps the residuals on the way."""
    layers = sorted(set(layers))
    out: dict[int, Resid] = {}
    resid = model.embed_images(images)
    current = 0
    for layer in layers:
        for block in model.blocks[current:layer]:
            resid = block(resid)
        current = layer
        out[layer] = resid
    return out


class ImageContext:
    """A context given by an input image; subclasses say how to make it from the source images."""

    name = "image"

    def image(self, model: HookedViTLike, images: Images) -> ContextImages:
        raise NotImplementedError

    def residuals(self, model: HookedViTLike, images: Images, layers: Sequence[int]) -> dict[int, Resid]:
        context = self.image(model, images)
        if context.shape[0] == 1 and images.shape[0] > 1:
            context = context.expand(images.shape[0], -1, -1, -1)
        return residuals_of_images(model, context, layers)


def _constant_pixels(model: HookedViTLike, images: Images, pixel: Sequence[float]) -> ContextImages:
    mean = torch.tensor(model.cfg.image_mean, dtype=images.dtype, device=images.device)
    std = torch.tensor(model.cfg.image_std, dtype=images.dtype, device=images.device)
    value = (torch.tensor(pixel, dtype=images.dtype, device=images.device) - mean) / std
    return value.view(1, -1, 1, 1).expand(1, -1, *images.shape[2:]).contiguous()


class MeanColourContext(ImageContext):
    """Every pixel the model's ``image_mean`` colour (a zero normalised input)."""

    name = "mean"

    def image(self, model: HookedViTLike, images: Images) -> ContextImages:
        return _constant_pixels(model, images, model.cfg.image_mean)


class BlackContext(ImageContext):
    """Every pixel black (0 in pixel space)."""

    name = "black"

    def image(self, model: HookedViTLike, images: Images) -> ContextImages:
        return _constant_pixels(model, images, [0.0] * model.cfg.n_channels)


class BlurContext(ImageContext):
    """The source image blurred with a Gaussian of ``sigma`` pixels (per channel, reflect padding)."""

    def __init__(self, sigma: float = 8.0):
        if sigma <= 0:
            raise ValueError(f"blur sigma must be positive, got {sigma}")
        self.sigma = float(sigma)
        self.name = f"blur(sigma={sigma:g})"

    def image(self, model: HookedViTLike, images: Images) -> ContextImages:
        radius = max(1, int(3 * self.sigma))
        radius = min(radius, min(images.shape[-2:]) - 1)
        x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
        kernel = torch.exp(-(x**2) / (2 * self.sigma**2))
        kernel = kernel / kernel.sum()
        c = images.shape[1]
        out = F.pad(images, (radius, radius, 0, 0), mode="reflect")
        out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        out = F.pad(out, (0, 0, radius, radius), mode="reflect")
        return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class NoiseContext(ImageContext):
    """Uniform random pixels in [0, 1], normalised; the same noise for every source (seeded)."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self.name = f"noise(seed={seed})"

    def image(self, model: HookedViTLike, images: Images) -> ContextImages:
        gen = torch.Generator().manual_seed(self.seed)
        pixels = torch.rand(1, *images.shape[1:], generator=gen).to(images.device, images.dtype)
        mean = torch.tensor(model.cfg.image_mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(model.cfg.image_std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (pixels - mean) / std


class GivenImageContext(ImageContext):
    """A fixed, already normalised image (``[C, H, W]``, ``[1, C, H, W]`` or one per source)."""

    name = "given image"

    def __init__(self, image: Tensor):
        if not image.is_floating_point():
            raise TypeError(
                f"a context image tensor must be a normalised float image like the model input, got "
                f"dtype {image.dtype} (pixels?); pass model.preprocess(context_image) instead"
            )
        self.context = image if image.ndim == 4 else image.unsqueeze(0)

    def image(self, model: HookedViTLike, images: Images) -> ContextImages:
        ctx = self.context
        if ctx.ndim != 4 or tuple(ctx.shape[1:]) != tuple(images.shape[1:]) or ctx.shape[0] not in (1, images.shape[0]):
            raise ValueError(
                f"context image must be [C, H, W] or [1 or batch, C, H, W] matching the images "
                f"{tuple(images.shape)}, got {tuple(ctx.shape)}"
            )
        if not bool(torch.isfinite(ctx).all()):
            raise ValueError("the context image holds NaN or infinite values; the map would be NaN")
        return ctx.to(device=images.device, dtype=images.dtype)


class CallableContext(ImageContext):
    """Wraps ``f(model, images) -> context images`` as a context."""

    def __init__(self, fn: Callable[[Any, Images], Images]):
        self.fn = fn
        self.name = getattr(fn, "__name__", "custom")

    def image(self, model: HookedViTLike, images: Images) -> ContextImages:
        return GivenImageContext(self.fn(model, images)).image(model, images)


class MeanActivationContext:
    """Mean patch-token residual at the window start (see the module docstring)."""

    name = "mean_activation"

    def __init__(self, reference: Images | None = None):
        self.reference = reference

    def residuals(self, model: HookedViTLike, images: Images, layers: Sequence[int]) -> dict[int, Resid]:
        n_prefix = model.cfg.n_prefix_tokens
        out = {}
        if self.reference is None:  # per image: never mixes an image with its batch mates
            for layer, resid in residuals_of_images(model, images, layers).items():
                own = resid.clone()
                own[:, n_prefix:] = resid[:, n_prefix:].mean(dim=1, keepdim=True)
                out[layer] = own
            return out
        reference = self.reference.to(images.device, images.dtype)
        for layer, resid in residuals_of_images(model, reference, layers).items():
            mean = resid.mean(dim=0, keepdim=True)  # [1, pos, d_model]
            mean[:, n_prefix:] = resid[:, n_prefix:].mean(dim=(0, 1), keepdim=True)
            out[layer] = mean.expand(images.shape[0], -1, -1)
        return out


CONTEXTS: dict[str, Callable[[], Any]] = {
    "mean": MeanColourContext,
    "black": BlackContext,
    "blur": BlurContext,
    "noise": NoiseContext,
    "mean_activation": MeanActivationContext,
}


def resolve_context(context: Any) -> Any:
    """A context object from a name, a tensor, a callable or a context object.

    Raises:
        ValueError: unknown name.
    """
    if isinstance(context, str):
        if context not in CONTEXTS:
            raise ValueError(f"unknown context {context!r}: choose one of {', '.join(CONTEXTS)}, "
                             "an image tensor, or a callable f(model, images) -> images")
        return CONTEXTS[context]()
    if isinstance(context, Tensor):
        return GivenImageContext(context)
    if hasattr(context, "residuals"):
        return context
    if callable(context):
        return CallableContext(context)
    raise TypeError(f"context must be a name, a tensor, a callable or a Context, got {type(context).__name__}")

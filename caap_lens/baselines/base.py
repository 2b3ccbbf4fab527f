"""One verb for every attribution method: `attribute(method, model, images, target, **options)`.

Every method — CAAP and the baselines it is compared with — is a plain function with one signature::

    fn(model, images, targets, **options) -> (patch_map, pixel_map | None[, info])

``images`` is a checked, normalised ``[batch, C, H, W]`` batch, ``targets`` one class index per image
``[batch]``; ``patch_map`` is ``[batch, grid_h, grid_w]`` on the model's own patch grid (never a guessed
one) and ``pixel_map`` ``[batch, H, W]`` for methods that work on pixels (integrated gradients, RISE),
else None; a method may add a dict ``info`` of per-image diagnostics (integrated gradients' completeness
error). `attribute` resolves images and targets once, times the call and wraps the maps in an
`Attribution`; `METHODS` maps names to functions (filled in by ``caap_lens.baselines``). A method
that runs the unpatched model itself anyway (CAAP) sets ``fn.resolves_targets = True``: `attribute`
then passes the target as given and the method returns ``info["targets"]`` and
``info["source_output"]``, so the source is run once, not twice.

Conventions shared by all methods:

* every method runs on `HookedViT` through its hook points; nothing is rewritten, hooks are removed
  on exit (also after an exception) and no gradient is ever left on a model parameter (gradients are
  taken with ``torch.autograd.grad`` with respect to activations or inputs only);
* methods that score the output take ``score=`` (`caap_lens.attribution.scores`; ``"logit"`` unless
  the method's reference says otherwise) and methods that need a neutral input take ``context=`` /
  ``baseline=`` with the same image contexts as CAAP (`caap_lens.attribution.contexts`);
* positive values are evidence *for* the target.

Example:
    >>> from caap_lens.baselines import attribute
    >>> result = attribute("rollout", model, images)
    >>> result.map.shape, result.to_pixels().shape
    (torch.Size([2, 8, 8]), torch.Size([2, 64, 64]))
"""

from __future__ import annotations

import contextlib
import inspect
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from caap_lens._deprecation import UNSET
from caap_lens.attribution.contexts import resolve_context
from caap_lens.attribution.engine import caap_settings, caap_with, check_not_empty, prepare_images
from caap_lens.attribution.scores import ScoreLike, resolve_score, scores_index_classes, target_space
from caap_lens.attribution.storage import describe_settings, load_result, save_result
from caap_lens.attribution.targets import TargetLike, resolve_targets
from caap_lens.grid import PatchGrid
from caap_lens.model.protocol import HookedViTLike
from caap_lens.model.sizing import at_image_size

Images = Float[Tensor, "batch channel height width"]
Targets = Int[Tensor, " batch"]
PatchMap = Float[Tensor, "batch grid_h grid_w"]
PixelMap = Float[Tensor, "batch height width"]
MethodOutput = tuple[PatchMap, Optional[PixelMap]]  # or (patch_map, pixel_map, info dict)
Method = Callable[..., MethodOutput]

METHODS: dict[str, Method] = {}
"""Attribution methods by name; every value has the signature ``fn(model, images, targets, **options)``."""

RENAMED: dict[str, str] = {
    "transformer_attribution": "gradient_weighted_attention",
    "gradcam": "token_gradcam",
}
"""Old method names that still resolve (with a DeprecationWarning) to the method they always were."""


@dataclass
class Attribution:
    """The output of one attribution method on one batch.

    Attributes:
        map: Patch map ``[batch, grid_h, grid_w]``, float32 on the CPU.
        pixels: Pixel map ``[batch, H, W]`` (float32, CPU) for pixel-level methods, else None.
        method: The method's name.
        targets: Class index per image ``[batch]``.
        grid: The model's patch grid.
        settings: Every option of the call, defaults included.
        timing: ``seconds``: wall time of target resolution plus the method (CAAP adds its
            engine's timing, as in `CAAPResult`).
        info: Per-image diagnostics the method reports (e.g. integrated gradients'
            ``completeness_error`` ``[batch]``); empty for most methods.
        source_output: The unpatched model output ``[batch, n_out]`` (float32, CPU).
    """

    map: PatchMap
    pixels: Optional[PixelMap]
    method: str
    targets: Targets
    grid: PatchGrid
    settings: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    source_output: Optional[Float[Tensor, "batch n_out"]] = None

    @property
    def seconds(self) -> float:
        """``timing["seconds"]``."""
        return float(self.timing.get("seconds", 0.0))

    def to_pixels(self, mode: str = "nearest") -> PixelMap:
        """The pixel map if the method made one, else the patch map upsampled (``mode`` as `PatchGrid.to_pixels`)."""
        if self.pixels is not None:
            return self.pixels
        return self.grid.to_pixels(self.map, mode=mode)

    def save(self, path: str | Path, model: HookedViTLike | None = None) -> Path:
        """Writes the attribution to one ``.safetensors`` file (`caap_lens.attribution.storage`).

        Tensors in ``info`` are stored as tensors (``info.<key>``), its other values as JSON.

        Args:
            path: The file to write.
            model: The `HookedViT` that made it, to record its origin and config (optional).

        Returns:
            The path written.

        Example:
            >>> attribute("rise", model, images, n_masks=200).save("rise.safetensors")  # doctest: +SKIP
            >>> Attribution.load("rise.safetensors").to_pixels().shape  # doctest: +SKIP
            torch.Size([2, 64, 64])
        """
        tensors = {"map": self.map, "pixels": self.pixels, "targets": self.targets,
                   "source_output": self.source_output}
        tensors.update({f"info.{k}": v for k, v in self.info.items() if isinstance(v, Tensor)})
        info = {k: v for k, v in self.info.items() if not isinstance(v, Tensor)}
        meta = {"kind": "attribution", "method": self.method, "grid": self.grid,
                "settings": describe_settings(self.settings), "timing": self.timing, "info": info}
        return save_result(path, tensors, meta, model=model)

    @classmethod
    def load(cls, path: str | Path) -> "Attribution":
        """Reads an attribution written by `save` (settings as saved: options by name, tensors by shape)."""
        tensors, meta = load_result(path, kind="attribution")
        info = dict(meta.get("info", {}))
        info.update({k[len("info."):]: v for k, v in tensors.items() if k.startswith("info.")})
        return cls(map=tensors["map"], pixels=tensors.get("pixels"), method=meta["method"],
                   targets=tensors["targets"], grid=meta["grid"], settings=meta.get("settings", {}),
                   timing=meta.get("timing", {}), info=info, source_output=tensors.get("source_output"))

    def __repr__(self) -> str:
        pixels = f", pixels {tuple(self.pixels.shape)}" if self.pixels is not None else ""
        return f"Attribution({self.method}: map {tuple(self.map.shape)}{pixels}, {self.seconds:.2f}s)"


# ------------------------------------------------------------------------------------ the verb
def resolve_method(method: str | Method) -> tuple[str, Method]:
    """``(name, function)`` of a registered method name or a callable.

    Raises:
        ValueError: unknown name (the message lists the registered methods).
    """
    if isinstance(method, str):
        if method in RENAMED and method not in METHODS:
            warnings.warn(f"attribution method {method!r} is now {RENAMED[method]!r}", DeprecationWarning, stacklevel=3)
            method = RENAMED[method]
        if method not in METHODS:
            raise ValueError(f"unknown attribution method {method!r}: choose one of {', '.join(sorted(METHODS))}")
        return method, METHODS[method]
    if callable(method):
        return getattr(method, "__name__", type(method).__name__), method
    raise TypeError(f"method must be a name or a callable, got {type(method).__name__}")


def _describe(value: Any) -> Any:
    """A light, printable stand-in for a setting (tensors by shape, callables by name)."""
    if isinstance(value, Tensor):
        return f"tensor{tuple(value.shape)}"
    if callable(value) and not isinstance(value, type):
        return getattr(value, "__name__", type(value).__name__)
    return value


def _settings(name: str, fn: Method, options: dict[str, Any]) -> dict[str, Any]:
    """Binds ``options`` to the method's signature: a clear error for unknown options, defaults filled in."""
    signature = inspect.signature(fn)
    try:
        bound = signature.bind(None, None, None, **options)
    except TypeError as err:
        accepted = [n for n, p in list(signature.parameters.items())[3:] if p.default is not UNSET]
        raise TypeError(f"{name}: {err}; its options are {', '.join(accepted) or 'none'}") from None
    bound.apply_defaults()
    positional = list(signature.parameters)[:3]
    return {k: v for k, v in bound.arguments.items() if k not in positional and v is not UNSET}


def attribute(
    method: str | Method,
    model: HookedViTLike,
    images: Any,
    target: TargetLike = "predicted",
    **options: Any,
) -> Attribution:
    """Runs one attribution method and returns its maps.

    Args:
        method: A name in `METHODS` (``"caap"``, ``"raw_attention"``, ``"rollout"``,
            ``"attention_gradcam"``, ``"gradient_weighted_attention"``, ``"token_gradcam"``,
            ``"integrated_gradients"``, ``"occlusion"``, ``"rise"``, ``"attnlrp"``,
            ``"attribution_patching"``) or a function with the same signature. The old names
            ``"transformer_attribution"`` and ``"gradcam"`` still work, with a DeprecationWarning.
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``, or PIL images/arrays (preprocessed for you).
        target: ``"predicted"``, a class index or name, or one per image.
        **options: The method's own options (see each function).

    Returns:
        An `Attribution`.

    Raises:
        ValueError: unknown method, bad images or targets, or a method returning a map that is not
            on the model's grid.
        TypeError: an option the method does not take.

    Example:
        >>> attribute("integrated_gradients", model, images, target=3, n_steps=16).pixels.shape
        torch.Size([2, 64, 64])
    """
    name, fn = resolve_method(method)
    settings = _settings(name, fn, options)
    t0 = time.perf_counter()
    x = prepare_images(model, images)
    model = at_image_size(model, x)  # a dynamic-size model on the images' grid
    if getattr(fn, "resolves_targets", False):
        output = fn(model, x, target, **options)
        info = dict(output[2])
        targets, source_output = info.pop("targets"), info.pop("source_output")
        timing = dict(info.pop("timing", {}))
    else:
        with torch.inference_mode():
            source_output = model(x).float().cpu()
        score = settings.get("score", "logit")
        targets = resolve_targets(model, target, source_output, scores_index_classes(score), space=target_space(score))
        output = fn(model, x, targets, **options)
        info = dict(output[2]) if len(output) > 2 else {}
        timing = {}
    patch_map, pixel_map = output[0], output[1]
    timing["seconds"] = time.perf_counter() - t0
    patch_map = check_patch_map(model, patch_map, x.shape[0], name)
    if pixel_map is not None:
        expected = (x.shape[0], *model.cfg.image_size)
        if not isinstance(pixel_map, Tensor) or tuple(pixel_map.shape) != expected:
            shape = tuple(pixel_map.shape) if isinstance(pixel_map, Tensor) else type(pixel_map).__name__
            raise ValueError(f"{name} returned a pixel map of shape {shape}, expected {expected}")
        pixel_map = pixel_map.detach().float().cpu()
    return Attribution(
        map=patch_map,
        pixels=pixel_map,
        method=name,
        targets=targets,
        grid=model.grid,
        settings={k: _describe(v) for k, v in settings.items()},
        timing=timing,
        info=info,
        source_output=source_output,
    )


def check_patch_map(model: HookedViTLike, patch_map: Any, batch: int, name: str = "method") -> PatchMap:
    """A ``[batch, grid_h, grid_w]`` float32 CPU map, or a clear error naming the model's grid."""
    expected = (batch, *model.grid.grid_size)
    if not isinstance(patch_map, Tensor) or tuple(patch_map.shape) != expected:
        shape = tuple(patch_map.shape) if isinstance(patch_map, Tensor) else type(patch_map).__name__
        raise ValueError(
            f"{name} returned a map of shape {shape}, expected [batch, grid_h, grid_w] = {expected} "
            f"(the model's patch grid is {model.grid.grid_size})"
        )
    return patch_map.detach().float().cpu()


# ---------------------------------------------------------------------- helpers for the methods
def check_inputs(model: HookedViTLike, images: Any, targets: Any) -> tuple[Images, Targets]:
    """Checked images on the model's device and targets as a ``[batch]`` long CPU tensor."""
    images = check_not_empty(model.check_images(images))
    targets = torch.as_tensor(targets).long().cpu().reshape(-1)
    if targets.shape[0] != images.shape[0]:
        raise ValueError(f"got {targets.shape[0]} targets for {images.shape[0]} images: give one per image")
    return images, targets


@contextlib.contextmanager
def gradients_enabled() -> Iterator[None]:
    """Autograd on, even inside a caller's ``inference_mode`` or ``no_grad``."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def target_scores(output: Tensor, targets: Targets, score: ScoreLike) -> Float[Tensor, " batch"]:
    """The score of each row's target (differentiable when ``output`` is)."""
    # A copy made here is a normal tensor even if the caller's targets were made in inference mode.
    return resolve_score(score)(output, targets.to(output.device, copy=True))


def collect(store: dict[str, Tensor]) -> Callable[..., None]:
    """A forward hook that keeps each activation (the very tensor in the graph) under its hook name."""

    def keep(act: Tensor, *, hook: Any) -> None:
        store[hook.name] = act

    return keep


def grads_of(total: Tensor, acts: list[Tensor]) -> list[Tensor]:
    """``d total / d act`` for each activation; zeros where ``total`` does not depend on it.

    Uses ``torch.autograd.grad``, so model parameters never receive a ``.grad``.
    """
    grads = torch.autograd.grad(total, acts, allow_unused=True)
    return [torch.zeros_like(a) if g is None else g for a, g in zip(acts, grads)]


def context_image(model: HookedViTLike, images: Images, context: Any) -> Images:
    """The image context (as in CAAP) for each image, ``[batch, C, H, W]``.

    Raises:
        ValueError: ``context`` is an activation-level context (no image), or an image of the wrong shape.
    """
    ctx = resolve_context(context)
    if not hasattr(ctx, "image"):
        raise ValueError(
            f"context {getattr(ctx, 'name', context)!r} lives in activation space; input-level methods need "
            "an image context: 'mean', 'black', 'blur', 'noise', an image tensor or a callable"
        )
    with torch.no_grad():
        image = ctx.image(model, images)
    batch = images.shape[0]
    if image.ndim != 4 or tuple(image.shape[1:]) != tuple(images.shape[1:]) or image.shape[0] not in (1, batch):
        raise ValueError(
            f"context image must be [1 or batch, C, H, W] matching the images {tuple(images.shape)}, "
            f"got {tuple(image.shape)}"
        )
    return image.to(device=images.device, dtype=images.dtype).expand(images.shape[0], -1, -1, -1)


# --------------------------------------------------------------------------------------- CAAP
def caap_attribution(
    model: HookedViTLike,
    images: Images,
    targets: TargetLike,
    *,
    layers: tuple[int, int] | None = None,
    context: Any = "mean",
    hook: str = "resid_pre",
    score: ScoreLike = "logit",
    relative: bool = False,
    batch_size: int = 64,
    dtype: torch.dtype | None = None,
) -> tuple[PatchMap, None, dict[str, Any]]:
    """CAAP (Izadi et al., 2026, arXiv 2603.13652) in the baselines' call shape: its patch map, no pixels.

    `caap_lens.attribution.engine.caap` itself; the paper publishes no code, and the choices it leaves
    open (context, hook, window, score) are the options below. It resolves ``targets`` itself
    (``resolves_targets``): anything `caap` takes, e.g. ``"predicted"`` or a ``[batch]`` tensor.

    Options are `caap`'s, for patch maps (regions and heads give other shapes: call `caap` itself).

    Returns:
        ``(patch_map, None, {"targets", "source_output", "timing"})``.

    Example:
        >>> patch_map, _, info = caap_attribution(model, images, torch.tensor([3, 3]), layers=(1, 3))
    """
    settings = caap_settings(model, layers=layers, context=context, hook=hook, scores=[score], relative=relative,
                             batch_size=batch_size, dtype=dtype)
    result = caap_with(model, model.check_images(images), targets, settings, prepared=True)
    return result.map, None, {"targets": result.targets, "source_output": result.source_output,
                              "timing": result.timing}


caap_attribution.resolves_targets = True  # type: ignore[attr-defined]

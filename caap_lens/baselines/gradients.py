"""Gradient attributions: Grad-CAM on ViT tokens and Integrated Gradients on pixels.

* `gradcam` — Selvaraju et al. (2017), "Grad-CAM", as pytorch-grad-cam applies it to ViTs: take the
  activations ``A`` ``[batch, pos, d]`` at one hook and the gradient ``G`` of the target's score,
  drop the prefix tokens, weight each channel by its mean gradient over the patch tokens
  (``w_c = mean_p G[p, c]``) and keep ``ReLU(Σ_c w_c A[p, c])`` per patch. The default hook is
  ``blocks.{n-1}.ln1.hook_normalized`` — the output of the last block's first LayerNorm, the
  ``target_layers=[model.blocks[-1].norm1]`` that pytorch-grad-cam recommends for ViTs. (After the
  last block a CLS-pooled model's patch tokens reach the output through nothing, so their gradient
  would be zero.) Tokens go to the grid with the model's `PatchGrid`, never a hard-coded 14 x 14.
  Unlike pytorch-grad-cam the map is not min-max scaled.
* `integrated_gradients` — Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep
  Networks": ``IG_i(x) = (x_i - x'_i) ∫_0^1 ∂f(x' + α (x - x')) / ∂x_i dα`` with the integral as a
  trapezoid rule over ``n_steps`` equal intervals. The baseline ``x'`` is one of CAAP's image
  contexts (default ``"mean"``: the dataset-mean colour, an all-zero normalised input). The pixel map
  is the *signed* sum over colour channels; the patch map sums the pixel map over each patch, so both
  add up to ``≈ f(x) - f(x')`` (completeness, exact as ``n_steps`` grows).

Example:
    >>> patch_map, pixel_map = integrated_gradients(model, images, targets, n_steps=32)  # doctest: +SKIP
    >>> patch_map.sum((1, 2))  # ≈ score(images) - score(baseline)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from caap_lens.attribution.scores import ScoreLike
from caap_lens.baselines.base import (
    Images,
    MethodOutput,
    Targets,
    check_inputs,
    collect,
    context_image,
    gradients_enabled,
    grads_of,
    target_scores,
)


def default_gradcam_hook(model: Any) -> str:
    """``blocks.{n-1}.ln1.hook_normalized``: the last block's first LayerNorm output."""
    return f"blocks.{model.cfg.n_layers - 1}.ln1.hook_normalized"


def gradcam(
    model: Any,
    images: Images,
    targets: Targets,
    *,
    hook: str | None = None,
    score: ScoreLike = "logit",
    relu: bool = True,
) -> MethodOutput:
    """Grad-CAM over patch tokens at one hook point.

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``.
        targets: Class per image ``[batch]``.
        hook: Full hook name of a ``[batch, pos, d]`` activation (default `default_gradcam_hook`).
        score: What is differentiated (default the target logit).
        relu: Keep only positive evidence (Grad-CAM's ReLU); False gives the signed map.

    Returns:
        ``(patch_map [batch, grid_h, grid_w], None)``.

    Raises:
        ValueError: unknown hook, or one whose activation is not ``[batch, n_tokens, d]``.

    Example:
        >>> patch_map, _ = gradcam(model, images, targets, hook="blocks.3.hook_resid_post")  # doctest: +SKIP
    """
    images, targets = check_inputs(model, images, targets)
    name = hook if hook is not None else default_gradcam_hook(model)
    if name not in model.hook_dict:
        raise ValueError(f"unknown hook {name!r}: give a full hook name such as {default_gradcam_hook(model)!r}")
    store: dict[str, Tensor] = {}
    with gradients_enabled(), model.hooks(fwd_hooks=[(name, collect(store))]):
        x = images.detach().clone().requires_grad_(True)
        total = target_scores(model(x), targets, score).sum()
        if name not in store:
            raise ValueError(f"hook {name!r} did not run in a forward pass")
        act = store[name]
        if act.ndim != 3 or act.shape[1] != model.grid.n_tokens:
            raise ValueError(
                f"Grad-CAM needs a token activation [batch, {model.grid.n_tokens}, d]; "
                f"{name} is {tuple(act.shape)}"
            )
        (grad,) = grads_of(total, [act])
    n_prefix = model.grid.n_prefix_tokens
    tokens = act.detach().float()[:, n_prefix:]  # [batch, n_patches, d]
    weights = grad.detach().float()[:, n_prefix:].mean(dim=1, keepdim=True)  # [batch, 1, d]
    cam = (tokens * weights).sum(dim=-1)
    if relu:
        cam = cam.clamp(min=0)
    return model.grid.to_grid(cam), None


def trapezoid_weights(n_steps: int) -> tuple[Tensor, Tensor]:
    """``(alphas, weights)`` of the trapezoid rule on [0, 1] with ``n_steps`` intervals (``n_steps + 1`` points)."""
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    alphas = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
    weights = torch.full((n_steps + 1,), 1.0 / n_steps, dtype=torch.float64)
    weights[0] = weights[-1] = 0.5 / n_steps
    return alphas, weights


def integrated_gradients(
    model: Any,
    images: Images,
    targets: Targets,
    *,
    baseline: Any = "mean",
    n_steps: int = 32,
    internal_batch_size: int = 32,
    score: ScoreLike = "logit",
) -> MethodOutput:
    """Integrated Gradients from an image-context baseline, trapezoid rule.

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``.
        targets: Class per image ``[batch]``.
        baseline: An image context as in CAAP: ``"mean"`` (default), ``"black"``, ``"blur"``,
            ``"noise"``, a normalised image tensor ``[C, H, W]`` / ``[1 or batch, C, H, W]``, or a
            callable ``f(model, images) -> images``.
        n_steps: Trapezoid intervals along the path (``n_steps + 1`` gradient evaluations per image).
        internal_batch_size: Path points per forward/backward pass.
        score: What is integrated (default the target logit).

    Returns:
        ``(patch_map [batch, grid_h, grid_w], pixel_map [batch, H, W])``: signed; the pixel map sums the
        channels, the patch map sums the pixel map over each patch.

    Raises:
        ValueError: an activation-level context, or a baseline image of the wrong shape.

    Example:
        >>> patch_map, pixels = integrated_gradients(model, images, targets, baseline="black")  # doctest: +SKIP
    """
    images, targets = check_inputs(model, images, targets)
    if int(internal_batch_size) != internal_batch_size or internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be a positive int, got {internal_batch_size!r}")
    alphas, weights = trapezoid_weights(n_steps)
    base = context_image(model, images, baseline)
    batch, n_points = images.shape[0], n_steps + 1
    delta = images - base
    alphas, weights = alphas.to(images.device), weights.to(images.device)
    with gradients_enabled():
        total_grad = torch.zeros(images.shape, dtype=torch.float64, device=images.device)
        for begin in range(0, batch * n_points, internal_batch_size):
            rows = torch.arange(begin, min(begin + internal_batch_size, batch * n_points), device=images.device)
            image_index, step = rows // n_points, rows % n_points
            alpha = alphas[step].to(images.dtype).view(-1, 1, 1, 1)
            x = (base[image_index] + alpha * delta[image_index]).detach().requires_grad_(True)
            total = target_scores(model(x), targets[image_index.cpu()], score).sum()
            (grad,) = grads_of(total, [x])
            weighted = grad.detach().double() * weights[step].view(-1, 1, 1, 1)
            total_grad.index_add_(0, image_index, weighted)
    attributions = (delta.double() * total_grad).float()  # [batch, C, H, W]
    pixels = attributions.sum(dim=1)
    return model.grid.pool_pixels(pixels, reduce="sum"), pixels

"""Gradient attributions: Grad-CAM on ViT tokens and Integrated Gradients on pixels.

* `token_gradcam` — Selvaraju et al. (2017), "Grad-CAM", as pytorch-grad-cam applies it to ViTs:
  take the activations ``A`` ``[batch, pos, d]`` at one hook and the gradient ``G`` of the target's
  score, drop the prefix tokens, weight each channel by its mean gradient over the patch tokens
  (``w_c = mean_p G[p, c]``) and keep ``ReLU(Σ_c w_c A[p, c])`` per patch. The default hook is
  ``blocks.{n-1}.ln1.hook_normalized`` — the output of the last block's first LayerNorm, the
  ``target_layers=[model.blocks[-1].norm1]`` that pytorch-grad-cam recommends for ViTs. (After the
  last block a CLS-pooled model's patch tokens reach the output through nothing, so their gradient
  would be zero.) Tokens go to the grid with the model's `PatchGrid`, never a hard-coded 14 x 14.
  Unlike pytorch-grad-cam the map is neither min-max scaled nor upsampled (tested equal to
  pytorch-grad-cam's ``GradCAM`` before its scaling). Formerly called ``gradcam`` (that name still
  works, with a DeprecationWarning); Chefer et al.'s Grad-CAM on attention is
  `caap_lens.baselines.attention.attention_gradcam`.
* `integrated_gradients` — Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep
  Networks": ``IG_i(x) = (x_i - x'_i) ∫_0^1 ∂f(x' + α (x - x')) / ∂x_i dα`` with the integral as a
  trapezoid rule, by default with as many steps as keep the completeness error below 1 % (see the
  function). The baseline ``x'`` is one of CAAP's image contexts (default ``"mean"``: the
  dataset-mean colour, an all-zero normalised input). The pixel map is the *signed* sum over colour
  channels; the patch map sums the pixel map over each patch, so both add up to ``≈ f(x) - f(x')``.

Example:
    >>> patch_map, pixel_map, info = integrated_gradients(model, images, targets)
    >>> info["completeness_error"].shape  # |Σ IG - (f(x) - f(x'))| / |f(x) - f(x')|, per image
    torch.Size([2])
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from caap_lens._deprecation import UNSET, renamed
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
from caap_lens.model.protocol import HookedViTLike
from caap_lens.model.sizing import at_image_size


def default_gradcam_hook(model: HookedViTLike) -> str:
    """``blocks.{n-1}.ln1.hook_normalized``: the last block's first LayerNorm output."""
    return f"blocks.{model.cfg.n_layers - 1}.ln1.hook_normalized"


def token_gradcam(
    model: HookedViTLike,
    images: Images,
    targets: Targets,
    *,
    hook_name: str | None = None,
    score: ScoreLike = "logit",
    relu: bool = True,
    hook: Any = UNSET,
) -> MethodOutput:
    """Grad-CAM over patch tokens at one hook point (Selvaraju et al., 2017; pytorch-grad-cam's ViT recipe).

    Equal to pytorch-grad-cam's ``GradCAM(target_layers=[blocks[-1].norm1])`` raw CAM (tested); it
    differs in returning the map on the patch grid, unscaled (pytorch-grad-cam min-max scales it and
    resizes it to the input).

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``.
        targets: Class per image ``[batch]``.
        hook_name: Full TransformerLens hook-point name of a ``[batch, pos, d]`` activation
            (default `default_gradcam_hook`); ``hook=`` is its deprecated old name (in caap_lens
            ``hook`` is a short name such as ``"resid_pre"``).
        score: What is differentiated (default the target logit).
        relu: Keep only positive evidence (Grad-CAM's ReLU); False gives the signed map.

    Returns:
        ``(patch_map [batch, grid_h, grid_w], None)``.

    Raises:
        ValueError: unknown hook, or one whose activation is not ``[batch, n_tokens, d]``.

    Example:
        >>> patch_map, _ = token_gradcam(model, images, targets, hook_name="blocks.3.hook_resid_post")
    """
    name = renamed("token_gradcam", "hook", "hook_name", old_value=hook, new_value=hook_name, default=None)
    model = at_image_size(model, images)  # a dynamic-size model on the images' grid
    images, targets = check_inputs(model, images, targets)
    name = name if name is not None else default_gradcam_hook(model)
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


def gradcam(model: HookedViTLike, images: Images, targets: Targets, **options: Any) -> MethodOutput:
    """Deprecated name of `token_gradcam`."""
    warnings.warn("'gradcam' is now 'token_gradcam' (Grad-CAM on tokens); Chefer et al.'s Grad-CAM on "
                  "attention is 'attention_gradcam'", DeprecationWarning, stacklevel=2)
    return token_gradcam(model, images, targets, **options)


def trapezoid_weights(n_steps: int) -> tuple[Tensor, Tensor]:
    """``(alphas, weights)`` of the trapezoid rule on [0, 1] with ``n_steps`` intervals (``n_steps + 1`` points)."""
    if isinstance(n_steps, bool) or int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    alphas = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
    weights = torch.full((n_steps + 1,), 1.0 / n_steps, dtype=torch.float64)
    weights[0] = weights[-1] = 0.5 / n_steps
    return alphas, weights


def _path_gradients(
    model: HookedViTLike,
    base: Images,
    delta: Images,
    targets: Targets,
    image_index: Tensor,
    alphas: Tensor,
    weights: Tensor,
    internal_batch_size: int,
    score: ScoreLike,
) -> tuple[Tensor, Tensor]:
    """``Σ_rows weight · ∂score/∂x`` at ``x = base + alpha · delta`` per image, and each row's score.

    Rows are ``(image_index[r], alphas[r], weights[r])``; returns ``(grad_sum [batch, C, H, W] float64,
    scores [rows] float64)``.
    """
    device = base.device
    with gradients_enabled():
        total_grad = torch.zeros(base.shape, dtype=torch.float64, device=device)
        scores = torch.empty(image_index.shape[0], dtype=torch.float64)
        for begin in range(0, image_index.shape[0], internal_batch_size):
            rows = slice(begin, min(begin + internal_batch_size, image_index.shape[0]))
            idx = image_index[rows].to(device)
            alpha = alphas[rows].to(device=device, dtype=base.dtype).view(-1, 1, 1, 1)
            x = (base[idx] + alpha * delta[idx]).detach().requires_grad_(True)
            row_scores = target_scores(model(x), targets[image_index[rows]], score)
            (grad,) = grads_of(row_scores.sum(), [x])
            weighted = grad.detach().double() * weights[rows].to(device).view(-1, 1, 1, 1)
            total_grad.index_add_(0, idx, weighted)
            scores[rows] = row_scores.detach().double().cpu()
    return total_grad, scores


def integrated_gradients(
    model: HookedViTLike,
    images: Images,
    targets: Targets,
    *,
    baseline: Any = "mean",
    n_steps: int | None = None,
    tolerance: float = 0.01,
    max_steps: int = 512,
    internal_batch_size: int = 32,
    score: ScoreLike = "logit",
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Integrated Gradients (Sundararajan et al., 2017) from an image-context baseline, trapezoid rule.

    **Completeness.** The attributions of an image add up to ``f(x) - f(x')`` only in the limit of
    many steps. The *convergence delta* (Captum's name) ``Σ_i IG_i - (f(x) - f(x'))`` and the
    *completeness error* ``|delta| / max(|f(x) - f(x')|, 1e-4)`` are reported per image in
    ``Attribution.info``. By default (``n_steps=None``) the number of steps is chosen per image: start
    at 32 trapezoid intervals and halve them (the new midpoints only: earlier gradients are reused)
    until the completeness error is at most ``tolerance`` (1 %) or ``max_steps`` is reached. A fixed
    ``n_steps`` gives the plain trapezoid rule.

    Differs from Captum's ``IntegratedGradients`` (default: Gauss–Legendre points, a fixed
    ``n_steps=50``, the delta on request) in the quadrature (trapezoid, adaptive by default) and in
    summing the channels into a pixel map; with the same points and weights both give the same
    attributions (tested against Captum's ``riemann_trapezoid``).

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``.
        targets: Class per image ``[batch]``.
        baseline: An image context as in CAAP: ``"mean"`` (default), ``"black"``, ``"blur"``,
            ``"noise"``, a normalised image tensor ``[C, H, W]`` / ``[1 or batch, C, H, W]``, or a
            callable ``f(model, images) -> images``.
        n_steps: Trapezoid intervals along the path (``n_steps + 1`` gradient evaluations per image);
            None (default) for the adaptive rule above.
        tolerance: Target completeness error of the adaptive rule.
        max_steps: Most intervals the adaptive rule may use (32 doubled: 32, 64, ..., <= max_steps).
        internal_batch_size: Path points per forward/backward pass.
        score: What is integrated (default the target logit).

    Returns:
        ``(patch_map [batch, grid_h, grid_w], pixel_map [batch, H, W], info)``: signed; the pixel map
        sums the channels, the patch map sums the pixel map over each patch; ``info`` holds
        ``n_steps``, ``convergence_delta`` and ``completeness_error``, each ``[batch]``.

    Raises:
        ValueError: an activation-level context, a baseline image of the wrong shape, bad steps.

    Example:
        >>> result = attribute("integrated_gradients", model, images)
        >>> result.info["completeness_error"].max() <= 0.01
        tensor(True)
    """
    model = at_image_size(model, images)  # a dynamic-size model on the images' grid
    images, targets = check_inputs(model, images, targets)
    if isinstance(internal_batch_size, bool) or int(internal_batch_size) != internal_batch_size or internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be a positive int, got {internal_batch_size!r}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    adaptive = n_steps is None
    start_steps = 32 if adaptive else n_steps
    if adaptive and (isinstance(max_steps, bool) or int(max_steps) != max_steps or max_steps < start_steps):
        raise ValueError(f"max_steps must be an int >= {start_steps}, got {max_steps!r}")
    alphas, weights = trapezoid_weights(start_steps)
    base = context_image(model, images, baseline)
    batch, n_points = images.shape[0], start_steps + 1
    delta = images - base
    image_index = torch.arange(batch).repeat_interleave(n_points)
    steps_of = torch.full((batch,), start_steps, dtype=torch.long)
    # Trapezoid sum split as (endpoints/2 + interior) / n so that halving the intervals reuses it.
    ends = torch.zeros(n_points, dtype=torch.float64)
    ends[0] = ends[-1] = 0.5
    interior = torch.ones(n_points, dtype=torch.float64)
    interior[0] = interior[-1] = 0.0
    end_grad, scores = _path_gradients(model, base, delta, targets, image_index, alphas.repeat(batch),
                                       ends.repeat(batch), internal_batch_size, score)
    inner_grad, _ = _path_gradients(model, base, delta, targets, image_index[interior.repeat(batch) > 0],
                                    alphas.repeat(batch)[interior.repeat(batch) > 0],
                                    torch.ones(int((interior > 0).sum()) * batch, dtype=torch.float64),
                                    internal_batch_size, score) if start_steps > 1 else (
        torch.zeros_like(end_grad), None)
    scores = scores.view(batch, n_points)
    gap = scores[:, -1] - scores[:, 0]

    def completeness(grad_sum: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attributions = delta.double() * grad_sum / steps_of.to(grad_sum.device).double().view(-1, 1, 1, 1)
        conv = attributions.flatten(1).sum(1).cpu() - gap
        return attributions, conv, conv.abs() / gap.abs().clamp(min=1e-4)

    attributions, conv, error = completeness(end_grad + inner_grad)
    while adaptive:
        todo = torch.nonzero((error > tolerance) & (steps_of * 2 <= max_steps)).flatten()
        if todo.numel() == 0:
            break
        rows_img, rows_alpha = [], []
        for i in todo.tolist():
            n = int(steps_of[i])
            rows_img.append(torch.full((n,), i, dtype=torch.long))
            rows_alpha.append((2 * torch.arange(n, dtype=torch.float64) + 1) / (2 * n))
        rows_img_t = torch.cat(rows_img)
        extra, _ = _path_gradients(model, base, delta, targets, rows_img_t, torch.cat(rows_alpha),
                                   torch.ones(rows_img_t.shape[0], dtype=torch.float64), internal_batch_size, score)
        inner_grad = inner_grad + extra
        steps_of[todo] *= 2
        attributions, conv, error = completeness(end_grad + inner_grad)
    pixels = attributions.float().sum(dim=1)
    info = {"n_steps": steps_of, "convergence_delta": conv.float(), "completeness_error": error.float()}
    return model.grid.pool_pixels(pixels, reduce="sum"), pixels, info

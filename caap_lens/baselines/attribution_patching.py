"""Attribution patching (AtP): the first-order, gradient approximation of CAAP.

Nanda (2023), "Attribution Patching: Activation Patching At Industrial Scale": the effect of patching
a node ``a`` from a clean (here: source) run into a corrupted (here: context) run is approximated by
``(a_src - a_ctx) · ∂score/∂a``, with the gradient taken once, on the corrupted run. For CAAP's
patch ``p`` (token ``t_p``) over the window's layers::

    AtP(p) = Σ_{l in window} (a_src(l, t_p) - a_ctx(l, t_p)) · ∂score/∂a(l, t_p) |_context run

It estimates CAAP with ``relative=True`` (the patched score minus the context's own score), with the
same window, hook, context and score — and costs one source forward, one context forward and one
backward for *all* patches, against one forward per patch for CAAP. Like CAAP, the context run
resumes at the window start (``model(ctx_resid, start_at_layer=start)``) from the context's residual
stream there (`caap_lens.attribution.contexts`, activation contexts included).

What it is, exactly:

* For a one-layer window it is the exact derivative ``g_p'(0)`` of ``g_p(ε)`` = the score of the
  context run with ``a_ctx + ε (a_src - a_ctx)`` patched in at ``t_p`` — CAAP(relative) is
  ``g_p(1) - g_p(0)``, so AtP is exact when the score is linear along that path.
* For a longer window it is the linearisation of *adding* each layer's difference independently
  (Nanda's AtP over a set of nodes). CAAP *overwrites* ``t_p`` at every window layer, which cuts
  ``t_p``'s own residual path between window layers; the gradient still follows it, so AtP counts
  that path once per window layer and tends to overshoot CAAP's magnitude on long ``resid_pre``
  windows. How well it *ranks* patches is what `fidelity` measures.

Example:
    >>> patch_map, _ = attribution_patching(model, images, targets, layers=(1, 3))
    >>> -1 <= fidelity(model, images, layers=(1, 3))["spearman_mean"] <= 1
    True
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from caap_lens.attribution.engine import caap_settings
from caap_lens.attribution.runner import source_run
from caap_lens.attribution.scores import ScoreLike
from caap_lens.attribution.targets import TargetLike
from caap_lens.baselines.base import (
    Images,
    MethodOutput,
    Targets,
    attribute,
    check_inputs,
    collect,
    gradients_enabled,
    grads_of,
    target_scores,
)
from caap_lens.model.protocol import HookedViTLike
from caap_lens.model.sizing import at_image_size
from caap_lens.patching import patchable_hook_name
from caap_lens.stats import pearson, spearman


def attribution_patching(
    model: HookedViTLike,
    images: Images,
    targets: Targets,
    *,
    layers: tuple[int, int] | None = None,
    context: Any = "mean",
    hook: str = "resid_pre",
    score: ScoreLike = "logit",
) -> MethodOutput:
    """AtP estimate of CAAP(relative=True) for every patch, from one backward pass (Nanda, 2023).

    Nanda's AtP on CAAP's nodes (a patch's token over the window's layers); there is no reference
    code for ViTs to differ from: it is tested against finite differences of the patched run.

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``.
        targets: Class per image ``[batch]``.
        layers: Window ``(start, stop)`` as in `caap` (default `default_window`).
        context: Neutral context as in `caap` (image or activation context; default ``"mean"``).
        hook: Patched activation as in `caap` (default ``"resid_pre"``).
        score: Score as in `caap` (default ``"logit"``).

    Returns:
        ``(patch_map [batch, grid_h, grid_w], None)``: estimated ``score(patched) - score(context)``.

    Example:
        >>> patch_map, _ = attribution_patching(model, images, targets, layers=(2, 3), hook="z")
    """
    model = at_image_size(model, images)  # a dynamic-size model on the images' grid
    images, targets = check_inputs(model, images, targets)
    settings = caap_settings(model, layers=layers, context=context, hook=hook, scores=[score])  # as CAAP checks them
    (start, stop), hook, ctx = settings.layers, settings.hook, settings.context
    names = [patchable_hook_name(hook, layer) for layer in range(start, stop)]
    with torch.inference_mode():
        _, source = source_run(model, images, set(names))
    with torch.no_grad():
        ctx_resid = ctx.residuals(model, images, [start])[start]
    store: dict[str, Tensor] = {}
    with gradients_enabled(), model.hooks(fwd_hooks=[(name, collect(store)) for name in names]):
        resid = ctx_resid.detach().clone().requires_grad_(True)
        total = target_scores(model(resid, start_at_layer=start), targets, score).sum()
        acts = [store[name] for name in names]
        grads = grads_of(total, acts)
    per_token = torch.zeros(images.shape[0], model.grid.n_tokens, dtype=torch.float64, device=images.device)
    for name, act, grad in zip(names, acts, grads):
        delta = source[name].double() - act.detach().double()
        per_token += (delta * grad.detach().double()).flatten(2).sum(dim=-1)
    return model.grid.to_grid(per_token[:, model.grid.n_prefix_tokens :].float()), None


# -------------------------------------------------------------------------------------- fidelity
def fidelity(
    model: HookedViTLike,
    images: Any,
    target: TargetLike = "predicted",
    *,
    layers: tuple[int, int] | None = None,
    context: Any = "mean",
    hook: str = "resid_pre",
    score: ScoreLike = "logit",
    batch_size: int = 64,
) -> dict[str, Any]:
    """How well attribution patching reproduces exact CAAP (``relative=True``) with the same settings.

    Args:
        model: A `HookedViT`.
        images: Images as for `attribute`.
        target: As for `attribute`.
        layers: Window shared by both methods (as in `caap`).
        context: Neutral context shared by both methods (as in `caap`).
        hook: Patched activation shared by both methods (as in `caap`).
        score: Score shared by both methods (as in `caap`).
        batch_size: CAAP's patched runs per forward pass.

    Returns:
        ``{"spearman": [batch], "pearson": [batch], "spearman_mean": float, "pearson_mean": float,
        "n_defined": int, "n_undefined": int, "atp": Attribution, "caap": Attribution, "speedup": caap
        seconds / AtP seconds}``; the means leave out images whose correlation is undefined (a constant
        map) and ``n_undefined`` counts them.

    Example:
        >>> fidelity(model, images, layers=(1, 2))["pearson"].shape  # one per image
        torch.Size([2])
    """
    shared = {"layers": layers, "context": context, "hook": hook, "score": score}
    atp = attribute("attribution_patching", model, images, target, **shared)
    exact = attribute("caap", model, images, atp.targets, relative=True, batch_size=batch_size, **shared)
    rho, r = spearman(atp.map, exact.map), pearson(atp.map, exact.map)
    return {
        "spearman": rho,
        "pearson": r,
        "spearman_mean": float(rho.nanmean()),
        "pearson_mean": float(r.nanmean()),
        "n_defined": int((~rho.isnan()).sum()),
        "n_undefined": int(rho.isnan().sum()),
        "atp": atp,
        "caap": exact,
        "speedup": exact.seconds / max(atp.seconds, 1e-12),
    }

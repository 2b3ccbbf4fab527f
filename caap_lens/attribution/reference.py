"""The naive reference implementation of CAAP: one full-depth ``run_with_hooks`` call per patch.

This is the definition the fast runner is tested against, and the baseline it is benchmarked
against. It shares nothing with the runner but the patching hooks: no prefix cache, no batching of
patches, no window forks.

Example:
    >>> slow = caap_naive(model, images, target=3, layers=(1, 3))
    >>> torch.allclose(slow, caap(model, images, 3, layers=(1, 3)).map, atol=1e-4)
    True
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from caap_lens.attribution.contexts import ImageContext, resolve_context
from caap_lens.attribution.scores import scores_index_classes, ScoreLike, resolve_score, target_space
from caap_lens.attribution.targets import resolve_targets
from caap_lens.model.protocol import HookedViTLike
from caap_lens.model.sizing import at_image_size
from caap_lens.patching import patch_hooks, resolve_hook, token_mask_for_patches


def caap_naive(
    model: HookedViTLike,
    images: Tensor,
    target: Any = "predicted",
    layers: tuple[int, int] = (0, 1),
    context: Any = "mean",
    hook: str = "resid_pre",
    score: ScoreLike = "logit",
) -> Float[Tensor, "batch gh gw"]:
    """CAAP by brute force: for every image and patch, one hooked run of the whole model.

    Image contexts run from the context image at full depth; activation contexts (which only exist
    at the window start) run from the context residual with ``start_at_layer``.
    """
    model = at_image_size(model, images)
    hook = resolve_hook(hook)
    start, stop = layers
    score_fn = resolve_score(score)
    ctx = resolve_context(context)
    grid = model.grid
    out = torch.empty(images.shape[0], grid.n_patches)
    with torch.inference_mode():
        source_out, cache = model.run_with_cache(images)
        targets = resolve_targets(model, target, source_out, scores_index_classes(score), space=target_space(score))
        if isinstance(ctx, ImageContext):
            ctx_input = ctx.image(model, images).expand(images.shape[0], -1, -1, -1)
        else:
            ctx_input = ctx.residuals(model, images, [start])[start]
        for b in range(images.shape[0]):
            for patch in range(grid.n_patches):
                mask = token_mask_for_patches(grid, torch.tensor([patch]))
                source = {k: v[b : b + 1] for k, v in cache.items()}
                hooks = patch_hooks(source, hook, range(start, stop), mask)
                if isinstance(ctx, ImageContext):
                    logits = model.run_with_hooks(ctx_input[b : b + 1], fwd_hooks=hooks)
                else:
                    logits = model.run_with_hooks(ctx_input[b : b + 1], start_at_layer=start, fwd_hooks=hooks)
                out[b, patch] = score_fn(logits.float(), targets[b : b + 1])[0]
    return grid.to_grid(out)

"""CAAP exact through the window, with the rest of the network replaced by its first-order expansion.

Exact CAAP runs every (image, patch) row through the window ``[start, stop)`` *and* through the
unpatched blocks after it, ``[stop, n)``; on the default window of a 12-layer model half of a row's
blocks come after the window, where nothing is patched. `linear_tail` keeps the window exact (the
same batched, prefix-cached patched runs as `caap`, stopped at ``stop``) and replaces the tail by a
Taylor expansion around the context run, taken once per image:

    score(row) ≈ s_ctx + ⟨∂s/∂resid_stop |ctx, resid_stop(row) − resid_stop(ctx)⟩

where ``resid_stop`` is the whole residual stream ``[pos, d_model]`` before block ``stop`` and the
gradient is taken at the *context* run's residual there (one forward and backward pass of blocks
``[stop, n)`` per image and target, shared by all its patches). When ``stop = n_layers`` there is no
tail: the score is computed exactly from the output, as in `caap`.

Cost, in transformer-block evaluations for ``rows = batch × n_patches``:

* exact `caap`: ``rows × (n_layers − start)``;
* linear tail: ``rows × (stop − start)`` plus one forward and one backward pass of blocks
  ``[stop, n)`` per image (a backward pass costs about two forwards), plus an inner product of
  ``pos × d_model`` numbers per row.

It is an approximation, and a poor one for CAAP: a patched token's residual at ``stop`` lies far from
the context's, outside the expansion's range. On the real DINOv2-S/14 at the default window [4, 8) it
ranked patches at Spearman 0.38 against exact CAAP at a 1.64x speed-up (``benchmarks/bench_linear_tail.py``,
docs/benchmarks.md), so it is not a mode of `caap` and not part of the library: it lives with the benchmark that measured it
(``benchmarks/``), so the result can be reproduced.

Example:
    >>> import torch
    >>> from caap_lens import HookedViT, caap
    >>> model = HookedViT.from_timm("vit_tiny_patch16_224", depth=4, img_size=32, num_classes=3)
    >>> images = torch.zeros(1, 3, 32, 32)
    >>> result = linear_tail(model, images, target=0, layers=(1, 2))
    >>> result.map.shape, result.timing["block_evals"]
    (torch.Size([1, 2, 2]), 4)
    >>> exact = caap(model, images, target=0, layers=(1, 4))
    >>> torch.allclose(linear_tail_map(model, images, target=0, layers=(1, 4)), exact.map, atol=1e-5)
    True
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from caap_lens.attribution.contexts import resolve_context
from caap_lens.attribution.engine import check_batch_size, check_window, default_window, prepare_images
from caap_lens.attribution.runner import Window, finish, model_lock, run_blocks, source_run
from caap_lens.attribution.scores import ScoreLike, resolve_score, score_name, scores_index_classes
from caap_lens.attribution.targets import TargetLike, resolve_targets
from caap_lens.attribution.units import patch_units
from caap_lens.patching import patch_from_source, patchable_hook_name, resolve_hook


@dataclass
class LinearTailResult:
    """A CAAP map whose tail after the window is linearised.

    Attributes:
        map: Approximate score per patch ``[batch, grid_h, grid_w]`` (exact when ``stop = n_layers``).
        targets: Class index per image ``[batch]``.
        source_score: The source run's score ``[batch]``.
        context_score: The unpatched context run's score ``[batch]`` (the expansion point).
        settings: The choices that produced the map.
        timing: ``seconds`` (total), ``window_seconds`` (patched rows through the window),
            ``tail_seconds`` (the gradient pass), ``rows``, ``block_evals`` (blocks evaluated for the
            patched rows) and ``tail_block_evals`` (blocks run forward and backward for the gradient).
    """

    map: Float[Tensor, "batch gh gw"]
    targets: Int[Tensor, " batch"]
    source_score: Float[Tensor, " batch"]
    context_score: Float[Tensor, " batch"]
    settings: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)


def _score_rows(fn: Any, output: Tensor, targets: Tensor) -> Tensor:
    values = fn(output, targets)
    if not isinstance(values, Tensor) or values.numel() != output.shape[0]:
        got = f"shape {tuple(values.shape)}" if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"score returned {got} for {output.shape[0]} rows; it must give one value per row")
    return values.reshape(output.shape[0]).float()


def tail_gradient(
    model: Any, resid: Float[Tensor, "batch pos d_model"], stop: int, score_fn: Any, targets: Tensor
) -> tuple[Float[Tensor, " batch"], Float[Tensor, "batch pos d_model"]]:
    """The score of an unpatched run from block ``stop`` and its gradient w.r.t. the whole residual there.

    One forward and backward pass of blocks ``[stop, n)`` and the readout for the whole batch (rows are
    independent, so the gradient of the summed score is each row's own gradient). The gradient is
    taken w.r.t. the residual only (``torch.autograd.grad``): no ``.grad`` is left on the parameters.

    Example:
        >>> from caap_lens import HookedViT
        >>> model = HookedViT.from_timm("vit_tiny_patch16_224", depth=2, img_size=32, num_classes=3)
        >>> resid = model(torch.zeros(1, 3, 32, 32), stop_at_layer=1)
        >>> value, grad = tail_gradient(model, resid, 1, resolve_score("logit"), torch.tensor([0]))
        >>> value.shape, grad.shape, any(p.grad is not None for p in model.parameters())
        (torch.Size([1]), torch.Size([1, 5, 192]), False)
    """
    with torch.inference_mode(False), torch.enable_grad():
        point = resid.detach().clone().requires_grad_(True)  # a normal tensor, even from inference mode
        targets = targets.clone()  # scores may save their index tensor for backward
        # output_from evaluates the last block for the readout tokens only; its keys and values still
        # read every token, so this is the gradient w.r.t. the full residual at ``stop``
        values = _score_rows(score_fn, finish(model, point, stop).float(), targets)
        (grad,) = torch.autograd.grad(values.sum(), point)
    return values.detach(), grad.detach()


def linear_tail(
    model: Any,
    images: Any,
    target: TargetLike = "predicted",
    *,
    layers: Window | None = None,
    context: Any = "mean",
    hook: str = "resid_pre",
    score: ScoreLike = "logit",
    relative: bool = False,
    batch_size: int = 64,
) -> LinearTailResult:
    """CAAP patch map, exact through the window ``[start, stop)``, first-order after it.

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]`` (or PIL images/arrays), as in `caap`.
        target: As in `caap`.
        layers: The window ``(start, stop)``; default the middle third, as in `caap`.
        context: The neutral context, as in `caap`.
        hook: The activation copied at every layer of the window, as in `caap`.
        score: As in `caap`; it must be differentiable in the output.
        relative: Subtract the context's score (the map is then the linear term alone).
        batch_size: Patched rows per forward pass through the window.

    Returns:
        A `LinearTailResult`; its ``map`` equals ``caap(...).map`` when ``stop = n_layers``.

    Raises:
        ValueError: a bad window, batch size, hook, context, target or score (as `caap`).
    """
    t0 = time.perf_counter()
    batch_size = check_batch_size(batch_size)
    start, stop = check_window(model, layers if layers is not None else default_window(model.cfg.n_layers))
    hook = resolve_hook(hook)
    score_fn = resolve_score(score)
    ctx = resolve_context(context)
    n = model.cfg.n_layers
    with model_lock(model):
        with torch.inference_mode():
            x = prepare_images(model, images)
            batch = x.shape[0]
            names = {patchable_hook_name(hook, layer) for layer in range(start, stop)}
            source_out, source = source_run(model, x, names)
            targets = resolve_targets(model, target, source_out, scores_index_classes(score))
            source_score = _score_rows(score_fn, source_out.float(), targets.to(source_out.device)).cpu()
            ctx_start = ctx.residuals(model, x, [start])[start]
            ctx_stop = run_blocks(model, ctx_start, start, stop)  # the unpatched context run, to ``stop``
        device_targets = targets.to(ctx_stop.device)
        t1 = time.perf_counter()
        if stop < n:
            ctx_score, grad = tail_gradient(model, ctx_stop, stop, score_fn, device_targets)
        else:
            with torch.inference_mode():
                ctx_score = _score_rows(score_fn, finish(model, ctx_stop, stop).float(), device_targets)
            grad = None
        t2 = time.perf_counter()
        units = patch_units(model.grid)
        n_units = units.n_units
        n_rows = batch * n_units
        values = torch.empty(n_rows)
        with torch.inference_mode():
            for begin in range(0, n_rows, batch_size):
                rows = torch.arange(begin, min(begin + batch_size, n_rows))
                image_index, unit_index = rows // n_units, rows % n_units
                mask = units.rows(image_index, unit_index).to(model.device)
                image_index = image_index.to(model.device)
                resid = ctx_start[image_index]
                for layer in range(start, stop):
                    name = patchable_hook_name(hook, layer)
                    with model.hooks(fwd_hooks=[(name, patch_from_source(source[name], mask, image_index))]):
                        resid = run_blocks(model, resid, layer, layer + 1)
                if grad is None:  # no tail: the exact score, as `caap` computes it
                    chunk = _score_rows(score_fn, finish(model, resid, stop).float(), device_targets[image_index])
                else:
                    delta = (resid - ctx_stop[image_index]).float()
                    chunk = ctx_score[image_index] + (delta * grad[image_index]).sum(dim=(1, 2))
                values[begin : begin + len(rows)] = chunk.cpu()
        t3 = time.perf_counter()
    ctx_score = ctx_score.float().cpu()
    values = values.reshape(batch, n_units)
    if relative:
        values = values - ctx_score[:, None]
    return LinearTailResult(
        map=model.grid.to_grid(values),
        targets=targets,
        source_score=source_score,
        context_score=ctx_score,
        settings={
            "layers": (start, stop), "context": getattr(ctx, "name", type(ctx).__name__), "hook": hook,
            "score": score_name(score), "relative": relative, "batch_size": batch_size, "tail": "linear",
        },
        timing={
            "seconds": time.perf_counter() - t0,
            "window_seconds": t3 - t2,
            "tail_seconds": t2 - t1,
            "rows": n_rows,
            "block_evals": n_rows * (stop - start),
            "tail_block_evals": batch * (n - stop),
        },
    )


def linear_tail_map(
    model: Any,
    images: Any,
    target: TargetLike = "predicted",
    *,
    layers: Window | None = None,
    context: Any = "mean",
    hook: str = "resid_pre",
    score: ScoreLike = "logit",
    relative: bool = False,
    batch_size: int = 64,
) -> Float[Tensor, "batch gh gw"]:
    """The map of `linear_tail` alone (arguments as there).

    Example:
        >>> from caap_lens import HookedViT
        >>> model = HookedViT.from_timm("vit_tiny_patch16_224", depth=2, img_size=32, num_classes=3)
        >>> linear_tail_map(model, torch.zeros(2, 3, 32, 32), target=1, layers=(0, 1)).shape
        torch.Size([2, 2, 2])
    """
    return linear_tail(
        model, images, target, layers=layers, context=context, hook=hook, score=score, relative=relative,
        batch_size=batch_size,
    ).map

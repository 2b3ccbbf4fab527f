"""`caap`: Causal Attribution via Activation Patching, with every open choice made explicit.

For each image patch, CAAP runs the model on a neutral *context*, but at every layer of an
intermediate *window* copies in the *source* image's activation at that patch's token; the *score* of
the target class in that run is the patch's attribution (Izadi et al., 2026). The paper leaves four
choices open; each is an argument here, with a default and a reason:

* ``layers=(start, stop)`` — the window of blocks patched. Default: the middle third,
  ``(n // 3, 2n // 3)`` ([4, 8) on 12 layers): early layers have not yet formed class evidence and late
  layers have mixed tokens globally, which is the paper's stated reason for intermediate layers.
* ``context`` — the neutral context (see `caap_lens.attribution.contexts`). Default ``"mean"``: the
  dataset-mean colour, an all-zero normalised input that carries no edge, texture or colour cue.
* ``hook`` — the activation copied (see `caap_lens.patching`). Default ``"resid_pre"``: the whole
  residual stream of the token, i.e. everything the source had at that patch when the window opens.
* ``score`` — see `caap_lens.attribution.scores`. Default ``"logit"``: linear and unsaturated,
  so maps of confidently classified images are not flattened by a softmax; ``relative=True``
  subtracts the context's own score (the ranking is unchanged).

Example:
    >>> model = HookedViT.from_timm("vit_tiny_patch16_224", depth=6)  # doctest: +SKIP
    >>> model = HookedViT.from_pretrained("fashion-scenes-vit")  # offline: 4 blocks, 64-px images
    >>> result = caap(model, images, target="predicted", layers=(2, 4))
    >>> result.map.shape  # [batch, grid_h, grid_w]
    torch.Size([2, 8, 8])
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from torch import Tensor

from caap_lens.attribution.result import CAAPResult, PatchedScores
from caap_lens.attribution.runner import (
    Window,
    finish,
    group_by_start,
    lowered_blocks,
    model_lock,
    run_patched,
    source_run,
)
from caap_lens.attribution.scores import ScoreLike
from caap_lens.attribution.settings import (  # re-exported: they were defined here first
    CAAPSettings,
    caap_settings,
    check_batch_size,
    check_window,
    default_window,
)
from caap_lens.attribution.targets import TargetLike, resolve_targets
from caap_lens.attribution.units import Units, check_heads, head_units, patch_units, region_units
from caap_lens.model.protocol import HookedViTLike
from caap_lens.model.sizing import at_image_size
from caap_lens.patching import patchable_hook_name
from caap_lens.preprocessing import check_finite, warn_if_unnormalised

__all__ = ["caap", "patched_scores", "prepare_images", "check_not_empty", "build_units", "CAAPSettings", "caap_settings",
           "check_window", "check_batch_size", "default_window"]


def prepare_images(model: HookedViTLike, images: Any) -> Tensor:
    """A checked, normalised batch: tensors are checked, anything else goes through ``preprocess``.

    Raises:
        ValueError: an empty batch, or an image holding NaN or ±inf (the error names its index).

    A float tensor is taken as normalised input; one whose values all lie in [0, 1] (which
    normalised images almost never do) is used as given, with a one-time
    `caap_lens.preprocessing.UnnormalisedInputWarning`.
    """
    if isinstance(images, Tensor) and images.is_floating_point():
        x = model.check_images(images)
        check_finite(x)
        warn_if_unnormalised(x)
    else:
        x = model.preprocess(images)
    return check_not_empty(x)


def check_not_empty(x: Tensor) -> Tensor:
    """``x``, or a ValueError if it is an empty batch (there is nothing to attribute)."""
    if x.shape[0] == 0:
        raise ValueError(
            f"images is an empty batch {tuple(x.shape)}: there is nothing to attribute; pass at least one image"
        )
    return x


def _score_values(fn: Any, name: str, output: Tensor, targets: Tensor) -> Tensor:
    """One score per row from ``fn(output, targets)``, or a clear error about what it returned."""
    values = fn(output, targets)
    rows = output.shape[0]
    if not isinstance(values, Tensor) or values.numel() != rows or (values.ndim > 1 and values.shape[0] != rows):
        got = f"shape {tuple(values.shape)}" if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(
            f"score {name!r} returned {got} for {rows} rows; a score maps (output [rows, n_out], "
            f"target [rows]) to one value per row [rows] (do not reduce over rows, e.g. with .sum())"
        )
    return values.reshape(rows).float()


def build_units(model: HookedViTLike, batch: int, region: Tensor | None, heads: Any) -> Units:
    """Patches (default) or regions, optionally split per head."""
    units = patch_units(model.grid) if region is None else region_units(model.grid, region, batch)
    heads = check_heads(heads, model.cfg.n_heads)
    if heads is None:
        return units
    return head_units(units, model.cfg.n_heads, None if heads is True else heads)


class _Progress:
    """A tqdm bar over patched rows, or nothing."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="run", leave=False)

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def patched_scores(
    model: HookedViTLike,
    images: Any,
    target: TargetLike,
    settings: CAAPSettings,
    *,
    units: Units | None = None,
    prepared: bool = False,
) -> PatchedScores:
    """The shared core of `caap` and the sweeps: every score of every window of ``settings``.

    Args:
        model: A `HookedViT`.
        images: As in `caap`.
        target: As in `caap`.
        settings: From `caap_settings`.
        units: What each row patches (default: patches, or ``settings.region``, split per head
            when ``settings.heads`` is set).
        prepared: ``images`` already went through `prepare_images` (skip checking them again).

    Returns:
        A `PatchedScores`: ``maps[score_name]`` of shape ``[n_windows, batch, *unit_shape]``.
    """
    if not isinstance(settings, CAAPSettings):
        raise TypeError(
            f"settings must be a CAAPSettings (build it with caap_settings(model, ...)), got {type(settings).__name__}"
        )
    with model_lock(model):  # hooks and bf16 weights are model state: one run at a time per model
        return _patched_scores(model, images, target, settings, units, prepared)


def _patched_scores(
    model: HookedViTLike, images: Any, target: TargetLike, settings: CAAPSettings, units: Units | None, prepared: bool
) -> PatchedScores:
    t0 = time.perf_counter()
    windows, hook = settings.windows, settings.hook
    by_start = group_by_start(windows)
    with lowered_blocks(model, settings.dtype), torch.inference_mode(), \
            model.hooks(fwd_hooks=list(settings.fwd_hooks)):
        x = images if prepared else prepare_images(model, images)
        model = at_image_size(model, x)  # a dynamic-size model on the images' own grid
        batch = x.shape[0]
        units = units if units is not None else build_units(model, batch, settings.region, settings.heads)
        layers = sorted({layer for start, stop in windows for layer in range(start, stop)})
        source_out, source = source_run(model, x, {patchable_hook_name(hook, layer) for layer in layers})
        targets = resolve_targets(model, target, source_out, settings.targets_are_classes,
                                  space=settings.target_space)
        ctx_resid = settings.context.residuals(model, x, list(by_start))
        # the unpatched context run depends on the window's start only, not its stop
        ctx_out = {start: finish(model, ctx_resid[start], start).float().cpu() for start in by_start}
        bar = _Progress(batch * units.n_units * len(by_start), settings.progress, "CAAP")
        t1 = time.perf_counter()
        try:
            out = run_patched(model, ctx_resid, source, hook, windows, units, settings.batch_size, on_chunk=bar)
        finally:
            bar.close()
        t2 = time.perf_counter()
    source_out = source_out.float().cpu()
    n_w, n_u = len(windows), units.n_units
    row_targets = targets.view(1, batch, 1).expand(n_w, batch, n_u).reshape(-1)
    maps, source_scores, context_scores = {}, {}, {}
    for name, fn in settings.scores:
        values = _score_values(fn, name, out.reshape(n_w * batch * n_u, -1), row_targets).reshape(n_w, batch, n_u)
        ctx_scores = torch.stack([_score_values(fn, name, ctx_out[start], targets) for start, _ in windows])
        if settings.relative:
            values = values - ctx_scores[:, :, None]
        maps[name] = values.reshape(n_w, batch, *units.shape)
        source_scores[name] = _score_values(fn, name, source_out, targets)
        context_scores[name] = ctx_scores
    n = model.cfg.n_layers
    rows = batch * n_u
    block_evals = sum(rows * (n - start) + rows * sum(n - s for s in stops[:-1]) for start, stops in by_start.items())
    timing = {"seconds": time.perf_counter() - t0, "patched_seconds": t2 - t1, "rows": rows * len(by_start),
              "block_evals": block_evals}
    return PatchedScores(maps=maps, targets=targets, source_output=source_out, source_score=source_scores,
                         context_score=context_scores, settings=settings, timing=timing, grid=model.grid)


def caap(
    model: HookedViTLike,
    images: Any,
    target: TargetLike = "predicted",
    *,
    layers: Window | str | None = None,
    context: Any = "mean",
    hook: str | None = None,
    score: ScoreLike = "logit",
    relative: bool = False,
    region: Tensor | None = None,
    heads: bool | Sequence[int] | None = None,
    per_layer: bool = False,
    batch_size: int = 64,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    fwd_hooks: Sequence[tuple[Any, Any]] = (),
) -> CAAPResult:
    """CAAP attribution of each patch (or region, or head) for each image.

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``, or PIL images/arrays (preprocessed for you).
        target: ``"predicted"``, a class index or name, or one per image.
        layers: Window ``(start, stop)`` of blocks to patch; default `default_window`. ``"auto"``:
            per image, the candidate window whose map scores best on a short insertion curve
            (`caap_lens.attribution.auto_window`; about 1.5-2x the cost of one map).
        context: Neutral context: a name, an image tensor, a callable or a context object.
        hook: Activation to copy: ``"resid_pre"`` (default), ``"resid_mid"``, ``"resid_post"``,
            ``"attn_out"``, ``"mlp_out"``, ``"z"``, ``"mlp_post"``; ``"z"`` when ``heads`` is set.
        score: ``"logit"``, ``"prob"``, ``"log_prob"``, ``"margin"`` or a callable ``(output, target)``.
        relative: Subtract the context run's own score.
        region: Bool patch masks ``[gh, gw]``, ``[n_regions, gh, gw]`` or ``[batch, n_regions, gh, gw]``:
            patch each region as one unit (map ``[batch, n_regions]``).
        heads: True (all heads) or head indices: patch one head's ``hook_z`` at a time
            (map ``[batch, n_heads, gh, gw]``).
        per_layer: With ``heads``, patch one layer of the window at a time
            (map ``[batch, n_window_layers, n_heads, gh, gw]``).
        batch_size: Patched runs per forward pass (memory grows linearly with it).
        dtype: ``torch.bfloat16`` to run the blocks' weights in bf16 (the residual stream, final
            norm and head stay float32); the model's own weights are restored exactly afterwards.
        progress: Show a progress bar.
        fwd_hooks: Extra TransformerLens hooks active in every run (source, context, patched).

    Returns:
        A `CAAPResult`; its ``settings`` is the run's `CAAPSettings`.

    Example:
        >>> result = caap(model, images, target="predicted", layers=(1, 3), context="blur")
        >>> [sorted(p) for p in result.top_patches(3)][0]  # the 3 highest patches of image 0
        ['col', 'patch', 'row', 'value']
    """
    if isinstance(layers, str) and layers == "auto":  # per-image window by an insertion criterion
        from caap_lens.attribution.auto_window import caap_auto  # auto_window builds on this module

        if region is not None or check_heads(heads, model.cfg.n_heads) is not None or per_layer or fwd_hooks:
            raise ValueError("layers='auto' chooses among whole-patch maps: it does not combine with region, "
                             "heads, per_layer or fwd_hooks; pick a window for those")
        return caap_auto(model, images, target, context=context, hook=hook, score=score, relative=relative,
                         batch_size=batch_size, dtype=dtype, progress=progress)
    settings = caap_settings(
        model, layers=layers, per_layer=per_layer, context=context, hook=hook, scores=[score], relative=relative,
        region=region, heads=heads, batch_size=batch_size, dtype=dtype, progress=progress, fwd_hooks=fwd_hooks,
    )
    return caap_with(model, images, target, settings)


def caap_with(model: HookedViTLike, images: Any, target: TargetLike, settings: CAAPSettings, *,
              prepared: bool = False) -> CAAPResult:
    """`caap` with settings made by `caap_settings` (one window, or ``per_layer`` windows; one score)."""
    run = patched_scores(model, images, target, settings, prepared=prepared)
    if not settings.per_layer:
        return run.result(settings.score, 0)
    name = settings.score
    # per_layer: each layer is its own window, with its own context run (they differ for
    # activation contexts such as "mean_activation"): context_score [batch, n_window_layers].
    return CAAPResult(
        map=run.maps[name].transpose(0, 1),
        targets=run.targets,
        source_score=run.source_score[name],
        context_score=run.context_score[name].transpose(0, 1),
        grid=run.grid,
        settings=settings,
        timing=run.timing,
        source_output=run.source_output,
    )

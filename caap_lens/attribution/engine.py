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
    >>> result = caap(model, images, target="predicted", layers=(2, 4))  # doctest: +SKIP
    >>> result.map.shape  # [batch, grid_h, grid_w]  # doctest: +SKIP
"""

from __future__ import annotations

import operator
import time
from typing import Any, Sequence

import torch
from torch import Tensor

from caap_lens.attribution.contexts import resolve_context
from caap_lens.attribution.result import CAAPResult
from caap_lens.attribution.runner import Window, finish, lowered_blocks, model_lock, run_patched, source_run
from caap_lens.attribution.scores import ScoreLike, resolve_score, score_name, scores_index_classes
from caap_lens.attribution.targets import TargetLike, resolve_targets
from caap_lens.attribution.units import Units, check_heads, head_units, patch_units, region_units
from caap_lens.patching import patchable_hook_name, resolve_hook
from caap_lens.preprocessing import check_finite, warn_if_unnormalised


def default_window(n_layers: int) -> Window:
    """The middle third of the network: ``(n // 3, max(n // 3 + 1, 2 n // 3))``."""
    start = n_layers // 3
    return (start, max(start + 1, (2 * n_layers) // 3))


def check_window(model: Any, layers: Any) -> Window:
    """Validates a ``(start, stop)`` window against the model's depth."""
    n = model.cfg.n_layers
    try:
        if isinstance(layers, (str, bytes)) or any(isinstance(v, bool) for v in layers):
            raise TypeError  # True is not layer 1
        start, stop = (operator.index(v) for v in layers)  # ints only: 1.5 is not silently 1
    except (TypeError, ValueError):
        raise ValueError(
            f"layers must be a (start, stop) pair of ints, got {layers!r}; e.g. layers=(2, 4)"
        ) from None
    if not 0 <= start < stop <= n:
        raise ValueError(f"window ({start}, {stop}) must satisfy 0 <= start < stop <= n_layers={n}")
    return (start, stop)


def prepare_images(model: Any, images: Any) -> Tensor:
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
    if x.shape[0] == 0:
        raise ValueError(
            f"images is an empty batch {tuple(x.shape)}: there is nothing to attribute; pass at least one image"
        )
    return x


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as a positive int (not a bool, float or string)."""
    try:
        if isinstance(batch_size, bool):
            raise TypeError
        value = operator.index(batch_size)
    except TypeError:
        raise ValueError(
            f"batch_size must be a positive int (patched runs per forward pass), got {batch_size!r}"
        ) from None
    if value < 1:
        raise ValueError(f"batch_size must be >= 1, got {value} (patched runs per forward pass)")
    return value


def _check_fwd_hooks(model: Any, fwd_hooks: Any) -> None:
    """``fwd_hooks`` as TransformerLens takes them: ``(hook name or name filter, fn)`` pairs, names known."""
    names = getattr(model, "hook_dict", None)
    for item in fwd_hooks:
        if not isinstance(item, (tuple, list)) or len(item) != 2 or not callable(item[1]):
            raise ValueError(f"fwd_hooks must be (hook name, fn) pairs as in run_with_hooks, got {item!r}")
        name = item[0]
        if isinstance(name, str) and names is not None and name not in names:
            close = [n for n in names if name.split(".")[-1] in n][:3]
            hint = f"; e.g. {', '.join(close)}" if close else ""
            raise ValueError(f"fwd_hooks names unknown hook point {name!r} (see model.hook_dict){hint}")
        if not isinstance(name, str) and not callable(name):
            raise ValueError(f"a fwd_hooks name must be a hook-point name or a filter fn(name) -> bool, got {name!r}")


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


def build_units(model: Any, batch: int, region: Tensor | None, heads: Any) -> Units:
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
    model: Any,
    images: Any,
    target: TargetLike,
    windows: Sequence[Window],
    *,
    context: Any = "mean",
    hook: str = "resid_pre",
    scores: Sequence[ScoreLike] = ("logit",),
    relative: bool = False,
    units: Units | None = None,
    region: Tensor | None = None,
    heads: Any = None,
    batch_size: int = 64,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    fwd_hooks: Sequence[tuple[Any, Any]] = (),
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The shared core of `caap` and the sweeps: scores ``[n_windows, batch, n_units]`` per score.

    Returns:
        ``(maps, info)``: ``maps[score_name]`` of shape ``[n_windows, batch, *unit_shape]``, and
        ``info`` with targets, source/context scores per window, settings and timing.
    """
    with model_lock(model):  # hooks and bf16 weights are model state: one run at a time per model
        return _patched_scores(
            model, images, target, windows, context=context, hook=hook, scores=scores, relative=relative,
            units=units, region=region, heads=heads, batch_size=batch_size, dtype=dtype, progress=progress,
            fwd_hooks=fwd_hooks,
        )


def _patched_scores(
    model: Any,
    images: Any,
    target: TargetLike,
    windows: Sequence[Window],
    *,
    context: Any,
    hook: str,
    scores: Sequence[ScoreLike],
    relative: bool,
    units: Units | None,
    region: Tensor | None,
    heads: Any,
    batch_size: Any,
    dtype: torch.dtype | None,
    progress: bool,
    fwd_hooks: Sequence[tuple[Any, Any]],
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    t0 = time.perf_counter()
    batch_size = check_batch_size(batch_size)
    windows = [check_window(model, w) for w in windows]
    if not windows:
        raise ValueError("no windows given")
    hook = resolve_hook(hook)
    _check_fwd_hooks(model, fwd_hooks)
    heads = check_heads(heads, model.cfg.n_heads)
    if heads is not None and hook != "z":
        raise ValueError(f"per-head maps patch attn.hook_z; got hook={hook!r} (use hook='z' or leave it unset)")
    score_fns = {score_name(s): resolve_score(s) for s in scores}
    if len(score_fns) != len(scores):  # maps are keyed by score name: a repeated name would be lost
        names = [score_name(s) for s in scores]
        raise ValueError(f"scores need distinct names (set __name__ on callables), got {names}")
    ctx = resolve_context(context)
    with lowered_blocks(model, dtype), torch.inference_mode(), model.hooks(fwd_hooks=list(fwd_hooks)):
        x = prepare_images(model, images)
        batch = x.shape[0]
        units = units if units is not None else build_units(model, batch, region, heads)
        layers = sorted({layer for start, stop in windows for layer in range(start, stop)})
        names = {patchable_hook_name(hook, layer) for layer in layers}
        source_out, source = source_run(model, x, names)
        targets = resolve_targets(model, target, source_out, all(scores_index_classes(s) for s in scores))
        starts = sorted({start for start, _ in windows})
        ctx_resid = ctx.residuals(model, x, starts)
        # the unpatched context run depends on the window's start only, not its stop
        ctx_out = {start: finish(model, ctx_resid[start], start).float().cpu() for start in starts}
        total = batch * units.n_units * len(starts)
        bar = _Progress(total, progress, "CAAP")
        t1 = time.perf_counter()
        try:
            out = run_patched(model, ctx_resid, source, hook, windows, units, batch_size, on_chunk=bar)
        finally:
            bar.close()
        t2 = time.perf_counter()
    source_out = source_out.float().cpu()
    n_w, n_u = len(windows), units.n_units
    row_targets = targets.view(1, batch, 1).expand(n_w, batch, n_u).reshape(-1)
    maps, source_scores, context_scores = {}, {}, {}
    for name, fn in score_fns.items():
        values = _score_values(fn, name, out.reshape(n_w * batch * n_u, -1), row_targets).reshape(n_w, batch, n_u)
        ctx_scores = torch.stack([_score_values(fn, name, ctx_out[start], targets) for start, _ in windows])
        if relative:
            values = values - ctx_scores[:, :, None]
        maps[name] = values.reshape(n_w, batch, *units.shape)
        source_scores[name] = _score_values(fn, name, source_out, targets)
        context_scores[name] = ctx_scores
    block_evals = sum(
        batch * n_u * (model.cfg.n_layers - start) + batch * n_u * sum(model.cfg.n_layers - s for s in stops[:-1])
        for start, stops in _stops_by_start(windows).items()
    )
    info = {
        "targets": targets,
        "source_score": source_scores,
        "context_score": context_scores,
        "settings": {
            "hook": hook,
            "context": getattr(ctx, "name", type(ctx).__name__),
            "relative": relative,
            "heads": heads,
            "region": tuple(region.shape) if region is not None else None,
            "batch_size": batch_size,
            "dtype": str(dtype) if dtype is not None else str(model.dtype),
        },
        "timing": {
            "seconds": time.perf_counter() - t0,
            "patched_seconds": t2 - t1,
            "rows": batch * n_u * len(starts),
            "block_evals": block_evals,
        },
    }
    return maps, info


def _stops_by_start(windows: Sequence[Window]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for start, stop in windows:
        out.setdefault(start, [])
        if stop not in out[start]:
            out[start].append(stop)
    return {k: sorted(v) for k, v in out.items()}


def caap(
    model: Any,
    images: Any,
    target: TargetLike = "predicted",
    *,
    layers: Window | None = None,
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
        A `CAAPResult`.

    Example:
        >>> result = caap(model, images, target="predicted", layers=(4, 8), context="blur")  # doctest: +SKIP
        >>> result.top_patches(3)  # doctest: +SKIP
    """
    if isinstance(layers, str) and layers == "auto":  # per-image window by an insertion criterion
        from caap_lens.attribution.auto_window import caap_auto  # auto_window builds on this module

        if region is not None or check_heads(heads, model.cfg.n_heads) is not None or per_layer or fwd_hooks:
            raise ValueError("layers='auto' chooses among whole-patch maps: it does not combine with region, "
                             "heads, per_layer or fwd_hooks; pick a window for those")
        return caap_auto(model, images, target, context=context, hook=hook, score=score, relative=relative,
                         batch_size=batch_size, dtype=dtype, progress=progress)
    window = check_window(model, layers if layers is not None else default_window(model.cfg.n_layers))
    heads = check_heads(heads, model.cfg.n_heads)
    hook = hook if hook is not None else ("z" if heads is not None else "resid_pre")
    if per_layer and heads is None:
        raise ValueError("per_layer=True needs heads=True (or a list of heads)")
    windows = [(layer, layer + 1) for layer in range(*window)] if per_layer else [window]
    maps, info = patched_scores(
        model, images, target, windows, context=context, hook=hook, scores=[score], relative=relative,
        region=region, heads=heads, batch_size=batch_size, dtype=dtype, progress=progress, fwd_hooks=fwd_hooks,
    )
    name = score_name(score)
    values = maps[name]  # [n_windows, batch, *units]
    values = values.transpose(0, 1) if per_layer else values[0]
    ctx_score = info["context_score"][name]  # [n_windows, batch]
    settings = {"layers": window, **info["settings"], "score": name, "per_layer": per_layer}
    return CAAPResult(
        map=values,
        targets=info["targets"],
        source_score=info["source_score"][name],
        # per_layer: each layer is its own window, with its own context run (they differ for
        # activation contexts such as "mean_activation"): [batch, n_window_layers].
        context_score=ctx_score.transpose(0, 1) if per_layer else ctx_score[0],
        grid=model.grid,
        settings=settings,
        timing=info["timing"],
    )

"""``layers="auto"``: choose CAAP's window per image by a stated faithfulness criterion.

The paper leaves the window open. This module picks it per image from a fork-shared window sweep
over a set of candidate windows, scoring each candidate's map by how well it ranks the *input*
patches for the score:

    criterion(w) = mean over f in ``fractions`` of  score(top-f patches of map_w shown, rest context)

i.e. a short insertion curve at the input, over the same neutral context image as the patched runs
(activation contexts such as ``mean_activation`` have no image: their curve uses the dataset-mean
colour). It needs no labels and no ground truth, so it works on real photos. The window with the
highest criterion is chosen; ties go to the earlier (then shorter) window.

Cost: the sweep (``candidates`` share their patched prefixes by start) plus
``len(candidates) * len(fractions)`` plain forward passes per image, about 1.5x-2x one default map
for the 9 default candidates on a 12-layer model.

Example:
    >>> choice = choose_window(model, images, candidates=[(1, 2), (2, 4)])
    >>> choice.windows  # one per image
    [(1, 2), (2, 4)]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from caap_lens.attribution.contexts import resolve_context
from caap_lens.attribution.engine import caap_settings, patched_scores, prepare_images
from caap_lens.attribution.runner import Window
from caap_lens.attribution.result import CAAPResult, PatchedScores
from caap_lens.attribution.scores import ScoreLike, resolve_score
from caap_lens.model.protocol import HookedViTLike
from caap_lens.model.sizing import at_image_size

__all__ = ["AutoWindow", "FRACTIONS", "caap_auto", "candidate_windows", "choose_window"]

FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2)
"""Shares of the patches shown in the criterion's insertion curve."""


def candidate_windows(n_layers: int) -> list[Window]:
    """Candidate windows: starts and stops on a grid of ``n_layers // 6`` (at least 1) layers, from the
    first third to the last layer, lengths 1/6 to 1/2 of the depth.

    Example:
        >>> candidate_windows(12)
        [(2, 4), (2, 6), (2, 8), (4, 6), (4, 8), (4, 10), (6, 8), (6, 10), (6, 12)]
        >>> candidate_windows(4)
        [(1, 2), (1, 3), (2, 3), (2, 4)]
    """
    step = max(1, n_layers // 6)
    out = []
    for start in range(step, n_layers, step):
        for stop in range(start + step, n_layers + 1, step):
            if stop - start <= max(step, n_layers // 2) and start <= n_layers // 2:
                out.append((start, stop))
    return out


@dataclass
class AutoWindow:
    """The chosen window per image and the criterion of every candidate.

    Attributes:
        windows: The chosen ``(start, stop)`` per image.
        candidates: The candidate windows, in sweep order.
        criterion: ``[n_candidates, batch]``: mean score of the insertion steps per candidate.
        maps: ``[n_candidates, batch, *units]``: every candidate's map (the chosen one per image is
            ``maps[index[i], i]``).
        index: ``[batch]`` index of the chosen candidate.
        run: The candidates' sweep: targets, source output, scores, settings and timing.
    """

    windows: list[Window]
    candidates: list[Window]
    criterion: Float[Tensor, "n_candidates batch"]
    maps: Tensor
    index: Tensor
    run: PatchedScores


def _context_image(model: HookedViTLike, images: Tensor, context: Any) -> Tensor:
    ctx = resolve_context(context)
    image = getattr(ctx, "image", None)
    if image is None:
        image = resolve_context("mean").image
    return image(model, images).expand_as(images)  # some contexts give one image for the whole batch


def _insertion_scores(model: HookedViTLike, images: Tensor, ctx_images: Tensor, maps: Tensor, targets: Tensor,
                      score: Any, fractions: Sequence[float], batch_size: int) -> Tensor:
    """``[n_candidates, batch]`` mean score over the insertion steps of each candidate map."""
    grid = model.grid
    n_cand, batch = maps.shape[:2]
    flat = maps.reshape(n_cand, batch, -1).float()
    n_patches = flat.shape[-1]
    order = flat.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(n_patches).expand_as(order).contiguous())
    counts = [max(1, round(f * n_patches)) for f in fractions]
    shown = torch.stack([ranks < k for k in counts], 2)  # [n_cand, batch, n_steps, n_patches]
    rows = shown.reshape(-1, n_patches)
    image_of_row = torch.arange(batch).repeat_interleave(len(counts)).repeat(n_cand)
    out = []
    with torch.inference_mode():
        for begin in range(0, rows.shape[0], batch_size):
            idx = image_of_row[begin:begin + batch_size]
            composite = grid.compose(rows[begin:begin + batch_size].reshape(-1, *grid.grid_size), images[idx],
                                     ctx_images[idx])
            out.append(score(model(composite).float(), targets.to(images.device)[idx]).cpu())
    return torch.cat(out).reshape(n_cand, batch, len(counts)).mean(-1)


def choose_window(
    model: HookedViTLike,
    images: Any,
    target: Any = "predicted",
    *,
    candidates: Sequence[Window] | None = None,
    context: Any = "mean",
    hook: str = "resid_pre",
    score: ScoreLike = "logit",
    fractions: Sequence[float] = FRACTIONS,
    batch_size: int = 64,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> AutoWindow:
    """Sweeps ``candidates`` (default `candidate_windows`) and picks each image's window by the criterion.

    ``model``, ``images``, ``target``, ``context``, ``hook``, ``score``, ``batch_size``, ``dtype`` and
    ``progress`` are as in `caap`.

    Args:
        candidates: Windows to choose from.
        fractions: Shares of patches shown in the criterion's insertion steps, each in (0, 1].

    Returns:
        An `AutoWindow`.
    """
    t0 = time.perf_counter()
    images = prepare_images(model, images)
    model = at_image_size(model, images)
    cands = list(candidates) if candidates is not None else candidate_windows(model.cfg.n_layers)
    if not cands:
        raise ValueError("choose_window needs at least one candidate window")
    if not fractions or not all(0 < float(f) <= 1 for f in fractions):
        raise ValueError(f"fractions must be shares in (0, 1], got {fractions!r}")
    settings = caap_settings(model, windows=cands, context=context, hook=hook, scores=[score],
                             batch_size=batch_size, dtype=dtype, progress=progress)
    run = patched_scores(model, images, target, settings, prepared=True)
    sweep = run.maps[settings.score]
    crit = _insertion_scores(model, images, _context_image(model, images, context), sweep, run.targets,
                             resolve_score(score), fractions, batch_size)
    index = crit.argmax(0)  # first maximum: candidates are ordered by start, then stop
    run.timing = {**run.timing, "seconds": time.perf_counter() - t0}
    return AutoWindow(windows=[tuple(cands[int(i)]) for i in index], candidates=[tuple(c) for c in cands],
                      criterion=crit, maps=sweep, index=index, run=run)


def caap_auto(model: HookedViTLike, images: Any, target: Any = "predicted", *, relative: bool = False,
              **options: Any) -> CAAPResult:
    """`caap` with ``layers="auto"``: each image's map for the window `choose_window` picks for it.

    ``settings["layers"]`` is ``"auto"``; ``settings["windows"]`` lists the chosen window per image and
    ``settings["candidates"]`` the candidates. ``relative`` subtracts each image's context score in its
    own window. ``options``: ``context``, ``hook``, ``score``, ``batch_size``, ``dtype``, ``progress``,
    ``candidates``, ``fractions``.
    """
    unknown = set(options) - {"context", "hook", "score", "batch_size", "dtype", "progress", "candidates",
                              "fractions"}
    if unknown:
        raise ValueError(f"layers='auto' does not combine with {sorted(unknown)}; choose a window for those")
    hook = options.get("hook") or "resid_pre"
    choice = choose_window(model, images, target, **{**options, "hook": hook})
    run = choice.run
    name = run.settings.score
    batch = torch.arange(choice.maps.shape[1])
    values = choice.maps[choice.index, batch]
    ctx = run.context_score[name][choice.index, batch]
    if relative:
        values = values - ctx.reshape(-1, *([1] * (values.ndim - 1)))
    settings = {"layers": "auto", **run.settings, "relative": relative,
                "windows": choice.windows, "candidates": choice.candidates}
    return CAAPResult(map=values, targets=run.targets, source_score=run.source_score[name], context_score=ctx,
                      grid=run.grid, settings=settings, timing=run.timing, source_output=run.source_output)

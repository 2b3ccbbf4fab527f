"""Sweeps over CAAP's open choices: windows, depth, contexts and scores.

* `window_sweep` — every ``(start, stop)`` window (or a given list) → ``[n_windows, batch, gh, gw]``.
  Windows that share a start share their patched trajectory; the runner forks at each stop, so all
  78 windows of a 12-layer model cost ~0.56x running each alone.
* `depth_profile` — single-layer windows ``(l, l + 1)`` across depth: "patch effects across depth".
* `context_sweep` — the same window under several neutral contexts.
* `score_sweep` — several scores from *one* set of patched runs (scores only read the outputs).

Example:
    >>> sweep = window_sweep(model, images, target="predicted")  # doctest: +SKIP
    >>> sweep.maps.shape, sweep.windows[:3]  # doctest: +SKIP
    (torch.Size([78, 1, 14, 14]), [(0, 1), (0, 2), (0, 3)])
    >>> sweep.map_for(4, 8).shape  # doctest: +SKIP
    torch.Size([1, 14, 14])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from caap_lens.attribution.engine import caap, check_window, patched_scores
from caap_lens.attribution.result import CAAPResult
from caap_lens.attribution.runner import Window
from caap_lens.attribution.scores import ScoreLike, score_name
from caap_lens.attribution.units import check_heads


@dataclass
class WindowSweepResult:
    """Maps for many windows.

    Attributes:
        maps: ``[n_windows, batch, *units]`` (``[n_windows, batch, gh, gw]`` for patches).
        windows: The ``(start, stop)`` of each map, in order.
        context_score: The context's score per window ``[n_windows, batch]``.
        source_score: The source's score ``[batch]``.
        targets: Class index per image.
        settings: The choices shared by every window.
        timing: As in `CAAPResult`.
    """

    maps: Float[Tensor, "n_windows batch *units"]
    windows: list[Window]
    context_score: Float[Tensor, "n_windows batch"]
    source_score: Float[Tensor, " batch"]
    targets: Tensor
    settings: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    def map_for(self, start: int, stop: int) -> Tensor:
        """The map of one window."""
        try:
            return self.maps[self.windows.index((start, stop))]
        except ValueError:
            raise KeyError(f"window ({start}, {stop}) is not in this sweep") from None

    def as_grid(self, values: Float[Tensor, " n_windows"], n_layers: int) -> Float[Tensor, "start stop"]:
        """Per-window values as a ``[n_layers, n_layers + 1]`` start × stop table (NaN where absent)."""
        table = torch.full((n_layers, n_layers + 1), float("nan"))
        for (start, stop), value in zip(self.windows, values):
            table[start, stop] = float(value)
        return table


def all_windows(n_layers: int) -> list[Window]:
    """Every window ``0 <= start < stop <= n_layers``, ordered by start then stop."""
    return [(a, b) for a in range(n_layers) for b in range(a + 1, n_layers + 1)]


def window_sweep(
    model: Any,
    images: Any,
    target: Any = "predicted",
    windows: Sequence[Window] | str = "all",
    *,
    score: ScoreLike = "logit",
    **kwargs: Any,
) -> WindowSweepResult:
    """CAAP maps for many windows, sharing patched trajectories between windows with one start.

    Args:
        model: A `HookedViT`.
        images: As in `caap`.
        target: As in `caap`.
        windows: ``"all"`` or a list of ``(start, stop)``.
        score: As in `caap`.
        **kwargs: ``context``, ``hook``, ``relative``, ``region``, ``heads``, ``batch_size``,
            ``dtype``, ``progress``, ``fwd_hooks`` as in `caap`.
    """
    if isinstance(windows, str):
        if windows != "all":
            raise ValueError(f"windows must be 'all' or a list of (start, stop) pairs, got {windows!r}")
        windows = all_windows(model.cfg.n_layers)
    windows = [check_window(model, w) for w in windows]  # clear errors; (start, stop) tuples for map_for
    if check_heads(kwargs.get("heads"), model.cfg.n_heads) is not None:
        kwargs.setdefault("hook", "z")
    maps, info = patched_scores(model, images, target, windows, scores=[score], **kwargs)
    name = score_name(score)
    return WindowSweepResult(
        maps=maps[name],
        windows=list(windows),  # type: ignore[arg-type]
        context_score=info["context_score"][name],
        source_score=info["source_score"][name],
        targets=info["targets"],
        settings={**info["settings"], "score": name},
        timing=info["timing"],
    )


def depth_profile(model: Any, images: Any, target: Any = "predicted", **kwargs: Any) -> WindowSweepResult:
    """Single-layer windows ``(l, l + 1)`` for every layer: maps ``[n_layers, batch, gh, gw]``."""
    windows = [(layer, layer + 1) for layer in range(model.cfg.n_layers)]
    return window_sweep(model, images, target, windows, **kwargs)


def context_sweep(
    model: Any, images: Any, target: Any = "predicted", contexts: Sequence[Any] = ("mean", "black", "blur", "noise"),
    **kwargs: Any,
) -> dict[str, CAAPResult]:
    """One `caap` result per neutral context (same window, hook and score), keyed by context name.

    Contexts that share a name (two image tensors, two lambdas) are told apart by a suffix
    ``" #2"``, ``" #3"``, ... so that no result is lost.
    """
    results: dict[str, CAAPResult] = {}
    for context in contexts:
        result = caap(model, images, target, context=context, **kwargs)
        key, n = result.settings["context"], 1
        while key in results:
            n += 1
            key = f"{result.settings['context']} #{n}"
        results[key] = result
    return results


def score_sweep(
    model: Any,
    images: Any,
    target: Any = "predicted",
    scores: Sequence[ScoreLike] = ("logit", "prob", "log_prob", "margin"),
    *,
    layers: Window | None = None,
    **kwargs: Any,
) -> dict[str, CAAPResult]:
    """Several scores of the same patched runs (computed once), keyed by score name."""
    from caap_lens.attribution.engine import default_window

    window = check_window(model, layers if layers is not None else default_window(model.cfg.n_layers))
    if check_heads(kwargs.get("heads"), model.cfg.n_heads) is not None:
        kwargs.setdefault("hook", "z")  # as in `caap`: per-head maps patch attn.hook_z
    maps, info = patched_scores(model, images, target, [window], scores=scores, **kwargs)
    return {
        name: CAAPResult(
            map=values[0],
            targets=info["targets"],
            source_score=info["source_score"][name],
            context_score=info["context_score"][name][0],
            grid=model.grid,
            settings={"layers": window, **info["settings"], "score": name},
            timing=info["timing"],
        )
        for name, values in maps.items()
    }

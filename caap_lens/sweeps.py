"""Sweeps over CAAP's open choices: windows, depth, contexts and scores.

* `window_sweep` — every ``(start, stop)`` window (or a given list) → ``[n_windows, batch, gh, gw]``.
  Windows that share a start share their patched trajectory; the runner forks at each stop, so all
  78 windows of a 12-layer model cost ~0.56x running each alone.
* `depth_profile` — single-layer windows ``(l, l + 1)`` across depth: "patch effects across depth".
* `context_sweep` — the same window under several neutral contexts.
* `score_sweep` — several scores from *one* set of patched runs (scores only read the outputs).

Example:
    >>> sweep = window_sweep(model, images, target="predicted")  # 4 blocks: 10 windows
    >>> sweep.maps.shape, sweep.windows[:3]
    (torch.Size([10, 2, 8, 8]), [(0, 1), (0, 2), (0, 3)])
    >>> sweep.map_for(1, 3).shape
    torch.Size([2, 8, 8])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from caap_lens.attribution.engine import caap, caap_settings, patched_scores, prepare_images
from caap_lens.attribution.result import CAAPResult
from caap_lens.attribution.runner import Window
from caap_lens.attribution.scores import ScoreLike
from caap_lens.attribution.storage import describe_settings, load_result, save_result
from caap_lens.attribution.targets import TargetLike
from caap_lens.grid import PatchGrid
from caap_lens.model.protocol import HookedViTLike
from caap_lens.model.sizing import at_image_size


@dataclass
class WindowSweepResult:
    """Maps for many windows.

    Attributes:
        maps: ``[n_windows, batch, *units]`` (``[n_windows, batch, gh, gw]`` for patches).
        windows: The ``(start, stop)`` of each map, in order.
        context_score: The context's score per window ``[n_windows, batch]``.
        source_score: The source's score ``[batch]``.
        targets: Class index per image.
        settings: The choices shared by every window (the run's `CAAPSettings`).
        timing: As in `CAAPResult`.
        source_output: The unpatched model output ``[batch, n_out]`` (float32, CPU).
        grid: The model's patch grid.
    """

    maps: Float[Tensor, "n_windows batch *units"]
    windows: list[Window]
    context_score: Float[Tensor, "n_windows batch"]
    source_score: Float[Tensor, " batch"]
    targets: Tensor
    settings: Mapping[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    source_output: Optional[Float[Tensor, "batch n_out"]] = None
    grid: Optional[PatchGrid] = None

    def map_for(self, start: int, stop: int) -> Tensor:
        """The map of one window."""
        try:
            return self.maps[self.windows.index((start, stop))]
        except ValueError:
            raise KeyError(f"window ({start}, {stop}) is not in this sweep") from None

    def save(self, path: str | Path, model: HookedViTLike | None = None) -> Path:
        """Writes the sweep to one ``.safetensors`` file (`caap_lens.attribution.storage`).

        Args:
            path: The file to write.
            model: The `HookedViT` that made the sweep, to record its origin and config (optional).

        Returns:
            The path written.
        """
        tensors = {"maps": self.maps, "context_score": self.context_score, "source_score": self.source_score,
                   "targets": self.targets, "source_output": self.source_output}
        meta = {"kind": "window_sweep", "grid": self.grid, "windows": list(self.windows),
                "settings": describe_settings(self.settings), "timing": self.timing}
        return save_result(path, tensors, meta, model=model)

    @classmethod
    def load(cls, path: str | Path) -> "WindowSweepResult":
        """Reads a sweep written by `save`; windows are ``(start, stop)`` tuples, settings a plain dict.

        Example:
            >>> sweep.save("sweep.safetensors")  # doctest: +SKIP
            >>> WindowSweepResult.load("sweep.safetensors").map_for(4, 8).shape  # doctest: +SKIP
            torch.Size([1, 14, 14])
        """
        tensors, meta = load_result(path, kind="window_sweep")
        return cls(maps=tensors["maps"], windows=list(meta["windows"]), context_score=tensors["context_score"],
                   source_score=tensors["source_score"], targets=tensors["targets"],
                   settings=meta.get("settings", {}), timing=meta.get("timing", {}),
                   source_output=tensors.get("source_output"), grid=meta.get("grid"))


def all_windows(n_layers: int) -> list[Window]:
    """Every window ``0 <= start < stop <= n_layers``, ordered by start then stop.

    Example:
        >>> all_windows(3)
        [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    """
    return [(a, b) for a in range(n_layers) for b in range(a + 1, n_layers + 1)]


def window_sweep(
    model: HookedViTLike,
    images: Any,
    target: TargetLike = "predicted",
    windows: Sequence[Window] | str = "all",
    *,
    context: Any = "mean",
    hook: str | None = None,
    score: ScoreLike = "logit",
    relative: bool = False,
    region: Tensor | None = None,
    heads: bool | Sequence[int] | None = None,
    batch_size: int = 64,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    fwd_hooks: Sequence[tuple[Any, Any]] = (),
) -> WindowSweepResult:
    """CAAP maps for many windows, sharing patched trajectories between windows with one start.

    The other arguments are `caap`'s.

    Args:
        model: A `HookedViT`.
        windows: ``"all"`` or a list of ``(start, stop)``.
    """
    if isinstance(windows, str):
        if windows != "all":
            raise ValueError(f"windows must be 'all' or a list of (start, stop) pairs, got {windows!r}")
        windows = all_windows(model.cfg.n_layers)
    settings = caap_settings(
        model, windows=windows, context=context, hook=hook, scores=[score], relative=relative, region=region,
        heads=heads, batch_size=batch_size, dtype=dtype, progress=progress, fwd_hooks=fwd_hooks,
    )
    run = patched_scores(model, images, target, settings)
    name = settings.score
    return WindowSweepResult(
        maps=run.maps[name],
        windows=list(settings.windows),
        context_score=run.context_score[name],
        source_score=run.source_score[name],
        targets=run.targets,
        settings=settings,
        timing=run.timing,
        source_output=run.source_output,
        grid=run.grid,
    )


def _patch_regions(model: HookedViTLike, patches: Any, batch: int) -> tuple[Tensor, Tensor]:
    """``(region [1 or batch, k, gh, gw], index [1 or batch, k])`` for flat patch indices ``[k]`` or ``[batch, k]``."""
    index = torch.as_tensor(patches)
    n = model.grid.n_patches
    hint = f"patches must be flat patch indices in [0, {n}): [k] for every image or [batch={batch}, k]"
    if index.is_floating_point() or index.dtype == torch.bool or index.ndim not in (1, 2) or index.numel() == 0:
        raise ValueError(f"{hint}, got {patches!r}")
    index = index.long().reshape(1, -1) if index.ndim == 1 else index.long()
    if index.shape[0] not in (1, batch) or int(index.min()) < 0 or int(index.max()) >= n:
        raise ValueError(f"{hint}, got shape {tuple(index.shape)} with values in [{int(index.min())}, {int(index.max())}]")
    if any(len(set(row.tolist())) != row.numel() for row in index):
        raise ValueError(f"{hint}; an index appears twice in one image's list")
    region = torch.zeros(index.shape[0], index.shape[1], n, dtype=torch.bool)
    region.scatter_(2, index.unsqueeze(-1), True)
    return region.reshape(*index.shape, *model.grid.grid_size), index


def depth_profile(
    model: HookedViTLike,
    images: Any,
    target: TargetLike = "predicted",
    *,
    patches: Sequence[int] | Tensor | None = None,
    region: Tensor | None = None,
    context: Any = "mean",
    hook: str | None = None,
    score: ScoreLike = "logit",
    relative: bool = False,
    batch_size: int = 64,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    fwd_hooks: Sequence[tuple[Any, Any]] = (),
) -> WindowSweepResult:
    """Single-layer windows ``(l, l + 1)`` for every layer: maps ``[n_layers, batch, gh, gw]``.

    The other arguments are `caap`'s.

    Args:
        patches: Run these patches only — flat indices ``[k]`` (every image) or ``[batch, k]``
            (per image); the maps keep the grid shape, NaN at the patches not run. Default: all.
        region: Patch each region as one unit instead, as in `caap` (maps ``[n_layers, batch, n_regions]``).
    """
    windows = [(layer, layer + 1) for layer in range(model.cfg.n_layers)]
    options = dict(context=context, hook=hook, score=score, relative=relative, batch_size=batch_size,
                   dtype=dtype, progress=progress, fwd_hooks=fwd_hooks)
    if patches is None:
        return window_sweep(model, images, target, windows, region=region, **options)
    if region is not None:
        raise ValueError("give patches= (single patches, grid-shaped maps) or region= (region maps), not both")
    x = prepare_images(model, images)
    model = at_image_size(model, x)
    region, index = _patch_regions(model, patches, x.shape[0])
    sweep = window_sweep(model, x, target, windows, region=region, **options)  # [n_layers, batch, k]
    n_w, batch = sweep.maps.shape[:2]
    full = torch.full((n_w, batch, model.grid.n_patches), float("nan"))
    full.scatter_(2, index.expand(batch, -1).unsqueeze(0).expand(n_w, -1, -1), sweep.maps)
    sweep.maps = full.reshape(n_w, batch, *model.grid.grid_size)
    return sweep


def context_sweep(
    model: HookedViTLike,
    images: Any,
    target: TargetLike = "predicted",
    contexts: Sequence[Any] = ("mean", "black", "blur", "noise"),
    *,
    layers: Window | None = None,
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
) -> dict[str, CAAPResult]:
    """One `caap` result per neutral context (same window, hook and score), keyed by context name.

    Contexts that share a name (two image tensors, two lambdas) are told apart by a suffix
    ``" #2"``, ``" #3"``, ... so that no result is lost. The other options are `caap`'s.
    """
    x = prepare_images(model, images)
    results: dict[str, CAAPResult] = {}
    for context in contexts:
        result = caap(model, x, target, layers=layers, context=context, hook=hook, score=score, relative=relative,
                      region=region, heads=heads, per_layer=per_layer, batch_size=batch_size, dtype=dtype,
                      progress=progress, fwd_hooks=fwd_hooks)
        key, n = result.settings["context"], 1
        while key in results:
            n += 1
            key = f"{result.settings['context']} #{n}"
        results[key] = result
    return results


def score_sweep(
    model: HookedViTLike,
    images: Any,
    target: TargetLike = "predicted",
    scores: Sequence[ScoreLike] = ("logit", "prob", "log_prob", "margin"),
    *,
    layers: Window | None = None,
    context: Any = "mean",
    hook: str | None = None,
    relative: bool = False,
    region: Tensor | None = None,
    heads: bool | Sequence[int] | None = None,
    batch_size: int = 64,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    fwd_hooks: Sequence[tuple[Any, Any]] = (),
) -> dict[str, CAAPResult]:
    """Several scores of the same patched runs (computed once), keyed by score name; options as in `caap`."""
    settings = caap_settings(
        model, layers=layers, context=context, hook=hook, scores=scores, relative=relative, region=region,
        heads=heads, batch_size=batch_size, dtype=dtype, progress=progress, fwd_hooks=fwd_hooks,
    )
    run = patched_scores(model, images, target, settings)
    return {name: run.result(name, 0) for name, _ in settings.scores}

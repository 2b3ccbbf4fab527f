"""`CAAPResult`: a CAAP map with the settings that produced it and how long it took.

Example:
    >>> result = caap(model, images)
    >>> result.map.shape, result.settings["layers"], result.timing["seconds"] > 0
    (torch.Size([2, 8, 8]), (1, 2), True)
    >>> result.to_pixels().shape
    torch.Size([2, 64, 64])
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from caap_lens.attribution import storage
from caap_lens.grid import PatchGrid

if TYPE_CHECKING:
    from caap_lens.model.protocol import HookedViTLike


@dataclass
class CAAPResult:
    """The attribution of one CAAP run.

    Attributes:
        map: Scores per image: ``[batch, grid_h, grid_w]`` for patches, ``[batch, n_heads, gh, gw]``
            per head, ``[batch, n_layers, n_heads, gh, gw]`` per layer and head, ``[batch, n_regions]``
            for regions (heads in front of regions likewise).
        targets: Class index per image ``[batch]``.
        source_score: The score of the unpatched source run ``[batch]``.
        context_score: The score of the unpatched context run ``[batch]`` (``[batch, n_layers]``
            per layer: each layer's window has its own context run).
        grid: The model's patch grid.
        settings: Every choice that produced the map (window, hook, context, score, ...): the
            run's `caap_lens.attribution.settings.CAAPSettings`, which reads as a mapping.
        timing: ``seconds`` (total), ``patched_seconds``, ``rows`` (patched runs),
            ``block_evals`` (transformer blocks evaluated per row, summed).
        source_output: The unpatched model output ``[batch, n_out]`` (float32, CPU): the
            prediction, without another forward pass.
    """

    map: Float[Tensor, "batch *units"]
    targets: Int[Tensor, " batch"]
    source_score: Float[Tensor, " batch"]
    context_score: Float[Tensor, "batch *layers"]
    grid: PatchGrid
    settings: Mapping[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    source_output: Optional[Float[Tensor, "batch n_out"]] = None

    def _per_image(self, values: Tensor) -> Tensor:
        """``[batch]`` (or ``[batch, n_layers]`` per layer) values broadcast against the map."""
        return values.reshape(*values.shape, *([1] * (self.map.ndim - values.ndim)))

    @property
    def effect(self) -> Float[Tensor, "batch *units"]:
        """The map minus the context's score: 0 means the patch changes nothing."""
        if self.settings.get("relative"):
            return self.map
        return self.map - self._per_image(self.context_score)

    @property
    def recovered(self) -> Float[Tensor, "batch *units"]:
        """The effect as a fraction of the source-minus-context gap (1 = the full source score)."""
        gap = self._per_image(self.source_score) - self._per_image(self.context_score)
        equal = gap == 0
        if bool(equal.any()):
            images = sorted({int(i) for i in equal.nonzero()[:, 0]})
            warnings.warn(
                f"recovered is undefined (NaN) for image(s) {images}: the source and the context score "
                "the same, so there is no gap to recover; use result.effect there",
                RuntimeWarning,
                stacklevel=2,
            )
        effect = self.effect
        return torch.where(equal, torch.full_like(effect, float("nan")), effect / gap.where(~equal, 1.0))

    def to_pixels(self, mode: str = "nearest") -> Float[Tensor, "*lead height width"]:
        """The patch map upsampled to the model's input pixels (patch maps only)."""
        if self.map.ndim < 3 or tuple(self.map.shape[-2:]) != self.grid.grid_size:
            raise ValueError("to_pixels needs a patch map; region results have no pixel layout")
        return self.grid.to_pixels(self.map, mode=mode)

    def top_patches(self, k: int = 5, image: int = 0) -> list[dict[str, Any]]:
        """The ``k`` highest-scoring patches of one image: index, row, column, value."""
        if self.map.ndim != 3:
            raise ValueError("top_patches needs a [batch, gh, gw] patch map")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int (how many patches), got {k!r}")
        n_images = self.map.shape[0]
        if isinstance(image, bool) or not isinstance(image, int) or not -n_images <= image < n_images:
            raise ValueError(f"image must be an index into the batch of {n_images}, got {image!r}")
        flat = self.map[image].flatten()
        values, index = flat.topk(min(k, flat.numel()))
        return [
            {"patch": int(i), "row": self.grid.rc_of(int(i))[0], "col": self.grid.rc_of(int(i))[1], "value": float(v)}
            for v, i in zip(values, index)
        ]

    def save(self, path: str | Path, model: HookedViTLike | None = None) -> Path:
        """Writes the result to one ``.safetensors`` file (`caap_lens.attribution.storage`).

        Args:
            path: The file to write.
            model: The `HookedViT` that made the result, to record its origin and config (optional).

        Returns:
            The path written.

        Example:
            >>> result.save("map.safetensors", model=model)
            PosixPath('map.safetensors')
            >>> torch.equal(CAAPResult.load("map.safetensors").map, result.map)
            True
        """
        tensors = {"map": self.map, "targets": self.targets, "source_score": self.source_score,
                   "context_score": self.context_score, "source_output": self.source_output}
        meta = {"kind": "caap", "grid": self.grid, "settings": storage.describe_settings(self.settings),
                "timing": self.timing}
        return storage.save_result(path, tensors, meta, model=model)

    @classmethod
    def load(cls, path: str | Path) -> "CAAPResult":
        """Reads a result written by `save`; its settings are a plain dict (contexts and scores by name).

        Raises:
            caap_lens.attribution.storage.ResultFileError: not a CAAP result file (see `load_result`).
        """
        tensors, meta = storage.load_result(path, kind="caap")
        return cls(map=tensors["map"], targets=tensors["targets"], source_score=tensors["source_score"],
                   context_score=tensors["context_score"], grid=meta["grid"], settings=meta.get("settings", {}),
                   timing=meta.get("timing", {}), source_output=tensors.get("source_output"))

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"CAAPResult(map {tuple(self.map.shape)}, layers={s.get('layers')}, hook={s.get('hook')!r}, "
            f"context={s.get('context')!r}, score={s.get('score')!r}, {self.timing.get('seconds', 0):.2f}s)"
        )


@dataclass
class PatchedScores:
    """What `caap_lens.attribution.engine.patched_scores` returns: every score of every window.

    Attributes:
        maps: ``maps[score_name]`` ``[n_windows, batch, *units]``.
        targets: Class index per image ``[batch]``.
        source_output: The unpatched output ``[batch, n_out]`` (float32, CPU).
        source_score: ``[batch]`` per score name.
        context_score: ``[n_windows, batch]`` per score name (the context run of each window).
        settings: The `CAAPSettings` of the run.
        timing: As in `CAAPResult`.
        grid: The `PatchGrid` of the images the run was on (a dynamic-size model's grid follows them).
    """

    maps: dict[str, Tensor]
    targets: Int[Tensor, " batch"]
    source_output: Float[Tensor, "batch n_out"]
    source_score: dict[str, Tensor]
    context_score: dict[str, Tensor]
    settings: Any
    timing: dict[str, float]
    grid: PatchGrid

    def result(self, name: str, window: int) -> CAAPResult:
        """The `CAAPResult` of one score and one window (its settings name that score only)."""
        settings = self.settings
        if hasattr(settings, "scores") and len(settings.scores) > 1:
            settings = dataclasses.replace(settings, scores=tuple(s for s in settings.scores if s[0] == name))
        return CAAPResult(
            map=self.maps[name][window],
            targets=self.targets,
            source_score=self.source_score[name],
            context_score=self.context_score[name][window],
            grid=self.grid,
            settings=settings,
            timing=self.timing,
            source_output=self.source_output,
        )

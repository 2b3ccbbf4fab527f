"""Perturbation attributions on the input: patch occlusion and RISE, with CAAP's neutral contexts.

Both replace parts of the image by an *image context* — the same ``"mean"`` / ``"black"`` / ``"blur"``
/ ``"noise"`` / tensor / callable contexts CAAP patches into (`caap_lens.attribution.contexts`) — so a
comparison with CAAP differs in *where* the intervention happens (pixels vs. activations), not in what
"absent" means.

* `occlusion` — Zeiler & Fergus (2014), at the model's own patch granularity: for each patch ``p``,
  the image with ``p``'s pixels replaced by the context's pixels there; the map is
  ``score(original) - score(occluded)``: **positive = the patch is evidence for the target**
  (hiding it lowers the score).
* `rise` — Petsiuk, Das & Saenko (2018), "RISE: Randomized Input Sampling for Explanation of
  Black-box Models": ``N`` random binary grids of ``cells`` (default the model's patch grid) with
  keep-probability ``p``, bilinearly upsampled to ``(cells + 1) x`` cell size and cropped at a random
  shift (`rise_masks`, seeded); masked images ``M ⊙ x + (1 - M) ⊙ context``; saliency
  ``S = Σ_i score_i M_i / (N p)`` per pixel. The default score is the target's softmax probability,
  as in the paper (pass ``score="logit"`` to match CAAP). The patch map is the pixel map's mean
  over each patch.

Example:
    >>> patch_map, _ = occlusion(model, images, targets, context="blur")
    >>> patch_map, pixels = rise(model, images, targets, n_masks=2000, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from caap_lens.attribution.scores import ScoreLike, resolve_score
from caap_lens.baselines.base import Images, MethodOutput, Targets, check_inputs, context_image
from caap_lens.model.protocol import HookedViTLike
from caap_lens.model.sizing import at_image_size

Masks = Float[Tensor, "n_masks height width"]


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def batched_scores(
    model: HookedViTLike,
    build: Callable[[Tensor], Images],
    row_targets: Targets,
    score: ScoreLike,
    batch_size: int,
) -> Float[Tensor, " rows"]:
    """Scores of ``build(rows)`` for all rows, ``batch_size`` rows per forward pass (inference mode)."""
    score_fn = resolve_score(score)
    out = []
    with torch.inference_mode():
        for begin in range(0, row_targets.shape[0], batch_size):
            rows = torch.arange(begin, min(begin + batch_size, row_targets.shape[0]))
            output = model(build(rows)).float().cpu()
            out.append(score_fn(output, row_targets[rows]).float())
    return torch.cat(out)


def patch_pixel_masks(model: HookedViTLike) -> Float[Tensor, "n_patches height width"]:
    """One pixel mask per patch (1 inside the patch), row-major, from the model's grid."""
    grid = model.grid
    eye = torch.eye(grid.n_patches).reshape(grid.n_patches, *grid.grid_size)
    return grid.to_pixels(eye)


def occlusion(
    model: HookedViTLike,
    images: Images,
    targets: Targets,
    *,
    context: Any = "mean",
    score: ScoreLike = "logit",
    batch_size: int = 64,
) -> MethodOutput:
    """Occlude one patch at a time with the context's pixels; map = score drop (Zeiler & Fergus, 2014).

    Equal to Captum's ``FeatureAblation`` with one feature per patch and to its ``Occlusion`` with a
    patch-sized window and stride (tested); Zeiler & Fergus slide a grey square at a finer stride.

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``.
        targets: Class per image ``[batch]``.
        context: Image context (as in CAAP): ``"mean"`` (default), ``"black"``, ``"blur"``,
            ``"noise"``, an image tensor or a callable.
        score: ``"logit"`` (default) or any CAAP score.
        batch_size: Occluded images per forward pass.

    Returns:
        ``(patch_map [batch, grid_h, grid_w], None)``: ``score(x) - score(x with the patch occluded)``.

    Example:
        >>> patch_map, _ = occlusion(model, images, targets, context="black", batch_size=32)
    """
    model = at_image_size(model, images)  # a dynamic-size model on the images' grid
    images, targets = check_inputs(model, images, targets)
    batch_size = _positive_int(batch_size, "batch_size")
    ctx = context_image(model, images, context)
    masks = patch_pixel_masks(model).to(images.device).bool()[:, None]  # [n_patches, 1, H, W]
    n = masks.shape[0]

    def build(rows: Tensor) -> Images:
        image_index, patch = (rows // n).to(images.device), (rows % n).to(images.device)
        return torch.where(masks[patch], ctx[image_index], images[image_index])

    original = batched_scores(model, lambda rows: images[rows.to(images.device)], targets, score, batch_size)
    row_targets = targets.repeat_interleave(n)
    occluded = batched_scores(model, build, row_targets, score, batch_size).reshape(-1, n)
    return model.grid.to_grid(original[:, None] - occluded), None


def rise_masks(
    n_masks: int,
    image_size: Sequence[int],
    cells: Sequence[int],
    p: float = 0.5,
    seed: int = 0,
) -> Masks:
    """RISE's random masks, reproducibly (Petsiuk et al., 2018, §3.2).

    Each mask: a ``cells`` binary grid with ``P(1) = p``, bilinearly upsampled to
    ``((cells_h + 1) * cell_h, (cells_w + 1) * cell_w)`` with ``cell = ceil(image / cells)``, then
    cropped to ``image_size`` at a random shift in ``[0, cell)``. Same seed, same masks.

    Args:
        n_masks: Number of masks ``N``.
        image_size: ``(H, W)``.
        cells: ``(cells_h, cells_w)`` of the coarse grid.
        p: Probability that a cell is kept.
        seed: Seed of the generator (grids first, then shifts).

    Returns:
        ``[n_masks, H, W]`` masks in [0, 1], float32, CPU.

    Example:
        >>> rise_masks(4, (32, 48), (2, 3), p=0.5, seed=0).shape
        torch.Size([4, 32, 48])
    """
    grids, shifts = _rise_draws(n_masks, cells, p, seed, image_size)
    return _render_masks(grids, shifts, image_size)


def _rise_draws(
    n_masks: int, cells: Sequence[int], p: float, seed: int, image_size: Sequence[int]
) -> tuple[Tensor, Tensor]:
    n_masks = _positive_int(n_masks, "n_masks")
    if len(tuple(cells)) != 2:
        raise ValueError(f"cells must be (cells_h, cells_w), got {cells!r}")
    ch, cw = (_positive_int(c, "cells") for c in cells)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be in (0, 1], got {p!r}")
    h, w = image_size
    cell_h, cell_w = math.ceil(h / ch), math.ceil(w / cw)
    gen = torch.Generator().manual_seed(int(seed))
    grids = (torch.rand(n_masks, 1, ch, cw, generator=gen) < p).float()
    shifts = torch.stack(
        [torch.randint(0, cell_h, (n_masks,), generator=gen), torch.randint(0, cell_w, (n_masks,), generator=gen)],
        dim=1,
    )
    return grids, shifts


def _render_masks(grids: Tensor, shifts: Tensor, image_size: Sequence[int]) -> Masks:
    h, w = image_size
    ch, cw = grids.shape[-2:]
    cell_h, cell_w = math.ceil(h / ch), math.ceil(w / cw)
    up = F.interpolate(grids, size=((ch + 1) * cell_h, (cw + 1) * cell_w), mode="bilinear", align_corners=False)
    rows = shifts[:, 0, None] + torch.arange(h)  # [n, H]
    cols = shifts[:, 1, None] + torch.arange(w)  # [n, W]
    index = torch.arange(grids.shape[0])[:, None, None]
    return up[:, 0][index, rows[:, :, None], cols[:, None, :]]


def rise(
    model: HookedViTLike,
    images: Images,
    targets: Targets,
    *,
    n_masks: int = 1000,
    cells: Sequence[int] | None = None,
    p: float = 0.5,
    context: Any = "mean",
    seed: int = 0,
    score: ScoreLike = "prob",
    batch_size: int = 64,
) -> MethodOutput:
    """RISE saliency (Petsiuk et al., 2018) with a CAAP image context for the removed pixels.

    As RISE's ``explanations.py``: the same mask construction and ``Σ_i score_i M_i / (N p)``; it
    differs in what removed pixels become (the reference multiplies the normalised image by the mask,
    i.e. the ``"mean"`` context here, the default) and in seeding and chunking the masks.

    Masks are drawn once (seeded) and rendered ``batch_size`` at a time, so memory does not grow with
    ``n_masks`` and the result does not depend on ``batch_size``.

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``.
        targets: Class per image ``[batch]``.
        n_masks: Number of random masks ``N`` (the paper uses thousands).
        cells: Coarse grid ``(cells_h, cells_w)``; default the model's patch grid.
        p: Keep-probability of a cell.
        context: What removed pixels become: an image context as in CAAP (default ``"mean"``, a zero
            normalised input, i.e. RISE's masking of the normalised image).
        seed: Seed of the masks (see `rise_masks`).
        score: ``"prob"`` (default, as in the paper), ``"logit"`` or any CAAP score.
        batch_size: Masked images per forward pass.

    Returns:
        ``(patch_map [batch, grid_h, grid_w], pixel_map [batch, H, W])``.

    Example:
        >>> patch_map, pixels = rise(model, images, targets, n_masks=4000, cells=(7, 7))  # doctest: +SKIP
    """
    model = at_image_size(model, images)  # a dynamic-size model on the images' grid
    images, targets = check_inputs(model, images, targets)
    batch_size = _positive_int(batch_size, "batch_size")
    cells = tuple(cells) if cells is not None else model.grid.grid_size
    size = tuple(images.shape[-2:])
    grids, shifts = _rise_draws(n_masks, cells, p, seed, size)
    ctx = context_image(model, images, context)
    saliency = torch.zeros(images.shape[0], *size, dtype=torch.float64)
    for begin in range(0, grids.shape[0], batch_size):
        masks = _render_masks(grids[begin : begin + batch_size], shifts[begin : begin + batch_size], size)
        m = masks.to(device=images.device, dtype=images.dtype)[:, None]  # [chunk, 1, H, W]
        for i in range(images.shape[0]):

            def build(rows: Tensor, i: int = i) -> Images:
                keep = m[rows.to(images.device)]
                return keep * images[i] + (1 - keep) * ctx[i]

            scores = batched_scores(model, build, targets[i].repeat(masks.shape[0]), score, batch_size)
            saliency[i] += torch.einsum("n,nhw->hw", scores.double(), masks.double())
    pixels = (saliency / (grids.shape[0] * p)).float()
    return model.grid.pool_pixels(pixels, reduce="mean"), pixels

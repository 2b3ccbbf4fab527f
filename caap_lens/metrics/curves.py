"""Perturbation curves: replace image units in the order a map ranks them and track the model's score.

Units are patches (``unit="patch"``) or pixels (``unit="pixel"``); by default a map's own resolution
(a patch map ``[batch, gh, gw]`` ranks patches, a pixel map ``[batch, H, W]`` ranks pixels). A pixel
map at ``unit="patch"`` is averaged over each patch; a patch map at ``unit="pixel"`` is upsampled
(nearest), so the pixels of one patch tie. **Ranking and ties**: units are sorted by decreasing map
value with a *stable* sort, so equal values keep their index order (row-major; lower index first) —
the same map always gives the same order, on any device. A *replaced* unit takes the substrate
image's pixels there; a *kept* unit keeps the source's.

Protocols:

* `deletion_curve` (RISE, Petsiuk et al., BMVC 2018) — start from the image and replace the most
  important units first, with the substrate (default ``"mean"``: a zero normalised input, RISE's
  ``torch.zeros_like``). A sharp drop (low AUC) is good.
* `insertion_curve` (RISE) — start from the substrate (default ``"rise_blur"``, RISE's blur scaled to
  the image size: `RiseBlur`) and put back the most important units first. A fast rise (high AUC) is
  good. RISE blurs 224-px images with an 11 x 11 kernel of σ = 5 px; the same absolute blur on a
  64-px image would be 3.5 x stronger relative to the image, and CAAP's ``"blur"`` context
  (σ = 8 px) 5.6 x, so the insertion substrate scales σ and the kernel with the image size.

  Both have ``steps + 1`` points: after step ``s`` the first ``k_s = floor(s · n_units / steps)`` units
  of the ranking are replaced (deletion) or kept (insertion); ``x = k_s / n_units`` runs from 0 to 1
  exactly, ``y`` is the score of the target class (default ``"prob"``, RISE's softmax probability), and
  ``auc = trapezoid(y, x)`` over x in [0, 1]. RISE's own code is the normalised trapezoid
  ``(sum(y) - y_0 / 2 - y_n / 2) / n`` on uniform steps: the same number when ``steps`` divides
  ``n_units``.
* `perturbation_curve` (Chefer et al., "Transformer Interpretability Beyond Attention
  Visualization", CVPR 2021) — replace the top (``positive=True``) or bottom (``positive=False``)
  fraction ``f`` of units, for ``f`` in 0, 0.1, ..., 0.9, with black pixels (Chefer zeroes pixels
  before normalisation), and measure whether the model's top-1 class is still the target
  (``score="accuracy"``; any continuous score works too). ``k = floor(f · n_units)`` units, as
  Chefer's ``topk(int(f · n))``; ``x = k / n_units``; ``auc = trapezoid(y, x)``, *not* normalised:
  with the default fractions x spans [0, 0.9], and 100 · auc is Chefer's number. Positive: lower is
  better; negative: higher is better. The negative ranking is exactly the positive one reversed, so
  positive at ``k`` and negative at ``n_units - k`` replace complementary sets.

The curves follow RISE's ``CausalMetric`` (``evaluation.py``) point for point when ``steps`` divides
the number of units (tested against a direct transcription of it).

Targets are resolved on the unperturbed images (``"predicted"`` = their top class) and kept fixed.
Every point of every image goes through the model in chunks of ``batch_size`` rows; chunking does
not change the result.

Example:
    >>> curve = deletion_curve(model, images, result.map, "predicted", steps=16)
    >>> curve.x.shape, curve.y.shape, curve.auc.shape
    (torch.Size([17]), torch.Size([2, 17]), torch.Size([2]))
    >>> curve.mean_ci().n
    2
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from caap_lens.attribution.contexts import ImageContext, resolve_context
from caap_lens.attribution.scores import ScoreLike, resolve_score, score_name, scores_index_classes, target_space
from caap_lens.attribution.targets import TargetLike, resolve_targets
from caap_lens.model.protocol import HookedViTLike
from caap_lens.model.sizing import at_image_size
from caap_lens.stats import MeanCI, mean_ci

Unit = Literal["patch", "pixel"]
Mode = Literal["deletion", "insertion", "positive", "negative"]
MODES = ("deletion", "insertion", "positive", "negative")
DEFAULT_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Curve:
    """One perturbation curve per image.

    Attributes:
        x: Fraction of units replaced (deletion, positive, negative) or kept (insertion) ``[points]``.
        y: Score after each step ``[batch, points]``.
        auc: ``trapezoid(y, x)`` per image ``[batch]``.
        targets: The class index scored for each image ``[batch]``.
        settings: kind, unit, n_units, counts, substrate, score, batch_size.
    """

    x: Float[Tensor, " points"]
    y: Float[Tensor, "batch points"]
    auc: Float[Tensor, " batch"]
    targets: Int[Tensor, " batch"]
    settings: dict[str, Any] = field(default_factory=dict)

    def mean_ci(self, level: float = 0.95, method: Literal["t", "bootstrap"] = "t") -> MeanCI:
        """``(mean, lo, hi)`` of the AUC over images, with ``n`` and ``n_dropped`` (`caap_lens.stats.mean_ci`)."""
        return mean_ci(self.auc, level=level, method=method)


def curve_auc(x: Float[Tensor, " points"], y: Float[Tensor, "batch points"]) -> Float[Tensor, " batch"]:
    """Trapezoid rule ``sum_i (x_{i+1} - x_i) (y_i + y_{i+1}) / 2`` along the last axis.

    Example:
        >>> curve_auc(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([[1.0, 0.0, 0.0]]))
        tensor([0.2500])
    """
    return torch.trapezoid(y, x=x.to(y.dtype), dim=-1)


def accuracy(output: Float[Tensor, "rows n_out"], target: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
    """1.0 where the top-1 class is the target, else 0.0 (Chefer et al.'s perturbation score)."""
    return (output.argmax(dim=-1) == target.to(output.device)).float()


def _score_fn(score: ScoreLike) -> Any:
    return accuracy if score == "accuracy" else resolve_score(score)


def _check_maps(model: HookedViTLike, maps: Any, batch: int) -> Tensor:
    maps = torch.as_tensor(maps)
    grid, size = model.grid.grid_size, tuple(model.cfg.image_size)
    if maps.dtype == torch.bool or maps.is_complex():
        raise TypeError(f"maps must hold real numbers, got dtype {maps.dtype}")
    if maps.ndim != 3 or tuple(maps.shape[1:]) not in (grid, size):
        raise ValueError(f"maps must be patch maps [batch, {grid[0]}, {grid[1]}] or pixel maps "
                         f"[batch, {size[0]}, {size[1]}] for this model, got {tuple(maps.shape)}")
    if maps.shape[0] != batch:
        raise ValueError(f"batch size mismatch: {maps.shape[0]} maps for {batch} images")
    if torch.isnan(maps).any():
        raise ValueError("maps contain NaN")
    return maps.float()


def _unit_values(model: HookedViTLike, maps: Tensor, unit: Unit | None) -> tuple[Tensor, Unit]:
    is_patch = tuple(maps.shape[1:]) == model.grid.grid_size
    unit = unit if unit is not None else ("patch" if is_patch else "pixel")
    if unit == "patch":
        values = maps if is_patch else model.grid.pool_pixels(maps.to(torch.float32), "mean")
    elif unit == "pixel":
        values = model.grid.to_pixels(maps, mode="nearest") if is_patch else maps
    else:
        raise ValueError(f"unit must be 'patch', 'pixel' or None, got {unit!r}")
    return values.flatten(1), unit


def unit_order(model: HookedViTLike, maps: Any, unit: Unit | None = None) -> tuple[Int[Tensor, "batch n_units"], Unit]:
    """Units from most to least important: a stable sort by decreasing map value (ties: lower index first).

    Args:
        model: The `HookedViT` (for its grid and image size).
        maps: Patch maps ``[batch, gh, gw]`` or pixel maps ``[batch, H, W]``.
        unit: ``"patch"``, ``"pixel"`` or None (the map's own resolution).

    Returns:
        ``(order [batch, n_units], unit)``; patches and pixels are indexed row-major.

    Example:
        >>> unit_order(model, torch.arange(64.0).reshape(1, 8, 8))[0][:, :4]  # 8x8 grid, highest first
        tensor([[63, 62, 61, 60]])
    """
    return _order(model, _check_maps(model, maps, torch.as_tensor(maps).shape[0]), unit)


def _order(model: HookedViTLike, maps: Tensor, unit: Unit | None) -> tuple[Tensor, Unit]:
    values, unit = _unit_values(model, maps, unit)
    return values.sort(dim=1, descending=True, stable=True).indices, unit


def _ranks(order: Tensor, mode: Mode) -> Tensor:
    """Position of each unit in the replacement order (0 = replaced first)."""
    n = order.shape[1]
    if mode == "negative":
        order = order.flip(1)
    positions = torch.arange(n, device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _replaced(ranks: Tensor, counts: Tensor, mode: Mode) -> Bool[Tensor, "rows n_units"]:
    """Row-wise replaced units, for rows given as ``ranks [rows, n_units]`` and ``counts [rows]``."""
    first_k = ranks < counts[:, None]
    return ~first_k if mode == "insertion" else first_k


def _compose(model: HookedViTLike, images: Tensor, substrate: Tensor, replaced: Tensor, unit: Unit) -> Tensor:
    if unit == "patch":
        return model.grid.compose(replaced.view(-1, *model.grid.grid_size), substrate, images)
    pixel_mask = replaced.view(-1, *model.cfg.image_size)
    return torch.where(pixel_mask[:, None], substrate, images)


def rise_kernel(size: int, sigma: float) -> Float[Tensor, "size size"]:
    """RISE's blur kernel: a centred unit impulse in a ``size x size`` array, Gaussian-filtered.

    As RISE's ``gkern`` (``scipy.ndimage.gaussian_filter`` of the impulse: a Gaussian truncated at
    4σ, its tails folded back into the array by reflection), so the kernel sums to 1 and is nearly
    flat when σ exceeds the kernel's size, as RISE's σ = 5 on 11 x 11 is.

    Example:
        >>> k = rise_kernel(3, 1.0)
        >>> round(float(k.sum()), 6), tuple(k.shape)
        (1.0, (3, 3))
    """
    if isinstance(size, bool) or int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd int, got {size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = weights / weights.sum()
    centre, period = size // 2, 2 * size
    one_d = torch.zeros(size, dtype=torch.float64)
    for i in range(size):
        positions = (i + offsets.long()) % period
        positions = torch.where(positions >= size, period - 1 - positions, positions)  # half-sample reflection
        one_d[i] = weights[positions == centre].sum()
    return torch.outer(one_d, one_d).float()


class RiseBlur(ImageContext):
    """RISE's insertion substrate, scaled to the image: each channel blurred with `rise_kernel`.

    RISE (Petsiuk et al., BMVC 2018, ``evaluation.py``) blurs the normalised 224-px image with an
    ``11 x 11`` kernel of σ = 5 px and zero padding. Here both scale with ``s = min(H, W) / 224``:
    σ = ``5 s`` px and the kernel size ``11 s`` rounded to the nearest odd integer (at least 1; at
    224 px exactly RISE's). Zero padding in normalised space, as RISE (so the border tends to the
    dataset-mean colour). ``sigma``/``size`` override the scaled values.

    Example:
        >>> size, sigma = RiseBlur().settings((64, 64)); size, round(sigma, 4)
        (3, 1.4286)
        >>> RiseBlur().settings((224, 224))
        (11, 5.0)
    """

    def __init__(self, sigma: float | None = None, size: int | None = None):
        self.sigma, self.size = sigma, size
        self.name = "rise_blur" if sigma is None and size is None else f"rise_blur(sigma={sigma}, size={size})"

    def settings(self, image_size: Sequence[int]) -> tuple[int, float]:
        """``(kernel size, sigma)`` for an image of ``image_size`` = ``(H, W)``."""
        scale = min(int(image_size[0]), int(image_size[1])) / 224
        size = self.size if self.size is not None else max(1, 2 * round((11 * scale - 1) / 2) + 1)
        sigma = self.sigma if self.sigma is not None else 5.0 * scale
        return int(size), float(sigma)

    def image(self, model: HookedViTLike, images: Tensor) -> Tensor:
        size, sigma = self.settings(images.shape[-2:])
        kernel = rise_kernel(size, sigma).to(images.device, images.dtype)
        c = images.shape[1]
        return torch.nn.functional.conv2d(images, kernel.expand(c, 1, size, size), padding=size // 2, groups=c)


def _resolve_substrate(substrate: Any) -> Any:
    if isinstance(substrate, str) and substrate == "rise_blur":
        return RiseBlur()
    return resolve_context(substrate)


def substrate_images(model: HookedViTLike, images: Tensor, substrate: Any) -> Float[Tensor, "batch channel height width"]:
    """The substrate, one per image, in the model's normalised space.

    ``substrate`` is a context name (``"black"``, ``"mean"``, ``"blur"``, ``"noise"``), ``"rise_blur"``
    (`RiseBlur`), an image tensor ``[C, H, W]`` / ``[1 or batch, C, H, W]``, a callable
    ``f(model, images)`` or an image context.
    """
    context = _resolve_substrate(substrate)
    if not isinstance(context, ImageContext):
        raise ValueError(f"substrate must be an image (a name among 'black', 'mean', 'blur', 'noise', a "
                         f"tensor or a callable), not the activation-level context {context.name!r}")
    out = context.image(model, images).to(images.device, images.dtype)
    return out.expand(images.shape[0], -1, -1, -1) if out.shape[0] == 1 else out


def _check_counts(counts: Sequence[int], n_units: int) -> Tensor:
    counts_t = torch.as_tensor(list(counts), dtype=torch.long)
    if counts_t.ndim != 1 or counts_t.numel() == 0 or (counts_t < 0).any() or (counts_t > n_units).any():
        raise ValueError(f"counts must be a non-empty list of ints in [0, {n_units}], got {list(counts)}")
    return counts_t


def perturbed_images(
    model: HookedViTLike,
    images: Tensor,
    maps: Any,
    counts: Sequence[int],
    *,
    mode: Mode = "deletion",
    substrate: Any = "black",
    unit: Unit | None = None,
) -> Float[Tensor, "batch points channel height width"]:
    """The perturbed inputs of a curve, for inspection: one image per count.

    ``mode="deletion"`` / ``"positive"``: the first ``k`` units of the ranking take the substrate;
    ``"insertion"``: all units but the first ``k``; ``"negative"``: the last ``k``.

    Args:
        model: The `HookedViT`.
        images: Normalised ``[batch, C, H, W]``.
        maps: Patch or pixel maps ``[batch, ...]``.
        counts: Numbers of units ``k`` (each in ``[0, n_units]``).
        mode: See above.
        substrate: See `substrate_images`.
        unit: ``"patch"``, ``"pixel"`` or None (the map's resolution).

    Example:
        >>> x = perturbed_images(model, images, maps, [0, 3], mode="deletion")
        >>> x.shape  # [batch, 2, C, H, W]; x[:, 1] has the top-3 patches replaced
        torch.Size([2, 2, 3, 64, 64])
    """
    model = at_image_size(model, images)  # a dynamic-size model on the images' grid
    images = model.check_images(images)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    order, unit = _order(model, _check_maps(model, maps, images.shape[0]), unit)
    counts_t = _check_counts(counts, order.shape[1]).to(images.device)
    ranks = _ranks(order.to(images.device), mode)
    base = substrate_images(model, images, substrate)
    b = torch.arange(images.shape[0], device=images.device).repeat_interleave(len(counts_t))
    k = counts_t.repeat(images.shape[0])
    out = _compose(model, images[b], base[b], _replaced(ranks[b], k, mode), unit)
    return out.view(images.shape[0], len(counts_t), *images.shape[1:])


def _run(
    model: HookedViTLike,
    images: Any,
    maps: Any,
    targets: TargetLike,
    mode: Mode,
    substrate: Any,
    unit: Unit | None,
    score: ScoreLike,
    batch_size: int,
    steps: int | None = None,
    fractions: Sequence[float] | None = None,
) -> Curve:
    """The engine of every curve: ``steps`` (RISE) or ``fractions`` (Chefer) give the counts."""
    model = at_image_size(model, images)  # a dynamic-size model on the images' grid
    images = model.check_images(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    score_fn = _score_fn(score)
    order, unit = _order(model, _check_maps(model, maps, images.shape[0]), unit)
    n_units = order.shape[1]
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        counts = torch.tensor([s * n_units // steps for s in range(steps + 1)])
    else:
        f = [float(v) for v in fractions or ()]
        if not f or any(not 0.0 <= v <= 1.0 for v in f):
            raise ValueError(f"fractions must be a non-empty list of numbers in [0, 1], got {list(fractions)}")
        counts = torch.tensor([math.floor(v * n_units + 1e-9) for v in f])
    counts = counts.to(images.device)
    substrate_name = getattr(_resolve_substrate(substrate), "name", "custom")
    with torch.no_grad():
        clean = model(images)
        by_class = score == "accuracy" or scores_index_classes(score)
        target_idx = resolve_targets(model, targets, clean, check_range=by_class,
                                     space=None if score == "accuracy" else target_space(score))
        ranks = _ranks(order.to(images.device), mode)
        base = substrate_images(model, images, substrate)
        n_points = counts.numel()
        rows = images.shape[0] * n_points
        y = torch.empty(rows, dtype=torch.float64)
        for start in range(0, rows, batch_size):
            idx = torch.arange(start, min(start + batch_size, rows), device=images.device)
            b, s = idx // n_points, idx % n_points
            x_rows = _compose(model, images[b], base[b], _replaced(ranks[b], counts[s], mode), unit)
            y[start : start + len(idx)] = score_fn(model(x_rows), target_idx.to(images.device)[b]).double().cpu()
    x = counts.cpu().double() / n_units
    y = y.view(images.shape[0], n_points)
    settings = {"kind": mode, "unit": unit, "n_units": n_units, "counts": counts.cpu().tolist(),
                "substrate": substrate_name,
                "score": "accuracy" if score == "accuracy" else score_name(score), "batch_size": batch_size}
    return Curve(x=x, y=y, auc=curve_auc(x, y), targets=target_idx, settings=settings)


def deletion_curve(
    model: HookedViTLike,
    images: Any,
    maps: Any,
    targets: TargetLike = "predicted",
    *,
    substrate: Any = "mean",
    steps: int | None = None,
    unit: Unit | None = None,
    score: ScoreLike = "prob",
    batch_size: int = 64,
) -> Curve:
    """RISE deletion: replace the most important units first; lower AUC is better.

    ``x`` has ``steps + 1`` points from 0 to 1 (the fraction of units replaced), ``y[:, 0]`` is the
    score of the image itself and ``y[:, -1]`` that of the pure substrate;
    ``auc = trapezoid(y, x)`` over x in [0, 1]. See the module docstring for ranking and ties.

    Args:
        model: A `HookedViT`.
        images: Normalised ``[batch, C, H, W]``.
        maps: Patch maps ``[batch, gh, gw]`` or pixel maps ``[batch, H, W]``.
        targets: ``"predicted"``, a class index or name, or one per image.
        substrate: What replaces a unit: ``"mean"`` (default, RISE), ``"black"``, ``"blur"``,
            ``"noise"``, an image tensor or a callable ``f(model, images)``.
        steps: Number of steps; default one unit per step for patches and ``n_patches`` steps for
            pixels (a patch's worth of pixels per step, as RISE's 224 px per step at 224²).
        unit: ``"patch"``, ``"pixel"`` or None (the map's own resolution).
        score: ``"prob"`` (default), ``"logit"``, ``"log_prob"``, ``"margin"``, ``"accuracy"`` or a
            callable ``(output, target) -> [rows]``.
        batch_size: Perturbed images per forward pass.

    Example:
        >>> curve = deletion_curve(model, images, maps, "predicted")
        >>> 0 <= float(curve.auc.mean()) <= 1
        True
    """
    model = at_image_size(model, images)
    steps = model.grid.n_patches if steps is None else steps
    return _run(model, images, maps, targets, "deletion", substrate, unit, score, batch_size, steps=steps)


def insertion_curve(
    model: HookedViTLike,
    images: Any,
    maps: Any,
    targets: TargetLike = "predicted",
    *,
    substrate: Any = "rise_blur",
    steps: int | None = None,
    unit: Unit | None = None,
    score: ScoreLike = "prob",
    batch_size: int = 64,
) -> Curve:
    """RISE insertion: start from the substrate, put the most important units back first; higher AUC is better.

    ``x`` has ``steps + 1`` points from 0 to 1 (the fraction of units kept from the image), ``y[:, 0]``
    is the score of the pure substrate and ``y[:, -1]`` that of the image. Arguments as
    `deletion_curve`, except the default substrate ``"rise_blur"`` (RISE blurs the image; `RiseBlur`
    scales RISE's σ = 5 px / 11 px kernel at 224 px to the image size). Pass ``substrate="blur"`` for
    CAAP's stronger blur context (σ = 8 px at any size).

    Example:
        >>> curve = insertion_curve(model, images, maps, "predicted", steps=16)
    """
    model = at_image_size(model, images)
    steps = model.grid.n_patches if steps is None else steps
    return _run(model, images, maps, targets, "insertion", substrate, unit, score, batch_size, steps=steps)


def perturbation_curve(
    model: HookedViTLike,
    images: Any,
    maps: Any,
    targets: TargetLike = "predicted",
    *,
    positive: bool = True,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    substrate: Any = "black",
    score: ScoreLike = "accuracy",
    unit: Unit | None = None,
    batch_size: int = 64,
) -> Curve:
    """Chefer et al.'s positive/negative perturbation test.

    Replaces the top (``positive=True``) or bottom (``positive=False``) ``floor(f · n_units)`` units for
    each fraction ``f`` (default 0, 0.1, ..., 0.9; the 0 step is the unperturbed image) with black
    pixels, and scores each image. ``auc = trapezoid(y, x)`` with ``x = k / n_units`` (not normalised).
    Positive: lower AUC is better (removing what the map calls important should break the
    prediction); negative: higher is better.

    Args:
        model: A `HookedViT`.
        images: Normalised ``[batch, C, H, W]``.
        maps: Patch maps ``[batch, gh, gw]`` or pixel maps ``[batch, H, W]``.
        targets: ``"predicted"`` (Chefer's setting), a class index or name, or one per image.
        positive: Remove the most (True) or least (False) important units.
        fractions: Fractions of units removed, each in [0, 1].
        substrate: ``"black"`` (default, Chefer), or as in `deletion_curve`.
        score: ``"accuracy"`` (default: 1 if the top-1 class is still the target), or a continuous
            score as in `deletion_curve`.
        unit: ``"patch"``, ``"pixel"`` or None (the map's resolution).
        batch_size: Perturbed images per forward pass.

    Example:
        >>> pos = perturbation_curve(model, images, maps, positive=True)
        >>> neg = perturbation_curve(model, images, maps, positive=False)
        >>> float(pos.auc.mean()) < float(neg.auc.mean())  # a faithful map
        True
    """
    mode: Mode = "positive" if positive else "negative"
    return _run(model, images, maps, targets, mode, substrate, unit, score, batch_size, fractions=fractions)

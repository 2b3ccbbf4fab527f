"""Model-randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

An attribution method that explains the *model* must give different maps once the model's weights
are destroyed. The cascading test re-initialises the network from the top down and compares the
maps of the original and the randomised model on the same images and the same target classes.

Protocol here:

* `randomise_layers` returns a **copy** (the original is never touched) whose blocks
  ``start_layer .. n_layers - 1`` and, with ``head=True``, its classifier head (and the final and
  pooled norms) are re-initialised as timm initialises a ViT: weight matrices from a truncated normal
  ``N(0, 0.02²)`` cut at ±2σ, biases 0, LayerNorm scales 1 and shifts 0; layer-scale factors keep their
  values. With ``start_layer="embed"`` the embedding is re-initialised too (patch projection,
  position embedding, prefix tokens and the pre-norm, as above: matrices and tokens from the truncated
  normal) — the last stage of the cascade, where nothing of the trained model is left. Each block
  draws from its own generator, seeded by ``(seed, 0, layer)`` (the head by ``(seed, 1)``, the
  embedding by ``(seed, 2)``), so a cascade is nested: the randomised block ``l`` is the same at every
  stage that includes it. ``start_layer = n_layers`` with ``head=True`` randomises the head only; with
  ``head=False`` nothing (an identical copy).
* `randomisation_check` runs ``method_fn(model, images, targets) -> maps [batch, ...]`` on the
  original model and on each randomised copy (default cascade ``n_layers, n_layers - 1, ..., 0``),
  with the targets resolved once on the original model (``"predicted"`` = its top class), for one or
  several ``seeds`` of the random weights, and reports per image and seed: Spearman's rank correlation of the maps (``spearman``), of their absolute values
  (``spearman_abs``, Adebayo's "absolute value" variant), and ``top_overlap``, the fraction of the
  original's top-10 % units (stable ranking, ties by index) that are also in the randomised top-10 %.
  These are reported numbers, not a verdict: per stage, the mean Spearman with a 95 % t interval over
  images (each image's Spearman first averaged over the seeds), and how many values were undefined.
  For convenience ``differs`` is True at a stage when the mean Spearman is below ``threshold``
  (default 0.5; an arbitrary, stated cut). Correlation is NaN for a constant map; those NaNs are
  counted (``n_undefined``), never dropped silently. Adebayo et al. use many images and several
  seeds; earlier versions here never randomised the embedding and ran on one seed.

Example:
    >>> fn = lambda m, x, t: caap_lens.caap(m, x, t).map
    >>> report = randomisation_check(fn, model, images, "predicted")
    >>> report["start_layers"], report["mean_spearman"].shape
    ((4, 3, 2, 1, 0, 'embed'), torch.Size([6]))
"""

from __future__ import annotations

import copy
import math
import operator
from typing import Any, Callable, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from caap_lens._deprecation import UNSET, renamed
from caap_lens.attribution.targets import TargetLike, resolve_targets
from caap_lens.model.protocol import HookedViTLike
from caap_lens.model.sizing import at_image_size
from caap_lens.stats import mean_ci, spearman

MethodFn = Callable[[Any, Tensor, Tensor], Tensor]
INIT_STD = 0.02


def _generator(seed: int, *part: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), *part]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _reinitialise_(module: nn.Module, gen: torch.Generator) -> None:
    """timm-style init of every parameter of ``module`` in place (layer-scale factors kept)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "layer_scale":
                continue
            if p.ndim >= 2:
                fresh = torch.empty(p.shape, dtype=torch.float32)
                nn.init.trunc_normal_(fresh, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD, generator=gen)
            elif leaf == "w":  # LayerNorm scale
                fresh = torch.ones(p.shape)
            else:  # biases, LayerNorm shifts
                fresh = torch.zeros(p.shape)
            p.copy_(fresh.to(p.device, p.dtype))


EMBED = "embed"
"""The cascade stage after block 0: every block and the embedding re-initialised."""


def randomise_layers(
    model: HookedViTLike, start_layer: int | str | None = None, *, seed: int = 0, head: bool = True,
    from_layer: Any = UNSET,
) -> Any:
    """A copy of ``model`` with blocks ``>= start_layer`` (and the head) re-initialised.

    Args:
        model: A `HookedViT`; it is deep-copied and never modified.
        start_layer: First randomised block, in ``[0, n_layers]`` (``n_layers``: no block), or
            ``"embed"``: every block and the embedding (patch projection, position embedding, prefix
            tokens, pre-norm). ``from_layer=`` is its deprecated old name.
        seed: Non-negative seed of the new weights (block ``l`` uses ``(seed, 0, l)``, the head ``(seed, 1)``).
        head: Also re-initialise the classifier head and the final/pooled norms.

    Returns:
        The randomised copy, in eval mode, on the model's device.

    Example:
        >>> random_model = randomise_layers(model, 0, seed=1)  # every block and the head
    """
    n = model.cfg.n_layers
    start_layer = renamed("randomise_layers", "from_layer", "start_layer", old_value=from_layer,
                          new_value=start_layer, default=None)
    if start_layer is None:
        raise TypeError(f"randomise_layers needs start_layer: an int in [0, {n}] or 'embed'")
    embed = isinstance(start_layer, str) and start_layer == EMBED
    if embed:
        start_layer = 0
    try:
        start_layer = operator.index(start_layer)
    except TypeError:
        raise TypeError(f"start_layer must be an int in [0, {n}] or 'embed', got {start_layer!r}") from None
    if not 0 <= start_layer <= n:
        raise ValueError(f"start_layer must be in [0, {n}] for a {n}-layer model, got {start_layer}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    clone = copy.deepcopy(model)
    for layer in range(start_layer, n):
        _reinitialise_(clone.blocks[layer], _generator(seed, 0, layer))
    if head:
        gen = _generator(seed, 1)
        for part in ("ln_final", "attn_pool", "ln_pooled", "head", "head_dist"):
            if getattr(clone, part, None) is not None:
                _reinitialise_(getattr(clone, part), gen)
    if embed:
        gen = _generator(seed, 2)
        for part in ("embed", "pos_embed", "ln_pre"):
            if getattr(clone, part, None) is not None:
                _reinitialise_(getattr(clone, part), gen)
    return clone.eval()


def _flat_maps(maps: Any, batch: int, who: str) -> Tensor:
    if not isinstance(maps, Tensor) or maps.ndim < 2 or maps.shape[0] != batch:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"method_fn must return maps [batch={batch}, ...] ({who}), got {shape}")
    return maps.detach().flatten(1).double().cpu()


def top_overlap(
    a: Float[Tensor, "batch n"], b: Float[Tensor, "batch n"], fraction: float = 0.1
) -> Float[Tensor, " batch"]:
    """Fraction of the top ``ceil(fraction · n)`` units of ``a`` that are also top in ``b`` (stable ranking).

    Example:
        >>> top_overlap(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), torch.tensor([[3.0, 0.0, 1.0, 2.0]]), 0.5)
        tensor([0.5000])
    """
    k = max(1, math.ceil(fraction * a.shape[1]))
    top_a, top_b = (
        torch.zeros_like(v, dtype=torch.bool).scatter_(1, v.sort(dim=1, descending=True, stable=True).indices[:, :k], 1)
        for v in (a, b)
    )
    return (top_a & top_b).sum(1).float() / k


def randomisation_check(
    method_fn: MethodFn,
    model: HookedViTLike,
    images: Tensor,
    targets: TargetLike = "predicted",
    *,
    start_layers: Sequence[int | str] | None = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    head: bool = True,
    threshold: float = 0.5,
    from_layers: Any = UNSET,
) -> dict[str, Any]:
    """Cascading model-randomisation check of an attribution method.

    Args:
        method_fn: ``fn(model, images, targets) -> maps [batch, ...]`` (``targets`` an int tensor).
        model: A `HookedViT` (left unchanged).
        images: Normalised ``[batch, C, H, W]``.
        targets: ``"predicted"``, a class index or name, or one per image; resolved on the original.
        start_layers: Stages, each a `randomise_layers` ``start_layer``; default
            ``(n_layers, n_layers - 1, ..., 0, "embed")`` (top-down cascade, through the embedding).
            ``from_layers=`` is its deprecated old name.
        seed: Seed of the random weights (see `randomise_layers`), when ``seeds`` is not given.
        seeds: Several seeds; every stage is run once per seed.
        head: Randomise the head at every stage.
        threshold: ``differs`` is ``mean_spearman < threshold``.

    Returns:
        A dict: ``start_layers`` (tuple), ``seeds`` (tuple), ``spearman``, ``spearman_abs``,
        ``top_overlap`` (each ``[n_stages, n_seeds * batch]``, seed-major: the first ``batch``
        columns are the first seed's), ``mean_spearman`` ``[n_stages]``, ``ci_spearman``
        ``[n_stages, 2]`` (95 % t interval over images of their seed-averaged Spearman; NaN with
        fewer than 2 images), ``n_images`` and ``n_undefined`` ``[n_stages]`` (images with a defined
        Spearman, and NaN values left out), ``differs`` (bool ``[n_stages]``), ``threshold``,
        ``seed``, ``head`` and ``targets`` ``[batch]``.

    Example:
        >>> report = randomisation_check(fn, model, images, start_layers=[0], seeds=[0, 1, 2])
        >>> report["mean_spearman"].shape, report["ci_spearman"].shape
        (torch.Size([1]), torch.Size([1, 2]))
    """
    start_layers = renamed("randomisation_check", "from_layers", "start_layers", old_value=from_layers,
                           new_value=start_layers, default=None)
    model = at_image_size(model, images)  # a dynamic-size model on the images' grid
    images = model.check_images(images)
    stages = (*range(model.cfg.n_layers, -1, -1), EMBED) if start_layers is None else tuple(start_layers)
    if not stages:
        raise ValueError("start_layers must name at least one stage")
    seed_list = (seed,) if seeds is None else tuple(seeds)
    if not seed_list:
        raise ValueError("seeds must name at least one seed")
    with torch.no_grad():
        target_idx = resolve_targets(model, targets, model(images))
    batch = images.shape[0]
    original = _flat_maps(method_fn(model, images, target_idx), batch, "original model")
    rows: dict[str, list[Tensor]] = {"spearman": [], "spearman_abs": [], "top_overlap": []}
    for stage in stages:
        per_seed: dict[str, list[Tensor]] = {name: [] for name in rows}
        for s in seed_list:
            random_model = randomise_layers(model, stage, seed=s, head=head)
            maps = _flat_maps(method_fn(random_model, images, target_idx), batch, f"start_layer={stage}")
            if maps.shape != original.shape:
                raise ValueError(f"maps of the randomised model {tuple(maps.shape)} differ in shape from the "
                                 f"original's {tuple(original.shape)}")
            per_seed["spearman"].append(spearman(original, maps))
            per_seed["spearman_abs"].append(spearman(original.abs(), maps.abs()))
            per_seed["top_overlap"].append(top_overlap(original, maps).double())
            del random_model
        for name, values in per_seed.items():
            rows[name].append(torch.cat(values))
    report: dict[str, Any] = {name: torch.stack(values) for name, values in rows.items()}
    per_image = report["spearman"].view(len(stages), len(seed_list), batch).nanmean(dim=1)  # [stages, batch]
    means, cis, n_images = [], [], []
    for stage_values in per_image:
        finite = stage_values[~torch.isnan(stage_values)]
        n_images.append(int(finite.numel()))
        if finite.numel() == 0:
            means.append(float("nan"))
            cis.append((float("nan"), float("nan")))
            continue
        m, lo, hi = mean_ci(finite)
        means.append(m)
        cis.append((lo, hi))
    report["mean_spearman"] = torch.tensor(means, dtype=torch.float64)
    report["ci_spearman"] = torch.tensor(cis, dtype=torch.float64)
    report["n_images"] = torch.tensor(n_images)
    report["n_undefined"] = report["spearman"].isnan().sum(dim=1)
    report["differs"] = report["mean_spearman"] < threshold
    report.update(start_layers=stages, seeds=seed_list, threshold=threshold, seed=seed_list[0], head=head,
                  targets=target_idx)
    return report

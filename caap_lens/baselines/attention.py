"""Attention-based attributions: raw attention, rollout, attention Grad-CAM, gradient-weighted attention.

All of them read ``blocks.{l}.attn.hook_pattern`` ``[batch, head, query, key]`` through forward hooks
(attaching them switches the model from fused SDPA to explicit attention for that run only) and
report the **readout rows** over the patch tokens: the rows of the tokens the model's pooling reads,
from the one description the model gives of it, `HookedViTConfig.readout_rows`:

* CLS pooling (``pooling="token"``): the CLS row;
* a distilled DeiT (``"token_dist"``): the mean of the CLS and distillation rows (its two heads are
  averaged);
* pooling over tokens (``"avg"``, ``"max"``, ``"avgmax"``): the mean over the patch-query rows (and
  the prefix rows with ``pool_include_prefix``);
* attention pooling (``"map"``, SigLIP): the same rows, each weighted by how much the pool reads it
  (``attn_pool.hook_pattern``, heads averaged, from the same forward pass): the pool's query plays the
  CLS token's part (`readout_weights`).

Reading the CLS row of a model that pools the mean of its patch tokens would read a token the output
never uses (its gradient is exactly 0): that was a defect of earlier versions, which read row 0
whenever a prefix token existed.

Methods (each cites its paper and says where it departs from the reference code):

* `raw_attention` — one layer's attention from the readout rows (Chefer et al. 2021's "raw
  attention" baseline reads the last layer, heads averaged).
* `rollout` — Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers": with
  ``Â_l = rownorm(0.5 * mean_heads(A_l) + 0.5 * I)`` (the residual connection as an identity),
  ``R = Â_{L-1} ... Â_{start}``; the map is R's readout rows. ``start_layer`` is an option: 0 (every
  block, Abnar & Zuidema and Chefer et al.'s perturbation tests) by default; Chefer et al.'s
  segmentation tests use 1.
* `attention_gradcam` — the "GradCAM" baseline of Chefer, Gur & Wolf (2021), "Transformer
  Interpretability Beyond Attention Visualization" (CVPR): the last layer's attention from the
  readout rows, each head weighted by the mean over patch keys of the gradient of the target's score
  on those rows, heads averaged, then ReLU.
* `gradient_weighted_attention` — Chefer, Gur & Wolf (2021), "Generic Attention-model
  Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV): gradient-weighted
  attention ``Ā_l = mean_heads((∇A_l ⊙ A_l)^+)`` with ∇ the gradient of the target's score,
  ``R = I``, ``R ← R + Ā_l R`` for every layer in order; the map is R's readout rows. This is *not*
  their CVPR 2021 LRP-based "Transformer Attribution" (which propagates LRP relevance instead of the
  attention itself); the old name ``transformer_attribution`` still works, with a
  DeprecationWarning.

Raw attention and rollout are class-agnostic (the targets are not used); the other two are
class-specific. Where the reference code (Chefer's ``ViT_explanation_generator``) indexes row 0 and a
hard-coded 14 x 14 grid, these use the readout rows and the model's `PatchGrid`, batched.

Example:
    >>> patch_map, _ = rollout(model, images, targets)
    >>> patch_map.shape  # [batch, grid_h, grid_w]
    torch.Size([2, 8, 8])
"""

from __future__ import annotations

import operator
import warnings
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from caap_lens._deprecation import UNSET, renamed
from caap_lens.attribution.scores import ScoreLike
from caap_lens.baselines.base import (
    Images,
    MethodOutput,
    Targets,
    check_inputs,
    collect,
    gradients_enabled,
    grads_of,
    target_scores,
)
from caap_lens.model.protocol import HookedViTLike
from caap_lens.model.sizing import at_image_size

Pattern = Float[Tensor, "batch head query key"]


def pattern_name(layer: int) -> str:
    """Hook name of a layer's attention pattern."""
    return f"blocks.{layer}.attn.hook_pattern"


def layer_index(model: HookedViTLike, layer: int, name: str = "layer") -> int:
    """A block index from ``layer`` (negative counts from the end), range-checked."""
    n = model.cfg.n_layers
    try:
        index = operator.index(layer)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {layer!r}") from None
    index = index + n if index < 0 else index
    if not 0 <= index < n:
        raise ValueError(f"{name}={layer} is outside [-{n}, {n - 1}] for a {n}-layer model")
    return index


def reduce_heads(pattern: Pattern, head_fusion: str | int) -> Float[Tensor, "batch query key"]:
    """Combines heads: ``"mean"``, ``"max"``, or one head's index."""
    heads = head_fusion
    if heads == "mean":
        return pattern.mean(dim=1)
    if heads == "max":
        return pattern.amax(dim=1)
    if isinstance(heads, int) and not isinstance(heads, bool):
        if not 0 <= heads < pattern.shape[1]:
            raise ValueError(f"head {heads} is outside [0, {pattern.shape[1]})")
        return pattern[:, heads]
    raise ValueError(f"head_fusion must be 'mean', 'max' or a head index, got {heads!r}")


def readout_rows(model: HookedViTLike) -> list[int]:
    """The query rows the model's output reads (`HookedViTConfig.readout_rows`)."""
    return list(model.cfg.readout_rows)


POOL_PATTERN = "attn_pool.hook_pattern"  # [batch, head, 1, pooled tokens]: what the attention pool reads


def readout_hooks(model: HookedViTLike, store: dict[str, Tensor]) -> list[tuple[str, Any]]:
    """The hook that keeps the attention pool's pattern in ``store`` (none for other poolings)."""
    return [(POOL_PATTERN, collect(store))] if model.cfg.pooling == "map" else []


def readout_weights(model: HookedViTLike, store: dict[str, Tensor]) -> Float[Tensor, "batch rows"] | None:
    """How much the output reads each readout row: the attention pool's pattern averaged over heads
    (``pooling="map"``; rows as `readout_rows`), or None for equal weights (every other pooling)."""
    if model.cfg.pooling != "map":
        return None
    return store[POOL_PATTERN].detach().float().mean(dim=1)[:, 0]


def rows_mean(x: Float[Tensor, "*lead rows key"], weights: Float[Tensor, "batch rows"] | None) -> Tensor:
    """``x`` averaged over its row axis (the readout rows), with ``weights`` per batch row if given."""
    if weights is None:
        return x.mean(dim=-2)
    w = weights.to(x.dtype).reshape(weights.shape[0], *([1] * (x.ndim - 3)), weights.shape[1], 1)
    return (w * x).sum(dim=-2)


def readout_row(model: HookedViTLike, matrix: Float[Tensor, "batch query key"],
                weights: Float[Tensor, "batch rows"] | None = None) -> Float[Tensor, "batch grid_h grid_w"]:
    """The readout rows (`readout_rows`) of ``matrix`` over the patch tokens, on the model's grid: their
    mean, or their sum weighted by `readout_weights`."""
    row = rows_mean(matrix[:, readout_rows(model)], weights)
    return model.grid.to_grid(row[:, model.grid.n_prefix_tokens :])


def attention_patterns(model: HookedViTLike, images: Images,
                       layers: list[int]) -> tuple[dict[int, Pattern], Float[Tensor, "batch rows"] | None]:
    """Attention patterns of ``layers`` and the `readout_weights`, in one forward pass (which stops after
    the deepest layer unless the attention pool's pattern is needed)."""
    store: dict[str, Tensor] = {}
    hooks = [(pattern_name(layer), collect(store)) for layer in layers] + readout_hooks(model, store)
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        model(images, stop_at_layer=None if model.cfg.pooling == "map" else max(layers) + 1)
    return {layer: store[pattern_name(layer)] for layer in layers}, readout_weights(model, store)


def raw_attention(
    model: HookedViTLike,
    images: Images,
    targets: Targets,
    *,
    layer: int = -1,
    head_fusion: str | int = "mean",
    heads: Any = UNSET,
) -> MethodOutput:
    """One layer's attention from the readout rows to each patch: Chefer et al.'s (CVPR 2021) "raw attention".

    Chefer et al. evaluate the last layer's CLS row with heads averaged (the defaults here, for CLS
    models); here also any layer and head reduction, and the readout rows (`readout_row`) instead of
    row 0.

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``.
        targets: Class per image ``[batch]`` (unused: attention is class-agnostic).
        layer: Block whose pattern is read (default the last; negative counts from the end).
        head_fusion: ``"mean"`` (default), ``"max"`` or one head's index (the name of Gildenblat's
            ``vit-explain``); ``heads=`` is its deprecated old name.

    Returns:
        ``(patch_map [batch, grid_h, grid_w], None)``; each row of attention sums to 1 over all
        tokens, so a patch map sums to at most 1.

    Example:
        >>> patch_map, _ = raw_attention(model, images, targets, layer=-1, head_fusion="max")
    """
    fusion = renamed("raw_attention", "heads", "head_fusion", old_value=heads, new_value=head_fusion, default="mean")
    model = at_image_size(model, images)  # a dynamic-size model on the images' grid
    images, targets = check_inputs(model, images, targets)
    index = layer_index(model, layer)
    reduce_heads(torch.zeros(1, model.cfg.n_heads, 1, 1), fusion)  # validate before running
    patterns, weights = attention_patterns(model, images, [index])
    return readout_row(model, reduce_heads(patterns[index], fusion), weights), None


def rollout(
    model: HookedViTLike,
    images: Images,
    targets: Targets,
    *,
    start_layer: int = 0,
    head_fusion: str | int = "mean",
    heads: Any = UNSET,
) -> MethodOutput:
    """Attention rollout (Abnar & Zuidema, 2020) from ``start_layer`` to the last block.

    As the paper (and Chefer et al.'s ``compute_rollout_attention``): heads averaged, ``0.5 A + 0.5 I``
    renormalised, multiplied in layer order; tested against a transcription of the formula. Differs
    only in reading the readout rows (row 0 for CLS models, as the reference) and in the
    ``head_fusion`` option.

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``.
        targets: Class per image ``[batch]`` (unused: rollout is class-agnostic).
        start_layer: First block multiplied in (negative counts from the end; Chefer et al.'s name).
        head_fusion: ``"mean"`` (the paper's choice), ``"max"`` or one head's index (the name of
            Gildenblat's ``vit-explain``); ``heads=`` is its deprecated old name.

    Returns:
        ``(patch_map [batch, grid_h, grid_w], None)``.

    Example:
        >>> patch_map, _ = rollout(model, images, targets, start_layer=2)
    """
    fusion = renamed("rollout", "heads", "head_fusion", old_value=heads, new_value=head_fusion, default="mean")
    model = at_image_size(model, images)  # a dynamic-size model on the images' grid
    images, targets = check_inputs(model, images, targets)
    start = layer_index(model, start_layer, "start_layer")
    reduce_heads(torch.zeros(1, model.cfg.n_heads, 1, 1), fusion)
    layers = list(range(start, model.cfg.n_layers))
    patterns, weights = attention_patterns(model, images, layers)
    n = model.grid.n_tokens
    eye = torch.eye(n, device=images.device, dtype=torch.float32)
    result = eye.expand(images.shape[0], n, n)
    for layer in layers:
        a = 0.5 * reduce_heads(patterns[layer].float(), fusion) + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result
    return readout_row(model, result, weights), None


def _patterns_and_grads(
    model: HookedViTLike, images: Images, targets: Targets, layers: list[int], score: ScoreLike
) -> tuple[list[Tensor], list[Tensor], Tensor | None]:
    """Attention patterns of ``layers``, the gradient of the summed target scores on them, and the
    `readout_weights`.

    One forward pass, one ``torch.autograd.grad`` (images are independent, so the sum's gradient is
    each image's own); parameters get no ``.grad``.
    """
    names = [pattern_name(layer) for layer in layers]
    store: dict[str, Tensor] = {}
    hooks = [(name, collect(store)) for name in names] + readout_hooks(model, store)
    with gradients_enabled(), model.hooks(fwd_hooks=hooks):
        x = images.detach().clone().requires_grad_(True)  # a graph even if the parameters are frozen
        total = target_scores(model(x), targets, score).sum()
        patterns = [store[name] for name in names]
        grads = grads_of(total, patterns)
    weights = readout_weights(model, store)
    return [p.detach().float() for p in patterns], [g.detach().float() for g in grads], weights


def gradient_weighted_attention(
    model: HookedViTLike, images: Images, targets: Targets, *, start_layer: int = 0, score: ScoreLike = "logit"
) -> MethodOutput:
    """Gradient-weighted attention relevance: Chefer, Gur & Wolf (ICCV 2021), the "generic" rule.

    ``Ā_l = mean_heads((∂score/∂A_l ⊙ A_l)^+)``, ``R = I``, ``R ← R + Ā_l R`` for ``l = start_layer
    .. n-1``; the map is R's readout rows (`readout_row`) over the patch tokens. Differs from the
    reference code (``generate_relevance`` in the ViT notebook of hila-chefer/Transformer-MM-Explainability)
    only in batching, the readout rows (the reference
    reads row 0, right for CLS-pooled models only) and the model's own grid.

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``.
        targets: Class per image ``[batch]``.
        start_layer: First block whose attention is accumulated (Chefer et al. use all: 0).
        score: What is differentiated (default the target logit, as in the paper).

    Returns:
        ``(patch_map [batch, grid_h, grid_w], None)``; non-negative.

    Example:
        >>> patch_map, _ = gradient_weighted_attention(model, images, torch.tensor([3, 5]))
    """
    model = at_image_size(model, images)  # a dynamic-size model on the images' grid
    images, targets = check_inputs(model, images, targets)
    start = layer_index(model, start_layer, "start_layer")
    patterns, grads, weights = _patterns_and_grads(model, images, targets, list(range(start, model.cfg.n_layers)),
                                                   score)
    n = model.grid.n_tokens
    relevance = torch.eye(n, device=images.device, dtype=torch.float32).repeat(images.shape[0], 1, 1)
    for pattern, grad in zip(patterns, grads):
        cam = (grad * pattern).clamp(min=0).mean(dim=1)
        relevance = relevance + cam @ relevance
    return readout_row(model, relevance, weights), None


def transformer_attribution(model: HookedViTLike, images: Images, targets: Targets, **options: Any) -> MethodOutput:
    """Deprecated name of `gradient_weighted_attention` (it is not Chefer et al.'s CVPR 2021 method)."""
    warnings.warn(
        "'transformer_attribution' is Chefer et al.'s ICCV 2021 gradient-weighted attention, not their "
        "CVPR 2021 'Transformer Attribution': use 'gradient_weighted_attention'",
        DeprecationWarning,
        stacklevel=2,
    )
    return gradient_weighted_attention(model, images, targets, **options)


def attention_gradcam(
    model: HookedViTLike, images: Images, targets: Targets, *, layer: int = -1, score: ScoreLike = "logit"
) -> MethodOutput:
    """Grad-CAM on one layer's attention: the "GradCAM" baseline of Chefer, Gur & Wolf (CVPR 2021).

    With ``A`` the layer's pattern and ``G = ∂score/∂A`` (both ``[batch, head, query, key]``), ``a_h``
    the mean of ``A``'s readout rows and ``g_h`` that of ``G``'s, over the patch keys: head weight
    ``w_h = mean_p g_h[p]``, map ``ReLU(mean_h w_h a_h[p])``. The reference
    (``Baselines.generate_cam_attn`` in hila-chefer/Transformer-Explainability) does the same on
    the last layer's CLS row with a 14 x 14 grid and min-max scales the result; here the readout
    rows, the model's grid, and no scaling.

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``.
        targets: Class per image ``[batch]``.
        layer: Block whose attention is used (default the last, as the reference).
        score: What is differentiated (default the target logit).

    Returns:
        ``(patch_map [batch, grid_h, grid_w], None)``; non-negative.

    Example:
        >>> patch_map, _ = attention_gradcam(model, images, torch.tensor([3, 5]))
    """
    model = at_image_size(model, images)  # a dynamic-size model on the images' grid
    images, targets = check_inputs(model, images, targets)
    index = layer_index(model, layer)
    (pattern,), (grad,), row_weights = _patterns_and_grads(model, images, targets, [index], score)
    n_prefix, rows = model.grid.n_prefix_tokens, readout_rows(model)
    cam = rows_mean(pattern[:, :, rows, n_prefix:], row_weights)  # [batch, head, n_patches]
    weights = rows_mean(grad[:, :, rows, n_prefix:], row_weights).mean(dim=-1, keepdim=True)  # [batch, head, 1]
    return model.grid.to_grid((weights * cam).mean(dim=1).clamp(min=0)), None

"""Attention-based attributions: raw attention, attention rollout and Transformer Attribution.

All three read ``blocks.{l}.attn.hook_pattern`` ``[batch, head, query, key]`` through forward hooks
(attaching them switches the model from fused SDPA to explicit attention for that run only) and
report the *readout row* over the patch tokens:

* the row of token 0 (the CLS token; for distilled models the CLS, not the distillation token)
  when the model has prefix tokens;
* the mean over all query rows for models without any prefix token (their output is a mean over
  patch tokens).

Methods:

* `raw_attention` — one layer's pattern (default the last), heads reduced by mean (default) or max.
* `rollout` — Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers": with
  ``Â_l = rownorm(0.5 * mean_heads(A_l) + 0.5 * I)`` (the residual connection as an identity),
  ``R = Â_{L-1} ... Â_{start}``; the map is R's readout row.
* `transformer_attribution` — Chefer, Gur & Wolf (2021), "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV): gradient-weighted attention,
  ``Ā_l = mean_heads((∇A_l ⊙ A_l)^+)`` with ∇ the gradient of the target's score, ``R = I``,
  ``R ← R + Ā_l R`` for every layer in order; the map is R's readout row.

Raw attention and rollout are class-agnostic (the targets are not used); Transformer Attribution
is class-specific.

Example:
    >>> patch_map, _ = rollout(model, images, targets)  # doctest: +SKIP
    >>> patch_map.shape  # [batch, grid_h, grid_w]  # doctest: +SKIP
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

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

Pattern = Float[Tensor, "batch head query key"]


def pattern_name(layer: int) -> str:
    """Hook name of a layer's attention pattern."""
    return f"blocks.{layer}.attn.hook_pattern"


def layer_index(model: Any, layer: int, name: str = "layer") -> int:
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


def reduce_heads(pattern: Pattern, heads: str | int) -> Float[Tensor, "batch query key"]:
    """Combines heads: ``"mean"``, ``"max"``, or one head's index."""
    if heads == "mean":
        return pattern.mean(dim=1)
    if heads == "max":
        return pattern.amax(dim=1)
    if isinstance(heads, int) and not isinstance(heads, bool):
        if not 0 <= heads < pattern.shape[1]:
            raise ValueError(f"head {heads} is outside [0, {pattern.shape[1]})")
        return pattern[:, heads]
    raise ValueError(f"heads must be 'mean', 'max' or a head index, got {heads!r}")


def readout_row(model: Any, matrix: Float[Tensor, "batch query key"]) -> Float[Tensor, "batch grid_h grid_w"]:
    """The readout query's row over the patch tokens, on the model's grid (see the module docstring)."""
    n_prefix = model.grid.n_prefix_tokens
    row = matrix[:, 0] if n_prefix > 0 else matrix.mean(dim=1)
    return model.grid.to_grid(row[:, n_prefix:])


def attention_patterns(model: Any, images: Images, layers: list[int]) -> dict[int, Pattern]:
    """Attention patterns of ``layers`` in one forward pass (stopping after the deepest layer)."""
    store: dict[str, Tensor] = {}
    with torch.inference_mode(), model.hooks(fwd_hooks=[(pattern_name(layer), collect(store)) for layer in layers]):
        model(images, stop_at_layer=max(layers) + 1)
    return {layer: store[pattern_name(layer)] for layer in layers}


def raw_attention(
    model: Any, images: Images, targets: Targets, *, layer: int = -1, heads: str | int = "mean"
) -> MethodOutput:
    """One layer's attention from the readout token to each patch.

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``.
        targets: Class per image ``[batch]`` (unused: attention is class-agnostic).
        layer: Block whose pattern is read (default the last; negative counts from the end).
        heads: ``"mean"`` (default), ``"max"`` or one head's index.

    Returns:
        ``(patch_map [batch, grid_h, grid_w], None)``; each row of attention sums to 1 over all
        tokens, so a patch map sums to at most 1.

    Example:
        >>> patch_map, _ = raw_attention(model, images, targets, layer=-1, heads="max")  # doctest: +SKIP
    """
    images, targets = check_inputs(model, images, targets)
    index = layer_index(model, layer)
    reduce_heads(torch.zeros(1, model.cfg.n_heads, 1, 1), heads)  # validate before running
    pattern = attention_patterns(model, images, [index])[index]
    return readout_row(model, reduce_heads(pattern, heads)), None


def rollout(
    model: Any, images: Images, targets: Targets, *, start_layer: int = 0, heads: str | int = "mean"
) -> MethodOutput:
    """Attention rollout (Abnar & Zuidema, 2020) from ``start_layer`` to the last block.

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``.
        targets: Class per image ``[batch]`` (unused: rollout is class-agnostic).
        start_layer: First block multiplied in (negative counts from the end).
        heads: ``"mean"`` (the paper's choice), ``"max"`` or one head's index.

    Returns:
        ``(patch_map [batch, grid_h, grid_w], None)``.

    Example:
        >>> patch_map, _ = rollout(model, images, targets, start_layer=2)  # doctest: +SKIP
    """
    images, targets = check_inputs(model, images, targets)
    start = layer_index(model, start_layer, "start_layer")
    reduce_heads(torch.zeros(1, model.cfg.n_heads, 1, 1), heads)
    layers = list(range(start, model.cfg.n_layers))
    patterns = attention_patterns(model, images, layers)
    n = model.grid.n_tokens
    eye = torch.eye(n, device=images.device, dtype=torch.float32)
    result = eye.expand(images.shape[0], n, n)
    for layer in layers:
        a = 0.5 * reduce_heads(patterns[layer].float(), heads) + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result
    return readout_row(model, result), None


def transformer_attribution(
    model: Any, images: Images, targets: Targets, *, start_layer: int = 0, score: ScoreLike = "logit"
) -> MethodOutput:
    """Gradient-weighted attention relevance (Chefer et al., 2021, "generic" rule).

    One forward pass keeps every layer's pattern; one ``torch.autograd.grad`` of the summed target
    scores gives each pattern's gradient (images are independent, so the sum's gradient is each
    image's own). Parameters get no ``.grad``.

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``.
        targets: Class per image ``[batch]``.
        start_layer: First block whose attention is accumulated (Chefer et al. use all: 0).
        score: What is differentiated (default the target logit, as in the paper).

    Returns:
        ``(patch_map [batch, grid_h, grid_w], None)``; non-negative.

    Example:
        >>> patch_map, _ = transformer_attribution(model, images, torch.tensor([3, 5]))  # doctest: +SKIP
    """
    images, targets = check_inputs(model, images, targets)
    start = layer_index(model, start_layer, "start_layer")
    layers = list(range(start, model.cfg.n_layers))
    names = [pattern_name(layer) for layer in layers]
    store: dict[str, Tensor] = {}
    with gradients_enabled(), model.hooks(fwd_hooks=[(name, collect(store)) for name in names]):
        x = images.detach().clone().requires_grad_(True)  # a graph even if the parameters are frozen
        total = target_scores(model(x), targets, score).sum()
        patterns = [store[name] for name in names]
        grads = grads_of(total, patterns)
    n = model.grid.n_tokens
    relevance = torch.eye(n, device=images.device, dtype=torch.float32).repeat(images.shape[0], 1, 1)
    for pattern, grad in zip(patterns, grads):
        cam = (grad.detach().float() * pattern.detach().float()).clamp(min=0).mean(dim=1)
        relevance = relevance + cam @ relevance
    return readout_row(model, relevance), None

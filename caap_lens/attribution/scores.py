"""Scores: how a patched run's output is turned into one number per row.

A score is any callable ``score(output, target) -> [rows]`` where ``output`` is the model output
``[rows, n_out]`` (logits, or the pooled feature of a headless model) and ``target`` the class index
of each row ``[rows]``. Built-ins, by name:

* ``"logit"`` (default) — the target logit: linear in the last residual stream, no saturation.
* ``"prob"`` — softmax probability of the target.
* ``"sigmoid"`` — sigmoid of the target logit: the probability of a multi-label model (classes
  scored independently, like the bundled ``fashion-scenes-vit``), where a softmax would be wrong.
* ``"log_prob"`` — log-softmax of the target.
* ``"margin"`` — target logit minus the largest other logit.
* `logit_diff(other)` — target logit minus a fixed other class's logit.
* `embedding_similarity(embeddings)` — cosine similarity of the output to ``embeddings[target]``
  (score headless backbones, e.g. a CLIP image tower against text embeddings).
* `caap_lens.attribution.prompts.TextPrompts` — the same similarity to text prompts encoded by a
  CLIP/SigLIP text tower, whose prompts name the targets (`target_space`).

With ``relative=True`` in `caap`, the context run's own score is subtracted, so 0 means "no effect".

Example:
    >>> logits = torch.tensor([[2.0, 0.0, 1.0]])
    >>> float(margin(logits, torch.tensor([0])))
    1.0
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

Score = Callable[[Tensor, Tensor], Tensor]
ScoreLike = Union[str, Score]


def _pick(values: Tensor, target: Tensor) -> Tensor:
    return values.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)


def logit(output: Float[Tensor, "rows n_out"], target: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
    """The target's logit."""
    return _pick(output.float(), target)


def prob(output: Float[Tensor, "rows n_out"], target: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
    """The target's softmax probability."""
    return _pick(output.float().softmax(-1), target)


def sigmoid(output: Float[Tensor, "rows n_out"], target: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
    """The target's sigmoid probability (multi-label models)."""
    return torch.sigmoid(_pick(output.float(), target))


def log_prob(output: Float[Tensor, "rows n_out"], target: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
    """The target's log-softmax."""
    return _pick(output.float().log_softmax(-1), target)


def margin(output: Float[Tensor, "rows n_out"], target: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
    """Target logit minus the largest other logit."""
    out = output.float()
    others = out.scatter(-1, target.long().unsqueeze(-1), float("-inf"))
    return _pick(out, target) - others.max(-1).values


def logit_diff(other: int) -> Score:
    """A score: target logit minus the logit of class ``other``."""
    if isinstance(other, bool) or not isinstance(other, numbers.Integral) or other < 0:
        raise ValueError(f"logit_diff(other) needs a class index (an int >= 0), got {other!r}")
    other = int(other)

    def logit_difference(output: Tensor, target: Tensor) -> Tensor:
        if other >= output.shape[-1]:
            raise ValueError(f"logit_diff(other={other}) is out of range for {output.shape[-1]} classes")
        return _pick(output.float(), target) - output.float()[:, other]

    logit_difference.__name__ = f"logit_diff(other={other})"
    return logit_difference


def embedding_similarity(embeddings: Float[Tensor, "n_targets d_out"]) -> Score:
    """A score: cosine similarity between the output and ``embeddings[target]``."""
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [n_targets, d_out], got {tuple(embeddings.shape)}")

    def similarity(output: Tensor, target: Tensor) -> Tensor:
        if output.shape[-1] != embeddings.shape[-1]:
            raise ValueError(
                f"output width {output.shape[-1]} does not match embedding width {embeddings.shape[-1]}"
            )
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= embeddings.shape[0]):
            raise ValueError(
                f"targets index the {embeddings.shape[0]} embeddings, got indices "
                f"{int(target.min())}..{int(target.max())}"
            )
        ref = embeddings.to(output.device, torch.float32)[target.long()]
        return F.cosine_similarity(output.float(), ref, dim=-1)

    similarity.__name__ = "embedding_similarity"
    return similarity


def self_similarity(source_output: Float[Tensor, "batch d_out"]) -> Score:
    """A score for headless backbones: cosine similarity to each image's *own* output embedding.

    Use it with ``target=torch.arange(batch)`` (image ``i``'s rows compare with ``source_output[i]``):
    a patch scores high when patching it alone restores the image's embedding. This is how caap_lens
    explains a backbone with no classifier (DINOv2), and the same score serves deletion/insertion.

    Example:
        >>> out = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> self_similarity(out)(out, torch.arange(2)).tolist()
        [1.0, 1.0]
    """
    fn = embedding_similarity(source_output.detach())
    fn.__name__ = "self_similarity"
    return fn


SCORES: dict[str, Score] = {"logit": logit, "prob": prob, "sigmoid": sigmoid, "log_prob": log_prob, "margin": margin}


def resolve_score(score: ScoreLike) -> Score:
    """A score function from a name or a callable."""
    if isinstance(score, str):
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}: choose one of {', '.join(SCORES)} or pass a callable")
        return SCORES[score]
    if callable(score):
        return score
    raise TypeError(f"score must be a name or a callable, got {type(score).__name__}")


def score_name(score: ScoreLike) -> str:
    """A readable name for a score."""
    return score if isinstance(score, str) else getattr(score, "__name__", type(score).__name__)


def target_space(score: ScoreLike) -> Any:
    """The score itself when it names its own targets (``target_names``, ``index``, ``predict``), else None.

    Such a score (`caap_lens.attribution.prompts.TextPrompts`) resolves ``target`` names,
    indices and ``"predicted"`` in place of the model's classes
    (`caap_lens.attribution.targets.resolve_targets`).

    Example:
        >>> target_space("logit") is None
        True
    """
    if isinstance(score, str):
        return None
    names = getattr(score, "target_names", None)
    if names is None or not callable(getattr(score, "index", None)) or not callable(getattr(score, "predict", None)):
        return None
    return score


def scores_index_classes(score: ScoreLike) -> bool:
    """Whether targets index the model's output classes (so they can be range-checked)."""
    return isinstance(score, str) or getattr(score, "__name__", "").startswith("logit_diff")

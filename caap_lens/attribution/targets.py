"""Targets: which class each image's attribution is for.

``target`` may be ``"predicted"`` (the source's top class), a class index, a class name (when the
model has ``class_names``), or a sequence/tensor with one of those per image. A float equal to an
integer (``2.0``, or a float tensor of labels) is that index; ``True``/``False``, ``None`` and
non-integer floats are errors, never silently class 1, 0 or a truncated index.

A model whose output is an embedding, not class scores -- a headless model (``n_classes=0``, its
pooled feature) or a projection head such as a CLIP image tower's (``cfg.output_kind ==
"embedding"``) -- is refused targets of the built-in scores: ``"predicted"`` would be the argmax of
an embedding and an index a channel of it. Score such a model by similarity
(`caap_lens.attribution.scores`), with text prompts, or with your own callable.

A score that names its own targets (a `TargetSpace`, such as the text prompts of
`caap_lens.attribution.prompts.TextPrompts`) resolves them instead of the model: names are its
``target_names``, indices are checked against them, and ``"predicted"`` is its ``predict(output)``.

Example:
    >>> resolve_targets(model, "predicted", result.source_output)  # the bundled model's two test scenes
    tensor([7, 9])
"""

from __future__ import annotations

import numbers
import operator
from typing import Any, Protocol, Sequence, Union, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor
from caap_lens.model.protocol import HookedViTLike

TargetLike = Union[str, int, Sequence[Union[int, str]], Tensor]


@runtime_checkable
class TargetSpace(Protocol):
    """What a score whose targets are not the model's classes tells `resolve_targets`."""

    @property
    def target_names(self) -> Sequence[str]:
        """Target ``i`` is ``target_names[i]``."""
        ...

    def index(self, name: str) -> int:
        """The index of a name (a ValueError, listing the names, for an unknown one)."""
        ...

    def predict(self, output: Float[Tensor, "batch n_out"]) -> Int[Tensor, " batch"]:
        """The best target of each output (``target="predicted"``)."""
        ...


_TARGET_HINT = "a class index (int), a class name, 'predicted', or one of those per image"


def _one(model: HookedViTLike, target: Any, n_out: int | None, space: TargetSpace | None = None) -> int:
    if isinstance(target, (bool, type(None))) or type(target).__name__ == "bool_":
        raise ValueError(f"target {target!r} is not a class: give {_TARGET_HINT}")
    if isinstance(target, str) and space is not None:
        return space.index(target)
    if isinstance(target, str):
        names = getattr(model, "class_names", None)
        if not names:
            raise ValueError(f"target {target!r} is a class name but the model has no class_names; pass an index")
        lowered = [n.lower() for n in names]
        if target.lower() not in lowered:
            close = [n for n in names if target.lower() in n.lower()][:5]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown class name {target!r}{hint}")
        return lowered.index(target.lower())
    if isinstance(target, numbers.Real) and not isinstance(target, numbers.Integral):
        if not float(target).is_integer():  # a float such as 2.7 is not silently 2
            raise ValueError(f"target {target!r} is not a class index (not a whole number): give {_TARGET_HINT}")
        target = int(target)  # 2.0, or a float tensor of labels
    try:
        index = operator.index(target)  # ints (numpy's too)
    except TypeError:
        raise ValueError(f"target {target!r} is not a class index, name or 'predicted': give {_TARGET_HINT}") from None
    if n_out is not None and not 0 <= index < n_out:
        what = "classes" if space is None else "targets (" + ", ".join(map(repr, space.target_names[:10])) + ")"
        raise ValueError(f"target {index} is out of range for {n_out} {what}")
    return index


def resolve_targets(
    model: HookedViTLike,
    target: TargetLike,
    source_output: Float[Tensor, "batch n_out"],
    check_range: bool = True,
    *,
    space: TargetSpace | None = None,
) -> Int[Tensor, " batch"]:
    """One class (or ``space`` target) index per image.

    Args:
        model: The model (for ``class_names``).
        target: See the module docstring.
        source_output: The source run's output ``[batch, n_out]`` (for ``"predicted"`` and range).
        check_range: Check indices against ``n_out`` (off for scores that index something else).
        space: The score's own targets (`TargetSpace`), which replace the model's classes.

    Raises:
        ValueError: unknown name, index out of range, or the wrong number of targets.

    Example:
        >>> from caap_lens.attribution.prompts import TextPrompts
        >>> prompts = TextPrompts.from_embeddings(["a dog", "a cat"], torch.eye(2))
        >>> out = torch.tensor([[0.1, 0.9], [0.8, 0.3]])
        >>> resolve_targets(None, "predicted", out, space=prompts).tolist()
        [1, 0]
        >>> resolve_targets(None, ["a cat", 0], out, space=prompts).tolist()
        [1, 0]
    """
    batch, n_out = source_output.shape
    limit = n_out if check_range else None
    if space is not None:
        limit = len(space.target_names)
        if isinstance(target, str) and target == "predicted":
            return space.predict(source_output).long().cpu()
        return _resolve_each(model, target, batch, limit, space)
    what = _embedding_output(model, n_out) if check_range else None
    if what is not None and isinstance(target, str) and target == "predicted":
        raise ValueError(
            f"target='predicted' needs class scores, but {what}: for zero-shot targets pass text prompts as the "
            "score, score=TextPrompts(prompts, clip_model, tokenizer) (caap_lens.attribution.prompts), then "
            "'predicted' is the best-matching prompt; or score by similarity, e.g. "
            "score=self_similarity(model(images)) with target=torch.arange(batch) (caap_lens.attribution.scores)"
        )
    if what is not None:
        raise ValueError(
            f"{what}, so target {target!r} would pick a channel of it, not a class; pass text prompts as "
            "the score (score=TextPrompts(prompts, clip_model, tokenizer), caap_lens.attribution.prompts; "
            "targets are then prompts), score by similarity (embedding_similarity or self_similarity, "
            "caap_lens.attribution.scores) or load the model with a classifier head (num_classes=N)"
        )
    if isinstance(target, str) and target == "predicted":
        return source_output.argmax(dim=-1).cpu()
    return _resolve_each(model, target, batch, limit, None)


def _embedding_output(model: HookedViTLike, n_out: int) -> str | None:
    """Why the model's output is not class scores, in words (None when it is).

    Example:
        >>> from types import SimpleNamespace
        >>> clip = SimpleNamespace(cfg=SimpleNamespace(n_classes=512, output_kind="embedding"))
        >>> _embedding_output(clip, 512)[:51]
        "the model's output is a 512-d embedding (cfg.output"
        >>> _embedding_output(SimpleNamespace(cfg=SimpleNamespace(n_classes=10)), 10) is None
        True
    """
    cfg = getattr(model, "cfg", None)
    if getattr(cfg, "n_classes", None) == 0:
        return f"the model is headless (n_classes=0): its output is the {n_out}-d pooled feature, not class scores"
    if getattr(cfg, "output_kind", "classes") == "embedding":
        return (f"the model's output is a {n_out}-d embedding (cfg.output_kind='embedding', e.g. a CLIP projection "
                "head), not class scores")
    return None


def _resolve_each(
    model: HookedViTLike, target: TargetLike, batch: int, limit: int | None, space: TargetSpace | None
) -> Int[Tensor, " batch"]:
    if isinstance(target, Tensor) and target.dtype == torch.bool:
        raise ValueError(f"target is a bool tensor, not class indices: give {_TARGET_HINT}")
    if (
        isinstance(target, (str, numbers.Number, type(None)))
        or type(target).__name__ == "bool_"
        or (isinstance(target, Tensor) and target.ndim == 0)
    ):
        one = _one(model, target if not isinstance(target, Tensor) else target.item(), limit, space)
        return torch.full((batch,), one)
    try:
        items = target.tolist() if isinstance(target, Tensor) else list(target)
    except TypeError:
        raise ValueError(f"target {target!r} is not a class index, name or 'predicted': give {_TARGET_HINT}") from None
    if len(items) != batch:
        raise ValueError(f"got {len(items)} targets for {batch} images: give one per image")
    return torch.tensor([_one(model, t, limit, space) for t in items], dtype=torch.long)

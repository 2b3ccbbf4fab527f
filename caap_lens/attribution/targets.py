"""Targets: which class each image's attribution is for.

``target`` may be ``"predicted"`` (the source's top class), a class index, a class name (when the
model has ``class_names``), or a sequence/tensor with one of those per image. A float equal to an
integer (``2.0``, or a float tensor of labels) is that index; ``True``/``False``, ``None`` and
non-integer floats are errors, never silently class 1, 0 or a truncated index.

A headless model (``n_classes=0``) outputs its pooled feature, not class logits: targets of the
built-in scores would index feature channels, so they are refused; score such a model by similarity
(`caap_lens.attribution.scores`) or with your own callable.

Example:
    >>> resolve_targets(model, "predicted", source_output)  # doctest: +SKIP
    tensor([3, 7])
"""

from __future__ import annotations

import numbers
import operator
from typing import Any, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor
from caap_lens.model.protocol import HookedViTLike

TargetLike = Union[str, int, Sequence[Union[int, str]], Tensor]


_TARGET_HINT = "a class index (int), a class name, 'predicted', or one of those per image"


def _one(model: HookedViTLike, target: Any, n_out: int | None) -> int:
    if isinstance(target, (bool, type(None))) or type(target).__name__ == "bool_":
        raise ValueError(f"target {target!r} is not a class: give {_TARGET_HINT}")
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
        raise ValueError(f"target {index} is out of range for {n_out} classes")
    return index


def resolve_targets(
    model: HookedViTLike,
    target: TargetLike,
    source_output: Float[Tensor, "batch n_out"],
    check_range: bool = True,
) -> Int[Tensor, " batch"]:
    """One class index per image.

    Args:
        model: The model (for ``class_names``).
        target: See the module docstring.
        source_output: The source run's output ``[batch, n_out]`` (for ``"predicted"`` and range).
        check_range: Check indices against ``n_out`` (off for scores that index something else).

    Raises:
        ValueError: unknown name, index out of range, or the wrong number of targets.
    """
    batch, n_out = source_output.shape
    limit = n_out if check_range else None
    if isinstance(target, str) and target == "predicted":
        if getattr(getattr(model, "cfg", None), "n_classes", None) == 0 and check_range:
            raise ValueError(
                f"target='predicted' needs class scores, but the model is headless (its output is a {n_out}-d "
                "embedding): score by similarity instead, e.g. score=self_similarity(model(images)) with "
                "target=torch.arange(batch) (caap_lens.attribution.scores), or embedding_similarity(text_embeddings)"
            )
        return source_output.argmax(dim=-1).cpu()
    if getattr(getattr(model, "cfg", None), "n_classes", None) == 0 and check_range:
        raise ValueError(
            f"the model is headless (n_classes=0): its output is the {n_out}-dim pooled feature, not class "
            f"logits, so target {target!r} would pick a feature channel, not a class; score by similarity "
            "(score=embedding_similarity(text_embeddings) or self_similarity, caap_lens.attribution.scores) "
            "or load the model with a head (num_classes=N)"
        )
    if isinstance(target, Tensor) and target.dtype == torch.bool:
        raise ValueError(f"target is a bool tensor, not class indices: give {_TARGET_HINT}")
    if (
        isinstance(target, (str, numbers.Number, type(None)))
        or type(target).__name__ == "bool_"
        or (isinstance(target, Tensor) and target.ndim == 0)
    ):
        return torch.full((batch,), _one(model, target if not isinstance(target, Tensor) else target.item(), limit))
    try:
        items = target.tolist() if isinstance(target, Tensor) else list(target)
    except TypeError:
        raise ValueError(f"target {target!r} is not a class index, name or 'predicted': give {_TARGET_HINT}") from None
    if len(items) != batch:
        raise ValueError(f"got {len(items)} targets for {batch} images: give one per image")
    return torch.tensor([_one(model, t, limit) for t in items], dtype=torch.long)

"""Targets: which class each image's attribution is for.

``target`` may be ``"predicted"`` (the source's top class), a class index, a class name (when the
model has ``class_names``), or a sequence/tensor with one of those per image.

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

TargetLike = Union[str, int, Sequence[Union[int, str]], Tensor]


def _one(model: Any, target: Any, n_out: int | None) -> int:
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
    if isinstance(target, float) and target.is_integer():
        target = int(target)  # a float tensor of labels
    try:
        index = operator.index(target)  # ints (numpy's too); a float such as 2.7 is not silently 2
    except TypeError:
        raise ValueError(f"target {target!r} is not a class index (int), a class name or 'predicted'") from None
    if n_out is not None and not 0 <= index < n_out:
        raise ValueError(f"target {index} is out of range for {n_out} classes")
    return index


def resolve_targets(
    model: Any,
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
    if isinstance(target, (str, numbers.Integral)) or (isinstance(target, Tensor) and target.ndim == 0):
        return torch.full((batch,), _one(model, target if not isinstance(target, Tensor) else target.item(), limit))
    items = target.tolist() if isinstance(target, Tensor) else list(target)
    if len(items) != batch:
        raise ValueError(f"got {len(items)} targets for {batch} images: give one per image")
    return torch.tensor([_one(model, t, limit) for t in items], dtype=torch.long)

"""The model's top classes as a horizontal bar chart: `top_classes_bar`.

Scores are softmax probabilities (single-label classifiers), sigmoid probabilities (multi-label
classifiers such as the bundled ``fashion-scenes-vit``, whose classes are independent), or the
raw logits: the model's ``cfg.output_activation`` says which.

Example:
    >>> logits = model(x)
    >>> fig = top_classes_bar(logits[0], model.class_names, k=5)
    >>> fig.show()  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from caap_lens.config import OutputActivation
from caap_lens.plot.common import to_numpy

OutputKind = OutputActivation  # the model's cfg.output_activation
AXIS_TITLES = {
    "softmax": "probability (softmax)",
    "sigmoid": "probability (sigmoid, per class)",
    "logits": "logit",
}

__all__ = ["top_classes_bar", "class_scores", "top_classes", "class_label"]


def class_label(index: int, class_names: Sequence[str] | None) -> str:
    """``"name (index)"``, or ``"class index"`` without names.

    Example:
        >>> class_label(3, ["a", "b", "c", "dress"])
        'dress (3)'
    """
    if class_names is not None and 0 <= index < len(class_names):
        return f"{class_names[index]} ({index})"
    return f"class {index}"


def class_scores(
    output: Float[Union[Tensor, np.ndarray], "*one n_classes"], kind: OutputKind = "softmax"
) -> np.ndarray:
    """The output of one image as ``[n_classes]`` probabilities or logits.

    Example:
        >>> class_scores(torch.zeros(1, 4)).tolist()
        [0.25, 0.25, 0.25, 0.25]
    """
    if kind not in AXIS_TITLES:
        raise ValueError(f"kind must be one of {', '.join(AXIS_TITLES)}, got {kind!r}")
    x = torch.as_tensor(to_numpy(output)).double()
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise ValueError(f"expected the output of one image [n_classes] or [1, n_classes], got {tuple(x.shape)}")
    if kind == "softmax":
        x = x.softmax(-1)
    elif kind == "sigmoid":
        x = x.sigmoid()
    return x.numpy()


def top_classes(
    output: Any, class_names: Sequence[str] | None = None, k: int = 5, kind: OutputKind = "softmax"
) -> list[dict[str, Any]]:
    """The ``k`` best classes: ``[{"index", "name", "score"}, ...]``, best first.

    Example:
        >>> top_classes(torch.tensor([0.0, 2.0, 1.0]), ["a", "b", "c"], k=2, kind="logits")
        [{'index': 1, 'name': 'b', 'score': 2.0}, {'index': 2, 'name': 'c', 'score': 1.0}]
    """
    scores = class_scores(output, kind)
    order = np.argsort(-scores, kind="stable")[: max(1, min(k, scores.size))]
    return [
        {"index": int(i), "name": class_names[i] if class_names is not None and i < len(class_names) else f"class {i}",
         "score": float(scores[i])}
        for i in order
    ]


def top_classes_bar(
    output: Float[Union[Tensor, np.ndarray], "*one n_classes"],
    class_names: Sequence[str] | None = None,
    k: int = 5,
    *,
    kind: OutputKind = "softmax",
    highlight: int | None = None,
    title: str = "Top classes",
    height: int | None = None,
    width: int | None = None,
) -> go.Figure:
    """A horizontal bar chart of the ``k`` highest-scoring classes, best at the top.

    Args:
        output: Logits of one image ``[n_classes]`` or ``[1, n_classes]``.
        class_names: Names of the classes (``model.class_names``); indices are used without them.
        k: Number of classes shown.
        kind: ``"softmax"``, ``"sigmoid"`` (multi-label models) or ``"logits"``.
        highlight: A class index (e.g. the attribution target) drawn in another colour.
        title: Figure title.
        height: Figure height in pixels (default from ``k``).
        width: Figure width in pixels (default: the container's).

    Returns:
        A figure with one horizontal ``bar`` trace of ``min(k, n_classes)`` bars.

    Example:
        >>> fig = top_classes_bar(torch.tensor([0.1, 2.0, -1.0]), ["cat", "dog", "fox"], k=2)
        >>> list(fig.data[0].y)
        ['dog (1)', 'cat (0)']
    """
    top = top_classes(output, class_names, k, kind)
    labels = [class_label(t["index"], class_names) for t in top]
    values = [t["score"] for t in top]
    colors = ["#ef553b" if t["index"] == highlight else "#636efa" for t in top]
    fmt = "{:.3f}" if kind != "logits" else "{:.3g}"
    fig = go.Figure(go.Bar(
        x=values, y=labels, orientation="h", marker_color=colors, text=[fmt.format(v) for v in values],
        textposition="auto", customdata=[[t["index"]] for t in top], name=AXIS_TITLES[kind],
        hovertemplate="%{y}<br>class index %{customdata[0]}<br>" + AXIS_TITLES[kind] + " %{x:.4g}<extra></extra>",
    ))
    # probabilities: from 0, up to 1 when the top one is large, else zoomed so small ones stay visible
    x_range = [0, 1.0 if max(values) > 0.5 else max(values) * 1.25 or 1.0] if kind != "logits" else None
    fig.update_xaxes(title_text=AXIS_TITLES[kind], range=x_range)
    fig.update_yaxes(title_text="class", autorange="reversed", type="category")
    fig.update_layout(title={"text": title, "x": 0.5, "xanchor": "center"}, template="plotly_white",
                      height=height or 140 + 36 * len(top), width=width, margin={"l": 20, "r": 20, "t": 60, "b": 50})
    return fig

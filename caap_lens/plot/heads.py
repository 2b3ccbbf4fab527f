"""Per-head maps as small multiples: `head_grid`, a layers × heads facet grid on one colour scale.

``caap(model, x, heads=True)`` patches one attention head's ``hook_z`` at a time and gives
``[batch, n_heads, gh, gw]``; with ``per_layer=True`` one layer of the window at a time,
``[batch, n_layers_in_window, n_heads, gh, gw]``. `head_grid` draws the maps of one image: one row
per layer, one column per head, every cell on the same colour scale (one colour bar), so a head
that matters stands out against the others. Given a result (or maps and ``context_score=``), the
cells show each head's effect, its map minus the context's score (``values="effect"``; white = no
effect); ``values="raw"`` shows the patched scores as computed.

Example:
    >>> result = caap(model, x, heads=True, per_layer=True, layers=(2, 4))
    >>> fig = head_grid(result, model.grid)  # rows: layers 2 and 3, colour bar "logit − context"
    >>> fig.show()  # doctest: +SKIP
    >>> fig = head_grid(result, model.grid, values="raw")  # the patched logits themselves
"""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence, Union

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float
from PIL import Image
from plotly.subplots import make_subplots
from torch import Tensor

from caap_lens.grid import PatchGrid
from caap_lens.plot.common import (
    GRID_LINE_COLOR,
    ImageLike,
    check_values,
    color_range,
    effect_values,
    grid_shapes,
    image_axes,
    image_to_rgb,
    score_name,
    to_numpy,
    value_label,
)

HeadMaps = Union[
    Float[Union[Tensor, np.ndarray], "n_layers n_heads grid_h grid_w"],
    Float[Union[Tensor, np.ndarray], "n_heads grid_h grid_w"],
    Any,  # a CAAPResult of caap(..., heads=True)
]

__all__ = ["head_grid"]


def _png_source(rgb: np.ndarray) -> str:
    """The image as a PNG data URI: one small string shared by every cell instead of a pixel array each."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _from_result(result: Any, image_index: int, values: str) -> tuple[np.ndarray, list[Any] | None]:
    maps = to_numpy(result.map)
    if not -maps.shape[0] <= image_index < maps.shape[0]:
        raise IndexError(f"image_index {image_index} out of range for {maps.shape[0]} images")
    maps = to_numpy(result.effect)[image_index] if values == "effect" else maps[image_index]
    window = result.settings.get("layers")
    labels: list[Any] | None = None
    if window is not None:
        start, stop = (int(v) for v in window)
        if maps.ndim == 4:
            labels = list(range(start, stop))
        elif maps.ndim == 3:
            labels = [f"window [{start}, {stop})"]
    return maps, labels


def _row_title(label: Any) -> str:
    return f"layer {label}" if isinstance(label, (int, np.integer)) else str(label)


def head_grid(
    head_maps: HeadMaps,
    grid: PatchGrid,
    *,
    layers: Sequence[Any] | None = None,
    heads: Sequence[int] | None = None,
    image: ImageLike | None = None,
    image_index: int = 0,
    values: str = "effect",
    context_score: Any = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    colorscale: Any = None,
    value_name: str | None = None,
    opacity: float = 0.6,
    grid_lines: bool = False,
    grid_color: str = GRID_LINE_COLOR,
    title: str | None = "Per-head maps",
    cell_size: int = 110,
) -> go.Figure:
    """Per-head maps of one image as a layers × heads grid of small maps on one shared colour scale.

    Args:
        head_maps: ``[n_layers, n_heads, grid_h, grid_w]`` or ``[n_heads, grid_h, grid_w]`` (one row), or
            a `caap_lens.attribution.result.CAAPResult` of ``caap(..., heads=True[, per_layer=True])``
            (its ``map`` for ``image_index``; rows labelled with the window's layers).
        grid: The model's `PatchGrid`.
        layers: Row labels: ints are shown as ``"layer l"``, anything else as given; default the
            result's layers, else ``0..n_layers-1``.
        heads: Head index of each column (default ``0..n_heads-1``).
        image: An image to draw under every map (see `caap_lens.plot.common.image_to_rgb`); none: maps only.
        image_index: Which image of a `CAAPResult` to draw.
        values: ``"effect"``: each map minus the context's score (``result.effect``; white = no effect);
            ``"raw"``: the patched scores. Maps given without ``context_score`` are drawn as given.
        context_score: With maps: the context's score (one number, or one per row ``[n_layers]``).
        mean: Normalisation mean to undo when ``image`` is model input.
        std: Normalisation std to undo.
        colorscale: Plotly colour scale; default diverging about 0 for effects and for two-signed raw maps.
        value_name: The score's name (colour bar and hover ``"<name> − context"`` or ``"<name> (raw)"``);
            default the result's score, else ``"value"``.
        opacity: Map opacity over an image (1 without one).
        grid_lines: Draw the patch grid in every cell.
        grid_color: Colour of the grid lines.
        title: Figure title.
        cell_size: Pixel size of one cell.

    Returns:
        A figure with one ``heatmap`` per (layer, head), all on ``coloraxis`` (one colour bar), row titles
        per layer and column titles per head; an ``image`` trace in each cell first when ``image`` is given.

    Example:
        >>> fig = head_grid(np.zeros((2, 3, 4, 4)), PatchGrid((4, 4), (16, 16), 1))
        >>> len(fig.data), {t.coloraxis for t in fig.data}
        (6, {'coloraxis'})
    """
    labels = None
    check_values(values)
    relative = has_context = False
    if hasattr(head_maps, "map") and hasattr(head_maps, "settings"):
        relative, has_context = bool(head_maps.settings.get("relative")), True
        value_name = value_name or score_name(head_maps.settings)
        head_maps, labels = _from_result(head_maps, image_index, values)
    maps = to_numpy(head_maps).astype(np.float64)
    gh, gw = grid.grid_size
    if maps.ndim == 3:
        maps = maps[None]
    if maps.ndim != 4 or maps.shape[2:] != (gh, gw):
        raise ValueError(f"expected per-head maps [n_layers, n_heads, {gh}, {gw}] or [n_heads, {gh}, {gw}] "
                         f"(e.g. result.map[0] of caap(..., heads=True)), got shape {tuple(to_numpy(head_maps).shape)}")
    n_layers, n_heads = maps.shape[:2]
    if context_score is not None and not has_context:
        has_context = True
        c = to_numpy(context_score).astype(np.float64).reshape(-1)
        if c.size not in (1, n_layers):
            raise ValueError(f"context_score: one value or one per layer ({n_layers}), got {c.size}")
        maps = effect_values(maps, np.broadcast_to(c, (n_layers,)), values)
    effect = relative or (values == "effect" and has_context)
    value_name = value_label(value_name or "value", values, relative, has_context)
    if layers is not None:
        labels = list(layers)
    labels = labels if labels is not None else list(range(n_layers))
    if len(labels) != n_layers:
        raise ValueError(f"{len(labels)} layer labels for {n_layers} layers")
    head_ids = [int(h) for h in heads] if heads is not None else list(range(n_heads))
    if len(head_ids) != n_heads:
        raise ValueError(f"{len(head_ids)} head labels for {n_heads} heads")

    if image is not None:
        rgb = image_to_rgb(image, mean, std)
        height, width = rgb.shape[:2]
        source = _png_source(rgb)
    else:
        source, (height, width) = None, grid.image_size
    colors = color_range(maps, colorscale, symmetric=True if effect else None)
    fig = make_subplots(rows=n_layers, cols=n_heads, row_titles=[_row_title(v) for v in labels],
                        column_titles=[f"head {h}" for h in head_ids],
                        horizontal_spacing=min(0.02, 0.2 / max(1, n_heads)),
                        vertical_spacing=min(0.02, 0.2 / max(1, n_layers)))
    dy, dx = height / gh, width / gw
    shapes: list[dict] = []
    for i, layer in enumerate(labels):
        row_name = _row_title(layer)
        for j, head in enumerate(head_ids):
            z = maps[i, j]
            text = [[f"{row_name}, head {head}<br>patch {r * gw + c} (row {r}, col {c})<br>{value_name} {z[r, c]:.4g}"
                     for c in range(gw)] for r in range(gh)]
            if source is not None:
                fig.add_trace(go.Image(source=source, x0=0.5, y0=0.5, dx=1, dy=1, hoverinfo="skip"),
                              row=i + 1, col=j + 1)
            fig.add_trace(go.Heatmap(
                z=z, x0=dx / 2, dx=dx, y0=dy / 2, dy=dy, coloraxis="coloraxis", text=text,
                hovertemplate="%{text}<extra></extra>", opacity=opacity if source is not None else 1.0,
                name=f"{row_name}, head {head}",
            ), row=i + 1, col=j + 1)
            index = i * n_heads + j + 1
            suffix = "" if index == 1 else str(index)
            if grid_lines:  # collected and set once: plotly's add_shape is quadratic in the shape count
                shapes += grid_shapes(grid.grid_size, height, width, f"x{suffix}", f"y{suffix}", grid_color,
                                      line_width=0.5)
            image_axes(fig, height, width, grid, row=i + 1, col=j + 1, x_anchor=f"x{suffix}", titles=False)
    fig.update_layout(shapes=shapes)
    fig.update_xaxes(showticklabels=False, ticks="")
    fig.update_yaxes(showticklabels=False, ticks="")
    fig.update_annotations(font_size=11)
    row_names = {_row_title(v) for v in labels}
    for note in fig.layout.annotations:  # row titles on the left, horizontal: the colour bar owns the right
        if note.text in row_names and note.textangle == 90:
            note.update(x=-0.005, xanchor="right", textangle=0)
    fig.update_layout(
        coloraxis={"colorscale": colors["colorscale"], "cmin": colors["zmin"], "cmax": colors["zmax"],
                   "colorbar": {"title": {"text": value_name}, "thickness": 12}},
        title={"text": title, "x": 0.5, "xanchor": "center"} if title else None, template="plotly_white",
        height=cell_size * n_layers + (100 if title else 60), width=cell_size * n_heads + 7 * max(len(_row_title(v)) for v in labels) + 140,
        margin={"l": 20 + 7 * max(len(_row_title(v)) for v in labels), "r": 60, "t": 80 if title else 40, "b": 20},
    )
    return fig

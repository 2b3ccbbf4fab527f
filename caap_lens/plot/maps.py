"""CAAP maps drawn over their images: `map_overlay` for one map, `map_grid` for many.

A map is drawn at patch resolution — one heatmap cell per patch, exactly over the pixels of that
patch — semi-transparent on top of the image, with the model's patch grid drawn as line shapes.
Hovering a cell shows the patch index, its ``(row, col)`` and its value.

By default a map is read against "no effect": given a `CAAPResult` (or a map and its
``context_score``), `map_overlay` draws the map minus the context run's own score (``values="effect"``,
``result.effect``) on a diverging scale (``RdBu_r``) symmetric about 0, so white means the patch
changes nothing, red that it raises the target's score, blue that it lowers it. ``values="raw"``
draws the patched scores as computed, labelled ``"<score> (raw)"``; a map given without its context's
score is drawn as given. Raw maps with both signs get the diverging scale about 0, one-signed ones a
sequential scale (``Viridis``).

Images may be given as 0..1 (or uint8) RGB ``[H, W, 3]`` / grayscale ``[H, W]`` arrays, as PIL
images, or as the model's normalised ``[C, H, W]`` / ``[1, C, H, W]`` tensor together with ``mean``
and ``std`` (``model.cfg.image_mean`` / ``image_std``) to undo the normalisation.

Example:
    >>> fig = map_overlay(x[0], result.map[0], model.grid,
    ...                   mean=model.cfg.image_mean, std=model.cfg.image_std)
    >>> fig.write_html("map.html")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import Tensor

from caap_lens.grid import PatchGrid
from caap_lens.plot.common import (
    GRID_LINE_COLOR,
    ImageLike,
    PatchMap,
    check_map,
    check_values,
    color_range,
    effect_values,
    figure_width,
    grid_shapes,
    image_axes,
    image_to_rgb,
    image_trace,
    patch_heatmap,
    score_name,
    to_numpy,
    value_label,
)

__all__ = ["map_overlay", "map_grid"]


# ------------------------------------------------------------------------------------ figures
def map_overlay(
    image: ImageLike,
    patch_map: PatchMap | Any,
    grid: PatchGrid,
    title: str = "CAAP map",
    colorscale: Any = None,
    *,
    values: str = "effect",
    context_score: float | None = None,
    image_index: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    opacity: float = 0.55,
    value_name: str | None = None,
    grid_color: str = GRID_LINE_COLOR,
    size: int = 480,
) -> go.Figure:
    """The CAAP map as a semi-transparent heatmap over the image, with the patch grid and a colour bar.

    Args:
        image: The image (see `caap_lens.plot.common.image_to_rgb`); of any size: the map is stretched over it.
            Pass the model input (``model.preprocess(photo)[0]`` with ``mean``/``std``) to show the crop
            the model saw — timm's eval transform resizes and centre-crops, so the original photo of
            another aspect would not line up with the patches (the report does this).
        patch_map: A `CAAPResult` of a patch map (its image ``image_index``), or values per patch
            ``[grid_h, grid_w]`` (e.g. ``result.map[0]``).
        grid: The model's `PatchGrid` (``model.grid``).
        title: Figure title.
        colorscale: A plotly colour scale; default diverging about 0 for effects and for raw maps with
            both signs.
        values: ``"effect"``: the map minus the context's score, white = no effect (``result.effect``);
            ``"raw"``: the patched scores as computed. A map given without ``context_score`` is drawn as given.
        context_score: The context run's score, for a map given as values (``result.context_score[0]``).
        image_index: Which image of a `CAAPResult`.
        mean: Normalisation mean to undo (``model.cfg.image_mean``) when ``image`` is model input.
        std: Normalisation std to undo (``model.cfg.image_std``).
        opacity: Heatmap opacity.
        value_name: The score's name, e.g. ``"logit"``; the colour bar and hover say ``"logit − context"``
            or ``"logit (raw)"``. Default: the result's score, else ``"value"``.
        grid_color: Colour of the patch-grid lines.
        size: Figure height in pixels.

    Returns:
        A figure with an ``image`` and a ``heatmap`` trace and ``grid_h + grid_w + 2`` line shapes.

    Example:
        >>> grid = PatchGrid((2, 2), (8, 8), 1)
        >>> fig = map_overlay(np.zeros((16, 16)), np.array([[1.0, 2.0], [3.0, 4.0]]), grid, context_score=2.0,
        ...                   value_name="logit")
        >>> fig.data[1].z.tolist(), fig.data[1].colorbar.title.text
        ([[-1.0, 0.0], [1.0, 2.0]], 'logit − context')
    """
    rgb = image_to_rgb(image, mean, std)
    height, width = rgb.shape[:2]
    check_values(values)
    relative = False
    if hasattr(patch_map, "map") and hasattr(patch_map, "context_score"):  # a CAAPResult
        result = patch_map
        value_name = value_name or score_name(result.settings)
        relative = bool(result.settings.get("relative"))
        patch_map, context_score = result.map[image_index], result.context_score[image_index]
    name = value_label(value_name or "value", values, relative, context_score is not None)
    shown = effect_values(check_map(patch_map, grid), context_score, values, relative)
    effect = relative or (values == "effect" and context_score is not None)
    colors = color_range(shown, colorscale, symmetric=True if effect else None)
    fig = go.Figure()
    fig.add_trace(image_trace(rgb))
    fig.add_trace(patch_heatmap(
        shown, grid, height, width, opacity=opacity, value_name=name, name=name,
        colorscale=colors["colorscale"], zmin=colors["zmin"], zmax=colors["zmax"],
        colorbar={"title": {"text": name}, "thickness": 14},
    ))
    fig.update_layout(shapes=grid_shapes(grid.grid_size, height, width, color=grid_color))
    image_axes(fig, height, width, grid)
    margin = {"l": 60, "r": 20, "t": 60, "b": 50}
    fig.update_layout(title={"text": title, "x": 0.5, "xanchor": "center"}, height=size,
                      width=figure_width(size, (height, width), margin, True), template="plotly_white",
                      margin=margin)
    return fig


def _image_list(images: Any) -> list[Any]:
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, (Tensor, np.ndarray)) and images.ndim == 4:
        return [images[i] for i in range(images.shape[0])]
    return [images]


def map_grid(
    images: Any,
    maps: Mapping[str, Any],
    grid: PatchGrid,
    *,
    row_titles: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    colorscale: Any = None,
    opacity: float = 0.55,
    value_name: str = "value",
    grid_lines: bool = True,
    grid_color: str = GRID_LINE_COLOR,
    title: str | None = None,
    cell_size: int = 220,
) -> go.Figure:
    """Maps of several methods or settings (columns) for several images (rows), over the images.

    Each column has one colour scale shared by its rows (a horizontal colour bar under it), so maps
    of one method are comparable across images; columns are scaled independently.

    Args:
        images: ``[n, C, H, W]`` tensor (normalised: give ``mean``/``std``), ``[n, H, W, 3]`` array,
            or a list of images.
        maps: Column title → maps ``[n, grid_h, grid_w]`` (``[grid_h, grid_w]`` when ``n == 1``).
        grid: The model's `PatchGrid`.
        row_titles: One title per image.
        mean: Normalisation mean to undo.
        std: Normalisation std to undo.
        colorscale: Force one colour scale for every column.
        opacity: Heatmap opacity.
        value_name: Hover label of the values.
        grid_lines: Draw the patch grid in every cell.
        grid_color: Colour of the grid lines.
        title: Figure title.
        cell_size: Pixel size of one cell.

    Returns:
        A figure with ``n × len(maps)`` image and heatmap traces.

    Example:
        >>> r_mean, r_blur = caap(model, x), caap(model, x, context="blur")
        >>> fig = map_grid(x, {"mean": r_mean.map, "blur": r_blur.map}, model.grid,
        ...                mean=model.cfg.image_mean, std=model.cfg.image_std)
    """
    rgbs = [image_to_rgb(im, mean, std) for im in _image_list(images)]
    n, names = len(rgbs), list(maps)
    if not names:
        raise ValueError("no maps given")
    columns = []
    for name in names:
        m = to_numpy(maps[name])
        if m.ndim == 2:
            m = m[None]
        if m.shape[0] != n:
            raise ValueError(f"maps[{name!r}] has {m.shape[0]} maps for {n} images")
        columns.append(np.stack([check_map(mi, grid, f"maps[{name!r}]") for mi in m]))
    if row_titles is not None and len(row_titles) != n:
        raise ValueError(f"{len(row_titles)} row titles for {n} images")
    fig = make_subplots(rows=n, cols=len(names), column_titles=names, row_titles=list(row_titles or []) or None,
                        horizontal_spacing=0.04, vertical_spacing=0.03)
    shapes: list[dict] = []
    for j, (name, column) in enumerate(zip(names, columns)):
        colors = color_range(column, colorscale)
        axis = f"coloraxis{j + 1}" if j else "coloraxis"
        fig.update_layout({axis: {"colorscale": colors["colorscale"], "cmin": colors["zmin"], "cmax": colors["zmax"]}})
        for i, rgb in enumerate(rgbs):
            height, width = rgb.shape[:2]
            fig.add_trace(image_trace(rgb), row=i + 1, col=j + 1)
            fig.add_trace(patch_heatmap(column[i], grid, height, width, opacity=opacity, value_name=value_name,
                                        name=name, coloraxis=axis), row=i + 1, col=j + 1)
            index = i * len(names) + j + 1
            suffix = "" if index == 1 else str(index)
            if grid_lines:  # collected and set once: plotly's add_shape is quadratic in the shape count
                shapes += grid_shapes(grid.grid_size, height, width, f"x{suffix}", f"y{suffix}", grid_color)
            image_axes(fig, height, width, grid, row=i + 1, col=j + 1, x_anchor=f"x{suffix}", titles=False)
            fig.update_xaxes(showticklabels=False, row=i + 1, col=j + 1)
            fig.update_yaxes(showticklabels=False, row=i + 1, col=j + 1)
    fig.update_layout(shapes=shapes)
    for j in range(len(names)):
        domain = fig.layout[f"xaxis{'' if j == 0 else j + 1}"].domain
        axis = f"coloraxis{j + 1}" if j else "coloraxis"
        fig.update_layout({axis: {"colorbar": {
            "orientation": "h", "x": (domain[0] + domain[1]) / 2, "xanchor": "center", "len": domain[1] - domain[0],
            "y": -0.02, "yanchor": "top", "thickness": 10, "title": {"text": value_name, "side": "top"},
        }}})
    fig.update_layout(height=cell_size * n + 140, width=cell_size * len(names) + 120, template="plotly_white",
                      title={"text": title, "x": 0.5, "xanchor": "center"} if title else None,
                      margin={"l": 40, "r": 40, "t": 80 if title else 50, "b": 90})
    return fig

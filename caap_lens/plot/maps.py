"""CAAP maps drawn over their images: `map_overlay` for one map, `map_grid` for many.

A map is drawn at patch resolution — one heatmap cell per patch, exactly over the pixels of that
patch — semi-transparent on top of the image, with the model's patch grid drawn as line shapes.
Hovering a cell shows the patch index, its ``(row, col)`` and its value. When a map has both
signs, the colour scale is diverging (``RdBu_r``) and symmetric about 0, so white means "no
effect"; a one-signed map gets a sequential scale (``Viridis``).

Images may be given as 0..1 (or uint8) RGB ``[H, W, 3]`` / grayscale ``[H, W]`` arrays, as PIL
images, or as the model's normalised ``[C, H, W]`` / ``[1, C, H, W]`` tensor together with ``mean``
and ``std`` (``model.cfg.image_mean`` / ``image_std``) to undo the normalisation.

Example:
    >>> fig = map_overlay(x[0], result.map[0], model.grid,  # doctest: +SKIP
    ...                   mean=model.cfg.image_mean, std=model.cfg.image_std)
    >>> fig.write_html("map.html")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from caap_lens.grid import PatchGrid

ArrayLike = Union[Tensor, np.ndarray]
PatchMap = Float[ArrayLike, "grid_h grid_w"]
ImageLike = Union[Float[ArrayLike, "height width 3"], Float[ArrayLike, "channel height width"], Any]

DIVERGING = "RdBu_r"
SEQUENTIAL = "Viridis"
GRID_LINE_COLOR = "rgba(255, 255, 255, 0.55)"

__all__ = ["map_overlay", "map_grid", "image_to_rgb", "color_range", "grid_shapes", "patch_heatmap"]


# -------------------------------------------------------------------------------------- helpers
def to_numpy(x: Any) -> np.ndarray:
    """A numpy copy of a tensor (any device/dtype, float32 for floats) or array."""
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def image_to_rgb(
    image: ImageLike, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> np.ndarray:
    """Turns an image into uint8 RGB ``[H, W, 3]`` for display.

    Args:
        image: PIL image; array ``[H, W]``, ``[H, W, C]`` (numpy convention); tensor ``[C, H, W]``
            (torch convention); a leading batch axis of 1 is dropped. Floats in 0..1 or uint8;
            or normalised, with ``mean`` and ``std``.
        mean: Per-channel mean of the normalisation to undo (``model.cfg.image_mean``).
        std: Per-channel std of the normalisation to undo (``model.cfg.image_std``).

    Returns:
        uint8 ``[H, W, 3]``.

    Example:
        >>> image_to_rgb(np.zeros((8, 8))).shape
        (8, 8, 3)
    """
    if type(image).__module__.startswith("PIL"):
        image = image.convert("RGB")
    channels_first = isinstance(image, Tensor)
    x = to_numpy(image)
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {x.shape[0]}")
        x = x[0]
    if x.ndim == 3:
        first, last = x.shape[0] in (1, 3, 4), x.shape[-1] in (1, 3, 4)
        if (channels_first and first) or (first and not last):
            x = np.moveaxis(x, 0, -1)
    elif x.ndim == 2:
        x = x[:, :, None]
    else:
        raise ValueError(f"expected an image [H, W], [H, W, C] or [C, H, W], got shape {x.shape}")
    if x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected 1, 3 or 4 channels, got shape {x.shape}")
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise ValueError("give both mean and std to undo a normalisation")
        m = np.asarray(mean, dtype=np.float32)
        s = np.asarray(std, dtype=np.float32)
        x = x.astype(np.float32) * s + m
    if x.dtype == np.uint8:
        rgb = x
    else:
        x = x.astype(np.float32)
        if x.size and (np.nanmin(x) < -0.02 or np.nanmax(x) > 1.02):
            raise ValueError(
                f"image values span [{np.nanmin(x):.3g}, {np.nanmax(x):.3g}], not 0..1: for the model's "
                "normalised input pass mean=model.cfg.image_mean, std=model.cfg.image_std"
            )
        rgb = np.round(np.clip(np.nan_to_num(x), 0, 1) * 255).astype(np.uint8)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    return np.ascontiguousarray(rgb[..., :3])


def _check_map(patch_map: Any, grid: PatchGrid, name: str = "map") -> np.ndarray:
    values = to_numpy(patch_map).astype(np.float64)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim == 1 and values.size == grid.n_patches:
        values = values.reshape(grid.grid_size)
    if values.shape != tuple(grid.grid_size):
        raise ValueError(f"{name} must be the patch grid {tuple(grid.grid_size)}, got shape {values.shape}")
    return values


def color_range(values: Any, colorscale: Any = None, symmetric: bool | None = None) -> dict[str, Any]:
    """Colour scale and range for values: diverging and centred at 0 when they have both signs.

    Args:
        values: Any array of values.
        colorscale: Force a plotly colour scale.
        symmetric: Force (True) or forbid (False) a range symmetric about 0; default: when both signs.

    Returns:
        ``{"colorscale", "zmin", "zmax", "diverging"}``.

    Example:
        >>> color_range(np.array([-1.0, 3.0]))
        {'colorscale': 'RdBu_r', 'zmin': -3.0, 'zmax': 3.0, 'diverging': True}
    """
    v = to_numpy(values).astype(np.float64)
    finite = v[np.isfinite(v)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    diverging = (lo < 0 < hi) if symmetric is None else bool(symmetric)
    if diverging:
        m = max(abs(lo), abs(hi)) or 1.0
        lo, hi = -m, m
    elif hi - lo <= 1e-12 * max(1.0, abs(hi)):
        lo, hi = lo - 0.5, hi + 0.5
    return {"colorscale": colorscale or (DIVERGING if diverging else SEQUENTIAL), "zmin": lo, "zmax": hi,
            "diverging": diverging}


def grid_shapes(
    grid_size: tuple[int, int],
    height: float,
    width: float,
    xref: str = "x",
    yref: str = "y",
    color: str = GRID_LINE_COLOR,
    line_width: float = 1.0,
) -> list[dict[str, Any]]:
    """Line shapes of a patch grid over an image of ``height × width``: ``grid_h + grid_w + 2`` lines.

    Example:
        >>> len(grid_shapes((4, 4), 64, 64))
        10
    """
    gh, gw = grid_size
    line = {"color": color, "width": line_width}
    shapes = [
        {"type": "line", "xref": xref, "yref": yref, "x0": c * width / gw, "x1": c * width / gw,
         "y0": 0, "y1": height, "line": line, "layer": "above"}
        for c in range(gw + 1)
    ]
    shapes += [
        {"type": "line", "xref": xref, "yref": yref, "x0": 0, "x1": width,
         "y0": r * height / gh, "y1": r * height / gh, "line": line, "layer": "above"}
        for r in range(gh + 1)
    ]
    return shapes


def hover_texts(values: np.ndarray, grid: PatchGrid, value_name: str = "value") -> list[list[str]]:
    """Per-cell hover text: patch index, (row, col) and value."""
    gh, gw = grid.grid_size
    return [
        [f"patch {r * gw + c}<br>(row {r}, col {c})<br>{value_name} {values[r, c]:.4g}" for c in range(gw)]
        for r in range(gh)
    ]


def patch_heatmap(
    patch_map: PatchMap,
    grid: PatchGrid,
    height: float,
    width: float,
    *,
    opacity: float = 0.55,
    value_name: str = "value",
    **heatmap_kwargs: Any,
) -> go.Heatmap:
    """A heatmap trace with one cell per patch, covering ``[0, width] × [0, height]`` in pixels.

    Example:
        >>> trace = patch_heatmap(torch.zeros(4, 4), PatchGrid((4, 4), (16, 16), 1), 64, 64)
        >>> trace.dx
        16.0
    """
    values = _check_map(patch_map, grid)
    gh, gw = grid.grid_size
    dy, dx = height / gh, width / gw
    return go.Heatmap(
        z=values, x0=dx / 2, dx=dx, y0=dy / 2, dy=dy, opacity=opacity,
        text=hover_texts(values, grid, value_name), hovertemplate="%{text}<extra></extra>",
        **heatmap_kwargs,
    )


def image_trace(rgb: np.ndarray) -> go.Image:
    """The image with pixel ``(i, j)`` covering ``[j, j + 1] × [i, i + 1]``; no hover."""
    return go.Image(z=rgb, x0=0.5, y0=0.5, dx=1, dy=1, hoverinfo="skip")


def _patch_ticks(n: int, size: float, max_ticks: int = 16) -> dict[str, Any]:
    step = max(1, int(np.ceil(n / max_ticks)))
    idx = list(range(0, n, step))
    return {"tickvals": [(i + 0.5) * size / n for i in idx], "ticktext": [str(i) for i in idx]}


def _figure_width(height_px: int, image_hw: tuple[int, int], margin: dict[str, int], colorbar: bool) -> int:
    """Figure width that fits the image's aspect ratio in the plot area (plus the colour bar)."""
    plot_h = max(50, height_px - margin["t"] - margin["b"])
    plot_w = plot_h * image_hw[1] / image_hw[0]
    return int(plot_w + margin["l"] + margin["r"] + (100 if colorbar else 0))


def _image_axes(fig: go.Figure, height: float, width: float, grid: PatchGrid, row: Any = None, col: Any = None,
                x_anchor: str = "x", titles: bool = True) -> None:
    gh, gw = grid.grid_size
    fig.update_xaxes(range=[0, width], showgrid=False, zeroline=False, constrain="domain",
                     title_text="patch column" if titles else None, **_patch_ticks(gw, width), row=row, col=col)
    fig.update_yaxes(range=[height, 0], showgrid=False, zeroline=False, constrain="domain",
                     scaleanchor=x_anchor, scaleratio=1, title_text="patch row" if titles else None,
                     **_patch_ticks(gh, height), row=row, col=col)


# ------------------------------------------------------------------------------------ figures
def map_overlay(
    image: ImageLike,
    patch_map: PatchMap,
    grid: PatchGrid,
    title: str = "CAAP map",
    colorscale: Any = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    opacity: float = 0.55,
    value_name: str = "value",
    grid_color: str = GRID_LINE_COLOR,
    size: int = 480,
) -> go.Figure:
    """The CAAP map as a semi-transparent heatmap over the image, with the patch grid and a colour bar.

    Args:
        image: The image (see `image_to_rgb`); of any size: the map is stretched over it.
        patch_map: Values per patch ``[grid_h, grid_w]`` (e.g. ``result.map[0]``).
        grid: The model's `PatchGrid` (``model.grid``).
        title: Figure title.
        colorscale: A plotly colour scale; default diverging about 0 when the map has both signs.
        mean: Normalisation mean to undo (``model.cfg.image_mean``) when ``image`` is model input.
        std: Normalisation std to undo (``model.cfg.image_std``).
        opacity: Heatmap opacity.
        value_name: What the values are (colour-bar title and hover), e.g. ``"logit"``.
        grid_color: Colour of the patch-grid lines.
        size: Figure height in pixels.

    Returns:
        A figure with an ``image`` and a ``heatmap`` trace and ``grid_h + grid_w + 2`` line shapes.

    Example:
        >>> fig = map_overlay(x[0], result.map[0], model.grid, mean=model.cfg.image_mean,  # doctest: +SKIP
        ...                   std=model.cfg.image_std, value_name="logit")
    """
    rgb = image_to_rgb(image, mean, std)
    height, width = rgb.shape[:2]
    values = _check_map(patch_map, grid)
    colors = color_range(values, colorscale)
    fig = go.Figure()
    fig.add_trace(image_trace(rgb))
    fig.add_trace(patch_heatmap(
        values, grid, height, width, opacity=opacity, value_name=value_name, name=value_name,
        colorscale=colors["colorscale"], zmin=colors["zmin"], zmax=colors["zmax"],
        colorbar={"title": {"text": value_name}, "thickness": 14},
    ))
    fig.update_layout(shapes=grid_shapes(grid.grid_size, height, width, color=grid_color))
    _image_axes(fig, height, width, grid)
    margin = {"l": 60, "r": 20, "t": 60, "b": 50}
    fig.update_layout(title={"text": title, "x": 0.5, "xanchor": "center"}, height=size,
                      width=_figure_width(size, (height, width), margin, True), template="plotly_white",
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
        >>> fig = map_grid(x, {"mean": r_mean.map, "blur": r_blur.map}, model.grid,  # doctest: +SKIP
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
        columns.append(np.stack([_check_map(mi, grid, f"maps[{name!r}]") for mi in m]))
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
            _image_axes(fig, height, width, grid, row=i + 1, col=j + 1, x_anchor=f"x{suffix}", titles=False)
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

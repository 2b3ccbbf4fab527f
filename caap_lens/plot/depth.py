"""Patch effects across depth, from a `depth_profile` (single-layer windows ``(l, l + 1)``).

* `depth_profile_lines` — one line per chosen patch, x = layer.
* `depth_heatmap` — layers × chosen patches.
* `depth_slider` — the map of each layer (over the image), with a slider over layers.

All take the profile of one image: the `WindowSweepResult` of ``depth_profile(model, x)`` itself
(image ``image_index``; the layers are read from its windows), or its maps ``[n_layers, grid_h,
grid_w]``, e.g. ``profile.maps[:, i]`` with ``layers=[start for start, _ in profile.windows]``.

Values are read against "no effect" by default (``values="effect"``): each layer's map minus that
layer's context score (the profile's ``context_score``, or ``context_score=`` given with maps), so 0
(white) is a patch that changes nothing. ``values="raw"`` shows the patched scores as computed;
maps given without a context score are shown as given.

Example:
    >>> from caap_lens import depth_profile
    >>> profile = depth_profile(model, x)
    >>> fig = depth_profile_lines(profile.maps[:, 0], model.grid, patches=[5, 9])
    >>> fig.show()  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float
from torch import Tensor

from caap_lens.grid import PatchGrid
from caap_lens.plot.common import (
    GRID_LINE_COLOR,
    LINE_COLORS,
    ImageLike,
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

ProfileMaps = Float[Union[Tensor, np.ndarray], "n_layers grid_h grid_w"]

__all__ = ["depth_profile_lines", "depth_heatmap", "depth_slider", "top_patches_by_peak"]


def _profile(profile_maps: Any, grid: PatchGrid) -> np.ndarray:
    p = to_numpy(profile_maps).astype(np.float64)
    if p.ndim == 4 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim != 3 or p.shape[1:] != tuple(grid.grid_size):
        raise ValueError(
            f"expected the profile of one image [n_layers, {grid.grid_size[0]}, {grid.grid_size[1]}] "
            f"(e.g. profile.maps[:, 0]), got shape {p.shape}"
        )
    return p


def _shown(
    profile_maps: Any, grid: PatchGrid, layers: Sequence[int] | None, values: str, context_score: Any,
    image_index: int, value_name: str | None,
) -> tuple[np.ndarray, Sequence[int] | None, str, bool]:
    """``(profile as shown [n_layers, gh, gw], layers, value label, whether it is an effect)``."""
    check_values(values)
    relative = False
    if hasattr(profile_maps, "maps") and hasattr(profile_maps, "windows"):  # a WindowSweepResult
        sweep = profile_maps
        n_images = sweep.maps.shape[1]
        if not -n_images <= image_index < n_images:
            raise IndexError(f"image_index {image_index} out of range for {n_images} images")
        relative = bool(sweep.settings.get("relative"))
        value_name = value_name or score_name(sweep.settings)
        layers = layers if layers is not None else [int(w[0]) for w in sweep.windows]
        profile_maps, context_score = sweep.maps[:, image_index], to_numpy(sweep.context_score)[:, image_index]
    p = _profile(profile_maps, grid)
    has_context = context_score is not None
    if has_context:
        c = to_numpy(context_score).astype(np.float64).reshape(-1)
        if c.size not in (1, p.shape[0]):
            raise ValueError(f"context_score: one value or one per layer ({p.shape[0]}), got {c.size}")
        context_score = c if c.size == p.shape[0] else c[0]
    shown = effect_values(p, context_score, values, relative)
    effect = relative or (values == "effect" and has_context)
    return shown, layers, value_label(value_name or "value", values, relative, has_context), effect


def _layers(layers: Sequence[int] | None, n: int) -> list[int]:
    if layers is None:
        return list(range(n))
    layers = [int(v) for v in layers]
    if len(layers) != n:
        raise ValueError(f"{len(layers)} layer labels for {n} layers")
    return layers


def _patches(patches: Sequence[int] | None, profile: np.ndarray, grid: PatchGrid, k: int) -> list[int]:
    if patches is None:
        return top_patches_by_peak(profile, grid, k)
    patches = [int(p) for p in patches]
    for p in patches:
        grid.rc_of(p)  # IndexError with the valid range
    return patches


def top_patches_by_peak(profile_maps: ProfileMaps, grid: PatchGrid, k: int = 5) -> list[int]:
    """The ``k`` patches with the highest value at any layer.

    Example:
        >>> top_patches_by_peak(np.arange(8.0).reshape(2, 2, 2), PatchGrid((2, 2), (1, 1), 0), k=2)
        [3, 2]
    """
    p = _profile(profile_maps, grid)
    peak = p.reshape(p.shape[0], -1).max(axis=0)
    return [int(i) for i in np.argsort(-peak, kind="stable")[:k]]


def _patch_name(patch: int, grid: PatchGrid) -> str:
    r, c = grid.rc_of(patch)
    return f"patch {patch} ({r}, {c})"


def depth_profile_lines(
    profile_maps: ProfileMaps,
    grid: PatchGrid,
    patches: Sequence[int] | None = None,
    *,
    k: int = 5,
    layers: Sequence[int] | None = None,
    values: str = "effect",
    context_score: Any = None,
    image_index: int = 0,
    show_mean: bool = True,
    value_name: str | None = None,
    title: str = "Patch effect across depth",
    height: int = 380,
    width: int | None = None,
) -> go.Figure:
    """One line per patch: its value when only layer ``l`` is patched, against ``l``.

    Args:
        profile_maps: A depth profile (`WindowSweepResult`) or its maps ``[n_layers, grid_h, grid_w]``
            for one image.
        grid: The model's `PatchGrid`.
        patches: Patch indices to draw; default: the ``k`` with the highest peak.
        k: Number of patches when ``patches`` is not given.
        layers: The layer of each map (default: the profile's, else ``0..n_layers-1``).
        values: ``"effect"`` (minus the context's score; a line at 0 is no effect) or ``"raw"``.
        context_score: With maps: the context's score, one number or one per layer.
        image_index: Which image of a profile.
        show_mean: Add a dashed line with the mean over all patches.
        value_name: The score's name (y-axis title ``"<name> − context"`` or ``"<name> (raw)"``).
        title: Figure title.
        height: Figure height in pixels.
        width: Figure width in pixels (default: the container's).

    Returns:
        A figure with one ``scatter`` trace per patch (plus one for the mean).

    Example:
        >>> fig = depth_profile_lines(profile.maps[:, 0], model.grid, patches=[3, 7])
    """
    p, layers, value_name, effect = _shown(profile_maps, grid, layers, values, context_score, image_index, value_name)
    xs = _layers(layers, p.shape[0])
    fig = go.Figure()
    for n, patch in enumerate(_patches(patches, p, grid, k)):
        r, c = grid.rc_of(patch)
        fig.add_trace(go.Scatter(
            x=xs, y=p[:, r, c], mode="lines+markers", name=_patch_name(patch, grid),
            line={"color": LINE_COLORS[n % len(LINE_COLORS)]},
            hovertemplate=f"patch {patch} (row {r}, col {c})<br>layer %{{x}}<br>{value_name} %{{y:.4g}}<extra></extra>",
        ))
    if show_mean:
        fig.add_trace(go.Scatter(
            x=xs, y=p.reshape(p.shape[0], -1).mean(axis=1), mode="lines", name="mean of all patches",
            line={"color": "#888", "dash": "dash"},
            hovertemplate=f"mean of all patches<br>layer %{{x}}<br>{value_name} %{{y:.4g}}<extra></extra>",
        ))
    fig.update_xaxes(title_text="layer patched (window l → l+1)", tickmode="array", tickvals=xs)
    fig.update_yaxes(title_text=value_name, zeroline=effect, zerolinecolor="#999", zerolinewidth=1)
    fig.update_layout(title={"text": title, "x": 0.5, "xanchor": "center"}, template="plotly_white", height=height,
                      width=width, hovermode="closest", margin={"l": 60, "r": 20, "t": 60, "b": 50},
                      legend={"font": {"size": 11}})
    return fig


def depth_heatmap(
    profile_maps: ProfileMaps,
    grid: PatchGrid,
    patches: Sequence[int] | None = None,
    *,
    k: int | None = None,
    layers: Sequence[int] | None = None,
    values: str = "effect",
    context_score: Any = None,
    image_index: int = 0,
    colorscale: Any = None,
    value_name: str | None = None,
    title: str = "Patch effect by layer",
    height: int = 380,
    width: int | None = None,
) -> go.Figure:
    """A layers × patches heatmap of a depth profile.

    Args:
        profile_maps: A depth profile (`WindowSweepResult`) or its maps ``[n_layers, grid_h, grid_w]``
            for one image.
        grid: The model's `PatchGrid`.
        patches: Patch indices (columns); default all patches, or the top ``k`` by peak if ``k``.
        k: See ``patches``.
        layers: The layer of each map (default: the profile's, else ``0..n_layers-1``).
        values: ``"effect"`` (minus the context's score, white = no effect) or ``"raw"``.
        context_score: With maps: the context's score, one number or one per layer.
        image_index: Which image of a profile.
        colorscale: Plotly colour scale; default diverging about 0 for effects and for two-signed raw values.
        value_name: The score's name (colour-bar title and hover ``"<name> − context"`` or ``"<name> (raw)"``).
        title: Figure title.
        height: Figure height in pixels.
        width: Figure width in pixels (default: the container's).

    Returns:
        A figure with one ``heatmap`` trace ``[n_layers, n_patches_shown]``.

    Example:
        >>> fig = depth_heatmap(profile.maps[:, 0], model.grid, k=10)
    """
    p, layers, value_name, effect = _shown(profile_maps, grid, layers, values, context_score, image_index, value_name)
    ys = _layers(layers, p.shape[0])
    if patches is None and k is None:
        chosen = list(range(grid.n_patches))
    else:
        chosen = _patches(patches, p, grid, k or 5)
    rcs = [grid.rc_of(i) for i in chosen]
    z = np.stack([p[:, r, c] for r, c in rcs], axis=1)  # [n_layers, n_chosen]
    labels = [f"{i} ({r},{c})" for i, (r, c) in zip(chosen, rcs)]
    text = [[f"patch {i} (row {r}, col {c})<br>layer {layer}<br>{value_name} {z[li, j]:.4g}"
             for j, (i, (r, c)) in enumerate(zip(chosen, rcs))] for li, layer in enumerate(ys)]
    colors = color_range(z, colorscale, symmetric=True if effect else None)
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=ys, text=text, hovertemplate="%{text}<extra></extra>", colorscale=colors["colorscale"],
        zmin=colors["zmin"], zmax=colors["zmax"], colorbar={"title": {"text": value_name}, "thickness": 14},
    ))
    fig.update_xaxes(title_text="patch (row, col)", type="category")
    fig.update_yaxes(title_text="layer patched", autorange="reversed", tickmode="array", tickvals=ys)
    fig.update_layout(title={"text": title, "x": 0.5, "xanchor": "center"}, template="plotly_white", height=height,
                      width=width, margin={"l": 60, "r": 20, "t": 60, "b": 60})
    return fig


def depth_slider(
    profile_maps: ProfileMaps,
    grid: PatchGrid,
    image: ImageLike | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    layers: Sequence[int] | None = None,
    values: str = "effect",
    context_score: Any = None,
    image_index: int = 0,
    colorscale: Any = None,
    opacity: float = 0.55,
    value_name: str | None = None,
    grid_color: str = GRID_LINE_COLOR,
    title: str = "Map when one layer is patched",
    size: int = 480,
) -> go.Figure:
    """The map of each layer over the image, one at a time, with a slider over layers.

    All layers share one colour range (diverging about 0 for effects and for two-signed raw values),
    so moving the slider compares layers.

    Args:
        profile_maps: A depth profile (`WindowSweepResult`) or its maps ``[n_layers, grid_h, grid_w]``
            for one image.
        grid: The model's `PatchGrid`.
        image: The image under the maps (see `caap_lens.plot.common.image_to_rgb`); none: maps only.
        mean: Normalisation mean to undo when ``image`` is model input.
        std: Normalisation std to undo.
        layers: The layer of each map (default: the profile's, else ``0..n_layers-1``).
        values: ``"effect"`` (each layer's map minus its context score, white = no effect) or ``"raw"``.
        context_score: With maps: the context's score, one number or one per layer.
        image_index: Which image of a profile.
        colorscale: Plotly colour scale.
        opacity: Heatmap opacity (1 without an image).
        value_name: The score's name (colour-bar title and hover ``"<name> − context"`` or ``"<name> (raw)"``).
        grid_color: Colour of the patch-grid lines.
        title: Figure title.
        size: Figure height in pixels (without the slider).

    Returns:
        A figure with one ``heatmap`` trace per layer (only the first visible), an ``image`` trace
        first if ``image`` is given, and one slider with a step per layer.

    Example:
        >>> fig = depth_slider(profile.maps[:, 0], model.grid, x[0], mean=model.cfg.image_mean,
        ...                    std=model.cfg.image_std)
    """
    p, layers, value_name, effect = _shown(profile_maps, grid, layers, values, context_score, image_index, value_name)
    labels = _layers(layers, p.shape[0])
    if image is not None:
        rgb = image_to_rgb(image, mean, std)
        height, width = rgb.shape[:2]
    else:
        rgb, (height, width) = None, grid.image_size
    colors = color_range(p, colorscale, symmetric=True if effect else None)
    fig = go.Figure()
    if rgb is not None:
        fig.add_trace(image_trace(rgb))
    offset = len(fig.data)
    for i, layer in enumerate(labels):
        fig.add_trace(patch_heatmap(
            p[i], grid, height, width, opacity=opacity if rgb is not None else 1.0, value_name=value_name,
            name=f"layer {layer}", visible=i == 0, colorscale=colors["colorscale"], zmin=colors["zmin"],
            zmax=colors["zmax"], colorbar={"title": {"text": value_name}, "thickness": 14},
        ))
    steps = []
    for i, layer in enumerate(labels):
        visible = [True] * offset + [j == i for j in range(len(labels))]
        steps.append({"method": "update", "label": str(layer),
                      "args": [{"visible": visible}, {"title.text": f"{title}: layer {layer}"}]})
    for shape in grid_shapes(grid.grid_size, height, width, color=grid_color):
        fig.add_shape(shape)
    image_axes(fig, height, width, grid)
    margin = {"l": 60, "r": 20, "t": 60, "b": 50}
    fig.update_layout(
        title={"text": f"{title}: layer {labels[0]}", "x": 0.5, "xanchor": "center"},
        sliders=[{"active": 0, "steps": steps, "currentvalue": {"prefix": "layer patched: "},
                  "pad": {"t": 50}, "len": 0.9, "x": 0.05}],
        template="plotly_white", height=size + 110, width=figure_width(size, (height, width), margin, True),
        margin={**margin, "b": 160},  # room for the slider under the image
    )
    return fig

"""Building blocks shared by the figures of `caap_lens.plot` and `caap_lens.report`.

Arrays and images come in (tensors or arrays, PIL images, normalised model input with its mean and
std); plotly traces, grid-line shapes, pixel axes and colour scales go out. The figure modules
(`caap_lens.plot.maps`, ``depth``, ``sweeps``, ``heads``, ``classes``, ``curves``) import from here only.

Example:
    >>> rgb = image_to_rgb(np.zeros((16, 16, 3)))
    >>> trace = patch_heatmap(torch.zeros(2, 2), PatchGrid((2, 2), (8, 8), 1), *rgb.shape[:2])
    >>> rgb.shape, trace.dx
    ((16, 16, 3), 8.0)
"""

from __future__ import annotations

from typing import Any, Literal, Sequence, Union

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Num
from PIL import Image
from torch import Tensor

from caap_lens.grid import PatchGrid
from caap_lens.preprocessing import denormalize

ArrayLike = Union[Tensor, np.ndarray]
PatchMap = Float[ArrayLike, "grid_h grid_w"]
# What `image_to_rgb` reads: a PIL image, or floats or uint8 [H, W], [H, W, C] or [C, H, W], the last
# two also with a leading batch axis of 1. It checks the channel count and the batch itself.
ImageLike = Union[
    Num[ArrayLike, "height width"],
    Num[ArrayLike, "height width channel"],
    Num[ArrayLike, "channel height width"],
    Num[ArrayLike, "1 height width channel"],
    Num[ArrayLike, "1 channel height width"],
    Image.Image,
]

# What a map's colours show: "effect", the map minus the context run's own score (0, white: the patch
# changes nothing), or "raw", the patched runs' scores as computed.
Values = Literal["effect", "raw"]
VALUES = ("effect", "raw")

DIVERGING = "RdBu_r"
SEQUENTIAL = "Viridis"
GRID_LINE_COLOR = "rgba(255, 255, 255, 0.55)"

LINE_COLORS = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880",
               "#ff97ff", "#fecb52"]

__all__ = [
    "ArrayLike", "PatchMap", "ImageLike", "DIVERGING", "SEQUENTIAL", "GRID_LINE_COLOR", "LINE_COLORS",
    "to_numpy", "image_to_rgb", "check_map", "color_range", "grid_shapes", "hover_texts", "patch_heatmap",
    "image_trace", "figure_width", "image_axes", "Values", "VALUES", "check_values", "score_name", "value_label",
    "effect_values",
]


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
        chw = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x.astype(np.float32), -1, 0)))
        x = np.moveaxis(denormalize(chw, mean, std).numpy(), 0, -1)
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


def check_map(patch_map: Any, grid: PatchGrid, name: str = "map") -> np.ndarray:
    """One patch map as float64 ``[grid_h, grid_w]`` (from ``[1, gh, gw]`` or ``[n_patches]`` too).

    Example:
        >>> check_map(torch.arange(4.0), PatchGrid((2, 2), (8, 8), 1)).tolist()
        [[0.0, 1.0], [2.0, 3.0]]
    """
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
    values = check_map(patch_map, grid)
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


def figure_width(height_px: int, image_hw: tuple[int, int], margin: dict[str, int], colorbar: bool) -> int:
    """Figure width that fits the image's aspect ratio in the plot area (plus the colour bar)."""
    plot_h = max(50, height_px - margin["t"] - margin["b"])
    plot_w = plot_h * image_hw[1] / image_hw[0]
    return int(plot_w + margin["l"] + margin["r"] + (100 if colorbar else 0))


def image_axes(fig: go.Figure, height: float, width: float, grid: PatchGrid, row: Any = None, col: Any = None,
               x_anchor: str = "x", titles: bool = True) -> None:
    """Pixel axes of an image of ``height × width``: y down, square pixels, ticks at patch centres."""
    gh, gw = grid.grid_size
    fig.update_xaxes(range=[0, width], showgrid=False, zeroline=False, constrain="domain",
                     title_text="patch column" if titles else None, **_patch_ticks(gw, width), row=row, col=col)
    fig.update_yaxes(range=[height, 0], showgrid=False, zeroline=False, constrain="domain",
                     scaleanchor=x_anchor, scaleratio=1, title_text="patch row" if titles else None,
                     **_patch_ticks(gh, height), row=row, col=col)


def check_values(values: str) -> str:
    """``values`` checked: ``"effect"`` or ``"raw"``.

    Example:
        >>> check_values("raw")
        'raw'
    """
    if values not in VALUES:
        raise ValueError(f"values must be 'effect' (the map minus the context's score) or 'raw', got {values!r}")
    return values


def score_name(settings: Any) -> str:
    """The score's name in a result's settings: a registry name, a callable's name, or ``"score"``.

    Example:
        >>> score_name({"score": "logit"}), score_name({})
        ('logit', 'score')
    """
    score = settings.get("score") if hasattr(settings, "get") else None
    if isinstance(score, str):
        return score
    if score is None:
        return "score"
    return getattr(score, "__name__", None) or type(score).__name__


def value_label(name: str, values: str, relative: bool = False, has_context: bool = True) -> str:
    """What the shown values are, for colour bars and hover: ``"logit − context"`` or ``"logit (raw)"``.

    Args:
        name: The score's name, e.g. ``"logit"``.
        values: ``"effect"`` or ``"raw"``.
        relative: The map was computed with ``relative=True`` (it already is the effect).
        has_context: The context's score is known; without it the values are shown as given (``name``).

    Example:
        >>> value_label("logit", "effect"), value_label("logit", "raw"), value_label("prob", "raw", relative=True)
        ('logit − context', 'logit (raw)', 'prob − context')
    """
    check_values(values)
    if relative:
        return f"{name} − context"
    if not has_context:
        return name
    return f"{name} − context" if values == "effect" else f"{name} (raw)"


def effect_values(maps: Any, context_score: Any, values: str = "effect", relative: bool = False) -> np.ndarray:
    """``maps`` as shown: minus the context's score (``"effect"``) or as given (``"raw"``), float64.

    Args:
        maps: Maps ``[n, ...]`` or one map.
        context_score: The context's score: a number, or one per leading entry of ``maps`` (e.g. per
            layer of a depth profile); None: the maps are shown as given.
        values: ``"effect"`` or ``"raw"``.
        relative: The maps were computed with ``relative=True`` (already the effect: nothing subtracted).

    Example:
        >>> effect_values(np.array([[1.0, 2.0]]), 1.5).tolist(), effect_values(np.array([1.0]), 1.5, "raw").tolist()
        ([[-0.5, 0.5]], [1.0])
    """
    v = to_numpy(maps).astype(np.float64)
    if check_values(values) == "raw" or relative or context_score is None:
        return v
    c = to_numpy(context_score).astype(np.float64)
    return v - c.reshape(*c.shape, *([1] * (v.ndim - c.ndim)))

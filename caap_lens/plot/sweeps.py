"""Window sweeps: a per-window score as a start × stop table, and the maps of chosen windows.

* `window_sweep_heatmap` — one cell per window ``[start, stop)``: rows are the first patched layer,
  columns the stop (exclusive), NaN (blank) where the sweep has no such window. The score per window
  is anything you measure per window — a faithfulness score such as a deletion AUC, the localisation
  of its map — or, by default, the *peak patch effect*: the map's maximum minus the context's score.
* `window_sweep_view` — that heatmap beside the maps of a few windows over the image, the chosen
  windows marked on the heatmap; all maps share one colour scale so they compare. The maps are read
  against "no effect" by default (``values="effect"``: each window's map minus its context score,
  white = the patch changes nothing); ``values="raw"`` shows the patched scores as computed.

Per-window scores are given as a tensor/array ``[n_windows]`` (or ``[n_windows, batch]``: the mean
over images, or one image with ``image_index``), in the order of ``sweep.windows``, or as a callable
``f(maps, window) -> value(s)`` with ``maps = sweep.maps[i]`` ``[batch, grid_h, grid_w]``.

Example:
    >>> from caap_lens import window_sweep
    >>> from caap_lens.metrics import deletion_curve
    >>> sweep = window_sweep(model, x)
    >>> window_sweep_heatmap(sweep, model.cfg.n_layers).show()  # doctest: +SKIP
    >>> auc = torch.stack([deletion_curve(model, x, m, steps=4).auc for m in sweep.maps])  # [n_windows, batch]
    >>> fig = window_sweep_view(sweep, x[0], model.grid, auc, [(1, 3), (0, 4)],
    ...                   mean=model.cfg.image_mean, std=model.cfg.image_std, score_name="deletion AUC")
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from caap_lens.grid import PatchGrid
from caap_lens.plot.common import (
    GRID_LINE_COLOR,
    ImageLike,
    check_map,
    check_values,
    color_range,
    effect_values,
    grid_shapes,
    image_axes,
    image_to_rgb,
    image_trace,
    patch_heatmap,
    to_numpy,
    value_label,
)
from caap_lens.plot.common import score_name as _settings_score  # window_sweep_view's score_name= is the colour bar

Window = tuple[int, int]
WindowScores = Union[Any, Callable[[Any, Window], Any], None]
HIGHLIGHT_COLOR = "#111111"

__all__ = ["window_sweep_heatmap", "window_sweep_view", "window_scores", "window_table"]


def _windows(windows: Sequence[Any]) -> list[Window]:
    out = []
    for w in windows:
        start, stop = (int(v) for v in w)
        if not 0 <= start < stop:
            raise ValueError(f"a window is (start, stop) with 0 <= start < stop, got {tuple(w)}")
        out.append((start, stop))
    return out


def _reduce(values: np.ndarray, n_windows: int, image_index: int | None) -> np.ndarray:
    if values.ndim == 0:
        values = values.reshape(1)
    if values.shape[0] != n_windows:
        raise ValueError(f"{values.shape[0]} scores for {n_windows} windows")
    values = values.reshape(n_windows, -1)
    if image_index is not None and values.shape[1] > 1:
        if not -values.shape[1] <= image_index < values.shape[1]:
            raise IndexError(f"image_index {image_index} out of range for {values.shape[1]} images")
        return values[:, image_index]
    if values.shape[1] == 1:
        return values[:, 0]
    with np.errstate(all="ignore"):
        return np.nanmean(values, axis=1)


def window_scores(sweep: Any, scores: WindowScores = None, image_index: int | None = None) -> tuple[np.ndarray, str]:
    """One score per window of a sweep, and a name for it.

    Args:
        sweep: A `caap_lens.sweeps.WindowSweepResult`, or ``(values, windows)``.
        scores: ``[n_windows]`` or ``[n_windows, batch]`` values, or ``f(maps, window)`` called with
            ``sweep.maps[i]`` ``[batch, ...]`` and returning one value or one per image; default (for
            a sweep): the peak patch effect, ``max(map) - context_score`` per image.
        image_index: Score one image instead of the mean over images.

    Returns:
        ``(values [n_windows] float64, name)``; the name is ``""`` unless the default was used.

    Example:
        >>> window_scores(([0.1, 0.5], [(0, 1), (0, 2)]))[0].tolist()
        [0.1, 0.5]
    """
    if isinstance(sweep, tuple):
        if scores is not None:
            raise ValueError("give the scores either in the (values, windows) tuple or as scores=, not both")
        values, windows = sweep
        return _reduce(to_numpy(values).astype(np.float64), len(windows), image_index), ""
    maps, windows = sweep.maps, sweep.windows
    name = ""
    if scores is None:
        peak = to_numpy(maps).astype(np.float64).reshape(len(windows), maps.shape[1], -1).max(axis=2)
        context = 0.0 if sweep.settings.get("relative") else to_numpy(sweep.context_score).astype(np.float64)
        values, name = peak - context, "peak patch effect"
    elif callable(scores):
        values = np.stack([to_numpy(scores(maps[i], w)).astype(np.float64).reshape(-1) for i, w in enumerate(windows)])
    else:
        values = to_numpy(scores).astype(np.float64)
    return _reduce(values, len(windows), image_index), name


def window_table(values: Any, windows: Sequence[Any], n_layers: int | None = None) -> np.ndarray:
    """Per-window values as a ``[n_layers, n_layers]`` table: row ``start``, column ``stop - 1``.

    Example:
        >>> window_table([1.0, 2.0], [(0, 1), (1, 2)]).tolist()
        [[1.0, nan], [nan, 2.0]]
    """
    windows = _windows(windows)
    v = to_numpy(values).astype(np.float64).reshape(-1)
    if v.size != len(windows):
        raise ValueError(f"{v.size} values for {len(windows)} windows")
    n = max(stop for _, stop in windows) if n_layers is None else int(n_layers)
    if any(stop > n for _, stop in windows):
        raise ValueError(f"a window stops after n_layers={n}: {max(stop for _, stop in windows)}")
    table = np.full((n, n), np.nan)
    for (start, stop), value in zip(windows, v):
        table[start, stop - 1] = value
    return table


def _heatmap_trace(table: np.ndarray, score_name: str, colors: dict[str, Any], **kwargs: Any) -> go.Heatmap:
    n = table.shape[0]
    text = [[
        f"window [{a}, {b + 1}): layers {a}–{b}<br>{score_name} {table[a, b]:.4g}" if np.isfinite(table[a, b]) else ""
        for b in range(n)] for a in range(n)]
    return go.Heatmap(
        z=table, x=list(range(1, n + 1)), y=list(range(n)), text=text, hovertemplate="%{text}<extra></extra>",
        hoverongaps=False, name=score_name, **kwargs,
    )


def _highlight_trace(windows: Sequence[Window], labels: Sequence[str] | None = None) -> go.Scatter:
    return go.Scatter(
        x=[stop for _, stop in windows], y=[start for start, _ in windows],
        mode="markers+text" if labels else "markers", text=list(labels) if labels else None,
        textposition="middle center", textfont={"color": HIGHLIGHT_COLOR, "size": 11},
        marker={"symbol": "square-open", "size": 16, "color": HIGHLIGHT_COLOR, "line": {"width": 2}},
        hovertemplate="window [%{y}, %{x})<extra>shown</extra>", showlegend=False, name="shown windows",
    )


def _style_window_axes(fig: go.Figure, n: int, row: Any = None, col: Any = None) -> None:
    step = max(1, int(np.ceil(n / 16)))
    fig.update_xaxes(title_text="window stop (exclusive)", tickmode="array", tickvals=list(range(1, n + 1, step)),
                     range=[0.5, n + 0.5], showgrid=False, zeroline=False, row=row, col=col)
    fig.update_yaxes(title_text="window start (first layer patched)", tickmode="array",
                     tickvals=list(range(0, n, step)), range=[n - 0.5, -0.5], showgrid=False, zeroline=False,
                     row=row, col=col)


def window_sweep_heatmap(
    sweep: Any,
    n_layers: int | None = None,
    scores: WindowScores = None,
    *,
    image_index: int | None = None,
    score_name: str | None = None,
    highlight: Sequence[Window] = (),
    colorscale: Any = None,
    title: str = "Score per window",
    height: int = 460,
    width: int | None = None,
) -> go.Figure:
    """A start × stop heatmap of one score per window ``[start, stop)``.

    Args:
        sweep: A `caap_lens.sweeps.WindowSweepResult` (``window_sweep(model, x)``), or
            ``(values [n_windows], windows)``.
        n_layers: Size of the table (``model.cfg.n_layers``); default: the largest stop.
        scores: The score per window for a sweep (see `window_scores`); default the peak patch effect.
        image_index: Show one image's scores instead of the mean over images.
        score_name: Colour-bar title and hover label (default ``"score"``, or the default score's name).
        highlight: Windows to mark with a square outline (e.g. the default window).
        colorscale: Plotly colour scale; default diverging about 0 when the scores have both signs.
        title: Figure title.
        height: Figure height in pixels.
        width: Figure width in pixels (default: square plot area plus the colour bar).

    Returns:
        A figure with one ``heatmap`` trace ``[n_layers, n_layers]`` (rows: start ``0..n-1``, columns:
        stop ``1..n``; NaN outside the sweep), plus one ``scatter`` trace when ``highlight`` is given.

    Example:
        >>> fig = window_sweep_heatmap(([0.2, 0.9, 0.4], [(0, 1), (0, 2), (1, 2)]), 2, score_name="AUC")
        >>> [t.type for t in fig.data], fig.data[0].text[0][1]
        (['heatmap'], 'window [0, 2): layers 0–1<br>AUC 0.9')
    """
    windows = _windows(sweep[1] if isinstance(sweep, tuple) else sweep.windows)
    values, default_name = window_scores(sweep, scores, image_index)
    name = score_name or default_name or "score"
    table = window_table(values, windows, n_layers)
    n = table.shape[0]
    colors = color_range(table, colorscale)
    fig = go.Figure(_heatmap_trace(table, name, colors, colorscale=colors["colorscale"], zmin=colors["zmin"],
                                   zmax=colors["zmax"], colorbar={"title": {"text": name}, "thickness": 14}))
    if highlight:
        fig.add_trace(_highlight_trace(_windows(highlight)))
    _style_window_axes(fig, n)
    fig.update_yaxes(scaleanchor="x", scaleratio=1, constrain="domain")
    fig.update_xaxes(constrain="domain")
    margin = {"l": 70, "r": 20, "t": 60, "b": 60}
    plot = height - margin["t"] - margin["b"]
    fig.update_layout(title={"text": title, "x": 0.5, "xanchor": "center"}, template="plotly_white", height=height,
                      width=width or plot + margin["l"] + margin["r"] + 110, margin=margin)
    return fig


def _default_windows(windows: list[Window], values: np.ndarray, n_layers: int) -> list[Window]:
    chosen = []
    finite = np.where(np.isfinite(values))[0]
    if finite.size:
        chosen.append(windows[int(finite[np.argmax(values[finite])])])
    middle = (n_layers // 3, 2 * n_layers // 3)
    if middle in windows and middle not in chosen and middle[0] < middle[1]:
        chosen.append(middle)
    if (0, n_layers) in windows and (0, n_layers) not in chosen:
        chosen.append((0, n_layers))
    return chosen


def window_sweep_view(
    sweep: Any,
    image: ImageLike,
    grid: PatchGrid,
    score_per_window: WindowScores = None,
    windows_to_show: Sequence[Window] | None = None,
    *,
    n_layers: int | None = None,
    image_index: int = 0,
    values: str = "effect",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    score_name: str | None = None,
    value_name: str | None = None,
    score_colorscale: Any = None,
    colorscale: Any = None,
    opacity: float = 0.55,
    grid_lines: bool = True,
    grid_color: str = GRID_LINE_COLOR,
    title: str | None = "Window sweep",
    size: int = 360,
    max_width: int | None = 1400,
) -> go.Figure:
    """The per-window score heatmap beside the maps of chosen windows over one image.

    The shown windows are marked on the heatmap with their letter (A, B, ...), which also heads their
    map. The maps share one colour scale (their own colour bar, right), the heatmap has another.

    Args:
        sweep: A `caap_lens.sweeps.WindowSweepResult` with patch maps ``[n_windows, batch, gh, gw]``.
        image: The image of ``image_index`` (see `caap_lens.plot.common.image_to_rgb`), e.g. ``x[0]``.
        grid: The model's `PatchGrid`.
        score_per_window: See `window_scores`; default the peak patch effect. Scores of
            ``[n_windows, batch]`` are taken for ``image_index``.
        windows_to_show: Windows whose maps are drawn; default: the best-scoring window, the middle
            third ``(n // 3, 2n // 3)`` and the whole network ``(0, n)``, those the sweep has.
        n_layers: Size of the table (``model.cfg.n_layers``); default: the largest stop.
        image_index: Which image of the sweep to show.
        values: ``"effect"``: each map minus its window's context score (white = no effect); ``"raw"``:
            the patched scores as computed.
        mean: Normalisation mean to undo when ``image`` is model input.
        std: Normalisation std to undo.
        score_name: Title of the score colour bar.
        value_name: The maps' score name, e.g. ``"logit"`` (default: the sweep's score); their colour bar
            and hover say ``"logit − context"`` or ``"logit (raw)"``.
        score_colorscale: Colour scale of the heatmap.
        colorscale: Colour scale of the maps; default diverging about 0 for effects and two-signed raw maps.
        opacity: Opacity of the maps over the image.
        grid_lines: Draw the patch grid over each map.
        grid_color: Colour of the grid lines.
        title: Figure title.
        size: Height of the plot row in pixels, at most; smaller when the row would be wider than
            ``max_width``.
        max_width: Widest figure in pixels (default 1400, a laptop window); None for no limit.

    Returns:
        A figure with ``1 + len(windows_to_show)`` subplots: a ``heatmap`` and a ``scatter`` (the marks)
        in the first, an ``image`` and a ``heatmap`` in each other; heatmap on ``coloraxis``, maps on
        ``coloraxis2``.

    Example:
        >>> from caap_lens import window_sweep
        >>> sweep = window_sweep(model, x)
        >>> fig = window_sweep_view(sweep, x[0], model.grid, windows_to_show=[(1, 3), (0, 4)],
        ...                         mean=model.cfg.image_mean, std=model.cfg.image_std)
    """
    if isinstance(sweep, tuple) or not hasattr(sweep, "maps"):
        raise TypeError("window_sweep_view needs a WindowSweepResult (it draws the sweep's maps)")
    windows = _windows(sweep.windows)
    n_images = sweep.maps.shape[1]
    if not -n_images <= image_index < n_images:
        raise IndexError(f"image_index {image_index} out of range for {n_images} images")
    check_values(values)
    per_window, default_name = window_scores(sweep, score_per_window, image_index)
    name = score_name or default_name or "score"
    table = window_table(per_window, windows, n_layers)
    n = table.shape[0]
    shown = _windows(windows_to_show) if windows_to_show is not None else _default_windows(windows, per_window, n)
    for w in shown:
        if w not in windows:
            raise KeyError(f"window {w} is not in this sweep")
    if not shown:
        raise ValueError("no window to show")
    letters = [chr(ord("A") + i) if i < 26 else str(i) for i in range(len(shown))]
    relative = bool(sweep.settings.get("relative"))
    context = to_numpy(sweep.context_score).astype(np.float64).reshape(len(windows), -1)[:, image_index]
    maps = np.stack([check_map(to_numpy(sweep.maps[windows.index(w)][image_index]), grid, f"map of {w}")
                     for w in shown])
    maps = effect_values(maps, np.array([context[windows.index(w)] for w in shown]), values, relative)
    value_name = value_label(value_name or _settings_score(sweep.settings), values, relative)
    rgb = image_to_rgb(image, mean, std)
    height, width = rgb.shape[:2]

    k = len(shown)
    if max_width is not None:  # the heatmap takes 1.35 map widths, plus 120 px of margins and colour bar
        size = max(120, min(size, int((max_width - 120) / (1.35 + k))))
    titles = [f"{name} per window"] + [f"{letter}: window [{a}, {b})" for letter, (a, b) in zip(letters, shown)]
    fig = make_subplots(rows=1, cols=1 + k, subplot_titles=titles, horizontal_spacing=0.05,
                        column_widths=[1.35] + [1.0] * k)
    score_colors = color_range(table, score_colorscale)
    map_colors = color_range(maps, colorscale, symmetric=True if values == "effect" or relative else None)
    fig.add_trace(_heatmap_trace(table, name, score_colors, coloraxis="coloraxis"), row=1, col=1)
    fig.add_trace(_highlight_trace(shown, letters), row=1, col=1)
    _style_window_axes(fig, n, row=1, col=1)
    fig.update_yaxes(scaleanchor="x", scaleratio=1, constrain="domain", row=1, col=1)
    fig.update_xaxes(constrain="domain", row=1, col=1)
    for j, (w, m) in enumerate(zip(shown, maps)):
        col = j + 2
        fig.add_trace(image_trace(rgb), row=1, col=col)
        fig.add_trace(patch_heatmap(m, grid, height, width, opacity=opacity, value_name=value_name,
                                    name=f"window [{w[0]}, {w[1]})", coloraxis="coloraxis2"), row=1, col=col)
        if grid_lines:
            for shape in grid_shapes(grid.grid_size, height, width, f"x{col}", f"y{col}", grid_color):
                fig.add_shape(shape)
        image_axes(fig, height, width, grid, row=1, col=col, x_anchor=f"x{col}", titles=False)
        fig.update_xaxes(showticklabels=False, row=1, col=col)
        fig.update_yaxes(showticklabels=False, row=1, col=col)
    first = fig.layout.xaxis.domain
    fig.update_layout(
        coloraxis={"colorscale": score_colors["colorscale"], "cmin": score_colors["zmin"],
                   "cmax": score_colors["zmax"],
                   "colorbar": {"title": {"text": name, "side": "top"}, "orientation": "h", "thickness": 10,
                                "x": (first[0] + first[1]) / 2, "xanchor": "center", "len": first[1] - first[0],
                                "y": -0.2, "yanchor": "top"}},
        coloraxis2={"colorscale": map_colors["colorscale"], "cmin": map_colors["zmin"], "cmax": map_colors["zmax"],
                    "colorbar": {"title": {"text": value_name}, "thickness": 14, "x": 1.01}},
        title={"text": title, "x": 0.5, "xanchor": "center"} if title else None,
        template="plotly_white", height=size + 170,
        width=int(size * 1.35 + size * k + 120), margin={"l": 70, "r": 90, "t": 90 if title else 60, "b": 110},
    )
    return fig

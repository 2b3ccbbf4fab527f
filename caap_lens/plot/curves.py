"""Perturbation curves of several methods on one plot: `metric_curves`.

Takes the `caap_lens.metrics.curves.Curve` of each method (``deletion_curve``, ``insertion_curve``,
``perturbation_curve``): ``x [points]``, ``y [batch, points]``, ``auc [batch]``. It draws either the
mean over images with a band (a confidence interval of the mean, or ± one standard deviation), or the
curve of one image; each method's AUC — mean with its confidence interval, or the image's own — is in
its legend entry.

Example:
    >>> from caap_lens.metrics import deletion_curve
    >>> curves = {m: deletion_curve(model, x, attribute(m, model, x).map) for m in ("caap", "rollout")}
    >>> metric_curves(curves).show()  # doctest: +SKIP
    >>> fig = metric_curves(curves, image_index=1)
    >>> fig.show()  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from caap_lens.plot.common import LINE_COLORS, to_numpy
from caap_lens.stats import mean_ci, t_quantile

Band = Literal["ci", "std", "none"]

KIND_TEXT = {
    "deletion": ("Deletion", "removed, most important first"),
    "insertion": ("Insertion", "inserted, most important first"),
    "positive": ("Positive perturbation", "removed, most important first"),
    "negative": ("Negative perturbation", "removed, least important first"),
}
SCORE_TEXT = {
    "prob": "target-class probability (softmax)",
    "logit": "target-class logit",
    "log_prob": "target-class log-probability",
    "margin": "target-class margin",
    "accuracy": "top-1 is the target",
}

__all__ = ["metric_curves", "band_bounds"]


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r}, {g}, {b}, {alpha})"


def band_bounds(y: Any, band: Band = "ci", level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over images per point and the band around it: ``(mean, lower, upper)``, each ``[points]``.

    * ``"ci"`` — Student's t confidence interval of the mean at ``level`` (NaN for one image);
    * ``"std"`` — mean ± one standard deviation (``ddof=1``; NaN for one image);
    * ``"none"`` — lower = upper = mean.

    Example:
        >>> m, lo, hi = band_bounds(np.array([[0.0, 1.0], [2.0, 3.0]]), "std")
        >>> m.tolist(), lo.round(3).tolist(), hi.round(3).tolist()
        ([1.0, 2.0], [-0.414, 0.586], [2.414, 3.414])
    """
    y = to_numpy(y).astype(np.float64)
    if y.ndim == 1:
        y = y[None]
    mean = y.mean(axis=0)
    n = y.shape[0]
    if band == "none":
        return mean, mean.copy(), mean.copy()
    if band not in ("ci", "std"):
        raise ValueError(f"band must be 'ci', 'std' or 'none', got {band!r}")
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan.copy()
    sd = y.std(axis=0, ddof=1)
    half = sd if band == "std" else t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")


def _axis_titles(curves: Sequence[Any]) -> tuple[str, str, str]:
    kinds = {c.settings.get("kind") for c in curves}
    units = {c.settings.get("unit", "unit") for c in curves}
    scores = {c.settings.get("score") for c in curves}
    unit = units.pop() if len(units) == 1 else "unit"
    if len(kinds) == 1 and (kind := kinds.pop()) in KIND_TEXT:
        name, how = KIND_TEXT[kind]
        x_title = f"fraction of {_plural(unit)} {how}"
    else:
        name, x_title = "Perturbation", f"fraction of {_plural(unit)}"
    score = scores.pop() if len(scores) == 1 else None
    y_title = SCORE_TEXT.get(score, str(score)) if score is not None else "score"
    return name, x_title, y_title


def metric_curves(
    curves: Mapping[str, Any],
    image_index: int | None = None,
    *,
    band: Band = "ci",
    level: float = 0.95,
    colors: Sequence[str] | None = None,
    title: str | None = None,
    x_title: str | None = None,
    y_title: str | None = None,
    height: int = 420,
    width: int | None = 640,
) -> go.Figure:
    """Deletion / insertion / perturbation curves of several methods, with their AUC in the legend.

    Args:
        curves: Method name → `caap_lens.metrics.curves.Curve` (all of one kind, e.g. deletion).
        image_index: Draw this image's curves; default: the mean over images with a band.
        band: Around the mean: ``"ci"`` (t confidence interval of the mean at ``level``), ``"std"``
            (± one standard deviation) or ``"none"``. No band is drawn for one image.
        level: Coverage of the confidence intervals (band and AUC).
        colors: One colour per method (hex ``#rrggbb``); default plotly's qualitative colours.
        title: Figure title; default from the curves' kind, e.g. ``"Deletion curves (mean of 16 images)"``.
        x_title: X-axis title; default from the kind and unit, e.g. ``"fraction of patches removed, ..."``.
        y_title: Y-axis title; default from the score, e.g. ``"target-class probability"``.
        height: Figure height in pixels.
        width: Figure width in pixels (``None``: the container's).

    Returns:
        A figure with, per method, one ``scatter`` line (legend: ``"name — AUC mean [lo, hi]"``, or the
        image's AUC) preceded by one filled ``scatter`` band (no legend entry) when a band is drawn.

    Example:
        >>> from caap_lens.metrics.curves import Curve
        >>> import torch
        >>> c = Curve(x=torch.linspace(0, 1, 3), y=torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.3, 0.0]]),
        ...           auc=torch.tensor([0.5, 0.4]), targets=torch.tensor([0, 1]), settings={"kind": "deletion"})
        >>> fig = metric_curves({"caap": c}, band="std")
        >>> [t.type for t in fig.data], fig.data[1].name
        (['scatter', 'scatter'], 'caap — AUC 0.450 [-0.185, 1.085]')
    """
    if not curves:
        raise ValueError("no curves given")
    names = list(curves)
    palette = list(colors) if colors is not None else LINE_COLORS
    batch = {int(curves[n].y.shape[0]) for n in names}
    if image_index is not None:
        for n in names:
            b = int(curves[n].y.shape[0])
            if not -b <= image_index < b:
                raise IndexError(f"image_index {image_index} out of range for {b} images of {n!r}")
    kind_name, default_x, default_y = _axis_titles([curves[n] for n in names])
    fig = go.Figure()
    for k, name in enumerate(names):
        curve = curves[name]
        color = palette[k % len(palette)]
        x = to_numpy(curve.x).astype(np.float64)
        y = to_numpy(curve.y).astype(np.float64)
        auc = to_numpy(curve.auc).astype(np.float64)
        if y.ndim == 1:
            y, auc = y[None], auc.reshape(1)
        if image_index is not None:
            line, n_images = y[image_index], 1
            label = f"{name} — AUC {auc[image_index]:.3f}"
            lower = upper = None
        else:
            n_images = y.shape[0]
            line, lower, upper = band_bounds(y, band, level)
            if n_images > 1:
                mean, lo, hi = mean_ci(auc, level=level)
                label = f"{name} — AUC {mean:.3f} [{lo:.3f}, {hi:.3f}]"
            else:
                label = f"{name} — AUC {auc[0]:.3f}"
            if band == "none" or n_images < 2:
                lower = upper = None
        if lower is not None and upper is not None:
            fig.add_trace(go.Scatter(
                x=np.r_[x, x[::-1]], y=np.r_[upper, lower[::-1]], fill="toself", fillcolor=_rgba(color, 0.18),
                line={"width": 0, "color": _rgba(color, 0.0)}, hoverinfo="skip", showlegend=False,
                legendgroup=name, name=f"{name} band",
            ))
        what = f"image {image_index}" if image_index is not None else f"mean of {n_images} images"
        fig.add_trace(go.Scatter(
            x=x, y=line, mode="lines+markers" if len(x) <= 25 else "lines", name=label, legendgroup=name,
            line={"color": color, "width": 2}, marker={"size": 4},
            hovertemplate=f"{name} ({what})<br>x %{{x:.3f}}<br>y %{{y:.4g}}<extra></extra>",
        ))
    if title is None:
        if image_index is not None:
            title = f"{kind_name} curves: image {image_index}"
        else:
            n = batch.pop() if len(batch) == 1 else None
            title = f"{kind_name} curves" + (f" (mean of {n} images)" if n and n > 1 else "")
    fig.update_xaxes(title_text=x_title or default_x, range=[-0.02, 1.02], zeroline=False)
    fig.update_yaxes(title_text=y_title or default_y, zeroline=False)
    fig.update_layout(title={"text": title, "x": 0.5, "xanchor": "center"}, template="plotly_white", height=height,
                      width=width, hovermode="closest", margin={"l": 60, "r": 20, "t": 60, "b": 50},
                      legend={"font": {"size": 11}, "x": 0.99, "xanchor": "right", "y": 0.99, "yanchor": "top",
                              "bgcolor": "rgba(255, 255, 255, 0.7)"})
    return fig

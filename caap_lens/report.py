"""A self-contained HTML report of one CAAP attribution, plus the raw map as files.

A report is made in three steps, each usable on its own:

1. `build_record` — everything the report shows, as numbers and strings: the input image, the map,
   the settings, the prediction and top classes, the depth profile and the model's description
   (a `ReportRecord`; ``record.to_json()`` is ``map.json``).
2. `build_figures` — the plotly figures of a record.
3. `render_html` — one self-contained HTML page from a record and its figures.

`save_report` writes a record's files; `write_report` does all of it. For an image named ``<name>``
(its file stem, made file-system safe) they write::

    <out_dir>/plotly.min.js        plotly.js, written once per output folder and shared by its reports
    <out_dir>/<stem>/report.html   one HTML page reading ../plotly.min.js: opens offline (with
                                   plotly_js="inline" plotly.js is embedded instead: one 5 MB file)
    <out_dir>/<stem>/map.npy       the CAAP map as computed, float32 [grid_h, grid_w]
    <out_dir>/<stem>/map.json      the map and its effect as nested lists, grid, settings, target,
                                   prediction, model and weights, top patches, scores, timing, profile
    <out_dir>/<stem>/profile.npy   the depth profile, float32 [n_layers, grid_h, grid_w] (if given;
                                   NaN at patches left out of a partial profile)

`write_index` writes ``<out_dir>/index.html`` (and ``index.json``): one row per report in the folder,
with its model, weights and prediction, and the images that failed.

**Values shown.** By default (``values="effect"``) the map, the top-patch table and the depth
profile show each patch's *effect*: the patched score minus the context run's own score
(``result.effect``), on a colour scale centred at 0, so white is "no effect", red raises the
target's score and blue lowers it. ``values="raw"`` shows the patched scores as computed, labelled
"(raw)"; ``map.npy`` and ``map.json["map"]`` always hold the map as computed, ``map.json["effect"]``
the effect.

**Weights.** The model's origin (``cfg.weights_kind`` and ``cfg.weights``, e.g. random init, a
pretrained tag, a checkpoint file) is shown in the header and stored in ``map.json``; a report of
random weights with class names carries a visible note that its predictions mean nothing.

The report shows the settings (window, hook, context, score, target, timing), the input image, the
map over the image with the patch grid, the model's top classes (scored by the model's
``cfg.output_activation``), a table of the top patches, and the depth profile: the top patches'
effect per layer (lines and a heatmap) and, for a profile of every patch, each layer's map behind a
slider.

Example:
    >>> from caap_lens import depth_profile
    >>> x = model.preprocess(image)
    >>> result = caap(model, x)
    >>> top = [p["patch"] for p in result.top_patches(8)]
    >>> profile = depth_profile(model, x, result.targets, patches=top)
    >>> write_report("out", model=model, image_tensor=x, result=result, profile=profile,
    ...              image_name="cat.png")
    PosixPath('out/cat/report.html')
    >>> record = build_record(model, x, result, profile, image_name="cat.png")
    >>> page = render_html(record, build_figures(record))
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float, UInt8
from torch import Tensor

import caap_lens
from caap_lens.attribution.result import CAAPResult
from caap_lens.config import OutputActivation
from caap_lens.grid import PatchGrid
from caap_lens.model.protocol import HookedViTLike
from caap_lens.model.sizing import at_image_size
from caap_lens.plot.classes import AXIS_TITLES, class_label, top_classes, top_classes_bar
from caap_lens.plot.common import (
    check_values,
    figure_width,
    image_axes,
    image_to_rgb,
    image_trace,
    score_name,
    to_numpy,
    value_label,
)
from caap_lens.plot.depth import depth_heatmap, depth_profile_lines, depth_slider
from caap_lens.plot.maps import map_overlay

REPORT_FILE = "report.html"
MAP_FILE = "map.npy"
JSON_FILE = "map.json"
PROFILE_FILE = "profile.npy"
PLOTLY_FILE = "plotly.min.js"  # one per output folder, shared by its reports
INDEX_FILE = "index.html"
INDEX_JSON = "index.json"
FORMAT = "caap_lens.report/2"
HEADLESS_TARGET = "own embedding (self-similarity)"
RANDOM_WEIGHTS_NOTE = ("weights are random (no pretrained weights loaded): the class names are the label set's "
                       "(e.g. ImageNet's) but the predictions and the map mean nothing")

__all__ = ["ReportRecord", "ReportProfile", "build_record", "build_figures", "render_html", "save_report",
           "write_report", "report_dir", "weights_notes", "index_entry", "write_index",
           "REPORT_FILE", "MAP_FILE", "JSON_FILE", "PROFILE_FILE", "PLOTLY_FILE", "INDEX_FILE"]


def report_dir(out_dir: str | Path, image_name: str) -> Path:
    """``<out_dir>/<stem>``: the image name's stem with anything but ``[A-Za-z0-9._-]`` replaced by ``_``.

    Example:
        >>> report_dir("out", "photos/my cat.png").as_posix()
        'out/my_cat'
    """
    stem = Path(str(image_name)).stem or str(image_name)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    return Path(out_dir) / stem


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        value = to_numpy(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "items"):  # dicts and the run's CAAPSettings (a mapping)
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return None if isinstance(value, float) and value != value else value


# ------------------------------------------------------------------------------------ record
@dataclass
class ReportProfile:
    """One image's depth profile as the report shows it.

    Attributes:
        maps: ``[n_layers, grid_h, grid_w]``, NaN at the patches a partial profile did not run.
        windows: The ``(l, l + 1)`` window of each map.
        patches: The patches run, best first by the CAAP map; None when every patch was run.
        timing: The profile's timing.
        context_score: The context run's score of each layer's window ``[n_layers]``.
        relative: The maps were computed with ``relative=True`` (they already are effects).
    """

    maps: Float[np.ndarray, "n_layers grid_h grid_w"]
    windows: list[tuple[int, int]]
    patches: list[int] | None
    timing: dict[str, float]
    context_score: list[float] = field(default_factory=list)
    relative: bool = False

    @property
    def effect(self) -> Float[np.ndarray, "n_layers grid_h grid_w"]:
        """Each layer's map minus that layer's context score (0: the patch changes nothing)."""
        if self.relative or not self.context_score:
            return self.maps
        return self.maps - np.asarray(self.context_score, np.float32)[:, None, None]

    @property
    def layers(self) -> list[int]:
        """The layer patched in each map."""
        return [int(w[0]) for w in self.windows]


@dataclass
class ReportRecord:
    """Everything one report shows, as numbers and strings (no model, no tensors).

    Attributes:
        image_name: The image's name (a file name).
        image: The model input, denormalised: uint8 ``[height, width, 3]``.
        map: The CAAP map, float32 ``[grid_h, grid_w]``.
        grid: The model's patch grid.
        model: The model's description: source, family, n_layers, d_model, image_size, n_classes.
        settings: The map's settings (window, hook, context, score, ...), JSON-ready.
        target: ``{"index", "name"}`` of the explained class.
        activation: How the outputs became the class scores shown (the model's ``cfg.output_activation``).
        output: The model's output on the image ``[n_out]``, or None for a headless model.
        class_names: The model's class names, if any.
        top_classes: The top classes of ``output``: index, name, score.
        top_patches: The top patches of the map: patch, row, col, value.
        ranked_patches: Every patch, best first by the map.
        source_score: The target's score on the source image.
        context_score: The target's score on the neutral context.
        timing: The map's timing (seconds, rows, ...).
        extra_timing: More timings shown and stored, e.g. ``{"depth_profile": 1.2}``.
        profile: The depth profile, or None.
        command: The command line that produced the result.
        created: When the record was made (ISO 8601).
        version: caap_lens's version.
        k: How many top classes and top patches are shown.
        values: What the report shows: ``"effect"`` (map minus the context's score) or ``"raw"``.
        notes: Warnings shown at the top of the report and stored in ``map.json`` (e.g. random weights).
    """

    image_name: str
    image: UInt8[np.ndarray, "height width 3"]
    map: Float[np.ndarray, "grid_h grid_w"]
    grid: PatchGrid
    model: dict[str, Any]
    settings: dict[str, Any]
    target: dict[str, Any]
    activation: OutputActivation
    output: Float[np.ndarray, " n_out"] | None
    class_names: tuple[str, ...] | None
    top_classes: list[dict[str, Any]]
    top_patches: list[dict[str, Any]]
    ranked_patches: list[int]
    source_score: float
    context_score: float
    timing: dict[str, float]
    extra_timing: dict[str, float] = field(default_factory=dict)
    profile: ReportProfile | None = None
    command: str | None = None
    created: str = ""
    version: str = caap_lens.__version__
    k: int = 5
    values: str = "effect"
    notes: list[str] = field(default_factory=list)

    @property
    def has_classes(self) -> bool:
        """Whether the model has a classifier (else it is headless, explained by self-similarity)."""
        return self.output is not None

    @property
    def relative(self) -> bool:
        """Whether the map was computed with ``relative=True`` (it already is the effect)."""
        return bool(self.settings.get("relative"))

    @property
    def effect(self) -> Float[np.ndarray, "grid_h grid_w"]:
        """The map minus the context's score: 0 means the patch changes nothing."""
        return self.map if self.relative else self.map - np.float32(self.context_score)

    @property
    def shown(self) -> Float[np.ndarray, "grid_h grid_w"]:
        """The map as the report shows it: the effect, or the raw map with ``values="raw"``."""
        return self.effect if self.values == "effect" else self.map

    @property
    def score_name(self) -> str:
        """The score's name, e.g. ``"logit"``."""
        return str(self.settings.get("score", "score"))

    @property
    def value_name(self) -> str:
        """What the shown values are: ``"logit − context"`` (effects) or ``"logit (raw)"``."""
        return value_label(self.score_name, self.values, self.relative)

    @property
    def weights(self) -> str:
        """The weights' origin in words (``cfg.weights``, else its kind, else ``"not recorded"``)."""
        return self.model.get("weights") or self.model.get("weights_kind") or "not recorded"

    def to_json(self) -> dict[str, Any]:
        """The content of ``map.json`` (strict JSON: NaN written as null)."""
        grid = self.grid
        prof = self.profile
        return {
            "format": FORMAT,
            "image": self.image_name,
            "created": self.created,
            "caap_lens_version": self.version,
            "command": self.command,
            "model": self.model,
            "grid": {"grid_size": list(grid.grid_size), "patch_size": list(grid.patch_size),
                     "n_prefix_tokens": grid.n_prefix_tokens, "image_size": list(grid.image_size),
                     "order": "row-major: patch = row * grid_w + col, token = n_prefix_tokens + patch"},
            "settings": self.settings,
            "values": self.values,
            "notes": self.notes,
            "target": self.target,
            "prediction": {"activation": self.activation, "top": self.top_classes},
            "source_score": self.source_score,
            "context_score": self.context_score,
            "map": self.map.tolist(),
            "effect": self.effect.tolist(),
            "top_patches": self.top_patches,
            "timing": {**self.timing, **self.extra_timing},
            "depth_profile": None if prof is None else {
                "layers": prof.layers, "windows": [list(w) for w in prof.windows], "patches": prof.patches,
                "maps": _nan_to_none(prof.maps.tolist()), "context_score": prof.context_score, "timing": prof.timing,
            },
            "files": {"report": REPORT_FILE, "map": MAP_FILE, "json": JSON_FILE,
                      "profile": PROFILE_FILE if prof is not None else None},
        }


def _profile(profile: Any, grid: PatchGrid, index: int, ranked: list[int], relative: bool) -> ReportProfile:
    maps = to_numpy(profile.maps)
    one = maps[:, index] if maps.ndim == 4 else maps
    if one.ndim != 3 or one.shape[1:] != tuple(grid.grid_size):
        raise ValueError(f"profile maps must be [n_layers, batch, {grid.grid_size[0]}, {grid.grid_size[1]}], got "
                         f"{maps.shape}; for a profile of some patches use depth_profile(..., patches=...)")
    one = one.astype(np.float32)
    run = np.isfinite(one).any(axis=0).reshape(-1)  # patches the profile ran
    context = to_numpy(profile.context_score).astype(np.float64)
    context = context[:, index] if context.ndim == 2 else context.reshape(-1)
    return ReportProfile(maps=one, windows=[(int(a), int(b)) for a, b in profile.windows],
                         patches=None if run.all() else [p for p in ranked if run[p]],
                         timing={key: float(v) for key, v in profile.timing.items()},
                         context_score=[float(v) for v in context], relative=relative)


def weights_notes(weights_kind: str | None, has_class_names: bool) -> list[str]:
    """The warnings a report of weights of this kind carries.

    Example:
        >>> weights_notes("random", True)[0][:20], weights_notes("pretrained", True)
        ('weights are random (', [])
    """
    if weights_kind != "random":
        return []
    if has_class_names:
        return [RANDOM_WEIGHTS_NOTE]
    return ["weights are random (no pretrained weights loaded): the predictions and the map mean nothing"]


def build_record(
    model: HookedViTLike,
    image_tensor: Float[Tensor, "*batch channel height width"],
    result: CAAPResult,
    profile: Any = None,
    *,
    image_name: str,
    source_output: Float[Tensor, "*batch n_out"] | None = None,
    index: int = 0,
    k: int = 5,
    activation: OutputActivation | None = None,
    command: str | None = None,
    extra_timing: dict[str, float] | None = None,
    values: str = "effect",
    notes: list[str] | tuple[str, ...] = (),
) -> ReportRecord:
    """What the report of one image shows.

    Args:
        model: The `HookedViT` the map was computed on.
        image_tensor: The normalised model input ``[batch, C, H, W]`` (or ``[C, H, W]``).
        result: The `CAAPResult` of a patch map (``result.map`` ``[batch, gh, gw]``).
        profile: The `WindowSweepResult` of `caap_lens.sweeps.depth_profile` on the same input and
            target (maps ``[n_layers, batch, gh, gw]``, NaN at patches not run), or None.
        image_name: Name of the image (a file name; its stem names the report's folder).
        source_output: The model's output on ``image_tensor``; default ``result.source_output``.
        index: Which image of the batch.
        k: Number of top classes and top patches.
        activation: How the top classes are scored; default the model's ``cfg.output_activation``.
        command: The command line that produced the result.
        extra_timing: More timings (seconds) to show and store.
        values: ``"effect"``: show the map minus the context's score (white = no effect); ``"raw"``: the
            patched scores as computed.
        notes: More warnings to show, after those of the weights (`weights_notes`).

    Returns:
        A `ReportRecord`.

    Example:
        >>> x = model.preprocess(image)  # one scene: [1, 3, 64, 64]
        >>> record = build_record(model, x, caap(model, x), image_name="cat.png")
        >>> record.top_classes[0]["name"], record.map.shape
        ('sneaker', (8, 8))
    """
    x = image_tensor if image_tensor.ndim == 4 else image_tensor[None]
    model = at_image_size(model, x)  # a dynamic-size model on the image's grid
    grid, cfg = model.grid, model.cfg
    check_values(values)
    if result.map.ndim != 3 or tuple(result.map.shape[-2:]) != tuple(grid.grid_size):
        raise ValueError(f"a report needs a patch map [batch, grid_h, grid_w], got {tuple(result.map.shape)}")
    if source_output is None:
        source_output = result.source_output
    if source_output is None:
        raise ValueError("the result carries no source_output: pass source_output=model(x)")
    out = to_numpy(source_output)
    out = out[index] if out.ndim == 2 else out
    headless = model.head is None or getattr(cfg, "output_kind", "classes") == "embedding"  # no classes to show
    kind = activation or cfg.output_activation
    names = tuple(model.class_names) if model.class_names is not None else None
    target = int(result.targets[index])
    if headless:
        target_name = HEADLESS_TARGET
    else:
        target_name = names[target] if names is not None and 0 <= target < len(names) else f"class {target}"
    ranked = [p["patch"] for p in result.top_patches(grid.n_patches, image=index)]
    relative = bool(result.settings.get("relative"))
    context_score = float(result.context_score[index])
    top = [{**p, "effect": p["value"] if relative else p["value"] - context_score}
           for p in result.top_patches(k, image=index)]
    weights_kind = getattr(cfg, "weights_kind", None)
    return ReportRecord(
        image_name=str(image_name),
        image=image_to_rgb(x[index : index + 1].float(), cfg.image_mean, cfg.image_std),
        map=to_numpy(result.map[index]).astype(np.float32),
        grid=grid,
        model={"source": cfg.source, "family": cfg.family, "n_layers": cfg.n_layers, "d_model": cfg.d_model,
               "image_size": list(cfg.image_size), "n_classes": cfg.n_classes,
               "weights_kind": weights_kind, "weights": getattr(cfg, "weights", None)},
        settings=_jsonable(result.settings),
        target={"index": target, "name": target_name},
        activation=kind,
        output=None if headless or out.ndim != 1 else out,
        class_names=names,
        top_classes=[] if headless or out.ndim != 1 else top_classes(out, names, k, kind),
        top_patches=top,
        ranked_patches=ranked,
        source_score=float(result.source_score[index]),
        context_score=context_score,
        timing={key: float(v) for key, v in result.timing.items()},
        extra_timing={key: float(v) for key, v in (extra_timing or {}).items()},
        profile=None if profile is None else _profile(profile, grid, index, ranked, relative),
        command=command,
        created=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        k=k,
        values=values,
        notes=weights_notes(weights_kind, not headless and names is not None) + list(notes),
    )


# ----------------------------------------------------------------------------------- figures
def _image_figure(rgb: np.ndarray, grid: PatchGrid, title: str, size: int) -> go.Figure:
    height, width = rgb.shape[:2]
    fig = go.Figure(image_trace(rgb))
    fig.update_traces(hoverinfo=None, hovertemplate="x %{x}, y %{y}<br>RGB %{z}<extra></extra>")
    image_axes(fig, height, width, grid)
    margin = {"l": 60, "r": 20, "t": 60, "b": 50}
    fig.update_layout(title={"text": title, "x": 0.5, "xanchor": "center"}, height=size,
                      width=figure_width(size, (height, width), margin, False), template="plotly_white", margin=margin)
    return fig


def build_figures(record: ReportRecord) -> dict[str, go.Figure]:
    """The report's figures, in page order: ``image``, ``map``, then ``classes`` (models with a head),
    ``lines``, ``slider`` (a profile of every patch) and ``heat`` (with a depth profile).

    Args:
        record: A `ReportRecord` (`build_record`).

    Example:
        >>> from caap_lens import depth_profile
        >>> x = model.preprocess(image)  # one scene: [1, 3, 64, 64]
        >>> result = caap(model, x)
        >>> record = build_record(model, x, result, depth_profile(model, x, result.targets), image_name="scene.png")
        >>> list(build_figures(record))
        ['image', 'map', 'classes', 'lines', 'slider', 'heat']
    """
    grid, rgb, prof, k = record.grid, record.image, record.profile, record.k
    start, stop = record.settings.get("layers", (None, None))
    image_size = record.model["image_size"]
    size = 360  # height of the image figures: a 250 px image area
    # the plots subtract the context's score themselves (values="effect") or show the map as computed;
    # a relative map already is the effect: nothing more to subtract
    values = "effect" if record.relative else record.values
    name = record.score_name
    figures = {
        "image": _image_figure(rgb, grid, f"Input ({image_size[0]}×{image_size[1]})", size),
        "map": map_overlay(rgb, record.map, grid, title=f"CAAP map: {record.target['name']}, layers [{start}, {stop})",
                           values=values, context_score=0.0 if record.relative else record.context_score,
                           value_name=name, size=size),
    }
    if record.output is not None:
        n = len(record.top_classes)
        figures["classes"] = top_classes_bar(record.output, record.class_names, k, kind=record.activation,
                                             highlight=record.target["index"], title=f"Top {n} classes",
                                             width=420, height=max(300, 140 + 36 * n))
    if prof is not None:
        full = prof.patches is None
        by_value = record.ranked_patches if full else prof.patches
        top = by_value[:k]
        depth = {"layers": prof.layers, "values": values, "value_name": name,
                 "context_score": [0.0] * len(prof.layers) if prof.relative or not prof.context_score
                 else prof.context_score}
        figures["lines"] = depth_profile_lines(
            prof.maps, grid, top, show_mean=full, title=f"Top {len(top)} patches across depth", width=630, height=360,
            **depth)
        if full:
            figures["slider"] = depth_slider(prof.maps, grid, rgb, size=size, title="One layer patched", **depth)
        heat = by_value[:16]
        figures["heat"] = depth_heatmap(
            prof.maps, grid, heat, **depth,
            title=f"Top {len(heat)} patches × layer", width=600 if full else 1100,
            height=max(300, 200 + 28 * len(prof.layers)))
    for fig in figures.values():  # the title under the mode bar, which plotly draws over the top right
        fig.update_layout(title={"yref": "container", "y": 1, "yanchor": "top", "pad": {"t": 30}},
                          margin={"t": max(80, fig.layout.margin.t or 0)})
        if fig.layout.height:
            fig.update_layout(height=fig.layout.height + 20)
    return figures


# -------------------------------------------------------------------------------------- HTML
_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0;
       background: #f4f5f7; color: #1f2328; }
main { max-width: 1240px; margin: 0 auto; padding: 16px 24px 40px; }
h1 { font-size: 1.5em; margin: 12px 0 4px; }
h2 { font-size: 1.1em; margin: 0 0 8px; }
h2.section { margin: 20px 0 4px; }
p.lead { margin: 0 0 14px; color: #444; }
.row { display: flex; flex-wrap: wrap; gap: 16px; margin-bottom: 16px; align-items: flex-start; }
.card { background: #fff; border: 1px solid #d8dee4; border-radius: 8px; padding: 12px 14px; }
.grow { flex: 1 1 220px; min-width: 0; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { text-align: left; padding: 3px 10px 3px 0; vertical-align: top; }
table.num td, table.num th { text-align: right; padding: 3px 8px; }
table.num { border-top: 1px solid #d8dee4; }
table.num th { border-bottom: 1px solid #d8dee4; }
th { color: #57606a; font-weight: 600; }
code { background: #f0f2f4; padding: 1px 4px; border-radius: 4px; }
.note { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 8px; padding: 8px 14px; margin: 0 0 12px; }
p.explain { font-size: 0.85em; color: #57606a; max-width: 280px; }
footer { color: #57606a; font-size: 0.85em; margin-top: 12px; }
"""


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _window_text(start: Any, stop: Any, n_layers: int) -> str:
    if start is None or stop is None:
        return "n/a"
    blocks = f"block {start}" if int(stop) - int(start) == 1 else f"blocks {start}–{int(stop) - 1}"
    return f"layers [{start}, {stop}): {blocks} of 0–{n_layers - 1} patched"


def _divs(figures: dict[str, go.Figure], plotly_js: str = "inline") -> dict[str, str]:
    """Each figure as an HTML ``<div>``; plotly.js embedded with the first (``"inline"``) or read from
    the path ``plotly_js`` (a ``<script src>`` before the first)."""
    config = {"displaylogo": False, "toImageButtonOptions": {"format": "png"}}
    first: Any = True if plotly_js == "inline" else plotly_js
    return {
        key: fig.to_html(full_html=False, include_plotlyjs=first if i == 0 else False, config=config,
                         default_width=f"{fig.layout.width}px" if fig.layout.width else "100%",
                         default_height=f"{fig.layout.height}px" if fig.layout.height else "100%")
        for i, (key, fig) in enumerate(figures.items())
    }


def _values_text(record: ReportRecord) -> str:
    """What the map's and the table's values are, in words (effect or raw)."""
    score, c = html.escape(record.score_name), _fmt(record.context_score)
    if record.relative or record.values == "effect":
        return (f"Value: how much the target's {score} changes when the context run gets this patch's activations "
                f"from the source in the window, against the context run alone ({score} {c}): 0 (white) is no "
                "effect, red raises the score, blue lowers it.")
    return (f"Value (raw): the target's {score} when the context run gets this patch's activations from the source "
            f"in the window. The context alone scores {c}: patches above it raise the score, patches below it lower "
            "it; the colours are centred at 0, not at the context's score.")


def render_html(record: ReportRecord, figures: dict[str, go.Figure], plotly_js: str = "inline") -> str:
    """The report as one HTML page that works offline.

    Args:
        record: A `ReportRecord` (`build_record`).
        figures: Its figures (`build_figures`): ``image``, ``map`` and ``classes``, ``lines``,
            ``slider``, ``heat`` where the record has them.
        plotly_js: ``"inline"``: plotly.js embedded (one self-contained page, ~5 MB); else the path
            of a local ``plotly.min.js`` relative to the page, e.g. ``"../plotly.min.js"`` (`save_report`).

    Example:
        >>> x = model.preprocess(image)  # one scene: [1, 3, 64, 64]
        >>> record = build_record(model, x, caap(model, x), image_name="scene.png")
        >>> page = render_html(record, build_figures(record))
        >>> page.startswith("<!DOCTYPE html>")
        True
    """
    e = html.escape
    divs = _divs(figures, plotly_js)
    model, grid, prof, settings = record.model, record.grid, record.profile, record.settings
    name = e(record.image_name)
    pred = record.top_classes[0] if record.top_classes else None
    pred_text = (f"{e(class_label(pred['index'], record.class_names))}, {AXIS_TITLES[record.activation]} "
                 f"{_fmt(pred['score'])}" if pred else "n/a (headless model)")
    if pred and model.get("weights_kind") == "random":
        pred_text += " <b>(random weights: this prediction means nothing)</b>"
    seconds = record.timing.get("seconds", 0.0)
    time_text = f"{seconds:.2f} s for the map ({int(record.timing.get('rows', 0))} patched runs)"
    if prof is not None:
        time_text += f"; {prof.timing.get('seconds', 0.0):.2f} s for the depth profile"
    for key, v in record.extra_timing.items():
        time_text += f"; {e(key)} {v:.2f} s"
    start, stop = settings.get("layers", (None, None))
    size, n_layers = model["image_size"], model["n_layers"]
    target = record.target
    rows = [
        ("Image", f"{name} → model input {size[0]}×{size[1]}"),
        ("Model", f"{e(model['source'] or model['family'])} ({e(model['family'])}): {n_layers} "
                  f"layer{'s' if n_layers != 1 else ''}, d_model {model['d_model']}, {model['n_classes']} "
                  f"classes; grid {grid.grid_size[0]}×{grid.grid_size[1]} patches of "
                  f"{grid.patch_size[0]}×{grid.patch_size[1]} px, {grid.n_prefix_tokens} prefix token(s)"),
        ("Weights", e(record.weights)),
        ("Prediction", pred_text),
        ("Target", e(class_label(target["index"], record.class_names) if record.has_classes else target["name"])),
        ("Window", _window_text(start, stop, n_layers)),
        ("Hook", f"<code>{e(str(settings.get('hook')))}</code>"),
        ("Context", f"<code>{e(str(settings.get('context')))}</code>"),
        ("Score", f"<code>{e(record.score_name)}</code>"
                  + (" relative to the context run" if record.relative else "")
                  + f"; source {_fmt(record.source_score)}, context {_fmt(record.context_score)}"),
        ("Shown", f"<b>{e(record.value_name)}</b>: "
                  + ("each patch's effect, the patched score minus the context's; 0 (white) = no effect"
                     if record.relative or record.values == "effect" else
                     "the patched scores as computed (raw); the context scores " + _fmt(record.context_score))),
        ("Precision", e(str(settings.get("dtype")))),
        ("Time", time_text),
        ("Created", f"{e(record.created)}, caap_lens {e(record.version)}"),
    ]
    if record.command:
        rows.append(("Command", f"<code>{e(record.command)}</code>"))
    settings_html = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    patch_rows = "\n".join(
        f"<tr><td>{n + 1}</td><td>{p['patch']}</td><td>{p['row']}</td><td>{p['col']}</td>"
        f"<td>{_fmt(p['effect'] if record.values == 'effect' else p['value'])}</td></tr>"
        for n, p in enumerate(record.top_patches)
    )
    patches_html = (
        f"<h2>Top {len(record.top_patches)} patches</h2><table class='num'><tr><th>#</th><th>patch</th><th>row</th>"
        f"<th>col</th><th>{e(record.value_name)}</th></tr>{patch_rows}</table>"
        f"<p class='explain'>{_values_text(record)} Patches are numbered row-major from the top left.</p>"
    )
    notes_html = "".join(f"<p class='note'><b>Note:</b> {e(n)}</p>" for n in record.notes)
    depth_html = ""
    if prof is not None:
        partial_note = ""
        if prof.patches is not None:
            partial_note = (f"<p class='lead'>The depth profile covers {len(prof.patches)} of {grid.n_patches} "
                            "patches (the top of the map); a profile of every patch adds each layer's map.</p>")
        slider_html = f"<div class='card'>{divs['slider']}</div>" if "slider" in divs else ""
        depth_values = e(record.value_name) + (" (each layer against its own context run; 0 = no effect)"
                                               if record.relative or record.values == "effect" else "")
        depth_html = f"""
<h2 class="section">Depth profile</h2>
<p class="lead">Each layer <i>l</i> patched alone (window [<i>l</i>, <i>l</i>+1)), with the same context, hook, score
and target: at which depth does a patch's activation carry the evidence? Values: {depth_values}.</p>
<div class="row">{slider_html}<div class="card">{divs['heat']}</div></div>{partial_note}"""
    classes_html = f"<div class='card'>{divs['classes']}</div>" if "classes" in divs else ""
    lines_html = f"<div class='card'>{divs['lines']}</div>" if "lines" in divs else ""
    files = [REPORT_FILE, MAP_FILE, JSON_FILE] + ([PROFILE_FILE] if prof is not None else [])
    js_text = ("Plotly.js is embedded: this page works offline." if plotly_js == "inline" else
               f"Plotly.js is read from <code>{e(plotly_js)}</code> (one copy per output folder): keep the folder "
               "together and this page works offline.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CAAP report: {name}</title>
<style>{_CSS}</style></head>
<body><main>
<h1>CAAP report: {name}</h1>
<p class="lead">Causal attribution by activation patching: which image patches, copied into a neutral context
run, restore the model's score for <b>{e(target['name'])}</b>. Model: {e(model['source'] or model['family'])};
weights: {e(record.weights)}.</p>
{notes_html}
<div class="row"><div class="card grow"><h2>Settings</h2><table>{settings_html}</table></div></div>
<div class="row"><div class="card">{divs['image']}</div><div class="card">{divs['map']}</div>
<div class="card grow">{patches_html}</div></div>
<div class="row">{classes_html}{lines_html}</div>
{depth_html}
<footer>Files next to this report: {", ".join(f"<code>{f}</code>" for f in files)}.
<code>np.load("{MAP_FILE}")</code> gives the map as computed [grid_h, grid_w]; <code>{JSON_FILE}</code> holds the
map, its effect, grid, settings, weights, target, top patches and timing. {js_text}</footer>
</main></body></html>
"""


# ------------------------------------------------------------------------------------- files
def _write_plotly_js(out_dir: Path) -> Path:
    """``<out_dir>/plotly.min.js``, written only when missing or not this plotly's copy."""
    from plotly.offline import get_plotlyjs

    path = out_dir / PLOTLY_FILE
    js = get_plotlyjs()
    if not path.is_file() or path.stat().st_size != len(js.encode("utf-8")) or path.read_text(encoding="utf-8") != js:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(js, encoding="utf-8")
    return path


def save_report(record: ReportRecord, out_dir: str | Path, plotly_js: str = "shared") -> Path:
    """Writes a record's ``report.html`` (`build_figures`, `render_html`), ``map.npy``, ``map.json``
    and ``profile.npy`` (with a depth profile) to ``<out_dir>/<image stem>/`` (see `report_dir`).

    Args:
        record: A `ReportRecord` (`build_record`).
        out_dir: The output folder.
        plotly_js: ``"shared"``: the page reads ``<out_dir>/plotly.min.js``, written once per folder
            (every report of the folder shares it; keep the folder together); ``"inline"``: plotly.js
            embedded in the page (one self-contained ~5 MB file).

    Returns:
        The path of ``report.html``.

    Example:
        >>> save_report(build_record(model, x, result, image_name="cat.png"), "out")
        PosixPath('out/cat/report.html')
    """
    if plotly_js not in ("shared", "inline"):
        raise ValueError(f"plotly_js must be 'shared' or 'inline', got {plotly_js!r}")
    folder = report_dir(out_dir, record.image_name)
    folder.mkdir(parents=True, exist_ok=True)
    if plotly_js == "shared":
        _write_plotly_js(Path(out_dir))
    np.save(folder / MAP_FILE, record.map)
    if record.profile is not None:
        np.save(folder / PROFILE_FILE, record.profile.maps)
    (folder / JSON_FILE).write_text(json.dumps(record.to_json(), indent=1))
    path = folder / REPORT_FILE
    page = render_html(record, build_figures(record), "inline" if plotly_js == "inline" else f"../{PLOTLY_FILE}")
    path.write_text(page, encoding="utf-8")
    return path


def write_report(
    out_dir: str | Path,
    *,
    model: HookedViTLike,
    image_tensor: Float[Tensor, "*batch channel height width"],
    result: CAAPResult,
    profile: Any = None,
    image_name: str,
    source_output: Float[Tensor, "*batch n_out"] | None = None,
    index: int = 0,
    k: int = 5,
    activation: OutputActivation | None = None,
    command: str | None = None,
    extra_timing: dict[str, float] | None = None,
    values: str = "effect",
    notes: list[str] | tuple[str, ...] = (),
    plotly_js: str = "shared",
) -> Path:
    """Writes ``report.html``, ``map.npy``, ``map.json`` (and ``profile.npy``) for one image.

    `build_record` (whose arguments these are), then `save_report` (``plotly_js``).

    Returns:
        The path of ``report.html``.

    Example:
        >>> path = write_report("out", model=model, image_tensor=x, result=result, profile=profile,
        ...                     image_name="scene_0")
        >>> path.name, path.parent.name
        ('report.html', 'scene_0')
    """
    record = build_record(model, image_tensor, result, profile, image_name=image_name, source_output=source_output,
                          index=index, k=k, activation=activation, command=command, extra_timing=extra_timing,
                          values=values, notes=notes)
    return save_report(record, out_dir, plotly_js)


# ------------------------------------------------------------------------------------- index
def index_entry(record: ReportRecord, path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """One row of ``index.html``: the image, its report (relative to ``out_dir``), model, weights, prediction.

    Example:
        >>> x = model.preprocess(image)  # one scene: [1, 3, 64, 64]
        >>> record = build_record(model, x, caap(model, x), image_name="scene.png")
        >>> index_entry(record, "out/cat/report.html", "out")["report"]
        'cat/report.html'
    """
    pred = record.top_classes[0] if record.top_classes else None
    best = record.top_patches[0] if record.top_patches else None
    return {
        "image": record.image_name,
        "report": Path(path).resolve().relative_to(Path(out_dir).resolve()).as_posix(),
        "model": record.model.get("source") or record.model.get("family"),
        "weights": record.weights,
        "prediction": None if pred is None else
        f"{class_label(pred['index'], record.class_names)}, {AXIS_TITLES[record.activation]} {_fmt(pred['score'])}",
        "target": record.target["name"],
        "values": record.value_name,
        "top_patch": None if best is None else
        {"patch": best["patch"], "value": best["effect"] if record.values == "effect" else best["value"]},
        "notes": record.notes,
        "created": record.created,
    }


def write_index(out_dir: str | Path, entries: list[dict[str, Any]], failed: list[dict[str, str]] = ()) -> Path:
    """Writes ``<out_dir>/index.html`` and ``index.json``: a link to every report in the folder.

    Rows already in the folder's ``index.json`` are kept (a later run replaces a report's row, and
    rows whose report is gone are dropped), so several runs into one folder share one index.

    Args:
        out_dir: The output folder.
        entries: `index_entry` of each report written.
        failed: ``{"image", "error"}`` of each image that could not be explained (this run's).

    Returns:
        The path of ``index.html``.

    Example:
        >>> record = build_record(model, x, result, image_name="scene_0")
        >>> path = save_report(record, "out")
        >>> write_index("out", [index_entry(record, path, "out")])
        PosixPath('out/index.html')
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    try:
        old = json.loads((out / INDEX_JSON).read_text(encoding="utf-8"))
        for row in old.get("reports", []):
            if isinstance(row, dict) and (out / str(row.get("report", ""))).is_file():
                rows[row["report"]] = row
    except (OSError, ValueError, AttributeError):
        pass
    for row in entries:
        rows[row["report"]] = row
    ordered = sorted(rows.values(), key=lambda r: r["report"])
    failed = list(failed)
    (out / INDEX_JSON).write_text(json.dumps({"format": "caap_lens.index/1", "reports": ordered,
                                              "failed": failed}, indent=1))
    e = html.escape
    models = {(r.get("model"), r.get("weights")) for r in ordered}
    model_line = ("" if len(models) != 1 else
                  "<p class='lead'>Model: {} — weights: {}</p>".format(*(e(str(v)) for v in next(iter(models)))))
    body = "\n".join(
        f"<tr><td><a href='{e(r['report'])}'>{e(r['image'])}</a></td><td>{e(str(r.get('model')))}</td>"
        f"<td>{e(str(r.get('weights')))}</td><td>{e(str(r.get('prediction') or 'n/a'))}</td>"
        f"<td>{e(str(r.get('target')))}</td>"
        f"<td>{'' if not r.get('top_patch') else '#%d: %s' % (r['top_patch']['patch'], _fmt(r['top_patch']['value']))}"
        f" <small>({e(str(r.get('values')))})</small></td>"
        f"<td>{''.join(f'<div class=warn>{e(n)}</div>' for n in r.get('notes') or [])}</td></tr>"
        for r in ordered
    )
    failed_html = "" if not failed else (
        f"<h2 class='section'>Failed ({len(failed)})</h2><table class='num'>"
        + "".join(f"<tr><td>{e(f['image'])}</td><td>{e(f['error'])}</td></tr>" for f in failed) + "</table>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CAAP reports ({len(ordered)})</title>
<style>{_CSS} td {{ border-bottom: 1px solid #eaeef2; }} .warn {{ color: #9a6700; font-size: 0.85em; }}
table.index td, table.index th {{ text-align: left; padding: 4px 10px; }}</style></head>
<body><main>
<h1>CAAP reports ({len(ordered)})</h1>
{model_line}
<div class="card"><table class="index"><tr><th>image</th><th>model</th><th>weights</th><th>prediction</th>
<th>target</th><th>top patch</th><th>notes</th></tr>
{body}</table></div>
{failed_html}
<footer>Each report reads <code>{PLOTLY_FILE}</code> from this folder; <code>{INDEX_JSON}</code> lists the same rows.</footer>
</main></body></html>
"""
    path = out / INDEX_FILE
    path.write_text(page, encoding="utf-8")
    return path

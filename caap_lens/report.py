"""A self-contained HTML report of one CAAP attribution, plus the raw map as files.

A report is made in three steps, each usable on its own:

1. `build_record` — everything the report shows, as numbers and strings: the input image, the map,
   the settings, the prediction and top classes, the depth profile and the model's description
   (a `ReportRecord`; ``record.to_json()`` is ``map.json``).
2. `build_figures` — the plotly figures of a record.
3. `render_html` — one self-contained HTML page from a record and its figures.

`save_report` writes a record's files; `write_report` does all of it. For an image named ``<name>``
(its file stem, made file-system safe) they write::

    <out_dir>/<stem>/report.html   one HTML file, plotly.js embedded inline once: opens offline
    <out_dir>/<stem>/map.npy       the CAAP map, float32 [grid_h, grid_w]
    <out_dir>/<stem>/map.json      the map as nested lists, grid, settings, target, prediction,
                                   top patches, scores, timing and the depth profile
    <out_dir>/<stem>/profile.npy   the depth profile, float32 [n_layers, grid_h, grid_w] (if given;
                                   NaN at patches left out of a partial profile)

The report shows the settings (window, hook, context, score, target, timing), the input image, the
map over the image with the patch grid, the model's top classes (scored by the model's
``cfg.output_activation``), a table of the top patches, and the depth profile: the top patches'
effect per layer (lines and a heatmap) and, for a profile of every patch, each layer's map behind a
slider.

Example:
    >>> x = model.preprocess(image)  # doctest: +SKIP
    >>> result = caap(model, x)  # doctest: +SKIP
    >>> top = [p["patch"] for p in result.top_patches(8)]  # doctest: +SKIP
    >>> profile = depth_profile(model, x, result.targets, patches=top)  # doctest: +SKIP
    >>> write_report("out", model=model, image_tensor=x, result=result, profile=profile,  # doctest: +SKIP
    ...              image_name="cat.png")
    PosixPath('out/cat/report.html')
    >>> record = build_record(model, x, result, profile, image_name="cat.png")  # doctest: +SKIP
    >>> page = render_html(record, build_figures(record))  # doctest: +SKIP
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
from caap_lens.plot.classes import AXIS_TITLES, class_label, top_classes, top_classes_bar
from caap_lens.plot.common import figure_width, image_axes, image_to_rgb, image_trace, to_numpy
from caap_lens.plot.depth import depth_heatmap, depth_profile_lines, depth_slider
from caap_lens.plot.maps import map_overlay

REPORT_FILE = "report.html"
MAP_FILE = "map.npy"
JSON_FILE = "map.json"
PROFILE_FILE = "profile.npy"
FORMAT = "caap_lens.report/1"
HEADLESS_TARGET = "own embedding (self-similarity)"

__all__ = ["ReportRecord", "ReportProfile", "build_record", "build_figures", "render_html", "save_report",
           "write_report", "report_dir",
           "REPORT_FILE", "MAP_FILE", "JSON_FILE", "PROFILE_FILE"]


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
    """

    maps: Float[np.ndarray, "n_layers grid_h grid_w"]
    windows: list[tuple[int, int]]
    patches: list[int] | None
    timing: dict[str, float]

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

    @property
    def has_classes(self) -> bool:
        """Whether the model has a classifier (else it is headless, explained by self-similarity)."""
        return self.output is not None

    @property
    def value_name(self) -> str:
        """What the map's values are, e.g. ``"logit"`` or ``"prob − context"``."""
        score = str(self.settings.get("score", "score"))
        return f"{score} − context" if self.settings.get("relative") else score

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
            "target": self.target,
            "prediction": {"activation": self.activation, "top": self.top_classes},
            "source_score": self.source_score,
            "context_score": self.context_score,
            "map": self.map.tolist(),
            "top_patches": self.top_patches,
            "timing": {**self.timing, **self.extra_timing},
            "depth_profile": None if prof is None else {
                "layers": prof.layers, "windows": [list(w) for w in prof.windows], "patches": prof.patches,
                "maps": _nan_to_none(prof.maps.tolist()), "timing": prof.timing,
            },
            "files": {"report": REPORT_FILE, "map": MAP_FILE, "json": JSON_FILE,
                      "profile": PROFILE_FILE if prof is not None else None},
        }


def _profile(profile: Any, grid: PatchGrid, index: int, ranked: list[int]) -> ReportProfile:
    maps = to_numpy(profile.maps)
    one = maps[:, index] if maps.ndim == 4 else maps
    if one.ndim != 3 or one.shape[1:] != tuple(grid.grid_size):
        raise ValueError(f"profile maps must be [n_layers, batch, {grid.grid_size[0]}, {grid.grid_size[1]}], got "
                         f"{maps.shape}; for a profile of some patches use depth_profile(..., patches=...)")
    one = one.astype(np.float32)
    run = np.isfinite(one).any(axis=0).reshape(-1)  # patches the profile ran
    return ReportProfile(maps=one, windows=[(int(a), int(b)) for a, b in profile.windows],
                         patches=None if run.all() else [p for p in ranked if run[p]],
                         timing={key: float(v) for key, v in profile.timing.items()})


def build_record(
    model: Any,
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

    Returns:
        A `ReportRecord`.

    Example:
        >>> record = build_record(model, x, result, image_name="cat.png")  # doctest: +SKIP
        >>> record.top_classes[0]["name"], record.map.shape  # doctest: +SKIP
        ('tabby cat', (14, 14))
    """
    grid, cfg = model.grid, model.cfg
    if result.map.ndim != 3 or tuple(result.map.shape[-2:]) != tuple(grid.grid_size):
        raise ValueError(f"a report needs a patch map [batch, grid_h, grid_w], got {tuple(result.map.shape)}")
    x = image_tensor if image_tensor.ndim == 4 else image_tensor[None]
    if source_output is None:
        source_output = result.source_output
    if source_output is None:
        raise ValueError("the result carries no source_output: pass source_output=model(x)")
    out = to_numpy(source_output)
    out = out[index] if out.ndim == 2 else out
    headless = model.head is None
    kind = activation or cfg.output_activation
    names = tuple(model.class_names) if model.class_names is not None else None
    target = int(result.targets[index])
    if headless:
        target_name = HEADLESS_TARGET
    else:
        target_name = names[target] if names is not None and 0 <= target < len(names) else f"class {target}"
    ranked = [p["patch"] for p in result.top_patches(grid.n_patches, image=index)]
    return ReportRecord(
        image_name=str(image_name),
        image=image_to_rgb(x[index : index + 1].float(), cfg.image_mean, cfg.image_std),
        map=to_numpy(result.map[index]).astype(np.float32),
        grid=grid,
        model={"source": cfg.source, "family": cfg.family, "n_layers": cfg.n_layers, "d_model": cfg.d_model,
               "image_size": list(cfg.image_size), "n_classes": cfg.n_classes},
        settings=_jsonable(result.settings),
        target={"index": target, "name": target_name},
        activation=kind,
        output=None if headless or out.ndim != 1 else out,
        class_names=names,
        top_classes=[] if headless or out.ndim != 1 else top_classes(out, names, k, kind),
        top_patches=result.top_patches(k, image=index),
        ranked_patches=ranked,
        source_score=float(result.source_score[index]),
        context_score=float(result.context_score[index]),
        timing={key: float(v) for key, v in result.timing.items()},
        extra_timing={key: float(v) for key, v in (extra_timing or {}).items()},
        profile=None if profile is None else _profile(profile, grid, index, ranked),
        command=command,
        created=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        k=k,
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
        >>> list(build_figures(record))  # doctest: +SKIP
        ['image', 'map', 'classes', 'lines', 'slider', 'heat']
    """
    grid, rgb, prof, k = record.grid, record.image, record.profile, record.k
    start, stop = record.settings.get("layers", (None, None))
    image_size = record.model["image_size"]
    size = 360  # height of the image figures: a 250 px image area
    figures = {
        "image": _image_figure(rgb, grid, f"Input ({image_size[0]}×{image_size[1]})", size),
        "map": map_overlay(rgb, record.map, grid, title=f"CAAP map: {record.target['name']}, layers [{start}, {stop})",
                           value_name=record.value_name, size=size),
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
        figures["lines"] = depth_profile_lines(
            prof.maps, grid, top, layers=prof.layers, value_name=record.value_name, show_mean=full,
            title=f"Top {len(top)} patches across depth", width=630, height=360)
        if full:
            figures["slider"] = depth_slider(prof.maps, grid, rgb, layers=prof.layers, value_name=record.value_name,
                                             size=size, title="One layer patched")
        heat = by_value[:16]
        figures["heat"] = depth_heatmap(
            prof.maps, grid, heat, layers=prof.layers, value_name=record.value_name,
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
footer { color: #57606a; font-size: 0.85em; margin-top: 12px; }
"""


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _window_text(start: Any, stop: Any, n_layers: int) -> str:
    if start is None or stop is None:
        return "n/a"
    blocks = f"block {start}" if int(stop) - int(start) == 1 else f"blocks {start}–{int(stop) - 1}"
    return f"layers [{start}, {stop}): {blocks} of 0–{n_layers - 1} patched"


def _divs(figures: dict[str, go.Figure]) -> dict[str, str]:
    """Each figure as an HTML ``<div>``; plotly.js is embedded once, with the first."""
    config = {"displaylogo": False, "toImageButtonOptions": {"format": "png"}}
    return {
        key: fig.to_html(full_html=False, include_plotlyjs=(i == 0), config=config,
                         default_width=f"{fig.layout.width}px" if fig.layout.width else "100%",
                         default_height=f"{fig.layout.height}px" if fig.layout.height else "100%")
        for i, (key, fig) in enumerate(figures.items())
    }


def render_html(record: ReportRecord, figures: dict[str, go.Figure]) -> str:
    """The report as one self-contained HTML page (plotly.js inline: it works offline).

    Args:
        record: A `ReportRecord` (`build_record`).
        figures: Its figures (`build_figures`): ``image``, ``map`` and ``classes``, ``lines``,
            ``slider``, ``heat`` where the record has them.

    Example:
        >>> page = render_html(record, build_figures(record))  # doctest: +SKIP
        >>> page.startswith("<!DOCTYPE html>")  # doctest: +SKIP
        True
    """
    e = html.escape
    divs = _divs(figures)
    model, grid, prof, settings = record.model, record.grid, record.profile, record.settings
    name = e(record.image_name)
    pred = record.top_classes[0] if record.top_classes else None
    pred_text = (f"{e(class_label(pred['index'], record.class_names))}, {AXIS_TITLES[record.activation]} "
                 f"{_fmt(pred['score'])}" if pred else "n/a (headless model)")
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
        ("Prediction", pred_text),
        ("Target", e(class_label(target["index"], record.class_names) if record.has_classes else target["name"])),
        ("Window", _window_text(start, stop, n_layers)),
        ("Hook", f"<code>{e(str(settings.get('hook')))}</code>"),
        ("Context", f"<code>{e(str(settings.get('context')))}</code>"),
        ("Score", f"<code>{e(str(settings.get('score', 'score')))}</code>"
                  + (" relative to the context run" if settings.get("relative") else "")
                  + f"; source {_fmt(record.source_score)}, context {_fmt(record.context_score)}"),
        ("Precision", e(str(settings.get("dtype")))),
        ("Time", time_text),
        ("Created", f"{e(record.created)}, caap_lens {e(record.version)}"),
    ]
    if record.command:
        rows.append(("Command", f"<code>{e(record.command)}</code>"))
    settings_html = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    patch_rows = "\n".join(
        f"<tr><td>{n + 1}</td><td>{p['patch']}</td><td>{p['row']}</td><td>{p['col']}</td>"
        f"<td>{_fmt(p['value'])}</td></tr>"
        for n, p in enumerate(record.top_patches)
    )
    patches_html = (
        f"<h2>Top {len(record.top_patches)} patches</h2><table class='num'><tr><th>#</th><th>patch</th><th>row</th>"
        f"<th>col</th><th>{e(record.value_name)}</th></tr>{patch_rows}</table>"
        "<p style='font-size:0.85em;color:#57606a;max-width:260px'>Value: the target's score when the "
        "context run gets this patch's activations from the source in the window. Patches are numbered "
        "row-major from the top left.</p>"
    )
    depth_html = ""
    if prof is not None:
        partial_note = ""
        if prof.patches is not None:
            partial_note = (f"<p class='lead'>The depth profile covers {len(prof.patches)} of {grid.n_patches} "
                            "patches (the top of the map); a profile of every patch adds each layer's map.</p>")
        slider_html = f"<div class='card'>{divs['slider']}</div>" if "slider" in divs else ""
        depth_html = f"""
<h2 class="section">Depth profile</h2>
<p class="lead">Each layer <i>l</i> patched alone (window [<i>l</i>, <i>l</i>+1)), with the same context, hook, score
and target: at which depth does a patch's activation carry the evidence?</p>
<div class="row">{slider_html}<div class="card">{divs['heat']}</div></div>{partial_note}"""
    classes_html = f"<div class='card'>{divs['classes']}</div>" if "classes" in divs else ""
    lines_html = f"<div class='card'>{divs['lines']}</div>" if "lines" in divs else ""
    files = [REPORT_FILE, MAP_FILE, JSON_FILE] + ([PROFILE_FILE] if prof is not None else [])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CAAP report: {name}</title>
<style>{_CSS}</style></head>
<body><main>
<h1>CAAP report: {name}</h1>
<p class="lead">Causal attribution by activation patching: which image patches, copied into a neutral context
run, restore the model's score for <b>{e(target['name'])}</b>.</p>
<div class="row"><div class="card grow"><h2>Settings</h2><table>{settings_html}</table></div></div>
<div class="row"><div class="card">{divs['image']}</div><div class="card">{divs['map']}</div>
<div class="card grow">{patches_html}</div></div>
<div class="row">{classes_html}{lines_html}</div>
{depth_html}
<footer>Files next to this report: {", ".join(f"<code>{f}</code>" for f in files)}.
<code>np.load("{MAP_FILE}")</code> gives the map [grid_h, grid_w]; <code>{JSON_FILE}</code> holds the map,
grid, settings, target, top patches and timing. Plotly.js is embedded: this page works offline.</footer>
</main></body></html>
"""


# ------------------------------------------------------------------------------------- files
def save_report(record: ReportRecord, out_dir: str | Path) -> Path:
    """Writes a record's ``report.html`` (`build_figures`, `render_html`), ``map.npy``, ``map.json``
    and ``profile.npy`` (with a depth profile) to ``<out_dir>/<image stem>/`` (see `report_dir`).

    Returns:
        The path of ``report.html``.

    Example:
        >>> save_report(build_record(model, x, result, image_name="cat.png"), "out")  # doctest: +SKIP
        PosixPath('out/cat/report.html')
    """
    folder = report_dir(out_dir, record.image_name)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / MAP_FILE, record.map)
    if record.profile is not None:
        np.save(folder / PROFILE_FILE, record.profile.maps)
    (folder / JSON_FILE).write_text(json.dumps(record.to_json(), indent=1))
    path = folder / REPORT_FILE
    path.write_text(render_html(record, build_figures(record)), encoding="utf-8")
    return path


def write_report(
    out_dir: str | Path,
    *,
    model: Any,
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
) -> Path:
    """Writes ``report.html``, ``map.npy``, ``map.json`` (and ``profile.npy``) for one image.

    `build_record` (whose arguments these are), then `save_report`.

    Returns:
        The path of ``report.html``.

    Example:
        >>> path = write_report("out", model=model, image_tensor=x, result=result, profile=profile,  # doctest: +SKIP
        ...                     image_name="scene_0")
    """
    record = build_record(model, image_tensor, result, profile, image_name=image_name, source_output=source_output,
                          index=index, k=k, activation=activation, command=command, extra_timing=extra_timing)
    return save_report(record, out_dir)

"""A self-contained HTML report of one CAAP attribution, plus the raw map as files.

`write_report` writes, for an image named ``<name>`` (its file stem is used, made file-system safe)::

    <out_dir>/<stem>/report.html   one HTML file, plotly.js embedded inline once: opens offline
    <out_dir>/<stem>/map.npy       the CAAP map, float32 [grid_h, grid_w]
    <out_dir>/<stem>/map.json      the map as nested lists, grid, settings, target, prediction,
                                   top patches, scores, timing and the depth profile
    <out_dir>/<stem>/profile.npy   the depth profile, float32 [n_layers, grid_h, grid_w] (if given;
                                   NaN at patches left out of a partial profile)

The report shows the settings (window, hook, context, score, target, timing), the input image, the
map over the image with the patch grid, the model's top classes, a table of the top patches, and
the depth profile: the top patches' effect per layer (lines and a heatmap) and, for a profile of
every patch, each layer's map behind a slider.

Example:
    >>> x = model.preprocess(image)  # doctest: +SKIP
    >>> result = caap(model, x)  # doctest: +SKIP
    >>> profile = depth_profile(model, x, target=result.targets)  # doctest: +SKIP
    >>> write_report("out", model=model, image_tensor=x, result=result, profile=profile,  # doctest: +SKIP
    ...              source_output=model(x), image_name="cat.png")
    PosixPath('out/cat/report.html')
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

import caap_lens
from caap_lens.attribution.result import CAAPResult
from caap_lens.plot.classes import AXIS_TITLES, class_label, top_classes, top_classes_bar
from caap_lens.plot.depth import depth_heatmap, depth_profile_lines, depth_slider
from caap_lens.plot.maps import _figure_width, _image_axes, image_to_rgb, image_trace, map_overlay, to_numpy

REPORT_FILE = "report.html"
MAP_FILE = "map.npy"
JSON_FILE = "map.json"
PROFILE_FILE = "profile.npy"
FORMAT = "caap_lens.report/1"

__all__ = ["write_report", "report_dir", "output_activation", "REPORT_FILE", "MAP_FILE", "JSON_FILE", "PROFILE_FILE"]


def report_dir(out_dir: str | Path, image_name: str) -> Path:
    """``<out_dir>/<stem>``: the image name's stem with anything but ``[A-Za-z0-9._-]`` replaced by ``_``.

    Example:
        >>> report_dir("out", "photos/my cat.png").as_posix()
        'out/my_cat'
    """
    stem = Path(str(image_name)).stem or str(image_name)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    return Path(out_dir) / stem


def output_activation(model: Any) -> str:
    """How the model's outputs become scores: ``"sigmoid"`` for multi-label models, else ``"softmax"``.

    A model says so with an ``output_activation`` attribute (``"softmax"``/``"sigmoid"``/``"logits"``)
    or ``multi_label = True`` (on the model or its ``cfg``).
    """
    for owner in (model, getattr(model, "cfg", None)):
        kind = getattr(owner, "output_activation", None)
        if kind in AXIS_TITLES:
            return kind
        if getattr(owner, "multi_label", False):
            return "sigmoid"
    return "softmax"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        value = to_numpy(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


HEADLESS_TARGET = "own embedding (self-similarity)"


def _class_name(model: Any, index: int) -> str:
    if getattr(model, "head", None) is None:  # headless: explained by similarity to its own embedding
        return HEADLESS_TARGET
    names = getattr(model, "class_names", None)
    return names[index] if names is not None and 0 <= index < len(names) else f"class {index}"


def _image_figure(rgb: np.ndarray, grid: Any, title: str, size: int) -> go.Figure:
    height, width = rgb.shape[:2]
    fig = go.Figure(image_trace(rgb))
    fig.update_traces(hoverinfo=None, hovertemplate="x %{x}, y %{y}<br>RGB %{z}<extra></extra>")
    _image_axes(fig, height, width, grid)
    margin = {"l": 60, "r": 20, "t": 60, "b": 50}
    fig.update_layout(title={"text": title, "x": 0.5, "xanchor": "center"}, height=size,
                      width=_figure_width(size, (height, width), margin, False), template="plotly_white", margin=margin)
    return fig


def _profile_maps(maps: np.ndarray, grid: Any, index: int, patches: Sequence[int] | None) -> np.ndarray:
    """One image's depth profile as ``[n_layers, gh, gw]`` (NaN where a partial profile has no value)."""
    gh, gw = grid.grid_size
    if patches is None:
        one = maps[:, index] if maps.ndim == 4 else maps
        if one.ndim != 3 or one.shape[1:] != (gh, gw):
            raise ValueError(f"profile maps must be [n_layers, batch, {gh}, {gw}] (or pass profile_patches for a "
                             f"profile of some patches), got {maps.shape}")
        return one.astype(np.float32)
    one = maps[:, index] if maps.ndim == 3 else maps
    if one.ndim != 2 or one.shape[1] != len(patches):
        raise ValueError(f"a profile of {len(patches)} patches must be [n_layers, batch, {len(patches)}], "
                         f"got {maps.shape}")
    full = np.full((one.shape[0], gh, gw), np.nan, dtype=np.float32)
    for j, patch in enumerate(patches):
        r, c = grid.rc_of(int(patch))
        full[:, r, c] = one[:, j]
    return full


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def _window_text(start: Any, stop: Any, n_layers: int) -> str:
    if start is None or stop is None:
        return "n/a"
    blocks = f"block {start}" if int(stop) - int(start) == 1 else f"blocks {start}–{int(stop) - 1}"
    return f"layers [{start}, {stop}): {blocks} of 0–{n_layers - 1} patched"


def _fmt(v: float) -> str:
    return f"{v:.4g}"


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


def write_report(
    out_dir: str | Path,
    *,
    model: Any,
    image_tensor: Float[Tensor, "*batch channel height width"],
    result: CAAPResult,
    profile: Any = None,
    profile_patches: Sequence[int] | None = None,
    source_output: Float[Tensor, "*batch n_classes"],
    image_name: str,
    index: int = 0,
    k: int = 5,
    activation: str | None = None,
    command: str | None = None,
    extra_timing: dict[str, float] | None = None,
) -> Path:
    """Writes ``report.html``, ``map.npy``, ``map.json`` (and ``profile.npy``) for one image.

    Args:
        out_dir: Output folder; the files go to ``<out_dir>/<image stem>/`` (see `report_dir`).
        model: The `HookedViT` the map was computed on.
        image_tensor: The normalised model input ``[batch, C, H, W]`` (or ``[C, H, W]``).
        result: The `CAAPResult` of a patch map (``result.map`` ``[batch, gh, gw]``).
        profile: The `WindowSweepResult` of `caap_lens.sweeps.depth_profile` on the same input and
            target, or None (no depth section).
        profile_patches: When the profile covers only some patches (run with ``region=`` one mask
            per patch, maps ``[n_layers, batch, k]``), the patch index of each of its ``k`` units.
        source_output: The model's output on ``image_tensor`` ``[batch, n_classes]`` (top classes).
        image_name: Name of the image (a file name; its stem names the folder).
        index: Which image of the batch.
        k: Number of top classes and top patches shown.
        activation: ``"softmax"``, ``"sigmoid"`` or ``"logits"`` for the top classes; default
            `output_activation` of the model.
        command: The command line that produced the result, shown in the report.
        extra_timing: More timings (seconds) to show and store, e.g. ``{"depth_profile": 1.2}``.

    Returns:
        The path of ``report.html``.

    Example:
        >>> path = write_report("out", model=model, image_tensor=x, result=result, profile=profile,  # doctest: +SKIP
        ...                     source_output=logits, image_name="scene_0")
    """
    if result.map.ndim != 3 or tuple(result.map.shape[-2:]) != tuple(model.grid.grid_size):
        raise ValueError(f"write_report needs a patch map [batch, grid_h, grid_w], got {tuple(result.map.shape)}")
    grid = model.grid
    cfg = model.cfg
    folder = report_dir(out_dir, image_name)
    folder.mkdir(parents=True, exist_ok=True)

    x = image_tensor if image_tensor.ndim == 4 else image_tensor[None]
    rgb = image_to_rgb(x[index : index + 1].float(), cfg.image_mean, cfg.image_std)
    patch_map = to_numpy(result.map[index]).astype(np.float32)
    target = int(result.targets[index])
    target_name = _class_name(model, target)
    settings = dict(result.settings)
    score = str(settings.get("score", "score"))
    relative = bool(settings.get("relative"))
    value_name = f"{score} − context" if relative else score
    start, stop = settings.get("layers", (None, None))
    top_patches = result.top_patches(k, image=index)
    out = to_numpy(source_output)
    out = out[index] if out.ndim == 2 else out
    has_classes = getattr(model, "head", None) is not None and out.ndim == 1
    kind = activation or output_activation(model)
    top_cls = top_classes(out, getattr(model, "class_names", None), k, kind) if has_classes else []
    source_score = float(result.source_score[index])
    context_score = float(result.context_score[index])
    timing = {key: float(v) for key, v in result.timing.items()}
    extra = {key: float(v) for key, v in (extra_timing or {}).items()}
    created = _dt.datetime.now().astimezone().isoformat(timespec="seconds")

    prof = None
    if profile is not None:
        prof_maps = _profile_maps(to_numpy(profile.maps), grid, index, profile_patches)
        layers = [int(w[0]) for w in profile.windows]
        prof = {"maps": prof_maps, "layers": layers, "windows": [list(w) for w in profile.windows],
                "timing": {key: float(v) for key, v in profile.timing.items()},
                "settings": _jsonable(profile.settings),
                "patches": None if profile_patches is None else [int(p) for p in profile_patches]}

    # ------------------------------------------------------------------------ raw files
    np.save(folder / MAP_FILE, patch_map)
    if prof is not None:
        np.save(folder / PROFILE_FILE, prof["maps"])
    record = {
        "format": FORMAT,
        "image": str(image_name),
        "created": created,
        "caap_lens_version": caap_lens.__version__,
        "command": command,
        "model": {"source": cfg.source, "family": cfg.family, "n_layers": cfg.n_layers, "d_model": cfg.d_model,
                  "image_size": list(cfg.image_size), "n_classes": cfg.n_classes},
        "grid": {"grid_size": list(grid.grid_size), "patch_size": list(grid.patch_size),
                 "n_prefix_tokens": grid.n_prefix_tokens, "image_size": list(grid.image_size),
                 "order": "row-major: patch = row * grid_w + col, token = n_prefix_tokens + patch"},
        "settings": _jsonable(settings),
        "target": {"index": target, "name": target_name},
        "prediction": {"activation": kind, "top": top_cls},
        "source_score": source_score,
        "context_score": context_score,
        "map": patch_map.tolist(),
        "top_patches": top_patches,
        "timing": {**timing, **extra},
        "depth_profile": None if prof is None else {
            "layers": prof["layers"], "windows": prof["windows"], "patches": prof["patches"],
            "maps": _nan_to_none(prof["maps"].tolist()), "timing": prof["timing"],
        },
        "files": {"report": REPORT_FILE, "map": MAP_FILE, "json": JSON_FILE,
                  "profile": PROFILE_FILE if prof is not None else None},
    }
    (folder / JSON_FILE).write_text(json.dumps(record, indent=1))

    # ---------------------------------------------------------------------------- figures
    figures: list[tuple[str, go.Figure]] = []
    size = 360  # height of the image figures: a 250 px image area
    figures.append(("image", _image_figure(rgb, grid, f"Input ({cfg.image_size[0]}×{cfg.image_size[1]})", size)))
    figures.append(("map", map_overlay(
        rgb, patch_map, grid, title=f"CAAP map: {target_name}, layers [{start}, {stop})",
        value_name=value_name, size=size,
    )))
    if has_classes:
        figures.append(("classes", top_classes_bar(out, getattr(model, "class_names", None), k, kind=kind,
                                                   highlight=target, title=f"Top {len(top_cls)} classes",
                                                   width=420, height=max(300, 140 + 36 * len(top_cls)))))
    if prof is not None:
        full = prof["patches"] is None
        profiled = set(range(grid.n_patches)) if full else set(prof["patches"])
        by_value = [p["patch"] for p in result.top_patches(grid.n_patches, image=index) if p["patch"] in profiled]
        top_idx = by_value[:k]
        figures.append(("lines", depth_profile_lines(
            prof["maps"], grid, top_idx, layers=prof["layers"], value_name=value_name, show_mean=full,
            title=f"Top {len(top_idx)} patches across depth", width=630, height=360)))
        if full:
            figures.append(("slider", depth_slider(
                prof["maps"], grid, rgb, layers=prof["layers"], value_name=value_name, size=size,
                title="One layer patched")))
        heat = by_value[:16]
        figures.append(("heat", depth_heatmap(
            prof["maps"], grid, heat, layers=prof["layers"], value_name=value_name,
            title=f"Top {len(heat)} patches × layer", width=600 if full else 1100,
            height=max(300, 200 + 28 * len(prof["layers"])))))
    divs: dict[str, str] = {}
    config = {"displaylogo": False, "toImageButtonOptions": {"format": "png"}}
    for i, (key, fig) in enumerate(figures):
        # the title under the mode bar, which plotly draws over the top right of the figure
        fig.update_layout(title={"yref": "container", "y": 1, "yanchor": "top", "pad": {"t": 30}},
                          margin={"t": max(80, fig.layout.margin.t or 0)})
        if fig.layout.height:
            fig.update_layout(height=fig.layout.height + 20)
        divs[key] = fig.to_html(full_html=False, include_plotlyjs=(i == 0), config=config,
                                default_width=f"{fig.layout.width}px" if fig.layout.width else "100%",
                                default_height=f"{fig.layout.height}px" if fig.layout.height else "100%")

    # ------------------------------------------------------------------------------- HTML
    e = html.escape
    pred = top_cls[0] if top_cls else None
    names = getattr(model, "class_names", None)
    pred_text = (f"{e(class_label(pred['index'], names))}, {AXIS_TITLES[kind]} {_fmt(pred['score'])}"
                 if pred else "n/a (headless model)")
    seconds = timing.get("seconds", 0.0)
    time_text = f"{seconds:.2f} s for the map ({int(timing.get('rows', 0))} patched runs)"
    if prof is not None:
        time_text += f"; {prof['timing'].get('seconds', 0.0):.2f} s for the depth profile"
    for key, v in extra.items():
        time_text += f"; {e(key)} {v:.2f} s"
    rows = [
        ("Image", f"{e(str(image_name))} → model input {cfg.image_size[0]}×{cfg.image_size[1]}"),
        ("Model", f"{e(cfg.source or cfg.family)} ({e(cfg.family)}): {cfg.n_layers} "
                  f"layer{'s' if cfg.n_layers != 1 else ''}, d_model {cfg.d_model}, {cfg.n_classes} classes; grid {grid.grid_size[0]}×{grid.grid_size[1]} patches of "
                  f"{grid.patch_size[0]}×{grid.patch_size[1]} px, {grid.n_prefix_tokens} prefix token(s)"),
        ("Prediction", pred_text),
        ("Target", e(class_label(target, names) if has_classes else target_name)),
        ("Window", _window_text(start, stop, cfg.n_layers)),
        ("Hook", f"<code>{e(str(settings.get('hook')))}</code>"),
        ("Context", f"<code>{e(str(settings.get('context')))}</code>"),
        ("Score", f"<code>{e(score)}</code>" + (" relative to the context run" if relative else "")
                  + f"; source {_fmt(source_score)}, context {_fmt(context_score)}"),
        ("Precision", e(str(settings.get("dtype")))),
        ("Time", time_text),
        ("Created", f"{e(created)}, caap_lens {e(caap_lens.__version__)}"),
    ]
    if command:
        rows.append(("Command", f"<code>{e(command)}</code>"))
    settings_html = "\n".join(f"<tr><th>{k_}</th><td>{v}</td></tr>" for k_, v in rows)
    patch_rows = "\n".join(
        f"<tr><td>{n + 1}</td><td>{p['patch']}</td><td>{p['row']}</td><td>{p['col']}</td>"
        f"<td>{_fmt(p['value'])}</td></tr>"
        for n, p in enumerate(top_patches)
    )
    patches_html = (
        f"<h2>Top {len(top_patches)} patches</h2><table class='num'><tr><th>#</th><th>patch</th><th>row</th>"
        f"<th>col</th><th>{e(value_name)}</th></tr>{patch_rows}</table>"
        "<p style='font-size:0.85em;color:#57606a;max-width:260px'>Value: the target's score when the "
        "context run gets this patch's activations from the source in the window. Patches are numbered "
        "row-major from the top left.</p>"
    )
    depth_html = ""
    partial_note = ""
    if prof is not None and prof["patches"] is not None:
        partial_note = (f"<p class='lead'>The depth profile covers {len(prof['patches'])} of {grid.n_patches} "
                        "patches (the top of the map); a profile of every patch adds each layer's map.</p>")
    if prof is not None:
        slider_html = f"<div class='card'>{divs['slider']}</div>" if "slider" in divs else ""
        depth_html = f"""
<h2 class="section">Depth profile</h2>
<p class="lead">Each layer <i>l</i> patched alone (window [<i>l</i>, <i>l</i>+1)), with the same context, hook, score
and target: at which depth does a patch's activation carry the evidence?</p>
<div class="row">{slider_html}<div class="card">{divs['heat']}</div></div>{partial_note}"""
    classes_html = f"<div class='card'>{divs['classes']}</div>" if has_classes else ""
    lines_html = f"<div class='card'>{divs['lines']}</div>" if prof is not None else ""
    files = [REPORT_FILE, MAP_FILE, JSON_FILE] + ([PROFILE_FILE] if prof is not None else [])
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CAAP report: {e(str(image_name))}</title>
<style>{_CSS}</style></head>
<body><main>
<h1>CAAP report: {e(str(image_name))}</h1>
<p class="lead">Causal attribution by activation patching: which image patches, copied into a neutral context
run, restore the model's score for <b>{e(target_name)}</b>.</p>
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
    path = folder / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path

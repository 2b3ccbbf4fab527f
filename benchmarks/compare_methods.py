"""Regenerates docs/results.md and docs/results.json: every method × metric on the bundled held-out scenes.

A thin call into the evaluation harness (`caap_lens.evaluation`): it builds two plans, runs them into
resumable stores (kill it and run it again: committed chunks are kept) and renders the page.

* the main plan: every method in `caap_lens.baselines.METHODS` plus a random-map reference row, every
  class present in a scene as a target, the curves scored by the target's sigmoid probability (the
  bundled model is multi-label), and the localisation metrics against the ground-truth masks;
* the grid plan: CAAP's open choices, one named row per (window, neutral context), on the first
  ``--grid-limit`` scenes.

Usage:
    python benchmarks/compare_methods.py                                     # full run, all 200 scenes
    python benchmarks/compare_methods.py --limit 8 --out /tmp/results.md --json /tmp/r.json --store /tmp/st
    torchrun --nproc_per_node 2 benchmarks/compare_methods.py                # the same on 2 ranks
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "results.md"
LEAD_BEGIN, LEAD_END = "<!-- testbed-lead:begin -->", "<!-- testbed-lead:end -->"


def keep_lead(path: Path, markdown: str) -> str:
    """The new page with the real-backbone lead block of the old one (written by compare_testbed.py) on top."""
    old = path.read_text() if path.exists() else ""
    if LEAD_BEGIN not in old or LEAD_END not in old:
        return markdown
    lead = old[old.index(LEAD_BEGIN):old.index(LEAD_END) + len(LEAD_END)]
    return lead + "\n\n" + markdown
DEFAULT_STORE = REPO / "runs" / "compare_methods"
LOCALISATION = ("pointing", "energy", "auroc")
CURVES = ("deletion", "insertion", "positive", "negative")
OPTIONAL = ("target_specificity", "object_removal")  # published metrics; used when caap_lens.metrics has them
GRID_METRICS = ("deletion", "insertion", "pointing", "auroc")
GRID_CONTEXTS = ("mean", "black", "blur", "noise", "mean_activation")


def available_metrics() -> list[str]:
    import caap_lens.metrics as published

    return [*CURVES, *LOCALISATION, *(k for k in OPTIONAL if hasattr(published, k))]


def main_plan(methods: Sequence[str] | None = None, *, limit: int | None = None, rise_masks: int = 1000,
              ig_steps: int = 32, chunk: int = 16) -> Any:
    """Every method (options below, others at their defaults) + ``random``, on every present class."""
    from caap_lens.baselines import METHODS
    from caap_lens.evaluation import MethodSpec, Plan

    rows = []
    for name in (list(METHODS) if methods is None else list(methods)):
        options: dict[str, Any] = {}
        if name == "rise":
            options = {"n_masks": rise_masks, "score": "sigmoid"}
        elif name == "integrated_gradients":
            options = {"n_steps": ig_steps}
        rows.append(MethodSpec(name, options=options))
    rows.append(MethodSpec("random"))
    return Plan(methods=tuple(rows), metrics=tuple(available_metrics()), targets="all_present", score="sigmoid",
                reference="caap" if any(r.name == "caap" for r in rows) else None, chunk=chunk, limit=limit)


def grid_windows(n_layers: int) -> list[tuple[int, int]]:
    """All windows for a model of at most 6 layers; else single layers plus a few multi-layer windows."""
    from caap_lens.attribution.engine import default_window
    from caap_lens.sweeps import all_windows

    if n_layers <= 6:
        return [tuple(w) for w in all_windows(n_layers)]
    singles = [(layer, layer + 1) for layer in range(n_layers)]
    third = n_layers // 3
    extra = [tuple(default_window(n_layers)), (0, n_layers), (0, third), (2 * third, n_layers)]
    return singles + [w for i, w in enumerate(extra) if w not in singles and w not in extra[:i]]


def grid_row(window: tuple[int, int], context: str) -> str:
    return f"caap [{window[0]}, {window[1]}) {context}"


def grid_plan(n_layers: int, *, limit: int | None = 50, chunk: int = 16, curve_steps: int | None = 16) -> Any:
    """CAAP per (window, context) as named rows; ``mean_activation`` over a fixed reference set."""
    from caap_lens.attribution.engine import default_window
    from caap_lens.evaluation import MethodSpec, Plan

    rows = [MethodSpec(grid_row(w, c), "caap", {"layers": list(w),
                                                 "context": "@mean_activation" if c == "mean_activation" else c})
            for w in grid_windows(n_layers) for c in GRID_CONTEXTS]
    return Plan(methods=tuple(rows), metrics=GRID_METRICS, targets="all_present", score="sigmoid", chunk=chunk,
                curve_steps=curve_steps, reference=grid_row(tuple(default_window(n_layers)), "mean"), limit=limit)


# ------------------------------------------------------------- whole-model checks (not per unit)
SANITY_METHODS = ("caap", "token_gradcam", "integrated_gradients", "rollout")


def scene_pairs(model: Any, source: Any, limit: int | None = None) -> tuple[Any, Any]:
    """Images ``[P, C, H, W]`` and targets ``[P]``: one pair per (scene, class present), in the plan's order."""
    import torch

    images, targets = [], []
    n = len(source) if limit is None else min(limit, len(source))
    for i in range(n):
        item = source[i]
        for t in item.targets:
            images.append(item.image)
            targets.append(int(t))
    return model.preprocess(np.stack(images)), torch.tensor(targets)


def run_fidelity(model: Any, images: Any, targets: Any, window: Sequence[int], chunk: int = 32) -> dict[str, Any]:
    """`caap_lens.baselines.fidelity` (AtP vs exact CAAP, context mean, logit score) over every pair."""
    import torch

    from caap_lens.baselines import fidelity
    from caap_lens.evaluation.tables import ci_cell

    rho, r, caap_s, atp_s = [], [], 0.0, 0.0
    for s in range(0, len(targets), chunk):
        f = fidelity(model, images[s:s + chunk], targets[s:s + chunk], layers=tuple(window))
        rho.append(f["spearman"].double())
        r.append(f["pearson"].double())
        caap_s += f["caap"].seconds
        atp_s += f["atp"].seconds
    return {"window": list(window), "spearman": ci_cell(torch.cat(rho).numpy()),
            "pearson": ci_cell(torch.cat(r).numpy()), "speedup": caap_s / max(atp_s, 1e-12)}


def run_sanity(model: Any, images: Any, targets: Any, options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Adebayo et al.'s cascading randomisation (`caap_lens.metrics.randomisation_check`) per method."""
    from caap_lens.baselines import METHODS, attribute
    from caap_lens.metrics import randomisation_check

    out: dict[str, Any] = {}
    for name in (m for m in SANITY_METHODS if m in METHODS and m in options):  # the plan's own rows
        opts = options.get(name, {})

        def fn(m: Any, x: Any, t: Any, name: str = name, opts: dict = opts) -> Any:
            return attribute(name, m, x, t, **opts).map

        rep = randomisation_check(fn, model, images, targets)
        out[name] = {"start_layers": [str(v) for v in rep["start_layers"]],
                     "mean_spearman": [float(v) for v in rep["mean_spearman"]], "threshold": rep["threshold"]}
    return out


# ----------------------------------------------------------------------------------- rendering
def fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def caap_rank_lines(r: Any) -> list[str]:
    from caap_lens.evaluation.metrics import METRICS
    from caap_lens.evaluation.report import fmt_ci

    if "caap" not in next(iter(r.ranks.values()), {}):
        return []
    n = len(next(iter(r.ranks.values())))
    lines = []
    for k in [m for m in r.metrics if m in r.ranks]:
        rk = r.ranks[k]
        if all(math.isnan(r.summary[m][k]["mean"]) for m in rk):
            continue
        best = min(rk, key=lambda m: rk[m]["rank"])
        c = rk["caap"]
        word = "higher is better" if METRICS[k].direction > 0 else "lower is better"
        line = (f"- {METRICS[k].label} ({word}): CAAP ranks **{c['rank']:g} of {n}** (95% bootstrap interval "
                f"[{c['lo']:g}, {c['hi']:g}]; {fmt_ci(r.summary['caap'][k])})")
        if best != "caap":
            d = r.paired[best][k]
            line += (f"; best is `{best}` ({fmt_ci(r.summary[best][k])}); `{best}` − CAAP = "
                     f"{fmt_ci(d)}, Holm-adjusted p "
                     f"{fmt(d['p_holm'], 4)}")
        lines.append(line + ".")
    return lines


def grid_tables(g: Any, n_layers: int) -> list[str]:
    from caap_lens.attribution.engine import default_window
    from caap_lens.evaluation.metrics import METRICS
    from caap_lens.evaluation.report import table

    windows, default = grid_windows(n_layers), tuple(default_window(n_layers))
    out = []
    for k in g.metrics:
        direction = METRICS[k].direction
        means = {(w, c): g.summary[grid_row(w, c)][k]["mean"] for w in windows for c in GRID_CONTEXTS}
        finite = [v for v in means.values() if not math.isnan(v)]
        best = (max(finite) if direction > 0 else min(finite)) if finite else math.nan
        rows = []
        for w in windows:
            cells = [f"**{fmt(means[(w, c)])}**" if means[(w, c)] == best else fmt(means[(w, c)])
                     for c in GRID_CONTEXTS]
            rows.append([f"[{w[0]}, {w[1]})" + (" (default)" if w == default else "")] + cells)
        ns = sorted({g.summary[grid_row(w, c)][k]["n"] for w in windows for c in GRID_CONTEXTS})
        n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]} per cell"
        word = "higher is better" if direction > 0 else "lower is better"
        out.append(f"**{METRICS[k].label} ({word}; {n_text})**\n\n"
                   + table(["window \\ context", *GRID_CONTEXTS], rows))
    return out


def grid_summary_lines(g: Any, main: Any, n_layers: int) -> list[str]:
    from caap_lens.evaluation.metrics import METRICS

    lines = []
    ref = g.reference
    for k in g.metrics:
        direction = METRICS[k].direction
        items = sorted(((g.summary[row][k]["mean"], row) for row in g.rows if not math.isnan(g.summary[row][k]["mean"])),
                       key=lambda x: -direction * x[0])
        if not items:
            continue
        better = [row for row in g.rows if row != ref and g.paired[row][k]["significant"]
                  and direction * g.paired[row][k]["mean"] > 0]
        ref_rank = 1 + sum(1 for v, _ in items if -direction * v < -direction * g.summary[ref][k]["mean"])
        lines.append(f"- {METRICS[k].label}: the {len(items)} settings span {fmt(min(items)[0])}–{fmt(max(items)[0])}; "
                     f"the default `{ref}` scores {fmt(g.summary[ref][k]['mean'])} ({ordinal(ref_rank)}); best "
                     f"`{items[0][1]}` ({fmt(items[0][0])}); {len(better)} setting(s) beat the default with a "
                     "Holm-adjusted paired p < 0.05.")
    return lines


def reading_lines(r: Any) -> list[str]:
    """Sentences generated from the numbers; nothing here is written by hand."""
    from caap_lens.evaluation.metrics import METRICS

    lines: list[str] = []
    if "caap" not in next(iter(r.ranks.values()), {}):
        return lines
    scored = [k for k in r.metrics if k in r.ranks]
    ranked = list(next(iter(r.ranks.values())))
    wins = [k for k in scored if r.ranks[k]["caap"]["rank"] == 1]
    lines.append(f"CAAP has the best mean of {len(ranked)} methods on {len(wins)} of {len(scored)} metrics"
                 + (": " + ", ".join(METRICS[k].label for k in wins) if wins else "") + ".")
    clear = [k for k in scored if r.ranks[k]["caap"]["hi"] == 1]
    if clear:
        lines.append("Its rank interval is [1, 1] (first in every bootstrap resample) on: "
                     + ", ".join(METRICS[k].label for k in clear) + ".")
    mean_rank = {m: sum(r.ranks[k][m]["rank"] for k in scored) / len(scored) for m in ranked}
    order = sorted(mean_rank, key=mean_rank.get)
    lines.append(f"Mean rank over the {len(scored)} metrics: CAAP {mean_rank['caap']:.1f} "
                 f"({ordinal(order.index('caap') + 1)} of {len(ranked)}; lowest `{order[0]}` {mean_rank[order[0]]:.1f}).")
    random_rows = [m.name for m in r.plan.methods if m.fn_name == "random"]
    if random_rows:
        rnd = random_rows[0]
        better = [k for k in scored if r.paired[rnd][k]["significant"] and METRICS[k].direction * r.paired[rnd][k]["mean"] < 0]
        lines.append(f"CAAP beats random patch maps (Holm-adjusted paired p < 0.05) on {len(better)} of {len(scored)} "
                     "metrics" + (": " + ", ".join(METRICS[k].label for k in better) if better else "") + ".")
    secs = {m: r.seconds[m] for m in ranked if not math.isnan(r.seconds[m])}
    if "caap" in secs:
        fast = sorted(secs, key=secs.get)
        lines.append(f"CAAP takes {1000 * secs['caap']:.1f} ms per unit ({ordinal(fast.index('caap') + 1)} fastest of "
                     f"{len(fast)}; fastest `{fast[0]}` {1000 * secs[fast[0]]:.1f} ms, slowest `{fast[-1]}` "
                     f"{1000 * secs[fast[-1]]:.1f} ms).")
    m = r.meta
    lines.append(f"The model gives the target a sigmoid probability above 0.5 in {m['clean_score_above_half']} of "
                 f"{m['units']} units (mean {m['clean_score_mean']:.3f}); attributions explain this model's scores, "
                 "good or bad.")
    return lines


def render_markdown(main: Any, grid: Any | None, meta: dict[str, Any]) -> str:
    m = main.meta
    partial = m["items_done"] < m["items_expected"]
    opts = "; ".join(f"`{s.name}` " + ", ".join(f"{k}={v}" for k, v in s.options.items())
                     for s in main.plan.methods if s.options)
    parts = [
        "# Attribution methods compared on the bundled model", "",
        "*Generated by `benchmarks/compare_methods.py` through `caap_lens.evaluation`; do not edit by hand — "
        "rerun the command below (it resumes from its store).*", "",
    ]
    if partial:
        parts += [f"> **Unfinished run**: {m['items_done']} of {m['items_expected']} scenes are in the store; "
                  "the n in each cell says how many units it holds.", ""]
    if meta.get("subset"):
        parts += [f"> **Subset run**: {meta['subset']}. Numbers are indicative only.", ""]
    parts += [
        "## Setup", "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}; torch {meta['torch']}, {meta['threads']} thread(s); device {meta['device']}"
        + (" (shared with other jobs)" if meta.get("shared") else ""),
        f"- model: `{meta['model']}` — {meta['model_desc']}",
        f"- data: {m['items_done']} held-out scenes, every class present in a scene as a target: "
        f"**{m['units']} (scene, target) units**; stores `{meta['stores']}` (plan `{main.plan.hash()}`"
        + (f", grid plan `{grid.plan.hash()}`" if grid is not None else "") + ")",
        f"- wall time of this invocation: {meta['wall_seconds'] / 60:.1f} min ({meta['ranks']} rank(s)"
        + (", resumed from committed chunks" if meta.get("resumed") else "") + ")"
        + "".join(f"; {name} plan: {c['computed']} chunk(s) computed in it, {c['from_store']} already in its store"
                  for name, c in meta.get("chunks", {}).items()),
        "",
        "Protocol:", "",
        (f"- Every method gives a patch map on the model's {meta['grid'][0]}×{meta['grid'][1]} grid (pixel-level "
         "methods — integrated gradients, RISE — are averaged per patch); all metrics use patch maps."),
        ("- **Score.** The bundled model is multi-label: each class has an independent sigmoid. The curves "
         "score the target's **sigmoid probability** (the built-in score `sigmoid`), not the softmax "
         "probability RISE uses for single-label models. Chefer et al.'s perturbation test normally scores "
         "top-1 accuracy; with several classes present that is ill-posed, so it uses the same sigmoid score. "
         "The attribution methods score the target logit (the sigmoid's argument), except RISE, which weights "
         "its masks by the sigmoid probability."),
        (f"- **Deletion / insertion** (Petsiuk et al. 2018): one patch per step, substrate `mean` for deletion "
         "and `blur` for insertion; AUC by the trapezoid rule over x ∈ [0, 1]."),
        ("- **Positive / negative perturbation** (Chefer et al. 2021): the top / bottom 0, 10, …, 90 % of "
         "patches set to black; AUC over x ∈ [0, 0.9], not normalised."),
        ("- **Localisation** against the target class's ground-truth mask: pointing game, mask energy, mask "
         "AUROC (`caap_lens.metrics`)."
         + (" **Target specificity** compares the map's mass on the target with that on the other classes "
            "present (`caap_lens.metrics.target_specificity`); units with no other class are skipped, counted."
            if "target_specificity" in main.metrics else "")
         + (" **Object removal** needs scenes re-rendered without each item; the bundled scenes have none, so "
            "it is skipped and counted." if "object_removal" in main.metrics else "")),
        ("- Each cell: mean, 95 % Student-t interval, and **(n)** the values it uses; values a metric returns "
         "as NaN (e.g. no positive mass for mask energy) are counted under *What was not counted*. "
         "Ranks: average ranks of the means, with 95 % bootstrap intervals over units. Paired differences "
         "against CAAP, Holm-corrected per metric. *random* is a seeded uniform map per unit, not ranked. "
         "Time is `Attribution.seconds` per unit (target resolution plus the method)."),
        f"- Method options: {opts or 'all defaults'}; others at their defaults. CAAP: window "
        f"{tuple(meta['default_window'])} (the default middle third), context `mean`, hook `resid_pre`, logit score.",
        "",
    ]
    body = main.to_markdown(title=None, level=2).split("\n", 2)[2]  # drop the generic one-line intro
    parts += [body, ""]
    lines = caap_rank_lines(main)
    if lines:
        parts += ["## CAAP's rank per metric", "", *lines, ""]
    if grid is not None:
        gm = grid.meta
        parts += [
            "## CAAP's open choices: window × neutral context", "",
            f"CAAP (logit score, hook `resid_pre`) for {len(grid_windows(meta['n_layers']))} windows × "
            f"{len(GRID_CONTEXTS)} contexts as separate named rows of one plan, on {gm['units']} units of the first "
            f"{gm['items_done']} scenes"
            + (f", deletion/insertion in {grid.plan.curve_steps} steps" if grid.plan.curve_steps else "")
            + ". "
            f"Windows are `[start, stop)` block ranges; `mean_activation` uses the mean "
            f"residual over all {meta['n_scenes_available']} bundled scenes as its reference. Means (best per "
            "metric in bold); the store holds every interval and n.", "",
            *grid_summary_lines(grid, main, meta["n_layers"]), "",
            "Note: picking the best cell on the same scenes it is scored on is selection, not a held-out result.", "",
            *[t + "\n" for t in grid_tables(grid, meta["n_layers"])],
        ]
    fid = meta.get("fidelity")
    if fid:
        from caap_lens.evaluation.report import fmt_ci

        parts += ["## Attribution patching vs exact CAAP", "",
                  f"`caap_lens.baselines.fidelity` on every (scene, target) pair, window {tuple(fid['window'])}, "
                  f"context `mean`, logit score: Spearman {fmt_ci(fid['spearman'])}, Pearson "
                  f"{fmt_ci(fid['pearson'])}; AtP takes 1/{fid['speedup']:.1f} of exact CAAP's time.", ""]
    sanity = meta.get("sanity")
    if sanity:
        from caap_lens.evaluation.report import table

        first = next(iter(sanity.values()))
        stages = first.get("start_layers", first.get("from_layers"))  # results stored before the rename
        header = ["method"] + [("head only" if st == str(meta["n_layers"]) else
                                ("+ embedding" if not st.isdigit() else f"blocks ≥ {st}")) for st in stages]
        parts += ["## Model-randomisation sanity check", "",
                  f"Adebayo et al. 2018, cascading (`caap_lens.metrics.randomisation_check`): weights re-initialised "
                  f"from the top down, the head at every stage, on the first {meta['sanity_pairs']} pairs. Mean "
                  "Spearman correlation between the maps of the trained and the randomised model (lower = the map "
                  "depends more on the weights):", "",
                  table(header, [[f"`{m}`"] + [fmt(v, 2) for v in rep["mean_spearman"]] for m, rep in sanity.items()]),
                  ""]
    parts += ["## Reading the table", "", "*Generated from the numbers above.*", "",
              *[f"- {line}" for line in reading_lines(main)], ""]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ CLI
def model_description(name: str, model: Any) -> str:
    try:
        from caap_lens.loading.bundled import bundled_config

        cfg = bundled_config(name)
        k, m = cfg["timm_kwargs"], cfg.get("metrics", {})
        return (f"ViT, depth {k['depth']}, width {k['embed_dim']}, {k['num_heads']} heads, {k['img_size']}px input, "
                f"patch {k['patch_size']}, {k['num_classes']} sigmoid outputs; test mAP "
                f"{m.get('test_map', float('nan')):.3f} (mAP {m.get('bundled_map', float('nan')):.3f} on the "
                f"{m.get('bundled_scenes', '?')} bundled scenes), from its `config.json`")
    except Exception:  # noqa: BLE001 - any model works; the description is best effort
        return f"{model.cfg.n_layers} layers, grid {model.grid.grid_size}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="fashion-scenes-vit", help="bundled model name")
    p.add_argument("--limit", type=int, default=None, help="first N scenes (default: all bundled scenes)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all in METHODS)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--chunk", type=int, default=16, help="scenes per committed chunk")
    p.add_argument("--rise-masks", type=int, default=1000)
    p.add_argument("--ig-steps", type=int, default=32)
    p.add_argument("--store", type=Path, default=DEFAULT_STORE, help="results stores (main/ and grid/)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown page")
    p.add_argument("--json", type=Path, default=None, help="also write every number (per unit too) as JSON")
    p.add_argument("--skip-grid", action="store_true", help="skip the window x context grid")
    p.add_argument("--grid-limit", type=int, default=50, help="scenes in the grid")
    p.add_argument("--grid-steps", type=int, default=16, help="deletion/insertion steps in the grid (0: one per patch)")
    p.add_argument("--render-only", action="store_true", help="render from the stores as they are (no compute)")
    p.add_argument("--sanity-pairs", type=int, default=12, help="pairs for the randomisation check (0 skips it)")
    p.add_argument("--skip-fidelity", action="store_true", help="skip AtP vs exact CAAP")
    p.add_argument("--shared", action="store_true", help="note in the page that the machine was shared")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from caap_lens.attribution.contexts import MeanActivationContext
    from caap_lens.attribution.engine import default_window
    from caap_lens.baselines import METHODS
    from caap_lens.evaluation import bundled_scenes, evaluate, merge
    from caap_lens.evaluation.distributed import Distributed
    from caap_lens.loading.bundled import load_bundled, load_bundled_scenes

    t0 = time.perf_counter()
    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods or () if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    model = load_bundled(args.model, device=args.device)
    source = bundled_scenes(args.model)
    n_layers = model.cfg.n_layers
    plan = main_plan(methods, limit=args.limit, rise_masks=args.rise_masks, ig_steps=args.ig_steps, chunk=args.chunk)
    gplan = None if args.skip_grid else grid_plan(
        n_layers, limit=min(args.grid_limit, args.limit or args.grid_limit), chunk=args.chunk,
        curve_steps=args.grid_steps or None)
    dist = Distributed.setup(device=args.device)
    resumed = (args.store / "main" / "parts").is_dir()
    try:
        runs = {}
        if not args.render_only:
            runs["main"] = evaluate(model, source, plan, args.store / "main", merge=False)
            if gplan is not None:
                reference = model.preprocess(load_bundled_scenes(args.model).images)
                runs["grid"] = evaluate(model, source, gplan, args.store / "grid", merge=False,
                                        objects={"mean_activation": MeanActivationContext(reference=reference)})
    finally:
        dist.close()
    if dist.rank != 0:
        return {}
    main_results = merge(args.store / "main")
    grid_results = merge(args.store / "grid") if gplan is not None and (args.store / "grid").exists() else None
    argv_list = list(sys.argv[1:] if argv is None else argv)
    meta = {
        "command": " ".join(["python benchmarks/compare_methods.py", *map(shlex.quote, argv_list)]),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs ({platform.processor() or platform.system()})",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
        "model": args.model, "model_desc": model_description(args.model, model), "grid": list(model.grid.grid_size),
        "n_layers": n_layers, "default_window": list(default_window(n_layers)), "n_scenes_available": len(source),
        "stores": str(args.store.relative_to(REPO) if args.store.is_relative_to(REPO) else args.store),
        "wall_seconds": time.perf_counter() - t0, "ranks": dist.world, "resumed": resumed, "shared": args.shared,
        "subset": (f"first {args.limit} of {len(source)} bundled scenes" if args.limit else None),
        "chunks": {name: {"computed": r.chunks_done, "from_store": r.chunks_skipped} for name, r in runs.items()},
    }
    t_extra = time.perf_counter()
    if not args.skip_fidelity or args.sanity_pairs > 0:
        images, targets = scene_pairs(model, source, args.limit)
        if not args.skip_fidelity:
            meta["fidelity"] = run_fidelity(model, images, targets, default_window(n_layers))
        if args.sanity_pairs > 0:
            k = min(args.sanity_pairs, len(targets))
            meta["sanity"] = run_sanity(model, images[:k], targets[:k],
                                        {s.name: s.call_options() for s in plan.methods})
            meta["sanity_pairs"] = k
    meta["extras_seconds"] = time.perf_counter() - t_extra
    if args.render_only and args.json and args.json.exists():  # keep the computing run's own record
        old = json.loads(args.json.read_text()).get("meta", {})
        meta.update({k: old[k] for k in ("command", "date", "wall_seconds", "ranks", "threads", "resumed", "shared",
                                         "chunks") if k in old})
    markdown = render_markdown(main_results, grid_results, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(keep_lead(args.out, markdown))
    main_results.to_html(args.store / "main" / "results.html", title="Attribution methods on the bundled model")
    out = {"meta": meta, "main": main_results.to_dict(per_unit=True),
           "grid": grid_results.to_dict() if grid_results is not None else None}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    print("\n".join(caap_rank_lines(main_results)))
    print(f"wrote {args.out}" + (f" and {args.json}" if args.json else "")
          + f"; {meta['wall_seconds']:.0f}s", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()

"""Compare CAAP with every attribution baseline on the bundled model's held-out scenes.

For every bundled held-out scene and every class present in it (the scene labels are multi-hot), with
that class as the target, this computes each method's patch map and scores it with

* RISE deletion and insertion AUC (patch units, one patch per step, the target's *sigmoid*
  probability: the bundled model is multi-label, so a softmax over its 10 logits is not what it
  outputs);
* Chefer et al.'s positive and negative perturbation AUC (black patches, fractions 0..0.9) with the
  same continuous sigmoid score (top-1 "accuracy" is ill-posed when several classes are present);
* pointing game, mask energy and mask AUROC against the target class's ground-truth mask;

and aggregates them (mean with a 95% t interval over (scene, target) pairs, rank per metric, time per
image). It then sweeps CAAP's open choices (window x neutral context), measures how well attribution
patching reproduces exact CAAP (`caap_lens.baselines.fidelity`) and runs Adebayo et al.'s
model-randomisation check for CAAP and a few baselines. Everything is written to ``docs/results.md``
(generated, including its "Reading the table" section) and optionally to a JSON file; the main table
is printed to stdout.

Usage:
    python benchmarks/compare_methods.py                                   # full run, all scenes
    python benchmarks/compare_methods.py --limit 8 --threads 1 --out /tmp/results.md   # quick look
    python benchmarks/compare_methods.py --methods caap,rollout,gradcam --skip-grid --json /tmp/r.json

The functions below (`make_pairs`, `compute_maps`, `score_maps`, `summarise`, `run_grid`,
`run_fidelity`, `run_sanity`, `render_markdown`, `run_comparison`) work on any `HookedViT` and
`SceneSet` of matching image size, e.g. a tiny random-init model in a test.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from torch import Tensor

from caap_lens.attribution.contexts import MeanActivationContext, resolve_context
from caap_lens.attribution.engine import default_window
from caap_lens.baselines import METHODS, attribute, fidelity
from caap_lens.metrics import (
    chance_level,
    deletion_curve,
    insertion_curve,
    mask_auroc,
    mask_energy,
    mean_ci,
    perturbation_curve,
    pointing_game,
    randomisation_check,
)
from caap_lens.stats import spearman
from caap_lens.sweeps import all_windows, window_sweep

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "results.md"

# key -> (column label, direction: +1 higher is better, -1 lower is better)
METRICS: dict[str, tuple[str, int]] = {
    "deletion": ("deletion AUC", -1),
    "insertion": ("insertion AUC", +1),
    "positive": ("pos. perturbation AUC", -1),
    "negative": ("neg. perturbation AUC", +1),
    "pointing": ("pointing game", +1),
    "energy": ("mask energy", +1),
    "auroc": ("mask AUROC", +1),
}
LOCALISATION = ("pointing", "energy", "auroc")
GRID_METRICS = ("deletion", "insertion", "pointing", "auroc")
GRID_CONTEXTS = ("mean", "black", "blur", "noise", "mean_activation")
SANITY_METHODS = ("caap", "gradcam", "integrated_gradients", "rollout")
RANDOM = "random (reference)"


def sigmoid_prob(output: Tensor, target: Tensor) -> Tensor:
    """The target's sigmoid probability: the bundled model's own output semantics (multi-label)."""
    return torch.sigmoid(output.float()).gather(1, target.to(output.device).long()[:, None]).squeeze(1)


def direction_word(key: str) -> str:
    return "higher is better" if METRICS[key][1] > 0 else "lower is better"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ pairs
@dataclass
class Pairs:
    """Every (scene, target class present in it) pair, as one batch.

    Attributes:
        images: Normalised images ``[P, C, H, W]`` (a scene repeats once per class it holds).
        targets: Target class per pair ``[P]``.
        masks: Bool ground-truth mask of the target class ``[P, H, W]``.
        scene: Scene index per pair ``[P]``.
        n_scenes: Number of scenes used.
    """

    images: Tensor
    targets: Tensor
    masks: Tensor
    scene: Tensor
    n_scenes: int

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def subset(self, n: int) -> Pairs:
        """The first ``n`` pairs."""
        return Pairs(self.images[:n], self.targets[:n], self.masks[:n], self.scene[:n],
                     int(self.scene[:n].unique().numel()))


def make_pairs(model: Any, scenes: Any, limit: int | None = None) -> Pairs:
    """One pair per (scene, class present in its multi-hot label), scenes in order, classes ascending."""
    n = len(scenes) if limit is None else min(int(limit), len(scenes))
    rows, targets, masks = [], [], []
    for i in range(n):
        for cls in np.flatnonzero(scenes.labels[i] > 0.5):
            rows.append(i)
            targets.append(int(cls))
            masks.append(torch.from_numpy(np.ascontiguousarray(scenes.class_mask(i, int(cls)))))
    if not rows:
        raise ValueError("no (scene, class) pairs: the scenes have no positive labels")
    images = model.preprocess(scenes.images[:n])
    scene = torch.tensor(rows, dtype=torch.long)
    return Pairs(images=images[scene.to(images.device)], targets=torch.tensor(targets, dtype=torch.long),
                 masks=torch.stack(masks).bool(), scene=scene, n_scenes=n)


# ------------------------------------------------------------------------------------------- maps
def method_options(name: str, batch_size: int, rise_masks: int, ig_steps: int) -> dict[str, Any]:
    """The options each method runs with (defaults otherwise; see `caap_lens.baselines`)."""
    if name == "rise":
        return {"n_masks": rise_masks, "score": sigmoid_prob, "batch_size": batch_size}
    if name == "integrated_gradients":
        return {"n_steps": ig_steps, "internal_batch_size": batch_size}
    if name in ("caap", "occlusion"):
        return {"batch_size": batch_size}
    return {}


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def compute_maps(
    model: Any,
    pairs: Pairs,
    methods: Sequence[str],
    *,
    chunk: int = 16,
    options: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Patch maps ``[P, gh, gw]`` of every method and its mean wall time per pair (`Attribution.seconds`)."""
    options = options or {}
    maps: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    for name in methods:
        parts, total = [], 0.0
        for s in chunks(len(pairs), chunk):
            result = attribute(name, model, pairs.images[s], pairs.targets[s], **options.get(name, {}))
            parts.append(result.map)
            total += result.seconds
        maps[name] = torch.cat(parts)
        seconds[name] = total / len(pairs)
        log(f"  {name:<26} {1000 * seconds[name]:8.1f} ms/image")
    return maps, seconds


def random_maps(model: Any, n: int, seed: int = 0) -> Tensor:
    """Uniform random patch maps (a reference row: what no information scores)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *model.grid.grid_size, generator=gen)


# ---------------------------------------------------------------------------------------- metrics
def score_maps(
    model: Any,
    pairs: Pairs,
    maps: Tensor,
    *,
    score: Any = sigmoid_prob,
    batch_size: int = 256,
    steps: int | None = None,
    which: Sequence[str] = tuple(METRICS),
) -> dict[str, Tensor]:
    """Per-pair values ``[P]`` of the metrics in ``which`` for one set of patch maps."""
    out: dict[str, Tensor] = {}
    x, t = pairs.images, pairs.targets
    common = {"score": score, "batch_size": batch_size, "unit": "patch"}
    if "deletion" in which:
        out["deletion"] = deletion_curve(model, x, maps, t, steps=steps, **common).auc.float()
    if "insertion" in which:
        out["insertion"] = insertion_curve(model, x, maps, t, steps=steps, **common).auc.float()
    if "positive" in which:
        out["positive"] = perturbation_curve(model, x, maps, t, positive=True, **common).auc.float()
    if "negative" in which:
        out["negative"] = perturbation_curve(model, x, maps, t, positive=False, **common).auc.float()
    if "pointing" in which:
        out["pointing"] = pointing_game(maps, pairs.masks, grid=model).float()
    if "energy" in which:
        out["energy"] = mask_energy(maps, pairs.masks, grid=model).float()
    if "auroc" in which:
        out["auroc"] = mask_auroc(maps, pairs.masks, grid=model).float()
    return out


def ci(values: Tensor) -> dict[str, float]:
    """``{"mean", "lo", "hi", "n"}`` with a 95% t interval (NaNs dropped); NaN everywhere if none is left."""
    n = int((~torch.isnan(values.double())).sum())
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    mean, lo, hi = mean_ci(values)
    return {"mean": mean, "lo": lo, "hi": hi, "n": n}


def rank_methods(summary: dict[str, dict[str, dict[str, float]]], methods: Sequence[str]) -> dict[str, dict[str, int]]:
    """``ranks[metric][method]``: 1 = best, by the mean and the metric's direction (NaN last)."""
    ranks: dict[str, dict[str, int]] = {}
    for key, (_, direction) in METRICS.items():
        present = [m for m in methods if key in summary[m]]
        if not present:
            continue

        def sort_key(m: str, key: str = key, direction: int = direction) -> float:
            v = summary[m][key]["mean"]
            return math.inf if math.isnan(v) else -direction * v

        keys = {m: sort_key(m) for m in present}
        # competition ranking: equal means share a rank ("1, 2, 2, 4"), e.g. rollout = raw attention on 1 block
        ranks[key] = {m: 1 + sum(1 for o in present if keys[o] < keys[m]) for m in present}
    return ranks


def summarise(values: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, dict[str, float]]]:
    """``summary[method][metric] = {"mean", "lo", "hi", "n"}``."""
    return {m: {k: ci(v) for k, v in per.items()} for m, per in values.items()}


def paired_difference(a: Tensor, b: Tensor) -> dict[str, float]:
    """Mean of ``a - b`` over pairs where both are defined, with a 95% t interval."""
    return ci(a.double() - b.double())


# ------------------------------------------------------------------------------------------- grid
def grid_windows(n_layers: int) -> list[tuple[int, int]]:
    """All windows for a model of at most 6 layers; else single layers plus a few multi-layer windows."""
    if n_layers <= 6:
        return all_windows(n_layers)
    singles = [(layer, layer + 1) for layer in range(n_layers)]
    third = n_layers // 3
    extra = [default_window(n_layers), (0, n_layers), (0, third), (2 * third, n_layers), (0, n_layers // 2),
             (n_layers // 2, n_layers)]
    return singles + [w for i, w in enumerate(extra) if w not in singles and w not in extra[:i]]


def grid_context(name: str, reference: Tensor) -> Any:
    """A context object; ``mean_activation`` averages over a fixed reference set (not over the batch)."""
    if name == "mean_activation":
        return MeanActivationContext(reference=reference)
    return resolve_context(name)


def run_grid(
    model: Any,
    pairs: Pairs,
    *,
    windows: Sequence[tuple[int, int]],
    contexts: Sequence[str] = GRID_CONTEXTS,
    reference: Tensor,
    chunk: int = 16,
    batch_size: int = 256,
    steps: int | None = None,
    score: Any = sigmoid_prob,
) -> dict[str, Any]:
    """CAAP (logit score) for every (window, context): metric summaries and AtP's Spearman to it.

    Returns ``{"windows", "contexts", "cells": {"start-stop|context": {metric: ci, "atp_spearman": ci,
    "seconds_per_image": float}}}``.
    """
    cells: dict[str, dict[str, Any]] = {}
    for context in contexts:
        ctx = grid_context(context, reference)
        parts, atp_rho, seconds = [], {w: [] for w in windows}, 0.0
        for s in chunks(len(pairs), chunk):
            t0 = time.perf_counter()
            sweep = window_sweep(model, pairs.images[s], pairs.targets[s], list(windows), context=ctx,
                                 batch_size=batch_size)
            seconds += time.perf_counter() - t0
            parts.append(sweep.maps.float().cpu())
            for wi, w in enumerate(windows):  # attribution patching, same window/context: one fwd + bwd
                atp = attribute("attribution_patching", model, pairs.images[s], pairs.targets[s], layers=w,
                                context=ctx).map
                atp_rho[w].append(spearman(atp.flatten(1), sweep.maps[wi].float().cpu().flatten(1)))
        maps = torch.cat(parts, dim=1)  # [n_windows, P, gh, gw]
        for wi, w in enumerate(windows):
            values = score_maps(model, pairs, maps[wi], score=score, batch_size=batch_size, steps=steps,
                                which=GRID_METRICS)
            cell = {k: ci(v) for k, v in values.items()}
            cell["atp_spearman"] = ci(torch.cat(atp_rho[w]).float())
            cell["seconds_per_image"] = seconds / len(pairs)  # the whole sweep of this context
            cells[f"{w[0]}-{w[1]}|{context}"] = cell
        log(f"  grid context {context:<16} done ({seconds / len(pairs) * 1000:.0f} ms/image for all windows)")
    return {"windows": [list(w) for w in windows], "contexts": list(contexts), "cells": cells}


# -------------------------------------------------------------------------------------- fidelity
def run_fidelity(model: Any, pairs: Pairs, *, window: tuple[int, int], chunk: int = 16,
                 batch_size: int = 256) -> dict[str, Any]:
    """`fidelity` (AtP vs exact CAAP, relative, context "mean", logit score) over all pairs."""
    rho, r, caap_s, atp_s = [], [], 0.0, 0.0
    for s in chunks(len(pairs), chunk):
        f = fidelity(model, pairs.images[s], pairs.targets[s], layers=window, context="mean", batch_size=batch_size)
        rho.append(f["spearman"].float())
        r.append(f["pearson"].float())
        caap_s += f["caap"].seconds
        atp_s += f["atp"].seconds
    rho_t, r_t = torch.cat(rho), torch.cat(r)
    return {"window": list(window), "context": "mean", "spearman": ci(rho_t), "pearson": ci(r_t),
            "speedup": caap_s / max(atp_s, 1e-12), "n_pairs": len(pairs)}


# ---------------------------------------------------------------------------------------- sanity
def run_sanity(model: Any, pairs: Pairs, methods: Sequence[str], *, options: dict[str, dict[str, Any]],
               seed: int = 0) -> dict[str, Any]:
    """Cascading model randomisation (top block down to all blocks, head always) per method."""
    out: dict[str, Any] = {}
    for name in methods:
        opts = options.get(name, {})

        def fn(m: Any, x: Tensor, t: Tensor, name: str = name, opts: dict = opts) -> Tensor:
            return attribute(name, m, x, t, **opts).map

        report = randomisation_check(fn, model, pairs.images, pairs.targets, seed=seed)
        out[name] = {
            "from_layers": list(report["from_layers"]),
            "mean_spearman": [float(v) for v in report["mean_spearman"]],
            "mean_top_overlap": [float(v) for v in report["top_overlap"].nanmean(dim=1)],
            "threshold": report["threshold"],
        }
        log(f"  sanity {name:<22} mean Spearman per stage {[f'{v:.2f}' for v in out[name]['mean_spearman']]}")
    return out


# ------------------------------------------------------------------------------------ the pipeline
@dataclass
class Settings:
    methods: list[str]
    batch_size: int = 256
    chunk: int = 16
    rise_masks: int = 1000
    ig_steps: int = 32
    skip_grid: bool = False
    grid_steps: int | None = None
    grid_limit: int | None = 50
    sanity_methods: list[str] = field(default_factory=lambda: list(SANITY_METHODS))
    sanity_pairs: int = 12
    random_reference: bool = True


def run_comparison(model: Any, scenes: Any, settings: Settings, limit: int | None = None) -> dict[str, Any]:
    """The whole benchmark on one model and scene set; returns a JSON-serialisable dict."""
    t_start = time.perf_counter()
    pairs = make_pairs(model, scenes, limit)
    log(f"{pairs.n_scenes} scenes, {len(pairs)} (scene, target) pairs")
    options = {m: method_options(m, settings.batch_size, settings.rise_masks, settings.ig_steps)
               for m in settings.methods}
    with torch.inference_mode():
        logits = torch.cat([model(pairs.images[s]).float().cpu() for s in chunks(len(pairs), 256)])
    target_prob = sigmoid_prob(logits, pairs.targets)

    log("attribution maps")
    maps, seconds = compute_maps(model, pairs, settings.methods, chunk=settings.chunk, options=options)
    if settings.random_reference:
        maps[RANDOM] = random_maps(model, len(pairs))
    log("metrics")
    per_pair: dict[str, dict[str, Tensor]] = {}
    for name, m in maps.items():
        t0 = time.perf_counter()
        per_pair[name] = score_maps(model, pairs, m, batch_size=settings.batch_size)
        log(f"  {name:<26} scored in {time.perf_counter() - t0:.1f}s")
    summary = summarise(per_pair)
    ranks = rank_methods(summary, settings.methods)
    chance = chance_level(pairs.masks).float()
    results: dict[str, Any] = {
        "n_scenes": pairs.n_scenes,
        "n_scenes_available": len(scenes),
        "n_pairs": len(pairs),
        "grid_size": list(model.grid.grid_size),
        "methods": list(settings.methods),
        "random_reference": settings.random_reference,
        "summary": summary,
        "ranks": ranks,
        "seconds_per_image": seconds,
        "chance": {"pointing": ci(chance), "energy": ci(chance), "auroc": {"mean": 0.5, "lo": 0.5, "hi": 0.5}},
        "target_detected": int((target_prob > 0.5).sum()),
        "target_prob_mean": float(target_prob.mean()),
        "options": {m: {k: (getattr(v, "__name__", v)) for k, v in o.items()} for m, o in options.items()},
        "settings": {k: v for k, v in vars(settings).items()},
    }
    if "caap" in settings.methods:
        results["caap_vs_best"] = {}
        for key in ranks:
            best = min(ranks[key], key=ranks[key].get)
            results["caap_vs_best"][key] = {
                "best": best,
                "diff": paired_difference(per_pair["caap"][key], per_pair[best][key]) if best != "caap" else None,
            }
    if settings.random_reference:
        results["vs_random"] = {m: {k: paired_difference(per_pair[m][k], per_pair[RANDOM][k]) for k in METRICS}
                                for m in settings.methods}
    results["per_pair"] = {
        "scene": pairs.scene.tolist(),
        "target": pairs.targets.tolist(),
        "values": {m: {k: [None if math.isnan(x) else round(x, 6) for x in v.tolist()] for k, v in per.items()}
                   for m, per in per_pair.items()},
    }

    window = default_window(model.cfg.n_layers)
    results["default_window"] = list(window)
    if not settings.skip_grid:
        grid_pairs = pairs if settings.grid_limit is None else pairs_of_scenes(pairs, settings.grid_limit)
        windows = grid_windows(model.cfg.n_layers)
        log(f"window x context grid: {len(windows)} windows x {len(GRID_CONTEXTS)} contexts on {len(grid_pairs)} pairs")
        reference = model.preprocess(scenes.images)
        results["grid"] = run_grid(model, grid_pairs, windows=windows, reference=reference, chunk=settings.chunk,
                                   batch_size=settings.batch_size, steps=settings.grid_steps)
        results["grid"]["n_pairs"] = len(grid_pairs)
        k = len(grid_pairs)  # the grid's pairs are the first k: baselines on exactly those, for comparison
        results["grid"]["baseline_means"] = {m: {key: ci(per_pair[m][key][:k])["mean"] for key in GRID_METRICS}
                                             for m in settings.methods}
        results["grid"]["steps"] = settings.grid_steps
    log(f"fidelity of attribution patching, window {window}")
    results["fidelity"] = run_fidelity(model, pairs, window=window, chunk=settings.chunk,
                                       batch_size=settings.batch_size)
    sanity_methods = [m for m in settings.sanity_methods if m in METHODS]
    if sanity_methods and settings.sanity_pairs > 0:
        sanity_pairs = pairs.subset(min(settings.sanity_pairs, len(pairs)))
        log(f"model randomisation check on {len(sanity_pairs)} pairs: {', '.join(sanity_methods)}")
        results["sanity"] = run_sanity(model, sanity_pairs, sanity_methods, options=options | {
            m: method_options(m, settings.batch_size, settings.rise_masks, settings.ig_steps) for m in sanity_methods})
        results["sanity_pairs"] = len(sanity_pairs)
    results["wall_seconds"] = time.perf_counter() - t_start
    return results


def pairs_of_scenes(pairs: Pairs, n_scenes: int) -> Pairs:
    """The pairs of the first ``n_scenes`` scenes."""
    keep = int((pairs.scene < pairs.scene.unique()[:n_scenes].max() + 1).sum())
    return pairs.subset(keep)


# ------------------------------------------------------------------------------------- rendering
def fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def fmt_ci(c: dict[str, float], digits: int = 3, small: bool = False) -> str:
    """``mean [lo, hi]``; with ``small``, values under 0.01 in size switch to scientific notation."""
    if math.isnan(c["mean"]):
        return "n/a"
    spec = f".{digits}f"
    if small and max(abs(c["mean"]), abs(c["lo"]) if not math.isnan(c["lo"]) else 0,
                     abs(c["hi"]) if not math.isnan(c["hi"]) else 0) < 0.01:
        spec = ".1e"
    if math.isnan(c["lo"]):
        return format(c["mean"], spec)
    return f"{c['mean']:{spec}} [{c['lo']:{spec}}, {c['hi']:{spec}}]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main_table(results: dict[str, Any], bold: bool = True) -> str:
    summary, ranks = results["summary"], results["ranks"]
    methods = list(results["methods"]) + ([RANDOM] if results.get("random_reference") else [])
    header = ["method"] + [f"{METRICS[k][0]} {'↓' if METRICS[k][1] < 0 else '↑'}" for k in METRICS] + ["ms / image"]
    rows = []
    for m in methods:
        row = [f"*{m}*" if m == RANDOM else f"`{m}`"]
        for key in METRICS:
            cell = fmt_ci(summary[m][key])
            if bold and ranks.get(key, {}).get(m) == 1:
                cell = f"**{cell}**"
            row.append(cell)
        sec = results["seconds_per_image"].get(m)
        row.append(fmt(1000 * sec, 1) if sec is not None else "—")
        rows.append(row)
    chance = results["chance"]
    rows.append(["*chance level*"] + ["—"] * 4 + [fmt(chance["pointing"]["mean"]), fmt(chance["energy"]["mean"]),
                                                  fmt(0.5)] + ["—"])
    return table(header, rows)


def caap_rank_lines(results: dict[str, Any]) -> list[str]:
    if "caap" not in results["methods"]:
        return []
    n = len(results["methods"])
    lines = []
    for key, r in results["ranks"].items():
        rank = r["caap"]
        best = results["caap_vs_best"][key]["best"]
        label = f"{METRICS[key][0]} ({direction_word(key)})"
        caap_v = fmt_ci(results["summary"]["caap"][key])
        if rank == 1:
            tied = [f"`{m}`" for m, k in r.items() if k == 1 and m != "caap"]
            runner = sorted((k, m) for m, k in r.items() if k > 1)
            extra = f"; tied with {', '.join(tied)}" if tied else ""
            if runner:
                d = results["summary"][runner[0][1]][key]["mean"]
                extra += f"; next: `{runner[0][1]}` {fmt(d)}"
            lines.append(f"- {label}: CAAP ranks **1st of {n}** ({caap_v}{extra}).")
        else:
            diff = results["caap_vs_best"][key]["diff"]
            sig = ("the 95% CI of the paired difference excludes 0" if diff and not math.isnan(diff["lo"])
                   and (diff["lo"] > 0 or diff["hi"] < 0) else "the 95% CI of the paired difference includes 0")
            lines.append(f"- {label}: CAAP ranks **{ordinal(rank)} of {n}** ({caap_v}); best is `{best}` "
                         f"({fmt_ci(results['summary'][best][key])}); CAAP − best = {fmt_ci(diff, small=True)} ({sig}).")
    return lines


def grid_tables(results: dict[str, Any]) -> list[str]:
    grid = results["grid"]
    windows = [tuple(w) for w in grid["windows"]]
    contexts = grid["contexts"]
    default = tuple(results["default_window"])
    out = []
    for key in list(GRID_METRICS) + ["atp_spearman"]:
        label = "AtP Spearman to exact CAAP" if key == "atp_spearman" else f"{METRICS[key][0]} ({direction_word(key)})"
        direction = +1 if key == "atp_spearman" else METRICS[key][1]
        values = {(w, c): grid["cells"][f"{w[0]}-{w[1]}|{c}"][key]["mean"] for w in windows for c in contexts}
        finite = [v for v in values.values() if not math.isnan(v)]
        best = (max(finite) if direction > 0 else min(finite)) if finite else math.nan
        rows = []
        for w in windows:
            name = f"[{w[0]}, {w[1]})" + (" (default)" if w == default else "")
            cells = []
            for c in contexts:
                v = values[(w, c)]
                s = fmt(v)
                cells.append(f"**{s}**" if v == best and key != "atp_spearman" else s)
            rows.append([name] + cells)
        out.append(f"**{label}**\n\n" + table(["window \\ context"] + list(contexts), rows))
    return out


def grid_summary_lines(results: dict[str, Any]) -> list[str]:
    grid = results["grid"]
    default_key = f"{results['default_window'][0]}-{results['default_window'][1]}|mean"
    n_cells = len(grid["cells"])
    lines = []
    for key in GRID_METRICS:
        direction = METRICS[key][1]
        items = [(k, c[key]["mean"]) for k, c in grid["cells"].items() if not math.isnan(c[key]["mean"])]
        if not items:
            continue
        items.sort(key=lambda kv: -direction * kv[1])
        (best_k, best_v), (worst_k, worst_v) = items[0], items[-1]
        default_v = grid["cells"][default_key][key]["mean"]
        default_rank = 1 + sum(1 for _, v in items if -direction * v < -direction * default_v)
        n_best = sum(1 for _, v in items if v == best_v) - 1
        n_worst = sum(1 for _, v in items if v == worst_v) - 1
        line = (f"- {METRICS[key][0]} ({direction_word(key)}) spans {fmt(min(best_v, worst_v))}–"
                f"{fmt(max(best_v, worst_v))} over the {n_cells} settings; the default (window "
                f"{tuple(results['default_window'])}, context mean) scores {fmt(default_v)} "
                f"({ordinal(default_rank)} of {len(items)}); best: {cell_name(best_k)}"
                + (f" (tied with {n_best} more)" if n_best else "")
                + f", worst: {cell_name(worst_k)}" + (f" (tied with {n_worst} more)" if n_worst else "") + ".")
        means = grid.get("baseline_means", {})
        ranked = [m for m in means if m != "caap" and not math.isnan(means[m][key])]
        if ranked:
            baseline_best = min(ranked, key=lambda m: -direction * means[m][key])
            bv = means[baseline_best][key]
            beats = sum(1 for _, v in items if -direction * v < -direction * bv)
            line += (f" The best baseline on the same pairs, `{baseline_best}`, scores {fmt(bv)}: {beats} of "
                     f"{len(items)} CAAP settings beat it.")
        lines.append(line)
    return lines


def cell_name(key: str) -> str:
    window, context = key.split("|")
    a, b = window.split("-")
    return f"window [{a}, {b}) with context {context}"


def reading_lines(results: dict[str, Any]) -> list[str]:
    """Sentences generated from the numbers; nothing here is written by hand."""
    lines: list[str] = []
    methods, ranks, summary = results["methods"], results["ranks"], results["summary"]
    n = len(methods)
    if "caap" in methods:
        wins = [k for k in ranks if ranks[k]["caap"] == 1]
        losses = [k for k in ranks if ranks[k]["caap"] != 1]
        if wins:
            lines.append(f"CAAP is best of {n} methods on {len(wins)} of {len(ranks)} metrics: "
                         + ", ".join(METRICS[k][0] for k in wins) + ".")
        else:
            lines.append(f"CAAP is not the best of the {n} methods on any of the {len(ranks)} metrics.")
        if losses:
            parts = [f"{METRICS[k][0]} ({ordinal(ranks[k]['caap'])}, behind `{results['caap_vs_best'][k]['best']}`)"
                     for k in losses]
            lines.append("CAAP does not win on: " + "; ".join(parts) + ".")
        mean_rank = sum(ranks[k]["caap"] for k in ranks) / len(ranks)
        others = sorted((sum(ranks[k][m] for k in ranks) / len(ranks), m) for m in methods)
        position = 1 + sum(1 for r, m in others if r < mean_rank)
        lines.append(f"Averaged over the {len(ranks)} metrics CAAP's rank is {mean_rank:.1f} "
                     f"({ordinal(position)} lowest mean rank of {n}; lowest: `{others[0][1]}` at {others[0][0]:.1f}).")
    if results.get("vs_random"):
        # "clearly" = the 95% CI of the paired difference to the random maps excludes 0
        def side(m: str, k: str) -> int:
            d = results["vs_random"][m][k]
            if math.isnan(d["lo"]):
                return 0
            signed = (d["lo"] > 0) - (d["hi"] < 0)
            return signed * METRICS[k][1]  # +1 clearly better than random, -1 clearly worse

        if "caap" in methods:
            better = [k for k in METRICS if side("caap", k) > 0]
            lines.append(f"CAAP is clearly better than random patch maps (paired 95% CI of the difference excludes "
                         f"0) on {len(better)} of {len(METRICS)} metrics"
                         + (": " + ", ".join(METRICS[k][0] for k in better) if better else "") + ".")
        worse = {k: [m for m in methods if side(m, k) < 0] for k in METRICS}
        flagged = [f"{METRICS[k][0]}: " + ", ".join(f"`{m}`" for m in ms) for k, ms in worse.items() if ms]
        if flagged:
            lines.append("Clearly worse than random patch maps (paired 95% CI excludes 0): " + "; ".join(flagged) + ".")
        else:
            lines.append("No method is clearly worse than random patch maps on any metric (paired 95% CIs).")
    chance = results["chance"]
    for key in LOCALISATION:
        below = [m for m in methods if summary[m][key]["mean"] <= chance[key]["mean"]]
        if below:
            lines.append(f"On {METRICS[key][0]}, at or below chance ({fmt(chance[key]['mean'])}): "
                         + ", ".join(f"`{m}`" for m in below) + ".")
    secs = results["seconds_per_image"]
    if "caap" in secs and len(secs) > 1:
        order = sorted(secs, key=secs.get)
        lines.append(f"CAAP takes {1000 * secs['caap']:.1f} ms per image ({ordinal(order.index('caap') + 1)} fastest "
                     f"of {len(order)}; fastest `{order[0]}` {1000 * secs[order[0]]:.1f} ms, slowest `{order[-1]}` "
                     f"{1000 * secs[order[-1]]:.1f} ms).")
    fid = results.get("fidelity")
    if fid:
        lines.append(f"Attribution patching orders patches like exact CAAP with mean Spearman "
                     f"{fmt_ci(fid['spearman'])} (window {tuple(fid['window'])}), at {fid['speedup']:.1f}x less time.")
    sanity = results.get("sanity")
    if sanity:
        head_only = [m for m, rep in sanity.items()
                     if rep["from_layers"][0] >= 1 and rep["mean_spearman"][0] >= rep["threshold"]]
        cut = next(iter(sanity.values()))["threshold"]
        if head_only:
            lines.append("Re-initialising only the classifier head leaves the maps of "
                         + ", ".join(f"`{m}`" for m in head_only)
                         + f" largely unchanged (mean Spearman ≥ {cut}): they barely depend on the head.")
        full = {m: rep["mean_spearman"][-1] for m, rep in sanity.items()}
        kept = [m for m, v in full.items() if v >= cut]
        lines.append("With every block and the head re-initialised, the maps keep mean Spearman "
                     + ", ".join(f"{fmt(v, 2)} (`{m}`)" for m, v in full.items()) + " with the originals; "
                     + (("at or above the cut " + str(cut) + ", i.e. failing the check: "
                         + ", ".join(f"`{m}`" for m in kept)) if kept else f"all below the cut {cut}") + ".")
    lines.append(f"The model detects the target (sigmoid > 0.5) in {results['target_detected']} of "
                 f"{results['n_pairs']} pairs (mean target probability {results['target_prob_mean']:.3f}); "
                 "attributions explain this model's scores, good or bad.")
    return lines


def render_markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    r = results
    subset = r["n_scenes"] < r["n_scenes_available"]
    parts = [
        "# Attribution methods compared on the bundled model",
        "",
        "*Generated by `benchmarks/compare_methods.py`; do not edit by hand — rerun the command below.*",
        "",
    ]
    if subset:
        parts += [(f"> **Subset run**: {r['n_scenes']} of {r['n_scenes_available']} bundled scenes. "
                   "Numbers are indicative only."), ""]
    gh, gw = r["grid_size"]
    random_note = f"*{RANDOM}* is a uniform random map per pair, not ranked. " if r.get("random_reference") else ""
    parts += [
        "## Setup",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}; torch {meta['torch']}, {meta['threads']} thread(s); device {meta['device']}",
        f"- model: `{meta['model']}` — {meta['model_desc']}",
        (f"- data: {r['n_scenes']} held-out scenes, every class present in a scene as a target: "
         f"**{r['n_pairs']} (scene, target) pairs**"),
        f"- wall time: {r['wall_seconds'] / 60:.1f} min ({r['wall_seconds'] / r['n_scenes']:.1f} s per scene)",
        "",
        "Protocol:",
        "",
        (f"- Every method gives a patch map on the model's {gh}×{gw} grid (pixel-level methods — integrated "
         "gradients, RISE — are averaged per patch); all metrics use patch maps."),
        ("- **Score.** The bundled model is multi-label: each class has an independent sigmoid. The curves "
         "therefore score the target's **sigmoid probability**, "
         "`torch.sigmoid(out.float()).gather(1, t[:, None]).squeeze(1)`, not the softmax probability RISE "
         "uses for single-label models. Chefer et al.'s perturbation test normally scores top-1 accuracy "
         "(the argmax is still the target); with several classes present that is ill-posed, so it uses the "
         "same continuous sigmoid score. The attribution methods themselves score the target logit (the "
         "sigmoid's argument, so the same ranking of outcomes), except RISE, which weights its masks by the "
         "sigmoid probability."),
        (f"- **Deletion / insertion** (Petsiuk et al. 2018): one patch per step ({gh * gw + 1} points), substrate "
         "`mean` (a zero normalised input) for deletion and `blur` for insertion; AUC by the trapezoid rule "
         "over x ∈ [0, 1]."),
        ("- **Positive / negative perturbation** (Chefer et al. 2021): the top / bottom 0, 10, …, 90 % of "
         "patches set to black; AUC over x ∈ [0, 0.9], not normalised."),
        ("- **Localisation** against the target class's ground-truth mask: pointing game (maximal patch "
         "inside the mask; ties counted fractionally), mask energy (share of positive mass inside), mask "
         "AUROC. Chance: the mask's area fraction for the first two, 0.5 for AUROC."),
        ("- Mean over pairs with a 95 % Student-t interval; ↓ lower is better, ↑ higher is better; the best "
         f"method per column in bold (equal means share a rank). {random_note}"
         "Time is `Attribution.seconds` per image (target resolution plus the method)."),
        (f"- Method options: {method_options_text(r)}. CAAP: window {tuple(r['default_window'])} (the default "
         "middle third), context `mean`, hook `resid_pre`, logit score."),
        "",
        "## Main table",
        "",
        main_table(r),
        "",
    ]
    lines = caap_rank_lines(r)
    if lines:
        parts += ["## CAAP's rank per metric", "", *lines, ""]
    if "grid" in r:
        g = r["grid"]
        parts += [
            "## CAAP's open choices: window × neutral context",
            "",
            f"CAAP maps (logit score, hook `resid_pre`) for {len(g['windows'])} windows × {len(g['contexts'])} "
            f"contexts on {g['n_pairs']} pairs"
            + (f", curves with {g['steps']} steps" if g.get("steps") else "")
            + ". Windows are `[start, stop)` block ranges; `mean_activation` uses the mean residual "
            f"over all {r['n_scenes_available']} bundled scenes as its reference. Means only "
            "(the best cell per metric in bold); the last table is attribution patching's Spearman "
            "correlation with exact CAAP for the same window and context.",
            "",
            *grid_summary_lines(r),
            "",
            "Note: picking the best cell on the same scenes it is scored on is selection, not a held-out result.",
            "",
            *[t + "\n" for t in grid_tables(r)],
        ]
    if "fidelity" in r:
        f = r["fidelity"]
        parts += [
            "## Attribution patching vs exact CAAP",
            "",
            (f"`caap_lens.baselines.fidelity` on all {f['n_pairs']} pairs, window {tuple(f['window'])}, context "
             f"`{f['context']}`, logit score: Spearman {fmt_ci(f['spearman'])}, Pearson {fmt_ci(f['pearson'])}; "
             f"AtP takes 1/{f['speedup']:.1f} of exact CAAP's time."),
            "",
        ]
    if "sanity" in r:
        s = r["sanity"]
        stages = next(iter(s.values()))["from_layers"]
        header = ["method"] + [f"blocks ≥ {k} + head" if k < stages[0] else "head only" for k in stages]
        rows = [[f"`{m}`"] + [fmt(v, 2) for v in rep["mean_spearman"]] for m, rep in s.items()]
        parts += [
            "## Model-randomisation sanity check",
            "",
            (f"Adebayo et al. 2018, cascading: blocks re-initialised from the top down (the head at every stage), "
             f"{r['sanity_pairs']} pairs, same targets. Mean Spearman correlation between the original and the "
             "randomised model's maps (lower = the map depends more on the weights):"),
            "",
            table(header, rows),
            "",
        ]
    parts += ["## Reading the table", "", "*Generated from the numbers above.*", "",
              *[f"- {line}" for line in reading_lines(r)], ""]
    return "\n".join(parts)


def method_options_text(r: dict[str, Any]) -> str:
    bits = []
    for m, o in r["options"].items():
        shown = {k: v for k, v in o.items() if k not in ("batch_size", "internal_batch_size")}
        if shown:
            bits.append(f"`{m}` " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    return "; ".join(bits) + "; others at their defaults" if bits else "all at their defaults"


# ------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="fashion-scenes-vit", help="bundled model name")
    p.add_argument("--limit", type=int, default=None, help="use the first N scenes (default: all bundled scenes)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all in METHODS)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--chunk", type=int, default=16, help="(scene, target) pairs per attribution call")
    p.add_argument("--rise-masks", type=int, default=1000, help="RISE masks per image")
    p.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients steps")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report")
    p.add_argument("--json", type=Path, default=None, help="also write every number (per pair too) as JSON")
    p.add_argument("--skip-grid", action="store_true", help="skip the window x context grid")
    p.add_argument("--grid-limit", type=int, default=50,
                   help="first N scenes in the grid (it costs ~2.5x the main table per pair); 0 = as --limit")
    p.add_argument("--grid-steps", type=int, default=None,
                   help="deletion/insertion steps in the grid (default: one patch per step)")
    p.add_argument("--sanity-methods", default=",".join(SANITY_METHODS), help="methods for the randomisation check")
    p.add_argument("--sanity-pairs", type=int, default=12, help="pairs for the randomisation check (0 skips it)")
    p.add_argument("--no-random", action="store_true", help="no random-map reference row")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def model_description(name: str, model: Any) -> str:
    try:
        from caap_lens.loading.bundled import bundled_config

        cfg = bundled_config(name)
        k, m = cfg["timm_kwargs"], cfg.get("metrics", {})
        desc = (f"ViT, depth {k['depth']}, width {k['embed_dim']}, {k['num_heads']} heads, {k['img_size']}px input, "
                f"patch {k['patch_size']}, {k['num_classes']} sigmoid outputs; test mAP "
                f"{m.get('test_map', float('nan')):.3f} on {m.get('test_scenes', '?')} scenes "
                f"(mAP {m.get('bundled_map', float('nan')):.3f} on the {m.get('bundled_scenes', '?')} bundled scenes), "
                "from its `config.json`")
        command = cfg.get("training", {}).get("command")
        return desc + (f"; trained with `{command}`" if command else "")
    except Exception:  # noqa: BLE001 - any model works; the description is best effort
        return f"{model.cfg.n_layers} layers, grid {model.grid.grid_size}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from caap_lens.loading.bundled import load_bundled, load_bundled_scenes

    methods = list(METHODS) if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    model = load_bundled(args.model, device=args.device)
    scenes = load_bundled_scenes(args.model)
    settings = Settings(
        methods=methods, batch_size=args.batch_size, chunk=args.chunk, rise_masks=args.rise_masks,
        ig_steps=args.ig_steps, skip_grid=args.skip_grid, grid_steps=args.grid_steps,
        grid_limit=args.grid_limit or None, sanity_methods=[m for m in args.sanity_methods.split(",") if m],
        sanity_pairs=args.sanity_pairs, random_reference=not args.no_random,
    )
    results = run_comparison(model, scenes, settings, limit=args.limit)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    meta = {
        "command": " ".join(["python benchmarks/compare_methods.py", *map(shlex.quote, argv_list)]),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs ({platform.processor() or platform.system()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "model": args.model,
        "model_desc": model_description(args.model, model),
    }
    results["meta"] = meta
    markdown = render_markdown(results, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=float))
    print(main_table(results, bold=False))
    print()
    print("\n".join(caap_rank_lines(results)))
    log(f"wrote {args.out}" + (f" and {args.json}" if args.json else "")
        + f"; {results['wall_seconds']:.0f}s in all, {results['wall_seconds'] / results['n_scenes']:.1f}s per scene")
    return results


if __name__ == "__main__":
    main()

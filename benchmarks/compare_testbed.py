"""The paper's claim re-tested on the deep testbed ``fashion-scenes-dinov2`` (issue 13). Not a test.

Two stages, on disjoint scene sets (dev and test scenes share only Fashion-MNIST's *test* glyph pool):

* **dev** -- choose CAAP's window x context x hook, and rollout's start layer, on dev scenes. Every
  setting is scored by the ground-truth metrics that need no forward pass: the object-removal rank
  correlation (primary: exact causal ground truth from the generator), mask AUROC, mask energy and
  target specificity. CAAP's grid runs as fork-shared window sweeps with one map per class from the
  same patched runs. The baselines get the same kind of budget: rollout's start layer (the only tuned
  option the table's baselines have; integrated gradients chooses its steps by completeness).
* **test** -- every method x metric through `caap_lens.evaluation` on held-out test scenes, with CAAP's
  dev-chosen setting, the default setting, pixel-space insertion (window (0, 1)) and ``layers="auto"`` as
  separate rows; labelled targets the model detects (sigmoid > 0.5) and those it misses in separate
  stores, so neither hides the other.

Writes ``--out`` (the stores) and ``docs/results_testbed.json``; ``docs/results.md`` is edited by hand
from that JSON. Resumable: re-running skips what the stores hold.

Usage::

    python benchmarks/compare_testbed.py --dev-scenes 12 --test-scenes 24
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from caap_lens import HookedViT  # noqa: E402
from caap_lens.attribution.engine import caap_settings, patched_scores  # noqa: E402
from caap_lens.baselines import attribute  # noqa: E402
from caap_lens.evaluation import Item, ListSource, MethodSpec, Plan, SceneSource, evaluate, merge  # noqa: E402
from caap_lens.loading.bundled import load_bundled_scenes  # noqa: E402
from caap_lens.metrics import mask_auroc, mask_energy, object_removal, target_specificity  # noqa: E402
from caap_lens.stats import mean_ci  # noqa: E402

NAME = "fashion-scenes-dinov2"
DEV_WINDOWS = [(0, 1), (2, 4), (2, 6), (2, 8), (4, 6), (4, 8), (4, 10), (6, 8), (6, 10), (6, 12), (8, 10),
               (8, 12), (10, 12)]
DEV_CONTEXTS = ("mean", "blur")
HOOK_WINDOWS = [(2, 6), (4, 8), (6, 10)]  # other hooks are tried on these windows, mean context
DEV_HOOKS = ("attn_out", "mlp_out")
ROLLOUT_STARTS = (0, 1, 4, 8)
GT_METRICS = ("object_removal", "auroc", "energy", "target_specificity")
TEST_METRICS = ["deletion", "insertion", "positive", "negative", "pointing", "energy", "auroc", "object_removal",
                "target_specificity"]


def model_config() -> dict:
    from caap_lens.loading.bundled import bundled_config

    return bundled_config(NAME)


def machine() -> str:
    sys.path.insert(0, str(REPO / "scripts"))
    from train_default_model import machine_name

    return f"{machine_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def class_score(c: int):
    """The logit of class ``c`` whatever the row's target: one map per class from one set of patched runs."""
    def score(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return output.float()[:, c]

    score.__name__ = f"logit[{c}]"
    return score


def ground_truth(model, scenes, i: int) -> dict:
    """Per scene: the present labels, item masks, and the exact removal effect of each item per label."""
    x = model.preprocess(scenes.images[i:i + 1])
    classes = scenes.item_classes[i]
    present = np.flatnonzero(classes >= 0)
    removed = model.preprocess(scenes.removal_images[i, present])
    with torch.no_grad():
        p = torch.sigmoid(model(x).float())[0]
        p_removed = torch.sigmoid(model(removed).float())
    effects = {int(c): (p[int(c)] - p_removed[:, int(c)]).double() for c in classes[present]}
    masks = torch.from_numpy(scenes.item_masks[i, present])
    return {"x": x, "labels": [int(c) for c in classes[present]], "masks": masks, "effects": effects,
            "prob": p}


def gt_scores(model, maps_by_label: dict[int, torch.Tensor], gt: dict) -> dict[str, list[float]]:
    """The four ground-truth metrics of one scene's maps (one map per present label)."""
    out = {k: [] for k in GT_METRICS}
    masks = gt["masks"]
    for j, label in enumerate(gt["labels"]):
        m = maps_by_label[label][None]
        others = torch.cat([masks[:j], masks[j + 1:]])[None]
        out["object_removal"].append(float(object_removal(m, masks[None], gt["effects"][label][None], grid=model)[0]))
        out["auroc"].append(float(mask_auroc(m, masks[j][None], grid=model)[0]))
        out["energy"].append(float(mask_energy(m, masks[j][None], grid=model)[0]))
        out["target_specificity"].append(float(target_specificity(m, masks[j][None], others, grid=model)[0]))
    return out


def caap_grid(model, scenes, n: int) -> list[dict]:
    """Dev rows: every (window, context, hook) of the grid with its ground-truth metric values."""
    settings = [(w, c, "resid_pre") for c in DEV_CONTEXTS for w in DEV_WINDOWS]
    settings += [(w, "mean", h) for h in DEV_HOOKS for w in HOOK_WINDOWS]
    values: dict[tuple, dict[str, list[float]]] = {s: {k: [] for k in GT_METRICS} for s in settings}
    scores = [class_score(c) for c in range(model.cfg.n_classes)]
    t0 = time.perf_counter()
    for i in range(n):
        gt = ground_truth(model, scenes, i)
        for context, hook in sorted({(c, h) for _, c, h in settings}):
            windows = [w for w, c, h in settings if (c, h) == (context, hook)]
            run_settings = caap_settings(model, windows=windows, context=context, hook=hook, scores=scores,
                                         batch_size=72)
            maps = patched_scores(model, gt["x"], torch.zeros(1, dtype=torch.long), run_settings).maps
            for k, w in enumerate(windows):
                by_label = {c: maps[f"logit[{c}]"][k, 0] for c in gt["labels"]}
                for metric, v in gt_scores(model, by_label, gt).items():
                    values[(w, context, hook)][metric].extend(v)
        print(f"dev scene {i + 1}/{n} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return [{"method": "caap", "layers": list(w), "context": c, "hook": h,
             **{m: mean_ci(torch.tensor(v, dtype=torch.float64)).as_dict() for m, v in values[(w, c, h)].items()}}
            for (w, c, h) in settings]


def rollout_grid(model, scenes, n: int) -> list[dict]:
    rows = []
    for start in ROLLOUT_STARTS:
        values = {k: [] for k in GT_METRICS}
        for i in range(n):
            gt = ground_truth(model, scenes, i)
            labels = torch.tensor(gt["labels"])
            maps = attribute("rollout", model, gt["x"].expand(len(labels), -1, -1, -1), labels,
                             start_layer=start).map
            for metric, v in gt_scores(model, dict(zip(gt["labels"], maps)), gt).items():
                values[metric].extend(v)
        rows.append({"method": "rollout", "start_layer": start,
                     **{m: mean_ci(torch.tensor(v, dtype=torch.float64)).as_dict() for m, v in values.items()}})
    return rows


def _mean(cell) -> float:
    return float(cell["mean"] if isinstance(cell, dict) else cell[0])


def best(rows: list[dict]) -> dict:
    """Highest dev object-removal correlation; ties broken by mask AUROC."""
    return max(rows, key=lambda r: (round(_mean(r["object_removal"]), 4), _mean(r["auroc"])))


def split_by_detection(model, source: SceneSource) -> tuple[ListSource, ListSource, dict]:
    detected, missed, counts = [], [], {"detected": 0, "missed": 0}
    for k in range(len(source)):
        item = source[k]
        with torch.no_grad():
            p = torch.sigmoid(model(model.preprocess(item.image)).float())[0]
        hit = [t for t in item.targets if p[t] > 0.5]
        miss = [t for t in item.targets if p[t] <= 0.5]
        counts["detected"] += len(hit)
        counts["missed"] += len(miss)
        if hit:
            detected.append(Item(item.id, item.image, hit, item.masks, item.extras))
        if miss:
            missed.append(Item(item.id, item.image, miss, item.masks, item.extras))
    return ListSource(detected, name=f"{source.name}/detected"), ListSource(missed, name=f"{source.name}/missed"), counts


def test_plan(chosen: dict, rollout_start: int, rise_masks: int, curve_steps: int, ig_max_steps: int = 128,
              chunk: int = 8) -> Plan:
    caap_opts = {"layers": tuple(chosen["layers"]), "context": chosen["context"], "hook": chosen["hook"]}
    methods = [
        MethodSpec("caap_dev", method="caap", options=caap_opts),
        MethodSpec("caap_default", method="caap", options={"layers": (4, 8)}),
        MethodSpec("caap_pixel", method="caap", options={"layers": (0, 1)}),
        MethodSpec("caap_auto", method="caap", options={"layers": "auto"}),
        MethodSpec("raw_attention"),
        MethodSpec("rollout", options={"start_layer": rollout_start}),
        MethodSpec("attention_gradcam"),
        MethodSpec("gradient_weighted_attention"),
        MethodSpec("token_gradcam"),
        MethodSpec("attnlrp"),
        MethodSpec("integrated_gradients", options={"max_steps": ig_max_steps}),
        MethodSpec("occlusion"),
        MethodSpec("rise", options={"n_masks": rise_masks}),
        MethodSpec("attribution_patching"),
        MethodSpec("random"),
    ]
    return Plan(methods=methods, metrics=TEST_METRICS, targets="all_present", score="sigmoid", reference="caap_dev",
                chunk=chunk, curve_steps=curve_steps)


def _cell(c: dict) -> str:
    if c is None or c.get("n", 0) == 0:
        return "n/a (0)"
    lo, hi = c.get("lo"), c.get("hi")
    interval = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and np.isfinite(lo) else ""
    return f"{c['mean']:.3f}{interval} ({c['n']})"


def render(out: dict) -> str:
    """The results page for the testbed, from the JSON this script writes."""
    dev = out["dev"]
    chosen = dev["chosen"]
    lines = [
        "# Attribution methods on a real pretrained backbone: `fashion-scenes-dinov2`",
        "",
        "*Generated by `benchmarks/compare_testbed.py` (dev stage, then `caap_lens.evaluation`); rerun it to "
        "regenerate (it resumes from its stores).*",
        "",
        "## Setup",
        "",
        f"- model: `{out['model']}` — the real DINOv2 ViT-S/14 (12 blocks, CLS readout, 168 px, 12×12 grid) "
        "with blocks 9–11, the final norm and a 6-label sigmoid head fine-tuned on synthetic scenes "
        f"(test mAP {out.get('test_map', float('nan')):.3f}, see its model card).",
        f"- dev: {dev['dev_scenes']} dev scenes (Fashion-MNIST test glyphs, seed 1), every present label a target; "
        f"test: {out['test_scenes']} test scenes (seed 0): {out['targets']['detected']} detected (sigmoid > 0.5) "
        f"and {out['targets']['missed']} missed labelled targets, evaluated in separate stores.",
        "- ground truth: item masks, and **object removal** — every scene re-rendered without each item on the "
        "same background, so the true effect of each item on the target's probability is known exactly.",
        f"- metric score: the target's sigmoid probability; curves with {out['plan']['curve_steps']} steps "
        "(deletion: mean substrate; insertion: RISE-scaled blur; positive/negative perturbation: Chefer's "
        "protocol). CAAP scores the target logit.",
        f"- machine: {out.get('machine', '')}; wall time {out['seconds'] / 60:.1f} min in all, shared with other jobs.",
        "",
        "## Dev: CAAP's window × context × hook",
        "",
        "Each setting's maps on the dev units, scored by the ground-truth metrics that need no forward pass. "
        "The setting with the highest **object-removal rank correlation** (ties: mask AUROC) is CAAP's "
        f"test setting: **window {tuple(chosen['layers'])}, context `{chosen['context']}`, hook `{chosen['hook']}`**. "
        "Rollout's start layer was chosen the same way: "
        f"**{dev['rollout_chosen']['start_layer']}**. Each cell: mean [95% t interval] (n).",
        "",
        "| window | context | hook | object removal ↑ | mask AUROC ↑ | mask energy ↑ | target specificity ↑ |",
        "| :--- | :--- | :--- | ---: | ---: | ---: | ---: |",
    ]
    for r in dev["caap_grid"]:
        mark = "**" if (r["layers"], r["context"], r["hook"]) == (chosen["layers"], chosen["context"], chosen["hook"]) else ""
        lines.append(f"| {mark}{tuple(r['layers'])}{mark} | {r['context']} | {r['hook']} | {_cell(r['object_removal'])} | "
                     f"{_cell(r['auroc'])} | {_cell(r['energy'])} | {_cell(r['target_specificity'])} |")
    lines += ["", "| rollout start layer | object removal ↑ | mask AUROC ↑ | mask energy ↑ | target specificity ↑ |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    for r in dev["rollout"]:
        lines.append(f"| {r['start_layer']} | {_cell(r['object_removal'])} | {_cell(r['auroc'])} | {_cell(r['energy'])} | "
                     f"{_cell(r['target_specificity'])} |")
    rows = ("`caap_dev`: the dev-chosen setting; `caap_default`: window (4, 8), mean context, resid_pre (the library's "
            "default for 12 layers); `caap_pixel`: window (0, 1) — copying the patch's pixels' embedding, i.e. "
            "single-patch insertion at the input; `caap_auto`: `layers=\"auto\"`, the window chosen per image by "
            "the insertion criterion (`caap_lens.attribution.auto_window`).")
    for name, title in (("detected", "Test: detected targets"), ("missed", "Test: missed targets")):
        lines += ["", f"## {title}", ""]
        if out.get(name) is None:
            lines.append("No such unit in the test scenes.")
            continue
        lines += [rows, "", out[name]["markdown"].replace("# Evaluation results\n", "", 1).replace("\n## ", "\n### ")]
    return "\n".join(lines) + "\n"


LEAD_BEGIN, LEAD_END = "<!-- testbed-lead:begin -->", "<!-- testbed-lead:end -->"
LABELS = {"deletion": "deletion AUC ↓", "insertion": "insertion AUC ↑", "positive": "pos. perturbation ↓",
          "negative": "neg. perturbation ↑", "pointing": "pointing game ↑", "energy": "mask energy ↑",
          "auroc": "mask AUROC ↑", "object_removal": "object removal ↑", "target_specificity": "target specificity ↑"}


def claim_lines(res: dict) -> list[str]:
    """Where CAAP (dev-chosen) stands per metric: its rank and interval, and the best other method."""
    from caap_lens.evaluation import METRICS

    lines = []
    for metric in TEST_METRICS:
        ranks = res["ranks"].get(metric) or {}
        if "caap_dev" not in ranks:
            lines.append(f"- {LABELS[metric]}: not ranked (no unit scored).")
            continue
        sign = METRICS[metric].direction
        means = {m: res["summary"][m][metric]["mean"] for m in res["summary"]
                 if (res["summary"][m].get(metric) or {}).get("n", 0) and m != "random"}
        others = {m: v for m, v in means.items() if not m.startswith("caap")}
        best_other = max(others, key=lambda m: sign * others[m]) if others else None
        r = ranks["caap_dev"]
        ours = res["summary"]["caap_dev"][metric]
        paired = (res.get("paired") or {}).get(best_other, {}).get(metric, {}) if best_other else {}
        p_holm = paired.get("p_holm")
        gap = sign * (ours["mean"] - others[best_other])
        verdict = "ahead of" if gap > 1e-9 else ("level with" if abs(gap) <= 1e-9 else "behind")
        sig = "" if p_holm is None else f", Holm p = {p_holm:.3g}"
        lines.append(f"- {LABELS[metric]}: `caap_dev` {_cell(ours)}, rank {r['rank']:g} [{r['lo']:g}, {r['hi']:g}] of "
                     f"{len(ranks)}; {verdict} the best baseline `{best_other}` {others[best_other]:.3f}{sig}.")
    return lines


def lead(out: dict) -> str:
    det = out.get("detected")
    chosen = out["dev"]["chosen"]
    parts = [LEAD_BEGIN,
             "# Results",
             "",
             "## Lead: a real pretrained 12-layer ViT (`fashion-scenes-dinov2`)",
             "",
             f"*Generated by `benchmarks/compare_testbed.py`; the full page, with the dev grid and the missed targets, "
             f"is [results on the real DINOv2 testbed](results_testbed.md).* The real DINOv2 ViT-S/14 (CLS readout, "
             f"168 px) with a 6-label head, test mAP {out.get('test_map', float('nan')):.3f}; CAAP's setting chosen on "
             f"{out['dev']['dev_scenes']} dev scenes: window {tuple(chosen['layers'])}, context `{chosen['context']}`, "
             f"hook `{chosen['hook']}`. Test: {out['test_scenes']} held-out scenes, {out['targets']['detected']} "
             f"detected and {out['targets']['missed']} missed targets. **These n are small** (the run had to fit a "
             "session on 2 shared cores); the intervals say how small.", ""]
    if det is not None:
        body = det["markdown"].split("## Paired differences")[0].replace("## Main table", "### Detected targets: main table")
        body = body.replace("# Evaluation results\n", "", 1)
        parts += [body.strip(), "", "**Where CAAP stands** (dev-chosen row, detected targets):", ""]
        parts += claim_lines(det)
    parts += ["", "The rest of this page compares the methods on the bundled 4-layer model.", "", LEAD_END]
    return "\n".join(parts)


def write_lead(page: Path, out: dict) -> None:
    text = page.read_text() if page.exists() else ""
    if LEAD_BEGIN in text and LEAD_END in text:
        text = text[:text.index(LEAD_BEGIN)] + text[text.index(LEAD_END) + len(LEAD_END):].lstrip("\n")
    page.write_text(lead(out) + "\n\n" + text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dev-scenes", type=int, default=12)
    p.add_argument("--test-scenes", type=int, default=24)
    p.add_argument("--rise-masks", type=int, default=200)
    p.add_argument("--curve-steps", type=int, default=16)
    p.add_argument("--ig-max-steps", type=int, default=128)
    p.add_argument("--chunk", type=int, default=8, help="items per committed chunk")
    p.add_argument("--minutes", type=float, default=0, help="stop after the chunk that passes this budget (0: none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "testbed")
    p.add_argument("--json", type=Path, default=REPO / "docs" / "results_testbed.json")
    p.add_argument("--stage", choices=("all", "dev", "test", "merge", "render"), default="all",
                   help="merge: tables from whatever the test stores hold (a run stopped early), then render")
    p.add_argument("--page", type=Path, default=REPO / "docs" / "results_testbed.md")
    p.add_argument("--lead", type=Path, default=REPO / "docs" / "results.md", help="page whose lead block is rewritten")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = HookedViT.from_pretrained(NAME)
    args.out.mkdir(parents=True, exist_ok=True)
    dev_file = args.out / "dev.json"
    t0 = time.perf_counter()
    if args.stage in ("all", "dev") and not dev_file.exists():
        dev = load_bundled_scenes(NAME, "dev", args.dev_scenes, removals=True)
        grid = caap_grid(model, dev, args.dev_scenes)
        rollout = rollout_grid(model, dev, args.dev_scenes)
        record = {"dev_scenes": args.dev_scenes, "caap_grid": grid, "rollout": rollout,
                  "chosen": best(grid), "rollout_chosen": best(rollout), "seconds": time.perf_counter() - t0}
        dev_file.write_text(json.dumps(record, indent=1, default=float))
    record = json.loads(dev_file.read_text())
    print("dev-chosen CAAP:", {k: record["chosen"][k] for k in ("layers", "context", "hook")},
          "| rollout start layer", record["rollout_chosen"]["start_layer"], flush=True)
    if args.stage == "merge":
        test = SceneSource(load_bundled_scenes(NAME, "test", args.test_scenes, removals=True), name="dinov2-test")
        _, _, counts = split_by_detection(model, test)
        plan = test_plan(record["chosen"], record["rollout_chosen"]["start_layer"], args.rise_masks, args.curve_steps,
                         args.ig_max_steps, args.chunk)
        out = {"model": NAME, "dev": record, "test_scenes": args.test_scenes, "targets": counts,
               "plan": plan.to_dict(), "stopped": "merged from the stores of a run stopped early"}
        for name in ("missed", "detected"):
            store = args.out / name
            if not (store / "parts").exists() or not any((store / "parts").iterdir()):
                out[name] = None
                continue
            results = merge(store)
            out[name] = {"summary": results.summary, "paired": results.paired, "ranks": results.ranks,
                         "markdown": results.to_markdown()}
        manifests = [args.out / n / "manifest.json" for n in ("missed", "detected") if (args.out / n / "manifest.json").exists()]
        started = min(p.stat().st_mtime for p in manifests) if manifests else time.time()
        out["seconds"] = record["seconds"] + (time.time() - started)  # dev + the stopped test run, from its store
        out["test_map"] = float(model_config()["metrics"]["test_map"])
        out["machine"] = machine()
        args.json.write_text(json.dumps(out, indent=1, default=float))
    if args.stage in ("all", "test"):
        test = SceneSource(load_bundled_scenes(NAME, "test", args.test_scenes, removals=True), name="dinov2-test")
        detected, missed, counts = split_by_detection(model, test)
        plan = test_plan(record["chosen"], record["rollout_chosen"]["start_layer"], args.rise_masks, args.curve_steps,
                         args.ig_max_steps, args.chunk)
        out = {"model": NAME, "dev": record, "test_scenes": args.test_scenes, "targets": counts,
               "plan": plan.to_dict() if hasattr(plan, "to_dict") else None}
        deadline = time.time() + 60 * args.minutes if args.minutes else None

        def stop_at_deadline(done: int) -> None:
            if deadline is not None and time.time() > deadline:
                raise TimeoutError(f"--minutes {args.minutes} reached after {done} chunk(s)")

        for name, source in (("missed", missed), ("detected", detected)):
            if len(source) == 0:
                out[name] = None
                continue
            try:
                results = evaluate(model, source, plan, args.out / name, after_chunk=stop_at_deadline).results
            except TimeoutError as err:  # committed chunks stay in the store: report what they hold
                print(f"{name}: {err}; merging what is committed", flush=True)
                results = merge(args.out / name)
                out[f"{name}_stopped"] = str(err)
            out[name] = {"summary": results.summary, "paired": results.paired, "ranks": results.ranks,
                         "markdown": results.to_markdown()}
        out["seconds"] = time.perf_counter() - t0
        out["test_map"] = float(model_config()["metrics"]["test_map"])
        out["machine"] = machine()
        args.json.write_text(json.dumps(out, indent=1, default=float))
        print(f"wrote {args.json}", flush=True)
    if args.stage in ("all", "test", "merge", "render"):
        out = json.loads(args.json.read_text())
        args.page.write_text(render(out))
        write_lead(args.lead, out)
        print(f"wrote {args.page} and the lead of docs/results.md", flush=True)


if __name__ == "__main__":
    main()

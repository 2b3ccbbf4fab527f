"""Fidelity and speed of `linear_tail` against exact `caap` (issue 16). Not a test: prints measurements.

For each model and window ``(start, stop)``, one process computes the exact CAAP map and the
linear-tail map of the same images, alternating ``exact, linear, exact, linear, ...`` (``--repeats``
pairs), and reports

* Spearman's rho between the two maps, per image, then its mean and minimum over images;
* top-k overlap (|top-k exact ∩ top-k linear| / k) for k = 5 and k = 10% of the patches, mean over images;
* the speed-up: the median time of the exact maps over the median time of the linear-tail maps, with
  the machine's 1-minute load average sampled around each window's timings.

Models: ``dinov2-s14`` — the real DINOv2-S/14 (headless) on real photos from ``skimage.data``, scored by
self-similarity to each photo's own embedding; ``fashion-scenes-dinov2`` — the deep scene testbed on
dev scenes, score ``"logit"`` of the present label with the highest source logit.

Usage:
    python benchmarks/bench_linear_tail.py                              # both models, 4 windows
    python benchmarks/bench_linear_tail.py --models dinov2-s14 --img-size 224 --windows 4:8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/bench_linear_tail.py` finds benchmarks.linear_tail
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.linear_tail import linear_tail  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
from caap_lens.attribution.engine import caap  # noqa: E402
from caap_lens.stats import spearman  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field")  # data.cat() is chelsea
RESULTS = Path(__file__).resolve().parent / "results"


def real_setup(n: int, img_size: int) -> dict:
    """The real DINOv2-S/14 on ``n`` skimage photos, scored by self-similarity."""
    from skimage import data

    from caap_lens.attribution.scores import self_similarity
    from caap_lens.loading.real_dinov2 import load_real_dinov2

    model = load_real_dinov2(img_size=img_size)
    names = PHOTOS[:n]
    photos = []
    for name in names:
        img = getattr(data, name)()
        if img.ndim == 2:
            img = img[..., None].repeat(3, axis=-1)
        photos.append(model.preprocess(img[..., :3]))
    x = torch.cat(photos)
    with torch.inference_mode():
        score = self_similarity(model(x))
    return {"model": model, "images": x, "target": torch.arange(len(x)), "score": score,
            "items": list(names), "score_name": "self_similarity"}


def testbed_setup(n: int) -> dict:
    """``fashion-scenes-dinov2`` on ``n`` dev scenes; target: the present label with the highest logit."""
    from caap_lens import HookedViT
    from caap_lens.loading.bundled import load_bundled_scenes

    model = HookedViT.from_pretrained("fashion-scenes-dinov2")
    scenes = load_bundled_scenes("fashion-scenes-dinov2", split="dev", n=n)
    x = model.preprocess(list(scenes.images))
    with torch.inference_mode():
        logits = model(x)
    present = torch.as_tensor(scenes.labels) > 0.5
    target = logits.masked_fill(~present, float("-inf")).argmax(-1)
    return {"model": model, "images": x, "target": target, "score": "logit",
            "items": [f"dev scene {i}, target {scenes.class_names[int(t)]}" for i, t in enumerate(target)],
            "score_name": "logit"}


def topk_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of ``[batch, n]``: the share of ``a``'s top-k patches that are also in ``b``'s top-k."""
    ta, tb = a.topk(k, dim=-1).indices, b.topk(k, dim=-1).indices
    return (ta[:, :, None] == tb[:, None, :]).any(-1).float().mean(-1)


def measure(setup: dict, window: tuple[int, int], repeats: int, batch_size: int) -> dict:
    model, x = setup["model"], setup["images"]
    kw = dict(target=setup["target"], layers=window, score=setup["score"], batch_size=batch_size)
    exact_fn = lambda: caap(model, x, **kw)  # noqa: E731
    linear_fn = lambda: linear_tail(model, x, **kw)  # noqa: E731
    t_exact, t_linear, loads = [], [], [os.getloadavg()[0]]
    exact = linear = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        exact = exact_fn()
        t_exact.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        linear = linear_fn()
        t_linear.append(time.perf_counter() - t0)
        loads.append(os.getloadavg()[0])
    a, b = exact.map.flatten(1), linear.map.flatten(1)
    rho = spearman(a, b).float()
    n_p = a.shape[1]
    k10 = max(1, round(0.1 * n_p))
    n, (start, stop) = model.cfg.n_layers, window
    med_e, med_l = statistics.median(t_exact), statistics.median(t_linear)
    return {
        "window": list(window), "n_images": a.shape[0], "patches": n_p, "repeats": repeats,
        "spearman_per_image": rho.tolist(), "spearman_mean": float(rho.mean()), "spearman_min": float(rho.min()),
        "top5_overlap": float(topk_overlap(a, b, 5).mean()),
        "top10pct_k": k10, "top10pct_overlap": float(topk_overlap(a, b, k10).mean()),
        "max_abs_diff": float((a - b).abs().max()), "exact_map_range": float((a.max(-1).values - a.min(-1).values).mean()),
        "exact_s": t_exact, "linear_s": t_linear, "exact_median_s": med_e, "linear_median_s": med_l,
        "speedup": med_e / med_l, "load_avg_1min": loads, "load_avg_mean": statistics.mean(loads),
        "block_eval_ratio": (n - start) / (stop - start),
        "linear_tail_seconds": linear.timing["tail_seconds"], "linear_window_seconds": linear.timing["window_seconds"],
    }


def markdown(out: dict) -> str:
    lines = [
        "# linear_tail vs exact CAAP",
        "",
        f"*Generated by `benchmarks/bench_linear_tail.py` on {out['cpu']} ({out['cpus']} CPUs), torch {out['torch']}, "
        f"{out['threads']} thread(s), batch_size {out['batch_size']}, {out['date']}.*",
        "",
        "| model | window | n | Spearman mean | Spearman min | top-5 overlap | top-10% overlap | exact (median) "
        "| linear (median) | speed-up | block-eval ratio | repeats | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, rows in out["results"].items():
        for r in rows:
            lines.append(
                f"| {model} | [{r['window'][0]}, {r['window'][1]}) | {r['n_images']} | {r['spearman_mean']:.3f} "
                f"| {r['spearman_min']:.3f} | {r['top5_overlap']:.2f} | {r['top10pct_overlap']:.2f} (k={r['top10pct_k']}) "
                f"| {r['exact_median_s']:.1f} s | {r['linear_median_s']:.1f} s | **{r['speedup']:.2f}×** "
                f"| {r['block_eval_ratio']:.2f}× | {r['repeats']} | {r['load_avg_mean']:.1f} |"
            )
    if "decision" in out:
        lines += ["", f"**Decision:** {out['decision']}"]
    return "\n".join(lines) + "\n"


def decide(out: dict, default: tuple[int, int]) -> str:
    rows = [r for r in out["results"].get("dinov2-s14", []) if tuple(r["window"]) == default]
    if not rows:
        return "not decided: the default window was not measured on the real model"
    r = rows[0]
    ok = r["spearman_mean"] >= 0.95 and r["speedup"] >= 1.7
    verdict = "ships" if ok else "does not ship"
    return (f"the linear tail {verdict}: on the real DINOv2-S/14, default window {list(default)}, Spearman "
            f"{r['spearman_mean']:.3f} (min {r['spearman_min']:.3f}; needs >= 0.95) at {r['speedup']:.2f}x "
            f"(needs >= 1.7x).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="dinov2-s14,fashion-scenes-dinov2")
    parser.add_argument("--windows", default="2:4,4:8,6:10,8:12")
    parser.add_argument("--img-size", type=int, default=168, help="real DINOv2 input size (168 or 224)")
    parser.add_argument("--n-real", type=int, default=4, help="photos for the real model")
    parser.add_argument("--n-testbed", type=int, default=4, help="dev scenes for the testbed")
    parser.add_argument("--repeats", type=int, default=2, help="exact/linear pairs timed per window")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=str(RESULTS / "linear_tail.json"))
    parser.add_argument("--md", default=str(RESULTS / "linear_tail.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    windows = [tuple(int(v) for v in w.split(":")) for w in args.windows.split(",")]
    out = {"cpu": cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__, "threads": args.threads,
           "batch_size": args.batch_size, "img_size_real": args.img_size,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": {}, "items": {}}
    for name in args.models.split(","):
        setup = real_setup(args.n_real, args.img_size) if name == "dinov2-s14" else testbed_setup(args.n_testbed)
        out["items"][name] = setup["items"]
        caap(setup["model"], setup["images"][:1], target=setup["target"][:1], layers=windows[0],
             score=setup["score"], batch_size=args.batch_size)  # warm-up
        out["results"][name] = []
        for window in windows:
            r = measure(setup, window, args.repeats, args.batch_size)
            out["results"][name].append(r)
            print(f"{name:22s} [{window[0]:2d},{window[1]:2d})  Spearman mean {r['spearman_mean']:.3f} min "
                  f"{r['spearman_min']:.3f}  top5 {r['top5_overlap']:.2f}  top10% {r['top10pct_overlap']:.2f}  "
                  f"exact {r['exact_median_s']:.1f}s linear {r['linear_median_s']:.1f}s  speed-up {r['speedup']:.2f}x  "
                  f"load {r['load_avg_mean']:.1f}", flush=True)
            Path(args.json).write_text(json.dumps(out, indent=2))
    from caap_lens.attribution.engine import default_window

    n_layers = 12
    out["decision"] = decide(out, default_window(n_layers))
    print(out["decision"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    Path(args.md).write_text(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

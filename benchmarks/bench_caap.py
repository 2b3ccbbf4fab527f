"""Benchmark of the CAAP engine (issue 3). Not a test: prints ratios measured in one run.

Compares, on one image and one machine, in one process:
  1. our CAAP (batched, prefix-cached) vs the naive loop (one full run_with_hooks call per patch);
  2. our CAAP vs the compute floor: the same chunks through the same blocks with no patching at all;
  3. bf16 blocks vs fp32 (speed, and Spearman rank correlation between the two maps);
  4. a full window sweep (all windows, fork-shared) vs running each window alone, on a subset of
     patches (the cost ratio does not depend on how many patches are patched);
  5. peak memory (max RSS, one subprocess per batch size) as batch_size grows.

Usage:
    python benchmarks/bench_caap.py                          # vit_small_patch16_224, random init
    python benchmarks/bench_caap.py --model fashion-scenes-vit --layers 2:4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from caap_lens import HookedViT  # noqa: E402
from caap_lens.attribution.engine import caap  # noqa: E402
from caap_lens.attribution.reference import caap_naive  # noqa: E402
from caap_lens.attribution.runner import finish  # noqa: E402
from caap_lens.attribution.units import Units, patch_units  # noqa: E402
from caap_lens.attribution.contexts import resolve_context  # noqa: E402
from caap_lens.sweeps import all_windows, window_sweep  # noqa: E402


def load(name: str) -> HookedViT:
    try:
        from caap_lens.loading.bundled import list_bundled
    except ImportError:  # no bundled models in this checkout
        list_bundled = list
    if name in list_bundled():
        return HookedViT.from_pretrained(name)
    torch.manual_seed(0)
    return HookedViT.from_timm(name)


def sample_image(model: HookedViT) -> torch.Tensor:
    try:
        from caap_lens.loading.bundled import load_bundled_scenes, list_bundled

        if model.cfg.source in list_bundled() or model.cfg.image_size == (64, 64):
            scenes = load_bundled_scenes(list_bundled()[0])
            return model.preprocess(scenes.images[0])
    except Exception:
        pass
    gen = torch.Generator().manual_seed(0)
    return torch.randn(1, model.cfg.n_channels, *model.cfg.image_size, generator=gen)


def timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.flatten().argsort().argsort().double()
    rb = b.flatten().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def compute_floor(model: HookedViT, image: torch.Tensor, layers: tuple[int, int], batch_size: int) -> torch.Tensor:
    """The same chunks of rows through blocks [start, n) and the head, with nothing patched."""
    start = layers[0]
    n_rows = model.grid.n_patches * image.shape[0]
    with torch.inference_mode():
        ctx = resolve_context("mean").residuals(model, image, [start])[start]
        outs = []
        for begin in range(0, n_rows, batch_size):
            rows = min(batch_size, n_rows - begin)
            resid = ctx[torch.zeros(rows, dtype=torch.long)]
            outs.append(finish(model, resid, start))
    return torch.cat(outs)


def memory_child(args: argparse.Namespace, batch_size: int) -> dict:
    code = (
        "import json, resource, sys, time, torch; sys.argv=['x'];"
        "import benchmarks.bench_caap as b;"
        f"torch.set_num_threads({args.threads});"
        f"m=b.load({args.model!r}); x=b.sample_image(m);"
        "base=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        f"t=time.perf_counter(); b.caap(m, x, layers={tuple(args.layers)}, batch_size={batch_size});"
        "dt=time.perf_counter()-t;"
        "peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "print(json.dumps({'base_mb': base/1024, 'peak_mb': peak/1024, 'seconds': dt}))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--layers", default="4:8", help="window start:stop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sweep-patches", type=int, default=32, help="patches used for the sweep comparison")
    parser.add_argument("--memory-batch-sizes", default="16,32,64,128")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: naive,floor,bf16,sweep,memory")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args()
    args.layers = [int(v) for v in args.layers.split(":")]
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(args.threads)
    model = load(args.model)
    image = sample_image(model)
    layers = tuple(args.layers)
    fig: dict = {
        "model": args.model, "layers": layers, "threads": args.threads, "batch_size": args.batch_size,
        "patches": model.grid.n_patches, "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus, torch {torch.__version__}",
    }
    print(f"# {model}\n# window {layers}, {args.threads} threads, batch_size {args.batch_size}")
    caap(model, image, layers=layers, batch_size=args.batch_size)  # warm-up
    t_ours, ours = timed(lambda: caap(model, image, layers=layers, batch_size=args.batch_size), args.repeats)
    fig["ours_fp32_s"] = t_ours
    print(f"ours fp32                  {t_ours:8.2f} s")
    if "naive" not in skip:
        t_naive, naive = timed(lambda: caap_naive(model, image, layers=layers))
        fig.update(naive_s=t_naive, speedup_vs_naive=t_naive / t_ours,
                   max_abs_diff_vs_naive=float((naive - ours.map).abs().max()))
        print(f"naive loop                 {t_naive:8.2f} s   speed-up {t_naive / t_ours:5.2f}x (target >= 1.5x)"
              f"   max |diff| {fig['max_abs_diff_vs_naive']:.2e}")
    if "floor" not in skip:
        t_floor, _ = timed(lambda: compute_floor(model, image, layers, args.batch_size), args.repeats)
        t_ours2, _ = timed(lambda: caap(model, image, layers=layers, batch_size=args.batch_size), args.repeats)
        t_ours_best = min(t_ours, t_ours2)
        fig.update(floor_s=t_floor, ours_vs_floor=t_ours_best / t_floor)
        print(f"compute floor              {t_floor:8.2f} s   ours/floor {t_ours_best / t_floor:5.3f}x (target <= 1.10x)")
    if "bf16" not in skip:
        caap(model, image, layers=layers, batch_size=args.batch_size, dtype=torch.bfloat16)  # warm-up
        t_bf16, bf16 = timed(
            lambda: caap(model, image, layers=layers, batch_size=args.batch_size, dtype=torch.bfloat16), args.repeats
        )
        rho = spearman(bf16.map, ours.map)
        fig.update(bf16_s=t_bf16, bf16_speedup=t_ours / t_bf16, bf16_spearman=rho,
                   fp32_map_range=float(ours.map.max() - ours.map.min()),
                   bf16_max_abs_diff=float((bf16.map - ours.map).abs().max()))
        print(f"bf16 blocks                {t_bf16:8.2f} s   speed-up {t_ours / t_bf16:5.2f}x (target >= 2.5x)"
              f"   Spearman {rho:.4f} (target >= 0.99); fp32 map range {fig['fp32_map_range']:.3g}")
    if "sweep" not in skip:
        n = model.cfg.n_layers
        keep = torch.linspace(0, model.grid.n_patches - 1, args.sweep_patches).round().long().unique()
        units = Units(patch_units(model.grid).masks[:, keep], (len(keep),))
        windows = all_windows(n)
        t_sweep, sweep = timed(lambda: window_sweep(model, image, windows=windows, units=units,
                                                    batch_size=args.batch_size))
        t0 = time.perf_counter()
        alone = [window_sweep(model, image, windows=[w], units=units, batch_size=args.batch_size).maps[0]
                 for w in windows]
        t_alone = time.perf_counter() - t0
        diff = float((torch.stack(alone) - sweep.maps).abs().max())
        fig.update(sweep_windows=len(windows), sweep_patches=len(keep), sweep_s=t_sweep, alone_s=t_alone,
                   sweep_vs_alone=t_sweep / t_alone, sweep_max_abs_diff=diff)
        print(f"window sweep ({len(windows)} windows, {len(keep)} patches) {t_sweep:8.2f} s vs alone {t_alone:8.2f} s"
              f"   ratio {t_sweep / t_alone:5.3f}x (target <= 0.6x)   max |diff| {diff:.2e}")
    if "memory" not in skip:
        fig["memory"] = []
        for bs in [int(v) for v in args.memory_batch_sizes.split(",")]:
            m = memory_child(args, bs)
            fig["memory"].append({"batch_size": bs, **m})
            print(f"batch_size {bs:4d}: peak RSS {m['peak_mb']:8.1f} MB (after model load {m['base_mb']:7.1f} MB),"
                  f" +{m['peak_mb'] - m['base_mb']:7.1f} MB, {m['seconds']:.2f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(fig, fh, indent=2, default=str)
    print(json.dumps(fig, default=str))


if __name__ == "__main__":
    main()

"""CAAP speed and memory on one device, in fp32, bf16 and fp16 (issue 16). Not a test: it measures.

On ``--device cpu`` or ``cuda`` and one timm architecture (random init: speed does not depend on the
weights), one run measures

* the device: CPU model (``lscpu``) and GPU model, and the fp32 / bf16 (/ fp16 on a GPU) matmul rate
  of a 4096x384x1536 product, in the same run;
* seconds per image of one CAAP map (`caap`) in each dtype, and of a full window sweep
  (`caap_lens.sweeps.window_sweep`, every window) measured on ``--sweep-patches`` patches and scaled
  to all patches (the cost is linear in the number of patches);
* peak memory of one map per ``batch_size``: ``torch.cuda.max_memory_allocated`` above the memory
  held before the call on a GPU; on a CPU the peak resident-set increase during the call (RSS sampled
  every 2 ms in this process; tracemalloc does not see torch's allocations);
* the one-call-per-patch loop (one full ``run_with_hooks`` per patch, as
  `caap_lens.attribution.reference.caap_naive`, device-safe) in fp32, and each dtype's speed-up over it.

Times are the minimum over ``--repeats`` runs after one warm-up. fp16 is skipped on a CPU (noted in the
output): CPUs have no fast fp16 matmul. Writes JSON and a Markdown table.

Usage:
    python -m benchmarks.bench_device --device cpu --arch vit_small_patch16_224
    python -m benchmarks.bench_device --device cuda --arch vit_base_patch16_224 --images 8 --sweep-patches 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: benchmarks.machine is found from the repository root
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.machine import cpu_model, peak_rss_during  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """Minimum wall time of ``fn()`` over ``repeats`` runs (after the caller's warm-up), and its last output."""
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def matmul_gflops(device: torch.device, dtype: torch.dtype, repeats: int = 3, m: int = 4096) -> float:
    """Best rate of an ``m``x384 @ 384x1536 product (a ViT-S MLP layer) in ``dtype``, in GFLOPS."""
    a = torch.randn(m, 384, device=device).to(dtype)
    b = torch.randn(384, 1536, device=device).to(dtype)
    inner = 10 if device.type == "cpu" else 200
    a @ b  # warm-up
    seconds, _ = best_time(lambda: [a @ b for _ in range(inner)], device, repeats)
    return 2 * m * 384 * 1536 * inner / seconds / 1e9


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, str]:
    """(peak MB above the memory held before the call, seconds, method) for one call of ``fn``."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        seconds = time.perf_counter() - t0
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20, seconds, "cuda max_memory_allocated"
    before, peak, seconds = peak_rss_during(fn)
    return peak - before, seconds, "peak RSS increase, sampled every 2 ms (in-process)"


def naive_loop(model: Any, images: torch.Tensor, target: torch.Tensor, layers: tuple[int, int]) -> torch.Tensor:
    """One full-depth ``run_with_hooks`` call per (image, patch), from the ``"mean"`` context image.

    The loop of `caap_lens.attribution.reference.caap_naive` (same hooks, same definition), with its masks
    and source rows kept on the model's device so that it runs on a GPU too.
    """
    from caap_lens.attribution.contexts import resolve_context
    from caap_lens.patching import patch_hooks, token_mask_for_patches

    grid, device = model.grid, images.device
    out = torch.empty(images.shape[0], grid.n_patches)
    with torch.inference_mode():
        _, cache = model.run_with_cache(images)
        context = resolve_context("mean").image(model, images).expand(images.shape[0], -1, -1, -1)
        for b in range(images.shape[0]):
            source = {k: v[b : b + 1] for k, v in cache.items()}
            for patch in range(grid.n_patches):
                mask = token_mask_for_patches(grid, torch.tensor([patch])).to(device)
                hooks = patch_hooks(source, "resid_pre", range(*layers), mask)
                logits = model.run_with_hooks(context[b : b + 1], fwd_hooks=hooks)
                out[b, patch] = logits[0, int(target[b])].float().cpu()
    return grid.to_grid(out)


def build_model(arch: str, depth: int | None, img_size: int | None, device: torch.device) -> Any:
    from caap_lens import HookedViT

    kwargs: dict[str, Any] = {}
    if depth is not None:
        kwargs["depth"] = depth
    if img_size is not None:
        kwargs["img_size"] = img_size
    torch.manual_seed(0)
    return HookedViT.from_timm(arch, **kwargs).to(device).eval()


def run(args: argparse.Namespace) -> dict:
    from caap_lens.attribution.engine import caap, default_window
    from caap_lens.sweeps import all_windows, window_sweep

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    model = build_model(args.arch, args.depth, args.img_size, device)
    n = model.cfg.n_layers
    layers = tuple(int(v) for v in args.layers.split(":")) if args.layers else default_window(n)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, model.cfg.n_channels, *model.cfg.image_size, generator=gen).to(device)
    with torch.inference_mode():
        target = model(x).argmax(-1).cpu()
    dtypes = [d for d in args.dtypes.split(",") if d]
    notes: list[str] = []
    if device.type == "cpu" and "fp16" in dtypes:
        dtypes.remove("fp16")
        notes.append("fp16 skipped on the CPU: no fast fp16 matmul there (bf16 is the CPU's low precision)")
    out: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_avg_1min": os.getloadavg()[0],
        "arch": args.arch, "depth": n, "img_size": list(model.cfg.image_size), "patches": model.grid.n_patches,
        "images": args.images, "layers": list(layers), "batch_size": args.batch_size, "repeats": args.repeats,
        "dtypes": dtypes, "matmul_rows": args.matmul_rows, "notes": notes,
    }
    print(f"# {out['device_name']} ({out['device']}), torch {out['torch']}, {args.arch} depth {n}, "
          f"{model.grid.n_patches} patches, window {layers}", flush=True)
    out["matmul_gflops"] = {}
    for name in dtypes:
        dt = torch.float32 if name == "fp32" else DTYPES[name]
        out["matmul_gflops"][name] = matmul_gflops(device, dt, m=args.matmul_rows)
        print(f"matmul {args.matmul_rows}x384x1536 {name}: {out['matmul_gflops'][name]:.0f} GFLOPS", flush=True)
    maps: dict[str, torch.Tensor] = {}
    out["map_seconds_per_image"] = {}
    for name in dtypes:
        fn = lambda dt=DTYPES[name]: caap(model, x, target=target, layers=layers, batch_size=args.batch_size,  # noqa: E731
                                          dtype=dt)
        fn()  # warm-up
        seconds, result = best_time(fn, device, args.repeats)
        maps[name] = result.map
        out["map_seconds_per_image"][name] = seconds / args.images
        print(f"one CAAP map, {name}: {seconds / args.images:.3f} s per image", flush=True)
    out["map_max_abs_diff_vs_fp32"] = {k: float((v - maps["fp32"]).abs().max()) for k, v in maps.items()
                                      if "fp32" in maps and k != "fp32"}
    if "sweep" not in args.skip:
        n_p = model.grid.n_patches
        k = n_p if args.sweep_patches <= 0 else min(args.sweep_patches, n_p)
        keep = torch.linspace(0, n_p - 1, k).round().long().unique()
        region = torch.zeros(len(keep), model.grid.n_patches, dtype=torch.bool)  # one patch per region
        region[torch.arange(len(keep)), keep] = True
        region = region.reshape(len(keep), *model.grid.grid_size)
        windows = all_windows(n)
        out["sweep"] = {"windows": len(windows), "patches_measured": len(keep), "seconds_per_image": {},
                        "seconds_per_image_all_patches": {}}
        for name in dtypes:
            fn = lambda dt=DTYPES[name]: window_sweep(model, x, target, windows, region=region,  # noqa: E731
                                                      batch_size=args.batch_size, dtype=dt)
            fn()  # warm-up
            seconds, _ = best_time(fn, device, max(1, args.repeats - 1))
            per_image = seconds / args.images
            out["sweep"]["seconds_per_image"][name] = per_image
            out["sweep"]["seconds_per_image_all_patches"][name] = per_image * n_p / len(keep)
            print(f"window sweep ({len(windows)} windows, {len(keep)} patches), {name}: {per_image:.3f} s per image; "
                  f"all {n_p} patches ~{per_image * n_p / len(keep):.2f} s", flush=True)
    if "memory" not in args.skip:
        out["memory"] = []
        for bs in [int(v) for v in args.memory_batch_sizes.split(",") if v]:
            for name in dtypes:
                fn = lambda dt=DTYPES[name], bs=bs: caap(model, x[:1], target=target[:1], layers=layers,  # noqa: E731
                                                         batch_size=bs, dtype=dt)
                fn()  # warm-up
                mb, seconds, method = peak_memory_mb(fn, device)
                out["memory"].append({"batch_size": bs, "dtype": name, "peak_mb": mb, "seconds": seconds})
                out["memory_method"] = method
                print(f"batch_size {bs:4d} {name}: +{mb:.1f} MB peak, {seconds:.3f} s", flush=True)
    if "naive" not in args.skip:
        fn = lambda: naive_loop(model, x, target, layers)  # noqa: E731
        fn()  # warm-up
        seconds, naive = best_time(fn, device, max(1, args.repeats - 1))
        out["naive"] = {
            "seconds_per_image": seconds / args.images,
            "max_abs_diff_vs_fp32_map": float((naive.cpu() - maps["fp32"]).abs().max()) if "fp32" in maps else None,
            "speedup": {k: seconds / args.images / v for k, v in out["map_seconds_per_image"].items()},
        }
        print(f"one run_with_hooks call per patch (fp32): {seconds / args.images:.3f} s per image; speed-up of the map "
              + ", ".join(f"{k} {v:.1f}x" for k, v in out["naive"]["speedup"].items()), flush=True)
    out["load_avg_1min_end"] = os.getloadavg()[0]
    return out


def markdown(out: dict) -> str:
    """The figures of one run as a Markdown table."""
    dts = out["dtypes"]
    lines = [
        f"# CAAP on {out['device_name']} ({out['device']})",
        "",
        f"*`benchmarks/bench_device.py`, {out['date']}: {out['arch']} (random init, depth {out['depth']}, "
        f"{out['img_size'][0]} px, {out['patches']} patches), window {out['layers']}, batch_size {out['batch_size']}, "
        f"{out['images']} image(s), torch {out['torch']}, {out['threads']} CPU thread(s), load average "
        f"{out['load_avg_1min']:.1f}–{out['load_avg_1min_end']:.1f}; minimum of {out['repeats']} runs.*",
        "",
        "| | " + " | ".join(dts) + " |",
        "|---|" + "---:|" * len(dts),
        f"| matmul {out['matmul_rows']}x384x1536 (GFLOPS) | " + " | ".join(f"{out['matmul_gflops'][d]:.0f}" for d in dts) + " |",
        "| one CAAP map (s per image) | " + " | ".join(f"{out['map_seconds_per_image'][d]:.3f}" for d in dts) + " |",
    ]
    if "sweep" in out:
        s = out["sweep"]
        lines.append(f"| full window sweep, {s['windows']} windows (s per image, all patches"
                     f"{'' if s['patches_measured'] == out['patches'] else ', scaled from ' + str(s['patches_measured'])}) | "
                     + " | ".join(f"{s['seconds_per_image_all_patches'][d]:.2f}" for d in dts) + " |")
    if "naive" in out:
        lines.append("| speed-up over one `run_with_hooks` call per patch "
                     f"({out['naive']['seconds_per_image']:.3f} s per image, fp32) | "
                     + " | ".join(f"{out['naive']['speedup'][d]:.1f}×" for d in dts) + " |")
    if out.get("map_max_abs_diff_vs_fp32"):
        lines.append("| max \\|map − fp32 map\\| | " + " | ".join(
            "0" if d == "fp32" else f"{out['map_max_abs_diff_vs_fp32'][d]:.2g}" for d in dts) + " |")
    if out.get("memory"):
        sizes = sorted({m["batch_size"] for m in out["memory"]})
        lines += ["", f"Peak memory of one map ({out['memory_method']}), MB:", "",
                  "| batch_size | " + " | ".join(dts) + " |", "|---:|" + "---:|" * len(dts)]
        for bs in sizes:
            row = {m["dtype"]: m["peak_mb"] for m in out["memory"] if m["batch_size"] == bs}
            lines.append(f"| {bs} | " + " | ".join(f"{row[d]:.0f}" for d in dts) + " |")
    for note in out["notes"]:
        lines += ["", f"Note: {note}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    parser.add_argument("--arch", default="vit_small_patch16_224", help="a timm ViT name (random init)")
    parser.add_argument("--depth", type=int, default=None, help="override the depth (tests: 2)")
    parser.add_argument("--img-size", type=int, default=None, help="override the input size (tests: 32)")
    parser.add_argument("--layers", default="", help="window start:stop (default: the middle third)")
    parser.add_argument("--images", type=int, default=1, help="images per call (per-image times divide by it)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtypes", default="fp32,bf16,fp16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep-patches", type=int, default=16, help="patches for the sweep (0: all)")
    parser.add_argument("--memory-batch-sizes", default="16,64,256")
    parser.add_argument("--matmul-rows", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--skip", default="", help="comma list: sweep,memory,naive")
    parser.add_argument("--json", default="", help="default: benchmarks/results/device_<device>_<arch>.json")
    parser.add_argument("--md", default="", help="default: the JSON path with .md")
    args = parser.parse_args(argv)
    args.skip = set(filter(None, args.skip.split(",")))
    out = run(args)
    stem = f"device_{out['device'].replace(':', '')}_{args.arch}"
    path = Path(args.json or RESULTS / f"{stem}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    Path(args.md or path.with_suffix(".md")).write_text(markdown(out))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

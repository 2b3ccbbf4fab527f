"""Benchmarks of the evaluation harness (`caap_lens.evaluation`); not a test.

    python benchmarks/bench_evaluation.py overhead [--scenes 24]   # harness time vs method+metric time, one run
    python benchmarks/bench_evaluation.py memory                   # RSS per chunk for 64 / 256 / 1024 items
    python benchmarks/bench_evaluation.py costs [--models vit_small_patch16_224,vit_base_patch16_224]
    python benchmarks/bench_evaluation.py all --json benchmarks/results/evaluation.json

* ``overhead`` runs a plan on the bundled model and scenes and splits the wall time into the methods
  (`Attribution.seconds`), the metrics, and everything else (reading items, preprocessing, targets,
  clean scores, building rows, committing Parquet chunks): the overhead is the last share. Both sides
  are measured in the same run, so a shared machine slows them alike.
* ``memory`` runs the same cheap plan over synthetic sources of growing size, each in a fresh process,
  sampling the resident set size after every committed chunk: streaming means it stays flat.
* ``costs`` times, per 224-px image, one forward pass, one forward+backward, and every method of the
  comparison and the curve metrics, on random-init ViT-S/16 and ViT-B/16 (for the scale estimate in
  docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def overhead(n_scenes: int, methods: list[str]) -> dict[str, Any]:
    from caap_lens.evaluation import Plan, bundled_scenes, evaluate
    from caap_lens.loading.bundled import load_bundled

    model = load_bundled("fashion-scenes-vit")
    plan = Plan(methods=[*methods, "random"], score="sigmoid", limit=n_scenes, chunk=8)
    with tempfile.TemporaryDirectory() as store:
        run = evaluate(model, bundled_scenes(), plan, store, progress=False, merge=False)
    other = run.seconds - run.seconds_methods - run.seconds_metrics
    return {"scenes": n_scenes, "units": run.units, "methods": methods, "seconds": run.seconds,
            "seconds_methods": run.seconds_methods, "seconds_metrics": run.seconds_metrics,
            "seconds_store": run.seconds_store, "seconds_other": other,
            "overhead_fraction": other / run.seconds, "overhead_vs_methods": other / max(run.seconds_methods, 1e-9)}


class SyntheticSource:
    """``n`` random 32x32 scenes with one labelled square each, made on demand (nothing held)."""

    def __init__(self, n: int) -> None:
        self.n, self.name = n, f"synthetic-{n}"

    def __len__(self) -> int:
        return self.n

    def ids(self) -> list[str]:
        return [f"{self.name}/{i}" for i in range(self.n)]

    def __getitem__(self, i: int) -> Any:
        import numpy as np

        from caap_lens.evaluation import Item

        rng = np.random.default_rng(i)
        image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        mask = np.zeros((32, 32), bool)
        mask[8:24, 8:24] = True
        return Item(f"{self.name}/{i}", image, [int(i % 10)], {int(i % 10): mask}, {})


def memory_worker(n: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from caap_lens import HookedViT
    from caap_lens.evaluation import Plan, evaluate

    model = HookedViT.from_timm("vit_tiny_patch16_224", depth=2, img_size=32, patch_size=8, num_classes=10)
    plan = Plan(methods=["rollout", "raw_attention", "random"], metrics=["deletion", "pointing", "energy"],
                score="sigmoid", curve_steps=4, chunk=16)
    samples: list[float] = []
    with tempfile.TemporaryDirectory() as store:
        start = rss_mb()
        run = evaluate(model, SyntheticSource(n), plan, store, progress=False, merge=False,
                       after_chunk=lambda done: samples.append(rss_mb()))
        merged_t0 = time.perf_counter()
        from caap_lens.evaluation import merge

        merge(store)
        merge_s = time.perf_counter() - merged_t0
        after_merge = rss_mb()
    k = max(1, len(samples) // 4)
    return {"items": n, "units": run.units, "rss_before_mb": start, "rss_first_chunks_mb": max(samples[:k]),
            "rss_last_chunks_mb": max(samples[-k:]), "rss_max_mb": max(samples), "rss_after_merge_mb": after_merge,
            "seconds": run.seconds, "merge_seconds": merge_s}


def memory(sizes: list[int]) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        p = subprocess.run([sys.executable, __file__, "_memory_worker", str(n)], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, timeout=3000)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        out.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(f"  memory: {out[-1]}", file=sys.stderr)
    return out


def costs(names: list[str], reps: int = 2, forward_only: bool = False, batch_size: int = 32) -> dict[str, Any]:
    import torch

    from caap_lens import HookedViT
    from caap_lens.baselines import attribute
    from caap_lens.metrics import deletion_curve, perturbation_curve

    out: dict[str, Any] = {}
    for name in names:
        model = HookedViT.from_timm(name)
        x = torch.randn(1, 3, 224, 224)
        t = torch.tensor([3])
        batch = torch.randn(batch_size, 3, 224, 224)

        def timed(fn: Any, n: int = reps) -> float:
            fn()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t0) / n

        with torch.no_grad():
            fwd = timed(lambda: model(batch)) / batch_size
        xb = batch[:8].clone().requires_grad_(True)
        fwd_bwd = timed(lambda: torch.autograd.grad(model(xb)[:, 0].sum(), xb)) / 8
        rec: dict[str, Any] = {"forward_s": fwd, "forward_backward_s": fwd_bwd, "methods_s": {}}
        if forward_only:
            out[name] = rec
            print(f"  {name}: {json.dumps(rec)}", file=sys.stderr)
            continue
        options = {"rise": {"n_masks": 64}, "integrated_gradients": {"n_steps": 8}, "occlusion": {}}
        for method in ("caap", "raw_attention", "rollout", "attention_gradcam", "gradient_weighted_attention",
                       "token_gradcam", "integrated_gradients", "attnlrp", "occlusion", "rise",
                       "attribution_patching"):
            try:
                s = timed(lambda m=method: attribute(m, model, x, t, **options.get(m, {})), n=1)
            except Exception as err:  # noqa: BLE001 - a method missing in this version is reported, not fatal
                rec["methods_s"][method] = f"failed: {err}"
                continue
            if method == "rise":  # measured with 64 masks; the comparison uses 1000
                s *= 1000 / 64
            elif method == "integrated_gradients":  # measured with 8 steps; the comparison uses 32
                s *= 32 / 8
            rec["methods_s"][method] = s
            print(f"  {name} {method}: {s:.2f} s/image", file=sys.stderr)
        maps = torch.rand(1, *model.grid.grid_size)
        rec["deletion_s"] = timed(lambda: deletion_curve(model, x, maps, t, batch_size=64), n=1)
        rec["perturbation_s"] = timed(lambda: perturbation_curve(model, x, maps, t, batch_size=64), n=1)
        out[name] = rec
        print(f"  {name}: {json.dumps({k: v for k, v in rec.items() if k != 'methods_s'})}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_memory_worker":
        print(json.dumps(memory_worker(int(argv[1]))))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("overhead", "memory", "costs", "all"))
    p.add_argument("--scenes", type=int, default=24)
    p.add_argument("--methods", default="caap,rollout,token_gradcam,occlusion,attnlrp")
    p.add_argument("--sizes", default="64,256,1024")
    p.add_argument("--models", default="vit_small_patch16_224,vit_base_patch16_224")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--forward-only", action="store_true", help="costs: forward and backward only, no methods")
    p.add_argument("--batch-size", type=int, default=32, help="costs: images per timed forward pass")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, shared",
                              "threads": args.threads, "torch": torch.__version__,
                              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.what in ("overhead", "all"):
        result["overhead"] = overhead(args.scenes, args.methods.split(","))
        print(json.dumps(result["overhead"], indent=1))
    if args.what in ("memory", "all"):
        result["memory"] = memory([int(s) for s in args.sizes.split(",")])
    if args.what in ("costs", "all"):
        result["costs"] = costs(args.models.split(","), forward_only=args.forward_only, batch_size=args.batch_size)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(args.json.read_text()) if args.json.exists() else {}
        args.json.write_text(json.dumps({**old, **result}, indent=1))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()

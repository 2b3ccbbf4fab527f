"""What running a dynamic-size model at another size costs (issue 15). Not a test: prints ratios of one run.

On the real DINOv2-S/14 (``make real-model``), converted with ``dynamic_img_size=True`` (built for 224 px)
and run on a real photo resized to ``--size`` (default 168x280, a 12x20 grid), against a fixed-size
model that timm builds at that size from the same weights (its position embedding resampled once, by
timm's ``resample_abs_pos_embed``). The two compute the same numbers, so the difference is what the
dynamic model does on top: resampling the position embedding in every forward and making the view
`HookedViT.at_size`. Both sides alternate ``--repeats`` times; ratios are of the minimum times.

1. one plain forward of a batch of ``--batch`` images;
2. one CAAP map of every patch (self-similarity score: which patches restore the photo's embedding),
   with the maps' max abs difference (0 means the same map bit for bit).

Usage:
    python benchmarks/bench_dynamic_size.py [--size 168x280] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: benchmarks.machine is found from the repository root
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.machine import cpu_model  # noqa: E402


def _fixed_model(size: tuple[int, int]):
    """timm's fixed-size DINOv2-S/14 at ``size`` with the real weights, and its HookedViT."""
    from safetensors.torch import load_file
    from timm.layers import resample_abs_pos_embed

    from caap_lens import HookedViT, import_timm
    from caap_lens.loading import real_dinov2 as rd

    timm = import_timm()
    state = load_file(str(rd.checkpoint_path(224)))
    grid = (size[0] // 14, size[1] // 14)
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=grid, old_size=(16, 16),
                                                num_prefix_tokens=1)
    module = timm.create_model(rd.TIMM_ARCH, img_size=size, num_classes=0).eval()
    module.load_state_dict(state, strict=True)
    return HookedViT.from_timm(module, family="dinov2")


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="168x280", help="HxW, whole 14-px patches")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.lower().split("x"))

    from skimage import data

    from caap_lens import caap
    from caap_lens.attribution.scores import self_similarity
    from caap_lens.loading import real_dinov2 as rd

    dynamic = rd.load_real_dinov2(dynamic_img_size=True)
    fixed = _fixed_model(size)
    photo = dynamic.preprocess(data.astronaut())
    x = torch.nn.functional.interpolate(photo, size=size, mode="bilinear", align_corners=False)
    batch = x.expand(args.batch, -1, -1, -1).contiguous()
    with torch.inference_mode():
        out_d, out_f = dynamic(batch), fixed(batch)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {args.threads} threads; real DINOv2-S/14 built for "
          f"224x224, run at {size[0]}x{size[1]} ({size[0] // 14}x{size[1] // 14} patches)")
    print(f"forward outputs equal bit for bit: {torch.equal(out_d, out_f)}")

    def forward(model):
        def run():
            with torch.inference_mode():
                model(batch)
        return run

    t_fwd = {name: [] for name in ("dynamic", "fixed")}
    for _ in range(args.repeats):  # alternate, so passing load hits both sides
        t_fwd["dynamic"].append(_best(forward(dynamic), 1))
        t_fwd["fixed"].append(_best(forward(fixed), 1))
    fd, ff = min(t_fwd["dynamic"]), min(t_fwd["fixed"])
    print(f"1. forward, batch {args.batch}: dynamic {fd * 1000:.1f} ms, fixed {ff * 1000:.1f} ms, "
          f"ratio {fd / ff:.3f}")

    score = self_similarity(out_d[:1])
    maps, t_map = {}, {"dynamic": [], "fixed": []}
    for _ in range(args.repeats):
        for name, model in (("dynamic", dynamic), ("fixed", fixed)):
            t0 = time.perf_counter()
            maps[name] = caap(model, x, target=torch.arange(1), score=score).map
            t_map[name].append(time.perf_counter() - t0)
    md, mf = min(t_map["dynamic"]), min(t_map["fixed"])
    diff = (maps["dynamic"] - maps["fixed"]).abs().max().item()
    print(f"2. one CAAP map ({maps['dynamic'].shape[-2]}x{maps['dynamic'].shape[-1]} patches, window (4, 8)): "
          f"dynamic {md:.2f} s, fixed {mf:.2f} s, ratio {md / mf:.3f}; max |map diff| {diff:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

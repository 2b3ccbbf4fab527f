"""Renders the documentation's static figures (PNG) from the bundled model and its test scenes.

    python docs/make_figures.py                 # writes docs/figures/*.png
    python docs/make_figures.py --out /tmp/figs --scenes 32

Needs kaleido (``pip install kaleido``), which drives a Chromium it finds on the machine (Debian's
``chromium`` package, or ``kaleido.get_chrome()`` elsewhere). Runs offline on CPU in well under a
minute for the bundled ``fashion-scenes-vit``; everything is seeded, so a re-run after the model is
retrained only changes what the model changed.

Figures (all for the bundled model; targets are the scene's present class with the highest logit):

* ``map_overlay.png``   — the CAAP effect map of one scene over the image (the README's figure);
* ``depth_heatmap.png`` — that scene's patch effects when one layer at a time is patched;
* ``window_sweep.png``  — mask AUROC of every window's map (mean over scenes) beside three windows' maps;
* ``head_grid.png``     — per-layer, per-head maps of the scene;
* ``metric_curves.png`` — deletion curves of CAAP and five baselines over the scenes.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

MAX_BYTES = 200_000


def present_targets(logits: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """Per scene, the class in the scene with the highest logit (the model is multi-label)."""
    present = torch.from_numpy(labels > 0.5)
    return logits.masked_fill(~present, float("-inf")).argmax(-1)


def pick_scene(logits: torch.Tensor, labels: np.ndarray) -> int:
    """The first scene whose top-1 class is in the scene (a correct prediction to explain)."""
    top = logits.argmax(-1).numpy()
    hits = np.flatnonzero(labels[np.arange(len(top)), top] > 0.5)
    return int(hits[0]) if hits.size else 0


def save(fig, path: Path, scale: float = 1.0) -> None:
    fig.write_image(str(path), format="png", scale=scale)
    size = path.stat().st_size
    if size > MAX_BYTES:  # keep the repository light: retry smaller
        fig.write_image(str(path), format="png", scale=scale * 0.75)
        size = path.stat().st_size
    print(f"  {path} ({size / 1000:.0f} kB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "figures"), help="output folder")
    parser.add_argument("--scenes", type=int, default=16, help="scenes for the sweep scores and curves")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from caap_lens import HookedViT, caap, depth_profile, window_sweep
    from caap_lens.baselines import attribute
    from caap_lens.loading.bundled import load_bundled_scenes
    from caap_lens.metrics import deletion_curve, mask_auroc
    from caap_lens.plot import depth_heatmap, head_grid, map_overlay, metric_curves, window_sweep_view

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = HookedViT.from_pretrained("fashion-scenes-vit")
    scenes = load_bundled_scenes("fashion-scenes-vit")
    n_layers, names = model.cfg.n_layers, model.class_names
    norm = {"mean": model.cfg.image_mean, "std": model.cfg.image_std}

    with torch.no_grad():
        all_logits = model(model.preprocess(scenes.images))
    i = pick_scene(all_logits, scenes.labels)
    n = max(2, args.scenes)
    index = [i] + [j for j in range(len(scenes)) if j != i][: n - 1]  # the shown scene first
    x = model.preprocess(scenes.images[index])
    targets = present_targets(all_logits[index], scenes.labels[index])
    masks = torch.from_numpy(np.stack([scenes.class_mask(j, int(t)) for j, t in zip(index, targets)]))
    target = int(targets[0])
    label = f"{names[target]}" if names else f"class {target}"
    print(f"model: {n_layers} layers, {model.cfg.n_heads} heads, grid {model.grid.grid_size}; "
          f"scene {i}, target {label!r}")

    # 1. the map over the image
    result = caap(model, x[:1], target=targets[:1], relative=True)
    start, stop = result.settings["layers"]
    fig = map_overlay(x[0], result, model.grid, title=f"CAAP: '{label}', layers [{start}, {stop})",
                      size=420, **norm)  # colour bar "logit − context": white = no effect
    save(fig, out / "map_overlay.png")

    # 2. patch effects across depth
    profile = depth_profile(model, x[:1], target=targets[:1], relative=True)
    fig = depth_heatmap(profile, model.grid, k=min(16, model.grid.n_patches),
                        title=f"Top patches' effect by layer ('{label}')",
                        height=max(300, 120 + 28 * n_layers), width=760)
    save(fig, out / "depth_heatmap.png")

    # 3. every window, scored by how well its map localises the target item (mask AUROC)
    sweep = window_sweep(model, x, target=targets, relative=True)
    auroc = torch.stack([mask_auroc(m, masks, grid=model.grid) for m in sweep.maps])  # [n_windows, n]
    scores = torch.nanmean(auroc.float(), dim=1)
    shown = [(start, stop), (0, n_layers)]
    best = sweep.windows[int(torch.argmax(torch.nan_to_num(scores, nan=-1.0)))]
    shown = list(dict.fromkeys([best] + shown))  # best first, no duplicates (a 1-layer model has one window)
    fig = window_sweep_view(sweep, x[0], model.grid, scores, shown, n_layers=n_layers,
                            score_name=f"mask AUROC (mean of {n})",
                            title=f"Window sweep: localisation per window, maps for '{label}'", size=300, **norm)
    save(fig, out / "window_sweep.png")

    # 4. per-layer, per-head maps
    heads = caap(model, x[:1], target=targets[:1], heads=True, per_layer=True, layers=(0, n_layers), relative=True)
    fig = head_grid(heads, model.grid, image=x[0], opacity=0.75,
                    title=f"Per-head CAAP maps ('{label}')", cell_size=min(120, max(70, 700 // n_layers)), **norm)
    save(fig, out / "head_grid.png")

    # 5. deletion curves of CAAP and baselines
    methods = ("caap", "rollout", "token_gradcam", "integrated_gradients", "occlusion", "attribution_patching")
    curves = {m: deletion_curve(model, x, attribute(m, model, x, target=targets).map, targets, steps=16)
              for m in methods}
    fig = metric_curves(curves, title=f"Deletion curves ({n} bundled test scenes)", width=720, height=440)
    save(fig, out / "metric_curves.png")
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()

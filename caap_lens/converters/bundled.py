"""Models shipped inside caap_lens: their files, and their conversion to `HookedViT`'s config and weights.

Each bundled model is a folder under ``caap_lens/pretrained/`` holding

* ``model.safetensors`` -- a timm ``VisionTransformer`` state dict;
* ``config.json``       -- the ``VisionTransformer`` keyword arguments (``timm_kwargs``), the class
  names, the input ``mean``/``std``, the scene config and the recorded metrics;
* ``test_scenes.npz``   -- held-out scenes with ground-truth masks (a `caap_lens.data.SceneSet`);
* ``MODEL_CARD.md``     -- how it was trained and how well it does.

`convert_bundled` rebuilds the timm model from ``config.json`` (`bundled_timm`), loads the weights
strictly and converts it with `convert_timm`; nothing is downloaded. ``fashion-scenes-dinov2`` ships
only the tensors its training changed; the rest of its backbone is the real DINOv2-S/14 checkpoint
(`caap_lens.converters.real_dinov2.checkpoint_path`, provisioned by ``make real-model``).

Example:
    >>> cfg, state_dict, class_names = convert_bundled("fashion-scenes-vit")
    >>> cfg.grid_size, class_names[:2]
    ((8, 8), ('t-shirt', 'trouser'))
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
from pathlib import Path
from typing import Any

from torch import Tensor

from caap_lens._timm import import_timm
from caap_lens.config import HookedViTConfig
from caap_lens.converters.real_dinov2 import checkpoint_path
from caap_lens.converters.timm_vit import convert_timm

__all__ = ["BUNDLED", "bundled_config", "bundled_path", "bundled_timm", "convert_bundled", "list_bundled",
           "not_bundled_message"]

#: Bundled model name -> folder under ``caap_lens/pretrained/``.
BUNDLED: dict[str, str] = {"fashion-scenes-vit": "fashion_scenes_vit", "fashion-scenes-dinov2": "fashion_scenes_dinov2"}

_WEIGHTS, _CONFIG = "model.safetensors", "config.json"
SCENES_FILE = "test_scenes.npz"  #: held-out scenes of a bundle that ships them
_TRAIN_SCRIPT = "scripts/train_default_model.py"


def list_bundled() -> list[str]:
    """Names of the bundled models.

    Example:
        >>> list_bundled()
        ['fashion-scenes-dinov2', 'fashion-scenes-vit']
    """
    return sorted(BUNDLED)


def not_bundled_message(name: str) -> str:
    """Why ``name`` is not a bundled model, and what to call instead when it is a timm name or a file.

    Example:
        >>> print(not_bundled_message("vit_small_patch16_224"))  # doctest: +NORMALIZE_WHITESPACE
        no bundled model named 'vit_small_patch16_224' (bundled models: fashion-scenes-dinov2, fashion-scenes-vit);
        it is a timm model: use HookedViT.from_timm('vit_small_patch16_224', pretrained=True) for timm's
        weights, or HookedViT.from_timm('vit_small_patch16_224', checkpoint_path=...) for your own
    """
    text = f"no bundled model named {name!r} (bundled models: {', '.join(list_bundled())})"
    if Path(name).suffix.lower() in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
        return (f"{text}; {name!r} looks like a checkpoint file: use HookedViT.from_timm(ARCH, "
                f"checkpoint_path={name!r}) with its timm architecture")
    try:
        known = bool(import_timm().is_model(name.split(".")[0]))
    except Exception:  # the hint is a convenience; the error stands without it
        known = False
    if not known:
        return f"{text}; for a timm model use HookedViT.from_timm(name)"
    return (f"{text}; it is a timm model: use HookedViT.from_timm({name!r}, pretrained=True) for timm's weights, "
            f"or HookedViT.from_timm({name!r}, checkpoint_path=...) for your own")


def bundled_path(name: str, filename: str | None = None) -> Path:
    """The folder of a bundled model, or one file in it (which must exist).

    Raises:
        ValueError: ``name`` is not bundled.
        FileNotFoundError: the file is missing (the message says how to recreate it).

    Example:
        >>> bundled_path("fashion-scenes-vit", "config.json").name
        'config.json'
    """
    if name not in BUNDLED:
        raise ValueError(not_bundled_message(name))
    folder = Path(str(importlib.resources.files("caap_lens") / "pretrained" / BUNDLED[name]))
    if filename is None:
        return folder
    path = folder / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled model {name!r} is missing {filename} (looked in {folder}). The package data was not "
            f"installed or was removed: reinstall caap_lens, or recreate the files from a source checkout with "
            f"`python {_TRAIN_SCRIPT}` (writes {_WEIGHTS}, {_CONFIG}, {SCENES_FILE} and MODEL_CARD.md there)."
        )
    return path


def bundled_config(name: str) -> dict[str, Any]:
    """The parsed ``config.json`` of a bundled model (architecture, class names, mean/std, metrics).

    Example:
        >>> bundled_config("fashion-scenes-vit")["timm_kwargs"]["patch_size"]
        8
    """
    return json.loads(bundled_path(name, _CONFIG).read_text())


def bundled_timm(name: str) -> Any:
    """The bundled model as the timm ``VisionTransformer`` it was trained as, in eval mode.

    Its ``pretrained_cfg`` carries the input mean/std, so `convert_timm` picks them up.

    Example:
        >>> timm_model = bundled_timm("fashion-scenes-vit")
        >>> type(timm_model).__name__
        'VisionTransformer'
    """
    from safetensors.torch import load_file

    config = bundled_config(name)
    state = {k: v.float() for k, v in load_file(str(bundled_path(name, _WEIGHTS))).items()}
    timm = import_timm()
    backbone = config.get("backbone")
    if backbone is None:
        model = timm.models.vision_transformer.VisionTransformer(**config["timm_kwargs"])
    else:
        model = timm.create_model(config["timm_arch"], **config["timm_kwargs"])
        state = {**_backbone_state(backbone), **state}
    model.load_state_dict(state, strict=True)
    size = config["timm_kwargs"]["img_size"]
    model.pretrained_cfg = {
        "architecture": name,
        "num_classes": config["timm_kwargs"]["num_classes"],
        "input_size": (config["timm_kwargs"].get("in_chans", 3), size, size),
        "mean": tuple(config["mean"]),
        "std": tuple(config["std"]),
        "label_names": tuple(config["class_names"]),
    }
    return model.eval()


def _backbone_state(backbone: dict[str, Any]) -> dict[str, Any]:
    """The frozen tensors of a bundle whose backbone is provisioned separately."""
    from safetensors.torch import load_file

    if backbone.get("source") != "real_dinov2":
        raise ValueError(f"unknown bundled backbone source {backbone.get('source')!r}")
    return load_file(str(checkpoint_path(int(backbone["img_size"]))))


def convert_bundled(name: str) -> tuple[HookedViTConfig, dict[str, Tensor], tuple[str, ...]]:
    """The `HookedViT` config, state dict and class names of a bundled model, offline.

    Raises:
        ValueError: Unknown name (the message lists the bundled names).
        FileNotFoundError: The model's files are missing (the message says how to recreate them);
            `MissingRealWeightsError` for ``fashion-scenes-dinov2`` without ``make real-model``.

    Example:
        >>> cfg, state_dict, names = convert_bundled("fashion-scenes-vit")
        >>> cfg.source, len(names) == cfg.n_classes
        ('caap_lens bundled: fashion-scenes-vit', True)
    """
    config = bundled_config(name)
    cfg, state = convert_timm(bundled_timm(name), family=config.get("family", "vit"),
                              source=f"caap_lens bundled: {name}")
    cfg = dataclasses.replace(cfg, output_activation=config.get("output_activation", cfg.output_activation),
                              weights_kind="bundled", weights=f"bundled: {name}")
    return cfg, state, tuple(config["class_names"])

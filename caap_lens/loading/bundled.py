"""Models shipped inside caap_lens, loadable offline by name.

Each bundled model is a folder under ``caap_lens/pretrained/`` holding

* ``model.safetensors`` -- a timm ``VisionTransformer`` state dict;
* ``config.json``       -- the ``VisionTransformer`` keyword arguments (``timm_kwargs``), the class
  names, the input ``mean``/``std``, the scene config and the recorded metrics;
* ``test_scenes.npz``   -- held-out scenes with ground-truth masks (a `caap_lens.data.SceneSet`);
* ``MODEL_CARD.md``     -- how it was trained and how well it does.

Loading rebuilds the timm model from ``config.json``, loads the weights and converts it with
`caap_lens.loading.timm_vit.from_timm`; nothing is downloaded. The training script is
``scripts/train_default_model.py``.

``fashion-scenes-dinov2`` (the deep testbed, ``scripts/train_dinov2_testbed.py``) ships only the tensors
its training changed (the last blocks, the final norm and the head); the rest of its backbone is the real
DINOv2-S/14 that ``make real-model`` provisions (`caap_lens.loading.real_dinov2`). Its scenes are not
shipped: `load_bundled_scenes` rebuilds them exactly from the recorded scene config and seeds (this
needs Fashion-MNIST, see `caap_lens.data.fashion_mnist`).

Example:
    >>> from caap_lens.loading.bundled import list_bundled, load_bundled, load_bundled_scenes
    >>> list_bundled()
    ['fashion-scenes-dinov2', 'fashion-scenes-vit']
    >>> model = load_bundled("fashion-scenes-vit")
    >>> scenes = load_bundled_scenes("fashion-scenes-vit")
    >>> logits = model(model.preprocess(scenes.images[:4]))
    >>> logits.shape
    torch.Size([4, 10])
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

from caap_lens.model.hooked_vit import HookedViT

__all__ = ["BUNDLED", "bundled_config", "bundled_path", "list_bundled", "load_bundled", "load_bundled_scenes",
           "load_bundled_timm"]

#: Bundled model name -> folder under ``caap_lens/pretrained/``.
BUNDLED: dict[str, str] = {"fashion-scenes-vit": "fashion_scenes_vit", "fashion-scenes-dinov2": "fashion_scenes_dinov2"}

_WEIGHTS, _CONFIG, _SCENES = "model.safetensors", "config.json", "test_scenes.npz"
_TRAIN_SCRIPT = "scripts/train_default_model.py"


def list_bundled() -> list[str]:
    """Names of the bundled models.

    Example:
        >>> list_bundled()
        ['fashion-scenes-dinov2', 'fashion-scenes-vit']
    """
    return sorted(BUNDLED)


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
        raise ValueError(f"no bundled model named {name!r}; bundled models: {', '.join(list_bundled())}")
    folder = Path(str(importlib.resources.files("caap_lens") / "pretrained" / BUNDLED[name]))
    if filename is None:
        return folder
    path = folder / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled model {name!r} is missing {filename} (looked in {folder}). The package data was not "
            f"installed or was removed: reinstall caap_lens, or recreate the files from a source checkout with "
            f"`python {_TRAIN_SCRIPT}` (writes {_WEIGHTS}, {_CONFIG}, {_SCENES} and MODEL_CARD.md there)."
        )
    return path


def bundled_config(name: str) -> dict[str, Any]:
    """The parsed ``config.json`` of a bundled model (architecture, class names, mean/std, metrics).

    Example:
        >>> bundled_config("fashion-scenes-vit")["timm_kwargs"]["patch_size"]
        8
    """
    return json.loads(bundled_path(name, _CONFIG).read_text())


def load_bundled_timm(name: str) -> Any:
    """The bundled model as the timm ``VisionTransformer`` it was trained as, in eval mode.

    Its ``pretrained_cfg`` carries the input mean/std, so `from_timm` picks them up.

    Example:
        >>> timm_model = load_bundled_timm("fashion-scenes-vit")
        >>> type(timm_model).__name__
        'VisionTransformer'
    """
    from safetensors.torch import load_file

    from caap_lens._timm import import_timm

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
    from caap_lens.loading.real_dinov2 import checkpoint_path

    return load_file(str(checkpoint_path(int(backbone["img_size"]))))


def load_bundled(name: str, **kwargs: Any) -> HookedViT:
    """Loads a bundled model as a `HookedViT`, offline.

    Args:
        name: A name from :func:`list_bundled`, e.g. ``"fashion-scenes-vit"``.
        **kwargs: ``device`` and/or ``dtype`` to move the model to (default: CPU, float32).

    Returns:
        The hooked model in eval mode, with ``class_names`` set and the training input mean/std as
        ``cfg.image_mean``/``cfg.image_std`` (used by ``model.preprocess``).

    Raises:
        ValueError: Unknown name (the message lists the bundled names).
        FileNotFoundError: The model's files are missing (the message says how to recreate them).
        TypeError: Unexpected keyword arguments.

    Example:
        >>> model = load_bundled("fashion-scenes-vit")
        >>> model.class_names[:3]
        ('t-shirt', 'trouser', 'pullover')
        >>> HookedViT.from_pretrained("fashion-scenes-vit").cfg.grid_size
        (8, 8)
    """
    unknown = set(kwargs) - {"device", "dtype"}
    if unknown:
        raise TypeError(f"load_bundled got unexpected keyword arguments {sorted(unknown)}; it accepts device, dtype")
    from caap_lens.loading.timm_vit import from_timm

    config = bundled_config(name)
    model = from_timm(load_bundled_timm(name), family=config.get("family", "vit"),
                      class_names=tuple(config["class_names"]))
    model.cfg.source = f"caap_lens bundled: {name}"
    if kwargs:
        model = model.to(device=kwargs.get("device"), dtype=kwargs.get("dtype"))
    return model


def load_bundled_scenes(name: str, split: str = "test", n: int | None = None, removals: bool = False) -> Any:
    """Held-out scenes (with item masks) of a bundled model.

    ``fashion-scenes-vit`` ships its 200 test scenes (``split="test"`` only). Models whose config records
    ``scene_splits`` (``fashion-scenes-dinov2``: ``"dev"`` and ``"test"``) rebuild them exactly from the
    scene config and seed; ``n`` scenes (default: the test-set size the model card reports), with the
    object-removal renders when ``removals=True``.

    Returns:
        A `caap_lens.data.SceneSet` (Fashion-MNIST *test* items only).

    Example:
        >>> scenes = load_bundled_scenes("fashion-scenes-vit")
        >>> scenes.images.shape[1:], scenes.split
        ((64, 64, 3), 'test')
    """
    from caap_lens.data.scenes import SceneConfig, SceneSet, build_scenes

    config = bundled_config(name)
    splits = config.get("scene_splits")
    if splits is None:
        if split != "test" or n is not None or removals:
            raise ValueError(f"bundled model {name!r} ships fixed test scenes only: call load_bundled_scenes({name!r})")
        return SceneSet.load(bundled_path(name, _SCENES))
    if split not in splits or split == "train":
        choices = sorted(k for k in splits if k != "train")
        raise ValueError(f"split must be one of {choices} for {name!r}, got {split!r}")
    cfg = config["scene_config"]
    groups = cfg.get("class_groups")
    cfg = {**cfg, "class_groups": tuple(map(tuple, groups)) if groups else None}
    count = int(n) if n is not None else int(config["metrics"]["test_scenes"])
    return build_scenes(splits[split]["glyph_split"], count, seed=int(splits[split]["seed"]),
                        config=SceneConfig(**cfg), removals=removals)

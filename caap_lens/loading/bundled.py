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

Example:
    >>> from caap_lens.loading.bundled import list_bundled, load_bundled, load_bundled_scenes
    >>> list_bundled()
    ['fashion-scenes-vit']
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
BUNDLED: dict[str, str] = {"fashion-scenes-vit": "fashion_scenes_vit"}

_WEIGHTS, _CONFIG, _SCENES = "model.safetensors", "config.json", "test_scenes.npz"
_TRAIN_SCRIPT = "scripts/train_default_model.py"


def list_bundled() -> list[str]:
    """Names of the bundled models.

    Example:
        >>> list_bundled()
        ['fashion-scenes-vit']
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
    state = load_file(str(bundled_path(name, _WEIGHTS)))
    timm = import_timm()
    model = timm.models.vision_transformer.VisionTransformer(**config["timm_kwargs"])
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
    model = from_timm(load_bundled_timm(name), family="vit", class_names=tuple(config["class_names"]))
    model.cfg.source = f"caap_lens bundled: {name}"
    if kwargs:
        model = model.to(device=kwargs.get("device"), dtype=kwargs.get("dtype"))
    return model


def load_bundled_scenes(name: str) -> Any:
    """The held-out test scenes (with item masks) shipped with a bundled model.

    Returns:
        A `caap_lens.data.SceneSet` (Fashion-MNIST *test* items only); ``config.json``'s
        ``metrics.bundled_map`` is the model's mAP on exactly these scenes.

    Example:
        >>> scenes = load_bundled_scenes("fashion-scenes-vit")
        >>> scenes.images.shape[1:], scenes.split
        ((64, 64, 3), 'test')
    """
    from caap_lens.data.scenes import SceneSet

    return SceneSet.load(bundled_path(name, _SCENES))

"""Models shipped inside caap_lens, loadable offline by name, and their held-out scenes.

Each bundled model is a folder under ``caap_lens/pretrained/`` (``model.safetensors``, ``config.json``,
``test_scenes.npz``, ``MODEL_CARD.md``); reading those files into a config and weights is
`caap_lens.converters.bundled`, whose names (`list_bundled`, `bundled_path`, `bundled_config`,
``BUNDLED``, and ``load_bundled_timm`` for `caap_lens.converters.bundled.bundled_timm`) are
re-exported here. This module adds `load_bundled` (the function form of `HookedViT.from_pretrained`)
and `load_bundled_scenes`. The training script is ``scripts/train_default_model.py``.

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

from typing import Any

from caap_lens.converters.bundled import BUNDLED, SCENES_FILE, bundled_config, bundled_path, list_bundled
from caap_lens.converters.bundled import bundled_timm as load_bundled_timm
from caap_lens.model.hooked_vit import HookedViT

__all__ = ["BUNDLED", "bundled_config", "bundled_path", "list_bundled", "load_bundled", "load_bundled_scenes",
           "load_bundled_timm"]


def load_bundled(name: str, **kwargs: Any) -> HookedViT:
    """Loads a bundled model as a `HookedViT`, offline: exactly `HookedViT.from_pretrained`.

    Args:
        name: A name from :func:`list_bundled`, e.g. ``"fashion-scenes-vit"``.
        **kwargs: ``device`` and/or ``dtype`` to move the model to (default: CPU, float32).

    Raises:
        ValueError: Unknown name (the message lists the bundled names).
        FileNotFoundError: The model's files are missing (the message says how to recreate them).
        TypeError: Unexpected keyword arguments.

    Example:
        >>> model = load_bundled("fashion-scenes-vit")
        >>> model.class_names[:3]
        ('t-shirt', 'trouser', 'pullover')
    """
    return HookedViT.from_pretrained(name, **kwargs)


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
        return SceneSet.load(bundled_path(name, SCENES_FILE))
    if split not in splits or split == "train":
        choices = sorted(k for k in splits if k != "train")
        raise ValueError(f"split must be one of {choices} for {name!r}, got {split!r}")
    cfg = config["scene_config"]
    groups = cfg.get("class_groups")
    cfg = {**cfg, "class_groups": tuple(map(tuple, groups)) if groups else None}
    count = int(n) if n is not None else int(config["metrics"]["test_scenes"])
    return build_scenes(splits[split]["glyph_split"], count, seed=int(splits[split]["seed"]),
                        config=SceneConfig(**cfg), removals=removals)

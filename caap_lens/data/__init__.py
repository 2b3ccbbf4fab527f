"""Datasets: Fashion-MNIST loading and synthetic multi-object scenes with exact masks.

Example:
    >>> from caap_lens.data import build_scenes
    >>> scenes = build_scenes("train", 100, seed=0)
    >>> scenes.images.shape
    (100, 64, 64, 3)
"""

from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from .scenes import SPLITS, SceneConfig, SceneSet, build_scenes

__all__ = [
    "FASHION_MNIST_CLASSES",
    "SPLITS",
    "SceneConfig",
    "SceneSet",
    "build_scenes",
    "load_fashion_mnist",
]

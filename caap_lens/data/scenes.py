"""Synthetic multi-object RGB scenes with exact ground-truth masks.

A scene pastes a few Fashion-MNIST items, each of a *different* class, onto a
textured background. The background is coloured multi-scale noise (uniform
noise on coarse grids, bilinearly upsampled, weights halving per scale, added
to a random base colour, kept in ``[0, background_max]``). Each item is a
glyph bilinearly resized to a random side in ``item_size`` and tinted with a
random colour whose brightest channel lies in ``item_value``; the glyph
intensity is the alpha: ``pixel = alpha * colour + (1 - alpha) * below``.
By default boxes never overlap: positions are drawn uniformly among the free
ones, found exactly with an integral image of the occupied area.

An item's mask is ``alpha > mask_threshold * max(alpha)`` inside its box
(minus pixels masked by later items when overlap is allowed). As
``background_max < item_value[0]``, high-alpha pixels always stand out, so the
masks are exact ground truth for attribution metrics (pointing game, mask
energy).

Two options serve deeper testbeds. ``SceneConfig.class_groups`` merges Fashion-MNIST classes into
coarser labels (e.g. the four confusable tops into one "top"); each scene then holds items of
distinct *groups*, so every label present in a scene belongs to exactly one item. With
``build_scenes(..., removals=True)`` every scene is also re-rendered once per item *without* that
item, on exactly the same background and with the other items unchanged (one compositing function
draws both), so the true effect of removing an item on a model's score is known exactly.

All draws come from ``np.random.default_rng([seed, split_id])``: the
same arguments give identical arrays, train and test differ, and train scenes
use only Fashion-MNIST train images, test scenes only test images.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fashion_mnist import FASHION_MNIST_CLASSES, _load_shared

__all__ = ["SPLITS", "SceneConfig", "SceneSet", "build_scenes"]

SPLITS: tuple[str, ...] = ("train", "test")
_SPLIT_ID = {"train": 0, "test": 1}
_NUM_CLASSES = len(FASHION_MNIST_CLASSES)
_FORMAT = "caap_lens.scenes/1"
_MAX_RESTARTS = 1000


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Ranges are inclusive ``(low, high)`` pairs.

    Attributes:
        image_size: Side of the square RGB image in pixels.
        n_items: Range of the number of items per scene (at most 10: classes are distinct).
        item_size: Range of the rendered item side in pixels (glyphs are 28x28).
        allow_overlap: If False, item boxes never overlap.
        mask_threshold: An item's mask is ``alpha > mask_threshold * max(alpha)``.
        background_scales: Noise grid sizes summed into the background texture.
        background_max: Largest background channel value (in ``[0, 1]``).
        item_value: Range of the brightest channel of an item's colour; its low
            end must exceed ``background_max`` so items always stand out.

    Example:
        >>> SceneConfig(image_size=96, n_items=(1, 4)).item_size
        (20, 32)
    """

    image_size: int = 64
    n_items: tuple[int, int] = (2, 3)
    item_size: tuple[int, int] = (20, 32)
    allow_overlap: bool = False
    mask_threshold: float = 0.1
    background_scales: tuple[int, ...] = (4, 8, 16)
    background_max: float = 0.5
    item_value: tuple[float, float] = (0.7, 1.0)
    class_groups: tuple[tuple[int, ...], ...] | None = None
    group_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("n_items", "item_size", "background_scales", "item_value"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.class_groups is not None:
            groups = tuple(tuple(int(c) for c in g) for g in self.class_groups)
            object.__setattr__(self, "class_groups", groups)
            flat = [c for g in groups for c in g]
            if not groups or any(not g for g in groups) or len(set(flat)) != len(flat) \
                    or not set(flat) <= set(range(_NUM_CLASSES)):
                raise ValueError("class_groups must be non-empty, disjoint groups of Fashion-MNIST classes "
                                 f"0..{_NUM_CLASSES - 1}, got {self.class_groups}")
            names = self.group_names
            if names is None:
                names = tuple("/".join(FASHION_MNIST_CLASSES[c] for c in g) for g in groups)
            if len(names) != len(groups):
                raise ValueError(f"group_names has {len(names)} names for {len(groups)} class_groups")
            object.__setattr__(self, "group_names", tuple(names))
        elif self.group_names is not None:
            raise ValueError("group_names needs class_groups")
        size, (n_lo, n_hi), (s_lo, s_hi) = self.image_size, self.n_items, self.item_size
        if not 1 <= n_lo <= n_hi <= self.n_labels:
            raise ValueError(f"n_items must be (low, high) with 1 <= low <= high <= {self.n_labels} "
                             f"(each item in a scene has a distinct label), got {self.n_items}")
        if not 4 <= s_lo <= s_hi:
            raise ValueError(f"item_size must be (low, high) with 4 <= low <= high, got {self.item_size}")
        if size < s_hi:
            raise ValueError(f"image_size={size} is too small for items of up to {s_hi}px; "
                             f"expected image_size >= item_size[1]")
        if not self.allow_overlap and (size // s_lo) ** 2 < n_hi:
            raise ValueError(f"image_size={size} is too small to fit {n_hi} non-overlapping items of "
                             f"{s_lo}px; expected (image_size // item_size[0]) ** 2 >= n_items[1], "
                             "or allow_overlap=True")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")
        if not self.background_scales or not all(2 <= g <= size for g in self.background_scales):
            raise ValueError(f"background_scales must be non-empty grid sizes in [2, image_size], "
                             f"got {self.background_scales}")
        if not 0.0 <= self.background_max < self.item_value[0] <= self.item_value[1] <= 1.0:
            raise ValueError("expected 0 <= background_max < item_value[0] <= item_value[1] <= 1, "
                             f"got background_max={self.background_max}, item_value={self.item_value}")


    @property
    def n_labels(self) -> int:
        """Number of labels: Fashion-MNIST's 10 classes, or the number of ``class_groups``."""
        return _NUM_CLASSES if self.class_groups is None else len(self.class_groups)

    @property
    def label_names(self) -> tuple[str, ...]:
        """The label names (class names, or group names when classes are grouped)."""
        return FASHION_MNIST_CLASSES if self.group_names is None else self.group_names

    def label_of_class(self) -> np.ndarray:
        """``[10]`` label of each Fashion-MNIST class (-1 for classes left out of every group)."""
        if self.class_groups is None:
            return np.arange(_NUM_CLASSES)
        out = np.full(_NUM_CLASSES, -1)
        for label, group in enumerate(self.class_groups):
            out[list(group)] = label
        return out


@dataclass(eq=False)
class SceneSet:
    """A batch of scenes with per-item ground truth (``K = config.n_items[1]``).

    Attributes:
        images: uint8 ``[n, H, W, 3]``.
        labels: float32 multi-hot ``[n, 10]``.
        item_classes: int64 ``[n, K]``, -1 padded.
        item_boxes: int64 ``[n, K, 4]`` as ``(x0, y0, x1, y1)``, end exclusive, -1 padded.
        item_masks: bool ``[n, K, H, W]`` (visible pixels of each item), False padded.
        item_indices: int64 ``[n, K]``, index of each glyph in its source split, -1 padded.
        class_names, config, seed, split: How the set was made (``class_names`` are the label names).
        removal_images: uint8 ``[n, K, H, W, 3]`` or None: scene ``i`` re-rendered without item ``k``
            (zeros for padded items); made by ``build_scenes(..., removals=True)``.
    """

    images: np.ndarray
    labels: np.ndarray
    item_classes: np.ndarray
    item_boxes: np.ndarray
    item_masks: np.ndarray
    item_indices: np.ndarray
    class_names: tuple[str, ...]
    config: SceneConfig
    seed: int
    split: str
    removal_images: np.ndarray | None = None

    _ARRAYS = ("images", "labels", "item_classes", "item_boxes", "item_masks", "item_indices")
    _OPTIONAL = ("removal_images",)

    def __len__(self) -> int:
        return len(self.images)

    def class_mask(self, i: int, cls: int | str) -> np.ndarray:
        """Union of the masks of class ``cls`` (index or name) in scene ``i``.

        Example:
            >>> scenes = build_scenes("test", 4)
            >>> m = scenes.class_mask(0, int(scenes.item_classes[0, 0]))
            >>> m.shape, m.dtype, bool(m.any())
            ((64, 64), dtype('bool'), True)
        """
        if isinstance(cls, str):
            cls = self.class_names.index(cls)
        return self.item_masks[i][self.item_classes[i] == cls].any(axis=0)

    def save(self, path: str | Path) -> Path:
        """Write a compressed ``.npz`` (suffix added if missing); returns the path written.

        Example:
            >>> path = build_scenes("test", 4).save("/tmp/scenes.npz")
            >>> len(SceneSet.load(path))
            4
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        meta = {"format": _FORMAT, "config": _config_dict(self.config),
                "class_names": list(self.class_names), "seed": int(self.seed), "split": self.split}
        arrays = {name: getattr(self, name) for name in self._ARRAYS + self._OPTIONAL
                  if getattr(self, name) is not None}
        np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SceneSet:
        """Read a set written by :meth:`save`; arrays round-trip exactly."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != _FORMAT:
                raise ValueError(f"{path} is not a SceneSet file (format {meta.get('format')!r})")
            arrays = {name: z[name] for name in cls._ARRAYS}
            arrays.update({name: z[name] for name in cls._OPTIONAL if name in z.files})
        return cls(**arrays, class_names=tuple(meta["class_names"]), config=SceneConfig(**meta["config"]),
                   seed=meta["seed"], split=meta["split"])


def _config_dict(cfg: SceneConfig) -> dict:
    """The config as JSON-ready data; the grouping fields only when used (older files stay readable)."""
    out = dataclasses.asdict(cfg)
    if cfg.class_groups is None:
        out.pop("class_groups"), out.pop("group_names")
    return out


@functools.lru_cache(maxsize=256)
def _resize_matrix(src: int, dst: int) -> np.ndarray:
    """``[dst, src]`` bilinear weights with half-pixel centres (as in PIL)."""
    pos = np.clip((np.arange(dst) + 0.5) * (src / dst) - 0.5, 0, src - 1)
    i0 = np.floor(pos).astype(np.int64)
    w1 = pos - i0
    m = np.zeros((dst, src))
    np.add.at(m, (np.arange(dst), i0), 1.0 - w1)
    np.add.at(m, (np.arange(dst), np.minimum(i0 + 1, src - 1)), w1)
    m.flags.writeable = False
    return m


def _background(rng: np.random.Generator, cfg: SceneConfig) -> np.ndarray:
    """Coloured multi-scale noise, float ``[S, S, 3]`` in ``[0, background_max]``."""
    size = cfg.image_size
    tex, total = np.zeros((3, size, size)), 0.0
    for k, g in enumerate(cfg.background_scales):
        m = _resize_matrix(g, size)
        tex += 0.5**k * (m @ rng.uniform(-1.0, 1.0, (3, g, g)) @ m.T)
        total += 0.5**k
    base = rng.uniform(0.2, 0.8, (3, 1, 1))
    return np.clip((base + 0.6 * tex / total) * cfg.background_max, 0.0, cfg.background_max).transpose(1, 2, 0)


def _place(rng: np.random.Generator, occupied: np.ndarray, cfg: SceneConfig) -> tuple[int, int, int] | None:
    """Draw ``(x0, y0, side)`` for a new item, shrinking it if no free spot fits."""
    size, (s_lo, s_hi) = cfg.image_size, cfg.item_size
    side = int(rng.integers(s_lo, s_hi + 1))
    if cfg.allow_overlap:
        y, x = rng.integers(0, size - side + 1, size=2)
        return int(x), int(y), side
    integral = np.zeros((size + 1, size + 1), np.int32)
    integral[1:, 1:] = occupied.cumsum(0).cumsum(1)
    for s in range(side, s_lo - 1, -1):
        k = size - s + 1
        win = integral[s:, s:] - integral[:k, s:] - integral[s:, :k] + integral[:k, :k]
        free = np.flatnonzero(win == 0)
        if free.size:
            y, x = divmod(int(free[rng.integers(free.size)]), k)
            return x, y, s
    return None


def _compose(background: np.ndarray, layers: list, skip: int | None = None) -> np.ndarray:
    """Alpha-composites item ``layers`` ``(x, y, side, alpha, colour)`` over ``background`` in order,
    leaving out layer ``skip``; uint8 ``[S, S, 3]``. The scene and its removals share this function."""
    image = background.copy()
    for j, (x, y, s, alpha, colour) in enumerate(layers):
        if j != skip:
            a = alpha[..., None]
            image[y:y + s, x:x + s] = a * colour + (1.0 - a) * image[y:y + s, x:x + s]
    return np.rint(image * 255.0).astype(np.uint8)


def _render_scene(rng: np.random.Generator, cfg: SceneConfig, glyphs: np.ndarray, by_label: list[np.ndarray]):
    """Draw one scene; returns ``(labels, boxes, masks, indices, background, layers)``."""
    size, present = cfg.image_size, [c for c, idx in enumerate(by_label) if idx.size]
    scale = 1.0 / 255.0 if glyphs.dtype == np.uint8 else 1.0
    for _ in range(_MAX_RESTARTS):
        labels = rng.choice(present, size=int(rng.integers(cfg.n_items[0], cfg.n_items[1] + 1)), replace=False)
        background = _background(rng, cfg)
        occupied = np.zeros((size, size), bool)
        boxes, masks, indices, layers = [], [], [], []
        for c in labels:
            spot = _place(rng, occupied, cfg)
            index = int(by_label[c][rng.integers(by_label[c].size)])
            glyph = glyphs[index].astype(np.float64) * scale
            if spot is None or glyph.max() <= 0:
                break  # no room left, or a blank glyph: redraw the whole scene
            x, y, s = spot
            alpha = np.clip(_resize_matrix(glyph.shape[0], s) @ glyph @ _resize_matrix(glyph.shape[1], s).T, 0, 1)
            colour = rng.uniform(0.05, 1.0, 3)
            colour *= rng.uniform(*cfg.item_value) / colour.max()
            layers.append((x, y, s, alpha, colour))
            mask = np.zeros((size, size), bool)
            mask[y:y + s, x:x + s] = alpha > cfg.mask_threshold * alpha.max()
            occupied[y:y + s, x:x + s] = True
            boxes.append((x, y, x + s, y + s))
            masks.append(mask)
            indices.append(index)
        else:
            if cfg.allow_overlap:  # later items hide earlier ones: keep only visible pixels
                covered = np.zeros((size, size), bool)
                for j in range(len(masks) - 1, -1, -1):
                    masks[j], covered = masks[j] & ~covered, covered | masks[j]
            if all(m.any() for m in masks):
                return labels.astype(np.int64), np.array(boxes), np.array(masks), np.array(indices), background, layers
    raise RuntimeError(f"could not place items after {_MAX_RESTARTS} tries; loosen the SceneConfig: {cfg}")


def build_scenes(split: str, n: int, seed: int = 0, config: SceneConfig | None = None,
                 source: tuple[np.ndarray, np.ndarray] | None = None, removals: bool = False) -> SceneSet:
    """Build ``n`` deterministic scenes from one Fashion-MNIST split.

    Args:
        split: ``"train"`` (items from the Fashion-MNIST train split only) or
            ``"test"`` (items from the test split only).
        n: Number of scenes, > 0.
        seed: Non-negative seed; the split is folded in, so train and test differ.
        config: Scene parameters; defaults to ``SceneConfig()``.
        source: Optional preloaded ``(glyphs [m, h, w], labels [m])`` used instead of
            loading ``split`` (uint8 glyphs are scaled by 1/255, floats used as alpha).
        removals: Also render each scene once per item without that item (``removal_images``).

    Returns:
        A :class:`SceneSet`; identical arrays for identical arguments.

    Raises:
        ValueError: Bad split, ``n``, ``seed``, config or source.
        FileNotFoundError: Fashion-MNIST is missing (the message says how to install it).

    Example:
        >>> scenes = build_scenes("train", 8, seed=1)
        >>> scenes.images.shape, scenes.item_masks.shape
        ((8, 64, 64, 3), (8, 3, 64, 64))
        >>> bool((scenes.labels.sum(1) >= 2).all())
        True
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    cfg = SceneConfig() if config is None else config
    if source is None:
        glyphs, labels = _load_shared(split, None)
    else:
        glyphs, labels = np.asarray(source[0]), np.asarray(source[1])
    if glyphs.ndim != 3 or labels.shape != glyphs.shape[:1] or not np.issubdtype(labels.dtype, np.integer) \
            or not np.isin(labels, np.arange(_NUM_CLASSES)).all():
        raise ValueError(f"source must be (glyphs [m, h, w], int labels [m] in 0..{_NUM_CLASSES - 1}), "
                         f"got shapes {glyphs.shape} {labels.dtype}{labels.shape}")
    label_of = cfg.label_of_class()[labels]
    by_label = [np.flatnonzero(label_of == c) for c in range(cfg.n_labels)]
    n_present = sum(idx.size > 0 for idx in by_label)
    if n_present < cfg.n_items[1]:
        raise ValueError(f"config.n_items[1]={cfg.n_items[1]} but the source has only {n_present} labels; "
                         "expected at least one glyph of each of n_items[1] labels")

    rng = np.random.default_rng([int(seed), _SPLIT_ID[split]])
    size, k_max = cfg.image_size, cfg.n_items[1]
    images = np.empty((n, size, size, 3), np.uint8)
    multi_hot = np.zeros((n, cfg.n_labels), np.float32)
    item_classes = np.full((n, k_max), -1, np.int64)
    item_boxes = np.full((n, k_max, 4), -1, np.int64)
    item_masks = np.zeros((n, k_max, size, size), bool)
    item_indices = np.full((n, k_max), -1, np.int64)
    removal_images = np.zeros((n, k_max, size, size, 3), np.uint8) if removals else None
    for i in range(n):
        classes, boxes, masks, indices, background, layers = _render_scene(rng, cfg, glyphs, by_label)
        k = len(classes)
        images[i], multi_hot[i, classes] = _compose(background, layers), 1.0
        if removal_images is not None:
            for j in range(k):
                removal_images[i, j] = _compose(background, layers, skip=j)
        item_classes[i, :k], item_boxes[i, :k] = classes, boxes
        item_masks[i, :k], item_indices[i, :k] = masks, indices
    return SceneSet(images, multi_hot, item_classes, item_boxes, item_masks, item_indices,
                    class_names=cfg.label_names, config=cfg, seed=int(seed), split=split,
                    removal_images=removal_images)

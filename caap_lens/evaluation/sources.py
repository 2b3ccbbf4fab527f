"""Data sources for the evaluation harness: a fixed order of items, each with a stable id.

A source is anything with ``len(source)``, ``source[i] -> Item`` and a ``name``; items are read one at a
time (the harness streams, it never holds the data set in memory). An `Item` is::

    Item(id, image, targets, masks, extras)

* ``id`` — a string, stable across runs and machines (it keys the results store);
* ``image`` — uint8 ``[H, W, 3]`` array, PIL image or a normalised ``[C, H, W]`` tensor;
* ``targets`` — the labelled classes (possibly empty), ascending;
* ``masks`` — ``{class: bool [H, W]}`` ground truth per labelled class, or None;
* ``extras`` — anything else a metric may use: ``item_masks`` bool ``[K, H, W]`` and ``item_classes``
  ``[K]`` (-1 padded) for scene sets, and ``removal_images`` uint8 ``[K, H, W, 3]`` (the scene
  re-rendered without item k) when the scene set carries them.

Sources here: `SceneSource` (a `caap_lens.data.SceneSet`; `bundled_scenes` for a bundled model's
held-out set), `ImageFolderSource` (image files, optional masks folder with matching stems, optional
labels CSV), `HFDatasetSource` (Hugging Face ``datasets``: a saved directory or a cached name) and
`ListSource` (in-memory items, for tests and notebooks). ``fingerprint()`` hashes the ids, so a store is
never resumed against another data set.

Example:
    >>> src = bundled_scenes("fashion-scenes-vit")
    >>> item = src[0]; item.id, item.targets
    ('fashion-scenes-vit/test/0', [5, 7, 8])
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Item:
    """One data-set item. See the module docstring for the fields."""

    id: str
    image: Any
    targets: list[int]
    masks: dict[int, np.ndarray] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):  # unpacks as (id, image, targets, masks, extras)
        return iter((self.id, self.image, self.targets, self.masks, self.extras))


@runtime_checkable
class Source(Protocol):
    """What the harness needs from a data source."""

    name: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Item: ...


def fingerprint(source: Any) -> str:
    """A sha256 over the source's name, length and ids (ids only: reading images would be slow)."""
    h = hashlib.sha256(f"{getattr(source, 'name', type(source).__name__)}|{len(source)}".encode())
    ids = source.ids() if hasattr(source, "ids") else [source[i].id for i in range(len(source))]
    for item_id in ids:
        h.update(b"\0" + str(item_id).encode())
    return h.hexdigest()[:16]


class SceneSource:
    """A `caap_lens.data.SceneSet` as a source: labels, per-class masks, item masks, removal images.

    Args:
        scenes: A SceneSet (``images``, ``labels``, ``item_classes``, ``item_masks``; optionally
            ``removal_images`` uint8 ``[n, K, H, W, 3]``).
        name: Prefix of the ids (``f"{name}/{i}"``).
        limit: Use only the first ``limit`` scenes.
    """

    def __init__(self, scenes: Any, name: str | None = None, limit: int | None = None) -> None:
        self.scenes = scenes
        split = getattr(scenes, "split", "scenes")
        self.name = name or f"scenes/{split}"
        self._n = len(scenes) if limit is None else max(0, min(int(limit), len(scenes)))

    def __len__(self) -> int:
        return self._n

    def ids(self) -> list[str]:
        return [f"{self.name}/{i}" for i in range(self._n)]

    def __getitem__(self, index: int) -> Item:
        if not 0 <= index < self._n:
            raise IndexError(index)
        s = self.scenes
        targets = [int(c) for c in np.flatnonzero(np.asarray(s.labels[index]) > 0.5)]
        classes = np.asarray(s.item_classes[index])
        item_masks = np.asarray(s.item_masks[index]).astype(bool)
        masks = {c: item_masks[classes == c].any(axis=0) for c in targets}
        extras: dict[str, Any] = {"item_classes": classes, "item_masks": item_masks}
        removal = getattr(s, "removal_images", None)
        if removal is not None:
            extras["removal_images"] = np.asarray(removal[index])
        return Item(f"{self.name}/{index}", np.asarray(s.images[index]), targets, masks, extras)


def bundled_scenes(model_name: str = "fashion-scenes-vit", limit: int | None = None) -> SceneSource:
    """The held-out scenes shipped with a bundled model (`caap_lens.loading.bundled.load_bundled_scenes`)."""
    from caap_lens.loading.bundled import load_bundled_scenes

    scenes = load_bundled_scenes(model_name)
    return SceneSource(scenes, name=f"{model_name}/{getattr(scenes, 'split', 'test')}", limit=limit)


class ListSource:
    """Items held in a list (tests, notebooks, small experiments)."""

    def __init__(self, items: Sequence[Item], name: str = "list") -> None:
        self.items = list(items)
        self.name = name

    def __len__(self) -> int:
        return len(self.items)

    def ids(self) -> list[str]:
        return [it.id for it in self.items]

    def __getitem__(self, index: int) -> Item:
        return self.items[index]


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


class ImageFolderSource:
    """Image files in a folder (sorted by relative path), with optional masks and labels.

    Args:
        root: Folder of images (searched recursively; suffixes in ``IMAGE_SUFFIXES``).
        masks: Optional folder of masks with the same stems. ``stem.png`` is the mask of every labelled
            class; ``stem_<class>.png`` the mask of one class. White (> 127) is inside.
        labels: Optional CSV with columns ``file`` (name or stem) and ``labels`` (class indices
            separated by spaces or ``;``) or ``label`` (one index).
        name: Prefix of the ids (default the folder's name); ids are ``name/relative/path/stem``.

    Raises:
        FileNotFoundError: a missing folder or CSV.
        ValueError: no images, or a CSV without the expected columns.
    """

    def __init__(self, root: str | Path, masks: str | Path | None = None, labels: str | Path | None = None,
                 name: str | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        self.masks = Path(masks) if masks is not None else None
        if self.masks is not None and not self.masks.is_dir():
            raise FileNotFoundError(f"masks folder {self.masks} does not exist")
        self.name = name or self.root.name
        self.labels: dict[str, list[int]] = {}
        if labels is not None:
            self.labels = _read_labels(Path(labels))

    def __len__(self) -> int:
        return len(self.files)

    def _stem(self, path: Path) -> str:
        return path.relative_to(self.root).with_suffix("").as_posix()

    def ids(self) -> list[str]:
        return [f"{self.name}/{self._stem(p)}" for p in self.files]

    def __getitem__(self, index: int) -> Item:
        path = self.files[index]
        stem = self._stem(path)
        targets = self.labels.get(stem, self.labels.get(path.name, self.labels.get(path.stem, [])))
        masks = None
        if self.masks is not None:
            masks = {}
            whole = self.masks / f"{stem}.png"
            for c in targets:
                one = self.masks / f"{stem}_{c}.png"
                if one.exists():
                    masks[c] = _read_mask(one)
                elif whole.exists():
                    masks[c] = _read_mask(whole)
            masks = masks or None
        return Item(f"{self.name}/{stem}", _read_image(path), sorted(targets), masks, {"path": str(path)})


def _read_labels(path: Path) -> dict[str, list[int]]:
    if not path.is_file():
        raise FileNotFoundError(f"labels CSV {path} does not exist")
    out: dict[str, list[int]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or ())
        if "file" not in cols or not ({"labels", "label"} & cols):
            raise ValueError(f"{path}: need columns 'file' and 'labels' (or 'label'), got {sorted(cols)}")
        for row in reader:
            text = row.get("labels") if "labels" in cols else row.get("label")
            values = [int(v) for v in str(text or "").replace(";", " ").split()]
            key = row["file"]
            out[key] = values
            out.setdefault(Path(key).with_suffix("").as_posix(), values)
    return out


class HFDatasetSource:
    """A Hugging Face ``datasets`` split: a directory written by ``save_to_disk`` or a name in the cache.

    Args:
        path: A local dataset directory, or a dataset name resolvable offline from the user's cache.
        split: The split (ignored for a directory holding a single ``Dataset``).
        image_column: Column of images (PIL or arrays).
        label_column: Column of labels (an int or a list of ints), or None.
        id_column: Column of ids; default the row index.
        mask_column: Column of one mask per row (for every labelled class), or None.
    """

    def __init__(self, path: str | Path, split: str = "test", image_column: str = "image",
                 label_column: str | None = "label", id_column: str | None = None,
                 mask_column: str | None = None, name: str | None = None) -> None:
        import datasets

        p = Path(path)
        if p.exists():
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f"{p} has splits {sorted(ds)}, not {split!r}")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(str(path), split=split)
        for col in (image_column, label_column, id_column, mask_column):
            if col is not None and col not in ds.column_names:
                raise ValueError(f"dataset has columns {ds.column_names}, not {col!r}")
        self.ds = ds
        self.image_column, self.label_column = image_column, label_column
        self.id_column, self.mask_column = id_column, mask_column
        self.name = name or f"{p.name if p.exists() else path}/{split}"

    def __len__(self) -> int:
        return len(self.ds)

    def ids(self) -> list[str]:
        if self.id_column is None:
            return [f"{self.name}/{i}" for i in range(len(self.ds))]
        return [f"{self.name}/{v}" for v in self.ds[self.id_column]]

    def __getitem__(self, index: int) -> Item:
        row = self.ds[int(index)]
        image = row[self.image_column]
        if hasattr(image, "convert"):
            image = np.asarray(image.convert("RGB"))
        label = row.get(self.label_column) if self.label_column else None
        targets = sorted(int(v) for v in (label if isinstance(label, (list, tuple)) else [label]) if v is not None) \
            if label is not None else []
        masks = None
        if self.mask_column is not None and row.get(self.mask_column) is not None:
            m = row[self.mask_column]
            m = np.asarray(m.convert("L")) > 127 if hasattr(m, "convert") else np.asarray(m).astype(bool)
            masks = {c: m for c in targets}
        item_id = f"{self.name}/{row[self.id_column] if self.id_column else index}"
        return Item(item_id, image, targets, masks, {})

"""Fashion-MNIST loader (numpy only).

Fashion-MNIST is 70,000 greyscale 28x28 images of clothing in 10 classes,
split 60,000 train / 10,000 test, stored as IDX files (optionally gzipped).
This module finds the files and decodes them with numpy; it has no
dependency on torch or torchvision.

Where the files are looked for, first match wins:

1. the ``root`` argument of :func:`load_fashion_mnist`;
2. the folder named by the environment variable ``CAAP_LENS_FASHION_MNIST``;
3. ``/usr/share/datasets/fashion-mnist``, where the Debian package
   ``dataset-fashion-mnist`` installs them.

Decoded arrays are cached per file (keyed by path, size and mtime), so
repeated loads are cheap; callers always receive their own copies.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_ROOT",
    "ENV_VAR",
    "FASHION_MNIST_CLASSES",
    "load_fashion_mnist",
]

#: Class names, indexed by label (0 = "t-shirt", ..., 9 = "ankle boot").
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)

#: Environment variable naming a folder that holds the four IDX files.
ENV_VAR = "CAAP_LENS_FASHION_MNIST"

#: Where the Debian package ``dataset-fashion-mnist`` installs the files.
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")

_PREFIX = {"train": "train", "test": "t10k"}
_FILES = tuple(
    f"{p}-{kind}" for p in ("train", "t10k") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
)
# IDX type codes -> numpy dtypes (big-endian where it matters).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _default_root() -> Path:
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else DEFAULT_ROOT


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def _missing_message(root: Path, split: str) -> str:
    return (
        f"Fashion-MNIST {split!r} files not found in {str(root)!r}. "
        "Install them with `apt-get install dataset-fashion-mnist` "
        f"(they go to {DEFAULT_ROOT}), or set {ENV_VAR} to a folder holding the "
        f"four IDX files (gzipped or not): {', '.join(_FILES)}."
    )


def _read_idx(path: Path) -> np.ndarray:
    """Decode one IDX file (``.gz`` or raw) into a native-endian array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()!r})")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says shape {shape} but payload has {len(data) - offset} bytes")
    return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, size: int, mtime_ns: int) -> np.ndarray:
    arr = _read_idx(Path(path))
    arr.flags.writeable = False
    return arr


def _read(path: Path) -> np.ndarray:
    st = path.stat()
    return _read_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


def _load_shared(split: str, root: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`load_fashion_mnist` but returns the cached read-only arrays."""
    if split not in _PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(root).expanduser() if root is not None else _default_root()
    img_path = _find(folder, f"{_PREFIX[split]}-images-idx3-ubyte")
    lbl_path = _find(folder, f"{_PREFIX[split]}-labels-idx1-ubyte")
    if img_path is None or lbl_path is None:
        raise FileNotFoundError(_missing_message(folder, split))
    images, labels = _read(img_path), _read(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"unexpected IDX contents: images {images.shape} {images.dtype}, labels {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels")
    return images, labels


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of Fashion-MNIST.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        root: Folder holding the IDX files. Defaults to ``$CAAP_LENS_FASHION_MNIST``
            if set, else ``/usr/share/datasets/fashion-mnist``.

    Returns:
        ``(images, labels)``: uint8 ``[n, 28, 28]`` and int64 ``[n]`` with values
        in ``0..9`` (see :data:`FASHION_MNIST_CLASSES`). Both are fresh copies.

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"test"``, or a file is malformed.
        FileNotFoundError: The files are missing; the message says how to get them.

    Example:
        >>> images, labels = load_fashion_mnist("test")
        >>> images.shape, labels.dtype
        ((10000, 28, 28), dtype('int64'))
        >>> FASHION_MNIST_CLASSES[labels[0]]
        'ankle boot'
    """
    images, labels = _load_shared(split, root)
    return images.copy(), labels.astype(np.int64)

"""Results on disk: one ``.safetensors`` file per result, its description as JSON in the header.

A result file is a plain safetensors file (no pickle: loading it never runs code). Its tensors are the
result's tensors under their field names — absent when the field is None — and its header metadata
holds one JSON string under the key ``"caap_lens.result"``::

    {"format_version": 1, "kind": "caap" | "window_sweep" | "attribution",
     "versions": {"caap_lens": ..., "torch": ..., "timm": ..., "safetensors": ...},
     "created": "2026-12-01T22:43:26+00:00",
     "grid": {"grid_size": [14, 14], "patch_size": [16, 16], "n_prefix_tokens": 1},
     "settings": {...}, "timing": {...},
     "model": {"source": ..., "weights": ..., "weights_kind": ..., "config": {...}},  # with model=
     ...}                                                          # the kind's own fields (windows, method, info)

Settings are saved as their printable description (``dict(settings)`` of a
`caap_lens.attribution.settings.CAAPSettings`, plus its ``windows``) made JSON-safe: tuples become
lists, tensors their shape, dtypes and other objects their name. Contexts and score callables are
therefore kept **by name only**: a loaded result describes how it was made but cannot rerun itself.
On loading, the settings are a plain dict; windows (``layers``, ``windows``, ``candidates``) come
back as tuples.

`caap_lens.attribution.result.CAAPResult`, `caap_lens.sweeps.WindowSweepResult` and
`caap_lens.baselines.base.Attribution` save and load through this module (``result.save(path)``,
``CAAPResult.load(path)``); `read_meta` reads the description alone, e.g. to see which model made
a result.

Example:
    >>> import tempfile, torch
    >>> from caap_lens.grid import PatchGrid
    >>> grid = PatchGrid(grid_size=(2, 2), patch_size=(8, 8), n_prefix_tokens=1)
    >>> path = tempfile.mkdtemp() + "/result.safetensors"
    >>> _ = save_result(path, {"map": torch.arange(4.0).reshape(1, 2, 2)},
    ...                 {"kind": "caap", "grid": grid, "settings": {"layers": (0, 1)}})
    >>> tensors, meta = load_result(path, kind="caap")
    >>> tensors["map"].tolist(), meta["grid"] == grid, meta["settings"]["layers"]
    ([[[0.0, 1.0], [2.0, 3.0]]], True, (0, 1))
    >>> read_meta(path)["kind"], read_meta(path)["versions"]["caap_lens"] == __version__
    ('caap', True)
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from jaxtyping import Shaped
from torch import Tensor

from caap_lens import __version__
from caap_lens.grid import PatchGrid
from caap_lens.model.protocol import HookedViTLike

FORMAT_VERSION = 1
"""The file layout this caap_lens writes; files with a higher number are refused."""

META_KEY = "caap_lens.result"
"""The safetensors header metadata key holding the JSON description."""

KINDS: dict[str, str] = {
    "caap": "caap_lens.CAAPResult",
    "window_sweep": "caap_lens.sweeps.WindowSweepResult",
    "attribution": "caap_lens.baselines.Attribution",
}
"""Result kinds and the class that loads each."""

_MAX_HEADER = 100_000_000  # as safetensors: a larger header is not a safetensors file


class ResultFileError(ValueError):
    """A file that is not a caap_lens result, is damaged, or holds another kind of result."""


def to_json_safe(value: Any) -> Any:
    """``value`` as JSON can hold it: tuples as lists, tensors by shape, other objects by name.

    Example:
        >>> to_json_safe({"layers": (4, 8), "region": torch.zeros(3, 2), "dtype": torch.bfloat16})
        {'layers': [4, 8], 'region': 'tensor(3, 2)', 'dtype': 'torch.bfloat16'}
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Tensor):
        return value.item() if value.ndim == 0 else f"tensor{tuple(value.shape)}"
    if isinstance(value, Mapping):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json_safe(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json_safe(dataclasses.asdict(value))
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalars
        return to_json_safe(value.item())
    name = getattr(value, "name", None) or getattr(value, "__name__", None)
    return str(name) if isinstance(name, str) else str(value)


def describe_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-safe description of a result's settings (a `CAAPSettings` also gives its ``windows``)."""
    out = dict(settings)
    windows = getattr(settings, "windows", None)
    if windows is not None and "windows" not in out:
        out["windows"] = list(windows)
    return to_json_safe(out)


def model_info(model: HookedViTLike) -> dict[str, Any]:
    """Where a model comes from: ``source`` (``cfg.source``), ``weights`` and ``weights_kind`` (the
    config's fields of that name where it has them, else None) and ``config`` (``cfg`` as a dict)."""
    cfg = model.cfg
    if hasattr(cfg, "to_dict"):
        config = cfg.to_dict()
    elif dataclasses.is_dataclass(cfg):
        config = dataclasses.asdict(cfg)
    else:
        config = dict(vars(cfg))
    return to_json_safe({
        "source": getattr(cfg, "source", None),
        "weights": getattr(cfg, "weights", None),
        "weights_kind": getattr(cfg, "weights_kind", None),
        "config": config,
    })


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _window(pair: Any) -> Any:
    return tuple(pair) if isinstance(pair, list) and len(pair) == 2 else pair


def save_result(
    path: str | Path,
    tensors: Mapping[str, Shaped[Tensor, "..."] | None],
    meta: Mapping[str, Any],
    *,
    model: HookedViTLike | None = None,
) -> Path:
    """Writes one result: ``tensors`` (None values are left out) and ``meta`` as JSON in the header.

    Args:
        path: The file to write (``.safetensors`` by convention; replaced if it exists).
        tensors: The result's tensors by name; copied to the CPU as they are (dtype kept).
        meta: ``kind`` (one of `KINDS`) and the result's other fields: ``grid`` (a `PatchGrid` or
            None), ``settings``, ``timing`` and the kind's own (made JSON-safe by `to_json_safe`).
        model: The model that made the result (optional): its origin and config are recorded.

    Returns:
        The path written.

    Raises:
        ValueError: an unknown kind, a field save_result sets itself (``format_version``,
            ``versions``, ``created``, ``model``) in ``meta``, or a value in ``tensors`` that is not
            a tensor.
    """
    kind = meta.get("kind")
    reserved = {"format_version", "versions", "created", "model"} & set(meta)
    if reserved:
        raise ValueError(f"meta may not set {sorted(reserved)}: save_result records them itself")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    grid = meta.get("grid")
    header: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "versions": {"caap_lens": __version__, "torch": torch.__version__, "timm": _version("timm"),
                     "safetensors": safetensors.__version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for key, value in meta.items():
        if key == "grid":
            header["grid"] = None if grid is None else to_json_safe(dataclasses.asdict(grid))
        elif key != "kind":
            header[key] = to_json_safe(value)
    if model is not None:
        header["model"] = model_info(model)
    stored: dict[str, Tensor] = {}
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if not isinstance(tensor, Tensor):
            raise ValueError(f"tensor {name!r} must be a torch.Tensor or None, got {type(tensor).__name__}")
        stored[name] = tensor.detach().cpu().contiguous().clone()  # own storage: safetensors refuses shared
    path = Path(path)
    safetensors.torch.save_file(stored, str(path), metadata={META_KEY: json.dumps(header, allow_nan=True)})
    return path


def _read_header(data: bytes, path: Path) -> tuple[dict[str, Any], int]:
    """``(safetensors header, its length)``; a `ResultFileError` for anything that is not one."""
    not_result = f"{path} is not a caap_lens result file"
    if len(data) < 8:
        raise ResultFileError(f"{not_result}: {len(data)} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or data[8:9] != b"{":
        raise ResultFileError(f"{not_result}: it does not begin with a safetensors header")
    if 8 + n > len(data):
        raise ResultFileError(f"{path} is truncated: its header needs {8 + n} bytes, the file has {len(data)}")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ResultFileError(f"{not_result}: its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ResultFileError(f"{not_result}: its safetensors header is not a JSON object")
    return header, n


def _parse_meta(header: dict[str, Any], path: Path, kind: str | None) -> dict[str, Any]:
    text = (header.get("__metadata__") or {}).get(META_KEY)
    if text is None:
        raise ResultFileError(
            f"{path} is a safetensors file but not a caap_lens result (no {META_KEY!r} metadata; "
            "a model checkpoint?)"
        )
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        raise ResultFileError(f"{path}: its {META_KEY!r} metadata is not valid JSON") from None
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ResultFileError(f"{path}: no valid format_version in its {META_KEY!r} metadata")
    if version > FORMAT_VERSION:
        writer = (meta.get("versions") or {}).get("caap_lens", "?")
        raise ResultFileError(
            f"{path} was written in a newer result format ({version}, by caap_lens {writer}) than this "
            f"caap_lens ({__version__}) reads ({FORMAT_VERSION} and older): upgrade caap_lens to load it"
        )
    found = meta.get("kind")
    if found not in KINDS:
        raise ResultFileError(f"{path} holds an unknown kind of result {found!r} (known: {', '.join(KINDS)})")
    if kind is not None and found != kind:
        raise ResultFileError(
            f"{path} holds a {found!r} result, not a {kind!r} one: load it with {KINDS[found]}.load"
        )
    grid = meta.get("grid")
    if grid is not None:
        meta["grid"] = PatchGrid(grid_size=tuple(grid["grid_size"]), patch_size=tuple(grid["patch_size"]),
                                 n_prefix_tokens=int(grid["n_prefix_tokens"]))
    settings = meta.get("settings")
    if isinstance(settings, dict):
        if "layers" in settings:
            settings["layers"] = _window(settings["layers"])
        for key in ("windows", "candidates"):  # lists of windows (candidates: layers="auto")
            if isinstance(settings.get(key), list):
                settings[key] = [_window(w) for w in settings[key]]
    if isinstance(meta.get("windows"), list):
        meta["windows"] = [_window(w) for w in meta["windows"]]
    return meta


def read_meta(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The description of a result file alone (its tensors are not read).

    Raises:
        ResultFileError: as `load_result`, except for damaged tensor data.
    """
    path = Path(path)
    with open(path, "rb") as f:
        start = f.read(8)
        n = struct.unpack("<Q", start)[0] if len(start) == 8 else 0
        data = start + (f.read(n) if 0 < n <= _MAX_HEADER else b"")
    header, _ = _read_header(data, path)
    return _parse_meta(header, path, kind)


def load_result(
    path: str | Path, kind: str | None = None
) -> tuple[dict[str, Shaped[Tensor, "..."]], dict[str, Any]]:
    """Reads a file written by `save_result`: ``(tensors, meta)``.

    ``meta["grid"]`` is a `PatchGrid` again (or None), window pairs are tuples again; everything else
    is as JSON gives it back (lists for tuples).

    Args:
        path: A result file.
        kind: The kind expected (one of `KINDS`), or None for any.

    Raises:
        FileNotFoundError: no such file.
        ResultFileError: not a safetensors file, a safetensors file that is not a caap_lens result
            (a checkpoint), a truncated or damaged file, another kind than ``kind``, an unknown kind,
            or a file written in a newer format version.
    """
    path = Path(path)
    data = path.read_bytes()
    header, n = _read_header(data, path)
    meta = _parse_meta(header, path, kind)
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    needed = 8 + n + max(ends, default=0)
    if len(data) < needed:
        raise ResultFileError(f"{path} is truncated: its tensors need {needed} bytes, the file has {len(data)}")
    try:
        tensors = safetensors.torch.load(data)
    except Exception as err:  # safetensors' own error types differ between versions
        raise ResultFileError(f"{path} is damaged: safetensors could not read its tensors ({err})") from None
    return tensors, meta

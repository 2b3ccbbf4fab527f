"""A Hugging Face image processor's settings as the timm-style ``data_config`` `HookedViTConfig` holds.

HF image processors resize, optionally centre-crop, rescale by 1/255 and normalise. timm's eval
transform (which `caap_lens.preprocessing` runs on ``cfg.data_config``) does the same with these
arguments:

* ``size={"height", "width"}`` (resize without keeping the aspect ratio) -> ``crop_mode="squash"``;
  ``size={"shortest_edge"}`` -> ``crop_mode="center"`` (an old-style int ``size`` is either, as HF reads it
  for that processor);
* a centre crop of ``crop_size`` -> ``crop_pct = crop / resize`` (1.0 without a crop);
* ``resample`` (a PIL filter number) -> ``interpolation``; ``image_mean``/``image_std`` -> ``mean``/``std``
  (0 and 1 with ``do_normalize=False``).

A processor that does something else (no rescaling, another rescale factor, padding, a longest-edge
resize) raises `UnsupportedModelError` naming the option. Resizing is timm's (torchvision on PIL
images), not HF's own code, so pixels can differ slightly from HF's processor output; the
geometry, filter, mean and std are the processor's.

Example:
    >>> hf_data_config({"size": 32, "resample": 2})["crop_mode"]  # an int size: square for most processors
    'squash'
    >>> hf_data_config({"do_resize": True, "size": {"shortest_edge": 256}, "do_center_crop": True,
    ...                 "crop_size": {"height": 224, "width": 224}, "resample": 3, "do_rescale": True,
    ...                 "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3,
    ...                 "image_std": [0.5] * 3})
    {'input_size': (3, 224, 224), 'interpolation': 'bicubic', 'crop_pct': 0.875, 'crop_mode': 'center', 'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5)}
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

from caap_lens.converters.hf_config import unsupported_hf

__all__ = ["PROCESSOR_FILE", "hf_data_config", "read_processor_config"]

#: The file a saved HF model directory keeps its image processor's settings in.
PROCESSOR_FILE = "preprocessor_config.json"
_SHORT_SIDE = ("CLIP", "Bit", "ConvNext")  # processors whose int ``size`` is the shortest edge (HF's default_to_square=False)
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# keys that describe the processor rather than the pixels, or that leave RGB images unchanged
_IGNORED = {"image_processor_type", "processor_class", "feature_extractor_type", "do_convert_rgb",
            "input_data_format", "data_format", "return_tensors", "device", "default_to_square"}


def read_processor_config(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed ``preprocessor_config.json`` of a saved HF directory; None when it has none."""
    path = os.path.join(directory, PROCESSOR_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _size(value: Any, what: str) -> tuple[int, int] | int:
    if isinstance(value, Mapping):
        if set(value) == {"height", "width"}:
            return (int(value["height"]), int(value["width"]))
        if set(value) == {"shortest_edge"}:
            return int(value["shortest_edge"])
    elif isinstance(value, int):
        return value
    raise unsupported_hf(f"image processor {what}={value!r} is not supported (give height/width or shortest_edge)")


def hf_data_config(processor: Mapping[str, Any], n_channels: int = 3) -> dict[str, Any]:
    """timm-style ``data_config`` (see `caap_lens.config.DATA_CONFIG_KEYS`) of an HF processor config.

    Raises:
        UnsupportedModelError: A processor option with no timm equivalent (the message names it).
    """
    p = dict(processor)
    if not p.get("do_rescale", True) or not math.isclose(float(p.get("rescale_factor", 1 / 255)), 1 / 255):
        raise unsupported_hf(f"image processor do_rescale={p.get('do_rescale')!r}, rescale_factor="
                             f"{p.get('rescale_factor')!r}: only rescaling by 1/255 is supported")
    handled = {"do_resize", "size", "do_center_crop", "crop_size", "resample", "do_rescale", "rescale_factor",
               "do_normalize", "image_mean", "image_std"}
    unknown = sorted(k for k in set(p) - handled - _IGNORED if p[k] not in (None, False))
    if unknown:
        raise unsupported_hf(f"image processor options not supported: {', '.join(f'{k}={p[k]!r}' for k in unknown)}")
    if not p.get("do_resize", True):
        raise unsupported_hf("image processor do_resize=False: HookedViT needs a fixed input size")
    size = _size(p.get("size"), "size")
    if isinstance(p.get("size"), int) and not str(p.get("image_processor_type", "")).startswith(_SHORT_SIDE):
        size = (size, size)  # an old-style int size: square, except for the processors that resize the short side
    crop = _size(p["crop_size"], "crop_size") if p.get("do_center_crop") else None
    if isinstance(crop, int):
        crop = (crop, crop)
    if crop is None:  # the resize alone gives the input
        if isinstance(size, int):
            raise unsupported_hf("image processor size={'shortest_edge': ...} without a centre crop gives "
                                 "inputs of varying shape; HookedViT needs a fixed input size")
        out, crop_pct = size, 1.0
    else:
        out = crop
        resize = size if isinstance(size, int) else size[0]
        crop_pct = out[0] / resize
        if math.floor(out[0] / crop_pct) != resize:  # timm resizes to floor(crop / crop_pct)
            crop_pct = out[0] / (resize + 0.5)
    if p.get("resample", 3) not in _RESAMPLE:
        raise unsupported_hf(f"image processor resample={p.get('resample')!r} is not a known PIL filter")
    normalize = p.get("do_normalize", True)
    mean = tuple(p.get("image_mean") or (0.0,) * n_channels) if normalize else (0.0,) * n_channels
    std = tuple(p.get("image_std") or (1.0,) * n_channels) if normalize else (1.0,) * n_channels
    return {"input_size": (n_channels, *out), "interpolation": _RESAMPLE[p.get("resample", 3)],
            "crop_pct": float(crop_pct), "crop_mode": "squash" if isinstance(size, tuple) else "center",
            "mean": tuple(float(v) for v in mean), "std": tuple(float(v) for v in std)}

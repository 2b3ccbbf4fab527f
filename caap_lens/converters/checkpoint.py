"""Reading what a timm checkpoint file says about its model, without building the model.

`checkpoint_num_classes` answers the question a loader must settle before ``timm.create_model``: how
many outputs the checkpoint's head has (so ``num_classes=`` matches and the load is strict). It reads
tensor shapes only: a ``.safetensors`` header, or a ``torch.load`` (``weights_only=True``) of anything
else. Checkpoints saved from ``DataParallel`` (keys prefixed ``module.``) and training checkpoints that
wrap the weights (``state_dict``, ``state_dict_ema``, ``model``, ``model_ema``) are understood.

Example:
    >>> import tempfile, torch
    >>> from safetensors.torch import save_file
    >>> path = tempfile.mkdtemp() + "/head.safetensors"
    >>> save_file({"head.weight": torch.zeros(7, 4), "patch_embed.proj.weight": torch.zeros(4, 3, 2, 2)}, path)
    >>> checkpoint_num_classes(path)
    7
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["checkpoint_num_classes"]

_WRAPPERS = ("state_dict_ema", "model_ema", "state_dict", "model")  # first match wins


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    import torch

    state: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    for wrapper in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        return {}
    return {str(k): tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def checkpoint_num_classes(path: str | Path) -> int | None:
    """The output size of a timm checkpoint's ``head``: rows of ``head.weight``.

    Args:
        path: A ``.safetensors`` file, or a ``torch.save`` file (``.pth``, ``.pt``, ``.bin``, ...).

    Returns:
        The number of classes; 0 for a headless ViT checkpoint (a patch embedding, no head); None when
        the file holds neither (not a ViT state dict).

    Raises:
        ValueError: The file cannot be read (missing, corrupt, not a checkpoint); the message names the
            path and the reason.
    """
    path = Path(path)
    try:
        shapes = _shapes(path)
    except Exception as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        reason = reason if len(reason) <= 500 else reason[:497] + "..."
        raise ValueError(f"cannot read checkpoint {path}: {reason}") from err
    keys = {key.removeprefix("module."): shape for key, shape in shapes.items()}
    if "head.weight" in keys:
        return int(keys["head.weight"][0])
    return 0 if "patch_embed.proj.weight" in keys else None

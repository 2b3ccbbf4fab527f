"""Reading timm checkpoint files: what their model is, and loading them into a timm model.

`checkpoint_num_classes` answers the question a loader must settle before ``timm.create_model``: how
many outputs the checkpoint's head has (so ``num_classes=`` matches and the load is strict). It reads
tensor shapes only: a ``.safetensors`` header, or a ``torch.load`` (``weights_only=True``) of anything
else. `read_checkpoint` reads the tensors and `load_checkpoint` puts them into a timm model, or says in
one line what does not fit.

Checkpoints are found where training code usually leaves them: training checkpoints that wrap the
weights (``state_dict_ema``, ``model_ema``, ``state_dict`` -- Lightning's --, ``model``; the first
found wins, EMA weights first, as timm's own loader), and the ViT's keys under a prefix
(``module.`` from ``DataParallel``, ``model.`` from a Lightning module, ``_orig_mod.`` from
``torch.compile``, or several): the prefix is the one in front of ``patch_embed.proj.weight``
(`vit_prefix`), and keys outside it (a loss's buffers, a second network) are ignored.

Example:
    >>> import tempfile, torch
    >>> from safetensors.torch import save_file
    >>> path = tempfile.mkdtemp() + "/head.safetensors"
    >>> save_file({"model.head.weight": torch.zeros(7, 4), "model.patch_embed.proj.weight": torch.zeros(4, 3, 2, 2)},
    ...           path)
    >>> checkpoint_num_classes(path)
    7
    >>> sorted(read_checkpoint(path))
    ['head.weight', 'patch_embed.proj.weight']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["CheckpointMismatchError", "checkpoint_num_classes", "load_checkpoint", "num_classes_of",
           "read_checkpoint", "vit_prefix"]

_WRAPPERS = ("state_dict_ema", "model_ema", "state_dict", "model")  # first match wins


_ANCHOR = "patch_embed.proj.weight"  # every timm ViT has it; its prefix is the ViT's


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model: the message lists what is missing, unexpected, resized."""


def _unwrap(state: Any) -> Any:
    for wrapper in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            return state[wrapper]
    return state


def _load(path: Path, shapes_only: bool) -> dict[str, Any]:
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            if shapes_only:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            return {key: f.get_tensor(key) for key in f.keys()}
    import torch

    state = _unwrap(torch.load(str(path), map_location="cpu", weights_only=True))
    if not isinstance(state, dict):
        return {}
    return {str(k): (tuple(v.shape) if shapes_only else v) for k, v in state.items() if hasattr(v, "shape")}


def _read(path: str | Path, shapes_only: bool) -> dict[str, Any]:
    path = Path(path)
    try:
        return _load(path, shapes_only)
    except Exception as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        reason = reason if len(reason) <= 500 else reason[:497] + "..."
        raise ValueError(f"cannot read checkpoint {path}: {reason}") from err


def vit_prefix(keys: Any) -> str:
    """The prefix in front of the ViT's keys: the one before ``patch_embed.proj.weight`` ("" if none).

    When several keys end so (a teacher and a student), the shortest prefix wins.

    Example:
        >>> vit_prefix(["model.module.patch_embed.proj.weight", "model.module.head.weight", "loss.w"])
        'model.module.'
        >>> vit_prefix(["head.weight"])
        ''
    """
    found = [k[: -len(_ANCHOR)] for k in keys if k == _ANCHOR or k.endswith("." + _ANCHOR)]
    return min(found, key=lambda p: (len(p), p)) if found else ""


def _strip(state: Mapping[str, Any]) -> dict[str, Any]:
    prefix = vit_prefix(state)
    if not prefix:
        return {k.removeprefix("module."): v for k, v in state.items()}
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The ViT's tensors in a checkpoint file, unwrapped and with their prefix stripped (see the module).

    Raises:
        ValueError: The file cannot be read (missing, corrupt, not a checkpoint).
    """
    return _strip(_read(path, shapes_only=False))


def num_classes_of(shapes: Mapping[str, Any]) -> int | None:
    """Rows of ``head.weight`` in a stripped state dict (tensors or shapes); 0 headless; None: not a ViT.

    Example:
        >>> num_classes_of({"patch_embed.proj.weight": (8, 3, 4, 4), "head.weight": (10, 8)})
        10
    """
    if "head.weight" in shapes:
        head = shapes["head.weight"]
        return int((head if isinstance(head, tuple) else tuple(head.shape))[0])
    return 0 if _ANCHOR in shapes else None


def checkpoint_num_classes(path: str | Path) -> int | None:
    """The output size of a timm checkpoint's ``head``: rows of ``head.weight``.

    Args:
        path: A ``.safetensors`` file, or a ``torch.save`` file (``.pth``, ``.pt``, ``.bin``, ``.ckpt``, ...).

    Returns:
        The number of classes; 0 for a headless ViT checkpoint (a patch embedding, no head); None when
        the file holds neither (not a ViT state dict).

    Raises:
        ValueError: The file cannot be read (missing, corrupt, not a checkpoint); the message names the
            path and the reason.
    """
    return num_classes_of(_strip(_read(path, shapes_only=True)))


def _names(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... {len(keys) - limit} more" if len(keys) > limit else "")


def load_checkpoint(module: Any, path: str | Path, arch: str = "") -> Any:
    """Loads a checkpoint file into a timm model, strictly; returns the module (in eval mode).

    Args:
        module: The timm model (built with the checkpoint's ``num_classes``, see `checkpoint_num_classes`).
        path: The checkpoint file (see `read_checkpoint` for the layouts understood).
        arch: The model's name, for the error message (default: the module's class name).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: It cannot be read.
        CheckpointMismatchError: Its tensors do not fit, e.g. ``checkpoint my.ckpt does not fit
            vit_small_patch16_224: 2 missing (head.weight, head.bias), 1 unexpected (fc.weight)``.
    """
    if not os.path.isfile(path):
        what = "is a folder, not a checkpoint file" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"checkpoint_path={str(path)!r} {what}: give the path of a timm checkpoint "
                                "(.safetensors, .pth, ...)")
    state = read_checkpoint(path)
    ours = module.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    resized = [k for k in ours if k in state and tuple(state[k].shape) != tuple(ours[k].shape)]
    if missing or unexpected or resized:
        parts = [f"{len(missing)} missing ({_names(missing)})"] if missing else []
        parts += [f"{len(unexpected)} unexpected ({_names(unexpected)})"] if unexpected else []
        parts += [f"{len(resized)} of another shape (" + ", ".join(
            f"{k}: checkpoint {list(state[k].shape)}, model {list(ours[k].shape)}" for k in resized[:3])
            + (", ..." if len(resized) > 3 else "") + ")"] if resized else []
        from caap_lens.converters.hf_models import hf_checkpoint_hint  # the HF converters load transformers

        hint = ""
        hf = hf_checkpoint_hint(state) if missing and unexpected else None
        if hf is not None:
            raise CheckpointMismatchError(f"checkpoint {path} does not fit {arch or type(module).__name__}: {hf}")
        if resized and any(k.startswith("head") for k in resized):
            hint = "; leave num_classes out to use the checkpoint's head size"
        elif "pos_embed" in resized:
            hint = "; pass the img_size the checkpoint was trained at"
        name = arch or type(module).__name__
        raise CheckpointMismatchError(f"checkpoint {path} does not fit {name}: {', '.join(parts)}{hint}")
    module.load_state_dict(state, strict=True)
    return module.eval()

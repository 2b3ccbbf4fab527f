"""Composable activation-patching hooks.

A patching hook copies a *source* run's activation into the running activation wherever a boolean
mask says so. Masks are per batch row, so one batch can patch a different token (or group of tokens,
or head) in every row — the shape that makes attribution over all patches one batched run. The hooks
are ordinary TransformerLens hook functions: use them with ``run_with_hooks``, ``hooks()`` or
alongside your own hooks.

Hooks that can be patched, by short name (``patchable_hook_name(short, layer)`` gives the full name):

==============  ====================================  =========================================
short name      hook point                            activation shape
==============  ====================================  =========================================
``resid_pre``   ``blocks.{l}.hook_resid_pre``         ``[batch, pos, d_model]``
``resid_mid``   ``blocks.{l}.hook_resid_mid``         ``[batch, pos, d_model]``
``resid_post``  ``blocks.{l}.hook_resid_post``        ``[batch, pos, d_model]``
``attn_out``    ``blocks.{l}.hook_attn_out``          ``[batch, pos, d_model]``
``mlp_out``     ``blocks.{l}.hook_mlp_out``           ``[batch, pos, d_model]``
``z``           ``blocks.{l}.attn.hook_z``            ``[batch, pos, head, d_head]``
``mlp_post``    ``blocks.{l}.mlp.hook_post``          ``[batch, pos, d_mlp]``
==============  ====================================  =========================================

Example:
    >>> from caap_lens.config import HookedViTConfig
    >>> from caap_lens.model.hooked_vit import HookedViT
    >>> model = HookedViT(HookedViTConfig(n_layers=8, d_model=32, n_heads=2, d_mlp=64, image_size=32,
    ...                                   patch_size=8, n_classes=3))
    >>> source_images, context_images = torch.randn(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)
    >>> _, cache = model.run_with_cache(source_images)
    >>> mask = token_mask_for_patches(model.grid, torch.tensor([0, 5]))  # rows patch token 1 and 6
    >>> hooks = patch_hooks(cache, "resid_pre", layers=range(4, 8), mask=mask,
    ...                     source_index=torch.tensor([0, 0]))
    >>> logits = model.run_with_hooks(context_images.expand(2, -1, -1, -1), fwd_hooks=hooks)
    >>> logits.shape  # one row per patched run
    torch.Size([2, 3])
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from caap_lens.grid import PatchGrid

PATCHABLE_HOOKS: dict[str, str] = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "z": "attn.hook_z",
    "mlp_post": "mlp.hook_post",
}
_ALIASES = {suffix: short for short, suffix in PATCHABLE_HOOKS.items()}
_ALIASES.update({suffix.split(".")[-1]: short for short, suffix in PATCHABLE_HOOKS.items()})
_ALIASES.update({"post": "mlp_post", "hook_post": "mlp_post"})

HookFn = Callable[..., Tensor]


def resolve_hook(hook: str) -> str:
    """The short name of a patchable hook, given a short name or a hook-point suffix.

    Raises:
        ValueError: the hook is not one that caap_lens patches.
    """
    if hook in PATCHABLE_HOOKS:
        return hook
    if hook in _ALIASES:
        return _ALIASES[hook]
    raise ValueError(
        f"unknown hook {hook!r}: choose one of {', '.join(PATCHABLE_HOOKS)} "
        "(or their hook-point names such as 'attn.hook_z')"
    )


def patchable_hook_name(hook: str, layer: int) -> str:
    """Full hook-point name of a patchable hook at a layer, e.g. ``blocks.3.attn.hook_z``."""
    return f"blocks.{layer}.{PATCHABLE_HOOKS[resolve_hook(hook)]}"


def _broadcast_mask(mask: Tensor, act: Tensor) -> Tensor:
    if (
        not 2 <= mask.ndim <= act.ndim
        or mask.shape[0] not in (1, act.shape[0])
        or tuple(mask.shape[1:]) != tuple(act.shape[1 : mask.ndim])
    ):
        raise ValueError(
            f"patch mask of shape {tuple(mask.shape)} does not fit activation {tuple(act.shape)}: "
            "expected [batch or 1, pos] or [batch or 1, pos, head]"
        )
    return mask.reshape(*mask.shape, *([1] * (act.ndim - mask.ndim)))


def patch_from_source(
    source: Tensor, mask: Bool[Tensor, "batch pos *heads"], source_index: Int[Tensor, " batch"] | None = None
) -> HookFn:
    """A hook that copies ``source`` into the activation where ``mask`` is True.

    Args:
        source: The source activation at this hook, ``[n_source, pos, ...]``.
        mask: Which positions (``[batch, pos]``) or heads at positions (``[batch, pos, head]``) each
            batch row takes from the source.
        source_index: For each batch row, which source row to copy from. None: row ``i`` copies
            source row ``i``, or source row 0 when there is one source row.

    Returns:
        A TransformerLens hook ``fn(act, *, hook) -> act``; it never edits ``act`` in place.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"patch mask must be bool, got {mask.dtype}")
    if source_index is not None:
        if source_index.numel() and (source.shape[0] == 1 or bool((source_index == source_index[0]).all())):
            source = source[source_index[:1]]  # one source row for the whole batch: broadcast it
        else:
            source = source[source_index]

    def patch_hook(act: Tensor, *, hook: HookPoint) -> Tensor:
        if source.shape[0] not in (1, act.shape[0]) or tuple(source.shape[1:]) != tuple(act.shape[1:]):
            raise ValueError(
                f"source activation {tuple(source.shape)} does not match {hook.name} {tuple(act.shape)}"
            )
        full_mask = _broadcast_mask(mask, act)
        return torch.where(full_mask, source.to(act.dtype), act)

    return patch_hook


def patch_hooks(
    source: Mapping[str, Tensor],
    hook: str,
    layers: Iterable[int],
    mask: Bool[Tensor, "batch pos *heads"],
    source_index: Int[Tensor, " batch"] | None = None,
) -> list[tuple[str, HookFn]]:
    """Patching hooks for one hook type over several layers, ready for ``fwd_hooks=``.

    Args:
        source: Source activations by full hook name (a dict or an ``ActivationCache``).
        hook: Short name of the hook to patch (see the module table).
        layers: Layers to patch at.
        mask: Per-row positions (and heads) to patch.
        source_index: Source row of each batch row (see `patch_from_source`).
    """
    hooks = []
    for layer in layers:
        name = patchable_hook_name(hook, layer)
        try:
            acts = source[name]
        except KeyError:
            raise KeyError(f"the source cache has no {name!r}: cache it with names_filter") from None
        hooks.append((name, patch_from_source(acts, mask, source_index)))
    return hooks


def token_mask_for_patches(grid: PatchGrid, patches: Int[Tensor, " batch"]) -> Bool[Tensor, "batch pos"]:
    """One row per patch index, True at that patch's token only."""
    patches = torch.as_tensor(patches, dtype=torch.long)
    if patches.numel() and (patches.min() < 0 or patches.max() >= grid.n_patches):
        raise IndexError(f"patch indices must lie in [0, {grid.n_patches})")
    mask = torch.zeros(patches.shape[0], grid.n_tokens, dtype=torch.bool)
    mask[torch.arange(patches.shape[0]), patches + grid.n_prefix_tokens] = True
    return mask

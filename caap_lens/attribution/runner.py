"""The batched, prefix-cached runner behind `caap` and the sweeps.

For every (image, unit) row and every window ``[start, stop)``, the runner computes the output of the
context run with the source's activations copied in at the row's unit, at one hook, at every layer of
the window. What makes it fast:

* the context run is computed once; every patched run *resumes* at the window start from the
  context's cached residual stream (nothing before ``start`` differs between rows);
* rows go through the batch dimension, ``batch_size`` at a time, one patching hook per layer whose
  mask differs per row;
* windows that share a start share the patched trajectory: at each further ``stop`` the runner forks
  an unpatched run to the output and carries on patching (a full window sweep costs ~0.56x running
  every window alone on 12 layers);
* everything runs under ``torch.inference_mode``; ``dtype=torch.bfloat16`` runs the blocks' weights
  and sublayers in bf16 while the residual stream, the final norm and the head stay in float32: the
  differences between patched runs are small, and a bf16 residual would round them away. (This is
  ~15% faster than autocast, which re-casts activations at every linear layer.)
* the last block of a CLS-pooled model is evaluated for the readout token only when nothing is hooked
  there (`HookedViT.output_from`): its queries, attention output and MLP cost one row, not ``pos``.

Example:
    >>> from caap_lens.attribution.contexts import resolve_context
    >>> from caap_lens.attribution.units import patch_units
    >>> from caap_lens.config import HookedViTConfig
    >>> from caap_lens.model.hooked_vit import HookedViT
    >>> model = HookedViT(HookedViTConfig(n_layers=4, d_model=32, n_heads=2, d_mlp=64, image_size=32,
    ...                                   patch_size=8, n_classes=3))
    >>> x = torch.randn(2, 3, 32, 32)
    >>> names = {f"blocks.{layer}.hook_resid_pre" for layer in (1, 2)}
    >>> with torch.inference_mode():
    ...     _, source = source_run(model, x, names)
    ...     ctx = resolve_context("mean").residuals(model, x, [1])
    ...     out = run_patched(model, ctx, source, "resid_pre", [(1, 3)], patch_units(model.grid), batch_size=8)
    >>> out.shape  # [n_windows, batch, n_units, n_out]
    torch.Size([1, 2, 16, 3])
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from caap_lens.attribution.units import Units
from caap_lens.model.protocol import HookedViTLike
from caap_lens.patching import patch_from_source, patchable_hook_name

Window = tuple[int, int]


def model_lock(model: HookedViTLike) -> Any:
    """The model's re-entrant lock (`HookedViT.lock`), or a no-op for models without one."""
    lock = getattr(model, "lock", None)
    return lock if lock is not None else contextlib.nullcontext()


@contextlib.contextmanager
def lowered_blocks(model: HookedViTLike, dtype: torch.dtype | None) -> Iterator[None]:
    """Runs the transformer blocks with ``dtype`` weights, restoring the originals exactly afterwards.

    The parameters keep their identity (hooks and references stay valid); only their data is swapped
    for a lower-precision copy, and swapped back in ``finally``. Embedding, final norm and head keep
    the model's dtype, so the residual stream between blocks stays in full precision.
    """
    if dtype is None or dtype == model.dtype:
        yield
        return
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be None, torch.bfloat16 or torch.float16, got {dtype}")
    saved = []
    with model_lock(model):  # the swap must not be seen by another thread's run
        try:
            with torch.no_grad():
                for param in model.blocks.parameters():
                    saved.append((param, param.data))
                    param.data = param.data.to(dtype)
            yield
        finally:
            for param, data in saved:
                param.data = data


def run_blocks(model: HookedViTLike, resid: Tensor, start: int, stop: int) -> Tensor:
    """Blocks ``[start, stop)`` on a residual stream."""
    for block in model.blocks[start:stop]:
        resid = block(resid)
    return resid


def finish(model: HookedViTLike, resid: Tensor, start: int) -> Tensor:
    """Unpatched run from block ``start`` to the output (see `HookedViT.output_from`)."""
    return model.output_from(resid, start).to(model.dtype)


def source_run(model: HookedViTLike, images: Tensor, hook_names: set[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """The source output and its activations at ``hook_names``."""
    cache: dict[str, Tensor] = {}

    def keep(act: Tensor, *, hook: Any) -> None:
        cache[hook.name] = act

    with model.hooks(fwd_hooks=[(name, keep) for name in sorted(hook_names)]):
        out = finish(model, model.embed_images(images), 0)
    return out, cache


def group_by_start(windows: Sequence[Window]) -> dict[int, list[int]]:
    """The distinct stops of the windows sharing each start, starts and stops ascending.

    Example:
        >>> group_by_start([(4, 8), (2, 3), (4, 6), (4, 8)])
        {2: [3], 4: [6, 8]}
    """
    out: dict[int, set[int]] = {}
    for start, stop in windows:
        out.setdefault(start, set()).add(stop)
    return {start: sorted(out[start]) for start in sorted(out)}


def _chunks(n_rows: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for begin in range(0, n_rows, batch_size):
        yield begin, min(begin + batch_size, n_rows)


def run_patched(
    model: HookedViTLike,
    context_resid: dict[int, Float[Tensor, "batch pos d_model"]],
    source: dict[str, Tensor],
    hook: str,
    windows: Sequence[Window],
    units: Units,
    batch_size: int = 64,
    on_chunk: Callable[[int], None] | None = None,
) -> Float[Tensor, "n_windows batch n_units n_out"]:
    """Outputs of every patched run.

    Args:
        model: A `HookedViT`.
        context_resid: The context's residual stream before each window start.
        source: Source activations by full hook name, for every layer of every window.
        hook: Short name of the patched hook (see `caap_lens.patching`).
        windows: ``(start, stop)`` layer windows.
        units: What each row patches.
        batch_size: Rows per forward pass.
        on_chunk: Called with the number of rows after each chunk (progress bars).

    Returns:
        ``[n_windows, batch, n_units, n_out]`` outputs, on the CPU, float32.
    """
    batch = next(iter(context_resid.values())).shape[0]
    n_rows = batch * units.n_units
    results: dict[Window, list[Tensor]] = {w: [] for w in windows}
    for start, stops in group_by_start(windows).items():
        for begin, end in _chunks(n_rows, batch_size):
            rows = torch.arange(begin, end)
            image_index, unit_index = rows // units.n_units, rows % units.n_units
            mask = units.rows(image_index, unit_index).to(model.device)
            image_index = image_index.to(model.device)
            resid = context_resid[start][image_index]  # a fresh copy per chunk
            layer = start
            for stop in stops:
                while layer < stop:
                    name = patchable_hook_name(hook, layer)
                    patch = patch_from_source(source[name], mask, image_index)
                    with model.hooks(fwd_hooks=[(name, patch)]):
                        resid = run_blocks(model, resid, layer, layer + 1)
                    layer += 1
                results[(start, stop)].append(finish(model, resid, stop).float().cpu())
            if on_chunk is not None:
                on_chunk(end - begin)
    stacked = [torch.cat(results[w], dim=0).reshape(batch, units.n_units, -1) for w in windows]
    return torch.stack(stacked, dim=0)

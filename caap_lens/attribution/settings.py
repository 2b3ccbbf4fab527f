"""`CAAPSettings`: every choice of one CAAP run, checked once, frozen.

`caap`, the sweeps, `choose_window`, the CAAP baseline and `fidelity` all build their settings with
`caap_settings` and hand the same object to `caap_lens.attribution.engine.patched_scores`, so each
rule lives in one place: windows are checked against the model's depth, ``heads`` implies the
``"z"`` hook, score names are distinct, the context is resolved, ``batch_size`` is a positive int.

The settings also read as a plain mapping — ``settings["hook"]``, ``dict(settings)`` — giving the
printable description that results, reports and saved files carry (contexts and scores by name,
tensors by shape).

Example:
    >>> from caap_lens.config import HookedViTConfig
    >>> from caap_lens.model.hooked_vit import HookedViT
    >>> model = HookedViT(HookedViTConfig(n_layers=6, d_model=32, n_heads=2, d_mlp=64, image_size=32,
    ...                                   patch_size=8, n_classes=3))
    >>> settings = caap_settings(model, heads=True)
    >>> settings.windows, settings.hook, settings["context"]
    (((2, 4),), 'z', 'mean')
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from caap_lens.attribution.contexts import resolve_context
from caap_lens.attribution.runner import Window
from caap_lens.attribution.scores import ScoreLike, resolve_score, score_name, scores_index_classes, target_space
from caap_lens.attribution.units import check_heads
from caap_lens.model.protocol import HookedViTLike
from caap_lens.patching import resolve_hook

LOWER_DTYPES = (torch.bfloat16, torch.float16)


def default_window(n_layers: int) -> Window:
    """The middle third of the network: ``(n // 3, max(n // 3 + 1, 2 n // 3))``.

    Example:
        >>> default_window(12), default_window(2)
        ((4, 8), (0, 1))
    """
    start = n_layers // 3
    return (start, max(start + 1, (2 * n_layers) // 3))


def check_window(model: HookedViTLike, layers: Any) -> Window:
    """Validates a ``(start, stop)`` window against the model's depth."""
    n = model.cfg.n_layers
    try:
        if isinstance(layers, (str, bytes)) or any(isinstance(v, bool) for v in layers):
            raise TypeError  # True is not layer 1
        start, stop = (operator.index(v) for v in layers)  # ints only: 1.5 is not silently 1
    except (TypeError, ValueError):
        raise ValueError(
            f"layers must be a (start, stop) pair of ints, got {layers!r}; e.g. layers=(2, 4)"
        ) from None
    if not 0 <= start < stop <= n:
        raise ValueError(f"window ({start}, {stop}) must satisfy 0 <= start < stop <= n_layers={n}")
    return (start, stop)


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as a positive int (not a bool, float or string)."""
    try:
        if isinstance(batch_size, bool):
            raise TypeError
        value = operator.index(batch_size)
    except TypeError:
        raise ValueError(
            f"batch_size must be a positive int (patched runs per forward pass), got {batch_size!r}"
        ) from None
    if value < 1:
        raise ValueError(f"batch_size must be >= 1, got {value} (patched runs per forward pass)")
    return value


def check_fwd_hooks(model: HookedViTLike, fwd_hooks: Any) -> tuple[tuple[Any, Any], ...]:
    """``fwd_hooks`` as TransformerLens takes them: ``(hook name or name filter, fn)`` pairs, names known."""
    names = getattr(model, "hook_dict", None)
    for item in fwd_hooks:
        if not isinstance(item, (tuple, list)) or len(item) != 2 or not callable(item[1]):
            raise ValueError(f"fwd_hooks must be (hook name, fn) pairs as in run_with_hooks, got {item!r}")
        name = item[0]
        if isinstance(name, str) and names is not None and name not in names:
            close = [n for n in names if name.split(".")[-1] in n][:3]
            hint = f"; e.g. {', '.join(close)}" if close else ""
            raise ValueError(f"fwd_hooks names unknown hook point {name!r} (see model.hook_dict){hint}")
        if not isinstance(name, str) and not callable(name):
            raise ValueError(f"a fwd_hooks name must be a hook-point name or a filter fn(name) -> bool, got {name!r}")
    return tuple((item[0], item[1]) for item in fwd_hooks)


def _check_dtype(dtype: Any, model_dtype: Any) -> torch.dtype | None:
    if dtype is None or dtype == model_dtype:
        return None  # the model's own dtype: nothing to lower
    if dtype not in LOWER_DTYPES:
        raise ValueError(f"dtype must be None, torch.bfloat16 or torch.float16, got {dtype}")
    return dtype


@dataclass(frozen=True, eq=False)
class CAAPSettings(Mapping):
    """The checked choices of one CAAP run (build it with `caap_settings`).

    Attributes:
        windows: ``(start, stop)`` windows, each scored from one shared set of patched runs.
        context: The resolved neutral context (`caap_lens.attribution.contexts`).
        hook: Short name of the patched activation (`caap_lens.patching`).
        scores: ``(name, fn)`` of every score read from the patched outputs.
        relative: Subtract the context run's own score.
        region: Bool patch masks patched as one unit each, or None (one unit per patch).
        heads: None, True (every head) or head indices: patch one head's ``hook_z`` at a time.
        layers: The window `caap` was asked for (its ``per_layer`` windows split it), else None.
        per_layer: Each layer of ``layers`` is its own window (per-head maps).
        batch_size: Patched runs per forward pass.
        dtype: The blocks' weights in bf16/fp16 for the run, or None (the model's own dtype).
        progress: Show a progress bar.
        fwd_hooks: Extra TransformerLens hooks active in every run.
        model_dtype: The model's dtype when the settings were made (described when ``dtype`` is None).
        targets_are_classes: Every score's target indexes the output classes, so targets are
            range-checked (custom score callables may index something else).
        target_space: The score that names its own targets (text prompts,
            `caap_lens.attribution.scores.target_space`), resolving ``target`` in place of the
            model's classes; None for class scores.
    """

    windows: tuple[Window, ...]
    context: Any
    hook: str
    scores: tuple[tuple[str, Any], ...]
    relative: bool = False
    region: Tensor | None = None
    heads: bool | tuple[int, ...] | None = None
    layers: Window | None = None
    per_layer: bool = False
    batch_size: int = 64
    dtype: torch.dtype | None = None
    progress: bool = False
    fwd_hooks: tuple[tuple[Any, Any], ...] = ()
    model_dtype: str = "torch.float32"
    targets_are_classes: bool = True
    target_space: Any = None

    @property
    def score(self) -> str:
        """The name of the (first) score."""
        return self.scores[0][0]

    @property
    def context_name(self) -> str:
        return str(getattr(self.context, "name", type(self.context).__name__))

    def describe(self) -> dict[str, Any]:
        """The printable description: what ``dict(settings)`` gives."""
        out: dict[str, Any] = {} if self.layers is None else {"layers": self.layers}
        out.update(
            hook=self.hook,
            context=self.context_name,
            relative=self.relative,
            heads=list(self.heads) if isinstance(self.heads, tuple) else self.heads,
            region=tuple(self.region.shape) if self.region is not None else None,
            batch_size=self.batch_size,
            dtype=str(self.dtype) if self.dtype is not None else self.model_dtype,
            score=self.score if len(self.scores) == 1 else [name for name, _ in self.scores],
        )
        if self.layers is not None:
            out["per_layer"] = self.per_layer
        if self.target_space is not None:
            out["targets"] = list(self.target_space.target_names)
        return out

    def __getitem__(self, key: str) -> Any:
        return self.describe()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.describe())

    def __len__(self) -> int:
        return len(self.describe())

    def __repr__(self) -> str:
        return f"CAAPSettings({self.describe()}, windows={list(self.windows)})"


def caap_settings(
    model: HookedViTLike,
    *,
    layers: Window | None = None,
    windows: Sequence[Window] | None = None,
    per_layer: bool = False,
    context: Any = "mean",
    hook: str | None = None,
    scores: Sequence[ScoreLike] = ("logit",),
    relative: bool = False,
    region: Tensor | None = None,
    heads: bool | Sequence[int] | None = None,
    batch_size: int = 64,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    fwd_hooks: Sequence[tuple[Any, Any]] = (),
) -> CAAPSettings:
    """Checks every CAAP option once against ``model`` and freezes them.

    ``context``, ``hook``, ``relative``, ``region``, ``heads``, ``batch_size``, ``dtype``, ``progress``
    and ``fwd_hooks`` are as in `caap` (``hook`` defaults to ``"z"`` when ``heads`` is set, else
    ``"resid_pre"``).

    Args:
        model: The model the run is for (its depth and heads bound the windows and heads).
        layers: One window (default `default_window`); with ``per_layer``, split into its layers.
        windows: Several windows instead of ``layers`` (the sweeps).
        per_layer: Each layer of ``layers`` is its own window; needs ``heads``.
        scores: Scores read from the same patched runs; their names must differ.

    Raises:
        ValueError: an invalid window, head, hook for heads, score list, batch size, dtype or hook pair.
    """
    if windows is not None and (layers is not None or per_layer):
        raise ValueError("give either layers (one window, optionally per_layer) or windows (a sweep), not both")
    heads = check_heads(heads, model.cfg.n_heads)
    heads = tuple(heads) if isinstance(heads, list) else heads
    hook = resolve_hook(hook if hook is not None else ("z" if heads is not None else "resid_pre"))
    if heads is not None and hook != "z":
        raise ValueError(f"per-head maps patch attn.hook_z; got hook={hook!r} (use hook='z' or leave it unset)")
    if per_layer and heads is None:
        raise ValueError("per_layer=True needs heads=True (or a list of heads)")
    window = None
    if windows is None:
        window = check_window(model, layers if layers is not None else default_window(model.cfg.n_layers))
        windows = [(layer, layer + 1) for layer in range(*window)] if per_layer else [window]
    checked = tuple(check_window(model, w) for w in windows)
    if not checked:
        raise ValueError("no windows given: pass at least one (start, stop) window")
    if isinstance(scores, (str, bytes)) or callable(scores):
        scores = [scores]
    named = tuple((score_name(s), resolve_score(s)) for s in scores)
    if not named or len({name for name, _ in named}) != len(named):
        # maps are keyed by score name: a repeated name would be lost
        raise ValueError(f"scores need distinct names (set __name__ on callables), got {[n for n, _ in named]}")
    spaces = [space for space in map(target_space, scores) if space is not None]
    if any(s is not spaces[0] for s in spaces) or (spaces and len(spaces) != len(scores)):
        # one target per image: it cannot name a prompt for one score and a class for another
        raise ValueError("scores that name their own targets (text prompts) cannot be mixed with other scores "
                         "or other prompts in one run: targets would mean different things")
    return CAAPSettings(
        windows=checked,
        context=resolve_context(context),
        hook=hook,
        scores=named,
        relative=bool(relative),
        region=region,
        heads=heads,
        layers=window,
        per_layer=bool(per_layer),
        batch_size=check_batch_size(batch_size),
        dtype=_check_dtype(dtype, getattr(model, "dtype", None)),
        progress=bool(progress),
        fwd_hooks=check_fwd_hooks(model, fwd_hooks),
        model_dtype=str(getattr(model, "dtype", torch.float32)),
        targets_are_classes=all(scores_index_classes(s) for s in scores),
        target_space=spaces[0] if spaces else None,
    )

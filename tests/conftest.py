"""Shared fixtures: offline mode, perturbed random-init timm models and their HookedViT conversions.

timm's default init leaves parts of a ViT degenerate (layer-scale gammas ~1e-5, zero biases, near-zero
CLS/position tokens), so a parity test on it could pass without the converted parts mattering. Every
timm model here is perturbed first: ``N(0, 0.02)`` noise on every parameter, layer-scale gammas drawn
from ``U(0.5, 1.5)``, all from a fixed seed.

Test modules take their small models from ``tiny_vit`` (one per argument set, shared, handed back with
no hooks), their inputs from ``images_for`` and check for leaked hooks with ``no_hooks_left``
(TransformerLens's ``list_hooks``), so none keeps its own copy of these.

Max abs differences recorded with the ``record_diff`` fixture are printed as they are measured (shown
with ``-s``) and listed again in the pytest terminal summary.
"""

from __future__ import annotations

import copy
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub: never download
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from typing import Any, Callable, Sequence  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# id -> (timm name, timm kwargs, expected cfg.family). depth=2 is added by `_make_timm`.
VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "vit": ("vit_tiny_patch16_224", {}, "vit"),
    "vit_avg": ("vit_small_patch16_224", {"global_pool": "avg"}, "vit"),
    "vit_prenorm": ("vit_tiny_patch16_224", {"pre_norm": True}, "vit"),
    "clip_b32": ("vit_base_patch32_clip_224", {}, "clip"),
    "clip_b16": ("vit_base_patch16_clip_224", {}, "clip"),
    "clip_b16_headless": ("vit_base_patch16_clip_224", {"num_classes": 0}, "clip"),
    "clip_quickgelu": ("vit_base_patch16_clip_quickgelu_224", {}, "clip"),
    "deit": ("deit_tiny_patch16_224", {}, "deit"),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}, "deit"),
    "deit3": ("deit3_small_patch16_224", {}, "deit3"),
    "dinov2": ("vit_small_patch14_dinov2", {"img_size": 224}, "dinov2"),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", {"img_size": 224}, "dinov2"),
}
VARIANT_IDS = list(VARIANTS)

# Two cores shared with other jobs: intra-op threads then mostly wait on each other (a 2-layer ViT
# forward ran ~40x slower with 2 threads than with 1 under load).
torch.set_num_threads(1)

_PAIRS: dict[str, tuple[torch.nn.Module, Any]] = {}
DIFFS: dict[str, dict[str, float]] = {}


def get_timm():
    from caap_lens._timm import import_timm

    return import_timm()


def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Adds N(0, 0.02) to every parameter; layer-scale gammas become U(0.5, 1.5). In place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) + 0.5)
            else:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.02)
    return model


def make_timm(name: str, seed: int = 0, depth: int | None = 2, **kwargs: Any) -> torch.nn.Module:
    """A perturbed random-init timm model in eval mode (never downloads)."""
    timm = get_timm()
    torch.manual_seed(seed)
    if depth is not None:
        kwargs["depth"] = depth
    model = timm.create_model(name, **kwargs).eval()
    return perturb_(model, seed)


def get_pair(variant: str) -> tuple[torch.nn.Module, Any]:
    """(perturbed timm model, HookedViT converted from it), built once per session."""
    if variant not in _PAIRS:
        from caap_lens import HookedViT

        name, kwargs, _ = VARIANTS[variant]
        timm_model = make_timm(name, seed=VARIANT_IDS.index(variant), **kwargs)
        _PAIRS[variant] = (timm_model, HookedViT.from_timm(timm_model))
    timm_model, model = _PAIRS[variant]
    model.reset_hooks(including_permanent=True)
    model.set_use_attn_result(False)
    return timm_model, model


_TINY: dict[tuple[Any, ...], Any] = {}


def tiny_vit(
    name: str = "vit_tiny_patch16_224",
    *,
    seed: int,
    depth: int,
    img_size: int | tuple[int, int],
    num_classes: int = 10,
    f64: bool = False,
    class_names: Sequence[str] | None = None,
    **timm_kwargs: Any,
) -> Any:
    """A HookedViT converted from a perturbed random-init timm model (`make_timm`), one per argument set.

    The test modules share these models, so every call hands the model back clean: hooks (permanent
    ones too) removed, per-head attention results off. ``f64=True`` gives a float64 copy of the same
    weights. Tests that change weights must work on a ``copy.deepcopy``.
    """
    key = (name, seed, depth, img_size, num_classes, f64, tuple(class_names or ()), tuple(sorted(timm_kwargs.items())))
    if key not in _TINY:
        if f64:
            fp32 = tiny_vit(name, seed=seed, depth=depth, img_size=img_size, num_classes=num_classes,
                            class_names=class_names, **timm_kwargs)
            _TINY[key] = copy.deepcopy(fp32).double()
        else:
            from caap_lens import HookedViT

            timm_model = make_timm(name, seed=seed, depth=depth, img_size=img_size, num_classes=num_classes,
                                   **timm_kwargs)
            named = {} if class_names is None else {"class_names": class_names}
            _TINY[key] = HookedViT.from_timm(timm_model, **named)
    model = _TINY[key]
    model.reset_hooks(including_permanent=True)
    model.set_use_attn_result(False)
    return model


def images_for(model: Any, batch: int = 2, seed: int = 1234) -> torch.Tensor:
    """A fixed normalised-looking input batch of the model's size and dtype."""
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    return torch.randn(batch, model.cfg.n_channels, *model.cfg.image_size, generator=gen, dtype=dtype)


def cache_of(model: Any, attn_result: bool = False, batch: int = 2) -> tuple[torch.Tensor, Any]:
    """``model.run_with_cache(images_for(model, batch))`` without grad, per-head results on if asked (then off)."""
    x = images_for(model, batch=batch)
    model.set_use_attn_result(attn_result)
    try:
        with torch.no_grad():
            return model.run_with_cache(x)
    finally:
        model.set_use_attn_result(False)


def one_layer_rollout(pattern: torch.Tensor) -> torch.Tensor:
    """Abnar & Zuidema's rollout of one layer, transcribed: heads averaged, ``0.5 A + 0.5 I``, rows summing to 1.

    ``pattern`` is ``[batch, head, q, k]``; returns ``[batch, q, k]``.
    """
    a = pattern.mean(1)
    rolled = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
    return rolled / rolled.sum(-1, keepdim=True)


def no_hooks_left(model: Any) -> bool:
    """No TransformerLens hook on any hook point (forward or backward, permanent too), no ``hooks()`` open."""
    return not model.list_hooks() and model.context_level == 0


@pytest.fixture(scope="session")
def pair() -> Callable[[str], tuple[torch.nn.Module, Any]]:
    return get_pair


@pytest.fixture(scope="session")
def record_diff() -> Callable[[str, str, float], None]:
    def record(variant: str, what: str, value: float) -> None:
        DIFFS.setdefault(variant, {})[what] = float(value)
        print(f"[max abs diff] {variant:<22} {what:<18} {value:.3e}")

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if not DIFFS:
        return
    columns = sorted({what for row in DIFFS.values() for what in row})
    tr = terminalreporter
    tr.section("max abs diff vs timm (fp32)")
    tr.write_line(f"{'variant':<22} " + " ".join(f"{c:>18}" for c in columns))
    for variant, row in DIFFS.items():
        cells = " ".join(f"{row[c]:>18.3e}" if c in row else f"{'-':>18}" for c in columns)
        tr.write_line(f"{variant:<22} {cells}")


@pytest.fixture
def no_shape_checks() -> Any:
    """Turns the session's runtime shape checks off for one test.

    For tests of the library's own error messages on wrongly shaped tensors: users run without the
    checks, so the message they see is the function's own, and the checks would pre-empt it.
    """
    import jaxtyping

    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)

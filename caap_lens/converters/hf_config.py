"""Reading a Hugging Face vision config into `HookedViTConfig` fields, refusing what HookedViT cannot run.

Every option of an HF config is accounted for: it is *read* (it shapes the `HookedViTConfig`),
*training-only* (dropout, initialisation, drop path: no effect on the eval forward), *not converted*
with a stated reason (e.g. ``encoder_stride``, used only by the masked-image-modelling decoder), or it
must have one value (``use_swiglu_ffn=False``). An option in none of these groups -- one a newer
transformers release added, say -- raises `UnsupportedModelError` naming it, so nothing is ignored
silently. `hf_base_fields` turns the read options into keyword arguments of `HookedViTConfig`.

Example:
    >>> from caap_lens.converters.hf_config import hf_activation
    >>> hf_activation("quick_gelu"), hf_activation("gelu_pytorch_tanh")
    ('quick_gelu', 'gelu_tanh')
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Iterable, Mapping

from caap_lens._timm import import_timm
from caap_lens.converters.families import UnsupportedModelError

__all__ = ["TRAINING_ONLY", "check_options", "hf_activation", "hf_base_fields", "hf_class_names",
           "hf_output_activation", "import_transformers", "unsupported_hf"]

#: Options that change training only: the eval forward is the same whatever their value.
TRAINING_ONLY = frozenset({
    "hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "drop_path_rate",
    "initializer_range", "initializer_factor",
})

#: Options every family reads (``head_dim`` when a config sets one).
READ = frozenset({
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "layer_norm_eps", "image_size", "patch_size", "num_channels", "head_dim",
})

# HF activation name -> HookedViT act_fn ("gelu_new" is the tanh formula written out: equal up to rounding)
_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "relu": "relu"}


def unsupported_hf(what: str) -> UnsupportedModelError:
    """An `UnsupportedModelError` saying ``what`` about a Hugging Face model.

    Example:
        >>> str(unsupported_hf("no")).startswith("no. HookedViT.from_hf converts")
        True
    """
    from caap_lens.converters.hf_models import HF_CLASSES  # the table of supported classes

    return UnsupportedModelError(f"{what}. HookedViT.from_hf converts these Hugging Face classes: "
                                 f"{', '.join(HF_CLASSES)}")


def import_transformers() -> ModuleType:
    """Imports ``transformers`` after timm's torchvision work-around, which its vision models need too."""
    import_timm()  # even when transformers is imported (TransformerLens does): its models import torchvision lazily
    import transformers

    return transformers


def hf_activation(name: Any) -> str:
    """HookedViT's ``act_fn`` for an HF ``hidden_act``.

    Raises:
        UnsupportedModelError: An activation HookedViT does not have (the message names ``hidden_act``).
    """
    if not isinstance(name, str) or name not in _ACTIVATIONS:
        raise unsupported_hf(f"hidden_act={name!r} is not supported (supported: {', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


def check_options(config: Any, handled: Iterable[str], required: Mapping[str, Any] | None = None) -> None:
    """Raises `UnsupportedModelError` for an option of ``config`` that is neither read nor harmless.

    Args:
        config: An HF ``PretrainedConfig`` (the vision config of a two-tower model).
        handled: The family's own options beyond `READ` and `TRAINING_ONLY` that it reads or, with a
            documented reason, does not convert.
        required: Options that must have exactly this value (e.g. ``{"use_swiglu_ffn": False}``).
    """
    transformers = import_transformers()
    base = set(transformers.PretrainedConfig().to_dict())
    options = config.to_dict()
    for name, value in (required or {}).items():
        if options.get(name, value) != value:
            raise unsupported_hf(f"{type(config).__name__} option {name}={options[name]!r} is not supported "
                                 f"(HookedViT needs {name}={value!r})")
    known = READ | TRAINING_ONLY | set(handled) | set(required or {})
    unknown = sorted(k for k in set(options) - base - known if not k.startswith("_"))
    if unknown:
        raise unsupported_hf(f"{type(config).__name__} has options the converter does not know: "
                             f"{', '.join(f'{k}={options[k]!r}' for k in unknown)}")


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)  # type: ignore[return-value]


def hf_base_fields(config: Any, d_mlp: int | None = None) -> dict[str, Any]:
    """`HookedViTConfig` keyword arguments read from the options every family shares.

    Example:
        >>> from types import SimpleNamespace
        >>> c = SimpleNamespace(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        ...                     hidden_act="gelu", layer_norm_eps=1e-6, image_size=32, patch_size=8, num_channels=3)
        >>> hf_base_fields(c)["d_head"], hf_base_fields(c)["image_size"]
        (16, (32, 32))
    """
    d_model, n_heads = int(config.hidden_size), int(config.num_attention_heads)
    d_head = getattr(config, "head_dim", None) or d_model // n_heads
    return {
        "n_layers": int(config.num_hidden_layers), "d_model": d_model, "n_heads": n_heads, "d_head": int(d_head),
        "d_mlp": int(d_mlp if d_mlp is not None else config.intermediate_size),
        "act_fn": hf_activation(config.hidden_act), "eps": float(config.layer_norm_eps),
        "image_size": _pair(config.image_size), "patch_size": _pair(config.patch_size),
        "n_channels": int(getattr(config, "num_channels", 3)),
    }


def hf_output_activation(config: Any, n_classes: int) -> str:
    """``"sigmoid"`` for multi-label classifiers, ``"logits"`` for regression and headless models, else softmax."""
    if not n_classes:
        return "logits"
    problem = getattr(config, "problem_type", None)
    return {"multi_label_classification": "sigmoid", "regression": "logits"}.get(problem, "softmax")


def hf_class_names(config: Any, n_classes: int) -> tuple[str, ...] | None:
    """The classifier's output names from ``config.id2label``; None for HF's placeholder ``LABEL_i`` names.

    Example:
        >>> from types import SimpleNamespace
        >>> hf_class_names(SimpleNamespace(id2label={0: "cat", 1: "dog"}), 2)
        ('cat', 'dog')
        >>> hf_class_names(SimpleNamespace(id2label={0: "LABEL_0", 1: "LABEL_1"}), 2) is None
        True
    """
    labels = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    if not n_classes or sorted(labels) != list(range(n_classes)):
        return None
    names = tuple(labels[i] for i in range(n_classes))
    return None if all(name == f"LABEL_{i}" for i, name in enumerate(names)) else names

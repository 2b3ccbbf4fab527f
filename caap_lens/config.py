"""The configuration of a hooked Vision Transformer: the architecture, nothing about training.

A `HookedViTConfig` says everything needed to build `HookedViT` and to map image patches to token
positions. It also carries the few fields TransformerLens's `ActivationCache` reads
(``normalization_type``, ``attn_only``, ...) and its patching helpers (``device``,
``n_key_value_heads``), so those work unchanged.

Example:
    >>> cfg = HookedViTConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=256, image_size=32,
    ...                       patch_size=8, n_classes=10)
    >>> cfg.grid_size, cfg.n_tokens
    ((4, 4), 17)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Pooling = Literal["token", "avg", "max", "avgmax", "token_dist", "map"]
POOLINGS = ("token", "avg", "max", "avgmax", "token_dist", "map")
Activation = Literal["gelu", "gelu_tanh", "quick_gelu", "relu"]
OutputActivation = Literal["softmax", "sigmoid", "logits"]
OUTPUT_ACTIVATIONS = ("softmax", "sigmoid", "logits")
OutputKind = Literal["classes", "embedding"]
OUTPUT_KINDS = ("classes", "embedding")
#: The ways a position embedding is resampled to another grid (`caap_lens.pos_embed`).
POS_EMBED_RESAMPLES = ("timm", "hf", "hf_float32", "hf_float32_antialias")
WeightsKind = Literal["random", "pretrained", "checkpoint", "bundled", "converted"]
WEIGHTS_KINDS = ("random", "pretrained", "checkpoint", "bundled", "converted")
#: The keys of ``data_config``: timm's eval-transform arguments (``timm.data.resolve_data_config``).
DATA_CONFIG_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


_DEFAULT_WEIGHTS = {
    "random": "random init (no weights loaded)",
    "pretrained": "pretrained weights",
    "checkpoint": "checkpoint file",
    "bundled": "bundled with caap_lens",
    "converted": "converted from a timm module (origin unknown)",
}


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")
    return pair  # type: ignore[return-value]


@dataclass
class HookedViTConfig:
    """Architecture of a `HookedViT`.

    Args:
        n_layers: Number of transformer blocks.
        d_model: Width of the residual stream.
        n_heads: Attention heads per block.
        d_mlp: Hidden width of each MLP.
        image_size: Input size in pixels, ``int`` or ``(height, width)``.
        patch_size: Patch size in pixels, ``int`` or ``(height, width)``.
        n_classes: Classifier outputs; 0 for a headless backbone (the output is the pooled feature).
        d_head: Width of one head; defaults to ``d_model // n_heads``.
        n_channels: Image channels.
        class_token: Whether a CLS token is prepended.
        n_register_tokens: Register tokens after the CLS token (DINOv2 "reg" models).
        distilled: Whether a distillation token follows the CLS token (DeiT distilled).
        pos_embed_on_prefix: Whether the position embedding covers prefix tokens too (timm's
            ``not no_embed_class``); False in DeiT3 and DINOv2-with-registers.
        pooling: ``"token"`` (CLS), ``"avg"`` (mean of patch tokens), ``"max"`` (their elementwise
            max), ``"avgmax"`` (half the sum of mean and max, as timm), or ``"token_dist"``
            (mean of the CLS and distillation heads' logits, DeiT distilled at inference), or
            ``"map"`` (attention pooling: a learned query attends over the pooled tokens, then an MLP;
            SigLIP, timm's ``global_pool='map'``; `caap_lens.model.attention_pool`).
        pool_include_prefix: ``"avg"``/``"max"``/``"avgmax"``/``"map"`` pool over the prefix tokens too
            (timm's ``pool_include_prefix=True``), not the patch tokens only.
        pre_norm: LayerNorm on the embeddings before block 0 (CLIP image towers).
        final_norm: LayerNorm on every token after the last block.
        pooled_norm: LayerNorm after pooling (timm's ``fc_norm``).
        layer_scale: Per-channel scales on each block's attention and MLP outputs (DeiT3, DINOv2).
        qkv_bias: Biases on the query/key/value projection.
        proj_bias: Biases on the attention output projection and both MLP layers (timm's
            ``proj_bias``).
        act_fn: MLP non-linearity.
        eps: LayerNorm epsilon.
        image_mean: Per-channel mean used by preprocessing.
        image_std: Per-channel standard deviation used by preprocessing.
        family: Name of the timm family this config was converted from (informational).
        source: The timm architecture or file it came from (informational).
        output_activation: How the outputs become class scores: ``"softmax"`` (one class per image),
            ``"sigmoid"`` (multi-label) or ``"logits"`` (shown raw). Read by the report and the CLI's
            top classes; the forward pass always returns logits.
        output_kind: What the output's entries are: ``"classes"`` (one score per class, a classifier) or
            ``"embedding"`` (a vector to compare with others, such as a CLIP projection head or a headless
            model's pooled feature). Targets such as ``"predicted"`` or a class index need ``"classes"``
            (`caap_lens.attribution.targets`). A headless model (``n_classes=0``) is always
            ``"embedding"``.
        data_config: The model's own eval preprocessing, as timm's ``resolve_data_config`` gives it
            (``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``); None for
            models without one (built here, bundled). Its ``input_size`` and ``mean``/``std`` must agree
            with ``n_channels``/``image_size`` and ``image_mean``/``image_std`` (missing ones are
            filled from them). Read by `caap_lens.preprocessing.preprocess`.
        weights_kind: Where the weights came from: ``"random"`` (initialised, nothing loaded),
            ``"pretrained"`` (a published release), ``"checkpoint"`` (a local file), ``"bundled"``
            (shipped with caap_lens) or ``"converted"`` (a module handed in; its origin unknown here).
        weights: The weights' origin in one human-readable line (default: derived from
            ``weights_kind``).
        dynamic_img_size: The model runs on images of any size that is a whole number of patches
            (timm's ``dynamic_img_size=True``): each forward resamples the position embedding to the
            input's grid, as timm does (bicubic, antialiased, in float32). ``image_size`` stays the size
            it was built for, which ``preprocess`` resizes to; `caap_lens.model.sizing` says how the
            library's functions follow the input's grid.
        pos_embed_grid: The ``(grid_h, grid_w)`` the learned position embedding covers; None (the
            default) means ``grid_size``. Differs from ``grid_size`` only in a dynamic-size model run at
            another size (`HookedViT.at_size`), whose position embedding is resampled on every forward.
        pos_embed_resample: How the position embedding is resampled to another grid, as the library the
            model came from does it (`caap_lens.pos_embed`): ``"timm"`` (default), or ``"hf"``,
            ``"hf_float32"``, ``"hf_float32_antialias"`` for Hugging Face families.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    image_size: tuple[int, int] | int
    patch_size: tuple[int, int] | int
    n_classes: int = 1000
    d_head: int | None = None
    n_channels: int = 3
    class_token: bool = True
    n_register_tokens: int = 0
    distilled: bool = False
    pos_embed_on_prefix: bool = True
    pooling: Pooling = "token"
    pool_include_prefix: bool = False
    pre_norm: bool = False
    final_norm: bool = True
    pooled_norm: bool = False
    layer_scale: bool = False
    qkv_bias: bool = True
    proj_bias: bool = True
    act_fn: Activation = "gelu"
    eps: float = 1e-6
    image_mean: tuple[float, ...] = _IMAGENET_MEAN
    image_std: tuple[float, ...] = _IMAGENET_STD
    family: str = "vit"
    source: str = ""
    output_activation: OutputActivation = "softmax"
    output_kind: OutputKind = "classes"
    data_config: dict[str, Any] | None = None
    weights_kind: WeightsKind = "random"
    weights: str = ""
    dynamic_img_size: bool = False
    pos_embed_grid: tuple[int, int] | None = None
    pos_embed_resample: str = "timm"
    # Fields read by TransformerLens's ActivationCache; fixed for this architecture.
    normalization_type: str = field(default="LN", init=False)
    attn_only: bool = field(default=False, init=False)
    final_rms: bool = field(default=False, init=False)
    # Read by TransformerLens's patching helpers (caap_lens.model.tl_surface): the model keeps ``device``
    # equal to its own device; every head has its own keys and values.
    device: str = field(default="cpu", init=False, compare=False)
    n_key_value_heads: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.image_size = _pair(self.image_size, "image_size")
        self.patch_size = _pair(self.patch_size, "patch_size")
        if self.pos_embed_resample not in POS_EMBED_RESAMPLES:
            raise ValueError(f"pos_embed_resample must be one of {', '.join(POS_EMBED_RESAMPLES)}; "
                             f"got {self.pos_embed_resample!r}")
        if self.pos_embed_grid is not None:
            self.pos_embed_grid = _pair(self.pos_embed_grid, "pos_embed_grid")
            if min(self.pos_embed_grid) <= 0:
                raise ValueError(f"pos_embed_grid must be positive (grid_h, grid_w), got {self.pos_embed_grid}")
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "n_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) or self.n_classes < 0:
            raise ValueError(f"n_classes must be an int >= 0 (0: a headless backbone), got {self.n_classes!r}")
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads}): "
                    "pass d_head explicitly"
                )
            self.d_head = self.d_model // self.n_heads
        for axis in range(2):
            if self.image_size[axis] % self.patch_size[axis]:
                raise ValueError(
                    f"image_size {self.image_size} is not a whole number of patches of "
                    f"{self.patch_size}"
                )
        if len(self.image_mean) != self.n_channels or len(self.image_std) != self.n_channels:
            raise ValueError(
                f"image_mean/image_std need {self.n_channels} values (one per channel), got "
                f"{len(self.image_mean)} and {len(self.image_std)}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {self.pooling!r}")
        if self.pooling == "token" and not self.class_token:
            raise ValueError("pooling='token' needs class_token=True")
        if self.pooling == "token_dist" and not self.distilled:
            raise ValueError("pooling='token_dist' needs distilled=True")
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"output_activation must be one of {', '.join(OUTPUT_ACTIVATIONS)}; "
                             f"got {self.output_activation!r}")
        if self.output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind must be one of {', '.join(OUTPUT_KINDS)}; got {self.output_kind!r}")
        if self.n_classes == 0:
            self.output_kind = "embedding"  # no head: the output is the pooled feature
        if self.act_fn not in ("gelu", "gelu_tanh", "quick_gelu", "relu"):
            raise ValueError(
                f"act_fn must be one of gelu, gelu_tanh, quick_gelu, relu; got {self.act_fn!r}"
            )
        if self.weights_kind not in WEIGHTS_KINDS:
            raise ValueError(f"weights_kind must be one of {', '.join(WEIGHTS_KINDS)}; got {self.weights_kind!r}")
        if not self.weights:
            self.weights = _DEFAULT_WEIGHTS[self.weights_kind]
        if self.data_config is not None:
            self.data_config = self._checked_data_config(self.data_config)

    def _checked_data_config(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` with tuples for its sequences, filled and checked against the architecture."""
        unknown = set(data) - set(DATA_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown data_config keys {sorted(unknown)}; known: {', '.join(DATA_CONFIG_KEYS)}")
        out = {"input_size": (self.n_channels, *self.image_size), "mean": self.image_mean, "std": self.image_std,
               "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center"}
        out.update({k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in data.items()})
        out["input_size"] = tuple(int(v) for v in out["input_size"])
        out["mean"], out["std"] = (tuple(float(v) for v in out[k]) for k in ("mean", "std"))
        out["crop_pct"] = float(out["crop_pct"])
        if out["input_size"] != (self.n_channels, *self.image_size):
            raise ValueError(f"data_config input_size {out['input_size']} does not match the model's "
                             f"{(self.n_channels, *self.image_size)} (n_channels, *image_size)")
        if out["mean"] != self.image_mean or out["std"] != self.image_std:
            raise ValueError(f"data_config mean/std {out['mean']}/{out['std']} differ from image_mean/image_std "
                             f"{self.image_mean}/{self.image_std}")
        return {k: out[k] for k in DATA_CONFIG_KEYS}

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches per column and per row: ``(grid_h, grid_w)``."""
        return (
            self.image_size[0] // self.patch_size[0],  # type: ignore[index]
            self.image_size[1] // self.patch_size[1],  # type: ignore[index]
        )

    @property
    def n_patches(self) -> int:
        """Number of patch tokens."""
        return self.grid_size[0] * self.grid_size[1]

    @property
    def n_prefix_tokens(self) -> int:
        """Tokens before the patch tokens: CLS, then registers or the distillation token."""
        return int(self.class_token) + int(self.distilled) + self.n_register_tokens

    @property
    def n_tokens(self) -> int:
        """Sequence length: prefix tokens plus patch tokens."""
        return self.n_prefix_tokens + self.n_patches

    @property
    def readout_rows(self) -> tuple[int, ...]:
        """Token rows of the final residual stream that the pooling reads.

        ``(0,)`` for CLS pooling; ``(0, 1)`` for a distilled model (its CLS and distillation heads
        are averaged); for the pooling over tokens (``"avg"``, ``"max"``, ``"avgmax"``) every patch
        token, and the prefix tokens too with ``pool_include_prefix``; the same tokens for ``"map"``
        (whose actual weights are the pool's attention pattern, ``attn_pool.hook_pattern``). Methods that read "the
        readout token's" attention or gradient (`caap_lens.baselines.attention`) average over these
        rows: with equal weights (exact for ``"avg"`` and ``"token_dist"``), and for ``"map"`` weighted
        by the pool's pattern, heads averaged.
        """
        if self.pooling == "token":
            return (0,)
        if self.pooling == "token_dist":
            return (0, 1)
        first = 0 if getattr(self, "pool_include_prefix", False) else self.n_prefix_tokens
        return tuple(range(first, self.n_tokens))

    @property
    def learned_grid(self) -> tuple[int, int]:
        """The grid the learned position embedding covers: ``pos_embed_grid``, or ``grid_size``."""
        return self.pos_embed_grid if self.pos_embed_grid is not None else self.grid_size

    @property
    def n_pos_embed(self) -> int:
        """Rows of the learned position embedding."""
        grid = self.learned_grid
        return grid[0] * grid[1] + (self.n_prefix_tokens if self.pos_embed_on_prefix else 0)

    def check_image_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``size`` as ints, or a ValueError unless it is a positive whole number of patches."""
        size = (int(size[0]), int(size[1]))
        ph, pw = self.patch_size  # type: ignore[misc]
        if size[0] < ph or size[1] < pw or size[0] % ph or size[1] % pw:
            raise ValueError(
                f"image size {size} is not a whole number of {self.patch_size} patches; a dynamic-size model "
                f"takes heights that are multiples of {ph} and widths that are multiples of {pw} (resize or crop "
                "the images)"
            )
        return size

    def at_size(self, image_size: int | tuple[int, int]) -> "HookedViTConfig":
        """The config of the same dynamic-size model run on ``image_size`` images.

        The position embedding keeps the grid it was learned on (``pos_embed_grid``), and ``data_config``'s
        ``input_size`` follows the size (same resize interpolation and crop fraction).

        Example:
            >>> cfg = HookedViTConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16, image_size=16, patch_size=8,
            ...                       dynamic_img_size=True)
            >>> wide = cfg.at_size((16, 32))
            >>> wide.grid_size, wide.pos_embed_grid, wide.n_pos_embed
            ((2, 4), (2, 2), 5)
        """
        size = self.check_image_size(_pair(image_size, "image_size"))
        data = None
        if self.data_config is not None:
            data = {**self.data_config, "input_size": (self.n_channels, *size)}
        return dataclasses.replace(self, image_size=size, pos_embed_grid=self.learned_grid, data_config=data)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict that `from_dict` turns back into an equal config.

        Example:
            >>> import json
            >>> cfg = HookedViTConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16, image_size=8, patch_size=4,
            ...                       data_config={"crop_pct": 0.9}, weights_kind="checkpoint",
            ...                       weights="checkpoint: a.pth")
            >>> cfg.data_config["input_size"], cfg.data_config["crop_pct"]
            ((3, 8, 8), 0.9)
            >>> HookedViTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
            True
        """
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        if out["data_config"] is not None:
            out["data_config"] = dict(out["data_config"])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "HookedViTConfig":
        """Builds a config from `to_dict` output, rejecting unknown keys."""
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown HookedViTConfig fields: {sorted(unknown)}")
        return cls(**data)

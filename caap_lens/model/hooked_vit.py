"""`HookedViT`: a Vision Transformer whose every activation is a live TransformerLens hook point.

The model is a `transformer_lens.HookedRootModule`, so ``run_with_hooks``, ``hooks()`` and
``run_with_cache`` work as for TransformerLens language models; ``run_with_cache`` returns a
TransformerLens `ActivationCache` (``cache["resid_pre", 3]``, ``decompose_resid``, ...).
``forward(start_at_layer=, stop_at_layer=)`` runs part of the network, so a run can resume from a
cached residual stream — the basis of fast activation patching.

Hook points (shapes per hook):

    hook_embed                  [batch, pos, d_model]  prefix tokens + patch projections
    hook_pos_embed              [batch, pos, d_model]
    ln_pre.hook_*               pre-norm models only (CLIP)
    blocks.{l}.hook_resid_pre   [batch, pos, d_model]
    blocks.{l}.ln1.hook_scale   [batch, pos, 1]       ln1/ln2.hook_normalized [batch, pos, d_model]
    blocks.{l}.attn.hook_q/k/v/z            [batch, pos, head, d_head]
    blocks.{l}.attn.hook_attn_scores/pattern [batch, head, query_pos, key_pos]
    blocks.{l}.attn.hook_result  [batch, pos, head, d_model]  (after set_use_attn_result(True))
    blocks.{l}.hook_attn_out / hook_resid_mid / hook_mlp_out / hook_resid_post [batch, pos, d_model]
    blocks.{l}.mlp.hook_pre/post [batch, pos, d_mlp]
    ln_final.hook_scale/normalized  final norm over all tokens
    hook_pooled                 [batch, d_model]  (hook_pooled_dist for distilled models)
    attn_pool.hook_*            attention-pool readout (pooling="map", SigLIP): q/k/v/pattern/z, MLP
    ln_pooled.hook_*            norm after pooling (timm's fc_norm), when the model has one
    hook_logits                 [batch, n_classes] (the pooled feature for headless models)

Example:
    >>> cfg = HookedViTConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, image_size=16,
    ...                       patch_size=4, n_classes=5)
    >>> model = HookedViT(cfg)
    >>> logits, cache = model.run_with_cache(torch.randn(1, 3, 16, 16))
    >>> logits.shape, cache["resid_pre", 1].shape
    (torch.Size([1, 5]), torch.Size([1, 17, 32]))
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import threading
from typing import Any, Iterator, Literal, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.hook_points import HookPoint

from caap_lens import converters
from caap_lens.config import HookedViTConfig
from caap_lens.model.attention_pool import AttentionPool
from caap_lens.model.block import TransformerBlock
from caap_lens.model.embed import PatchEmbed, PosEmbed
from caap_lens.model.layer_norm import LayerNorm, has_hooks
from caap_lens.model.sizing import grid_of
from caap_lens.model.tl_surface import TransformerLensSurface, ViTActivationCache
from caap_lens.preprocessing import preprocess

ReturnType = Literal["logits", "pooled", None]


class HookedViT(TransformerLensSurface, HookedRootModule):
    """A hooked ViT (timm's ``VisionTransformer`` layout) built from a `HookedViTConfig`.

    Build one from timm with `HookedViT.from_timm`, or the bundled model with
    `HookedViT.from_pretrained`. ``class_names`` (optional) names the classifier outputs.
    """

    def __init__(self, cfg: HookedViTConfig, class_names: Sequence[str] | None = None):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = PatchEmbed(
            d, cfg.patch_size, cfg.n_channels, cfg.class_token, cfg.distilled, cfg.n_register_tokens
        )
        self.pos_embed = PosEmbed(d, cfg.learned_grid, cfg.n_prefix_tokens, cfg.pos_embed_on_prefix,
                                  cfg.pos_embed_resample)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.ln_pre = LayerNorm(d, cfg.eps) if cfg.pre_norm else None
        self.blocks = nn.ModuleList(
            TransformerBlock(
                d, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.act_fn, cfg.eps, cfg.qkv_bias, cfg.layer_scale,
                proj_bias=cfg.proj_bias,
            )
            for _ in range(cfg.n_layers)
        )
        self.ln_final = LayerNorm(d, cfg.eps) if cfg.final_norm else None
        self.attn_pool = (  # pooling="map": attention pooling (SigLIP)
            AttentionPool(d, cfg.n_heads, cfg.d_mlp, cfg.act_fn, cfg.eps) if cfg.pooling == "map" else None
        )
        self.hook_pooled = HookPoint()  # [batch, d_model]
        self.hook_pooled_dist = HookPoint() if cfg.distilled else None  # [batch, d_model]
        self.ln_pooled = LayerNorm(d, cfg.eps) if cfg.pooled_norm else None
        self.head = nn.Linear(d, cfg.n_classes) if cfg.n_classes else None
        self.head_dist = nn.Linear(d, cfg.n_classes) if cfg.n_classes and cfg.distilled else None
        self.hook_logits = HookPoint()  # [batch, n_classes] ([batch, d_model] when headless)
        self.class_names = tuple(class_names) if class_names is not None else None
        if self.class_names is not None and len(self.class_names) != cfg.n_classes:
            raise ValueError(f"{len(self.class_names)} class names for {cfg.n_classes} classes")
        self.grid = grid_of(cfg)
        self._lock = threading.RLock()
        self._base: HookedViT | None = None  # the model this is a view of (`at_size`), or None
        self.eval()
        self.setup()

    # ------------------------------------------------------------------------------ thread safety
    @property
    def lock(self) -> threading.RLock:
        """The model's re-entrant lock: held by every run that registers hooks or swaps weights.

        Hooks are state on the model's hook points, so two threads patching one model at once would
        see each other's hooks. ``forward``, ``hooks()`` (and so ``run_with_hooks`` /
        ``run_with_cache``), `caap` and the sweeps hold this lock for their whole run: concurrent
        calls on one model are serialised, never mixed. Hold it yourself (``with model.lock:``) around
        ``add_hook`` ... ``reset_hooks`` sequences that must not interleave with other threads.
        """
        return self._lock

    # TransformerLens's hook-nesting counter and caching flag: one for a model and all its views at other
    # sizes (`at_size`), since they share hook points; a view keeping its own would reset outer hooks.
    @property
    def context_level(self) -> int:
        return self._shared_state().get("_context_level", 0)

    @context_level.setter
    def context_level(self, value: int) -> None:
        self._shared_state()["_context_level"] = value

    @property
    def is_caching(self) -> bool:
        return self._shared_state().get("_is_caching", False)

    @is_caching.setter
    def is_caching(self, value: bool) -> None:
        self._shared_state()["_is_caching"] = value

    def _shared_state(self) -> dict:
        base = self.__dict__.get("_base")
        return (self if base is None else base).__dict__

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # a copy: the live model keeps its lock
        state.pop("_lock", None)  # locks cannot be pickled or deep-copied; a copy gets its own
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def hooks(self, *args: Any, **kwargs: Any) -> Iterator["HookedViT"]:  # type: ignore[override]
        """TransformerLens's ``hooks()`` context manager, holding the model's `lock` throughout."""
        with self._lock, super().hooks(*args, **kwargs) as hooked:
            yield hooked

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def from_state_dict(
        cls,
        cfg: HookedViTConfig,
        state_dict: Mapping[str, Tensor],
        class_names: Sequence[str] | None = None,
    ) -> "HookedViT":
        """``cls(cfg)`` with ``state_dict`` loaded strictly, on the state dict's device and dtype.

        The tensors are copied, so the model shares no memory with their source. Converters
        (`caap_lens.converters`) return exactly such a ``(cfg, state_dict)`` pair.

        Example:
            >>> cfg = HookedViTConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16, image_size=8,
            ...                       patch_size=4, n_classes=3)
            >>> copy = HookedViT.from_state_dict(cfg, HookedViT(cfg).double().state_dict())
            >>> copy.dtype
            torch.float64
        """
        model = cls(cfg, class_names=class_names)
        like = state_dict.get("embed.proj.weight")  # missing: the strict load below names every missing key
        if like is not None:
            model = model.to(device=like.device, dtype=like.dtype)
        model.load_state_dict(state_dict, strict=True)
        return model

    @classmethod
    def from_timm(
        cls,
        model_or_name: nn.Module | str,
        family: str | None = None,
        class_names: Sequence[str] | None = None,
        **timm_kwargs: Any,
    ) -> "HookedViT":
        """Converts a timm ViT: a module, or a name passed to ``timm.create_model``.

        Supported families: see `caap_lens.converters.families` (an unsupported module fails before
        anything is built, with an `UnsupportedModelError` naming them).

        Args:
            model_or_name: A timm model, or a name for ``timm.create_model``.
            family: Check this family's rules instead of detecting the family.
            class_names: Names of the classifier outputs (ImageNet names are filled in when timm
                recognises an ImageNet head).
            **timm_kwargs: Passed to ``timm.create_model`` when a name is given, e.g.
                ``pretrained=True``, ``num_classes=10``, ``img_size=224``, or
                ``checkpoint_path="my_finetune.safetensors"`` (a local timm checkpoint: the way to load
                your own weights; its head size is used unless ``num_classes`` is given, ``module.`` /
                ``model.`` prefixes and Lightning's ``state_dict`` wrapper are understood, and a
                checkpoint that does not fit raises a one-line `CheckpointMismatchError`).

        Returns:
            The hooked model in eval mode, on the timm model's device and dtype, with weights copied
            (a timm module passed in is put in eval mode, and is otherwise left alone). Its
            ``cfg.weights_kind`` / ``cfg.weights`` say where the weights came from (``"random"``
            unless ``pretrained=True`` or a checkpoint is given; ``"converted"`` for a module), and
            ``cfg.data_config`` holds timm's eval preprocessing, which `preprocess` applies.

        Example:
            >>> model = HookedViT.from_timm("vit_tiny_patch16_224", depth=2)  # random weights
            >>> model.cfg.family, model.cfg.n_layers, model.cfg.weights_kind
            ('vit', 2, 'random')
            >>> model.cfg.data_config["crop_pct"], model.cfg.data_config["interpolation"]
            (0.9, 'bicubic')
        """
        if isinstance(model_or_name, str):
            module, source = converters.create_timm(model_or_name, **timm_kwargs), model_or_name
            kind, weights = converters.timm_origin(module, pretrained=bool(timm_kwargs.get("pretrained", False)),
                                                   checkpoint_path=timm_kwargs.get("checkpoint_path"))
        else:
            if timm_kwargs:
                raise TypeError(
                    f"timm keyword arguments {sorted(timm_kwargs)} only apply when a model name is given"
                )
            module, source = model_or_name, ""
            kind, weights = "converted", ""
        cfg, state_dict = converters.convert_timm(module, family=family, source=source)
        cfg = dataclasses.replace(cfg, weights_kind=kind, weights=weights)
        module.eval()
        if class_names is None:
            class_names = converters.imagenet_class_names(module, cfg.n_classes)
        return cls.from_state_dict(cfg, state_dict, class_names=class_names)

    @classmethod
    def from_hf(cls, model_or_path: Any, class_names: Sequence[str] | None = None,
                image_size: int | tuple[int, int] | None = None, dynamic_img_size: bool = False) -> "HookedViT":
        """Converts a Hugging Face ViT, DeiT, DINOv2, CLIP or SigLIP model: a module, a folder written by
        ``save_pretrained`` (offline; its image processor becomes ``cfg.data_config``), its
        ``model.safetensors``, or a hub name. What each class outputs: `caap_lens.converters.HF_CLASSES`;
        ``image_size`` runs it at another size (position embedding resampled as HF does);
        ``dynamic_img_size=True`` runs it at any size, as HF with ``interpolate_pos_encoding=True``
        (`caap_lens.model.sizing`).

        Example:
            >>> from caap_lens.converters.hf_config import import_transformers
            >>> hf = import_transformers()
            >>> config = hf.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            ...                          image_size=28, patch_size=14)
            >>> HookedViT.from_hf(hf.Dinov2Model(config)).cfg.grid_size
            (2, 2)
        """
        cfg, state_dict, names = converters.read_hf_model(model_or_path, image_size=image_size,
                                                          dynamic_img_size=dynamic_img_size)
        return cls.from_state_dict(cfg, state_dict, class_names=class_names if class_names is not None else names)

    @classmethod
    def from_pretrained(cls, name: str, **kwargs: Any) -> "HookedViT":
        """Loads a model bundled with caap_lens by name, offline (see `caap_lens.converters.bundled`).

        Args:
            name: A bundled model's name, e.g. ``"fashion-scenes-vit"``.
            **kwargs: ``device`` and/or ``dtype`` to move the model to (default: CPU, float32).

        Returns:
            The hooked model in eval mode, with ``class_names`` set and the training input mean/std as
            ``cfg.image_mean``/``cfg.image_std`` (used by ``model.preprocess``).

        Raises:
            ValueError: ``name`` is not bundled; for a timm name (``"vit_small_patch16_224"``) the
                message points to `HookedViT.from_timm`.

        Example:
            >>> HookedViT.from_pretrained("fashion-scenes-vit").cfg.grid_size
            (8, 8)
        """
        from caap_lens.converters.bundled import BUNDLED, convert_bundled, not_bundled_message

        if name not in BUNDLED:  # a timm name or a checkpoint file: the message says to use from_timm
            raise ValueError(not_bundled_message(name))
        unknown = set(kwargs) - {"device", "dtype"}
        if unknown:
            raise TypeError(
                f"from_pretrained got unexpected keyword arguments {sorted(unknown)}; it accepts device, dtype"
            )

        cfg, state_dict, class_names = convert_bundled(name)
        model = cls.from_state_dict(cfg, state_dict, class_names=class_names)
        if kwargs:
            model = model.to(device=kwargs.get("device"), dtype=kwargs.get("dtype"))
        return model

    # ------------------------------------------------------------------------------------- input
    @property
    def device(self) -> torch.device:
        return self.embed.proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.proj.weight.dtype

    def preprocess(self, images: Any, resize: bool = True) -> Float[Tensor, "batch channel height width"]:
        """Turns PIL images, arrays or 0..1/uint8 tensors into normalised input on the model's device.

        A model converted from timm applies timm's own eval transform (``cfg.data_config``: e.g. a
        bicubic resize to 248 and a 224 centre crop); a model without one (built from a config, bundled)
        resizes to ``cfg.image_size``. See `caap_lens.preprocessing`.

        Example:
            >>> model.preprocess(image).shape  # one uint8 HWC scene (PIL images and arrays work alike)
            torch.Size([1, 3, 64, 64])
        """
        cfg = self.cfg
        x = preprocess(images, cfg.image_size, cfg.image_mean, cfg.image_std, resize,  # type: ignore[arg-type]
                       data_config=getattr(cfg, "data_config", None))
        return x.to(device=self.device, dtype=self.dtype)

    @property
    def any_size(self) -> bool:
        """Whether this model takes images of any whole number of patches (a dynamic-size model, not a
        view of one `at_size`)."""
        return bool(self.cfg.dynamic_img_size) and self._base is None

    def at_size(self, image_size: int | tuple[int, int]) -> "HookedViT":
        """This dynamic-size model at ``image_size``: same weights, hooks and lock; that size's grid.

        The view's ``cfg.image_size``, ``grid`` and ``cfg.n_tokens`` are those of ``image_size`` images
        and it takes only those; a hook added to it is a hook on the model (they share hook points).
        caap_lens's functions call this for you (`caap_lens.model.sizing`). The model's own size gives the
        model itself.

        Raises:
            ValueError: The model is not dynamic-size (the message says how to get one), or the size is
                not a whole number of patches.

        Example:
            >>> cfg = HookedViTConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16, image_size=16,
            ...                       patch_size=8, n_classes=2, dynamic_img_size=True)
            >>> big = HookedViT(cfg).at_size((24, 32))
            >>> big.grid.grid_size, big.cfg.n_tokens, big.cfg.pos_embed_grid
            ((3, 4), 13, (2, 2))
        """
        base = self if self._base is None else self._base
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
        if size == tuple(base.cfg.image_size):
            return base
        if size == tuple(self.cfg.image_size):
            return self
        if not base.cfg.dynamic_img_size:
            raise ValueError(
                f"this model runs at {tuple(base.cfg.image_size)} only, not {size}: convert it with timm's "
                f"dynamic_img_size=True (HookedViT.from_timm(name, dynamic_img_size=True)) to run it at other "
                f"sizes, or resize the images (model.preprocess)"
            )
        view = object.__new__(type(self))
        view.__dict__.update(base.__dict__)  # the same modules, parameters, hook points and lock
        cfg = base.cfg.at_size(size)
        view.__dict__.update(cfg=cfg, grid=grid_of(cfg), _base=base)
        return view

    def check_images(self, images: Any) -> Tensor:
        """Raises a clear error unless ``images`` is a normalised ``[batch, C, H, W]`` input batch.

        ``H, W`` must be ``cfg.image_size``, or any whole number of patches for a dynamic-size model.
        """
        cfg = self.cfg
        any_size = self.any_size
        if any_size:
            expected = (f"[batch, {cfg.n_channels}, H, W] with H, W multiples of the patch size "
                        f"{cfg.patch_size}")
        else:
            expected = f"[batch, {cfg.n_channels}, {cfg.image_size[0]}, {cfg.image_size[1]}]"  # type: ignore[index]
        if not isinstance(images, Tensor):
            raise TypeError(
                f"expected a float tensor {expected}, got {type(images).__name__}; "
                "use model.preprocess(...) for PIL images and arrays"
            )
        if not images.is_floating_point():
            raise TypeError(
                f"expected normalised float images {expected}, got dtype {images.dtype}; "
                "use model.preprocess(images) to scale and normalise them"
            )
        if images.ndim == 3:
            raise ValueError(
                f"expected a batch {expected}, got one unbatched image {tuple(images.shape)}; "
                "add a batch axis with images.unsqueeze(0)"
            )
        if images.ndim != 4 or images.shape[1] != cfg.n_channels or (
                not any_size and tuple(images.shape[2:]) != cfg.image_size):
            hint = "use model.preprocess(images) to resize"
            if images.ndim == 4 and images.shape[1] == cfg.n_channels:
                hint += (", or pass them to the dynamic-size model itself (this is its view at one size)"
                         if cfg.dynamic_img_size else
                         ", or convert the model with timm's dynamic_img_size=True to run it at other sizes")
            raise ValueError(f"expected images {expected}, got {tuple(images.shape)}; {hint}")
        if any_size:
            cfg.check_image_size(tuple(images.shape[2:]))
        if images.dtype != self.dtype:
            raise TypeError(
                f"images are {images.dtype} but the model is {self.dtype}: convert with images.to({self.dtype})"
            )
        return images.to(self.device)

    def _check_resid(self, resid: Any, layer: int) -> Tensor:
        expected = (self.cfg.n_tokens, self.cfg.d_model)
        fits = isinstance(resid, Tensor) and resid.ndim == 3 and (
            tuple(resid.shape[1:]) == expected
            or (self.any_size and resid.shape[2] == expected[1] and resid.shape[1] > self.cfg.n_prefix_tokens))
        if not fits:
            shape = tuple(resid.shape) if isinstance(resid, Tensor) else type(resid).__name__
            raise ValueError(
                f"start_at_layer={layer} expects the residual stream [batch, {expected[0]}, "
                f"{expected[1]}] before block {layer}, got {shape}"
            )
        return resid

    def _layer_index(self, layer: int | None, name: str, default: int) -> int:
        if layer is None:
            return default
        n = self.cfg.n_layers
        if isinstance(layer, bool) or not isinstance(layer, int):
            try:
                layer = operator.index(layer)  # numpy ints; 2.5 or True is not a layer
            except TypeError:
                raise ValueError(f"{name} must be an int layer index, got {layer!r}") from None
            if isinstance(layer, bool):
                raise ValueError(f"{name} must be an int layer index, got {layer!r}")
        index = layer + n if layer < 0 else layer
        if not 0 <= index <= n:
            raise ValueError(f"{name}={layer} is outside [-{n}, {n}] for a {n}-layer model")
        return index

    # ----------------------------------------------------------------------------------- forward
    def embed_images(self, images: Float[Tensor, "batch channel height width"]) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream before block 0."""
        tokens = self.hook_embed(self.embed(images))
        ph, pw = self.cfg.patch_size  # type: ignore[misc]
        grid = (images.shape[2] // ph, images.shape[3] // pw)
        resid = tokens + self.hook_pos_embed(self.pos_embed(images.shape[0], grid))
        return resid if self.ln_pre is None else self.ln_pre(resid)

    def pool(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_model"]:
        """Final norm, then pooling (CLS token or mean of patch tokens), with the pooled hooks.

        A distilled model's pooled feature is the mean of its CLS and distillation tokens, as timm's
        ``forward_head(pre_logits=True)``.
        """
        normed = self._final_norm(resid)
        pooled = self._pool(normed)
        if self.cfg.pooling == "token_dist":
            pooled = (pooled + self.hook_pooled_dist(normed[:, 1])) / 2
        return pooled

    def _final_norm(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        return resid if self.ln_final is None else self.ln_final(resid)

    def _pool(self, normed: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_model"]:
        kind = self.cfg.pooling
        if kind in ("token", "token_dist"):
            pooled = normed[:, 0]
        elif kind == "map":  # a learned query attends over the patch tokens (`caap_lens.model.attention_pool`)
            pooled = self.attn_pool(normed if self.cfg.pool_include_prefix else normed[:, self.cfg.n_prefix_tokens :])
        else:  # reduce over the patch tokens (and the prefix tokens with pool_include_prefix), as timm
            tokens = normed if self.cfg.pool_include_prefix else normed[:, self.cfg.n_prefix_tokens :]
            if kind == "avg":
                pooled = tokens.mean(dim=1)
            elif kind == "max":
                pooled = tokens.amax(dim=1)
            else:  # "avgmax"
                pooled = 0.5 * (tokens.amax(dim=1) + tokens.mean(dim=1))
        pooled = self.hook_pooled(pooled)
        return pooled if self.ln_pooled is None else self.ln_pooled(pooled)

    def readout_tokens(self) -> int | None:
        """How many leading tokens the output reads from the last block (None: all of them)."""
        if self.cfg.pooling not in ("token", "token_dist"):
            return None
        return 2 if self.cfg.pooling == "token_dist" else 1

    def output_from(self, resid: Float[Tensor, "batch pos d_model"], start: int) -> Tensor:
        """The output of an unhooked run from block ``start``; equal to ``forward(resid, start_at_layer=start)``.

        When nothing is hooked in the last block or the final norm, and the output reads only the
        CLS (and distillation) token, the last block is evaluated for those rows alone
        (`TransformerBlock.forward_queries`): fewer FLOPs, same values up to float rounding.
        """
        n = self.cfg.n_layers
        n_query = self.readout_tokens()
        tail_hooked = start >= n or any(has_hooks(h) for h in self.blocks[n - 1].hook_points())
        if self.ln_final is not None:
            tail_hooked = tail_hooked or has_hooks(self.ln_final.hook_scale) or has_hooks(self.ln_final.hook_normalized)
        if n_query is None or tail_hooked:
            for block in self.blocks[start:]:
                resid = block(resid)
            return self.unembed(resid)
        for block in self.blocks[start : n - 1]:
            resid = block(resid)
        return self.unembed(self.blocks[n - 1].forward_queries(resid, n_query))

    def unembed(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch n_classes"]:
        """From the final residual stream to the output (logits, or the pooled feature if headless)."""
        normed = self._final_norm(resid)
        pooled = self._pool(normed)
        if self.head is None:
            if self.head_dist is None and self.cfg.pooling == "token_dist":  # headless distilled: as timm,
                pooled = (pooled + self.hook_pooled_dist(normed[:, 1])) / 2  # the mean of both tokens
            return self.hook_logits(pooled)
        logits = self.head(pooled)
        if self.head_dist is not None:
            dist = self.hook_pooled_dist(normed[:, 1])
            logits = (logits + self.head_dist(dist)) / 2
        return self.hook_logits(logits)

    def forward(
        self,
        images: Tensor,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        return_type: ReturnType = "logits",
    ) -> Tensor:
        """Runs the model, or the part of it between two layers.

        Args:
            images: Normalised images ``[batch, C, H, W]``; or, with ``start_at_layer``, the residual
                stream ``[batch, pos, d_model]`` before that block.
            start_at_layer: Start at this block, from a residual stream.
            stop_at_layer: Stop before this block and return the residual stream there.
            return_type: ``"logits"`` (the output), ``"pooled"`` (the pooled feature before the head)
                or None (run for the hooks only, return None).

        Returns:
            ``[batch, n_classes]`` logits, ``[batch, d_model]`` pooled features, or
            ``[batch, pos, d_model]`` when ``stop_at_layer`` is given.
        """
        with self._lock:  # another thread's hooks or bf16 weights must never be seen mid-run
            return self._forward(images, start_at_layer, stop_at_layer, return_type)

    def _forward(
        self, images: Tensor, start_at_layer: int | None, stop_at_layer: int | None, return_type: ReturnType
    ) -> Tensor:
        start = self._layer_index(start_at_layer, "start_at_layer", 0)
        stop = self._layer_index(stop_at_layer, "stop_at_layer", self.cfg.n_layers)
        if start > stop:
            raise ValueError(f"start_at_layer ({start}) is after stop_at_layer ({stop})")
        if start_at_layer is None:
            resid = self.embed_images(self.check_images(images))
        else:
            resid = self._check_resid(images, start)
        for block in self.blocks[start:stop]:
            resid = block(resid)
        if stop_at_layer is not None:
            return resid
        if return_type == "pooled":
            return self.pool(resid)
        out = self.unembed(resid)
        return out if return_type == "logits" else None

    # ------------------------------------------------------------------------------------- cache
    def run_with_cache(self, *model_args: Any, **kwargs: Any) -> tuple[Any, ActivationCache]:  # type: ignore[override]
        """Runs the model and returns ``(output, ActivationCache)``; arguments as in TransformerLens.

        The cache is a `ViTActivationCache` (`caap_lens.model.tl_surface`): TransformerLens's, with
        ``apply_ln_to_stack`` aware of norms applied after pooling.

        Example:
            >>> logits, cache = model.run_with_cache(images, names_filter=lambda n: "resid" in n)
            >>> cache["resid_pre", 1].shape, len(cache)  # [batch, 1 + 64 patches, d_model]; 3 per block
            (torch.Size([2, 65, 64]), 12)
        """
        remove_batch_dim = kwargs.get("remove_batch_dim", False)
        out, cache_dict = super().run_with_cache(*model_args, **kwargs)
        return out, ViTActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Compute per-head outputs ``attn.hook_result`` [batch, pos, head, d_model] (slower, as in TL)."""
        for block in self.blocks:
            block.attn.use_attn_result = use_attn_result

    # ----------------------------------------------------------------------- TL-style weight views
    @property
    def W_U(self) -> Float[Tensor, "d_model n_classes"]:
        if self.head is None:
            raise AttributeError("headless model: no W_U")
        return self.head.weight.T

    @property
    def b_U(self) -> Float[Tensor, "n_classes"]:
        if self.head is None:
            raise AttributeError("headless model: no b_U")
        return self.head.bias

    @property
    def W_E(self) -> Float[Tensor, "d_patch d_model"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[Tensor, "n_pos d_model"]:
        return self.pos_embed.W_pos

    def _size_note(self) -> str:
        if not self.cfg.dynamic_img_size:
            return ""
        if self._base is None:
            return ", any image size (dynamic)"
        return f", a view at this size of the dynamic-size model built for {self._base.cfg.image_size}"

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"HookedViT({c.family}: {c.n_layers} layers, d_model={c.d_model}, {c.n_heads} heads, "
            f"image {c.image_size}, patch {c.patch_size}, grid {c.grid_size}, "
            f"{c.n_prefix_tokens} prefix tokens, {c.n_classes} classes{self._size_note()}; weights: {c.weights})"
        )

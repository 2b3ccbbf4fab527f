"""What TransformerLens's own analysis tools need from `HookedViT`.

TransformerLens's patching helpers (``transformer_lens.patching.get_act_patch_*``) and the analysis
methods of its `ActivationCache` (``decompose_resid``, ``get_full_resid_decomposition``,
``stack_head_results``, ``accumulated_resid``, ``apply_ln_to_stack``, ``logit_attrs``) read a handful of
members from the model. `TransformerLensSurface` supplies them to `HookedViT`:

* ``cfg.device`` (kept in step with the model's device) and ``cfg.n_key_value_heads``;
* stacked weights in TransformerLens's shapes: ``W_Q``/``W_K``/``W_V`` ``[n_layers, n_heads, d_model,
  d_head]``, ``W_O`` ``[n_layers, n_heads, d_head, d_model]``, ``W_in`` ``[n_layers, d_model, d_mlp]``,
  ``W_out`` ``[n_layers, d_mlp, d_model]`` and their biases (layer scale folded into ``W_O``/``W_out``
  and ``b_O``/``b_out``, as in the per-block views);
* `accumulated_bias`, the output biases a residual stream holds at the input of a layer;
* `tokens_to_residual_directions` and `to_single_token`: in a ViT a "token" of the unembedding is a
  **class**, so these map class indices or names to residual-stream directions.

Images, not tokens. The patching helpers call ``model(corrupted_tokens)``, which here is a batch of
*images* (the corrupted run is a context image, the clean cache a source image's). They size their
``pos`` axis by ``corrupted_tokens.shape[-1]``, which for images is the **image width**, not the
number of tokens: pass ``index_df=model.patching_index("layer", "pos")`` (positions are token indices:
prefix tokens, then the patches row by row, as in ``model.grid``) and reshape the flat result.

The final norm. TransformerLens's ``apply_ln_to_stack`` divides by the cached LayerNorm scale and
centres, but leaves out the norm's weight and bias (it expects them folded into the unembedding), so
`tokens_to_residual_directions` folds the final norm's weight into the head's row: then, for a
CLS-pooled model, the ``logit_attrs`` of a full decomposition sum to the logit minus the constant
``norm.b @ W_U[:, c] + b_U[c]``. A model that normalises *after* pooling (timm's ``fc_norm``, the default
of mean-pooled timm ViTs) has no per-token final scale; its cache (`ViTActivationCache`) applies the
pooled norm's cached scale to *pooled* stacks ``[components, batch, d_model]`` and refuses per-token
ones with an error saying what to pass.

Example:
    >>> from caap_lens.config import HookedViTConfig
    >>> from caap_lens.model.hooked_vit import HookedViT
    >>> model = HookedViT(HookedViTConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, image_size=16,
    ...                                   patch_size=8, n_classes=3))
    >>> model.cfg.device, tuple(model.W_Q.shape), tuple(model.accumulated_bias(2).shape)
    ('cpu', (2, 2, 16, 8), (16,))
    >>> model.tokens_to_residual_directions(torch.tensor([0, 2])).shape
    torch.Size([2, 16])
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.utilities import Slice

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TransformerLensSurface", "ViTActivationCache"]

_AXIS_SIZES = {"layer": "n_layers", "pos": "n_tokens", "src_pos": "n_tokens", "dest_pos": "n_tokens",
               "head": "n_heads", "head_index": "n_heads"}


class TransformerLensSurface:
    """Mixin for `HookedViT`: the members TransformerLens's patching helpers and cache methods read.

    It expects ``cfg``, ``blocks``, ``head``/``head_dist``, ``ln_final``/``ln_pooled``, ``class_names``
    and ``device`` from the class it is mixed into.
    """

    cfg: Any
    blocks: Any

    # ------------------------------------------------------------------------------- cfg.device
    def setup(self) -> None:
        """TransformerLens's hook set-up, then ``cfg.device`` set to the model's device."""
        super().setup()  # type: ignore[misc]
        self._sync_cfg_device()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # ``.to()``, ``.cuda()``, ``.double()`` ... all end here: keep ``cfg.device`` truthful.
        out = super()._apply(fn, *args, **kwargs)  # type: ignore[misc]
        self._sync_cfg_device()
        return out

    def _sync_cfg_device(self) -> None:
        cfg = getattr(self, "cfg", None)
        if cfg is not None and hasattr(self, "embed"):
            cfg.device = str(self.device)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------------ stacked weights
    def _stack(self, part: str, name: str) -> Tensor:
        return torch.stack([getattr(getattr(block, part), name) for block in self.blocks])

    @property
    def W_Q(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        """Query weights of every layer."""
        return self._stack("attn", "W_Q")

    @property
    def W_K(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        """Key weights of every layer."""
        return self._stack("attn", "W_K")

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        """Value weights of every layer."""
        return self._stack("attn", "W_V")

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]:
        """Output weights of every head, layer scale included."""
        return self._stack("attn", "W_O")

    @property
    def b_Q(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        """Query biases (zeros without ``qkv_bias``)."""
        return self._stack("attn", "b_Q")

    @property
    def b_K(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        """Key biases (zeros without ``qkv_bias``)."""
        return self._stack("attn", "b_K")

    @property
    def b_V(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        """Value biases (zeros without ``qkv_bias``)."""
        return self._stack("attn", "b_V")

    @property
    def b_O(self) -> Float[Tensor, "n_layers d_model"]:
        """Attention output biases, layer scale included."""
        return self._stack("attn", "b_O")

    @property
    def W_in(self) -> Float[Tensor, "n_layers d_model d_mlp"]:
        """MLP input weights of every layer."""
        return self._stack("mlp", "W_in")

    @property
    def b_in(self) -> Float[Tensor, "n_layers d_mlp"]:
        """MLP input biases."""
        return self._stack("mlp", "b_in")

    @property
    def W_out(self) -> Float[Tensor, "n_layers d_mlp d_model"]:
        """MLP output weights, layer scale included."""
        return self._stack("mlp", "W_out")

    @property
    def b_out(self) -> Float[Tensor, "n_layers d_model"]:
        """MLP output biases, layer scale included."""
        return self._stack("mlp", "b_out")

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, "d_model"]:
        """The sum of the output biases written into the residual stream before ``layer``.

        That is every ``b_O`` (and, with ``include_mlp_biases``, every ``b_out``) of the blocks before
        ``layer``, plus ``layer``'s own ``b_O`` with ``mlp_input`` (the stream entering its MLP). Head
        results and neuron results leave these biases out, so
        ``cache.get_full_resid_decomposition`` adds them as its ``"bias"`` row.

        Args:
            layer: In ``[0, n_layers]``; ``n_layers`` is the stream after the last block.
            mlp_input: The stream entering ``layer``'s MLP rather than its attention.
            include_mlp_biases: Include the MLP output biases.

        Example:
            >>> from caap_lens import HookedViT, HookedViTConfig
            >>> model = HookedViT(HookedViTConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, image_size=16,
            ...                                   patch_size=8, n_classes=3))
            >>> b = model.accumulated_bias(1, mlp_input=True)  # b_O of blocks 0 and 1, b_out of block 0
            >>> torch.allclose(b, model.b_O.sum(0) + model.b_out[0])
            True
        """
        n = self.cfg.n_layers
        layer = operator.index(layer)
        if not 0 <= layer <= n or (mlp_input and layer == n):
            raise ValueError(f"layer={layer} with mlp_input={mlp_input} is outside a {n}-layer model")
        total = self.blocks[0].attn.b_O.new_zeros(self.cfg.d_model)
        for block in self.blocks[:layer]:
            total = total + block.attn.b_O
            if include_mlp_biases:
                total = total + block.mlp.b_out
        if mlp_input:
            total = total + self.blocks[layer].attn.b_O
        return total

    # -------------------------------------------------------------------- classes as "tokens"
    def to_single_token(self, name: str | int) -> int:
        """The class index of a class name (an index is checked and returned).

        Example:
            >>> from caap_lens import HookedViT, HookedViTConfig
            >>> cfg = HookedViTConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, image_size=16, patch_size=8,
            ...                       n_classes=3)
            >>> HookedViT(cfg, class_names=["cat", "dog", "fox"]).to_single_token("fox")
            2
        """
        n = self.cfg.n_classes
        if isinstance(name, str):
            names = getattr(self, "class_names", None)
            if names is None or name not in names:
                known = "the model has no class names" if names is None else f"known: {', '.join(names[:10])}"
                raise ValueError(f"unknown class {name!r} ({known}); pass a class index instead")
            return list(names).index(name)
        index = operator.index(name)
        if not 0 <= index < n:
            raise ValueError(f"class index {index} is outside [0, {n})")
        return index

    def to_tokens(self, images: Any) -> Float[Tensor, "batch channel height width"]:
        """The model's input for ``images``: `preprocess` (TransformerLens's name for the same step)."""
        return self.preprocess(images)  # type: ignore[attr-defined]

    def _final_norm_for_readout(self) -> Any:
        final, pooled = getattr(self, "ln_final", None), getattr(self, "ln_pooled", None)
        if final is not None and pooled is not None:
            raise ValueError(
                "this model normalises every token (final_norm) and again after pooling (pooled_norm): "
                "two LayerNorms in a row do not fold into one residual direction"
            )
        return final if final is not None else pooled

    def tokens_to_residual_directions(
        self, tokens: int | str | Tensor | Sequence[int], fold_norm: bool = True
    ) -> Float[Tensor, "*tokens d_model"]:
        """The residual-stream direction of each class: the head's weight row for it.

        With ``fold_norm`` (the default) the final norm's weight is folded in (``w * W_U[:, c]``, what
        TransformerLens's ``fold_ln`` does to its ``W_U``), so that ``cache.logit_attrs`` of a residual
        decomposition sums to the logit minus ``norm.b @ W_U[:, c] + b_U[c]``.

        Args:
            tokens: A class index, a class name, or a tensor (or list) of class indices of any shape.
            fold_norm: Fold the final (or pooled) LayerNorm's weight into the direction.

        Returns:
            ``[*tokens.shape, d_model]`` (``[d_model]`` for one class).

        Raises:
            ValueError: on a headless model (no classes: project onto your own direction instead),
                on a distilled model with two heads (each reads a different token), on an
                attention-pooled model (``pooling="map"``), or on a class outside the head.

        Example:
            >>> from caap_lens import HookedViT, HookedViTConfig
            >>> model = HookedViT(HookedViTConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, image_size=16,
            ...                                   patch_size=8, n_classes=3))
            >>> model.tokens_to_residual_directions(2).shape, model.tokens_to_residual_directions([[0, 1]]).shape
            (torch.Size([16]), torch.Size([1, 2, 16]))
        """
        head = getattr(self, "head", None)
        if head is None:
            raise ValueError(
                "headless model (n_classes=0): there is no unembedding, so no class direction; "
                "project the stack onto a direction of your own, e.g. cache.apply_ln_to_stack(stack) @ direction"
            )
        if getattr(self, "head_dist", None) is not None:
            raise ValueError(
                "distilled model: its output averages two heads that read two tokens (CLS and distillation), "
                "so a class has no single residual direction; use model.head.weight[c] at token 0 and "
                "model.head_dist.weight[c] at token 1"
            )
        if getattr(self, "attn_pool", None) is not None:
            raise ValueError(
                "attention-pooled model (pooling='map'): the head reads the pool's output, a non-linear function "
                "(attention, then an MLP) of the tokens, so a class has no residual-stream direction; "
                "model.head.weight[c] is its direction in the pooled feature (hook_pooled)"
            )
        directions = head.weight  # [n_classes, d_model]
        norm = self._final_norm_for_readout() if fold_norm else None
        if norm is not None:
            directions = directions * norm.w
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        index = torch.as_tensor(tokens, device=directions.device)
        if index.is_floating_point() or index.dtype == torch.bool:
            raise TypeError(f"class indices must be integers, got dtype {index.dtype}")
        n = self.cfg.n_classes
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise ValueError(f"class indices must lie in [0, {n}), got {index.min().item()}..{index.max().item()}")
        return directions[index.long()]

    # ---------------------------------------------------------------------------- patching axes
    def patching_index(self, *axis_names: str) -> "pd.DataFrame":
        """Every combination of ``axis_names`` as an ``index_df`` for ``transformer_lens.patching``.

        TransformerLens sizes ``pos`` by the input's last axis, the image width here; this sizes it by
        ``cfg.n_tokens`` (``layer`` by ``n_layers``, ``head`` by ``n_heads``). The helpers then return a
        flat result: ``.reshape(n_layers, n_tokens)`` for ``("layer", "pos")``.

        Example:
            >>> from caap_lens import HookedViT, HookedViTConfig
            >>> model = HookedViT(HookedViTConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, image_size=16,
            ...                                   patch_size=8, n_classes=3))
            >>> model.patching_index("layer", "pos").shape  # 2 layers x (CLS + 4 patches)
            (10, 2)
        """
        from transformer_lens.patching import make_df_from_ranges

        unknown = [a for a in axis_names if a not in _AXIS_SIZES]
        if unknown or not axis_names:
            raise ValueError(f"axis names must be among {', '.join(_AXIS_SIZES)}; got {axis_names!r}")
        sizes = [getattr(self.cfg, _AXIS_SIZES[a]) for a in axis_names]
        return make_df_from_ranges(sizes, list(axis_names))


class ViTActivationCache(ActivationCache):
    """TransformerLens's `ActivationCache`, with the final norm of a ViT's readout understood.

    Only ``apply_ln_to_stack`` at the final layer differs (and so ``logit_attrs``,
    ``accumulated_resid(apply_ln=True)`` and every ``apply_ln=True`` that reaches the final layer):

    * per-token final norm (``final_norm``, CLS- or mean-pooled): TransformerLens's own behaviour;
    * norm after pooling (``pooled_norm``, timm's ``fc_norm``): a *pooled* stack
      ``[components, batch, d_model]`` is centred and divided by ``ln_pooled.hook_scale``; a
      per-token stack raises an error, as no per-token scale exists;
    * no final norm at all: the stack is returned unchanged.
    """

    def apply_ln_to_stack(  # type: ignore[override]
        self,
        residual_stack: Tensor,
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Tensor:
        """TransformerLens's ``apply_ln_to_stack``; at the final layer, the ViT's own final norm (see the class)."""
        model = self.model
        final = layer is None or layer in (-1, model.cfg.n_layers)
        ln_final, ln_pooled = getattr(model, "ln_final", None), getattr(model, "ln_pooled", None)
        if not final or (ln_final is not None and ln_pooled is None):
            return super().apply_ln_to_stack(residual_stack, layer, mlp_input, pos_slice, batch_slice,
                                             has_batch_dim, recompute_ln)
        if ln_final is not None:
            model._final_norm_for_readout()  # raises: two norms in a row
        batch_slice = batch_slice if isinstance(batch_slice, Slice) else Slice(batch_slice)
        if has_batch_dim:
            residual_stack = batch_slice.apply(residual_stack, dim=1)
        if ln_pooled is None:  # no final norm: nothing to apply
            return residual_stack
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        pooled_ndim = 3 if has_batch_dim else 2
        if residual_stack.ndim != pooled_ndim or pos_slice.mode != "identity":
            raise ValueError(
                "this model normalises after pooling (pooled_norm, timm's fc_norm), so its final norm has "
                "one scale per image, not per token: pool the stack over the tokens first, e.g. "
                f"stack[..., {model.cfg.n_prefix_tokens}:, :].mean(-2) for a mean-pooled model, and pass "
                "that [components, batch, d_model] stack without pos_slice"
            )
        if recompute_ln:
            return torch.stack([ln_pooled(part) for part in residual_stack])
        scale = self["ln_pooled.hook_scale"]  # [batch, 1]
        if has_batch_dim:
            scale = batch_slice.apply(scale)
        centred = residual_stack - residual_stack.mean(dim=-1, keepdim=True)
        return centred / scale

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> "ViTActivationCache":
        """TransformerLens's method, returning a `ViTActivationCache`."""
        sliced = super().apply_slice_to_batch_dim(batch_slice)
        return ViTActivationCache(sliced.cache_dict, self.model, has_batch_dim=sliced.has_batch_dim)

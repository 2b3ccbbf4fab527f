"""AttnLRP: layer-wise relevance propagation for transformers in one backward pass.

Achtibat et al. (2024), "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers" (ICML). LRP redistributes the target's score backwards, layer by layer, so that each
layer's input relevances add up to its output relevance (*conservation*). AttnLRP shows that for a
transformer the rules can be written as modified gradients, so that relevance is
``input × modified gradient`` and one backward pass computes it ("Gradient × Input" form). The rules:

* **identity rule** on element-wise non-linearities (the MLP's GELU): the relevance of each
  pre-activation equals that of its activation, i.e. the gradient through ``y = f(x)`` is replaced
  by ``y / x`` (``blocks.{l}.mlp.hook_pre`` → ``hook_post``);
* **LayerNorm as a linear map**: the gradient through the normaliser ``sqrt(var + eps)`` is stopped
  (every LayerNorm's ``hook_scale`` is detached), so ``(x - mean(x)) / scale`` is linear in ``x``;
* **uniform rule** on the two attention matmuls (``q kᵀ`` and ``A v``, each bilinear): each factor
  gets half the relevance, i.e. the gradients to ``q`` and ``k`` are divided by 4 (two matmuls deep)
  and to ``v`` by 2 (``blocks.{l}.attn.hook_q/k/v``); the softmax keeps its plain gradient (AttnLRP's
  softmax rule in Gradient × Input form).

``softmax="cp"`` gives instead CP-LRP's attention rule (Ali et al., ICML 2022, "XAI for
Transformers: Better Explanations through Conservative Propagation"): no relevance through the
attention weights at all (``q`` and ``k`` detached), ``v`` with its plain gradient; lxt pairs it with
AttnLRP's rules elsewhere for ViTs.

Everything is done with forward hooks on `HookedViT`'s own hook points — no module is replaced or
monkey-patched, and the forward values are unchanged (the hooks only change what the backward pass
sees). The relevance of the input is ``x · ∂̃score/∂x`` on the normalised image; the pixel map sums
it over colour channels and the patch map over each patch.

**Conservation.** Every rule above conserves relevance exactly except the softmax rule and the
biases (linear layers' and LayerNorms' biases, the position embedding and the prefix tokens absorb
relevance, as in any LRP). So on a model whose biases, position embedding and prefix tokens are zero,
the input relevance sums to the target logit exactly with ``softmax="cp"``; with AttnLRP it sums to
the logit minus what the softmax rule leaves unassigned, half of ``Σ A·∂A - Σ scores·∂scores`` per
layer (both tested exactly). ``Attribution.info`` reports per image the total input relevance and the
score it started from.

Differs from the reference implementation (lxt 2.1, ``lxt.efficient``) in how the rules are wired
(hooks instead of patched module classes) and in nothing else: the same three rules, checked against
``lxt.efficient.rules`` in the tests. No epsilon stabiliser on linear layers (lxt's efficient mode
uses plain gradients there too) and no gamma rule.

Example:
    >>> patch_map, pixels, info = attnlrp(model, images, targets)
    >>> info["relevance_sum"].shape, info["score"].shape  # ≈ equal, up to biases and the softmax rule
    (torch.Size([2]), torch.Size([2]))
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
from torch import Tensor

from caap_lens.attribution.scores import ScoreLike
from caap_lens.baselines.base import Images, Targets, check_inputs, gradients_enabled, grads_of, target_scores
from caap_lens.model.protocol import HookedViTLike
from caap_lens.model.sizing import at_image_size

Hook = Callable[..., Tensor]


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """``x`` in the forward pass; its gradient multiplied by ``factor`` in the backward pass.

    Example:
        >>> x = torch.tensor([2.0], requires_grad=True)
        >>> (scale_gradient(x, 0.25) * 3).sum().backward(); x.grad
        tensor([0.7500])
    """
    return x.detach() + (x - x.detach()) * factor


def identity_rule(pre: Tensor, post: Tensor, eps: float = 1e-12) -> Tensor:
    """``post`` in the forward pass; gradient to ``pre`` is ``post / pre`` times the incoming one.

    So ``pre · grad_pre = post · grad_post`` element by element: relevance passes the
    non-linearity unchanged (AttnLRP's identity rule). Where ``|pre| < eps`` the ratio uses ``±eps``.

    Example:
        >>> pre = torch.tensor([1.0, -2.0], requires_grad=True)
        >>> post = torch.nn.functional.gelu(pre)
        >>> y = identity_rule(pre, post); y.sum().backward()
        >>> torch.allclose(pre.detach() * pre.grad, post.detach())
        True
    """
    safe = torch.where(pre.abs() < eps, torch.full_like(pre, eps).copysign(pre), pre)
    ratio = (post / safe).detach()
    return post.detach() + (pre - pre.detach()) * ratio


def _norm_names(model: HookedViTLike) -> list[str]:
    names = []
    for name, module in model.named_modules():
        if hasattr(module, "hook_scale") and hasattr(module, "hook_normalized"):
            names.append(f"{name}.hook_scale")
    return names


def lrp_hooks(model: HookedViTLike, softmax: Literal["attnlrp", "cp"] = "attnlrp") -> list[tuple[str, Hook]]:
    """The forward hooks that turn ``x · gradient`` into AttnLRP relevance on ``model``.

    Args:
        model: A `HookedViT`.
        softmax: ``"attnlrp"`` (uniform rule on both attention matmuls, softmax gradient kept) or
            ``"cp"`` (CP-LRP: no relevance through the attention weights).

    Returns:
        ``[(hook_name, fn), ...]`` for ``model.hooks(fwd_hooks=...)``.
    """
    if softmax not in ("attnlrp", "cp"):
        raise ValueError(f"softmax must be 'attnlrp' or 'cp', got {softmax!r}")
    if model.cfg.pooling == "map":
        raise ValueError(
            "AttnLRP has no rule here for the attention-pool readout (pooling='map', SigLIP): its query "
            "attends over the tokens as a softmax the block rules do not cover, so the relevance would not "
            "be AttnLRP's; use another method for this model"
        )
    hooks: list[tuple[str, Hook]] = [(name, lambda act, *, hook: act.detach()) for name in _norm_names(model)]
    for layer in range(model.cfg.n_layers):
        pre_store: dict[str, Tensor] = {}

        def keep_pre(act: Tensor, *, hook: Any, store: dict = pre_store) -> Tensor:
            store["pre"] = act
            return act

        def rule_post(act: Tensor, *, hook: Any, store: dict = pre_store) -> Tensor:
            return identity_rule(store.pop("pre"), act)

        prefix = f"blocks.{layer}"
        hooks += [(f"{prefix}.mlp.hook_pre", keep_pre), (f"{prefix}.mlp.hook_post", rule_post)]
        if softmax == "attnlrp":
            qk = lambda act, *, hook: scale_gradient(act, 0.25)  # noqa: E731
            hooks += [(f"{prefix}.attn.hook_q", qk), (f"{prefix}.attn.hook_k", qk),
                      (f"{prefix}.attn.hook_v", lambda act, *, hook: scale_gradient(act, 0.5))]
        else:
            hooks += [(f"{prefix}.attn.hook_q", lambda act, *, hook: act.detach()),
                      (f"{prefix}.attn.hook_k", lambda act, *, hook: act.detach())]
    return hooks


def attnlrp(
    model: HookedViTLike,
    images: Images,
    targets: Targets,
    *,
    score: ScoreLike = "logit",
    softmax: Literal["attnlrp", "cp"] = "attnlrp",
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """AttnLRP relevance of each pixel and patch for the target's score (see the module docstring).

    Args:
        model: A `HookedViT`.
        images: Normalised images ``[batch, C, H, W]``.
        targets: Class per image ``[batch]``.
        score: The relevance that is propagated (default the target logit, as in the paper).
        softmax: ``"attnlrp"`` (default) or ``"cp"`` (CP-LRP's attention rule).

    Returns:
        ``(patch_map [batch, grid_h, grid_w], pixel_map [batch, H, W], info)``: signed relevance;
        ``info`` holds ``relevance_sum`` (the input's total relevance) and ``score`` (the score it
        started from), each ``[batch]``.

    Example:
        >>> result = attribute("attnlrp", model, images)
        >>> result.pixels.shape
        torch.Size([2, 64, 64])
    """
    model = at_image_size(model, images)  # a dynamic-size model on the images' grid
    images, targets = check_inputs(model, images, targets)
    with gradients_enabled(), model.hooks(fwd_hooks=lrp_hooks(model, softmax)):
        x = images.detach().clone().requires_grad_(True)
        scores = target_scores(model(x), targets, score)
        (grad,) = grads_of(scores.sum(), [x])
    relevance = (x.detach().double() * grad.detach().double()).sum(dim=1)  # [batch, H, W]
    info = {"relevance_sum": relevance.flatten(1).sum(1).float().cpu(), "score": scores.detach().float().cpu()}
    pixels = relevance.float()
    return model.grid.pool_pixels(pixels, reduce="sum"), pixels, info

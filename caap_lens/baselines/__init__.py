"""Attribution baselines to compare CAAP with, all on `HookedViT` hook points, all called one way.

``attribute(method, model, images, target="predicted", **options) -> Attribution`` runs any of them;
every method is also a plain function ``fn(model, images, targets, **options) -> (patch_map,
pixel_map | None[, info])``. Maps are ``[batch, grid_h, grid_w]`` on the model's own grid.

===============================  ===================================================  ==========================
name                             method (module)                                      reference
===============================  ===================================================  ==========================
``caap``                         CAAP itself (`caap_lens.attribution.engine.caap`)     Izadi et al. 2026
``raw_attention``                one layer's readout attention (`.attention`)         Chefer et al.'s baseline
``rollout``                      attention rollout (`.attention`)                     Abnar & Zuidema 2020
``attention_gradcam``            Grad-CAM on last-layer attention (`.attention`)       Chefer et al. CVPR 2021
``gradient_weighted_attention``  gradient-weighted attention, generic rule             Chefer et al. ICCV 2021
``token_gradcam``                Grad-CAM on tokens, pytorch-grad-cam (`.gradients`)   Selvaraju et al. 2017
``integrated_gradients``         Integrated Gradients on pixels (`.gradients`)        Sundararajan et al. 2017
``attnlrp``                      AttnLRP relevance (`.lrp`)                           Achtibat et al. 2024
``occlusion``                    patch occlusion with a CAAP context (`.perturbation`) Zeiler & Fergus 2014
``rise``                         RISE random masks (`.perturbation`)                  Petsiuk et al. 2018
``attribution_patching``         AtP, CAAP's gradient approximation                   Nanda 2023
===============================  ===================================================  ==========================

Renamed (the old names still work, with a DeprecationWarning): ``transformer_attribution`` →
``gradient_weighted_attention`` (it never was Chefer et al.'s CVPR 2021 LRP-based "Transformer
Attribution"), ``gradcam`` → ``token_gradcam``.

Example:
    >>> from caap_lens.baselines import attribute
    >>> maps = {m: attribute(m, model, images).map for m in ("caap", "rollout", "attnlrp")}
"""

from caap_lens.baselines.attention import (
    attention_gradcam,
    gradient_weighted_attention,
    raw_attention,
    rollout,
    transformer_attribution,
)
from caap_lens.baselines.attribution_patching import attribution_patching, fidelity
from caap_lens.stats import pearson, spearman  # re-exported: fidelity's correlations
from caap_lens.baselines.base import METHODS, RENAMED, Attribution, attribute, caap_attribution, resolve_method
from caap_lens.baselines.gradients import gradcam, integrated_gradients, token_gradcam
from caap_lens.baselines.lrp import attnlrp
from caap_lens.baselines.perturbation import occlusion, rise, rise_masks

METHODS.update(
    {
        "caap": caap_attribution,
        "raw_attention": raw_attention,
        "rollout": rollout,
        "attention_gradcam": attention_gradcam,
        "gradient_weighted_attention": gradient_weighted_attention,
        "token_gradcam": token_gradcam,
        "integrated_gradients": integrated_gradients,
        "attnlrp": attnlrp,
        "occlusion": occlusion,
        "rise": rise,
        "attribution_patching": attribution_patching,
    }
)

__all__ = [
    "METHODS",
    "RENAMED",
    "Attribution",
    "attention_gradcam",
    "attnlrp",
    "attribute",
    "attribution_patching",
    "caap_attribution",
    "fidelity",
    "gradcam",
    "gradient_weighted_attention",
    "integrated_gradients",
    "occlusion",
    "pearson",
    "raw_attention",
    "resolve_method",
    "rise",
    "rise_masks",
    "rollout",
    "spearman",
    "token_gradcam",
    "transformer_attribution",
]

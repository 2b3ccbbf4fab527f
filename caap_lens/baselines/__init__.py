"""Attribution baselines to compare CAAP with, all on `HookedViT` hook points, all called one way.

``attribute(method, model, images, target="predicted", **options) -> Attribution`` runs any of them;
every method is also a plain function ``fn(model, images, targets, **options) -> (patch_map,
pixel_map | None)``. Maps are ``[batch, grid_h, grid_w]`` on the model's own grid.

==============================  ====================================================  ================
name                            method (module)                                       reference
==============================  ====================================================  ================
``caap``                        CAAP itself (`caap_lens.attribution.engine.caap`)      Izadi et al.
``raw_attention``               last layer's CLS attention (`.attention`)             —
``rollout``                     attention rollout (`.attention`)                      Abnar & Zuidema 2020
``transformer_attribution``     gradient-weighted attention (`.attention`)            Chefer et al. 2021
``gradcam``                     Grad-CAM on tokens (`.gradients`)                     Selvaraju et al. 2017
``integrated_gradients``        Integrated Gradients on pixels (`.gradients`)         Sundararajan et al. 2017
``occlusion``                   patch occlusion with a CAAP context (`.perturbation`)  Zeiler & Fergus 2014
``rise``                        RISE random masks (`.perturbation`)                   Petsiuk et al. 2018
``attribution_patching``        AtP, CAAP's gradient approximation                    Nanda 2023
==============================  ====================================================  ================

Example:
    >>> from caap_lens.baselines import attribute
    >>> maps = {m: attribute(m, model, images).map for m in ("caap", "rollout", "gradcam")}  # doctest: +SKIP
"""

from caap_lens.baselines.attention import raw_attention, rollout, transformer_attribution
from caap_lens.baselines.attribution_patching import attribution_patching, fidelity
from caap_lens.stats import pearson, spearman  # re-exported: fidelity's correlations
from caap_lens.baselines.base import METHODS, Attribution, attribute, caap_attribution, resolve_method
from caap_lens.baselines.gradients import gradcam, integrated_gradients
from caap_lens.baselines.perturbation import occlusion, rise, rise_masks

METHODS.update(
    {
        "caap": caap_attribution,
        "raw_attention": raw_attention,
        "rollout": rollout,
        "transformer_attribution": transformer_attribution,
        "gradcam": gradcam,
        "integrated_gradients": integrated_gradients,
        "occlusion": occlusion,
        "rise": rise,
        "attribution_patching": attribution_patching,
    }
)

__all__ = [
    "METHODS",
    "Attribution",
    "attribute",
    "attribution_patching",
    "caap_attribution",
    "fidelity",
    "gradcam",
    "integrated_gradients",
    "occlusion",
    "pearson",
    "raw_attention",
    "resolve_method",
    "rise",
    "rise_masks",
    "rollout",
    "spearman",
    "transformer_attribution",
]

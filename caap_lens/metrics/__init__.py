"""Evaluation metrics for attribution maps, batched over images, one module per concept.

* `caap_lens.metrics.curves` — perturbation curves: RISE deletion/insertion, Chefer et al.'s
  positive/negative perturbation; a `Curve` per call (x, y per image, AUC per image).
* `caap_lens.metrics.localisation` — against ground-truth masks: pointing game, mask energy, mask
  AUROC, and their chance levels.
* `caap_lens.metrics.ground_truth` — for scenes of several items: object removal (rank correlation of
  a map's mass per item with the item's true removal effect) and target specificity.
* `caap_lens.metrics.sanity` — Adebayo et al.'s model-randomisation check.
* `caap_lens.stats` (re-exported here) — average ranks, Spearman, ``mean_ci`` for comparison tables
  (a `MeanCI`: ``(mean, lo, hi)`` with ``n`` used and ``n_dropped`` NaN values).

Maps are patch maps ``[batch, gh, gw]`` or pixel maps ``[batch, H, W]``; every function documents
its protocol and tie rule.

Example:
    >>> from caap_lens.metrics import deletion_curve, pointing_game, mean_ci
    >>> curve = deletion_curve(model, images, maps, "predicted")
    >>> mean_ci(pointing_game(maps, masks, grid=model)).n
    2
"""

from caap_lens.metrics.curves import (
    Curve,
    accuracy,
    curve_auc,
    deletion_curve,
    insertion_curve,
    perturbation_curve,
    perturbed_images,
    substrate_images,
    unit_order,
)
from caap_lens.metrics.ground_truth import item_mass, object_removal, target_specificity
from caap_lens.metrics.localisation import chance_level, mask_auroc, mask_energy, pointing_game
from caap_lens.metrics.sanity import randomisation_check, randomise_layers, top_overlap
from caap_lens.stats import MeanCI, average_ranks, mean_ci, spearman

__all__ = [
    "Curve",
    "MeanCI",
    "accuracy",
    "average_ranks",
    "chance_level",
    "curve_auc",
    "deletion_curve",
    "insertion_curve",
    "item_mass",
    "mask_auroc",
    "mask_energy",
    "mean_ci",
    "object_removal",
    "perturbation_curve",
    "perturbed_images",
    "pointing_game",
    "randomisation_check",
    "randomise_layers",
    "spearman",
    "substrate_images",
    "target_specificity",
    "top_overlap",
    "unit_order",
]

"""The metrics a plan can name, each a thin call into `caap_lens.metrics` on a batch of units.

Every metric takes a `UnitBatch` (the images, targets, ground truth and maps of up to ``plan.chunk``
(image, target) units) and returns one value per unit, NaN where it is undefined. A metric declares
what it needs (``masks``: the target's ground-truth mask; ``others``: masks of the other classes present;
``removal``: object-removal effects); units that lack it are *skipped with a reason*, which the store
records and the tables count — never a silent drop.

========================  =====================================================  =========  ==========
name                      `caap_lens.metrics` function                           better     needs
========================  =====================================================  =========  ==========
``deletion``              ``deletion_curve(...).auc`` (substrate mean)            lower      —
``insertion``             ``insertion_curve(...).auc`` (substrate blur)           higher     —
``positive``              ``perturbation_curve(positive=True).auc``               lower      —
``negative``              ``perturbation_curve(positive=False).auc``              higher     —
``pointing``              ``pointing_game``                                      higher     masks
``energy``                ``mask_energy``                                        higher     masks
``auroc``                 ``mask_auroc``                                         higher     masks
``object_removal``        ``object_removal(maps, item_masks, true_effects)``     higher     removal
``target_specificity``    ``target_specificity(maps, target, other masks)``      higher     others
========================  =====================================================  =========  ==========
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor
from caap_lens.model.protocol import HookedViTLike


@dataclass
class UnitBatch:
    """Everything a metric may read for ``U`` units (maps are filled in per method row).

    Attributes:
        model: The HookedViT.
        images: Normalised ``[U, C, H, W]`` on the model's device.
        targets: ``[U]`` class indices.
        masks: bool ``[U, H, W]`` target masks (all False where ``has_mask`` is False).
        has_mask: bool ``[U]``.
        other_masks: bool ``[U, M, H, W]`` masks of the other labelled classes (False padded), or None.
        n_others: ``[U]`` how many of ``other_masks`` are real.
        item_masks: bool ``[U, K, H, W]`` per-item masks (object removal), or None.
        true_effects: ``[U, K]`` score(image) − score(image without item k), NaN padded, or None.
        maps: ``[U, gh, gw]`` the current row's maps.
        plan: The plan (score, curve steps, batch size).
    """

    model: HookedViTLike
    images: Tensor
    targets: Tensor
    masks: Tensor
    has_mask: Tensor
    other_masks: Tensor | None
    n_others: Tensor
    item_masks: Tensor | None
    true_effects: Tensor | None
    plan: Any
    maps: Tensor | None = None
    curves: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricSpec:
    """A metric: its label, direction (+1 higher is better), what it needs and its function."""

    name: str
    label: str
    direction: int
    needs: str | None
    fn: Callable[[UnitBatch, Tensor], Tensor]
    curve: bool = False

    def available(self, b: UnitBatch) -> tuple[Tensor, str]:
        """bool ``[U]``: units this metric can score, and the reason for the others."""
        u = b.targets.shape[0]
        if self.needs is None:
            return torch.ones(u, dtype=torch.bool), ""
        if self.needs == "masks":
            return b.has_mask.clone(), "no ground-truth mask"
        if self.needs == "others":
            if b.other_masks is None:
                return torch.zeros(u, dtype=torch.bool), "no masks"
            return b.has_mask & (b.n_others > 0), "no other labelled class with a mask"
        if self.needs == "removal":
            if b.true_effects is None or b.item_masks is None:
                return torch.zeros(u, dtype=torch.bool), "no object-removal images"
            return (~torch.isnan(b.true_effects)).any(dim=1), "no removable item"
        raise ValueError(self.needs)


def _curve_kwargs(b: UnitBatch, score: Any) -> dict[str, Any]:
    return {"score": score, "batch_size": b.plan.batch_size, "unit": "patch"}


def _deletion(b: UnitBatch, keep: Tensor) -> Tensor:
    from caap_lens.metrics import deletion_curve

    c = deletion_curve(b.model, b.images[keep], b.maps[keep], b.targets[keep], steps=b.plan.curve_steps,
                       **_curve_kwargs(b, b.plan.score))
    b.curves["deletion"] = c.y.float()
    return c.auc


def _insertion(b: UnitBatch, keep: Tensor) -> Tensor:
    from caap_lens.metrics import insertion_curve

    c = insertion_curve(b.model, b.images[keep], b.maps[keep], b.targets[keep], steps=b.plan.curve_steps,
                        **_curve_kwargs(b, b.plan.score))
    b.curves["insertion"] = c.y.float()
    return c.auc


def _perturbation(positive: bool) -> Callable[[UnitBatch, Tensor], Tensor]:
    key = "positive" if positive else "negative"

    def run(b: UnitBatch, keep: Tensor) -> Tensor:
        from caap_lens.metrics import perturbation_curve

        c = perturbation_curve(b.model, b.images[keep], b.maps[keep], b.targets[keep], positive=positive,
                               **_curve_kwargs(b, b.plan.perturbation_score or b.plan.score))
        b.curves[key] = c.y.float()
        return c.auc

    run.__name__ = f"_{key}"
    return run


def _pointing(b: UnitBatch, keep: Tensor) -> Tensor:
    from caap_lens.metrics import pointing_game

    return pointing_game(b.maps[keep], b.masks[keep], grid=b.model)


def _energy(b: UnitBatch, keep: Tensor) -> Tensor:
    from caap_lens.metrics import mask_energy

    return mask_energy(b.maps[keep], b.masks[keep], grid=b.model)


def _auroc(b: UnitBatch, keep: Tensor) -> Tensor:
    from caap_lens.metrics import mask_auroc

    return mask_auroc(b.maps[keep], b.masks[keep], grid=b.model)


def _published(name: str) -> Callable[..., Tensor]:
    import caap_lens.metrics as m

    fn = getattr(m, name, None)
    if fn is None:
        raise ImportError(f"caap_lens.metrics has no {name!r} yet (it comes with the published metrics); "
                          f"drop {name!r} from the plan's metrics")
    return fn


def _object_removal(b: UnitBatch, keep: Tensor) -> Tensor:
    return _published("object_removal")(b.maps[keep], b.item_masks[keep], b.true_effects[keep], grid=b.model)


def _target_specificity(b: UnitBatch, keep: Tensor) -> Tensor:
    return _published("target_specificity")(b.maps[keep], b.masks[keep], b.other_masks[keep], grid=b.model)


METRICS: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec("deletion", "deletion AUC", -1, None, _deletion, curve=True),
        MetricSpec("insertion", "insertion AUC", +1, None, _insertion, curve=True),
        MetricSpec("positive", "pos. perturbation AUC", -1, None, _perturbation(True), curve=True),
        MetricSpec("negative", "neg. perturbation AUC", +1, None, _perturbation(False), curve=True),
        MetricSpec("pointing", "pointing game", +1, "masks", _pointing),
        MetricSpec("energy", "mask energy", +1, "masks", _energy),
        MetricSpec("auroc", "mask AUROC", +1, "masks", _auroc),
        MetricSpec("object_removal", "object removal", +1, "removal", _object_removal),
        MetricSpec("target_specificity", "target specificity", +1, "others", _target_specificity),
    )
}
"""Metric name -> `MetricSpec`."""


def score_units(spec: MetricSpec, b: UnitBatch) -> tuple[Tensor, list[str]]:
    """Values ``[U]`` (float64, NaN where skipped or undefined) and a skip reason per unit ('' if none)."""
    u = b.targets.shape[0]
    keep, reason = spec.available(b)
    out = torch.full((u,), float("nan"), dtype=torch.float64)
    if keep.any():
        out[keep] = spec.fn(b, keep).double().cpu().flatten()
        if spec.curve and spec.name in b.curves:
            y = b.curves[spec.name]
            full = torch.full((u, y.shape[1]), float("nan"))
            full[keep] = y.cpu()
            b.curves[spec.name] = full
    return out, ["" if k else reason for k in keep.tolist()]

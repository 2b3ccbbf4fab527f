"""Evaluation harness: every attribution method × metric over a whole data set, resumable and sharded.

API summary (stable; code against this):

```python
from caap_lens.evaluation import (
    Plan, MethodSpec, evaluate, merge, load_results,          # the run and its tables
    SceneSource, bundled_scenes, ImageFolderSource, HFDatasetSource, Item,   # data sources
)

# A data source yields Item(id, image, targets, masks, extras) in a fixed order with stable ids:
#   id: str; image: uint8 [H, W, 3] (or a normalised [C, H, W] tensor); targets: labelled classes (list[int]);
#   masks: {class: bool [H, W]} or None; extras: dict, e.g. "item_masks" bool [K, H, W],
#   "item_classes" [K] (-1 padded) and, when the SceneSet has them, "removal_images" uint8 [K, H, W, 3].
source = bundled_scenes("fashion-scenes-vit")            # or SceneSource(scene_set, name="my-scenes")

plan = Plan(
    methods=[MethodSpec("caap"),                          # row name = method name, default options
             MethodSpec("caap_w4-8_blur", method="caap", options={"layers": (4, 8), "context": "blur"}),
             MethodSpec("rise", options={"n_masks": 1000, "score": "sigmoid"}),
             MethodSpec("rollout"), MethodSpec("random")],  # "random": seeded uniform maps, a reference row
    metrics=["deletion", "insertion", "positive", "negative", "pointing", "energy", "auroc",
             "object_removal", "target_specificity"],   # metrics whose inputs a unit lacks are skipped, counted
    targets="all_present",   # "all_present" (a unit per labelled class) | "labelled" (the first label) | "predicted"
    score="sigmoid",         # score of the metric curves / removal effects (any caap_lens score name)
    reference="caap",        # row for the paired differences (Holm-corrected)
    chunk=16,                # items per committed chunk; all their units share one batched call per method
)
plan.hash()                  # stable sha256 of everything that defines the numbers

run = evaluate(model, source, plan, "runs/cmp")          # any HookedViT; resumes by default;
# under torchrun / accelerate launch each rank takes a disjoint, deterministic slice of chunks and
# writes only its own part files; rank 0 merges at the end (merge=True) into run.results.
# evaluate(..., shard=(rank, world)) runs one slice as an independent job (no process group).
results = merge("runs/cmp")  # or: caap-lens evaluate --merge runs/cmp
results.summary["caap"]["deletion"]        # {"mean", "lo", "hi", "n", "n_dropped", "n_skipped"}
results.paired["rollout"]["deletion"]      # rollout − reference: mean diff, CI, p, p_holm, n
results.ranks["deletion"]["caap"]          # {"rank", "lo", "hi"}: bootstrap 95% CI of the rank
results.to_markdown(); results.to_html("report.html"); results.to_json("results.json")
```

Modules, one concept each: `sources` (data sources), `plan` (methods, metrics, targets policy, hash),
`metrics` (the metric registry the plan names), `store` (Parquet part files, atomic chunks, resume,
corruption checks), `distributed` (rank / world size, torch.distributed set-up, slicing),
`execution` (`evaluate`), `tables` (`merge`, `Results`: CIs, paired differences, rank intervals),
`report` (Markdown and self-contained HTML), `cli` (`caap-lens evaluate`).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Item": "sources", "Source": "sources", "SceneSource": "sources", "bundled_scenes": "sources",
    "ImageFolderSource": "sources", "HFDatasetSource": "sources", "ListSource": "sources",
    "Plan": "plan", "MethodSpec": "plan", "PlanError": "plan",
    "METRICS": "metrics", "MetricSpec": "metrics",
    "Store": "store", "PlanMismatch": "store",
    "evaluate": "execution", "RunSummary": "execution",
    "merge": "tables", "load_results": "tables", "Results": "tables",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"caap_lens.evaluation.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'caap_lens.evaluation' has no attribute {name!r}")

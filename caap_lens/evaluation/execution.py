"""`evaluate`: run a plan over a data source, one committed chunk at a time, on one rank or many.

For each chunk of ``plan.chunk`` items (this rank's slice, see `caap_lens.evaluation.distributed`):
the items are read and preprocessed, the targets policy gives the (image, target) units, the clean
score and (when the source has removal images) the object-removal effects are computed once, then
every method row runs **once on the whole chunk** (`caap_lens.baselines.attribute`, batched across
units) and every metric scores its maps (`caap_lens.evaluation.metrics`). The chunk's rows are then
committed to the store atomically. Items already committed are skipped, so a killed run resumes
where it stopped; chunks never straddle ranks, so every unit is computed in the same batch whatever
the number of ranks.

Example:
    >>> from caap_lens.evaluation import Plan, bundled_scenes, evaluate
    >>> plan = Plan(methods=["caap", "rollout", "random"], score="sigmoid")  # doctest: +SKIP
    >>> run = evaluate(model, bundled_scenes(), plan, "runs/cmp")  # doctest: +SKIP
    >>> run.results.to_markdown()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from caap_lens.evaluation.distributed import Distributed, chunked
from caap_lens.evaluation.distributed import shard as shard_range
from caap_lens.evaluation.metrics import METRICS, UnitBatch, score_units
from caap_lens.evaluation.plan import Plan
from caap_lens.evaluation.sources import Item, fingerprint
from caap_lens.evaluation.store import FORMAT, PlanMismatch, Store, StoreError
from caap_lens.model.protocol import HookedViTLike
from caap_lens.preprocessing import preprocess_mask


@dataclass
class RunSummary:
    """What one rank did, and (on rank 0 after the merge) the tables.

    Attributes:
        rank, world: This rank and the number of ranks.
        chunks, chunks_done, chunks_skipped: Chunks in this rank's slice; computed now; already committed.
        items, units, rows: Items and (image, target) units computed now, rows written.
        corrupt: Parts found unreadable at start-up (moved aside; their items were redone).
        seconds: Wall time of the whole call on this rank.
        seconds_methods, seconds_metrics: Time inside the methods and inside the metrics.
        seconds_store: Time committing chunks. ``seconds - methods - metrics`` is the harness's overhead.
        seconds_merge: Time of the merge into tables (rank 0), not part of ``seconds``.
        results: The merged `Results` (rank 0, ``merge=True``), else None.
    """

    rank: int = 0
    world: int = 1
    chunks: int = 0
    chunks_done: int = 0
    chunks_skipped: int = 0
    items: int = 0
    units: int = 0
    rows: int = 0
    corrupt: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    seconds_methods: float = 0.0
    seconds_metrics: float = 0.0
    seconds_store: float = 0.0
    seconds_merge: float = 0.0
    results: Any = None

    @property
    def overhead(self) -> float:
        """The harness's own share of the wall time: 1 − (methods + metrics) / total."""
        work = self.seconds_methods + self.seconds_metrics
        return 0.0 if self.seconds <= 0 else max(0.0, 1.0 - work / self.seconds)

    def line(self) -> str:
        rate = f", {self.seconds / self.units:.2f} s/unit" if self.units else ""
        bad = f", {len(self.corrupt)} corrupt part(s) redone" if self.corrupt else ""
        work = (f"; methods {self.seconds_methods:.1f}s, metrics {self.seconds_metrics:.1f}s, "
                f"harness overhead {100 * self.overhead:.1f}%") if self.units else ""
        return (f"rank {self.rank}/{self.world}: {self.chunks_done} chunk(s) computed, {self.chunks_skipped} already "
                f"committed, {self.units} unit(s), {self.rows} row(s) in {self.seconds:.1f}s{rate}{work}{bad}")


def model_fingerprint(model: HookedViTLike) -> dict[str, Any]:
    """Name and a hash of the model's architecture and weights (sums of each tensor, 6 digits)."""
    h = hashlib.sha256()
    cfg = model.cfg
    for key in ("n_layers", "d_model", "n_heads", "image_size", "patch_size", "n_classes"):
        h.update(f"{key}={getattr(cfg, key, None)}|".encode())
    with torch.no_grad():
        for name, p in model.state_dict().items():
            h.update(f"{name}:{tuple(p.shape)}:{float(p.double().abs().sum()):.6e}|".encode())
    return {"name": str(getattr(cfg, "source", None) or getattr(cfg, "model_name", None) or type(model).__name__),
            "fingerprint": h.hexdigest()[:16]}


_CODE: str | None = None


def code_fingerprint() -> str:
    """sha256 (16 hex) of every ``caap_lens/**/*.py`` file: which library code computed a part.

    The plan hash says *what* was computed; this says *with which code*. A store resumed under other
    code is not refused (an unrelated edit changes it too) but the run says so and the tables count
    the code versions they merge.
    """
    global _CODE
    if _CODE is None:
        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
        _CODE = h.hexdigest()[:16]
    return _CODE


def _unit_seed(item_id: str, target: int, row: str, seed: int) -> int:
    return int(hashlib.sha256(f"{seed}|{row}|{item_id}|{target}".encode()).hexdigest()[:15], 16)


def _schema(plan: Plan) -> Any:
    import pyarrow as pa

    fields = [("id", pa.string()), ("item_index", pa.int64()), ("target", pa.int64()), ("method", pa.string()),
              ("setting", pa.string()), ("score", pa.float64())]
    fields += [(k, pa.float64()) for k in plan.metrics]
    fields += [(f"curve_{k}", pa.list_(pa.float32())) for k in plan.metrics if METRICS[k].curve]
    fields += [("skipped", pa.string()), ("n_steps", pa.int64()), ("seconds", pa.float64()),
               ("metric_seconds", pa.float64()), ("plan_hash", pa.string()), ("rank", pa.int32())]
    return pa.schema(fields)


def _resize_mask(model: HookedViTLike, mask: np.ndarray, image: Any) -> Tensor:
    """``mask`` on the model input of ``image``: a tensor input is already there, anything else is
    preprocessed, and its mask follows the same resize and crop (`preprocess_mask`)."""
    cfg = model.cfg
    size = tuple(cfg.image_size)
    m = np.asarray(mask)
    if isinstance(image, Tensor) and image.is_floating_point():  # taken as model input: no geometry applied
        if tuple(m.shape[-2:]) != size:
            raise ValueError(f"a mask of {tuple(m.shape[-2:])} pixels for a model input of {size}: the masks of "
                             "tensor images must be at the model's size")
        return torch.as_tensor(m).bool()
    return preprocess_mask(m, size, getattr(cfg, "data_config", None), cfg.n_channels)


def _preprocess(model: HookedViTLike, image: Any) -> Tensor:
    if isinstance(image, Tensor) and image.is_floating_point() and image.ndim == 3:
        if getattr(model.cfg, "dynamic_img_size", False) and tuple(image.shape[-2:]) != tuple(model.cfg.image_size):
            # a dynamic-size model takes it, but units are batched and their masks sized at one size
            raise ValueError(
                f"an evaluation runs at the model's image size {tuple(model.cfg.image_size)}, and this image is "
                f"{tuple(image.shape[-2:])}: resize the data set's images, pass them as PIL images or arrays "
                f"(preprocessed for you), or evaluate model.at_size({tuple(image.shape[-2:])})"
            )
        return model.check_images(image[None].to(device=model.device, dtype=model.dtype))
    return model.preprocess(image[None] if isinstance(image, np.ndarray) and image.ndim == 3 else image)


class _Chunk:
    """The units of one chunk and everything the metrics read (see `UnitBatch`)."""

    def __init__(self, model: HookedViTLike, plan: Plan, items: list[Item], indices: list[int]) -> None:
        from caap_lens.attribution.scores import resolve_score

        self.items = items
        size = tuple(model.cfg.image_size)
        need_removal = "object_removal" in plan.metrics
        images = torch.cat([_preprocess(model, it.image) for it in items]) if items else None
        if plan.targets == "predicted" and items:
            with torch.no_grad():
                preds = model(images).argmax(-1).tolist()
        unit_item, unit_target = [], []
        for j, it in enumerate(items):
            if plan.targets == "predicted":
                targets = [int(preds[j])]
            elif plan.targets == "labelled":
                targets = [int(t) for t in it.targets[:1]]
            else:
                targets = sorted({int(t) for t in it.targets})
            for t in targets:
                unit_item.append(j)
                unit_target.append(t)
        self.unit_item, self.unit_target = unit_item, unit_target
        self.ids = [items[j].id for j in unit_item]
        self.index = [indices[j] for j in unit_item]
        u = len(unit_item)
        self.n = u
        if u == 0:
            return
        ui = torch.tensor(unit_item)
        self.images = images[ui.to(images.device)]
        self.targets = torch.tensor(unit_target, dtype=torch.long)
        masks = torch.zeros((u, *size), dtype=torch.bool)
        has = torch.zeros(u, dtype=torch.bool)
        others: list[list[Tensor]] = []
        for k, (j, t) in enumerate(zip(unit_item, unit_target)):
            m = items[j].masks
            if m is not None and t in m:
                masks[k] = _resize_mask(model, m[t], items[j].image)
                has[k] = True
            others.append([_resize_mask(model, v, items[j].image) for c, v in sorted((m or {}).items()) if c != t])
        n_others = torch.tensor([len(o) for o in others])
        other_masks = None
        if int(n_others.max()) > 0:
            other_masks = torch.zeros((u, int(n_others.max()), *size), dtype=torch.bool)
            for k, o in enumerate(others):
                for q, v in enumerate(o):
                    other_masks[k, q] = v
        score = resolve_score(plan.score)
        with torch.no_grad():
            clean = score(model(self.images), self.targets.to(self.images.device)).double().cpu()
        self.clean = clean
        item_masks = true_effects = None
        if need_removal and all("removal_images" in it.extras and "item_masks" in it.extras for it in items):
            k_max = max(np.asarray(it.extras["item_masks"]).shape[0] for it in items)
            item_masks = torch.zeros((u, k_max, *size), dtype=torch.bool)
            true_effects = torch.full((u, k_max), float("nan"), dtype=torch.float64)
            removed: dict[int, Tensor] = {}
            for j, it in enumerate(items):  # every removal image through the model once per item
                cls = np.asarray(it.extras.get("item_classes", np.zeros(0)))
                valid = [q for q in range(len(cls)) if cls[q] >= 0]
                if valid:
                    x = model.preprocess(np.asarray(it.extras["removal_images"])[valid])
                    with torch.no_grad():
                        removed[j] = (model(x).float().cpu(), valid)  # type: ignore[assignment]
            for k, (j, t) in enumerate(zip(unit_item, unit_target)):
                im = np.asarray(items[j].extras["item_masks"])
                for q in range(im.shape[0]):
                    item_masks[k, q] = _resize_mask(model, im[q], items[j].image)
                if j in removed:
                    out, valid = removed[j]  # type: ignore[misc]
                    tgt = torch.full((len(valid),), t, dtype=torch.long)
                    true_effects[k, valid] = clean[k] - score(out, tgt).double()
        self.batch = UnitBatch(model=model, images=self.images, targets=self.targets, masks=masks, has_mask=has,
                               other_masks=other_masks, n_others=n_others, item_masks=item_masks,
                               true_effects=true_effects, plan=plan)


def _options(spec: Any, objects: dict[str, Any] | None) -> dict[str, Any]:
    """The row's options, with ``"@name"`` string values replaced by ``objects["name"]``."""
    opts = spec.call_options()
    for key, value in opts.items():
        if isinstance(value, str) and value.startswith("@"):
            if not objects or value[1:] not in objects:
                raise ValueError(f"method row {spec.name!r}: option {key}={value!r} names no object passed "
                                 f"to evaluate(objects=...)")
            opts[key] = objects[value[1:]]
    return opts


def _row_maps(model: HookedViTLike, spec: Any, chunk: _Chunk, plan: Plan,
              objects: dict[str, Any] | None = None) -> tuple[Tensor, float]:
    if spec.fn_name == "random":
        t0 = time.perf_counter()
        gh, gw = model.grid.grid_size
        maps = torch.stack([
            torch.rand(gh, gw, generator=torch.Generator().manual_seed(_unit_seed(i, t, spec.name, plan.seed)))
            for i, t in zip(chunk.ids, chunk.unit_target)])
        return maps, time.perf_counter() - t0
    from caap_lens.baselines import attribute

    result = attribute(spec.fn_name, model, chunk.images, chunk.targets, **_options(spec, objects))
    return result.map.float().cpu(), float(result.seconds)


def _compute_chunk(model: HookedViTLike, plan: Plan, chunk: _Chunk, rank: int, plan_hash: str, summary: RunSummary,
                   objects: dict[str, Any] | None = None) -> tuple[dict[str, list], dict[str, np.ndarray]]:
    cols: dict[str, list] = {name: [] for name in _schema(plan).names}
    saved: dict[str, np.ndarray] = {}
    steps = {"deletion": plan.curve_steps or model.grid.n_patches, "insertion": plan.curve_steps or model.grid.n_patches}
    n_steps = max([steps.get(k, 10) for k in plan.metrics if METRICS[k].curve] or [0])
    for spec in plan.methods:
        setting = json.dumps(spec.to_dict(), sort_keys=True)  # the row's method and options, as in the plan
        maps, seconds = _row_maps(model, spec, chunk, plan, objects)
        summary.seconds_methods += seconds
        b = chunk.batch
        b.maps, b.curves = maps, {}
        t0 = time.perf_counter()
        values, reasons = {}, [[] for _ in range(chunk.n)]
        for key in plan.metrics:
            v, why = score_units(METRICS[key], b)
            values[key] = v
            for k, r in enumerate(why):
                if r:
                    reasons[k].append(f"{key}: {r}")
        metric_seconds = time.perf_counter() - t0
        summary.seconds_metrics += metric_seconds
        for k in range(chunk.n):
            cols["id"].append(chunk.ids[k])
            cols["item_index"].append(chunk.index[k])
            cols["target"].append(chunk.unit_target[k])
            cols["method"].append(spec.name)
            cols["setting"].append(setting)
            cols["score"].append(float(chunk.clean[k]))
            for key in plan.metrics:
                cols[key].append(float(values[key][k]))
                if METRICS[key].curve:
                    y = b.curves.get(key)
                    cols[f"curve_{key}"].append(None if y is None or torch.isnan(y[k]).all() else y[k].tolist())
            cols["skipped"].append("; ".join(reasons[k]))
            cols["n_steps"].append(n_steps)
            cols["seconds"].append(seconds / chunk.n)
            cols["metric_seconds"].append(metric_seconds / chunk.n)
            cols["plan_hash"].append(plan_hash)
            cols["rank"].append(rank)
            if plan.save_maps:
                saved[f"{spec.name}|{chunk.ids[k]}|{chunk.unit_target[k]}"] = maps[k].numpy()
    return cols, saved


def _progress(total: int, rank: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, position=rank, desc=f"rank {rank}", unit="chunk", disable=not enabled,
                leave=True, dynamic_ncols=True, file=sys.stderr)


def evaluate(
    model: HookedViTLike,
    source: Any,
    plan: Plan,
    store_dir: str | Path,
    *,
    resume: bool = True,
    merge: bool = True,
    progress: bool = True,
    backend: str | None = None,
    log: Callable[[str], None] | None = None,
    after_chunk: Callable[[int], None] | None = None,
    shard: tuple[int, int] | None = None,
    objects: dict[str, Any] | None = None,
) -> RunSummary:
    """Runs ``plan`` over ``source`` with ``model`` into the store at ``store_dir``; see the module docstring.

    Args:
        model: HookedViTLike `HookedViT` (on the device to use; under torchrun with CUDA, move it to
            ``cuda:LOCAL_RANK`` first, e.g. with ``Distributed.setup().device("cuda")``).
        source: A data source (`caap_lens.evaluation.sources`).
        plan: The `Plan`.
        store_dir: The results store (created if absent).
        resume: Skip items already committed (default). ``False`` refuses a store that has parts.
        merge: Rank 0 merges every rank's parts into tables at the end (``results`` of the summary,
            and ``results.md``/``.html``/``.json`` in the store).
        progress: A tqdm bar per rank (ETA); the one-line summary is logged either way.
        backend: torch.distributed backend (default ``nccl`` on CUDA, else ``gloo``).
        log: Where the summary lines go (default stderr).
        after_chunk: Called with the number of chunks computed so far (tests use it to kill a run).
        shard: ``(rank, world)`` to run one slice as an independent job (no process group, e.g. a SLURM
            array); every job may create the store; merge (`merge`) once all have finished.
        objects: Values for method options written ``"@name"`` in the plan (objects that are not
            JSON, e.g. ``MeanActivationContext(reference=images)``); the plan hashes the name, so the
            caller keeps the object behind a name fixed.

    Returns:
        This rank's `RunSummary`.

    Raises:
        PlanError: a plan that cannot run.
        PlanMismatch: the store holds another plan's (or data set's, or model's) results.
    """
    t_start = time.perf_counter()
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    plan.validate()
    plan_hash = plan.hash()
    dist = (Distributed.by_hand(*shard) if shard is not None
            else Distributed.setup(backend=backend, device=getattr(model, "device", None)))
    store = Store(store_dir)
    summary = RunSummary(rank=dist.rank, world=dist.world)
    try:
        manifest = {"format": FORMAT, "plan_hash": plan_hash, "plan": plan.to_dict(),
                    "source": {"name": getattr(source, "name", type(source).__name__), "n": len(source),
                               "fingerprint": fingerprint(source)},
                    "model": model_fingerprint(model), "code": code_fingerprint()}
        error = None
        found_corrupt: dict[str, str] = {}
        if dist.rank == 0 or dist.manual:
            try:
                if not resume and store.part_files():
                    raise StoreError(f"store {store.path} already has results and resume is off: "
                                     "use a new directory")
                found = store.create_or_check(manifest, create=True)
                if found.get("code") not in (None, manifest["code"]) and store.part_files():
                    log(f"store: started under caap_lens code {found.get('code')}, this is {manifest['code']}; "
                        "the new parts are computed with this code and the tables count the code versions")
                report = store.scan(plan_hash)
                if report.corrupt and dist.rank == 0:
                    found_corrupt = dict(report.corrupt)
                    for name, why in report.corrupt.items():
                        log(f"store: part {name} is corrupt ({why}); moved to corrupt/, its items are redone")
                    store.quarantine(list(report.corrupt))
            except (StoreError, OSError) as err:
                error = f"{type(err).__name__}: {err}"
        error = dist.broadcast_error(error)
        if error is not None:
            kind, _, message = error.partition(": ")
            raise (PlanMismatch if kind == "PlanMismatch" else StoreError)(message)
        if dist.rank != 0 and not dist.manual:
            store.create_or_check(manifest, create=False)
        store.remove_own_temporaries(dist.rank)
        report = store.scan(plan_hash)
        summary.corrupt = found_corrupt or dict(report.corrupt)
        done = {i for items in report.items.values() for i in items}
        dist.barrier()  # every rank has read the store before any writes

        indices = plan.item_indices(len(source))
        chunks = chunked(indices, plan.chunk)
        mine = [chunks[c] for c in shard_range(len(chunks), dist.rank, dist.world)]
        summary.chunks = len(mine)
        bar = _progress(len(mine), dist.rank, progress)
        ids_of = source.ids() if hasattr(source, "ids") else None
        for chunk_indices in mine:
            ids = [ids_of[i] for i in chunk_indices] if ids_of is not None else None
            if ids is not None and all(i in done for i in ids):
                summary.chunks_skipped += 1
                bar.update(1)
                continue
            items = [source[i] for i in chunk_indices]
            ids = [it.id for it in items]
            if all(i in done for i in ids):
                summary.chunks_skipped += 1
                bar.update(1)
                continue
            chunk = _Chunk(model, plan, items, chunk_indices)
            cols, saved = _compute_chunk(model, plan, chunk, dist.rank, plan_hash, summary, objects) if chunk.n else (
                {name: [] for name in _schema(plan).names}, {})
            t0 = time.perf_counter()
            store.write_chunk(dist.rank, cols, _schema(plan), {"plan_hash": plan_hash, "items": ids,
                                                               "rank": dist.rank, "code": code_fingerprint()},
                              saved or None)
            summary.seconds_store += time.perf_counter() - t0
            summary.chunks_done += 1
            summary.items += len(items)
            summary.units += chunk.n
            summary.rows += len(cols["id"])
            bar.update(1)
            if after_chunk is not None:
                after_chunk(summary.chunks_done)
        bar.close()
        summary.seconds = time.perf_counter() - t_start
        log(summary.line())
        dist.barrier()
        t_merge = time.perf_counter()
        if merge and dist.rank == 0:
            from caap_lens.evaluation.tables import merge as merge_store

            summary.results = merge_store(store.path, write=True)
        summary.seconds_merge = time.perf_counter() - t_merge
        dist.barrier()
    finally:
        dist.close()
    return summary

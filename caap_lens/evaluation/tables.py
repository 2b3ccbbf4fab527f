"""Merging a store into tables: mean and 95% CI with n per cell, paired differences, rank intervals.

`merge` reads every readable part of a store (any number of ranks, any number of runs), drops
duplicate rows (counted; there are none unless a store was tampered with), aligns the rows on the
(image, target) units and computes:

* ``summary[row][metric]`` — mean, 95% Student-t interval (`caap_lens.stats.mean_ci`), and the counts:
  ``n`` values used, ``n_dropped`` NaN values the metric returned (e.g. an empty mask), ``n_skipped`` units
  the metric could not score (reasons in ``skipped``), ``n_missing`` units this row has no result for
  (an unfinished store). Nothing is dropped without being counted.
* ``paired[row][metric]`` — ``row − reference`` over the units where both are defined: mean, 95% t
  interval, the paired t-test's two-sided p, and Holm's step-down adjusted p over the rows compared
  on that metric (``p_holm``; ``significant`` at 0.05).
* ``ranks[metric][row]`` — the rank of the row's mean (1 = best, average ranks for ties) and its 95%
  bootstrap interval: units resampled with replacement (the same resample for every row), means and
  ranks recomputed, 2.5/97.5 percentiles. Rows of the ``random`` pseudo-method are not ranked.
* ``curves[metric][row]`` — the mean curve of the curve metrics; ``seconds[row]`` — method time per unit.

`Results.to_markdown`, `to_html` (self-contained, plotly figures) and `to_json` render them
(`caap_lens.evaluation.report`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caap_lens.evaluation.metrics import METRICS
from caap_lens.evaluation.plan import Plan
from caap_lens.evaluation.store import META_KEY, ReadReport, Store, StoreError


def _floats(column: Any) -> np.ndarray:
    """A pyarrow column as float64 with NaN for nulls."""
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


# ------------------------------------------------------------------------------------- statistics
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1 - x) / b


def t_test_p(t: float, df: float) -> float:
    """Two-sided p of Student's t statistic ``t`` with ``df`` degrees of freedom.

    Example:
        >>> round(t_test_p(2.228, 10), 3)
        0.05
    """
    if math.isnan(t) or df <= 0:
        return math.nan
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2, 0.5, df / (df + t * t))


def holm(p: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted in the family).

    Example:
        >>> holm({"a": 0.01, "b": 0.04, "c": 0.03})
        {'a': 0.03, 'b': 0.06, 'c': 0.06}
    """
    items = sorted(((v, k) for k, v in p.items() if not math.isnan(v)))
    m, out, running = len(items), {k: math.nan for k in p}, 0.0
    for i, (v, k) in enumerate(items):
        running = max(running, min(1.0, (m - i) * v))
        out[k] = round(running, 12)
    return out


def ci_cell(values: np.ndarray) -> dict[str, Any]:
    """``{"mean", "lo", "hi", "n", "n_dropped"}``: mean and 95% t interval of the non-NaN values."""
    from caap_lens.stats import mean_ci

    v = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(v)
    n = int(finite.sum())
    cell = {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": n, "n_dropped": int(v.size - n)}
    if n:
        out = mean_ci(v[finite])
        mean, lo, hi = (out[0], out[1], out[2]) if isinstance(out, tuple) else (out.mean, out.lo, out.hi)
        cell.update(mean=float(mean), lo=float(lo), hi=float(hi))
    return cell


def _ranks_of(means: np.ndarray, direction: int) -> np.ndarray:
    """Average ranks (1 = best, ties share the mean of their ranks) along the last axis of ``[B, rows]``;
    a NaN mean ranks last."""
    import torch

    from caap_lens.stats import average_ranks

    key = np.where(np.isnan(means), np.inf, -direction * means)
    return average_ranks(torch.from_numpy(np.ascontiguousarray(key, dtype=np.float64))).numpy()


# ---------------------------------------------------------------------------------------- results
@dataclass
class Results:
    """Tables merged from a store; see the module docstring for each field."""

    plan: Plan
    rows: list[str]
    metrics: list[str]
    units: list[tuple[str, int]]
    values: dict[str, dict[str, np.ndarray]]
    summary: dict[str, dict[str, dict[str, Any]]]
    paired: dict[str, dict[str, dict[str, Any]]]
    ranks: dict[str, dict[str, dict[str, float]]]
    curves: dict[str, dict[str, list[float]]]
    seconds: dict[str, float]
    skipped: dict[str, dict[str, int]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        return self.plan.reference_row

    def to_markdown(self, **kwargs: Any) -> str:
        from caap_lens.evaluation.report import markdown

        return markdown(self, **kwargs)

    def to_html(self, path: str | Path | None = None, **kwargs: Any) -> str:
        from caap_lens.evaluation.report import html

        text = html(self, **kwargs)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_dict(self, per_unit: bool = False) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, dict):
                return {str(k): clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            if isinstance(v, (float, np.floating)):
                return None if math.isnan(float(v)) else round(float(v), 6)
            if isinstance(v, np.integer):
                return int(v)
            return v

        d = {"plan": self.plan.to_dict(), "plan_hash": self.plan.hash(), "rows": self.rows, "metrics": self.metrics,
             "reference": self.reference, "summary": self.summary, "paired": self.paired, "ranks": self.ranks,
             "curves": self.curves, "seconds_per_unit": self.seconds, "skipped": self.skipped, "meta": self.meta}
        if per_unit:
            d["units"] = [list(u) for u in self.units]
            d["values"] = {r: {k: v.tolist() for k, v in per.items()} for r, per in self.values.items()}
        return clean(d)

    def to_json(self, path: str | Path | None = None, per_unit: bool = False) -> str:
        text = json.dumps(self.to_dict(per_unit), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text


def merge(store_dir: str | Path, *, write: bool = False, n_boot: int = 1000) -> Results:
    """Merges every readable part of a store into `Results`.

    Args:
        store_dir: The store.
        write: Also write ``results.md``, ``results.html`` and ``results.json`` into the store.
        n_boot: Bootstrap resamples for the rank intervals.

    Raises:
        StoreError: not a store.
    """
    store = Store(store_dir)
    manifest = store.read_manifest()
    if manifest is None:
        raise StoreError(f"{store.path} is not a results store (no manifest.json)")
    plan = Plan.from_dict(manifest["plan"])
    rows = [m.name for m in plan.methods]
    row_of = {row: i for i, row in enumerate(rows)}
    metrics = list(plan.metrics)
    curve_keys = [k for k in metrics if METRICS[k].curve]
    # one pass over the parts, one part in memory at a time: scalar columns kept as small arrays,
    # curves summed as they come (a store of 50k images x 12 rows never becomes Python lists)
    report = ReadReport()
    unit_of: dict[tuple[str, int], int] = {}
    unit_item: list[int] = []
    seen: set[int] = set()
    duplicates = 0
    chunks: list[dict[str, np.ndarray]] = []
    curve_sum: dict[str, dict[str, np.ndarray]] = {k: {} for k in curve_keys}
    curve_n: dict[str, dict[str, np.ndarray]] = {k: {} for k in curve_keys}
    skip_parts: list[tuple[int, int, str]] = []
    codes: dict[str, int] = {}
    for path in store.part_files():
        try:
            t = store.read_part(path, manifest["plan_hash"])
        except StoreError as err:
            report.corrupt[path.name] = str(err)
            continue
        part_meta = json.loads(t.schema.metadata[META_KEY])
        report.items[path.name] = part_meta["items"]
        codes[part_meta.get("code") or "unrecorded"] = codes.get(part_meta.get("code") or "unrecorded", 0) + 1
        if t.num_rows == 0:
            continue
        ids, targets = t.column("id").to_pylist(), t.column("target").to_pylist()
        item_index, methods = t.column("item_index").to_pylist(), t.column("method").to_pylist()
        keep = np.zeros(t.num_rows, dtype=bool)
        u_arr = np.zeros(t.num_rows, dtype=np.int64)
        r_arr = np.zeros(t.num_rows, dtype=np.int64)
        for j in range(t.num_rows):
            if methods[j] not in row_of:
                continue
            key = (ids[j], int(targets[j]))
            u = unit_of.get(key)
            if u is None:
                u = unit_of[key] = len(unit_item)
                unit_item.append(int(item_index[j]))
            code = u * len(rows) + row_of[methods[j]]
            if code in seen:
                duplicates += 1
                continue
            seen.add(code)
            keep[j], u_arr[j], r_arr[j] = True, u, row_of[methods[j]]
        chunk = {"u": u_arr[keep], "r": r_arr[keep],
                 "score": _floats(t.column("score"))[keep], "seconds": _floats(t.column("seconds"))[keep]}
        for k in metrics:
            chunk[k] = _floats(t.column(k))[keep]
        chunks.append(chunk)
        skipped = t.column("skipped").to_pylist()
        for j in np.flatnonzero(keep):
            if skipped[j]:
                skip_parts.append((int(u_arr[j]), int(r_arr[j]), skipped[j]))
        for k in curve_keys:
            name = f"curve_{k}"
            if name not in t.column_names:
                continue
            col = t.column(name).combine_chunks()
            for ri, row in enumerate(rows):
                sel = np.flatnonzero(keep & (r_arr == ri))
                ys = [y for y in col.take(sel).to_pylist() if y is not None] if sel.size else []
                if not ys:
                    continue
                y = np.asarray(ys, dtype=np.float64)
                if row in curve_sum[k] and curve_sum[k][row].shape != y.shape[1:]:
                    continue  # another curve length: not averaged together
                curve_sum[k][row] = curve_sum[k].get(row, 0) + np.nansum(y, axis=0)
                curve_n[k][row] = curve_n[k].get(row, 0) + (~np.isnan(y)).sum(axis=0)
    expected_items = len(plan.item_indices(manifest["source"]["n"]))
    covered = {i for items in report.items.values() for i in items}
    meta: dict[str, Any] = {"store": str(store.path), "parts": len(report.items), "corrupt_parts": report.corrupt,
                            "items_expected": expected_items, "items_done": len(covered),
                            "source": manifest["source"], "model": manifest["model"], "duplicates": duplicates,
                            "code_versions": codes}
    # units in the data set's order
    keys = list(unit_of)
    order = sorted(range(len(keys)), key=lambda u: (unit_item[u], keys[u][0], keys[u][1]))
    position = np.empty(len(keys), dtype=np.int64)
    position[order] = np.arange(len(keys))
    units = [keys[u] for u in order]
    meta["units"] = len(units)
    n_units = len(units)
    values = {row: {k: np.full(n_units, np.nan) for k in metrics} for row in rows}
    present = {row: np.zeros(n_units, dtype=bool) for row in rows}
    skipped_mask = {row: {k: np.zeros(n_units, dtype=bool) for k in metrics} for row in rows}
    reasons: dict[str, dict[str, int]] = {k: {} for k in metrics}
    seconds: dict[str, list[float]] = {row: [] for row in rows}
    clean_score = np.full(n_units, np.nan)
    for chunk in chunks:
        pos = position[chunk["u"]]
        clean_score[pos] = chunk["score"]
        for ri, row in enumerate(rows):
            sel = chunk["r"] == ri
            present[row][pos[sel]] = True
            seconds[row].extend(chunk["seconds"][sel].tolist())
            for k in metrics:
                values[row][k][pos[sel]] = chunk[k][sel]
    for u, ri, text in skip_parts:
        row = rows[ri]
        for part in filter(None, text.split("; ")):
            k, _, why = part.partition(": ")
            if k in skipped_mask[row]:
                skipped_mask[row][k][position[u]] = True
                if ri == 0:
                    reasons[k][why] = reasons[k].get(why, 0) + 1
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        summary[row] = {}
        for k in metrics:
            v = values[row][k][present[row]]
            skip = skipped_mask[row][k][present[row]]
            cell = ci_cell(v[~skip])
            cell["n_skipped"] = int(skip.sum())
            cell["n_missing"] = int((~present[row]).sum())
            summary[row][k] = cell
    ref = plan.reference_row
    paired: dict[str, dict[str, dict[str, Any]]] = {row: {} for row in rows if row != ref}
    for k in metrics:
        p_raw = {}
        for row in paired:
            d = values[row][k] - values[ref][k]
            cell = ci_cell(d)
            n = cell["n"]
            finite = d[~np.isnan(d)]
            if n >= 2:
                sd = float(finite.std(ddof=1))
                tstat = (math.inf if cell["mean"] else 0.0) if sd == 0 else cell["mean"] / (sd / math.sqrt(n))
                cell["p"] = 1.0 if tstat == 0.0 else t_test_p(tstat, n - 1)
            else:
                cell["p"] = math.nan
            paired[row][k] = cell
            p_raw[row] = cell["p"]
        adjusted = holm(p_raw)
        for row in paired:
            paired[row][k]["p_holm"] = adjusted[row]
            paired[row][k]["significant"] = bool(adjusted[row] < 0.05) if not math.isnan(adjusted[row]) else False
    ranked = [m.name for m in plan.methods if m.fn_name != "random"]
    ranks: dict[str, dict[str, dict[str, float]]] = {}
    rng = np.random.default_rng(plan.seed)
    if units and ranked:
        boot_idx = rng.integers(0, len(units), size=(n_boot, len(units)))
        for k in metrics:
            direction = METRICS[k].direction
            mat = np.stack([values[row][k] for row in ranked])  # [rows, units]
            if not np.isfinite(mat).any():
                continue  # nothing scored (e.g. every unit skipped): no ranks, not "all tied"
            with np.errstate(all="ignore"):
                full = np.array([np.nanmean(x) if np.isfinite(x).any() else np.nan for x in mat])
                observed = _ranks_of(full[None], direction)[0]
                sums = np.nan_to_num(mat)[:, boot_idx].sum(-1)          # [rows, n_boot]
                counts = (~np.isnan(mat))[:, boot_idx].sum(-1)
                boot_means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).T  # [n_boot, rows]
            boot = _ranks_of(boot_means, direction)
            lo = np.percentile(boot, 2.5, axis=0, method="lower")  # ranks that occurred, not interpolated
            hi = np.percentile(boot, 97.5, axis=0, method="higher")
            ranks[k] = {row: {"rank": float(observed[i]), "lo": float(lo[i]), "hi": float(hi[i])}
                        for i, row in enumerate(ranked)}
    with np.errstate(all="ignore"):
        curves = {k: {row: (per[row] / np.maximum(curve_n[k][row], 1)).tolist() for row in rows if row in per}
                  for k, per in curve_sum.items()}
    meta["skip_reasons"] = reasons
    meta["clean_score_mean"] = float(np.nanmean(clean_score)) if len(units) else math.nan
    meta["clean_score_above_half"] = int(np.nansum(clean_score > 0.5)) if len(units) else 0
    results = Results(plan=plan, rows=rows, metrics=metrics, units=units, values=values, summary=summary,
                      paired=paired, ranks=ranks, curves=curves,
                      seconds={row: (float(np.mean(s)) if s else math.nan) for row, s in seconds.items()},
                      skipped={k: dict(v) for k, v in reasons.items()}, meta=meta)
    if write:
        results.to_json(store.path / "results.json")
        (store.path / "results.md").write_text(results.to_markdown())
        results.to_html(store.path / "results.html")
    return results


def load_results(store_dir: str | Path) -> Results:
    """Same as ``merge(store_dir)``: the tables of a store, however many ranks wrote it."""
    return merge(store_dir)

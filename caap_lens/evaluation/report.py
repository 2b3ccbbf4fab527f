"""Rendering `Results`: Markdown tables and a self-contained HTML page with plotly figures.

Tables (the same in both):

1. **Main table** — ``mean [95% CI] (n)`` per row × metric, the best mean per column in bold, and the
   method's time per unit; ``n`` is the number of values used in that cell.
2. **Counts** — per metric, values dropped (NaN from the metric), units skipped (with the reasons) and
   units missing (an unfinished store). Omitted when all are zero.
3. **Paired differences** — ``row − reference`` with its 95% CI, n, and Holm-adjusted p.
4. **Ranks** — the rank of each row's mean with its 95% bootstrap interval.

The HTML page embeds plotly.js (``include_plotlyjs=True``), so it works offline: mean metric curves
per row, and rank intervals per metric.
"""

from __future__ import annotations

import html as _html
import math
from collections.abc import Sequence
from typing import Any

from caap_lens.evaluation.metrics import METRICS


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def fmt_ci(c: dict[str, Any], digits: int = 3, n: bool = True) -> str:
    """``mean [lo, hi] (n)``; values under 0.01 in size switch to scientific notation."""
    if c is None or c.get("n", 0) == 0 or math.isnan(c["mean"]):
        return "n/a" + (f" ({c.get('n', 0)})" if n and c else "")
    vals = [c["mean"]] + [x for x in (c["lo"], c["hi"]) if not math.isnan(x)]
    spec = ".1e" if 0 < max(abs(x) for x in vals) < 0.01 else f".{digits}f"
    body = format(c["mean"], spec) if math.isnan(c["lo"]) else f"{c['mean']:{spec}} [{c['lo']:{spec}}, {c['hi']:{spec}}]"
    return body + (f" ({c['n']})" if n else "")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    sep = [":---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def arrow(key: str) -> str:
    return "↓" if METRICS[key].direction < 0 else "↑"


def _label(results: Any, row: str) -> str:
    spec = next(m for m in results.plan.methods if m.name == row)
    return f"*{row}*" if spec.fn_name == "random" else f"`{row}`"


def main_rows(results: Any, bold: bool = True) -> tuple[list[str], list[list[str]]]:
    header = ["method"] + [f"{METRICS[k].label} {arrow(k)}" for k in results.metrics] + ["ms / unit"]
    rows = []
    for row in results.rows:
        cells = [_label(results, row)]
        for k in results.metrics:
            text = fmt_ci(results.summary[row][k])
            if bold and results.ranks.get(k, {}).get(row, {}).get("rank") == 1.0:
                text = f"**{text}**"
            cells.append(text)
        cells.append(fmt(1000 * results.seconds[row], 1) if not math.isnan(results.seconds[row]) else "—")
        rows.append(cells)
    return header, rows


def count_lines(results: Any) -> list[str]:
    lines = []
    for k in results.metrics:
        dropped = {r: results.summary[r][k]["n_dropped"] for r in results.rows}
        skipped = results.summary[results.rows[0]][k]["n_skipped"]
        missing = {r: results.summary[r][k]["n_missing"] for r in results.rows}
        bits = []
        if any(dropped.values()):
            bits.append("NaN values dropped: " + ", ".join(f"`{r}` {v}" for r, v in dropped.items() if v))
        if skipped:
            why = "; ".join(f"{w} ({c})" for w, c in results.skipped.get(k, {}).items())
            bits.append(f"{skipped} unit(s) skipped ({why})")
        if any(missing.values()):
            bits.append("units not yet computed: " + ", ".join(f"`{r}` {v}" for r, v in missing.items() if v))
        if bits:
            lines.append(f"- {METRICS[k].label}: " + "; ".join(bits) + ".")
    return lines


def paired_rows(results: Any) -> tuple[list[str], list[list[str]]]:
    header = [f"method − `{results.reference}`"] + [f"{METRICS[k].label} {arrow(k)}" for k in results.metrics]
    rows = []
    for row, per in results.paired.items():
        cells = [_label(results, row)]
        for k in results.metrics:
            c = per[k]
            p = c.get("p_holm", math.nan)
            mark = " *" if c.get("significant") else ""
            cells.append(f"{fmt_ci(c)}, p_Holm {fmt(p, 3) if p >= 0.001 else '< 0.001'}{mark}"
                         if not math.isnan(p) else fmt_ci(c))
        rows.append(cells)
    return header, rows


def rank_rows(results: Any) -> tuple[list[str], list[list[str]]]:
    ranked_metrics = [k for k in results.metrics if k in results.ranks]
    header = ["method"] + [f"{METRICS[k].label}" for k in ranked_metrics] + ["mean rank"]
    rows = []
    ranked = list(next(iter(results.ranks.values()), {}))
    for row in ranked:
        cells = [_label(results, row)]
        rs = []
        for k in ranked_metrics:
            r = results.ranks[k][row]
            rs.append(r["rank"])
            cells.append(f"{r['rank']:g} [{r['lo']:g}, {r['hi']:g}]")
        cells.append(f"{sum(rs) / len(rs):.1f}")
        rows.append(cells)
    return header, rows


def markdown(results: Any, title: str | None = "Evaluation results", level: int = 2) -> str:
    """The four tables as Markdown (headings at ``level``)."""
    h = "#" * level
    m = results.meta
    parts = [f"# {title}", ""] if title else []
    partial = m.get("items_done", 0) < m.get("items_expected", 0)
    parts += [f"{m.get('units', 0)} (image, target) units from {m.get('items_done', 0)} of "
              f"{m.get('items_expected', 0)} items; plan `{results.plan.hash()}`; reference row "
              f"`{results.reference}`." + (" **Unfinished store: n per cell shows what is in.**" if partial else ""),
              ""]
    header, rows = main_rows(results)
    parts += [f"{h} Main table", "",
              "Mean [95% t interval] (n values used); ↓ lower is better, ↑ higher is better; best mean per "
              "column in bold.", "", table(header, rows), ""]
    counts = count_lines(results)
    if counts:
        parts += [f"{h} What was not counted", "", *counts, ""]
    if results.paired:
        header, rows = paired_rows(results)
        parts += [f"{h} Paired differences against `{results.reference}`", "",
                  "Mean of (method − reference) over the units both scored, 95% t interval, (n); p of the paired "
                  "t-test, Holm-adjusted over the methods compared on each metric; * = p_Holm < 0.05.", "",
                  table(header, rows), ""]
    if results.ranks:
        header, rows = rank_rows(results)
        parts += [f"{h} Ranks with 95% bootstrap intervals", "",
                  f"Rank of the mean (1 = best, ties averaged) and its 95% interval over "
                  f"bootstrap resamples of the units.", "", table(header, rows), ""]
    if len(m.get("code_versions", {})) > 1:
        parts += ["**Parts computed by " + str(len(m["code_versions"])) + " versions of the caap_lens code** "
                  "(parts per version: " + ", ".join(f"`{c}` {n}" for c, n in m["code_versions"].items())
                  + "): a resumed store mixes them; rerun into a new store for one version.", ""]
    if m.get("corrupt_parts"):
        parts += [f"Corrupt parts ignored: {', '.join(m['corrupt_parts'])}.", ""]
    return "\n".join(parts)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str, tag: str) -> str:
        t = _html.escape(text)
        if t.startswith("**") and t.endswith("**"):
            t = f"<b>{t[2:-2]}</b>"
        elif t.startswith("*") and t.endswith("*") and len(t) > 2:
            t = f"<i>{t[1:-1]}</i>"
        t = t.replace("`", "")
        return f"<{tag}>{t}</{tag}>"

    head = "".join(cell(x, "th") for x in header)
    body = "".join("<tr>" + "".join(cell(x, "td") for x in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figures(results: Any) -> list[Any]:
    """plotly figures: mean curve per curve metric, rank intervals per metric."""
    import plotly.graph_objects as go

    figs = []
    for k, per in results.curves.items():
        if not per:
            continue
        fig = go.Figure()
        for row, y in per.items():
            x = [i / (len(y) - 1) for i in range(len(y))] if len(y) > 1 else [0.0]
            if k in ("positive", "negative"):
                x = [0.1 * i for i in range(len(y))]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=row))
        fig.update_layout(title=f"{METRICS[k].label}: mean curve per method", xaxis_title="fraction of patches",
                          yaxis_title=f"score ({results.plan.score})", height=380, margin=dict(t=50, b=40))
        figs.append(fig)
    if results.ranks:
        fig = go.Figure()
        for k in [m for m in results.metrics if m in results.ranks]:
            per = results.ranks[k]
            names = list(per)
            fig.add_trace(go.Scatter(
                x=[per[r]["rank"] for r in names], y=names, mode="markers", name=METRICS[k].label,
                error_x=dict(type="data", symmetric=False, array=[per[r]["hi"] - per[r]["rank"] for r in names],
                             arrayminus=[per[r]["rank"] - per[r]["lo"] for r in names])))
        fig.update_layout(title="Rank (1 = best) with 95% bootstrap interval", xaxis_title="rank",
                          height=120 + 40 * len(next(iter(results.ranks.values()))), margin=dict(t=50, b=40))
        figs.append(fig)
    return figs


def html(results: Any, title: str = "caap_lens evaluation") -> str:
    """A self-contained HTML page (plotly.js embedded once; works offline)."""
    blocks = []
    for i, fig in enumerate(figures(results)):
        blocks.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    sections = [f"<h1>{_html.escape(title)}</h1>",
                f"<p>{results.meta.get('units', 0)} units from {results.meta.get('items_done', 0)} of "
                f"{results.meta.get('items_expected', 0)} items; plan {results.plan.hash()}; reference "
                f"{_html.escape(results.reference)}.</p>", "<h2>Main table</h2>",
                "<p>Mean [95% t interval] (n values used).</p>", _html_table(*main_rows(results))]
    counts = count_lines(results)
    if counts:
        sections += ["<h2>What was not counted</h2><ul>"
                     + "".join(f"<li>{_html.escape(c[2:]).replace('`', '')}</li>" for c in counts) + "</ul>"]
    if results.paired:
        sections += [f"<h2>Paired differences against {_html.escape(results.reference)}</h2>",
                     "<p>Holm-adjusted p per metric; * = p<sub>Holm</sub> &lt; 0.05.</p>",
                     _html_table(*paired_rows(results))]
    if results.ranks:
        sections += ["<h2>Ranks with 95% bootstrap intervals</h2>", _html_table(*rank_rows(results))]
    sections += ["<h2>Figures</h2>", *blocks]
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")

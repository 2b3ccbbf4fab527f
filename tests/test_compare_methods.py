"""benchmarks/compare_methods.py, the thin call into `caap_lens.evaluation` that writes docs/results.md.

The plans it builds (checked on a tiny model's shapes) and the page it renders, end to end on two
bundled scenes with three methods; the numbers mean nothing at that size.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_methods", ROOT / "benchmarks" / "compare_methods.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_methods"] = module
    spec.loader.exec_module(module)
    return module


def test_plans():
    cm = _load_script()
    plan = cm.main_plan(["caap", "rise"], rise_masks=10).validate()
    assert [m.name for m in plan.methods] == ["caap", "rise", "random"]
    assert plan.methods[1].options == {"n_masks": 10, "score": "sigmoid"}
    assert plan.score == "sigmoid" and plan.targets == "all_present" and plan.reference == "caap"
    grid = cm.grid_plan(4, limit=3).validate()
    assert len(grid.methods) == 10 * len(cm.GRID_CONTEXTS)  # every window of 4 blocks x every context
    assert grid.reference == "caap [1, 2) mean"
    assert any(m.options["context"] == "@mean_activation" for m in grid.methods)
    assert len({m.name for m in grid.methods}) == len(grid.methods)


def _need_bundled():
    try:
        from caap_lens.loading.bundled import bundled_path

        bundled_path("fashion-scenes-vit", "model.safetensors")
        bundled_path("fashion-scenes-vit", "test_scenes.npz")
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"no bundled model: {err}")


def test_page_on_two_bundled_scenes(tmp_path):
    _need_bundled()
    cm = _load_script()
    out, js = tmp_path / "results.md", tmp_path / "results.json"
    args = ["--limit", "2", "--methods", "caap,rollout,rise", "--rise-masks", "8", "--skip-grid", "--sanity-pairs", "2",
            "--threads", "1", "--store", str(tmp_path / "store"), "--out", str(out), "--json", str(js)]
    result = cm.main(args)
    text = out.read_text()
    for section in ("## Setup", "## Main table", "## Paired differences against `caap`",
                    "## Ranks with 95% bootstrap intervals", "## CAAP's rank per metric",
                    "## Attribution patching vs exact CAAP", "## Model-randomisation sanity check",
                    "## Reading the table"):
        assert section in text, section
    assert "window × neutral context" not in text and result["grid"] is None
    assert set(result["meta"]["sanity"]) == {"caap", "rollout"}  # the plan's rows among the sanity methods
    assert -1 <= result["meta"]["fidelity"]["spearman"]["mean"] <= 1
    assert "**Subset run**" in text and "--limit 2" in text and "sigmoid probability" in text
    n_units = result["main"]["meta"]["units"]
    assert n_units >= 2
    assert re.search(rf"\[-?[\d.e-]+, -?[\d.e-]+\] \({n_units}\)", text)  # n in the cells
    saved = json.loads(js.read_text())
    assert set(saved["main"]["values"]) == {"caap", "rollout", "rise", "random"}
    assert (tmp_path / "store" / "main" / "results.html").exists()
    # a second call resumes: nothing is computed again, the page is the same but for the timing line
    again = cm.main(args)
    assert again["main"]["summary"] == result["main"]["summary"]


@pytest.mark.slow
def test_grid_section_on_one_bundled_scene(tmp_path):
    """The window x context rows (50 CAAP settings on a 4-block model) and their tables."""
    _need_bundled()
    cm = _load_script()
    out = tmp_path / "results.md"
    result = cm.main(["--limit", "1", "--methods", "caap,rollout", "--grid-limit", "1", "--grid-steps", "2",
                      "--sanity-pairs", "0", "--skip-fidelity", "--threads", "1", "--store", str(tmp_path / "store"), "--out", str(out)])
    text = out.read_text()
    assert "## CAAP's open choices: window × neutral context" in text
    assert text.count("window \\ context") == len(cm.GRID_METRICS)
    assert len(result["grid"]["rows"]) == 10 * len(cm.GRID_CONTEXTS)
    assert "(default)" in text

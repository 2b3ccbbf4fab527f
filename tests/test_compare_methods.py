"""Smoke test of benchmarks/compare_methods.py: 2 scenes, a tiny random-init ViT, 2 methods.

Checks the structure of what the script produces (results dict, markdown tables) and that every
95% interval brackets its mean; the numbers themselves mean nothing on a random model.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_timm

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["caap", "rollout"]


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_methods", ROOT / "benchmarks" / "compare_methods.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_methods"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


class TinyScenes:
    """Two 64x64 scenes with 2 and 1 items (rectangles): just what the script reads from a SceneSet."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
        self.labels = np.zeros((2, 10), dtype=np.float32)
        self.masks = {(0, 1): (slice(0, 24), slice(0, 30)), (0, 7): (slice(30, 60), slice(20, 50)),
                      (1, 3): (slice(10, 40), slice(10, 40))}
        for i, cls in self.masks:
            self.labels[i, cls] = 1.0

    def __len__(self) -> int:
        return 2

    def class_mask(self, i: int, cls: int) -> np.ndarray:
        mask = np.zeros((64, 64), dtype=bool)
        if (i, cls) in self.masks:
            mask[self.masks[(i, cls)]] = True
        return mask


@pytest.fixture(scope="module")
def run():
    from caap_lens import HookedViT

    cm = _load_script()
    model = HookedViT.from_timm(make_timm("vit_tiny_patch16_224", seed=11, depth=2, img_size=64, num_classes=10))
    settings = cm.Settings(methods=METHODS, batch_size=128, chunk=2, grid_steps=4,
                           sanity_methods=["caap", "rollout"], sanity_pairs=2)
    results = cm.run_comparison(model, TinyScenes(), settings)
    meta = {"command": "test", "date": "-", "machine": "-", "torch": torch.__version__, "threads": 1,
            "device": "cpu", "model": "tiny", "model_desc": "random init"}
    return cm, results, cm.render_markdown(results, meta)


def _brackets(c: dict) -> bool:
    return c["lo"] - 1e-9 <= c["mean"] <= c["hi"] + 1e-9


def test_results_structure_and_intervals(run):
    cm, results, _ = run
    assert results["n_scenes"] == 2 and results["n_pairs"] == 3  # one pair per class present
    assert results["methods"] == METHODS
    rows = METHODS + [cm.RANDOM]
    assert set(results["summary"]) == set(rows)
    for method in rows:
        assert set(results["summary"][method]) == set(cm.METRICS)
        for key, c in results["summary"][method].items():
            if c["n"] >= 2:  # a t interval needs two values
                assert _brackets(c), (method, key, c)
    for key, ranks in results["ranks"].items():
        assert set(ranks) == set(METHODS) and min(ranks.values()) == 1, key
    assert set(results["seconds_per_image"]) == set(METHODS)
    assert all(s > 0 for s in results["seconds_per_image"].values())
    # grid: every (window, context) of the 2-layer model, the default window among them
    grid = results["grid"]
    assert len(grid["windows"]) == 3 and grid["contexts"] == list(cm.GRID_CONTEXTS)
    assert len(grid["cells"]) == 3 * len(cm.GRID_CONTEXTS)
    assert results["default_window"] in grid["windows"]
    assert -1 <= results["fidelity"]["spearman"]["mean"] <= 1
    assert set(results["sanity"]) == {"caap", "rollout"}
    assert len(results["sanity"]["caap"]["mean_spearman"]) == 3  # head only, blocks >= 1, blocks >= 0


def test_markdown_tables(run):
    _, results, markdown = run
    for section in ("## Main table", "## CAAP's rank per metric", "window × neutral context",
                    "## Attribution patching vs exact CAAP", "## Model-randomisation sanity check",
                    "## Reading the table"):
        assert section in markdown
    lines = markdown.splitlines()
    start = lines.index("## Main table") + 2
    table = [line for line in lines[start:start + 10] if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[0] == "method" and header[-1] == "ms / image" and len(header) == 9
    body = table[2:]
    assert [r.split("|")[1].strip() for r in body] == ["`caap`", "`rollout`", "*random (reference)*",
                                                       "*chance level*"]
    bracketed = 0
    for row in body:
        for cell in row.strip("|").split("|")[1:]:
            m = re.fullmatch(r"\**(-?[\d.]+) \[(-?[\d.]+), (-?[\d.]+)\]\**", cell.strip())
            if m:
                mean, lo, hi = map(float, m.groups())
                assert lo <= mean <= hi, cell
                bracketed += 1
    assert bracketed >= 3 * 5
    caap_lines = [line for line in lines if line.startswith("- ") and "CAAP ranks" in line]
    assert len(caap_lines) == len(results["ranks"])
    assert not any(math.isnan(v) for v in results["seconds_per_image"].values())


def test_cli_on_bundled_model(tmp_path):
    """The command line end to end on one bundled scene (whatever model is bundled right now)."""
    try:
        from caap_lens.loading.bundled import bundled_path

        bundled_path("fashion-scenes-vit", "model.safetensors")
        bundled_path("fashion-scenes-vit", "test_scenes.npz")
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"no bundled model: {err}")
    cm = _load_script()
    out, js = tmp_path / "results.md", tmp_path / "results.json"
    results = cm.main(["--limit", "1", "--methods", "caap,rollout", "--skip-grid", "--sanity-pairs", "0",
                       "--threads", "1", "--out", str(out), "--json", str(js)])
    text = out.read_text()
    assert "**Subset run**: 1 of" in text and "--limit 1" in text and "sigmoid probability" in text
    assert "grid" not in results and "sanity" not in results
    import json

    saved = json.loads(js.read_text())
    assert saved["n_pairs"] == results["n_pairs"] >= 1
    assert set(saved["per_pair"]["values"]) == {"caap", "rollout", cm.RANDOM}

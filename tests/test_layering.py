"""The package layout is the architecture: every import (module level or inside a function) points
from a layer to one listed before it in README.md's Layout section, never the other way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "caap_lens"

# README.md's order, top (imported by everyone) to bottom; names in one group are one layer.
LAYERS = [
    {"config", "grid", "pos_embed", "preprocessing", "stats", "data", "_timm", "_deprecation", "_version"},
    {"converters"},
    {"model"},
    {"loading"},
    {"patching"},
    {"attribution"},
    {"sweeps"},
    {"baselines", "metrics"},
    {"evaluation"},
    {"plot", "report", "cli", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute caap_lens import in a file, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
    return [(line, m) for line, m in out if m.split(".")[0] == "caap_lens" and "." in m]


def _layer_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def test_every_module_belongs_to_a_layer():
    tops = {_layer_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert tops <= set(RANK), f"modules in no layer (add them to README.md's Layout and here): {tops - set(RANK)}"


def test_imports_point_up_the_layers_only():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _layer_of(path)
        if me == "__init__":  # caap_lens/__init__.py: the lazy public names of every layer
            continue
        for line, module in _imports(path):
            other = module.split(".")[1]
            if other != me and other in RANK and RANK[other] > RANK[me]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({me}) imports {module} ({other})")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_the_readme_lists_the_layers_in_this_order():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    listed = [re.split(r"[/,. ]", line.strip())[0] for line in block.splitlines()
              if line.startswith("  ") and not line.startswith("   ")]
    ranks = [RANK[name] for name in listed if name in RANK]
    assert ranks == sorted(ranks), f"README.md's Layout lists the layers out of order: {listed}"


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from caap_lens.cli import main\n", encoding="utf-8")
    assert _imports(bad) == [(2, "caap_lens.cli")]

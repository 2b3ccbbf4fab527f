"""The tutorial notebooks in notebooks/: stored clean (fast test), and each one runs top to bottom (slow).

The notebooks assert the invariants they demonstrate, so running them checks the library as well as
the tutorials. This module runs them from the normal test suite (``pytest -m slow``, part of ``make
test``) with nbclient, in the repository's own interpreter. Each executed copy, outputs included, is
written to build/notebooks/ and stamped with the sha256 of its source; the docs build
(docs/notebook_pages.py) renders those copies into the site instead of executing the notebooks again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
EXECUTED_DIR = NOTEBOOK_DIR.parent / "build" / "notebooks"  # read by the docs build (docs/notebook_pages.py)
STAMP = "caap_lens_source_sha256"  # the same metadata key as docs/notebook_pages.py
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = [
    "01_quickstart.ipynb",
    "02_windows_and_contexts.ipynb",
    "03_heads_and_circuits.ipynb",
    "04_caap_vs_baselines.ipynb",
    "05_your_own_timm_model.ipynb",
    "06_real_dinov2_photos.ipynb",
]
CELL_TIMEOUT_S = 600  # one cell; a whole notebook takes well under this on 2 CPU cores


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def test_all_notebooks_present():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean(path: Path):
    """No outputs or execution counts in the repository (CI executes them), a title, offline set-up."""
    cells = _cells(path)
    assert cells[0]["cell_type"] == "markdown" and _source(cells[0]).startswith("# "), "first cell: a # title"
    for cell in cells:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name}: clear outputs before saving"
            assert cell.get("execution_count") is None, f"{path.name}: clear execution counts before saving"
    first_code = next(_source(c) for c in cells if c["cell_type"] == "code")
    assert 'os.environ["HF_HUB_OFFLINE"] = "1"' in first_code
    assert any("assert" in _source(c) for c in cells if c["cell_type"] == "code")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path):
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat (pip install -e '.[dev]')")
    nbclient = pytest.importorskip("nbclient", reason="notebook tests need nbclient (pip install -e '.[dev]')")
    pytest.importorskip("ipykernel", reason="notebook tests need ipykernel (pip install ipykernel)")

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    notebook = nbformat.read(path, as_version=4)
    # kernel "python3" is started with this interpreter (jupyter_client swaps in sys.executable for a
    # kernelspec that says "python"/"python3"), so the kernel sees the caap_lens under test.
    client = nbclient.NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    client.execute(env=env)
    seconds = time.perf_counter() - start
    print(f"{path.name}: {seconds:.1f} s")
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    notebook.metadata[STAMP] = digest
    EXECUTED_DIR.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, EXECUTED_DIR / path.name)


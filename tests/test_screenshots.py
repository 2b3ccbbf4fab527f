"""What a reader sees: the report and two documentation pages, rendered in headless Chromium.

The docs pages are built from the real docs/ sources with the site's own theme and CSS (the notebook
hook, the notebook pages and the API pages are left out: they need executed notebooks and import the
package, and are checked by ``make docs``). Each screenshot must be drawn (not blank) and the page's
key elements must be in the rendered DOM (after scripts ran), and the site's stylesheet that keeps wide
code and tables scrollable must be applied.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p and Path(p).exists()), None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt: chromium)"),
]
WIDTH, HEIGHT = 1400, 1000


def _chromium(url: str, tmp: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp / 'profile'}", f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=5000",
           *flags, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _screenshot(url: str, tmp: Path) -> np.ndarray:
    from PIL import Image

    shot = tmp / "shot.png"
    shot.unlink(missing_ok=True)
    proc = _chromium(url, tmp, f"--screenshot={shot}")
    assert shot.exists(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)


def _dom(url: str, tmp: Path) -> str:
    proc = _chromium(url, tmp, "--dump-dom")
    assert proc.returncode == 0 and "<body" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def _drawn(pixels: np.ndarray) -> None:
    assert pixels.shape[:2] == (HEIGHT, WIDTH)
    assert pixels.std() > 20, "the page is blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200, "the page has almost no content"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The home and results pages, built by mkdocs with the site's theme and CSS."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    out = tmp_path_factory.mktemp("site")
    config.update(
        docs_dir=str(ROOT / "docs"), site_dir=str(out / "site"), strict=False, hooks=[],
        nav=[{"Home": "index.md"}, {"Results": "results_testbed.md"}],
        plugins=["search"], exclude_docs="*.py\nnotebooks/\napi/\nhowto/\n",
    )
    config_file = out / "mkdocs.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    proc = subprocess.run(["python", "-m", "mkdocs", "build", "-q", "-f", str(config_file)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "site"


def test_the_report_is_drawn_with_its_key_elements(tmp_path):
    from caap_lens.cli import main

    out = tmp_path / "out"
    assert main(["explain", "--scene", "0", "--depth-patches", "4", "--out", str(out)]) == 0
    report = next(out.glob("*/report.html"))
    _drawn(_screenshot(report.as_uri(), tmp_path))
    dom = _dom(report.as_uri(), tmp_path)
    assert dom.count('class="plotly-graph-div') >= 3 and "main-svg" in dom  # plotly drew its figures
    for text in ("Top 5 patches", "Weights", "no effect"):
        assert text in dom, f"{text!r} is not on the report page"
    index = out / "index.html"
    assert "report.html" in _dom(index.as_uri(), tmp_path)


def test_the_home_page_is_drawn_with_its_quick_start(site, tmp_path):
    page = (site / "index.html").as_uri()
    _drawn(_screenshot(page, tmp_path))
    dom = _dom(page, tmp_path)
    assert "caap_lens" in dom and "<pre" in dom and "Where to go next" in dom


def test_the_results_page_is_drawn_with_its_table_and_the_site_css(site, tmp_path):
    page = (site / "results_testbed" / "index.html")
    page = page if page.exists() else site / "results_testbed.html"
    _drawn(_screenshot(page.as_uri(), tmp_path))
    dom = _dom(page.as_uri(), tmp_path)
    assert "<table" in dom and "CAAP" in dom
    # the stylesheet that keeps wide tables and code readable is the site's own and is applied
    css = (site / "css" / "extra.css").read_text(encoding="utf-8")
    assert "overflow-x" in css and "extra.css" in dom

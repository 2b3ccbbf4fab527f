"""MkDocs hook: the tutorial notebooks (notebooks/*.ipynb) as pages of the site, outputs included.

The notebooks are stored without outputs. The slow test (tests/test_notebooks.py) executes each one and
writes the executed copy to build/notebooks/, stamped with the sha256 of the source it ran. This hook
uses that copy when its stamp matches the notebook in notebooks/, and otherwise executes the notebook
itself (same kernel, working directory and environment as the test) and keeps the copy for the next
build. So `make test`, which runs the slow tests before the docs, executes every notebook once, and a
plain `mkdocs build` on a fresh checkout still shows every output. The copies are not re-made when
only the library changes: delete build/notebooks/ (or run `pytest -m slow`) to refresh them.

Plotly figures are stored in a notebook as plotly JSON only, which nbconvert (and so mkdocs-jupyter)
does not render. The hook turns each into the div and `Plotly.newPlot` call that plotly itself writes,
and a page with figures loads plotly.js from js/plotly.min.js, copied into the site from the installed
plotly package: the pages work offline and load nothing from a CDN. mkdocs-jupyter (plugins in
mkdocs.yml, with `execute: false`) then renders the prepared copies under notebooks/ in the site.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.notebook_pages")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
EXECUTED_DIR = ROOT / "build" / "notebooks"  # written by tests/test_notebooks.py, or by this hook
# executed copies with plotly figures as HTML, at PAGES_DIR/notebooks/<name>: PAGES_DIR plays the docs dir
PAGES_DIR = ROOT / "build" / "notebook_pages"
STAMP = "caap_lens_source_sha256"  # notebook metadata key: sha256 of the source that was executed
CELL_TIMEOUT_S = 600
PLOTLY_MIME = "application/vnd.plotly.v1+json"
PLOTLY_JS = "js/plotly.min.js"
SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b[^>]*>.*?</\1>", re.DOTALL | re.IGNORECASE)
PLACEHOLDER = re.compile(r"<!-- notebook_pages block (\d+) -->")
_set_aside: dict[str, list[str]] = {}  # src_uri -> the blocks on_page_content set aside, for on_post_page
# tqdm's warning that ipywidgets is missing: a fact about the headless kernel, not about the notebook
HEADLESS_NOISE = "TqdmWarning: IProgress not found"
# nbconvert's template always writes a MathJax loader (here with an empty URL) and a Mermaid loader that
# imports from a CDN; the notebooks have neither maths nor diagrams, so both are dropped from the pages.
UNUSED_LOADERS = re.compile(
    r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->"
    r"|<script type=\"module\">(?:(?!</script>).)*?mermaid(?:(?!</script>).)*?</script>",
    re.DOTALL,
)


def source_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def executed_copy(source: Path):
    """The executed notebook for ``source``: the stamped copy in build/notebooks/, or a fresh run."""
    import nbformat

    digest = source_sha256(source)
    copy = EXECUTED_DIR / source.name
    if copy.exists():
        notebook = nbformat.read(copy, as_version=4)
        if notebook.metadata.get(STAMP) == digest:
            log.info("%s: using the executed copy in %s", source.name, copy.parent.relative_to(ROOT))
            return notebook
        log.info("%s: the executed copy is of an older version; executing it", source.name)
    else:
        log.info("%s: no executed copy in %s; executing it", source.name, copy.parent.relative_to(ROOT))

    import nbclient

    notebook = nbformat.read(source, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    start = time.perf_counter()
    client.execute(env={**os.environ, "HF_HUB_OFFLINE": "1"})  # raises on the first failing cell
    log.info("%s: executed in %.1f s", source.name, time.perf_counter() - start)
    notebook.metadata[STAMP] = digest
    EXECUTED_DIR.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, copy)
    return notebook


def plotly_outputs_as_html(notebook, name: str) -> int:
    """Replace each plotly JSON output by plotly's own HTML for it (without plotly.js); returns the count.

    The divs get ids from ``name`` and a counter instead of plotly's random ones, so that rebuilding the
    site from the same copies gives the same pages.
    """
    import plotly.io as pio

    count = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            figure = output.get("data", {}).get(PLOTLY_MIME)
            if figure is None:
                continue
            html = pio.to_html(dict(figure), include_plotlyjs=False, full_html=False, validate=False,
                               div_id=f"{name}-figure-{count}", config={"displaylogo": False})
            output["data"] = {"text/html": html}
            count += 1
    return count


def drop_headless_noise(notebook) -> None:
    """Remove stderr outputs that only say the executing kernel had no ipywidgets."""
    for cell in notebook.cells:
        if "outputs" in cell:
            cell.outputs = [o for o in cell.outputs
                            if not (o.get("name") == "stderr" and HEADLESS_NOISE in o.get("text", ""))]


@event_priority(50)  # before mkdocs-jupyter's on_files, so that it turns these files into pages
def on_files(files, config):
    import nbformat
    import plotly

    (PAGES_DIR / "notebooks").mkdir(parents=True, exist_ok=True)
    for source in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        notebook = executed_copy(source)
        drop_headless_noise(notebook)
        figures = plotly_outputs_as_html(notebook, source.stem)
        src_uri = f"notebooks/{source.name}"
        nbformat.write(notebook, PAGES_DIR / src_uri)
        log.debug("%s: %d plotly figures", source.name, figures)
        # a File with a src_dir, not File.generated: mkdocs-jupyter's page wrapper needs abs_src_path
        # derived from src_dir
        files.append(File(src_uri, src_dir=str(PAGES_DIR), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    files.append(File.generated(config, PLOTLY_JS, abs_src_path=str(plotly_js)))
    return files


def on_page_content(html, page, config, files):
    """Drop the unused loaders; load the site's copy of plotly.js ahead of a notebook page's figures.

    The page's script and style blocks (figure data, the notebook CSS) are then set aside behind
    placeholder comments until on_post_page puts them back, so that the search plugin, which reads the
    content in between, indexes the notebook's text and not megabytes of JSON and CSS.
    """
    if not page.file.src_uri.startswith("notebooks/"):
        return html
    html = UNUSED_LOADERS.sub("", html)
    if "plotly-graph-div" in html:
        src = files.get_file_from_path(PLOTLY_JS).url_relative_to(page.file)
        html = f'<script src="{src}"></script>\n' + html
    blocks = _set_aside[page.file.src_uri] = []

    def placeholder(match):
        blocks.append(match.group(0))
        return f"<!-- notebook_pages block {len(blocks) - 1} -->"

    return SCRIPT_OR_STYLE.sub(placeholder, html)


def on_post_page(output, page, config):
    """Put a notebook page's script and style blocks back in place of their placeholders."""
    blocks = _set_aside.pop(page.file.src_uri, None)
    if blocks is None:
        return output
    return PLACEHOLDER.sub(lambda match: blocks[int(match.group(1))], output)

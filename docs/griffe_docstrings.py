"""A griffe extension for the docs build: reads caap_lens's docstrings as they are written.

The library's docstrings are Google style with three habits that griffe (mkdocstrings' parser) reads
differently from Python's ``help()`` and Sphinx/napoleon; this rewrites them *for the site only*,
before they are parsed (the source files are not touched):

* ``Example:`` (singular) is griffe's generic admonition, whose body is Markdown: ``>>>`` lines would
  become nested block quotes. A block with ``>>>`` lines is renamed ``Examples:`` (griffe's doctest
  section: code blocks); a block without (shell commands) keeps its title and becomes a code block.
* reStructuredText "simple tables" (``====  ====`` borders) become Markdown tables.
* A paragraph ending in ``::`` (reST's literal-block marker) ends in ``:``; the indented block after
  it is already a Markdown code block.

Used from mkdocs.yml: ``extensions: [docs/griffe_docstrings.py]`` in the mkdocstrings python handler.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(?P<indent>\s*)Example:\s*$")
_BORDER = re.compile(r"^(?P<indent>\s*)=+(?:\s+=+)+\s*$")
_LITERAL = re.compile(r"(?<=\S)::\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """Index after the block of lines indented deeper than ``indent`` that starts at ``start``."""
    end = start
    for i in range(start, len(lines)):
        if lines[i].strip() and _indent(lines[i]) <= indent:
            break
        end = i + 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return end


def _examples(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _EXAMPLE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = len(match["indent"])
        end = _block_end(lines, i + 1, indent)
        body = lines[i + 1 : end]
        if any(line.strip().startswith(">>>") for line in body):
            out.append(" " * indent + "Examples:")
            out.extend(body)
        else:
            inner = min((_indent(line) for line in body if line.strip()), default=indent + 4)
            out.append(lines[i])
            out.append(" " * inner + "```console")
            out.extend(body)
            out.append(" " * inner + "```")
        i = end
    return out


def _spans(border: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"=+", border)]


def _cells(line: str, spans: list[tuple[int, int]]) -> list[str]:
    cells = []
    for k, (start, end) in enumerate(spans):
        stop = spans[k + 1][0] if k + 1 < len(spans) else len(line)
        cells.append(line[start:stop].strip())
    return cells


def _row(cells: list[str], indent: str) -> str:
    return indent + "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _tables(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _BORDER.match(lines[i])
        # a table: border, header line(s), border, rows, border
        if not match:
            out.append(lines[i])
            i += 1
            continue
        borders = [j for j in range(i, len(lines)) if _BORDER.match(lines[j])]
        if len(borders) < 3 or any(not lines[j].strip() for j in range(i, borders[2])):
            out.append(lines[i])
            i += 1
            continue
        indent, spans = match["indent"], _spans(lines[i])
        header = [" ".join(parts).strip() for parts in zip(*(_cells(l, spans) for l in lines[i + 1 : borders[1]]))]
        rows: list[list[str]] = []
        for line in lines[borders[1] + 1 : borders[2]]:
            cells = _cells(line, spans)
            if rows and not cells[0]:  # continuation line: first column empty
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
            else:
                rows.append(cells)
        if out and out[-1].strip():
            out.append("")
        out.append(_row(header, indent))
        out.append(indent + "|" + "|".join("---" for _ in spans) + "|")
        out.extend(_row(r, indent) for r in rows)
        i = borders[2] + 1
    return out


def _literals(lines: list[str]) -> list[str]:
    out = []
    for k, line in enumerate(lines):
        nxt = next((l for l in lines[k + 1 :] if l.strip()), "")
        if _LITERAL.search(line) and _indent(nxt) > _indent(line):
            line = _LITERAL.sub(":", line)
        out.append(line)
    return out


def rewrite(text: str) -> str:
    """The docstring as griffe should read it (see the module docstring)."""
    return "\n".join(_literals(_tables(_examples(text.split("\n")))))


class CaapDocstrings(griffe.Extension):
    """Rewrites each docstring before griffe parses it."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)

"""Run the Python code of documentation pages (imported by ``test_docs.py``; not a test module).

The conventions, for whoever writes a page:

* Every fenced block whose info string starts with ``python`` (or ``py``) runs. A page's blocks
  run top to bottom in one namespace, like the cells of a notebook, in a fresh temporary working
  directory (files a page writes land there); ``print`` what the reader should see, and show
  the output in a separate ````text```` block (it is not compared: figures vary with the
  versions, the checks belong in the tests).
* A block that cannot run in CI (it needs a GPU, ``torchrun``, downloaded weights, a data set on
  disk, or starts a server that blocks) has the line ``<!-- notest: why -->`` right above its
  fence (the reason is required; the comment does not show on the site). Give the page a
  runnable variant of it where one is feasible (a single-process run, the demo models).
* Fences of other languages (``text``, ``bash``, ``json``, none) never run.

Usage: ``python _run_pages.py RESULT.json PAGE.md ...`` runs the pages one after the other in
this one process (torch, timm and the demo models are imported once) and writes, per page,
``{"ok": bool, "error": traceback or "", "blocks": n, "skipped": n, "seconds": s}``. Tracebacks
name the page and its line numbers. After each page the process must be as it was: an open
``torch.distributed`` process group is closed and reported as an error.

Why not a library (mktestdocs, pytest-markdown-docs): this needs a skip marker that carries its
reason and is invisible on the site, a fresh working directory per page, the page's own line
numbers in tracebacks, and all pages in one child process (imports paid once, the test process
never touched, state a page leaves behind detected); the extraction is a few dozen lines and no
further dependency.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_NOTEST = re.compile(r"^\s*<!--\s*notest\b(?P<colon>:?)(?P<reason>.*?)-->\s*$")
PYTHON = {"python", "py", "python3"}


@dataclass(frozen=True)
class Block:
    """One fenced code block: its first code line (1-based), language, code and skip reason."""

    line: int
    language: str
    code: str
    notest: str | None = None


def extract_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, in order; ``notest`` holds the marker's reason.

    Raises ``ValueError`` for an unclosed fence or a ``notest`` marker without a reason.
    """
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence = len(match["indent"]), match["fence"]
        language = (match["info"].split() or [""])[0].lower()
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not re.match(
            rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[i]
        ):
            body.append(_dedent(lines[i], indent))
            i += 1
        if i == len(lines):
            raise ValueError(f"line {start}: the {fence} fence is never closed")
        previous = next((ln for ln in reversed(lines[: start - 1]) if ln.strip()), "")
        marker = _NOTEST.match(previous)
        reason = None
        if marker is not None:
            reason = marker["reason"].strip()
            if not marker["colon"] or not reason:
                raise ValueError(f"line {start - 1}: write the reason: <!-- notest: why -->")
        blocks.append(Block(start + 1, language, "\n".join(body) + "\n", reason))
        i += 1
    return blocks


def _dedent(line: str, indent: int) -> str:
    """``line`` without the fence's indent (a fence inside a list item is indented)."""
    return line[indent:] if not line[:indent].strip() else line.lstrip()


def python_blocks(text: str) -> tuple[list[Block], list[Block]]:
    """The Python blocks of a page: (those that run, those marked ``notest``)."""
    blocks = [b for b in extract_blocks(text) if b.language in PYTHON]
    return [b for b in blocks if b.notest is None], [b for b in blocks if b.notest is not None]


def run_page(page: Path) -> dict[str, object]:
    """Run one page's blocks in one namespace in a temporary directory; never raises."""
    run, skipped = python_blocks(page.read_text(encoding="utf-8"))
    namespace: dict[str, object] = {"__name__": "__docs__", "__file__": str(page)}
    start, error, cwd = time.perf_counter(), "", os.getcwd()
    with tempfile.TemporaryDirectory(prefix="docs-page-") as workdir:
        try:
            os.chdir(workdir)
            for block in run:
                # padded to the block's line, so tracebacks show the page's own line numbers
                source = "\n" * (block.line - 1) + block.code
                exec(compile(source, str(page), "exec"), namespace)
        except BaseException:  # the test reports it; the next page still runs
            error = traceback.format_exc()
        finally:
            os.chdir(cwd)
            error += _clean_up()
    seconds = time.perf_counter() - start
    return {"ok": not error, "error": error, "blocks": len(run), "skipped": len(skipped),
            "seconds": round(seconds, 2)}  # fmt: skip


def _clean_up() -> str:
    """Close what a page left open; say so if that was a process group (it would shard scans)."""
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return "the page left a torch.distributed process group open\n"
    return ""


def main(argv: list[str]) -> int:
    out, pages = Path(argv[0]), [Path(p).resolve() for p in argv[1:]]
    results = {}
    for page in pages:
        results[page.name] = run_page(page)
        out.write_text(json.dumps(results, indent=1))  # partial results survive a timeout
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

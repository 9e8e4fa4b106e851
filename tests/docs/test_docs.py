"""The documentation site (``mkdocs.yml``, ``docs/``): it builds with ``--strict``, offline, and
the Python code of every page in its nav runs.

Conventions for code on a page (details in ``_run_pages.py``): every ````python```` block runs;
a page's blocks run in order in one namespace (like a notebook) in a temporary directory; a block
that cannot run in CI (GPU, ``torchrun``, downloads, a blocking server) has the line
``<!-- notest: why -->`` right above its fence, and its page a runnable variant where feasible;
output is shown in ````text```` blocks and never compared. ``mkdocs serve`` previews the site.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
#: the workflow pages: each must show at least one block that runs (report.md, written
#: elsewhere, only has to run what it shows)
WORKFLOWS = [
    "supervised.md",
    "elude.md",
    "lrp.md",
    "captum.md",
    "steering.md",
    "distributed.md",
]


def _load(name: str) -> ModuleType:
    path = Path(__file__).with_name(f"{name}.py") if name == "_run_pages" else ROOT / name
    spec = importlib.util.spec_from_file_location(f"docs_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


runner = _load("_run_pages")


def _nav_pages() -> list[str]:
    """The Markdown files named in mkdocs.yml's nav, in nav order."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    found: list[str] = []

    def walk(item: object) -> None:
        if isinstance(item, str) and item.endswith(".md"):
            found.append(item)
        elif isinstance(item, dict):
            for value in item.values():
                walk(value)
        elif isinstance(item, list):
            for value in item:
                walk(value)

    walk(config["nav"])
    return found


PAGES = [p for p in _nav_pages() if not p.startswith("api/")]


def _env() -> dict[str, str]:
    # one thread: the pages' figures do not depend on the core count and leave the other core
    # free; NO_MKDOCS_2_WARNING silences Material's end-of-life banner (not a build warning)
    return {**os.environ, "OMP_NUM_THREADS": "1", "NO_MKDOCS_2_WARNING": "1"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``mkdocs build --strict`` into a temporary directory: (site dir, build log)."""
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    proc = subprocess.run(
        command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed (pip install -e '.[dev]'):\n{log}"
    return out, log


@pytest.mark.timeout(300)
def test_site_builds_without_a_warning(site: tuple[Path, str]) -> None:
    out, log = site
    assert "WARNING" not in log, log
    for page in _nav_pages():
        folder = page.removesuffix(".md").removesuffix("index")  # index.md: its folder's page
        html = out / folder / "index.html"
        assert html.is_file(), f"{page} was not built"


def test_api_pages_render_numpy_docstrings(site: tuple[Path, str]) -> None:
    html = (site[0] / "api" / "stats" / "index.html").read_text()
    text = re.sub(r"<[^>]+>", " ", html)
    # ns.scan's numpy "Parameters" section became a table with its parameters and defaults
    assert re.search(r"Parameters:.*\bnum_classes\b.*\bmax_batches\b", text, re.S)
    # Sphinx roles are rewritten by docs/_ext/rst_roles.py, not shown as reST
    assert ":func:" not in text and ":class:" not in text


def test_the_site_loads_nothing_from_the_network(site: tuple[Path, str]) -> None:
    external = re.compile(
        r"<(?:script|img|iframe)[^>]*\ssrc=\"(?:https?:)?//|<link[^>]*\shref=\"(?:https?:)?//"
        r"|@import\s+url\(\s*['\"]?(?:https?:)?//|fonts\.googleapis"
    )
    offending = [
        f"{path.relative_to(site[0])}: {m.group(0)}"
        for path in site[0].rglob("*")
        if path.suffix in {".html", ".css"}
        for m in [external.search(path.read_text(errors="replace"))]
        if m is not None
    ]
    assert not offending, offending


@pytest.fixture(scope="module")
def page_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Run every nav page's code once, in one child process (see ``_run_pages.py``)."""
    out = tmp_path_factory.mktemp("pages") / "results.json"
    script = Path(runner.__file__)
    command = [sys.executable, str(script), str(out), *(str(DOCS / p) for p in PAGES)]
    proc = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"the page runner failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", PAGES)
def test_page_code_runs(page: str, page_results: dict[str, dict]) -> None:
    result = page_results[Path(page).name]
    assert result["ok"], f"docs/{page}:\n{result['error']}"


@pytest.mark.parametrize("page", WORKFLOWS)
def test_workflow_pages_show_code_that_runs(page: str) -> None:
    assert page in PAGES, f"{page} is not in mkdocs.yml's nav"
    run, _ = runner.python_blocks((DOCS / page).read_text())
    assert run, f"docs/{page} has no Python block that runs in CI"


#: pages whose notest blocks have no runnable variant, and why
NO_VARIANT = {
    "sdl.md": "an LRB run small enough for CI recovers no feature; tests/sdl runs the calls",
}


@pytest.mark.parametrize("page", [p for p in PAGES if p not in NO_VARIANT])
def test_pages_with_notest_blocks_also_run_code(page: str) -> None:
    run, skipped = runner.python_blocks((DOCS / page).read_text())
    assert not skipped or run, f"docs/{page}: every block is notest; add a runnable variant"


def test_every_page_is_in_the_nav() -> None:
    pages = set(_nav_pages())
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert on_disk <= pages, f"not in mkdocs.yml's nav: {sorted(on_disk - pages)}"


PAGE = """\
Text.

```python
a = 1
```

<!-- notest: needs a GPU -->
```python
b = a.cuda()
```

* a list item:

    ~~~~py title="x.py"
    if a:
        c = 2
    ~~~~

```text
1
```
````
```python
not code: inside a longer fence
```
````
"""


def test_blocks_are_extracted_with_lines_languages_and_markers() -> None:
    blocks = runner.extract_blocks(PAGE)
    assert [(b.line, b.language, b.notest) for b in blocks] == [
        (4, "python", None),
        (9, "python", "needs a GPU"),
        (15, "py", None),
        (20, "text", None),
        (23, "", None),
    ]
    assert blocks[2].code == "if a:\n    c = 2\n"
    assert "not code" in blocks[4].code
    run, skipped = runner.python_blocks(PAGE)
    assert [b.line for b in run] == [4, 15] and [b.line for b in skipped] == [9]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("```python\nx = 1\n", "never closed"),
        ("<!-- notest -->\n```python\nx = 1\n```\n", "reason"),
        ("<!-- notest: -->\n```python\nx = 1\n```\n", "reason"),
    ],
)
def test_bad_pages_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        runner.extract_blocks(text)


def test_page_errors_name_the_page_and_line(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nimport os\nopen('here.txt', 'w').close()\n```\n\ntext\n\n"
        "```python\nassert os.path.exists('here.txt')\nraise KeyError('boom')\n```\n"
    )
    result = runner.run_page(page)
    assert not result["ok"] and result["blocks"] == 2
    assert f'File "{page}", line 10' in result["error"] and "KeyError: 'boom'" in result["error"]
    assert not Path("here.txt").exists()  # it ran in a temporary directory


def test_a_page_that_leaves_a_process_group_open_fails_and_is_cleaned_up(tmp_path: Path) -> None:
    import torch.distributed as dist

    page = tmp_path / "page.md"
    page.write_text(
        "```python\nimport torch.distributed as dist\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'rdv'}', rank=0, "
        "world_size=1)\n```\n"
    )
    result = runner.run_page(page)
    assert not result["ok"] and "process group open" in result["error"]
    assert not dist.is_initialized()


def test_rst_roles_become_code_spans() -> None:
    ext = _load("docs/_ext/rst_roles.py")
    text = "See :func:`~neuronsplit.stats.scan`, :class:`.ScanResult` and :mod:`neuronsplit.nn`::"
    assert ext.markdown(text) == "See `scan`, `ScanResult` and `neuronsplit.nn`:"
    assert ext.markdown("a ``literal`` and a::b") == "a ``literal`` and a::b"

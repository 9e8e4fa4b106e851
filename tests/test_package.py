"""The public surface and the package's architecture.

* every exported name resolves, internals stay out of the flat namespace;
* the subpackages follow the data flow: the import graph between them has no cycle, and no
  module-level import cycle exists between modules;
* ``plan/`` is pure data (no ``torch.nn``); private modules stay inside their subpackage;
* every module has one job and stays under 400 lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import neuronsplit as ns

SRC = Path(ns.__file__).parent
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, *, top_level_only: bool) -> set[str]:
    """neuronsplit modules imported by a module (resolving relative imports)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("neuronsplit"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("neuronsplit"))
    mods = _modules()
    return {m for m in found if m in mods and m != name}


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_public_name_resolves() -> None:
    missing = [name for name in ns.__all__ if not hasattr(ns, name)]
    assert missing == []


def test_internals_live_in_their_subpackages() -> None:
    from neuronsplit.methods.hesse import rho_partition
    from neuronsplit.nn import (
        IndexMerge,
        Steering,
        get_split_layer,
        iter_split_layers,
        load_scales,
        plan_of,
    )
    from neuronsplit.stats import LayerStats

    for name in ("IndexMerge", "iter_split_layers", "get_split_layer", "plan_of", "LayerStats",
                 "rho_partition", "Steering", "load_scales"):  # fmt: skip
        assert name not in ns.__all__
    assert callable(rho_partition) and callable(plan_of) and callable(get_split_layer)
    assert IndexMerge and iter_split_layers and LayerStats and Steering and callable(load_scales)


def test_subpackages_import_each_other_without_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for name, path in _modules().items():
        src = _subpackage(name)
        if not src:
            continue
        for target in _imports(name, path, top_level_only=False):
            dst = _subpackage(target)
            if dst and dst != src and not dst.startswith("_") and dst not in ("errors",):
                graph.setdefault(src, set()).add(dst)
    assert _find_cycle(graph) is None, f"subpackage import cycle: {_find_cycle(graph)}"
    # the data flow: lower layers never import higher ones
    assert "stats" not in graph.get("capture", set()) | graph.get("relevance", set())
    assert not graph.get("plan", set()) - {"errors"}


def test_modules_import_each_other_without_cycles() -> None:
    mods = _modules()
    graph = {name: _imports(name, path, top_level_only=True) for name, path in mods.items()}
    # a package imports its submodules by design; only cycles through other modules count
    for name in graph:
        graph[name] = {
            t for t in graph[name] if not t.startswith(name + ".") or name == "neuronsplit"
        }
    assert _find_cycle(graph) is None, f"module import cycle: {_find_cycle(graph)}"


def test_plan_is_pure_data() -> None:
    for path in (SRC / "plan").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "torch":
                assert "nn" not in {a.name for a in node.names}, path
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.startswith("torch.nn") for n in names), path


def test_private_modules_stay_in_their_subpackage() -> None:
    mods = _modules()
    for name, path in mods.items():
        for target in _imports(name, path, top_level_only=False):
            leaf = target.rpartition(".")[2]
            if not leaf.startswith("_") or target.count(".") == 1:
                continue  # public, or a top-level private helper shared on purpose
            owner = target.rpartition(".")[0]
            assert name == owner or name.startswith(owner + "."), f"{name} imports {target}"


def test_every_docstring_example_runs() -> None:
    """The examples in the docstrings are part of the documentation: they must stay true."""
    import doctest
    import importlib
    import pkgutil

    failed = {}
    for info in pkgutil.walk_packages(ns.__path__, "neuronsplit."):
        if info.name.startswith("neuronsplit.insights"):
            continue  # needs the insights extra; its examples run in tests/insights
        module = importlib.import_module(info.name)
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=False)
        if result.failed:
            failed[info.name] = result.failed
    assert failed == {}


def test_modules_are_small() -> None:
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    assert {k: v for k, v in sizes.items() if v > MAX_LINES} == {}


def test_submodule_imports_do_not_shadow_public_functions() -> None:
    code = (
        "import neuronsplit as ns, neuronsplit.stats.scanner, neuronsplit.nn.io, neuronsplit.demo,"
        " neuronsplit.nn.steering;"
        "assert callable(ns.scan) and callable(ns.save) and callable(ns.load), (ns.scan, ns.save);"
        "assert callable(ns.steer) and callable(ns.nn.steer), ns.steer"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-800:]


def test_cli_without_command_fails_with_usage() -> None:
    proc = subprocess.run([sys.executable, "-m", "neuronsplit.cli"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_without_the_insights_extra_the_error_names_the_pip_command() -> None:
    """On the core line (captum >= 0.9 or no Flask) Insights is refused with the fix."""
    import importlib.util

    import pytest

    from neuronsplit.errors import MissingExtraError
    from neuronsplit.insights import require_insights

    try:
        has_insights = importlib.util.find_spec("captum.insights") is not None
        if has_insights:
            import captum.insights.attr_vis.server  # noqa: F401 - Flask is part of the extra
    except ImportError:
        has_insights = False
    if has_insights:
        pytest.skip("the insights extra is installed; tests/insights covers this line")
    with pytest.raises(MissingExtraError, match=r'pip install "neuronsplit\[insights\]"'):
        require_insights()
    proc = subprocess.run(
        [sys.executable, "-m", "neuronsplit.cli", "insights", "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "neuronsplit[insights]" in proc.stderr

"""The public surface: every exported name resolves, and importing submodules shadows nothing."""

from __future__ import annotations

import subprocess
import sys

import neuronsplit as ns


def test_every_public_name_resolves() -> None:
    missing = [name for name in ns.__all__ if not hasattr(ns, name)]
    assert missing == []


def test_submodule_imports_do_not_shadow_public_functions() -> None:
    code = (
        "import neuronsplit as ns, neuronsplit.stats.scanner, neuronsplit.nn.io, neuronsplit.demo;"
        "assert callable(ns.scan) and callable(ns.save) and callable(ns.load), (ns.scan, ns.save)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-800:]


def test_cli_without_command_fails_with_usage() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "neuronsplit.cli"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "usage" in proc.stderr

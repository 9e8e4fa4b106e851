"""The one ``neuronsplit demo`` run that the demo tests share (both pipelines, about 30-60 s;
the models are read from the demo cache, trained into it on first use)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from neuronsplit.cli import main


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    """``neuronsplit demo --out DIR --quiet``: its summary.json, what it printed, and DIR."""
    out = tmp_path_factory.mktemp("demo")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["demo", "--out", str(out), "--quiet"])
    assert code == 0
    return json.loads((out / "summary.json").read_text()), buffer.getvalue(), out

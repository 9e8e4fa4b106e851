"""Start-up of the ``neuronsplit`` command: building its parser imports none of the heavy
libraries (they cost seconds: zennit and timm bring torchvision and torch's compiler, Insights
captum and matplotlib), so ``neuronsplit --help`` is quick and ``neuronsplit demo`` can start
training its ViT in the background before the pipeline's imports."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("captum", "zennit", "timm", "torchvision", "matplotlib", "sklearn", "scipy")

PROBE = f"""
import json, sys
from neuronsplit.cli import build_parser
build_parser().parse_args(["demo", "--quiet"])
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


def test_building_the_parser_imports_no_heavy_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.splitlines()[-1]) == []


def test_the_parsers_tau_grid_is_the_scans() -> None:
    """``neuronsplit scan --taus`` and the demo's ``--tau`` check read the grid from a light
    module; it must be the very grid the scan keeps counts for."""
    from neuronsplit._scan_defaults import DEFAULT_TAU_GRID
    from neuronsplit.stats import DEFAULT_TAU_GRID as SCAN_GRID
    from neuronsplit.stats import ScanResult

    assert DEFAULT_TAU_GRID is SCAN_GRID
    assert ScanResult.__dataclass_fields__["tau_grid"].default is DEFAULT_TAU_GRID

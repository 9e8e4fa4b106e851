"""The Captum pipeline example runs end to end and writes its figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "captum_pipeline.py"


def test_captum_pipeline_example(tmp_path: Path) -> None:
    out = tmp_path / "figures"
    env = dict(os.environ)
    # works with or without an editable install of the package
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env["MPLBACKEND"] = "Agg"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("ig.png", "subunits.png", "layer_ig.png"):
        path = out / name
        assert path.exists(), f"{name} missing; output:\n{proc.stdout}{proc.stderr}"
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 5_000
    assert "subunits sum to the unit" in proc.stdout

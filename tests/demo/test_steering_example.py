"""The steering example runs end to end, prints its tables and saves a loadable model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

import neuronsplit as ns
from neuronsplit.demo import get_demo_model, load_digits

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "steering.py"


def test_steering_example(tmp_path: Path) -> None:
    env = dict(os.environ)
    # works with or without an editable install of the package
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--save", str(tmp_path / "steered")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "mean logit drop: its classes" in out and "the whole unit" in out
    rows = re.findall(r"k=\d+ \(classes [\d+ ]+\)\s+(-?[\d.]+)\s+(-?[\d.]+)", out)
    assert len(rows) >= 2, out
    inside = sum(float(a) for a, _ in rows) / len(rows)
    outside = sum(float(b) for _, b in rows) / len(rows)
    assert inside > 3 * outside, out
    delta = float(re.search(r"max \|delta logit\| = (\S+);", out).group(1))
    assert delta < 1e-4, out
    steered = ns.load(tmp_path / "steered", get_demo_model())
    with torch.no_grad():
        assert torch.isfinite(steered(load_digits("test").images)).all()

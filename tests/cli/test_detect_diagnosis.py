"""``neuronsplit detect`` on a hand-built scan where nearly every unit is flagged: the units are
listed and the diagnosis goes to stderr (the library's warning is silenced by the command)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from helpers import hand_built_scan


def _at(cos: float) -> list[float]:
    return [cos, math.sqrt(1.0 - cos * cos)]


def test_detect_warns_when_nearly_every_unit_is_flagged(
    tmp_path: Path, run: Callable[..., object]
) -> None:
    n = 10  # every unit relevant to both classes, pair cosines 0.0 .. 0.9
    arvs = {(c, 0): [1.0, 0.0] for c in range(n)} | {(c, 1): _at(0.1 * c) for c in range(n)}
    scan_file = tmp_path / "scan.safetensors"
    hand_built_scan([3, 3], [[3] * n, [3] * n], arvs).save(scan_file)
    flagged = run("detect", "--scan", scan_file, "--gamma", "0.95")
    assert flagged.code == 0
    assert "warning: find_polysemantic(tau=0.03, p=0.75, gamma=0.95)" in flagged.err
    assert "10 of 10 units are flagged: lower gamma" in flagged.err
    doc = json.loads((tmp_path / "scan.polysemantic.json").read_text())
    assert len(doc["units"]) == n and doc["params"]["include_negative"] is False
    normal = run("detect", "--scan", scan_file, "--gamma", "0.45")  # 5 of 10: no warning
    assert normal.code == 0 and "warning" not in normal.err

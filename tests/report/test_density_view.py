"""The report's concept densities: one inline SVG panel per concept (no matplotlib figure to
render), with the unit's and every subunit's density on that concept's images."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

import neuronsplit as ns
from neuronsplit.evaluation import subunit_values


def test_one_panel_per_concept_with_the_unit_and_its_subunits(
    tiny: dict, tmp_path: Path, read_page: Any
) -> None:
    plan = ns.SplitPlan(tiny["plan"].splits, meta={"units": [
        {"layer": "conv", "unit": 1, "concepts": [[0], [1, 2]]}]})  # fmt: skip
    path = ns.report(tiny["model"], plan, tiny["loader"], tmp_path / "r.html", progress=False,
                     feature_vis=False, heatmaps=False)  # fmt: skip
    html = path.read_text()
    start = html.index('id="unit-conv-1-density"')
    view = html[start : html.index("</section>", start)]
    panels = re.findall(r'<svg [^>]*aria-label="([^"]*)"', view)
    # the first 48 images of 3 classes, 16 each: concept [0] and concept [1, 2]
    assert panels == ["concept [0] (16 images)", "concept [1, 2] (32 images)"]
    curves = re.findall(r"<title>([^<]*)</title></polyline>", view)
    assert curves == ["unit", "subunit 0", "subunit 1"] * 2
    # the residual holds no input channel of this split, only the bias: the same value on
    # every image, a point mass drawn as a vertical mark in its colour (legend: first panel)
    values = subunit_values(ns.apply_plan(tiny["model"], plan), "conv", 1, tiny["x"]).numpy()
    assert np.ptp(values[:, -1]) == 0.0 and np.ptp(values[:, 0]) > 0
    value = f"{values[0, -1]:.3g}"
    assert re.findall(r"<title>([^<]*)</title></line>", view) == [f"residual = {value}"] * 2
    assert f"residual (constant {value})" in view and "unit (constant" not in view
    assert "<img" not in view  # drawn as SVG, not as an encoded figure

"""The plots on the demo CNN's Hesse split of its digits (8x8 greyscale) layer fc2."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import neuronsplit as ns
from neuronsplit import plots
from neuronsplit.demo import demo_plan, digits_loader, get_demo_model, load_digits


def test_demo_plots(tmp_path: Path) -> None:
    model = get_demo_model()
    _, _, plan = demo_plan(model)
    split = ns.apply_plan(model, plan)
    test = load_digits("test")
    ev = ns.evaluate(model, split, digits_loader("test"), plan, k=6, progress=False)
    info = plan.meta["units"][0]
    layer, unit, concepts = info["layer"], info["unit"], info["concepts"]
    grid = plots.reference_grid(ev, test.images, layer, unit)
    assert len(grid.axes) == (len(concepts) + 2) * 6
    first = ev.row(layer, unit).top_indices[0]
    np.testing.assert_allclose(
        grid.axes[0].images[0].get_array(), plots.as_display_image(test.images[first])
    )
    dens = plots.concept_densities(split, layer, unit, test.images, test.labels, concepts)
    assert len(dens.axes) == len(concepts)
    assert all(len(ax.lines) == len(concepts) + 2 for ax in dens.axes)
    curves = plots.steering_curves(split, test.images[:50], (layer, unit, 0))
    assert len(curves.axes[0].lines) == 10 + 1  # ten digits and the alpha = 1 marker
    for i, fig in enumerate((grid, dens, curves)):
        assert plots.save(fig, tmp_path / f"{i}.png").stat().st_size > 1000
        assert plots.save(fig, tmp_path / f"{i}.svg").stat().st_size > 1000

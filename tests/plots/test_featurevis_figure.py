"""The feature visualisation figure: one row per unit, the unit's image then its subunits'."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import neuronsplit as ns
from helpers import random_split
from neuronsplit import plots
from neuronsplit.demo import get_demo_model
from neuronsplit.errors import ArgumentTypeError, InvalidArgumentError
from neuronsplit.visual import visualise


def test_rows_follow_units_and_titles_carry_the_activations(tmp_path: Path) -> None:
    rng = random.Random(0)
    plan = ns.SplitPlan(
        [random_split(rng, "fc2", 1, 64, 2, "disjoint"), random_split(rng, "fc2", 4, 64, 3, "disjoint")]
    )  # fmt: skip
    split = ns.apply_plan(get_demo_model(), plan)
    # subunits listed before their unit, and units interleaved: the figure sorts them into rows
    refs = ["fc2/u4/k1", "fc2/u1/k0", "fc2/u4", "fc2/u1", "fc2/u4/k0", "fc2/u4/residual"]
    fv = visualise(split, refs, image_shape=(1, 8, 8), steps=8, progress=False)
    fig = plots.featurevis_figure(fv)
    assert len(fig.axes) == 2 * 4  # two units; the longest row: unit, k1, k0, residual
    titles = [ax.get_title() for ax in fig.axes]
    acts = {n: float(a) for n, a in zip(fv.names, fv.activations, strict=True)}
    assert titles[:4] == [
        f"unit\n{acts['fc2/u4']:.2f}", f"k1\n{acts['fc2/u4/k1']:.2f}",
        f"k0\n{acts['fc2/u4/k0']:.2f}", f"residual\n{acts['fc2/u4/residual']:.2f}",
    ]  # fmt: skip
    assert titles[4:] == [f"unit\n{acts['fc2/u1']:.2f}", f"k0\n{acts['fc2/u1/k0']:.2f}", "", ""]
    assert fig.axes[0].get_ylabel() == "fc2\nunit 4"
    # the cells show the images as optimised, not rescaled
    shown = fig.axes[1].images[0].get_array()
    np.testing.assert_allclose(shown, fv.images[refs.index("fc2/u4/k1"), 0].numpy(), rtol=1e-6)
    assert fig.axes[1].images[0].get_clim() == (0, 1)
    assert sum(len(ax.images) for ax in fig.axes) == len(refs)
    assert plots.save(fig, tmp_path / "fv.png").stat().st_size > 1000


def test_rgb_images_are_drawn_in_colour() -> None:
    images = torch.rand(2, 3, 5, 5)
    fv = SimpleNamespace(names=["a/u0", "a/u0/k0"], images=images, activations=torch.ones(2))
    fig = plots.featurevis_figure(fv, title="rgb")
    arr = fig.axes[0].images[0].get_array()
    assert arr.shape == (5, 5, 3)
    np.testing.assert_allclose(arr, images[0].permute(1, 2, 0).numpy(), rtol=1e-6)
    assert fig.get_suptitle() == "rgb"


def test_bad_input() -> None:
    with pytest.raises(ArgumentTypeError, match="FeatureVisualisation"):
        plots.featurevis_figure(torch.rand(2, 1, 8, 8))
    bad_name = SimpleNamespace(names=["fc2"], images=torch.rand(1, 1, 8, 8), activations=[1.0])
    with pytest.raises(InvalidArgumentError, match="cannot place 'fc2'"):
        plots.featurevis_figure(bad_name)
    wrong_count = SimpleNamespace(names=["a/u0"], images=torch.rand(2, 1, 8, 8), activations=[1])
    with pytest.raises(InvalidArgumentError, match="one image per name"):
        plots.featurevis_figure(wrong_count)

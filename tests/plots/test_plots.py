"""Every plot: what the figure holds (axes, lines, bars, images), and that it saves as PNG/SVG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import neuronsplit as ns
from neuronsplit import plots
from neuronsplit.errors import ArgumentTypeError, InvalidArgumentError


def _saves(fig, tmp_path: Path) -> None:
    png = plots.save(fig, tmp_path / "fig.png")
    svg = plots.save(fig, tmp_path / "sub" / "fig.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert "<svg" in svg.read_text()[:1000]


def _linear_split() -> tuple[nn.Module, nn.Module]:
    """fc: z0 = x0 + 2 x1 + 4 x2 split into t0 (x0), t1 (x1), r (x2); z1 = x0 + x1 + x2."""
    model = nn.Sequential(nn.Linear(3, 2, bias=False)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0, 4.0], [1.0, 1.0, 1.0]]))
    plan = ns.SplitPlan([ns.UnitSplit("0", 0, [[0], [1]], [2])])
    return model, ns.apply_plan(model, plan)


def _conv_split() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3)).eval()  # fmt: skip
    plan = ns.SplitPlan([ns.UnitSplit("0", 1, [[0], [1]], [2])])
    return ns.apply_plan(model, plan)


def test_save_checks_its_arguments(tmp_path: Path) -> None:
    fig, _ = plots.new_figure()
    with pytest.raises(InvalidArgumentError, match=r"\.png, \.svg"):
        plots.save(fig, tmp_path / "fig.jpg")
    with pytest.raises(ArgumentTypeError, match="Figure"):
        plots.save("fig", tmp_path / "fig.png")


def test_density_figure_lines_per_concept(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = np.stack([rng.normal(2, 0.3, 40), rng.normal(2, 0.3, 40), np.zeros(40)], 1)
    labels = np.repeat([0, 1], 20)
    fig = plots.density_figure(values, labels, [[0], [1], [7]], names=["unit", "k0", "k1"])
    assert len(fig.axes) == 3
    first, _, empty = fig.axes
    assert [line.get_label() for line in first.lines] == ["unit", "k0", "k1"]
    # a KDE integrates to ~1; the constant column is a vertical line at its value
    x, y = first.lines[0].get_data()
    assert float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)) == pytest.approx(1.0, abs=0.02)
    assert x[np.argmax(y)] == pytest.approx(2.0, abs=0.3)
    assert list(first.lines[2].get_xdata()) == [0.0, 0.0]
    assert len(empty.lines) == 0 and "0 images" in empty.get_title()
    _saves(fig, tmp_path)


def test_concept_densities_of_a_split_unit(tmp_path: Path) -> None:
    _, split = _linear_split()
    x = torch.rand(30, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(30) % 2
    fig = plots.concept_densities(split, "0", 0, x, y, [[0], [1]])
    assert len(fig.axes) == 2
    assert [line.get_label() for line in fig.axes[0].lines] == [
        "unit", "subunit 0", "subunit 1", "residual"
    ]  # fmt: skip
    fig = plots.concept_densities(split, "0", 0, x, y, [[0], [1]], residual=False)
    assert len(fig.axes[1].lines) == 3
    _saves(fig, tmp_path)


def test_image_grid_grey_and_rgb(tmp_path: Path) -> None:
    grey = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    fig = plots.image_grid(grey, {"unit": [4, 0, 1], "k0": [2]})
    assert len(fig.axes) == 2 * 3
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 4 and fig.axes[0].get_ylabel() == "unit"
    img = grey[4, 0].double().numpy()
    want = (img - img.min()) / (img.max() - img.min())
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), want)
    assert fig.axes[0].images[0].get_cmap().name == "gray"
    rgb = [(torch.rand(3, 6, 6), 0) for _ in range(3)]  # a dataset of (image, label) pairs
    fig = plots.image_grid(rgb, {"k1": [2, 1]})
    assert fig.axes[0].images[0].get_array().shape == (6, 6, 3)
    _saves(fig, tmp_path)
    with pytest.raises(InvalidArgumentError, match="<= 2"):
        plots.image_grid(rgb, {"k1": [3]})


def test_reference_grid_shows_the_top_images(tmp_path: Path) -> None:
    model, split = _linear_split()
    x = torch.rand(12, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.arange(12) % 2
    ev = ns.evaluate(model, split, [(x, y)], k=3, progress=False)
    images = x.reshape(12, 1, 3, 1).expand(12, 1, 3, 3) * torch.arange(1, 4.0)  # toy images
    fig = plots.reference_grid(ev, images, "0", 0)
    assert len(fig.axes) == 4 * 3  # unit, k0, k1, residual x 3 images
    assert fig.axes[3].get_ylabel().startswith("k0")
    for col, idx in enumerate(ev.row("0", 0, 0).top_indices):
        want = plots.as_display_image(images[idx])
        np.testing.assert_allclose(fig.axes[3 + col].images[0].get_array(), want)
    _saves(fig, tmp_path)


def test_heatmaps_follow_the_attribution_sign(tmp_path: Path) -> None:
    split = _conv_split()
    image = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(3))
    fig = plots.subunit_heatmaps(split, image, target=1, layer="0")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["input", "0/u1/k0", "0/u1/k1", "0/u1/residual"]
    attr = ns.Disentangle(split).attribute(image[None], target=1, subunit="0/u1/k1")[0]
    drawn = next(ax for ax in fig.axes if ax.get_title() == "0/u1/k1").images[0].get_array()
    summed = attr.sum(0).numpy()
    nonzero = np.abs(summed) > 1e-6 * np.abs(summed).max()
    assert nonzero.any()
    np.testing.assert_array_equal(np.sign(drawn[nonzero]), np.sign(summed[nonzero]))
    _saves(fig, tmp_path)


def test_heatmaps_of_a_zero_residual_say_so_instead_of_failing(tmp_path: Path) -> None:
    """A residual that receives no input (empty residual set) has an all-zero map, which
    Captum's visualiser refuses to normalise (it asserts); the panel says so instead."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3)).eval()  # fmt: skip
    split = ns.apply_plan(model, ns.SplitPlan([ns.UnitSplit("0", 0, [[0], [1, 2]], [])]))
    fig = plots.subunit_heatmaps(split, torch.rand(3, 6, 6), target=0, layer="0")
    panel = next(ax for ax in fig.axes if ax.get_title() == "0/u0/residual")
    assert [t.get_text() for t in panel.texts] == ["zero attribution"] and not panel.images
    drawn = next(ax for ax in fig.axes if ax.get_title() == "0/u0/k1")
    assert drawn.images and not drawn.texts
    _saves(fig, tmp_path)


def test_heatmap_figure_without_image() -> None:
    fig = plots.heatmap_figure({"a": torch.randn(8, 8)}, sign="absolute_value")
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["a"]


def test_cosine_histogram_bars_and_gamma_line(tmp_path: Path) -> None:
    cos = [-0.5, 0.05, 0.1, 0.45, 0.7, 0.99]
    fig = plots.cosine_histogram(cos, gamma=0.3, bins=8)
    ax = fig.axes[0]
    assert [b.get_height() for b in ax.patches] == [0, 0, 1, 0, 2, 1, 1, 1]
    assert list(ax.lines[0].get_xdata()) == [0.3, 0.3]
    assert ax.get_title() == "6 candidate pairs, 3 below gamma"
    _saves(fig, tmp_path)
    with pytest.raises(InvalidArgumentError, match=r"\[-1, 1\]"):
        plots.cosine_histogram([1.5])


def test_candidate_cosines_are_every_pair_of_relevant_classes() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).eval()
    x = torch.rand(80, 6, generator=torch.Generator().manual_seed(4))
    res = ns.scan(model, [(x, torch.arange(80) % 4)], ["0"], 4, progress=False)
    got = plots.candidate_cosines(res, tau=0.03, p=0.5)
    units = ns.find_polysemantic(res, tau=0.03, p=0.5, gamma=1.0, include_negative=True)
    want = [q.cosine for u in units for q in u.pairs]  # every pair with cosine < 1
    assert len(got) >= 3 and sorted(got) == pytest.approx(sorted(want))
    fig = plots.cosine_histogram(res, gamma=0.5, tau=0.03, p=0.5)
    assert sum(b.get_height() for b in fig.axes[0].patches) == len(got)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_steering_curves_pass_through_the_unsteered_logits(dtype, tmp_path: Path) -> None:
    model, split = _linear_split()
    split = split.to(dtype)
    x = torch.rand(7, 3, generator=torch.Generator().manual_seed(5)).to(dtype)
    fig = plots.steering_curves(split, x, ("0", 0, 1))
    ax = fig.axes[0]
    curves = ax.lines[:2]  # one per class, then the dotted line at alpha = 1
    assert len(ax.lines) == 3 and list(ax.lines[2].get_xdata()) == [1.0, 1.0]
    alphas = list(curves[0].get_xdata())
    assert alphas[0] == 0.0 and alphas[-1] == 2.0 and len(alphas) == 21
    with torch.no_grad():
        plain = split(x).double().mean(0).numpy()
    one = alphas.index(1.0)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for c, line in enumerate(curves):
        assert line.get_ydata()[one] == pytest.approx(plain[c], abs=tol)
    # alpha = 0 removes t1 = 2 x1 from unit 0 only; alpha = 2 adds it once more
    drop = 2 * x[:, 1].double().mean().item()
    assert curves[0].get_ydata()[0] == pytest.approx(plain[0] - drop, abs=tol)
    assert curves[0].get_ydata()[-1] == pytest.approx(plain[0] + drop, abs=tol)
    assert np.ptp(curves[1].get_ydata()) == pytest.approx(0.0, abs=tol)
    _saves(fig, tmp_path)
    with pytest.raises(InvalidArgumentError, match="outside"):
        plots.steering_curves(split, x, "0/u0/k1", classes=[5])


def test_density_curves_are_the_figure_s_numbers() -> None:
    """density_curves gives what density_figure draws: scipy's Gaussian KDE of each column on
    the concept's images, on one grid from below the smallest value to above the largest."""
    from scipy.stats import gaussian_kde

    rng = np.random.default_rng(1)
    values = np.stack([rng.normal(1, 0.5, 30), rng.normal(3, 0.2, 30), np.full(30, 0.25)], 1)
    labels = np.repeat([0, 1, 2], 10)
    curves = plots.density_curves(values, labels, [[0, 1], [2]], points=50)
    fig = plots.density_figure(values, labels, [[0, 1], [2]], points=50)
    for curve, ax in zip(curves, fig.axes, strict=True):
        mask = np.isin(labels, curve.classes)
        assert curve.n_images == int(mask.sum()) and f"({curve.n_images} images)" in curve.title
        assert curve.grid[0] < values.min() and curve.grid[-1] > values.max()
        assert curve.constants == {"residual": 0.25}  # no density: a point mass at its value
        for i, (_, density) in enumerate(curve.lines[:2]):
            expected = gaussian_kde(values[mask, i])(curve.grid)
            np.testing.assert_allclose(density, expected)
            np.testing.assert_allclose(ax.lines[i].get_ydata(), expected)


def test_density_curves_leave_out_values_that_are_not_finite() -> None:
    """A diverging model's inf / NaN values are counted and left out, not fed to the KDE (which
    refuses them): the grid spans the finite values, a column of none has no line."""
    from scipy.stats import gaussian_kde

    rng = np.random.default_rng(2)
    good = rng.normal(0, 1, 20)
    values = np.stack([good, np.where(np.arange(20) < 3, np.inf, good), np.full(20, np.nan)], 1)
    (curve,) = plots.density_curves(values, np.zeros(20), [[0]], points=30)
    assert np.isfinite(curve.grid).all() and curve.grid[-1] > good.max()
    assert curve.non_finite == {"subunit 0": 3, "residual": 20}
    np.testing.assert_allclose(curve.lines[1][1], gaussian_kde(good[3:])(curve.grid))
    assert curve.lines[2] == ("residual", None) and "residual" not in curve.constants
    fig = plots.density_figure(values, np.zeros(20), [[0]], points=30)
    assert [line.get_label() for line in fig.axes[0].lines][-1] == "residual (no finite value)"

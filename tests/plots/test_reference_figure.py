"""reference_figure: one row per reference, crops titled with index and value, Captum overlays."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from neuronsplit import plots
from neuronsplit.errors import ArgumentTypeError, InvalidArgumentError
from neuronsplit.visual import ReferenceImage, ReferenceSet, reference_images


def _refs(heatmap: bool) -> ReferenceSet:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3)).eval()
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.rand(12, 1, 9, 9, generator=gen), torch.arange(12) % 2)
    return reference_images(model, data, ["2/u0", "2/u1", "0/u2"], k=4, heatmap=heatmap,
                            progress=False)  # fmt: skip


def test_one_row_per_reference_titled_with_index_and_value(tmp_path: Path) -> None:
    refs = _refs(heatmap=False)
    fig = plots.reference_figure(refs, n=3)
    assert len(fig.axes) == 3 * 3
    for r, name in enumerate(refs):
        row = fig.axes[3 * r : 3 * r + 3]
        assert row[0].get_ylabel().startswith(name)
        for ax, ref in zip(row, refs[name][:3], strict=True):
            assert ax.get_title() == f"#{ref.index}  {ref.value:.3g}"
            assert len(ax.images) == 1
            assert ax.images[0].get_array().shape == tuple(ref.image.shape[1:])  # the crop
    assert fig._suptitle.get_text() == "reference images by activation"
    png = plots.save(fig, tmp_path / "refs.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_heatmaps_are_overlaid_by_captum() -> None:
    refs = _refs(heatmap=True)
    fig = plots.reference_figure(refs)
    # Captum's blended_heat_map draws the greyscale image, then the heatmap over it
    assert all(len(ax.images) == 2 for ax in fig.axes)
    plain = plots.reference_figure(refs, heatmap=False)
    assert all(len(ax.images) == 1 for ax in plain.axes)


def test_notes_and_zero_maps() -> None:
    zero = ReferenceImage(5, -0.5, 0, (0, 0, 3, 3), torch.rand(1, 3, 3), torch.zeros(3, 3), "n")
    fig = plots.reference_figure(
        ReferenceSet({"fc/u0": [zero]}, notes={"fc/u0": "never activates: ..."})
    )
    ax = fig.axes[0]
    assert len(ax.images) == 1  # an all-zero map cannot be normalised: the crop alone
    assert ax.get_ylabel() == "fc/u0\nnever activates: ..."
    long = ReferenceSet({"fc/u0": [zero]}, notes={"fc/u0": "word " * 40})
    label = plots.reference_figure(long).axes[0].get_ylabel()
    assert label.startswith("fc/u0\nword") and label.endswith("...")
    assert max(len(line) for line in label.splitlines()) <= 24


def test_bad_input() -> None:
    with pytest.raises(ArgumentTypeError, match="non-empty ReferenceSet"):
        plots.reference_figure({})
    with pytest.raises(ArgumentTypeError, match="must hold ReferenceImage entries, got int"):
        plots.reference_figure({"a": [1, 2]})
    with pytest.raises(InvalidArgumentError, match="heatmap=True but no image has a heatmap"):
        plots.reference_figure(_refs(heatmap=False), heatmap=True)
    with pytest.raises(InvalidArgumentError, match="n must be >= 1, got 0"):
        plots.reference_figure(_refs(heatmap=False), n=0)

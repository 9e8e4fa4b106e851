"""Options the report cannot honour are refused before the evaluation runs, with typed errors:
a one-shot loader (read more than once), a shuffling DataLoader (a second pass would show other
images than the ones measured), units and scans of the wrong kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import neuronsplit as ns
from neuronsplit.errors import ArgumentTypeError, InvalidArgumentError, MissingFileError


@pytest.fixture()
def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the evaluation starts: the checks must come first."""
    import neuronsplit.reporting.build as build

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("evaluate ran before the options were checked")

    monkeypatch.setattr(build, "evaluate", refuse)


def _batches(x: torch.Tensor, y: torch.Tensor):
    for i in range(0, len(x), 16):
        yield x[i : i + 16], y[i : i + 16]


@pytest.mark.usefixtures("no_evaluation")
def test_a_generator_is_refused(tiny: dict, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    with pytest.raises(InvalidArgumentError, match="one-shot iterator.*list of batches"):
        ns.report(tiny["model"], tiny["plan"], _batches(tiny["x"], tiny["y"]), out)
    assert not out.exists()


@pytest.mark.usefixtures("no_evaluation")
def test_a_shuffling_dataloader_is_refused(tiny: dict, tmp_path: Path) -> None:
    loader = DataLoader(TensorDataset(tiny["x"], tiny["y"]), batch_size=16, shuffle=True)
    with pytest.raises(InvalidArgumentError, match="RandomSampler.*shuffle=False"):
        ns.report(tiny["model"], tiny["plan"], loader, tmp_path / "r.html")


@pytest.mark.usefixtures("no_evaluation")
@pytest.mark.parametrize(
    ("units", "error", "match"),
    [
        ([("conv", "a")], ArgumentTypeError, "unit must be an int"),
        ([("conv", 1.0)], ArgumentTypeError, "unit must be an int"),
        ([("conv", 2)], ns.UnknownSubunitError, "unit 2 of layer 'conv' is not split"),
    ],
)
def test_bad_units_fail_before_the_evaluation(
    tiny: dict, tmp_path: Path, units: list, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        ns.report(tiny["model"], tiny["plan"], tiny["loader"], tmp_path / "r.html", units=units)


@pytest.mark.usefixtures("no_evaluation")
def test_bad_scans_fail_before_the_evaluation(tiny: dict, tmp_path: Path) -> None:
    with pytest.raises(ArgumentTypeError, match="ScanResult or the path"):
        ns.report(tiny["model"], tiny["plan"], tiny["loader"], tmp_path / "r.html", scan=3)
    with pytest.raises(MissingFileError):
        ns.report(tiny["model"], tiny["plan"], tiny["loader"], tmp_path / "r.html",
                  scan=tmp_path / "missing.pt")  # fmt: skip


def test_a_list_of_batches_and_numpy_units_are_fine(tiny: dict, tmp_path: Path) -> None:
    import numpy as np

    batches = list(_batches(tiny["x"], tiny["y"]))
    path = ns.report(tiny["model"], tiny["plan"], batches, tmp_path / "r.html",
                     units=[("conv", np.int64(1))], feature_vis=False, heatmaps=False,
                     progress=False)  # fmt: skip
    assert 'id="unit-conv-1"' in path.read_text()

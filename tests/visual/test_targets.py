"""reference_images and visualise read ``refs`` with one parser: same spellings, same errors.

Both go through :mod:`neuronsplit.visual.targets`; these tests pin that down from the outside,
so a second parser growing back in either function fails here. The expected names and error
types are written out by hand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import neuronsplit as ns
from neuronsplit import SubunitRef
from neuronsplit.errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    UnknownLayerError,
    UnknownSubunitError,
    UnsupportedLayerError,
)
from neuronsplit.plan import SplitPlan, UnitSplit
from neuronsplit.visual import reference_images, visualise
from neuronsplit.visual.targets import resolve_target

HW = 9


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """conv(1->4) -> ReLU -> conv(4->3), unit 1 split into k0, k1 and a residual -> linear."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(3 * 25, 3),
    ).eval()  # fmt: skip
    plan = SplitPlan([UnitSplit("2", 1, [[0], [1]], shared=[2, 3], merge="disjoint")])
    return ns.apply_plan(net, plan)


@pytest.fixture(scope="module")
def data() -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(torch.rand(6, 1, HW, HW, generator=gen), torch.arange(6) % 3)


def _names_of_both(model: nn.Module, data: TensorDataset, refs: Any) -> tuple[list, list]:
    refs_set = reference_images(model, data, refs, k=1, progress=False)
    fv = visualise(model, refs, image_shape=(1, HW, HW), steps=1, progress=False)
    return list(refs_set), fv.names


@pytest.mark.parametrize(
    ("refs", "names"),
    [
        ("2/u0", ["2/u0"]),
        ("2/u0/unit", ["2/u0"]),  # the insights drop-down's form
        (("2", 0), ["2/u0"]),  # one reference, not the list ["2", 0]
        (("2", np.int64(0)), ["2/u0"]),
        (("2", torch.tensor(0)), ["2/u0"]),
        ("2/u0/k0", ["2/u0/k0"]),  # k0 of an unsplit unit of a split layer: the unit
        ("0/u2/k0", ["0/u2/k0"]),  # ... and of a layer that is not split at all
        (("0", 2, 0), ["0/u2/k0"]),
        ("2/u1", ["2/u1"]),
        ("2/u1/k1", ["2/u1/k1"]),
        ("2/u1/residual", ["2/u1/residual"]),
        (("2", 1, "residual"), ["2/u1/residual"]),
        (("2", 1, -1), ["2/u1/residual"]),
        (SubunitRef("2", 1, 0), ["2/u1/k0"]),
        (["5/u2", ("2", 1, 1), "0/u3"], ["5/u2", "2/u1/k1", "0/u3"]),
        (("2/u0", "2/u1/k0"), ["2/u0", "2/u1/k0"]),  # a tuple of references is a list
    ],
)
def test_both_accept_the_same_spellings(
    model: nn.Module, data: TensorDataset, refs: Any, names: list[str]
) -> None:
    from_references, from_featurevis = _names_of_both(model, data, refs)
    assert from_references == names
    assert from_featurevis == names


@pytest.mark.parametrize(
    ("refs", "error"),
    [
        ("2/u9", UnknownSubunitError),  # unit out of range
        (("2", 3), UnknownSubunitError),
        ("2/u0/k1", UnknownSubunitError),  # unit 0 is not split
        ("0/u0/residual", UnknownSubunitError),  # layer 0 is not split
        ("2/u1/k2", UnknownSubunitError),  # unit 1 has k0 and k1 only
        ("2/u9/k0", UnknownSubunitError),
        ("2", UnknownSubunitError),  # no form at all
        ("2/u1/k", UnknownSubunitError),
        (("2", 1.0), UnknownSubunitError),  # not an int
        (("2", True), UnknownSubunitError),
        (("", 1), UnknownSubunitError),
        ("nope/u1", UnknownLayerError),
        (("nope", 1, 0), UnknownLayerError),
        ("1/u0", UnsupportedLayerError),  # a ReLU
        ("1/u0/k0", UnsupportedLayerError),
        ([], InvalidArgumentError),
        (["2/u0", "2/u0/unit"], InvalidArgumentError),  # the same unit twice
        (["2/u1/residual", ("2", 1, "residual")], InvalidArgumentError),
        (3, ArgumentTypeError),
        ({"2/u0"}, ArgumentTypeError),  # a set has no order
        (b"2/u0", ArgumentTypeError),
    ],
)
def test_both_raise_the_same_error_for_a_bad_ref(
    model: nn.Module, data: TensorDataset, refs: Any, error: type[Exception]
) -> None:
    with pytest.raises(error) as from_references:
        reference_images(model, data, refs, k=1, progress=False)
    with pytest.raises(error) as from_featurevis:
        visualise(model, refs, image_shape=(1, HW, HW), steps=1, progress=False)
    assert type(from_references.value) is type(from_featurevis.value)
    assert str(from_references.value) == str(from_featurevis.value)


def test_a_target_reads_the_rows_it_names(model: nn.Module) -> None:
    """Units read the layer's own output, subunits their rows of ``.subunits``."""
    split = model[2]
    unit = resolve_target(model, ("2", 1))
    assert unit.module(model) is split and unit.rows == ((1, 1.0),) and unit.kind == "conv2d"
    k0 = resolve_target(model, "2/u0/k0")  # unsplit: the unit, not a row of .subunits
    assert k0.module(model) is split and k0.rows == ((0, 1.0),) and k0.subunit is None
    residual = resolve_target(model, "2/u1/residual")
    assert residual.module(model) is split.subunits and residual.subunit == -1
    # rows of .subunits: the 3 units (unit 1's row is its k0), then unit 1's k1 and residual
    assert residual.rows == ((4, 1.0),)
    assert resolve_target(model, "2/u1/k1").rows == ((3, 1.0),)
    assert resolve_target(model, "2/u1/k0").rows == ((1, 1.0),)
    plain = resolve_target(model, "5/u2")
    assert plain.module(model) is model[5] and plain.kind == "linear"

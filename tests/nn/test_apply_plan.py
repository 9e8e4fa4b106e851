"""apply_plan / plan_of / iter_split_layers / get_split_layer: surgery on whole models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import assert_unchanged, rel_err, snapshot
from neuronsplit.errors import PlanError, UnknownLayerError
from neuronsplit.nn import (
    SplitConv2d,
    SplitLinear,
    apply_plan,
    get_split_layer,
    iter_split_layers,
    plan_of,
)
from neuronsplit.plan import LayerSplit, SplitPlan, UnitSplit

DT = torch.float64


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.shared = nn.Linear(6, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x).mean((2, 3))
        h = torch.relu(self.shared(h))
        h = torch.relu(self.shared(h))  # same module twice
        return self.head(h)


def _plan() -> SplitPlan:
    """One form per layer: body.0 overlap, head disjoint, shared overlap (K = 2, 3, 2)."""
    return SplitPlan(
        [
            UnitSplit("body.0", 2, [[0], [1]], shared=[2], merge="overlap"),
            UnitSplit("head", 1, [[0, 1], [2, 3], [4]], shared=[5], merge="disjoint"),
            UnitSplit("shared", 0, [[0, 1, 2], [3, 4, 5]], merge="overlap"),
        ]
    )


def test_apply_plan_replaces_layers_and_keeps_function() -> None:
    torch.manual_seed(0)
    net = _Net().to(DT).eval()
    split = apply_plan(net, _plan())
    assert isinstance(split.body[0], SplitConv2d)
    assert isinstance(split.head, SplitLinear) and isinstance(split.shared, SplitLinear)
    assert [n for n, _ in iter_split_layers(split)] == ["body.0", "shared", "head"]
    assert get_split_layer(split, "head").split_units == (1,)
    assert split.head.form == "disjoint" and split.shared.form == "overlap"
    assert split.head.layer_split == _plan().layer("head")
    x = torch.randn(4, 3, 8, 8, dtype=DT)
    assert rel_err(net(x), split(x)) < 1e-12
    assert not split.training and not split.head.training


def test_apply_plan_takes_layer_splits() -> None:
    torch.manual_seed(0)
    net = _Net().to(DT).eval()
    ls = LayerSplit("head", [3, 0], [[0, 1, 2, -1, 0, 1], [1, 1, 0, 0, -1, -1]], merge="overlap")
    split = apply_plan(net, SplitPlan([ls]))
    assert split.head.split_units == (0, 3) and split.head.merge.num_extra == 3 + 2
    x = torch.randn(4, 3, 8, 8, dtype=DT)
    assert rel_err(net(x), split(x)) < 1e-12
    assert plan_of(split) == SplitPlan([ls])


def test_apply_plan_replaces_every_path_of_a_shared_module() -> None:
    torch.manual_seed(0)
    inner = nn.Linear(3, 3, dtype=DT)
    net = nn.Sequential(inner, nn.Tanh(), inner)
    split = apply_plan(net, SplitPlan([UnitSplit("0", 1, [[0], [1]], shared=[2])]))
    assert split[0] is split[2] and isinstance(split[2], SplitLinear)
    x = torch.randn(5, 3, dtype=DT)
    assert rel_err(net(x), split(x)) < 1e-12
    assert [n for n, _ in iter_split_layers(split)] == ["0"]


def test_apply_plan_never_mutates_the_input() -> None:
    torch.manual_seed(0)
    net = _Net().train()
    net.head.weight.requires_grad_(False)
    handle = net.head.register_forward_hook(lambda m, i, o: None)
    snap = snapshot(net)
    split = apply_plan(net, _plan())
    assert_unchanged(net, snap)
    assert split.training and split.head.training  # same mode as the input
    assert not split.head.subunits.weight.requires_grad  # flags carried over
    assert split.body[0].subunits.weight.requires_grad
    assert not split.head._forward_hooks  # hooks on replaced layers are not carried over
    # failing plans leave it untouched too (the failure is in the last layer of the plan)
    bad = SplitPlan([*_plan().splits[:2], UnitSplit("shared", 9, [[0], [1]], shared=[2, 3, 4, 5])])
    assert bad.layers == ("body.0", "head", "shared")
    with pytest.raises(PlanError, match="unit 9 is out of range for layer 'shared'"):
        apply_plan(net, bad)
    assert_unchanged(net, snap)
    handle.remove()


def test_apply_plan_type_errors() -> None:
    with pytest.raises(TypeError, match="plan must be a SplitPlan, got list"):
        apply_plan(_Net(), list(_plan()))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        apply_plan("model", _plan())  # type: ignore[arg-type]


def test_plan_of_round_trip_and_get_split_layer_errors() -> None:
    net = _Net()
    plan = _plan()
    split = apply_plan(net, plan)
    rebuilt = plan_of(split)
    assert rebuilt == plan
    assert set(rebuilt.splits) == set(plan.splits)
    assert rebuilt.layers == ("body.0", "shared", "head")  # module order
    again = apply_plan(net, rebuilt)
    for (n1, a), (n2, b) in zip(iter_split_layers(split), iter_split_layers(again), strict=True):
        assert n1 == n2
        assert torch.equal(a.subunits.weight, b.subunits.weight)
        assert torch.equal(a.merge.index, b.merge.index)
    with pytest.raises(UnknownLayerError, match=r"'body.1' is a BatchNorm2d, not a split layer"):
        get_split_layer(split, "body.1")
    with pytest.raises(UnknownLayerError, match=r"none \(run apply_plan first\)"):
        get_split_layer(net, "head")
    with pytest.raises(UnknownLayerError, match="no layer 'heads'"):
        get_split_layer(split, "heads")
    assert plan_of(net) == SplitPlan([])


def test_plan_of_renames_to_the_current_path() -> None:
    net = _Net()
    split = apply_plan(net, _plan())
    wrapped = nn.Sequential(split)
    plan = plan_of(wrapped)
    assert plan.layers == ("0.body.0", "0.shared", "0.head")
    assert plan.layer("0.head") == _plan().layer("head").renamed("0.head")
    x = torch.randn(2, 3, 5, 5)
    again = apply_plan(nn.Sequential(net), plan).eval()
    assert torch.equal(again(x), wrapped.eval()(x))


def test_empty_plan_gives_equal_copy() -> None:
    net = _Net()
    copy_ = apply_plan(net, SplitPlan([]))
    assert copy_ is not net
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(net.eval()(x), copy_.eval()(x))


def test_captum_sees_subunits_and_relevance_is_conserved() -> None:
    """grad x act on the .subunits rows of a split unit sums to the unit's own attribution."""
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).to(DT).eval()
    for form in ("disjoint", "overlap"):
        plan = SplitPlan([UnitSplit("0", 2, [[0, 1], [2, 3]], shared=[4, 5], merge=form)])
        split = apply_plan(net, plan)
        x = torch.randn(4, 6, dtype=DT)
        a_orig = captum_attr.LayerGradientXActivation(net, net[0]).attribute(x, target=1)
        layer = split[0]
        a_sub = captum_attr.LayerGradientXActivation(split, layer.subunits).attribute(x, target=1)
        assert a_sub.shape == (4, 5 + 2)
        # Captum sees the stored (disjoint) rows in both forms: t_0, t_1 and r add up
        idx = [layer.subunit_index(2, 0), layer.subunit_index(2, 1), layer.residual_index(2)]
        assert idx == [2, 5, 6]
        torch.testing.assert_close(a_sub[:, idx].sum(1), a_orig[:, 2], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a_sub[:, [0, 1, 3, 4]], a_orig[:, [0, 1, 3, 4]])
        act = captum_attr.LayerActivation(split, layer.subunits).attribute(x)
        torch.testing.assert_close(act, layer.subunits(x))

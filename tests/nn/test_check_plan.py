"""check_plan(model, plan): a plan checked against a model (was SplitPlan.validate in 0.1)."""

from __future__ import annotations

import pytest
from torch import nn

from helpers import assert_unchanged, snapshot
from neuronsplit.errors import (
    PlanError,
    PlanMismatchError,
    UnknownLayerError,
    UnsupportedLayerError,
)
from neuronsplit.nn import apply_plan, check_plan
from neuronsplit.plan import LayerSplit, SplitPlan, UnitSplit


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 1, groups=2),
        nn.Flatten(),
        nn.Linear(4, 5),
    )


def test_accepts_a_fitting_plan_and_changes_nothing() -> None:
    net = _net()
    snap = snapshot(net)
    plan = SplitPlan(
        [
            UnitSplit("0", 3, [[0], [1]], shared=[2]),
            LayerSplit("4", [0, 4], [[0, 1, 2, -1], [2, 1, 0, 0]], merge="overlap"),
        ]
    )
    assert check_plan(net, plan) is None
    check_plan(net, SplitPlan([]))
    assert_unchanged(net, snap)


def test_unknown_layer_lists_close_names() -> None:
    plan = SplitPlan([UnitSplit("5", 0, [[0], [1]])])
    with pytest.raises(UnknownLayerError, match=r"no layer '5'; closest .*'4'"):
        check_plan(_net(), plan)


def test_refuses_batchnorm_and_grouped_conv() -> None:
    with pytest.raises(UnsupportedLayerError, match=r"layer '1' is a BatchNorm2d"):
        check_plan(_net(), SplitPlan([UnitSplit("1", 0, [[0], [1]], shared=[2, 3])]))
    with pytest.raises(UnsupportedLayerError, match=r"'2' is a grouped Conv2d \(groups=2\)"):
        check_plan(_net(), SplitPlan([UnitSplit("2", 0, [[0], [1]])]))


def test_refuses_non_zero_padding_mode() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(UnsupportedLayerError, match=r"'0' uses padding_mode='reflect'"):
        check_plan(net, SplitPlan([UnitSplit("0", 0, [[0], [1]], shared=[2])]))


def test_unit_and_index_range() -> None:
    with pytest.raises(PlanMismatchError, match=r"unit 5 is out of range for layer '4'"):
        check_plan(_net(), SplitPlan([UnitSplit("4", 5, [[0], [1]], shared=[2, 3])]))
    with pytest.raises(
        PlanMismatchError,
        match=r"split of layer '4' covers 3 inputs, but the layer has 4: inputs 3 are in no group",
    ):
        check_plan(_net(), SplitPlan([UnitSplit("4", 0, [[0], [1]], shared=[2])]))
    with pytest.raises(
        PlanMismatchError,
        match=r"split of layer '0' covers 4 inputs, but the layer has 3: input indices 3 are out "
        r"of range \(valid: 0..2\)",
    ):
        check_plan(_net(), SplitPlan([UnitSplit("0", 0, [[0], [1]], shared=[2, 3])]))
    with pytest.raises(PlanMismatchError, match=r"units 5, 7 are out of range for layer '4'"):
        check_plan(_net(), SplitPlan([LayerSplit("4", [1, 5, 7], [[0, 1, -1, -1]] * 3)]))


def test_refuses_nested_splits() -> None:
    net = _net()
    plan = SplitPlan([UnitSplit("0", 0, [[0], [1]], shared=[2])])
    split = apply_plan(net, plan)
    with pytest.raises(PlanError, match=r"layer '0' is already split; nested"):
        check_plan(split, plan)
    inner = SplitPlan([UnitSplit("0.subunits", 0, [[0], [1]], shared=[2])])
    with pytest.raises(PlanError, match=r"'0.subunits' lies inside the split layer '0'"):
        check_plan(split, inner)
    # another layer of the split model is fine
    check_plan(split, SplitPlan([UnitSplit("4", 0, [[0], [1]], shared=[2, 3])]))


class _CustomConv(nn.Conv2d):
    def forward(self, x):  # weight standardisation: not linear in the rows
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / 2
        return self._conv_forward(x, w, self.bias)


def test_refuses_subclass_with_custom_forward_and_mha() -> None:
    net = nn.Sequential(_CustomConv(3, 4, 1))
    with pytest.raises(UnsupportedLayerError, match=r"'0' is a _CustomConv, a Conv2d subclass"):
        check_plan(net, SplitPlan([UnitSplit("0", 0, [[0], [1]], shared=[2])]))
    mha = nn.Sequential(nn.MultiheadAttention(4, 2))
    groups = [[0], [1]]
    with pytest.raises(UnsupportedLayerError, match=r"'0.out_proj' belongs to nn.MultiheadAtt"):
        check_plan(mha, SplitPlan([UnitSplit("0.out_proj", 0, groups, shared=[2, 3])]))


def test_apply_plan_runs_the_same_checks() -> None:
    net = _net()
    snap = snapshot(net)
    with pytest.raises(UnsupportedLayerError, match="grouped Conv2d"):
        apply_plan(net, SplitPlan([UnitSplit("2", 0, [[0], [1]])]))
    with pytest.raises(PlanMismatchError, match="covers 3 inputs"):
        apply_plan(net, SplitPlan([UnitSplit("4", 0, [[0], [1]], shared=[2])]))
    assert_unchanged(net, snap)


def test_two_names_of_one_shared_module_are_refused() -> None:
    inner = nn.Linear(3, 3)
    net = nn.Sequential(inner, nn.Tanh(), inner)
    plan = SplitPlan([UnitSplit("0", 1, [[0], [1]], [2]), UnitSplit("2", 2, [[0], [1]], [2])])
    with pytest.raises(PlanError, match="'0'.*'2'|'2'.*'0'"):
        check_plan(net, plan)

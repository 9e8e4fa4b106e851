"""UnitSplit / SplitPlan: normalisation, validation, JSON round trip, validate(model)."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from neuronsplit.errors import (
    CorruptFileError,
    PlanError,
    PlanMismatchError,
    UnknownLayerError,
    UnsupportedLayerError,
)
from neuronsplit.plan import PLAN_VERSION, SplitPlan, UnitSplit
from neuronsplit.nn import apply_plan


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 1, groups=2),
        nn.Flatten(),
        nn.Linear(4, 5),
    )


# --------------------------------------------------------------------------- UnitSplit basics
def test_unit_split_normalises_to_sorted_int_tuples():
    s = UnitSplit("fc", np.int64(3), [[5, np.int32(1)], (4, 2)], shared=[0, 3])
    assert s.unit == 3 and type(s.unit) is int
    assert s.groups == ((1, 5), (2, 4))
    assert all(type(i) is int for g in s.groups for i in g)
    assert s.shared == (0, 3)
    assert s.merge == "overlap" and s.labels == ()
    assert s.num_subunits == 2 and s.num_extra_rows == 2
    assert hash(s) == hash(UnitSplit("fc", 3, [[1, 5], [2, 4]], shared=[3, 0]))


def test_unit_split_is_frozen():
    s = UnitSplit("fc", 0, [[0], [1]])
    with pytest.raises(AttributeError):
        s.unit = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("groups", "shared", "named"),
    [
        ([[0, 1], [1, 2]], [], "1"),  # across groups
        ([[0, 7], [2]], [7], "7"),  # group and shared
        ([[4, 4], [2]], [], "4"),  # twice in one group
        ([[0, 1, 2], [5, 6]], [0, 1, 2, 6], "0-2, 6"),  # several, compressed
    ],
)
def test_duplicate_index_is_named(groups, shared, named):
    with pytest.raises(PlanError, match=rf"input indices {named} appear more than once"):
        UnitSplit("fc", 2, groups, shared=shared)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"unit": -1}, "unit of layer 'fc' must be >= 0, got -1"),
        ({"unit": 1.5}, "must be an int, got float 1.5"),
        ({"unit": True}, "got the bool True"),
        ({"groups": [[0], [-3]]}, "must be >= 0, got -3"),
        ({"groups": [[0], ["a"]]}, "must be an int, got str 'a'"),
        ({"groups": [[0, 1]]}, "has 1 group"),
        ({"groups": []}, "has 0 group"),
        ({"groups": "01"}, "groups of the split of unit 0 of 'fc' must be a sequence"),
        ({"merge": "sum"}, "merge must be one of 'disjoint', 'overlap'; got 'sum'"),
        ({"labels": ("a",)}, "has 2 groups but 1 labels"),
        ({"labels": "ab"}, "labels of the split"),
        ({"labels": (1, 2)}, "must all be str"),
        ({"layer": ""}, "non-empty dotted name"),
        ({"shared": 3}, "shared of the split of unit 0 of 'fc' must be a sequence of ints"),
    ],
)
def test_unit_split_rejects_bad_values(kwargs, match):
    args = {"layer": "fc", "unit": 0, "groups": [[0], [1]], **kwargs}
    with pytest.raises(PlanError, match=match):
        UnitSplit(**args)


def test_empty_group_is_allowed_and_labels_kept():
    s = UnitSplit("fc", 0, [[], [1]], shared=[0], labels=["clock", "cauliflower"])
    assert s.groups == ((), (1,))
    assert s.labels == ("clock", "cauliflower")


def test_validate_names_missing_and_out_of_range_indices():
    s = UnitSplit("fc", 2, [[0, 1], [5]], shared=[9])
    with pytest.raises(PlanMismatchError, match=r"input indices 9 .* out of range .* 8 inputs"):
        s.validate(8, 4)
    s = UnitSplit("fc", 2, [[0, 1], [5]], shared=[7])
    with pytest.raises(PlanMismatchError, match=r"input indices 2-4, 6 of layer 'fc' are in no"):
        s.validate(8, 4)
    with pytest.raises(
        PlanMismatchError, match=r"unit 2 is out of range .* 2 units \(valid: 0..1\)"
    ):
        UnitSplit("fc", 2, [[0], [1]]).validate(2, 2)
    UnitSplit("fc", 1, [[0], [1]]).validate(2, 2)  # complete: no error


def test_unit_split_dict_and_json_round_trip():
    s = UnitSplit("a.b", 7, [[3, 1], [2]], shared=[0], merge="disjoint", labels=("x", "y"))
    d = s.to_dict()
    assert d == {
        "layer": "a.b",
        "unit": 7,
        "groups": [[1, 3], [2]],
        "shared": [0],
        "merge": "disjoint",
        "labels": ["x", "y"],
    }
    assert UnitSplit.from_dict(d) == s
    assert UnitSplit.from_json(s.to_json()) == s
    assert json.loads(s.to_json()) == d


def test_unit_split_from_dict_rejects_unknown_and_missing_keys():
    with pytest.raises(PlanError, match=r"unknown key\(s\) \['group'\]"):
        UnitSplit.from_dict({"layer": "fc", "unit": 0, "group": [[0], [1]]})
    with pytest.raises(PlanError, match=r"lacks key\(s\) \['groups'\]"):
        UnitSplit.from_dict({"layer": "fc", "unit": 0})
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        UnitSplit.from_json("{nope")


# --------------------------------------------------------------------------- SplitPlan basics
def _plan(meta=None) -> SplitPlan:
    return SplitPlan(
        [
            UnitSplit("4", 1, [[0], [1, 2]], shared=[3]),
            UnitSplit("0", 2, [[0], [1]], shared=[2], merge="disjoint"),
            UnitSplit("4", 0, [[3], [2], [1]], shared=[0]),
        ],
        meta=meta if meta is not None else {"method": "test", "rho": 0.5, "nested": {"a": [1]}},
    )


def test_plan_container_behaviour():
    plan = _plan()
    assert len(plan) == 3
    assert [s.unit for s in plan] == [1, 2, 0]
    assert plan[1].layer == "0"
    assert plan.layers == ("4", "0")
    by = plan.by_layer()
    assert list(by) == ["4", "0"]
    assert [s.unit for s in by["4"]] == [1, 0]
    assert isinstance(plan.splits, tuple)
    assert SplitPlan([]).splits == () and len(SplitPlan([])) == 0


def test_plan_rejects_unit_split_twice_and_bad_entries():
    with pytest.raises(PlanError, match=r"unit 1 of layer 'fc' is split twice"):
        SplitPlan([UnitSplit("fc", 1, [[0], [1]]), UnitSplit("fc", 1, [[1], [0]])])
    with pytest.raises(PlanError, match="must contain UnitSplit objects, got dict"):
        SplitPlan([{"layer": "fc"}])  # type: ignore[list-item]
    with pytest.raises(PlanError, match="sequence of UnitSplit"):
        SplitPlan(UnitSplit("fc", 1, [[0], [1]]))  # type: ignore[arg-type]


def test_plan_meta_is_read_only_copy():
    src = {"k": 1, "nested": {"a": [1, 2]}}
    plan = SplitPlan([], meta=src)
    src["k"] = 2
    src["nested"]["a"].append(3)
    assert plan.meta["k"] == 1 and list(plan.meta["nested"]["a"]) == [1, 2]
    with pytest.raises(TypeError):
        plan.meta["k"] = 5  # type: ignore[index]
    with pytest.raises(TypeError):
        plan.meta["nested"]["a"] = 5  # type: ignore[index]
    with pytest.raises(PlanError, match="JSON-serialisable"):
        SplitPlan([], meta={"t": torch.zeros(1)})
    with pytest.raises(PlanError, match="JSON-serialisable"):
        SplitPlan([], meta={"x": float("nan")})


def test_plan_equality_hash_pickle_deepcopy():
    plan = _plan()
    assert plan == _plan()
    assert hash(plan) == hash(_plan())
    assert plan != _plan(meta={"method": "other"})
    assert pickle.loads(pickle.dumps(plan)) == plan
    assert copy.deepcopy(plan) == plan


def test_plan_json_round_trip_str_and_path(tmp_path):
    plan = _plan()
    text = plan.to_json()
    data = json.loads(text)
    assert data["version"] == PLAN_VERSION == 1
    assert data["format"] == "neuronsplit.SplitPlan"
    assert data["meta"]["nested"] == {"a": [1]}
    assert SplitPlan.from_json(text) == plan
    path = tmp_path / "plan.json"
    assert plan.to_json(path, indent=2) == path.read_text()
    assert SplitPlan.from_json(path) == plan
    assert SplitPlan.from_json(str(path)) == plan
    assert SplitPlan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize(
    ("text", "err", "match"),
    [
        ("{not json", CorruptFileError, "not valid JSON"),
        ('{"splits": []}', CorruptFileError, "lacks an integer 'version'"),
        (
            '{"version": 99, "splits": []}',
            CorruptFileError,
            "version 99, this neuronsplit reads up",
        ),
        ('{"format": "x", "version": 1, "splits": []}', CorruptFileError, "format is 'x'"),
        ('{"version": 1, "splits": {}}', CorruptFileError, "'splits' must be a list"),
        ('{"version": 1, "splits": [], "meta": [1]}', CorruptFileError, "'meta' must be an object"),
        (
            '{"version": 1, "splits": [{"layer": "a", "unit": 0, "groups": [[0], [0]]}]}',
            PlanError,
            "input indices 0 appear more than once",
        ),
    ],
)
def test_plan_from_json_errors(text, err, match):
    with pytest.raises(err, match=match):
        SplitPlan.from_json(text)


def test_plan_from_json_missing_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(CorruptFileError, match="nope.json' does not exist"):
        SplitPlan.from_json(missing)


# --------------------------------------------------------------------------- validate(model)
def test_validate_accepts_a_fitting_plan():
    SplitPlan([UnitSplit("0", 3, [[0], [1]], shared=[2])]).validate(_net())


def test_validate_unknown_layer_lists_close_names():
    plan = SplitPlan([UnitSplit("5", 0, [[0], [1]])])
    with pytest.raises(UnknownLayerError, match=r"no layer '5'; closest .*'4'"):
        plan.validate(_net())


def test_validate_refuses_batchnorm_and_grouped_conv():
    with pytest.raises(UnsupportedLayerError, match=r"layer '1' is a BatchNorm2d"):
        SplitPlan([UnitSplit("1", 0, [[0], [1]], shared=[2, 3])]).validate(_net())
    with pytest.raises(UnsupportedLayerError, match=r"'2' is a grouped Conv2d \(groups=2\)"):
        SplitPlan([UnitSplit("2", 0, [[0], [1]])]).validate(_net())


def test_validate_unit_and_index_range():
    with pytest.raises(PlanMismatchError, match=r"unit 5 is out of range for layer '4'"):
        SplitPlan([UnitSplit("4", 5, [[0], [1]], shared=[2, 3])]).validate(_net())
    with pytest.raises(PlanMismatchError, match=r"input indices 3 of layer '4' are in no group"):
        SplitPlan([UnitSplit("4", 0, [[0], [1]], shared=[2])]).validate(_net())
    with pytest.raises(PlanMismatchError, match=r"input indices 3 in the split of unit 0 are out"):
        SplitPlan([UnitSplit("0", 0, [[0], [1]], shared=[2, 3])]).validate(_net())


def test_validate_refuses_nested_splits():
    net = _net()
    plan = SplitPlan([UnitSplit("0", 0, [[0], [1]], shared=[2])])
    split = apply_plan(net, plan)
    with pytest.raises(PlanError, match=r"layer '0' is already split; nested"):
        plan.validate(split)
    inner = SplitPlan([UnitSplit("0.subunits", 0, [[0], [1]], shared=[2])])
    with pytest.raises(PlanError, match=r"'0.subunits' lies inside the split layer '0'"):
        inner.validate(split)


class _CustomConv(nn.Conv2d):
    def forward(self, x):  # weight standardisation: not linear in the rows
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / 2
        return self._conv_forward(x, w, self.bias)


def test_validate_refuses_subclass_with_custom_forward_and_mha():
    net = nn.Sequential(_CustomConv(3, 4, 1))
    with pytest.raises(UnsupportedLayerError, match=r"'0' is a _CustomConv, a Conv2d subclass"):
        SplitPlan([UnitSplit("0", 0, [[0], [1]], shared=[2])]).validate(net)
    mha = nn.Sequential(nn.MultiheadAttention(4, 2))
    groups = [[0], [1]]
    with pytest.raises(UnsupportedLayerError, match=r"'0.out_proj' belongs to nn.MultiheadAtt"):
        SplitPlan([UnitSplit("0.out_proj", 0, groups, shared=[2, 3])]).validate(mha)


@pytest.mark.parametrize("module", ["plan", "surgery", "_index_merge", "verify", "io"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"neuronsplit.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} doctest(s) failed in neuronsplit.{module}"

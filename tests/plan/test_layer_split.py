"""LayerSplit: the dense per-layer assignment, its validation, views and value semantics."""

from __future__ import annotations

import copy
import pickle
import random

import numpy as np
import pytest
import torch

from helpers import random_split
from neuronsplit.errors import PlanError, PlanMismatchError
from neuronsplit.plan import SHARED, LayerSplit, SplitPlan, UnitSplit


def _ls(**kw: object) -> LayerSplit:
    """Three units given out of order (5, 1, 3) over four inputs, K = 3, 2, 2."""
    args: dict[str, object] = {
        "layer": "blocks.0.fc",
        "units": [5, 1, 3],
        "assignment": [[2, 0, -1, 1], [1, 1, 0, -1], [0, -1, -1, 1]],
        "num_subunits": None,
        "merge": "overlap",
        "labels": {5: ("a", "b", "c")},
    }
    args.update(kw)
    return LayerSplit(**args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- construction
def test_units_are_sorted_and_rows_follow() -> None:
    ls = _ls(num_subunits=[3, 2, 4])
    assert ls.layer == "blocks.0.fc" and ls.merge == "overlap"
    assert ls.units.tolist() == [1, 3, 5]
    assert ls.assignment.tolist() == [[1, 1, 0, -1], [0, -1, -1, 1], [2, 0, -1, 1]]
    assert ls.num_subunits.tolist() == [2, 4, 3]  # reordered with the units
    assert ls.units.dtype == torch.int64 and ls.num_subunits.dtype == torch.int64
    assert ls.num_units == 3 and ls.num_inputs == 4 and ls.num_extra_rows == 9
    assert ls.labels == {5: ("a", "b", "c")}
    assert [ls.position(u) for u in (1, 3, 5)] == [0, 1, 2]
    assert 3 in ls and 2 not in ls and "x" not in ls
    with pytest.raises(KeyError):
        ls.position(2)


def test_num_subunits_is_inferred_from_the_largest_assignment() -> None:
    ls = _ls()
    assert ls.num_subunits.tolist() == [2, 2, 3]  # units 1, 3, 5
    # an explicit K may be larger than the largest subunit used (empty subunits are allowed)
    wide = LayerSplit("fc", [0], [[0, 2, -1]], num_subunits=[5])
    assert wide.num_subunits.tolist() == [5] and wide.num_extra_rows == 5
    assert wide.unit_split(0).groups == ((0,), (), (1,), (), ())


def test_inputs_are_copied_and_accept_numpy_and_tensors() -> None:
    units = np.array([2, 0])
    assign = torch.tensor([[0, 1, -1], [1, 0, 0]])
    ls = LayerSplit("fc", units, assign)
    units[0] = 7
    assign[0, 0] = 1
    assert ls.units.tolist() == [0, 2]
    assert ls.assignment.tolist() == [[1, 0, 0], [0, 1, -1]]
    assert LayerSplit("fc", [2, 0], np.array([[0, 1, -1], [1, 0, 0]], dtype=np.int8)) == ls
    with pytest.raises(AttributeError, match="read-only"):
        ls.merge = "disjoint"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("top", "dtype"),
    [(1, torch.int8), (126, torch.int8), (127, torch.int16), (40, torch.int8), (300, torch.int16)],
)
def test_storage_is_int8_up_to_k_127_then_int16(top: int, dtype: torch.dtype) -> None:
    ls = LayerSplit("fc", [0, 4], [[top, 0, -1], [1, 0, 0]])
    assert ls.num_subunits.tolist() == [top + 1, 2]
    assert ls.assignment.dtype == dtype
    assert ls.assignment[0, 0].item() == top and ls.assignment[0, 2].item() == SHARED
    back = LayerSplit.from_unit_splits(list(ls.unit_splits()))
    assert back == ls and back.assignment.dtype == dtype


def test_k_above_int16_is_refused() -> None:
    with pytest.raises(PlanError, match="has a unit with K=40000 subunits; at most 32767"):
        LayerSplit("fc", [0], [[0, 1]], num_subunits=[40000])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"units": [5, 1, 5]}, r"units 5 are split twice in the split of layer 'blocks.0.fc'"),
        ({"units": [5, 1]}, "lists 2 units but its assignment has 3 rows"),
        ({"units": [5, -1, 3]}, "units of the split of layer 'blocks.0.fc' must be >= 0, got -1"),
        ({"units": [[5, 1, 3]]}, r"units of the split .* must be 1-d, got shape \(1, 3\)"),
        ({"units": [5.0, 1.0, 3.0]}, "units of the split .* must hold integers, got dtype"),
        ({"assignment": [0, 1, -1]}, r"assignment of the split .* must be 2-d, got shape \(3,\)"),
        ({"assignment": [[0.5, 1, 0]] * 3}, "assignment .* must hold integers, got dtype"),
        ({"assignment": [[True, False]] * 3}, "assignment .* must hold integers, got dtype"),
        ({"assignment": [["a", "b"]] * 3}, "assignment of the split .* must be integers"),
        ({"assignment": [[0, 1], [0]]}, "assignment of the split .* must be integers"),
        ({"num_subunits": [2, 2]}, "num_subunits of the split .* has 2 entries for 3 units"),
        ({"num_subunits": [3, 1, 2]}, r"units 1 of the split .* have fewer than 2 subunits"),
        ({"num_subunits": [3, 2, 2], "assignment": [[3, 0, -1, 1], [1, 1, 0, -1], [0] * 4]},
         r"assignment of input 0 for unit 5 .* is 3; valid: -1 \(shared\) or 0..2"),
        ({"num_subunits": [3, 2, 2], "assignment": [[2, 0, -1, 1], [1, 1, 0, -2], [0] * 4]},
         r"assignment of input 3 for unit 1 .* is -2; valid: -1 \(shared\) or 0..1"),
        ({"assignment": [[2, 0, -1, 1], [1, 1, 0, -1], [0, 0, 0, -1]]},
         r"units 3 of the split .* have fewer than 2 subunits; a unit with a single concept"),
        ({"merge": "sum"}, "merge must be one of 'disjoint', 'overlap'; got 'sum'"),
        ({"layer": ""}, "layer must be a non-empty dotted name"),
        ({"layer": 3}, "layer must be a non-empty dotted name"),
        ({"labels": {2: ("a", "b")}}, "labels given for unit 2, which the split .* does not split"),
        ({"labels": {5: ("a", "b")}}, r"labels of unit 5 .* must be 3 strings .* got \('a', 'b'\)"),
        ({"labels": {1: ("a", 2)}}, r"labels of unit 1 .* must be 2 strings"),
    ],
)  # fmt: skip
def test_validation_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        _ls(**kwargs)


def test_labels_given_as_one_string_are_refused() -> None:
    with pytest.raises(PlanError, match="labels of unit 1"):
        _ls(labels={1: "ab"})


@pytest.mark.parametrize("labels", [{"x": ("a", "b")}, {1: 5}, {1: None}])
def test_malformed_labels_raise_plan_error(labels: dict) -> None:
    with pytest.raises(PlanError):
        _ls(labels=labels)


def test_partition_is_accepted_with_a_warning() -> None:
    with pytest.deprecated_call():
        ls = _ls(merge="partition")
    assert ls.merge == "disjoint"
    assert LayerSplit("fc", [0], [[0, 1]]).merge == "disjoint"  # the default form


# --------------------------------------------------------------------------- unit views
def test_unit_split_view() -> None:
    ls = _ls()
    s = ls.unit_split(5)
    assert s == UnitSplit(
        "blocks.0.fc", 5, [[1], [3], [0]], shared=[2], merge="overlap", labels=("a", "b", "c")
    )
    assert ls.unit_split(3) == UnitSplit("blocks.0.fc", 3, [[0], [3]], [1, 2], merge="overlap")
    assert [u.unit for u in ls.unit_splits()] == [1, 3, 5]
    with pytest.raises(KeyError):
        ls.unit_split(0)


@pytest.mark.parametrize("seed", range(5))
def test_unit_split_round_trip(seed: int) -> None:
    """UnitSplits -> LayerSplit -> UnitSplits is the identity, and so is the reverse."""
    rng = random.Random(seed)
    merge = rng.choice(["overlap", "disjoint"])
    n_in = rng.randint(1, 12)
    units = rng.sample(range(40), rng.randint(1, 6))
    splits = [random_split(rng, "m.fc", u, n_in, rng.randint(2, 5), merge) for u in units]
    ls = LayerSplit.from_unit_splits(splits)
    assert ls.units.tolist() == sorted(units)
    assert list(ls.unit_splits()) == sorted(splits, key=lambda s: s.unit)
    for s in splits:
        row = ls.assignment[ls.position(s.unit)]
        for k, group in enumerate(s.groups):
            assert (row[list(group)] == k).all()
        assert (row[list(s.shared)] == SHARED).all()
        assert int(ls.num_subunits[ls.position(s.unit)]) == s.num_subunits
    assert LayerSplit.from_unit_splits(list(ls.unit_splits())) == ls
    assert SplitPlan(splits).layer("m.fc") == ls


def test_from_unit_splits_keeps_labels_and_form() -> None:
    a = UnitSplit("fc", 2, [[0], [1]], [2], merge="disjoint", labels=("x", "y"))
    b = UnitSplit("fc", 0, [[2], [0, 1]], merge="disjoint")
    ls = LayerSplit.from_unit_splits([a, b])
    assert ls.merge == "disjoint" and ls.labels == {2: ("x", "y")}
    assert ls.unit_split(2) == a and ls.unit_split(0) == b


def test_from_unit_splits_errors() -> None:
    with pytest.raises(PlanError, match="needs at least one UnitSplit"):
        LayerSplit.from_unit_splits([])
    with pytest.raises(PlanError, match=r"must name the same layer, got \['a', 'b'\]"):
        LayerSplit.from_unit_splits([UnitSplit("a", 0, [[0], [1]]), UnitSplit("b", 0, [[0], [1]])])
    with pytest.raises(PlanError, match=r"units of layer 'a' use different merge forms"):
        LayerSplit.from_unit_splits(
            [UnitSplit("a", 0, [[0], [1]]), UnitSplit("a", 1, [[0], [1]], merge="overlap")]
        )
    # an index gap is named with the unit and the layer
    with pytest.raises(
        PlanError,
        match=r"input indices 1 are in no group and not in shared for unit 3 of layer 'a'",
    ):
        LayerSplit.from_unit_splits([UnitSplit("a", 3, [[0], [3]], shared=[2, 4])])
    # the layer has as many inputs as the largest index routed: unit 0 misses input 3
    with pytest.raises(PlanError, match=r"input indices 3 are in no group .* unit 0 of layer 'a'"):
        LayerSplit.from_unit_splits(
            [UnitSplit("a", 0, [[0], [1]], [2]), UnitSplit("a", 1, [[0], [1]], [2, 3])]
        )
    with pytest.raises(PlanError, match="units 1 are split twice"):
        LayerSplit.from_unit_splits([UnitSplit("a", 1, [[0], [1]])] * 2)


def test_from_unit_splits_names_every_gap() -> None:
    with pytest.raises(PlanError, match=r"input indices 1, 4 are in no group"):
        LayerSplit.from_unit_splits([UnitSplit("a", 3, [[0, 5], [2]], shared=[3])])


# --------------------------------------------------------------------------- shapes
def test_check_shape_messages() -> None:
    ls = _ls()  # units 1, 3, 5 over 4 inputs
    ls.check_shape(6, 4)
    with pytest.raises(
        PlanMismatchError,
        match=r"the split of layer 'blocks.0.fc' covers 4 inputs, but the layer has 6: inputs "
        r"4-5 are in no group \(put unassigned inputs into shared\)\. Is the plan for another",
    ):
        ls.check_shape(6, 6)
    with pytest.raises(
        PlanMismatchError,
        match=r"covers 4 inputs, but the layer has 2: input indices 2-3 are out of range "
        r"\(valid: 0..1\)",
    ):
        ls.check_shape(6, 2)
    with pytest.raises(
        PlanMismatchError,
        match=r"unit 5 is out of range for layer 'blocks.0.fc', which has 5 units \(valid: 0..4\)",
    ):
        ls.check_shape(5, 4)
    with pytest.raises(PlanMismatchError, match=r"units 3, 5 are out of range .* 3 units"):
        ls.check_shape(3, 4)
    assert issubclass(PlanMismatchError, PlanError)


# --------------------------------------------------------------------------- value semantics
def test_equality_hash_pickle_deepcopy() -> None:
    ls = _ls()
    same = LayerSplit(
        "blocks.0.fc", [1, 3, 5], [[1, 1, 0, -1], [0, -1, -1, 1], [2, 0, -1, 1]],
        [2, 2, 3], merge="overlap", labels={5: ["a", "b", "c"]},
    )  # fmt: skip
    assert ls == same and hash(ls) == hash(same) and ls.digest() == same.digest()
    for other in (
        _ls(merge="disjoint"),
        _ls(labels={}),
        _ls(layer="blocks.0.fc2"),
        _ls(num_subunits=[3, 2, 3]),
        _ls(assignment=[[2, 0, -1, 1], [1, 1, 0, -1], [0, -1, 1, 1]]),
    ):
        assert ls != other and ls.digest() != other.digest()
    assert ls != "blocks.0.fc" and (ls == 3) is False
    for clone in (pickle.loads(pickle.dumps(ls)), copy.deepcopy(ls), copy.copy(ls)):
        assert clone == ls and hash(clone) == hash(ls)
        assert clone.assignment.dtype == ls.assignment.dtype
        assert clone.labels == ls.labels and clone.merge == "overlap"
    assert len({ls, same, _ls(merge="disjoint")}) == 2


def test_renamed_keeps_everything_but_the_name() -> None:
    ls = _ls()
    other = ls.renamed("wrapper.blocks.0.fc")
    assert other.layer == "wrapper.blocks.0.fc" and other != ls
    assert other.renamed("blocks.0.fc") == ls


def test_dict_header_and_tensors() -> None:
    ls = _ls()
    header = ls.header()
    assert header == {
        "layer": "blocks.0.fc",
        "merge": "overlap",
        "num_units": 3,
        "num_inputs": 4,
        "labels": {"5": ["a", "b", "c"]},
    }
    assert set(ls.tensors()) == {"units", "num_subunits", "assignment"}
    d = ls.to_dict()
    assert d["assignment"] == ls.assignment.tolist() and d["units"] == [1, 3, 5]
    assert LayerSplit.from_parts(d, d) == ls
    assert LayerSplit.from_parts(header, ls.tensors()) == ls


def test_repr_of_a_vit_sized_layer_is_short() -> None:
    g = torch.Generator().manual_seed(0)
    assign = torch.randint(-1, 4, (768, 3072), generator=g)
    ls = LayerSplit("blocks.11.mlp.fc2", torch.arange(768), assign, [4] * 768)
    assert ls.assignment.dtype == torch.int8
    assert ls.assignment.element_size() * ls.assignment.numel() == 768 * 3072
    text = repr(ls)
    assert text == (
        "LayerSplit('blocks.11.mlp.fc2', units=768, inputs=3072, K=4, merge='disjoint')"
    )
    assert repr(_ls()) == "LayerSplit('blocks.0.fc', units=3, inputs=4, K=2-3, merge='overlap')"
    assert len(repr(SplitPlan([ls]))) < 120

"""UnitSplit / SplitPlan: normalisation, validation, container views, inline JSON round trip.

Checking a plan against a model (``neuronsplit.nn.check_plan``) is tested in
``tests/nn/test_check_plan.py``; the dense :class:`LayerSplit` in ``test_layer_split.py`` and
the two-file format in ``test_plan_files.py``.
"""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch

from neuronsplit.errors import CorruptFileError, PlanError, PlanMismatchError, UnknownLayerError
from neuronsplit.plan import PLAN_VERSION, LayerSplit, SplitPlan, UnitSplit


# --------------------------------------------------------------------------- UnitSplit basics
def test_unit_split_normalises_to_sorted_int_tuples() -> None:
    s = UnitSplit("fc", np.int64(3), [[5, np.int32(1)], (4, 2)], shared=[0, 3])
    assert s.unit == 3 and type(s.unit) is int
    assert s.groups == ((1, 5), (2, 4))
    assert all(type(i) is int for g in s.groups for i in g)
    assert s.shared == (0, 3)
    assert s.merge == "disjoint" and s.labels == ()  # the default form, as for LayerSplit
    assert s.num_subunits == 2 and s.num_extra_rows == 2 and s.num_inputs == 6
    assert hash(s) == hash(UnitSplit("fc", 3, [[1, 5], [2, 4]], shared=[3, 0]))


def test_unit_split_is_frozen() -> None:
    s = UnitSplit("fc", 0, [[0], [1]])
    with pytest.raises(AttributeError):
        s.unit = 1  # type: ignore[misc]


def test_partition_is_a_deprecated_alias_of_disjoint() -> None:
    with pytest.deprecated_call(match='merge="partition" is deprecated'):
        s = UnitSplit("fc", 0, [[0], [1]], merge="partition")
    assert s.merge == "disjoint"
    assert s == UnitSplit("fc", 0, [[0], [1]], merge="disjoint")


@pytest.mark.parametrize(
    ("groups", "shared", "named"),
    [
        ([[0, 1], [1, 2]], [], "1"),  # across groups
        ([[0, 7], [2]], [7], "7"),  # group and shared
        ([[4, 4], [2]], [], "4"),  # twice in one group
        ([[0, 1, 2], [5, 6]], [0, 1, 2, 6], "0-2, 6"),  # several, compressed
    ],
)
def test_duplicate_index_is_named(groups: list, shared: list, named: str) -> None:
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
def test_unit_split_rejects_bad_values(kwargs: dict, match: str) -> None:
    args = {"layer": "fc", "unit": 0, "groups": [[0], [1]], **kwargs}
    with pytest.raises(PlanError, match=match):
        UnitSplit(**args)


def test_empty_group_is_allowed_and_labels_kept() -> None:
    s = UnitSplit("fc", 0, [[], [1]], shared=[0], labels=["clock", "cauliflower"])
    assert s.groups == ((), (1,))
    assert s.labels == ("clock", "cauliflower")


def test_validate_names_missing_and_out_of_range_indices() -> None:
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
    assert s.missing_inputs() == [2, 3, 4, 6]
    assert s.missing_inputs(9) == [2, 3, 4, 6, 8]


def test_unit_split_dict_and_json_round_trip() -> None:
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


def test_unit_split_from_dict_rejects_unknown_and_missing_keys() -> None:
    with pytest.raises(PlanError, match=r"unknown key\(s\) \['group'\]"):
        UnitSplit.from_dict({"layer": "fc", "unit": 0, "group": [[0], [1]]})
    with pytest.raises(PlanError, match=r"lacks key\(s\) \['groups'\]"):
        UnitSplit.from_dict({"layer": "fc", "unit": 0})
    with pytest.raises(PlanError, match="must be a JSON object, got list"):
        UnitSplit.from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        UnitSplit.from_json("{nope")


# --------------------------------------------------------------------------- SplitPlan basics
def _plan(meta: dict | None = None) -> SplitPlan:
    """Two layers, one merge form each; layer "4" is given out of unit order."""
    return SplitPlan(
        [
            UnitSplit("4", 1, [[0], [1, 2]], shared=[3], merge="overlap"),
            UnitSplit("0", 2, [[0], [1]], shared=[2], merge="disjoint"),
            UnitSplit("4", 0, [[3], [2], [1]], shared=[0], merge="overlap"),
        ],
        meta=meta if meta is not None else {"method": "test", "rho": 0.5, "nested": {"a": [1]}},
    )


def test_plan_container_behaviour() -> None:
    plan = _plan()
    assert len(plan) == 3 and plan.num_units == 3
    # layers keep their order of first appearance, units within a layer are ascending
    assert plan.layers == ("4", "0")
    assert [(s.layer, s.unit) for s in plan] == [("4", 0), ("4", 1), ("0", 2)]
    assert plan[2].layer == "0" and plan[2].merge == "disjoint"
    assert plan[0] == UnitSplit("4", 0, [[3], [2], [1]], shared=[0], merge="overlap")
    by = plan.by_layer()
    assert list(by) == ["4", "0"]
    assert all(isinstance(ls, LayerSplit) for ls in by.values())
    assert by["4"].units.tolist() == [0, 1] and by["4"].num_subunits.tolist() == [3, 2]
    assert by["4"].merge == "overlap" and by["0"].merge == "disjoint"
    assert plan.layer("0") is by["0"]
    assert plan.layer_splits == (by["4"], by["0"])
    assert isinstance(plan.splits, tuple)
    assert SplitPlan([]).splits == () and len(SplitPlan([])) == 0 and SplitPlan().layers == ()
    with pytest.raises(
        UnknownLayerError, match=r"does not split layer '5'; it splits \['4', '0'\]"
    ):
        plan.layer("5")


def test_plan_accepts_layer_splits_and_unit_splits_alike() -> None:
    ls = LayerSplit("4", [1, 0], [[0, 1, 1, -1], [-1, 2, 1, 0]], merge="overlap")
    mixed = SplitPlan([ls, UnitSplit("0", 2, [[0], [1]], shared=[2], merge="disjoint")])
    assert mixed == _plan(meta={})
    assert mixed.layer("4") == ls
    with pytest.raises(PlanError, match="layer '4' is given both as a LayerSplit and as unit"):
        SplitPlan([ls, UnitSplit("4", 3, [[0], [1]], shared=[2, 3])])
    with pytest.raises(PlanError, match="layer '4' appears twice in the plan"):
        SplitPlan([ls, ls])
    with pytest.raises(PlanError, match="layer '4' appears twice in the plan"):
        SplitPlan([UnitSplit("4", 3, [[0], [1]], shared=[2, 3]), ls])


def test_plan_rejects_unit_split_twice_and_bad_entries() -> None:
    with pytest.raises(PlanError, match=r"unit 1 of layer 'fc' is split twice"):
        SplitPlan([UnitSplit("fc", 1, [[0], [1]]), UnitSplit("fc", 1, [[1], [0]])])
    with pytest.raises(PlanError, match="must contain UnitSplit or LayerSplit objects, got dict"):
        SplitPlan([{"layer": "fc"}])  # type: ignore[list-item]
    with pytest.raises(PlanError, match="sequence of UnitSplit"):
        SplitPlan(UnitSplit("fc", 1, [[0], [1]]))  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="sequence of UnitSplit"):
        SplitPlan(LayerSplit("fc", [0], [[0, 1]]))  # type: ignore[arg-type]


def test_mixing_merge_forms_in_one_layer_raises_naming_the_layer() -> None:
    with pytest.raises(PlanError, match=r"units of layer 'blocks\.3\.fc' use different merge"):
        SplitPlan(
            [
                UnitSplit("other", 0, [[0], [1]], merge="disjoint"),
                UnitSplit("blocks.3.fc", 0, [[0], [1]], merge="overlap"),
                UnitSplit("blocks.3.fc", 4, [[1], [0]], merge="disjoint"),
            ]
        )
    # the same forms in different layers are fine
    plan = SplitPlan(
        [
            UnitSplit("a", 0, [[0], [1]], merge="overlap"),
            UnitSplit("b", 0, [[0], [1]], merge="disjoint"),
        ]
    )
    assert [ls.merge for ls in plan.layer_splits] == ["overlap", "disjoint"]


def test_plan_meta_is_read_only_copy() -> None:
    src = {"k": 1, "nested": {"a": [1, 2]}}
    plan = SplitPlan([], meta=src)
    src["k"] = 2
    src["nested"]["a"].append(3)
    assert plan.meta["k"] == 1 and list(plan.meta["nested"]["a"]) == [1, 2]
    with pytest.raises(TypeError):
        plan.meta["k"] = 5  # type: ignore[index]
    with pytest.raises(TypeError):
        plan.meta["nested"]["a"] = 5  # type: ignore[index]
    with pytest.raises(AttributeError, match="read-only"):
        plan.meta = {}  # type: ignore[misc]
    with pytest.raises(PlanError, match="JSON-serialisable"):
        SplitPlan([], meta={"t": torch.zeros(1)})
    with pytest.raises(PlanError, match="JSON-serialisable"):
        SplitPlan([], meta={"x": float("nan")})
    other = plan.with_meta({"k": 3})
    assert other.meta["k"] == 3 and plan.meta["k"] == 1 and other.layers == plan.layers


def test_plan_meta_can_be_reused_as_meta() -> None:
    plan = _plan()  # meta holds the nested object {"a": [1]}
    assert plan.with_meta(plan.meta) == plan
    assert SplitPlan(plan.layer_splits, meta=plan.meta) == plan


def test_plan_equality_hash_pickle_deepcopy() -> None:
    plan = _plan()
    assert plan == _plan()
    assert hash(plan) == hash(_plan())
    assert plan != _plan(meta={"method": "other"})
    assert plan != SplitPlan(
        plan.layer_splits[:1], meta={"method": "test", "rho": 0.5, "nested": {"a": [1]}}
    )
    assert pickle.loads(pickle.dumps(plan)) == plan
    assert copy.deepcopy(plan) == plan


def test_equal_plans_hash_equal() -> None:
    a, b = UnitSplit("a", 0, [[0], [1]]), UnitSplit("b", 0, [[0], [1]])
    p, q = SplitPlan([a, b]), SplitPlan([b, a])
    assert p.layers != q.layers  # the order is kept (it decides .splits and the files) ...
    if p == q:  # ... so equal plans must hash equal
        assert hash(p) == hash(q)


def test_plan_repr_is_short() -> None:
    # layer "4": units 1 (K=2) and 0 (K=3); layer "0": unit 2 (K=2)
    assert repr(_plan()) == (
        "SplitPlan(2 layers, 3 units split, 7 subunits, layers=['4', '0'], "
        "meta keys=['method', 'nested', 'rho'])"
    )
    assert repr(SplitPlan([])) == "SplitPlan(<empty>)"
    one = SplitPlan([UnitSplit("fc", 0, [[0], [1]])])
    assert repr(one) == "SplitPlan(1 layer, 1 unit split, 2 subunits, layers=['fc'])"
    # six whole ViT-sized layers: still counts, never indices
    g = torch.Generator().manual_seed(0)
    layers = [
        LayerSplit(f"blocks.{i}.mlp.fc1", torch.arange(512), torch.randint(-1, 3, (512, 192), generator=g))
        for i in range(6)
    ]  # fmt: skip
    text = repr(SplitPlan(layers))
    assert text.startswith("SplitPlan(6 layers, 3072 units split, 9216 subunits, layers=[")
    assert text.endswith("'blocks.3.mlp.fc1', '...'])") and len(text) < 200


def test_unit_split_repr_counts_instead_of_listing_indices() -> None:
    big = UnitSplit("blocks.0.mlp.fc1", 7, [range(0, 100), range(100, 250)], shared=range(250, 768))
    assert repr(big) == (
        "UnitSplit('blocks.0.mlp.fc1', unit=7, K=2, group sizes=(100, 150), shared=518, "
        "merge='disjoint')"
    )
    labelled = UnitSplit("fc", 0, [[1], []], shared=[0], merge="overlap", labels=("cat", "dog"))
    assert repr(labelled) == (
        "UnitSplit('fc', unit=0, K=2, group sizes=(1, 0), shared=1, merge='overlap', "
        "labels=('cat', 'dog'))"
    )


def test_plan_json_round_trip_str_and_path(tmp_path) -> None:
    plan = _plan()
    text = plan.to_json()
    data = json.loads(text)
    assert data["version"] == PLAN_VERSION == 2
    assert data["format"] == "neuronsplit.SplitPlan"
    assert data["meta"]["nested"] == {"a": [1]}
    # inline form: one entry per layer with the dense assignment (units ascending)
    first = data["layers"][0]
    assert first["layer"] == "4" and first["merge"] == "overlap"
    assert first["units"] == [0, 1] and first["num_subunits"] == [3, 2]
    assert first["assignment"] == [[-1, 2, 1, 0], [0, 1, 1, -1]]
    assert SplitPlan.from_json(text) == plan
    path = tmp_path / "plan.json"
    assert plan.to_json(path, indent=2) == path.read_text()
    assert SplitPlan.from_json(path) == plan
    assert SplitPlan.from_json(str(path)) == plan
    assert SplitPlan.from_dict(plan.to_dict()) == plan


def test_version_1_unit_list_still_loads() -> None:
    v1 = {
        "format": "neuronsplit.SplitPlan",
        "version": 1,
        "meta": {"method": "hesse"},
        "splits": [s.to_dict() for s in _plan().splits],
    }
    assert SplitPlan.from_json(json.dumps(v1)) == _plan(meta={"method": "hesse"})
    # a version-1 file mixing forms within one layer (legal in 0.1) is refused by name
    v1["splits"][0]["merge"] = "disjoint"
    with pytest.raises(PlanError, match="units of layer '4' use different merge forms"):
        SplitPlan.from_json(json.dumps(v1))


@pytest.mark.parametrize(
    ("text", "err", "match"),
    [
        ("{not json", CorruptFileError, "not valid JSON"),
        ('{"splits": []}', CorruptFileError, "lacks an integer 'version'"),
        ('{"version": "2", "layers": []}', CorruptFileError, "lacks an integer 'version'"),
        ('{"version": true, "layers": []}', CorruptFileError, "lacks an integer 'version'"),
        ('{"version": 99, "layers": []}', CorruptFileError, "version 99, this neuronsplit reads"),
        ('{"version": 0, "layers": []}', CorruptFileError, "version 0, this neuronsplit reads"),
        ('{"format": "x", "version": 1, "splits": []}', CorruptFileError, "format is 'x'"),
        ('{"version": 1, "splits": {}}', CorruptFileError, "'splits' must be a list"),
        ('{"version": 1, "splits": [], "meta": [1]}', CorruptFileError, "'meta' must be an object"),
        ('{"version": 2, "layers": {}}', CorruptFileError, "'layers' must be a list of objects"),
        ('{"version": 2, "layers": [1]}', CorruptFileError, "'layers' must be a list of objects"),
        ('{"version": 2, "layers": [{"layer": "a"}]}', CorruptFileError, "lacks the field"),
        (
            '{"version": 2, "layers": [], "assignments": {"file": "x"}}',
            CorruptFileError,
            r"separate safetensors file; read it with SplitPlan.load",
        ),
        (
            '{"version": 1, "splits": [{"layer": "a", "unit": 0, "groups": [[0], [0]]}]}',
            PlanError,
            "input indices 0 appear more than once",
        ),
        (
            '{"version": 2, "layers": [{"layer": "a", "units": [0], "num_subunits": [2], '
            '"assignment": [[0, 2]]}]}',
            PlanError,
            r"assignment of input 1 for unit 0 .* is 2; valid: -1 \(shared\) or 0..1",
        ),
    ],
)
def test_plan_from_json_errors(text: str, err: type[Exception], match: str) -> None:
    with pytest.raises(err, match=match):
        SplitPlan.from_json(text)


def test_plan_from_json_missing_file(tmp_path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(CorruptFileError, match="nope.json' does not exist"):
        SplitPlan.from_json(missing)
    with pytest.raises(TypeError, match="JSON text or a path, got int"):
        SplitPlan.from_json(3)  # type: ignore[arg-type]


def test_check_shapes_names_missing_layers_and_mismatches() -> None:
    plan = _plan()
    plan.check_shapes({"4": (2, 4), "0": (3, 3), "unused": (1, 1)})
    with pytest.raises(UnknownLayerError, match="the model has no layer '0' to split"):
        plan.check_shapes({"4": (2, 4)})
    with pytest.raises(PlanMismatchError, match=r"unit 2 is out of range for layer '0'"):
        plan.check_shapes({"4": (2, 4), "0": (2, 3)})
    with pytest.raises(PlanMismatchError, match=r"split of layer '4' covers 4 inputs, but .* 5"):
        plan.check_shapes({"4": (2, 5), "0": (3, 3)})


@pytest.mark.parametrize("module", ["unit", "layer", "plan"])
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    mod = importlib.import_module(f"neuronsplit.plan.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} doctest(s) failed in neuronsplit.plan.{module}"

"""Plan files: ``plan.json`` + ``plan.safetensors``, damage detection, determinism, fuzzing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from neuronsplit.errors import CorruptFileError, PlanError
from neuronsplit.plan import PLAN_FORMAT, LayerSplit, SplitPlan, UnitSplit, load_plan, save_plan

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def _plan(meta: dict[str, Any] | None = None) -> SplitPlan:
    """Two layers (one per form), labels on one unit, K up to 3."""
    return SplitPlan(
        [
            LayerSplit(
                "blocks.0.mlp.fc2", [4, 1], [[2, 0, -1, 1, 1], [1, 0, 0, -1, 1]],
                merge="overlap", labels={4: ("dog", "cat", "car")},
            ),
            UnitSplit("head", 0, [[0], [1, 2]], shared=[3], merge="disjoint"),
        ],
        meta={"method": "test", "params": {"tau": 0.03}} if meta is None else meta,
    )  # fmt: skip


def _sha(path: Path) -> str:
    """Hex SHA-256 of a file.

    Parameters
    ----------
    path : Path
        The file to hash.

    Returns
    -------
    str
        The digest, as the plan JSON records it.
    """
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rewrite_tensors(json_path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the tensor file of a saved plan and record its new hash in the JSON.

    Parameters
    ----------
    json_path : Path
        The ``plan.json`` written by :meth:`SplitPlan.save`.
    tensors : dict of str to Tensor
        The new contents of ``plan.safetensors``.
    """
    tensor_path = json_path.with_suffix(".safetensors")
    save_file(tensors, str(tensor_path))
    data = json.loads(json_path.read_text())
    data["assignments"]["sha256"] = _sha(tensor_path)
    json_path.write_text(json.dumps(data))


# --------------------------------------------------------------------------- round trip
def test_save_load_round_trip(tmp_path: Path) -> None:
    plan = _plan()
    path = plan.save(tmp_path / "out" / "plan.json")
    assert path == tmp_path / "out" / "plan.json"
    assert sorted(p.name for p in path.parent.iterdir()) == ["plan.json", "plan.safetensors"]
    for loaded in (
        SplitPlan.load(path),
        SplitPlan.load(str(path)),
        SplitPlan.from_json(path),
        load_plan(path),
    ):
        assert loaded == plan
        assert loaded.meta["params"]["tau"] == 0.03
        assert loaded.layer("blocks.0.mlp.fc2").labels == {4: ("dog", "cat", "car")}
        assert [ls.merge for ls in loaded.layer_splits] == ["overlap", "disjoint"]
    assert save_plan(plan, tmp_path / "b.json") == tmp_path / "b.json"
    assert (tmp_path / "b.safetensors").is_file() and SplitPlan.load(tmp_path / "b.json") == plan


def test_empty_plan_round_trip(tmp_path: Path) -> None:
    path = SplitPlan([], meta={"a": 1}).save(tmp_path / "plan.json")
    loaded = SplitPlan.load(path)
    assert loaded.layers == () and loaded.meta == {"a": 1}


def test_json_has_no_assignment_lists_and_tensors_are_small(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    big = LayerSplit(
        "blocks.11.mlp.fc2", torch.arange(768), torch.randint(-1, 4, (768, 3072), generator=g)
    )
    path = SplitPlan([big, *_plan().layer_splits]).save(tmp_path / "plan.json")
    text = path.read_text()
    data = json.loads(text)
    assert data["format"] == PLAN_FORMAT and data["version"] == 2
    assert data["assignments"] == {
        "file": "plan.safetensors",
        "sha256": _sha(tmp_path / "plan.safetensors"),
    }
    for header in data["layers"]:
        assert set(header) == {"layer", "merge", "num_units", "num_inputs", "labels"}
    assert data["layers"][0] == {
        "layer": "blocks.11.mlp.fc2",
        "merge": "disjoint",
        "num_units": 768,
        "num_inputs": 3072,
        "labels": {},
    }
    assert len(text) < 2000
    tensors = load_file(str(tmp_path / "plan.safetensors"))
    assert tensors["blocks.11.mlp.fc2/assignment"].dtype == torch.int8
    assert torch.equal(tensors["blocks.11.mlp.fc2/assignment"], big.assignment)
    assert (tmp_path / "plan.safetensors").stat().st_size < 768 * 3072 + 100_000
    assert SplitPlan.load(path).layer("blocks.11.mlp.fc2") == big


def test_saving_the_same_plan_twice_gives_identical_bytes(tmp_path: Path) -> None:
    _plan().save(tmp_path / "a" / "plan.json")
    _plan().save(tmp_path / "b" / "plan.json")
    # an equal plan built another way (from unit splits, units in another order) writes the
    # same bytes
    plan = _plan()
    units = [
        *reversed(list(plan.layer_splits[0].unit_splits())),
        *plan.layer_splits[1].unit_splits(),
    ]
    assert units[0].unit == 4
    SplitPlan(units, meta={"method": "test", "params": {"tau": 0.03}}).save(
        tmp_path / "c/plan.json"
    )
    _plan().save(tmp_path / "a" / "plan.json")  # overwrite in place
    for name in ("plan.json", "plan.safetensors"):
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "b" / name).read_bytes(), name
        assert first == (tmp_path / "c" / name).read_bytes(), name
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]


def test_save_refuses_a_path_without_json_suffix(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"plan files end in .json .* got '.*plan.txt'"):
        _plan().save(tmp_path / "plan.txt")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- damage
def test_tensor_file_from_another_save_is_refused(tmp_path: Path) -> None:
    _plan().save(tmp_path / "a" / "plan.json")
    SplitPlan([UnitSplit("head", 1, [[0], [1]], [2, 3])]).save(tmp_path / "b" / "plan.json")
    (tmp_path / "a" / "plan.safetensors").write_bytes(
        (tmp_path / "b" / "plan.safetensors").read_bytes()
    )
    with pytest.raises(CorruptFileError, match=r"does not belong to it \(SHA-256 differs\)") as ei:
        SplitPlan.load(tmp_path / "a" / "plan.json")
    assert "plan.json" in str(ei.value) and "plan.safetensors" in str(ei.value)


@pytest.mark.parametrize("field", ["num_units", "num_inputs"])
def test_json_header_disagreeing_with_tensors_is_refused(tmp_path: Path, field: str) -> None:
    path = _plan().save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    data["layers"][0][field] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(
        CorruptFileError,
        match=rf"plan file '{path}' holds an invalid plan: layer 'blocks.0.mlp.fc2' declares "
        r"\d units x \d inputs but its assignment is 2 x 5",
    ):
        SplitPlan.load(path)


def test_tensor_shapes_disagreeing_with_json_are_refused(tmp_path: Path) -> None:
    path = _plan().save(tmp_path / "plan.json")
    tensors = load_file(str(tmp_path / "plan.safetensors"))
    key = "blocks.0.mlp.fc2/assignment"
    tensors[key] = torch.cat([tensors[key], tensors[key][:, :1]], 1)  # one input more
    _rewrite_tensors(path, tensors)
    with pytest.raises(
        CorruptFileError,
        match=rf"plan file '{path}' holds an invalid plan: .* declares 2 units x 5 inputs but its "
        r"assignment is 2 x 6",
    ):
        SplitPlan.load(path)


def test_missing_or_damaged_tensor_file(tmp_path: Path) -> None:
    path = _plan().save(tmp_path / "plan.json")
    tensors = load_file(str(tmp_path / "plan.safetensors"))
    (tmp_path / "plan.safetensors").unlink()
    with pytest.raises(CorruptFileError, match=r"tensor file '.*plan.safetensors' is missing"):
        SplitPlan.load(path)
    del tensors["head/units"]
    _rewrite_tensors(path, tensors)
    with pytest.raises(CorruptFileError, match="the tensor file lacks head/units"):
        SplitPlan.load(path)
    (tmp_path / "plan.safetensors").write_bytes(b"garbage, but hashed")
    data = json.loads(path.read_text())
    data["assignments"]["sha256"] = _sha(tmp_path / "plan.safetensors")
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptFileError, match="is not readable"):
        SplitPlan.load(path)


def test_invalid_tensors_are_reported_as_an_invalid_plan(tmp_path: Path) -> None:
    path = _plan().save(tmp_path / "plan.json")
    tensors = load_file(str(tmp_path / "plan.safetensors"))
    tensors["head/assignment"] = torch.tensor([[0, 5, 1, -1]], dtype=torch.int8)
    _rewrite_tensors(path, tensors)
    with pytest.raises(CorruptFileError, match=r"holds an invalid plan: assignment of input 1"):
        SplitPlan.load(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{broken", "is not valid JSON"),
        ('{"version": 3, "layers": []}', "version 3, this neuronsplit reads versions 1 to 2"),
        ('{"version": 2, "assignments": 1, "layers": []}', "'assignments' and 'layers' are"),
        ('{"version": 2, "assignments": {"file": "p.safetensors"}, "layers": [1]}', "is missing"),
        ("\xff", "cannot read plan file"),
    ],
)
def test_bad_json_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "plan.json"
    path.write_text(text, encoding="latin-1")
    with pytest.raises(CorruptFileError, match=match):
        SplitPlan.load(path)
    with pytest.raises(CorruptFileError, match="does not exist or is not a file"):
        SplitPlan.load(tmp_path)


def test_version_1_file_still_loads(tmp_path: Path) -> None:
    splits = [s.to_dict() for s in _plan().splits]
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": PLAN_FORMAT, "version": 1, "meta": {}, "splits": splits}))
    assert SplitPlan.load(path) == _plan(meta={})
    inline = tmp_path / "inline.json"
    _plan().to_json(inline)
    assert SplitPlan.load(inline) == _plan()


# --------------------------------------------------------------------------- fuzzing
_ALLOWED = (CorruptFileError, PlanError)
_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_KEYS = ["format", "version", "meta", "layers", "splits", "assignments", "layer", "units",
         "assignment", "num_subunits", "merge", "unit", "groups", "shared", "num_units"]  # fmt: skip


def _try(text: str) -> None:
    """Parse ``text`` as a plan; any exception other than the two typed errors fails.

    Parameters
    ----------
    text : str
        JSON text starting with ``{`` (other strings are read as paths).
    """
    try:
        SplitPlan.from_json(text)
    except _ALLOWED:
        pass


def _mutate(value: Any, path: list[Any], new: Any) -> Any:
    """Return ``value`` with the entry at ``path`` (keys / indices, cut short where the
    structure ends) replaced by ``new``.

    Parameters
    ----------
    value : Any
        A JSON value.
    path : list
        Keys and indices; each is applied modulo the container size.
    new : Any
        The replacement.
    """
    if not path or not isinstance(value, (dict, list)) or not value:
        return new
    if isinstance(value, dict):
        key = sorted(value)[hash(str(path[0])) % len(value)]
        return {**value, key: _mutate(value[key], path[1:], new)}
    i = int(path[0]) % len(value) if isinstance(path[0], int) else 0
    return [*value[:i], _mutate(value[i], path[1:], new), *value[i + 1 :]]


@FUZZ
@given(data=st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=4), _json, max_size=6))
def test_fuzz_random_objects(data: dict[str, Any]) -> None:
    _try(json.dumps(data))


@FUZZ
@given(
    path=st.lists(st.integers(0, 8) | st.sampled_from(_KEYS), min_size=1, max_size=5),
    new=_json,
    version=st.sampled_from([1, 2]),
)
def test_fuzz_mutated_plans(path: list[Any], new: Any, version: int) -> None:
    # a non-empty path keeps the top level an object (other text is read as a path: see
    # test_long_non_json_text_raises_corrupt_file_error)
    plan = _plan().to_dict()
    if version == 1:
        plan = {"version": 1, "meta": plan["meta"], "splits": [s.to_dict() for s in _plan()]}
    _try(json.dumps(_mutate(plan, path, new)))


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.text(max_size=3)), max_size=6))
def test_fuzz_garbled_text(edits: list[tuple[int, str]]) -> None:
    text = _plan(meta={}).to_json()
    for pos, insert in edits:
        i = pos % len(text)
        text = text[:i] + insert + text[i + 2 :]  # drop two characters, insert up to three
    if not text.lstrip().startswith("{"):
        text = "{" + text
    _try(text)


@pytest.mark.parametrize("labels", ['{"x": ["a", "b"]}', '{"0": 5}', '{"0": null}'])
def test_malformed_labels_in_json_raise_typed_errors(labels: str) -> None:
    text = (
        '{"version": 2, "layers": [{"layer": "fc", "units": [0], "num_subunits": [2], '
        f'"assignment": [[0, 1]], "labels": {labels}}}]}}'
    )
    with pytest.raises(_ALLOWED):
        SplitPlan.from_json(text)


def test_long_non_json_text_raises_corrupt_file_error() -> None:
    with pytest.raises(CorruptFileError):
        SplitPlan.from_json("not json " * 1000)


@pytest.mark.parametrize("text", ["[1, 2]", "plan", "", "  ", "a\x00b", "null"])
def test_short_non_object_text_is_a_missing_file(text: str) -> None:
    with pytest.raises(CorruptFileError, match="does not exist or is not a file"):
        SplitPlan.from_json(text)

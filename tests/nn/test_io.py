"""save / load: bitwise round trip, typed errors for every kind of mismatch or damage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import neuronsplit
from helpers import assert_unchanged, snapshot
from neuronsplit.errors import CorruptFileError, PlanMismatchError
from neuronsplit.nn import apply_plan, plan_of
from neuronsplit.nn.io import PLAN_FILE, WEIGHTS_FILE, load, save
from neuronsplit.plan import SplitPlan, UnitSplit

TENSOR_FILE = "plan.safetensors"


class _Net(nn.Module):
    def __init__(self, hidden: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, hidden)
        self.head = nn.Linear(hidden, 3)
        self.tied = self.head  # aliased module: its tensors appear under two keys

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.tied(torch.relu(self.fc(h)))


PLAN = SplitPlan(
    [
        UnitSplit("conv", 4, [[0], [1]], shared=[2], merge="overlap", labels=("a", "b")),
        UnitSplit("fc", 1, [[0, 1], [2], [3]], shared=[4], merge="disjoint"),
        UnitSplit("conv", 0, [[2, 1], [0]], merge="overlap"),
    ],
    meta={"method": "test"},
)


def _sha(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fresh(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return _Net(**kw).eval()


def _saved(tmp_path):
    net = _fresh()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)  # buffers must round-trip too
    split = apply_plan(net, PLAN)
    save(split, tmp_path)
    return net, split


def test_round_trip_is_bitwise(tmp_path) -> None:
    net, split = _saved(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [PLAN_FILE, TENSOR_FILE, WEIGHTS_FILE]
    fresh = _fresh(seed=1)  # different random weights: everything must come from the files
    snap = snapshot(fresh)
    loaded = load(tmp_path, fresh)
    assert_unchanged(fresh, snap)
    assert plan_of(loaded) == plan_of(split) == SplitPlan(PLAN.layer_splits)
    assert set(plan_of(loaded).splits) == set(PLAN.splits)
    assert loaded.conv.unit_split(4).labels == ("a", "b")
    assert loaded.conv.form == "overlap" and loaded.fc.form == "disjoint"
    sd_a, sd_b = split.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k
    x = torch.randn(4, 3, 7, 7)
    with torch.no_grad():
        assert torch.equal(split(x), loaded(x))
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-5, atol=1e-6)
    assert loaded.tied is loaded.head  # aliasing survives
    assert not loaded.training


def test_plan_json_contents(tmp_path) -> None:
    net, split = _saved(tmp_path)
    data = json.loads((tmp_path / PLAN_FILE).read_text())
    assert data["version"] == 2 and data["format"] == "neuronsplit.SplitPlan"
    meta = data["meta"]
    assert meta["model_class"] == "_Net"
    assert meta["neuronsplit_version"] == neuronsplit.__version__
    assert isinstance(meta["original_fingerprint"], str) and len(meta["original_fingerprint"]) == 16
    assert "splits" not in data and data["assignments"]["file"] == TENSOR_FILE
    assert [(x["layer"], x["merge"], x["num_units"]) for x in data["layers"]] == [
        ("conv", "overlap", 2),
        ("fc", "disjoint", 1),
    ]
    assert data["layers"][0]["labels"] == {"4": ["a", "b"]}
    # the weights file records the hash of plan.json, which records that of plan.safetensors
    with safe_open(str(tmp_path / WEIGHTS_FILE), framework="pt") as f:
        header = json.loads(f.metadata()["neuronsplit"])
    assert header["plan_sha256"] == _sha(tmp_path / PLAN_FILE)
    assert (header["format"], header["version"]) == ("neuronsplit.weights", 1)
    assert data["assignments"]["sha256"] == _sha(tmp_path / TENSOR_FILE)
    # the weights file holds the full split state dict
    tensors = load_file(str(tmp_path / WEIGHTS_FILE))
    assert tensors["conv.subunits.weight"].shape == (5 + 2 + 2, 3, 3, 3)
    assert "bn.running_mean" in tensors and "tied.weight" in tensors
    # the meta of the original plan is not needed to save; user meta is kept
    save(split, tmp_path / "b", meta={"note": "x"})
    assert json.loads((tmp_path / "b" / PLAN_FILE).read_text())["meta"]["note"] == "x"


def test_save_does_not_mutate_and_overwrites(tmp_path) -> None:
    _, split = _saved(tmp_path)
    snap = snapshot(split)
    save(split, tmp_path)  # overwrite in place
    assert_unchanged(split, snap)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_load_onto_another_model_is_refused(tmp_path) -> None:
    _saved(tmp_path)
    # same layer names, different hidden width: fingerprint names the differing tensors
    with pytest.raises(PlanMismatchError, match=r"size mismatch for fc.weight.*\[6, 5\].*\[7, 5\]"):
        load(tmp_path, _fresh(hidden=7))
    # a model lacking a planned layer
    other = nn.Sequential(nn.Conv2d(3, 5, 3))
    with pytest.raises(PlanMismatchError, match=r"saved from a _Net .* given Sequential"):
        load(tmp_path, other)


def test_load_without_fingerprint_still_names_layer_and_keys(tmp_path) -> None:
    _saved(tmp_path)
    data = json.loads((tmp_path / PLAN_FILE).read_text())
    data["meta"] = {}
    (tmp_path / PLAN_FILE).write_text(json.dumps(data))
    tensors = load_file(str(tmp_path / WEIGHTS_FILE))
    tensors["extra.weight"] = torch.zeros(1)
    del tensors["bn.bias"]
    save_file(tensors, str(tmp_path / WEIGHTS_FILE))  # no plan hash in this header
    with pytest.raises(
        PlanMismatchError, match=r"does not fit the given Sequential: .*no layer 'conv'"
    ):
        load(tmp_path, nn.Sequential(nn.Conv2d(3, 5, 3)))
    with pytest.raises(
        PlanMismatchError,
        match=r'(?s)Missing key\(s\) in state_dict: "bn.bias". .*Unexpected key\(s\) in state_dict: '
        r'"extra.weight"',
    ):
        load(tmp_path, _fresh())
    # unit out of range for the given model (a hand-written plan pair, no fingerprint)
    SplitPlan([UnitSplit("fc", 6, [[0, 1], [2], [3]], shared=[4])]).save(tmp_path / PLAN_FILE)
    with pytest.raises(PlanMismatchError, match=r"unit 6 is out of range for layer 'fc'"):
        load(tmp_path, _fresh())


@pytest.mark.parametrize(
    "damage",
    ["garbage", "truncated", "empty"],
)
def test_corrupt_weights_file(tmp_path, damage) -> None:
    _saved(tmp_path)
    path = tmp_path / WEIGHTS_FILE
    raw = path.read_bytes()
    path.write_bytes(
        {
            "garbage": b"not a safetensors file at all",
            "truncated": raw[: len(raw) // 2],
            "empty": b"",
        }[damage]
    )
    with pytest.raises(CorruptFileError, match=r"weights.safetensors"):
        load(tmp_path, _fresh())


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{broken", "not valid JSON"),
        ('{"version": 1}', "'splits' must be a list"),
        ('{"version": 2}', "'layers' must be a list of objects"),
        ('{"version": 3, "layers": []}', "version 3, this neuronsplit reads versions 1 to 2"),
        (
            '{"version": 1, "splits": [{"layer": "fc", "unit": 0, "groups": [[1], [1]]}]}',
            "invalid plan: input indices 1 appear more than once",
        ),
    ],
)
def test_bad_plan_json(tmp_path, text, match) -> None:
    _saved(tmp_path)
    (tmp_path / PLAN_FILE).write_text(text)
    with pytest.raises(CorruptFileError, match=match):
        load(tmp_path, _fresh())


def test_missing_files_and_mixed_saves(tmp_path) -> None:
    with pytest.raises(CorruptFileError, match=r"plan.json' does not exist"):
        load(tmp_path / "nothing", _fresh())
    _saved(tmp_path / "a")
    (tmp_path / "a" / WEIGHTS_FILE).unlink()
    with pytest.raises(CorruptFileError, match=r"weights.safetensors' does not exist"):
        load(tmp_path / "a", _fresh())
    # plan.json from one save, weights from another
    net = _fresh()
    save(apply_plan(net, PLAN), tmp_path / "b")
    other = SplitPlan([UnitSplit("conv", 2, [[0], [1]], shared=[2])])
    save(apply_plan(net, other), tmp_path / "c")
    (tmp_path / "b" / PLAN_FILE).write_bytes((tmp_path / "c" / PLAN_FILE).read_bytes())
    with pytest.raises(CorruptFileError, match=r"SHA-256 differs.*different saves"):
        load(tmp_path / "b", _fresh())
    # the whole plan pair from another save: the weights file's plan hash differs
    for name in (PLAN_FILE, TENSOR_FILE):
        (tmp_path / "b" / name).write_bytes((tmp_path / "c" / name).read_bytes())
    with pytest.raises(CorruptFileError, match=r"come from different saves \(the plan hash"):
        load(tmp_path / "b", _fresh())
    # the plan's tensor file is missing
    (tmp_path / "c" / TENSOR_FILE).unlink()
    with pytest.raises(CorruptFileError, match=r"plan.safetensors' is missing"):
        load(tmp_path / "c", _fresh())


def test_scales_are_not_saved(tmp_path) -> None:
    net = _fresh()
    split = apply_plan(net, PLAN)
    h = torch.randn(4, 5)  # the input of the split layer "fc"
    with torch.no_grad():
        exact = split.fc(h)
        with split.fc.merge.scaled({(1, 0): 0.0, (1, -1): 3.0}):
            assert not torch.equal(split.fc(h), exact)
            save(split, tmp_path)
        loaded = load(tmp_path, _fresh())
        assert not loaded.fc.merge.steered
        assert torch.equal(loaded.fc(h), exact)


def test_float64_round_trip_and_shared_storage(tmp_path) -> None:
    torch.manual_seed(0)
    fc = nn.Linear(4, 4, dtype=torch.float64)
    net = nn.Sequential(fc, nn.Tanh(), nn.Linear(4, 4, dtype=torch.float64))
    net[2].weight = fc.weight  # tied parameter: one storage, two keys
    split = apply_plan(net, SplitPlan([UnitSplit("2", 3, [[0], [1]], shared=[2, 3])]))
    save(split, tmp_path)
    fresh = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)).double()
    loaded = load(tmp_path, fresh)
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(loaded(x), split(x))
    assert loaded[0].weight.dtype == torch.float64

"""ns.save / ns.load under damage: weights files that are truncated, random, of another version
or dtype, fuzzed byte flips; writes that fail part-way (the previous save stays, or a mix of two
saves is refused); plan files that fail part-way."""

from __future__ import annotations

import json
import os
import pathlib
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import neuronsplit as ns
from neuronsplit import _files
from neuronsplit.errors import CorruptFileError, PlanMismatchError
from neuronsplit.nn.io import PLAN_FILE, WEIGHTS_FILE
from neuronsplit.plan import SplitPlan, UnitSplit

TENSOR_FILE = "plan.safetensors"
FILES = [PLAN_FILE, TENSOR_FILE, WEIGHTS_FILE]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


PLAN_A = SplitPlan([UnitSplit("conv", 1, [[0], [1]]), UnitSplit("fc", 2, [[0, 1], [2]], [3])])
PLAN_B = SplitPlan([UnitSplit("fc", 0, [[0], [1, 2]], [3])])


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net().eval()


def _split(seed: int = 0, plan: SplitPlan = PLAN_A) -> nn.Module:
    return ns.apply_plan(_net(seed), plan)


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key, tensor in sa.items():
        assert torch.equal(tensor, sb[key]), key


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- damaged weights


def _rewrite_weights(directory: Path, edit: Callable[[dict, dict], None]) -> None:
    path = directory / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    edit(metadata, tensors)
    save_file(tensors, str(path), metadata=metadata)


def _future_version(metadata: dict, tensors: dict) -> None:
    header = json.loads(metadata["neuronsplit"])
    metadata["neuronsplit"] = json.dumps({**header, "version": 2})


def _damaged_header(metadata: dict, tensors: dict) -> None:
    metadata["neuronsplit"] = metadata["neuronsplit"][:-3]


def _int_weight(metadata: dict, tensors: dict) -> None:
    tensors["fc.subunits.weight"] = tensors["fc.subunits.weight"].to(torch.int32)


def _float_counter(metadata: dict, tensors: dict) -> None:
    tensors["bn.num_batches_tracked"] = tensors["bn.num_batches_tracked"].double()


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        pytest.param(
            _future_version, CorruptFileError, "version 2; this neuronsplit", id="version"
        ),
        pytest.param(_damaged_header, CorruptFileError, "damaged header", id="header"),
        pytest.param(
            _int_weight, CorruptFileError, "'fc.subunits.weight' is torch.int32", id="int"
        ),
        pytest.param(_float_counter, CorruptFileError, "num_batches_tracked", id="float_counter"),
    ],
)
def test_weights_of_another_version_or_kind_are_refused(
    tmp_path: Path, edit: Callable, error: type[Exception], match: str
) -> None:
    ns.save(_split(), tmp_path)
    _rewrite_weights(tmp_path, edit)
    with pytest.raises(error, match=match) as info:
        ns.load(tmp_path, _net())
    assert str(tmp_path / WEIGHTS_FILE) in str(info.value)


def _as_0_2_0(metadata: dict, tensors: dict) -> None:
    """The plain metadata entries neuronsplit 0.2.0 wrote."""
    header = json.loads(metadata.pop("neuronsplit"))
    metadata.update(format="pt", neuronsplit="0.2.0", plan_sha256=header["plan_sha256"])


def test_weights_of_an_earlier_save_still_load_and_are_checked(tmp_path: Path) -> None:
    split = _split()
    ns.save(split, tmp_path)
    _rewrite_weights(tmp_path, _as_0_2_0)
    _assert_same_state(ns.load(tmp_path, _net()), split)
    _rewrite_weights(tmp_path, lambda metadata, tensors: metadata.update(plan_sha256="0" * 64))
    with pytest.raises(CorruptFileError, match="different saves"):
        ns.load(tmp_path, _net())


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x00" * 8, os.urandom(16), os.urandom(4096), b"\xff" * 8 + b"{}"],
    ids=["empty", "zero_header", "random16", "random4096", "huge_header_length"],
)
def test_random_bytes_as_weights_name_the_file(tmp_path: Path, blob: bytes) -> None:
    ns.save(_split(), tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes(blob)
    with pytest.raises(CorruptFileError) as info:
        ns.load(tmp_path, _net())
    assert str(tmp_path / WEIGHTS_FILE) in str(info.value)


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    ns.save(_split(), tmp_path / "a")
    wide = ns.apply_plan(
        nn.Sequential(nn.Linear(4, 5)), SplitPlan([UnitSplit("0", 1, [[0], [1]], [2, 3])])
    )
    ns.save(wide, tmp_path / "b")
    (tmp_path / "a" / WEIGHTS_FILE).write_bytes((tmp_path / "b" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(CorruptFileError, match="different saves"):  # the plan hash differs
        ns.load(tmp_path / "a", _net())
    with pytest.raises(PlanMismatchError, match="Sequential"):  # the plan does not fit
        ns.load(tmp_path / "b", _net())


_FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    split = _split()
    directory = tmp_path_factory.mktemp("fuzz_valid")
    ns.save(split, directory)
    return directory, split


def _load_typed(directory: Path) -> nn.Module | None:
    """Load; ``None`` for a typed error naming the weights file. Anything else fails."""
    try:
        return ns.load(directory, _net())
    except (CorruptFileError, PlanMismatchError) as exc:
        assert WEIGHTS_FILE in str(exc), exc
        return None


@_FUZZ
@given(data=st.data())
def test_fuzzed_weights_raise_a_typed_error_or_touch_only_tensor_data(
    data: st.DataObject, saved_dir: tuple[Path, nn.Module], tmp_path_factory: Any
) -> None:
    source, split = saved_dir
    directory = tmp_path_factory.mktemp("fuzz")
    for name in FILES:
        (directory / name).write_bytes((source / name).read_bytes())
    blob = bytearray((source / WEIGHTS_FILE).read_bytes())
    start = 8 + struct.unpack("<Q", bytes(blob[:8]))[0]
    how = data.draw(st.sampled_from(["flip_header", "flip_data", "cut", "extend"]), label="how")
    if how == "cut":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="length")]
    elif how == "extend":
        blob += data.draw(st.binary(min_size=1, max_size=32), label="tail")
    else:
        low, high = (0, start - 1) if how == "flip_header" else (start, len(blob) - 1)
        blob[data.draw(st.integers(low, high), label="at")] ^= data.draw(
            st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]), label="mask"
        )
    (directory / WEIGHTS_FILE).write_bytes(bytes(blob))
    loaded = _load_typed(directory)
    if how in ("cut", "extend"):
        assert loaded is None, "a truncated or extended weights file loaded"
    elif loaded is not None:
        assert loaded.state_dict().keys() == split.state_dict().keys()
        if how == "flip_header":  # a flip that still parses and checks: the data is untouched
            _assert_same_state(loaded, split)


# --------------------------------------------------------------------------- atomic saves


class _DiskFull(OSError):
    pass


def _fail_on_call(n: int, real: Callable) -> Callable:
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            Path(args[1] if len(args) > 1 else kwargs["filename"]).write_bytes(b"partial")
            raise _DiskFull("no space left on device")
        return real(*args, **kwargs)

    return wrapper


def _failing_json(real: Callable) -> Callable:
    def write_text(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        if ".json" in self.name:
            real(self, text[: len(text) // 2], *args, **kwargs)
            raise _DiskFull("no space left on device")
        return real(self, text, *args, **kwargs)

    return write_text


def _break_plan_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safetensors.torch, "save_file", _fail_on_call(1, save_file))


def _break_plan_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pathlib.Path, "write_text", _failing_json(pathlib.Path.write_text))


def _break_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safetensors.torch, "save_file", _fail_on_call(2, save_file))


@pytest.mark.parametrize("fail", [_break_plan_tensors, _break_plan_json, _break_weights])
def test_a_failed_save_leaves_the_previous_save_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: Callable
) -> None:
    first = _split(seed=0)
    ns.save(first, tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in FILES}
    fail(monkeypatch)
    with pytest.raises(_DiskFull):
        ns.save(_split(seed=1, plan=PLAN_B), tmp_path)
    monkeypatch.undo()
    assert _listing(tmp_path) == sorted(FILES), "a temporary file was left behind"
    assert {name: (tmp_path / name).read_bytes() for name in FILES} == before
    _assert_same_state(ns.load(tmp_path, _net()), first)


@pytest.mark.parametrize("fail", [_break_plan_tensors, _break_plan_json, _break_weights])
def test_a_failed_first_save_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: Callable
) -> None:
    fail(monkeypatch)
    with pytest.raises(_DiskFull):
        ns.save(_split(), tmp_path / "out")
    monkeypatch.undo()
    assert _listing(tmp_path / "out") == []


@pytest.mark.parametrize("renamed", [1, 2], ids=["after_plan_tensors", "after_plan_json"])
def test_a_save_interrupted_between_renames_is_refused_as_a_mix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renamed: int
) -> None:
    """Only a crash between two renames can mix saves; the hashes that link the files catch it."""
    ns.save(_split(seed=0), tmp_path)
    real = os.replace
    calls = {"n": 0}

    def replace(src: Any, dst: Any) -> None:
        calls["n"] += 1
        if calls["n"] > renamed:
            raise _DiskFull("power cut")
        real(src, dst)

    monkeypatch.setattr(_files.os, "replace", replace)
    with pytest.raises(_DiskFull):
        ns.save(_split(seed=1, plan=PLAN_B), tmp_path)
    monkeypatch.undo()
    assert _listing(tmp_path) == sorted(FILES)
    with pytest.raises(CorruptFileError, match="different saves") as info:
        ns.load(tmp_path, _net())
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("fail", [_break_plan_tensors, _break_plan_json])
def test_a_failed_plan_save_leaves_the_previous_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: Callable
) -> None:
    path = PLAN_A.save(tmp_path / "plan.json")
    before = {name: (tmp_path / name).read_bytes() for name in (PLAN_FILE, TENSOR_FILE)}
    fail(monkeypatch)
    with pytest.raises(_DiskFull):
        PLAN_B.save(path)
    monkeypatch.undo()
    assert _listing(tmp_path) == sorted([PLAN_FILE, TENSOR_FILE])
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert SplitPlan.load(path).by_layer() == PLAN_A.by_layer()


def test_save_records_the_hashes_that_link_the_files(tmp_path: Path) -> None:
    ns.save(_split(), tmp_path)
    header = json.loads((tmp_path / PLAN_FILE).read_text())
    assert header["assignments"]["file"] == TENSOR_FILE  # the final name, not a temporary one
    assert header["assignments"]["sha256"] == _files.sha256_file(tmp_path / TENSOR_FILE)
    with safe_open(str(tmp_path / WEIGHTS_FILE), framework="pt") as handle:
        metadata = handle.metadata()
    assert list(metadata) == ["neuronsplit"]  # one entry: several would be written in any order
    header = json.loads(metadata["neuronsplit"])
    assert header["plan_sha256"] == _files.sha256_file(tmp_path / PLAN_FILE)
    assert (header["format"], header["version"]) == ("neuronsplit.weights", 1)


def test_two_saves_of_the_same_model_are_byte_identical(tmp_path: Path) -> None:
    split = _split()
    for name in ("a", "b"):
        ns.save(split, tmp_path / name, meta={"z": 1, "a": [1.5, 2]})
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

"""Scan files: round trip with reservoirs, header checks, fuzzed damage, atomic writes."""

from __future__ import annotations

import json
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
from neuronsplit.errors import CorruptFileError
from neuronsplit.stats import TopN
from neuronsplit.stats.files import SCAN_VERSION

DT = torch.float64
N_CLASSES = 3


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def result() -> ns.ScanResult:
    torch.manual_seed(0)
    model = TinyNet().to(DT).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(11, 2, 5, 5, generator=gen, dtype=DT)
    y = torch.arange(11) % N_CLASSES
    batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 11, 4)]
    return ns.scan(model, batches, ["conv", "fc"], N_CLASSES, top_n=4, progress=False)


@pytest.fixture
def saved(result: ns.ScanResult, tmp_path: Path) -> Path:
    path = tmp_path / "scan.safetensors"
    result.save(path)
    return path


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["neuronsplit"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    return header, tensors


def _write(path: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(path), metadata={"neuronsplit": json.dumps(header)})


def _rewrite(
    path: Path, edit: Callable[[dict[str, Any], dict[str, torch.Tensor]], None], *, declare: bool
) -> None:
    """Apply ``edit`` to the header and tensors; ``declare`` updates the declared shapes too."""
    header, tensors = _read(path)
    edit(header, tensors)
    if declare:
        header["tensors"] = {
            k: {"shape": list(t.shape), "dtype": str(t.dtype)} for k, t in tensors.items()
        }
    _write(path, header, tensors)


def _all_tensors(res: ns.ScanResult) -> dict[str, torch.Tensor]:
    out = {"class_counts": res.class_counts}
    for name, stats in res.layers.items():
        out.update({f"{name}/{k}": t for k, t in stats.tensors().items()})
    return out


def _assert_same(a: ns.ScanResult, b: ns.ScanResult) -> None:
    ta, tb = _all_tensors(a), _all_tensors(b)
    assert ta.keys() == tb.keys()
    for key, tensor in ta.items():
        assert tensor.dtype == tb[key].dtype and torch.equal(tensor, tb[key]), key
    for name, stats in a.layers.items():
        other = b.layers[name]
        assert stats.kind == other.kind
        for key, stat in stats.statistics.items():
            assert type(stat) is type(other.statistics[key]) and stat.equal(other.statistics[key])
    assert (a.tau_grid, a.relevance, a.target, a.meta) == (
        b.tau_grid,
        b.relevance,
        b.target,
        b.meta,
    )


# --------------------------------------------------------------------------- round trip


def test_round_trip_keeps_every_tensor_and_the_reservoirs(
    result: ns.ScanResult, saved: Path
) -> None:
    loaded = ns.ScanResult.load(saved)
    _assert_same(loaded, result)
    for name in ("conv", "fc"):
        top = loaded.layer(name).top_activation
        assert isinstance(top, TopN) and top.by == "activation" and top.n == 4
        assert loaded.layer(name).top_relevance.by == "relevance"  # type: ignore[union-attr]
        assert bool((top.index >= 0).all())  # 11 samples fill 4 slots
        original = result.layer(name).top_activation
        assert original is not None
        for unit in range(loaded.layer(name).num_units):
            for got, want in zip(top.top(unit), original.top(unit), strict=True):
                assert torch.equal(got, want)
    again = Path(str(saved) + ".again")
    loaded.save(str(again))  # str paths work, and a loaded result writes the same file
    assert again.read_bytes() == saved.read_bytes()


def test_save_replaces_an_existing_file(result: ns.ScanResult, saved: Path) -> None:
    first = ns.scan(
        TinyNet().to(DT), [(torch.zeros(1, 2, 5, 5, dtype=DT), torch.tensor([0]))],
        ["fc"], N_CLASSES, top_n=0, progress=False,
    )  # fmt: skip
    first.save(saved)
    assert list(ns.ScanResult.load(saved).layers) == ["fc"]
    result.save(saved)
    _assert_same(ns.ScanResult.load(saved), result)
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]


# --------------------------------------------------------------------------- header checks


def test_tensor_shape_disagreeing_with_the_header_is_refused(saved: Path) -> None:
    def edit(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        tensors["fc/relevance_sum/sums"] = torch.zeros(N_CLASSES, 5, dtype=DT)

    _rewrite(saved, edit, declare=False)
    with pytest.raises(CorruptFileError) as info:
        ns.ScanResult.load(saved)
    message = str(info.value)
    assert str(saved) in message and "'fc/relevance_sum/sums'" in message
    assert "[3, 5]" in message and "[3, 3]" in message


def test_tensor_dtype_disagreeing_with_the_header_is_refused(saved: Path) -> None:
    def edit(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        tensors["conv/top_activation/index"] = tensors["conv/top_activation/index"].int()

    _rewrite(saved, edit, declare=False)
    with pytest.raises(CorruptFileError, match="'conv/top_activation/index'"):
        ns.ScanResult.load(saved)


def test_version_1_file_asks_to_scan_again(saved: Path) -> None:
    header, tensors = _read(saved)
    v1_header = {  # what neuronsplit 0.1 wrote
        "format": "neuronsplit.scan/1",
        "layers": [["conv", "conv2d"], ["fc", "linear"]],
        "tau_grid": header["tau_grid"],
        "relevance": "grad_x_act",
        "target": "label",
        "meta": {},
    }
    v1_tensors = {"class_counts": tensors["class_counts/counts"]}
    for name in ("conv", "fc"):
        v1_tensors[f"{name}/weight"] = tensors[f"{name}/weight"]
        for key, field in (
            ("important", "counts"),
            ("relevance_sum", "sums"),
            ("input_sums", "sums"),
        ):
            v1_tensors[f"{name}/{key}"] = tensors[f"{name}/{key}/{field}"]
    _write(saved, v1_header, v1_tensors)
    with pytest.raises(CorruptFileError, match=r"scan again") as info:
        ns.ScanResult.load(saved)
    assert str(saved) in str(info.value) and "format 1" in str(info.value)


def test_future_version_is_refused_naming_the_version(saved: Path) -> None:
    future = SCAN_VERSION + 1
    _rewrite(saved, lambda h, t: h.update(version=future), declare=False)
    with pytest.raises(CorruptFileError, match=rf"version {future}") as info:
        ns.ScanResult.load(saved)
    assert str(saved) in str(info.value)


def _as_version_2(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """What neuronsplit wrote before images without positive relevance were counted apart."""
    header["version"] = 2
    for entry in header["layers"]:
        del entry["statistics"]["no_positive"]
        del tensors[f"{entry['name']}/no_positive/counts"]


def test_version_2_file_without_the_no_positive_counts_asks_to_scan_again(saved: Path) -> None:
    _rewrite(saved, _as_version_2, declare=True)
    with pytest.raises(CorruptFileError, match=r"version 2.*scan again") as info:
        ns.ScanResult.load(saved)
    assert str(saved) in str(info.value)


def test_current_version_without_the_no_positive_counts_is_refused(saved: Path) -> None:
    def drop(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        _as_version_2(header, tensors)
        header["version"] = SCAN_VERSION

    _rewrite(saved, drop, declare=True)
    with pytest.raises(CorruptFileError, match=r"conv/no_positive must be a NoPositiveCounts"):
        ns.ScanResult.load(saved)


def _grow_units(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    tensors["conv/relevance_sum/sums"] = torch.zeros(N_CLASSES, 5, dtype=DT)  # conv has 4 units


def _grow_inputs(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    tensors["conv/input_sums/sums"] = torch.zeros(N_CLASSES, 3, 9, dtype=DT)  # conv has 2 inputs


def _drop_tau(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    tensors["fc/important/counts"] = tensors["fc/important/counts"][:-1].clone()


def _grow_classes(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    tensors["class_counts/counts"] = torch.zeros(N_CLASSES + 1, dtype=torch.int64)


def _reservoir_units(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    for field in ("values", "index", "position"):
        key = f"fc/top_relevance/{field}"
        tensors[key] = tensors[key][:-1].clone()


def _flat_weight(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    tensors["fc/weight"] = tensors["fc/weight"].reshape(3, 4)


@pytest.mark.parametrize(
    "edit",
    [_grow_units, _grow_inputs, _drop_tau, _grow_classes, _reservoir_units, _flat_weight],
)
def test_statistic_shape_disagreeing_with_the_layer_is_refused(
    saved: Path, edit: Callable[[dict[str, Any], dict[str, torch.Tensor]], None]
) -> None:
    _rewrite(saved, edit, declare=True)
    with pytest.raises(CorruptFileError) as info:
        ns.ScanResult.load(saved)
    assert str(saved) in str(info.value)


def test_relevance_sum_with_the_wrong_number_of_units_names_the_statistic(saved: Path) -> None:
    _rewrite(saved, _grow_units, declare=True)
    with pytest.raises(CorruptFileError, match=r"conv/relevance_sum .*4 units"):
        ns.ScanResult.load(saved)


def _reservoir_fields_disagree(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    index = tensors["conv/top_activation/index"]
    tensors["conv/top_activation/index"] = torch.cat([index, index[:, :1]], 1)  # (C, n + 1)


def _core_statistic_missing(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    del header["layers"][0]["statistics"]["input_sums"]
    del tensors["conv/input_sums/sums"]


def _layer_taus_differ(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    header["layers"][1]["statistics"]["important"]["spec"]["taus"][0] = 0.5


def _unknown_kind(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    header["layers"][0]["kind"] = "conv2e"


def _no_positive_exceeds_class_counts(
    header: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    tensors["fc/no_positive/counts"] = tensors["class_counts/counts"] + 1


def _no_positive_per_unit(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    tensors["fc/no_positive/counts"] = torch.zeros(N_CLASSES, 3, dtype=torch.int64)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(_reservoir_fields_disagree, id="topn_fields_differ_in_shape"),
        pytest.param(_core_statistic_missing, id="core_statistic_missing"),
        pytest.param(_layer_taus_differ, id="statistic_taus_differ_from_tau_grid"),
        pytest.param(_unknown_kind, id="unknown_layer_kind"),
        pytest.param(_no_positive_exceeds_class_counts, id="no_positive_exceeds_class_counts"),
        pytest.param(_no_positive_per_unit, id="no_positive_has_the_wrong_shape"),
    ],
)
def test_inconsistent_but_well_formed_files_are_refused(
    saved: Path, edit: Callable[[dict[str, Any], dict[str, torch.Tensor]], None]
) -> None:
    _rewrite(saved, edit, declare=True)
    with pytest.raises(CorruptFileError):
        ns.ScanResult.load(saved)


# --------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def valid_blob(result: ns.ScanResult, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "valid.safetensors"
    result.save(path)
    return path.read_bytes()


def _data_start(blob: bytes) -> int:
    return 8 + struct.unpack("<Q", blob[:8])[0]


def _load_or_corrupt(path: Path) -> ns.ScanResult | None:
    """Load ``path``; ``None`` for CorruptFileError. Any other exception fails the test."""
    try:
        return ns.ScanResult.load(path)
    except CorruptFileError as exc:
        assert str(path) in str(exc)
        return None


_FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@_FUZZ
@given(data=st.data())
def test_byte_flips_raise_corrupt_file_error_or_touch_only_tensor_data(
    data: st.DataObject, result: ns.ScanResult, valid_blob: bytes, tmp_path: Path
) -> None:
    blob = bytearray(valid_blob)
    start = _data_start(valid_blob)
    in_header = data.draw(st.booleans(), label="in_header")  # half the flips hit the header
    span = (0, start - 1) if in_header else (start, len(blob) - 1)
    flips = data.draw(
        st.lists(st.tuples(st.integers(*span), st.integers(1, 255)), min_size=1, max_size=3),
        label="flips",
    )
    for position, mask in flips:
        blob[position] ^= mask
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(blob))
    loaded = _load_or_corrupt(path)
    if loaded is None:
        return
    if in_header:  # a flip in the JSON that still parses and checks: the data is untouched
        for key, tensor in _all_tensors(result).items():
            assert torch.equal(tensor, _all_tensors(loaded)[key]), key
    else:  # only tensor data changed: same structure, at most the flipped tensors differ
        assert list(loaded.layers) == list(result.layers)
        assert (loaded.tau_grid, loaded.target) == (result.tau_grid, result.target)


@_FUZZ
@given(data=st.data())
def test_truncated_or_extended_files_raise_corrupt_file_error(
    data: st.DataObject, valid_blob: bytes, tmp_path: Path
) -> None:
    length = data.draw(st.integers(0, len(valid_blob) - 1), label="length")
    blob = valid_blob[:length]
    if data.draw(st.booleans(), label="append"):
        blob += data.draw(st.binary(min_size=1, max_size=64), label="tail")
    path = tmp_path / "cut.safetensors"
    path.write_bytes(blob)
    with pytest.raises(CorruptFileError):
        ns.ScanResult.load(path)


# --------------------------------------------------------------------------- atomic writes


class _DiskFull(OSError):
    pass


def _failing_save_file(
    tensors: dict[str, torch.Tensor], filename: str, metadata: Any = None
) -> None:
    Path(filename).write_bytes(b"partial safetensors data")
    raise _DiskFull("no space left on device")


def test_save_file_is_imported_at_call_time() -> None:
    import inspect

    from neuronsplit.stats import files

    source = inspect.getsource(files.save_scan)
    assert "from safetensors.torch import save_file" in source
    assert not hasattr(files, "save_file")  # so patching safetensors.torch.save_file is enough


def test_failed_write_leaves_the_previous_file_and_no_temp_file(
    result: ns.ScanResult, saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = saved.read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_save_file)
    with pytest.raises(_DiskFull):
        result.save(saved)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]
    monkeypatch.undo()
    _assert_same(ns.ScanResult.load(saved), result)


def test_failed_first_write_creates_no_file(
    result: ns.ScanResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_save_file)
    with pytest.raises(_DiskFull):
        result.save(tmp_path / "new.safetensors")
    assert list(tmp_path.iterdir()) == []

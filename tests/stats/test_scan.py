"""The streaming scan: ARVs, importance counts, merge/save/load, timm models, bad input, hygiene.

Expected values come from autograd (the official code's recipe for ARVs), from Captum, or from
counting by hand; nothing is copied from neuronsplit's own output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from captum.attr import LayerGradientXActivation
from safetensors.torch import load_file, save_file
from torch import nn

import neuronsplit as ns
from neuronsplit.capture import tap_sums as input_tap_sums
from neuronsplit.errors import (
    CorruptFileError,
    IncompatibleResultsError,
    InputShapeError,
    InvalidTargetError,
    NonFiniteError,
    UnknownLayerError,
    UnsupportedLayerError,
)

DT = torch.float64
N_CLASSES = 3

# torch warns that padding="same" with an even kernel copies the input; that case is on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


# --------------------------------------------------------------------------- models and data


class ConvNet(nn.Module):
    """pre-conv -> ReLU -> target conv -> ReLU -> global avg pool -> head."""

    def __init__(self, target: nn.Conv2d) -> None:
        super().__init__()
        self.pre = nn.Conv2d(3, target.in_channels, 3, padding=1)
        self.act0 = nn.ReLU()
        self.target = target
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(target.out_channels, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.target(self.act0(self.pre(x))))
        return self.head(self.pool(x).flatten(1))


class LinearNet(nn.Module):
    """pre Linear -> tanh -> target Linear -> ReLU -> head; inputs (B, D) or tokens (B, T, D)."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(10, 6)
        self.act0 = nn.Tanh()
        self.target = nn.Linear(6, 5)
        self.act = nn.ReLU()
        self.head = nn.Linear(5, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.target(self.act0(self.pre(x))))
        if x.dim() == 3:
            x = x.mean(1)
        return self.head(x)


def _init(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = model.to(DT).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 0.2 if name.endswith("bias") else 1.0 / max(1, param[0].numel()) ** 0.5
            param.copy_(torch.randn(param.shape, generator=gen, dtype=DT) * scale)
    return model


def _data(shape: tuple[int, ...], n: int = 13, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=gen, dtype=DT)
    y = torch.randint(0, N_CLASSES, (n,), generator=gen)
    y[:N_CLASSES] = torch.arange(N_CLASSES)  # every class present
    return x, y


def _batches(x: torch.Tensor, y: torch.Tensor | None, size: int) -> list:
    if y is None:
        return [x[i : i + size] for i in range(0, len(x), size)]
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


CONV_CASES: dict[str, Callable[[], nn.Conv2d]] = {
    "1x1": lambda: nn.Conv2d(4, 5, 1),
    "3x3_stride2_pad1": lambda: nn.Conv2d(4, 5, 3, stride=2, padding=1),
    "dilated": lambda: nn.Conv2d(4, 5, 3, dilation=2, padding=1),
    "same_3x3": lambda: nn.Conv2d(4, 5, 3, padding="same"),
    "same_even_4x2_dilated": lambda: nn.Conv2d(4, 5, (4, 2), padding="same", dilation=(1, 2)),
    "valid_stride_rect": lambda: nn.Conv2d(4, 5, (2, 3), stride=(2, 1)),
}


def _model_and_data(case: str):
    if case in CONV_CASES:
        model = _init(ConvNet(CONV_CASES[case]()), seed=1)
        x, y = _data((3, 9, 9))
    elif case == "linear_2d":
        model = _init(LinearNet(), seed=2)
        x, y = _data((10,))
    else:  # linear on tokens
        model = _init(LinearNet(), seed=3)
        x, y = _data((7, 10))
    return model, x, y


# --------------------------------------------------------------------------- ARV vs autograd


def _unit_reduce(t: torch.Tensor, conv: bool) -> torch.Tensor:
    """Sum over space (conv) or tokens (linear) -> (B, channels)."""
    if conv:
        return t.sum((2, 3))
    return t.sum(tuple(range(1, t.dim() - 1))) if t.dim() > 2 else t


def _autograd_contributions(layer: nn.Module, x_in: torch.Tensor) -> torch.Tensor:
    """r[b, c, j] = sum_space X_j * d z_c / d X_j, with z_c = output[:, c].sum() (official code)."""
    conv = isinstance(layer, nn.Conv2d)
    xd = x_in.detach().clone().requires_grad_(True)
    out = layer(xd)
    units = out.shape[1] if conv else out.shape[-1]
    rows = []
    for c in range(units):
        z_c = (out[:, c] if conv else out[..., c]).sum()
        (grad,) = torch.autograd.grad(z_c, xd, retain_graph=True)
        rows.append(_unit_reduce(grad * xd.detach(), conv))
    return torch.stack(rows, dim=1)  # (B, C, J)


def _layer_inputs(model: nn.Module, layer: nn.Module, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(i[0].detach().clone()))
    try:
        with torch.no_grad():
            for x in xs:
                model(x)
    finally:
        handle.remove()
    return captured


ARV_CASES = [*CONV_CASES, "linear_2d", "linear_tokens"]


@pytest.mark.parametrize("case", ARV_CASES)
def test_arv_closed_form_equals_autograd(case: str) -> None:
    model, x, y = _model_and_data(case)
    loader = _batches(x, y, 5)
    res = ns.scan(model, loader, ["target"], N_CLASSES, progress=False)
    layer = model.target
    inputs = _layer_inputs(model, layer, [b[0] for b in loader])
    units = res.layer("target").num_units
    sums = torch.zeros(N_CLASSES, units, layer.weight.shape[1], dtype=DT)
    for x_in, (_, labels) in zip(inputs, loader, strict=True):
        sums.index_add_(0, labels, _autograd_contributions(layer, x_in))
    counts = torch.bincount(y, minlength=N_CLASSES).to(DT)
    expected = sums / counts[:, None, None]  # (N, C, J)
    assert expected.abs().max() > 1e-3
    for t in range(N_CLASSES):
        for c in range(units):
            got = res.arv("target", c, t)
            torch.testing.assert_close(got, expected[t, c], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(res.arv("target", 0, t), expected[t, 0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.arvs("target", 1, [2, 0]), expected[[2, 0], 1])


@pytest.mark.parametrize("case", ARV_CASES)
def test_input_tap_sums_reproduce_per_sample_gradient_x_input(case: str) -> None:
    model, x, _ = _model_and_data(case)
    layer = model.target
    (x_in,) = _layer_inputs(model, layer, [x])
    with torch.no_grad():
        out = layer(x_in)
    taps = input_tap_sums(layer, x_in, out.shape)
    weight = layer.weight.detach().reshape(layer.weight.shape[0], layer.weight.shape[1], -1)
    assert taps.shape == (x.shape[0], weight.shape[1], weight.shape[2])
    per_sample = (weight.unsqueeze(0) * taps.unsqueeze(1)).sum(-1)  # (B, C, J)
    expected = _autograd_contributions(layer, x_in)
    torch.testing.assert_close(per_sample, expected, rtol=1e-10, atol=1e-12)
    # completeness: sum_j r_{j->c} = z_c - bias_c * (number of output positions)
    conv = isinstance(layer, nn.Conv2d)
    positions = out[0, 0].numel() if conv else out[..., 0].numel() // out.shape[0]
    z = _unit_reduce(out, conv) - layer.bias.detach() * positions
    torch.testing.assert_close(per_sample.sum(-1), z, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- importance counts


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 4 * 4, 12)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(12, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.fc2(self.act3(self.fc1(x.flatten(1))))


def test_importance_counts_match_per_image_captum_reference() -> None:
    model = _init(SmallCNN(), seed=4)
    x, y = _data((3, 8, 8), n=24, seed=5)
    grid = (0.01, 0.03, 0.07, 0.2, 0.5)
    layers = ["conv2", "fc1"]
    res = ns.scan(model, _batches(x, y, 8), layers, N_CLASSES, tau_grid=grid, progress=False)
    assert res.tau_grid == grid
    for name in layers:
        layer = model.get_submodule(name)
        lga = LayerGradientXActivation(model, layer)
        expected = torch.zeros(len(grid), N_CLASSES, res.layer(name).num_units, dtype=torch.int64)
        for i in range(len(x)):
            attr = lga.attribute(x[i : i + 1], target=int(y[i])).detach()
            rel = _unit_reduce(attr, isinstance(layer, nn.Conv2d))[0]  # (C,)
            total = rel.clamp(min=0).sum()
            for k, tau in enumerate(grid):
                margin = (rel - tau * total).abs().min()
                assert margin > 1e-9 * total  # no tie: the reference is unambiguous
                expected[k, y[i]] += (rel >= tau * total).long()
        assert expected.sum() > 0 and (expected < torch.bincount(y)[None, :, None]).any()
        got = res.layer(name).important
        assert got.shape == expected.shape
        assert torch.equal(got.long(), expected)
        for k, tau in enumerate(grid):
            assert torch.equal(res.important_counts(name, tau).long(), expected[k])


def test_rethreshold_off_grid_raises_naming_the_grid() -> None:
    model = _init(SmallCNN(), seed=4)
    x, y = _data((3, 8, 8), n=6)
    res = ns.scan(model, [(x, y)], ["conv2"], N_CLASSES, tau_grid=(0.02, 0.05), progress=False)
    with pytest.raises(ValueError, match=r"0\.02, 0\.05"):
        res.important_counts("conv2", 0.03)
    with pytest.raises(ValueError, match=r"0\.02, 0\.05"):
        ns.find_polysemantic(res, tau=0.03)
    res.important_counts("conv2", 0.05)  # on the grid: fine


def test_invalid_tau_grid_is_rejected() -> None:
    model = _init(SmallCNN(), seed=4)
    x, y = _data((3, 8, 8), n=4)
    for grid in [(), (0.0,), (1.5,), (-0.1, 0.03)]:
        with pytest.raises(ValueError, match="tau_grid"):
            ns.scan(model, [(x, y)], ["conv2"], N_CLASSES, tau_grid=grid, progress=False)


# --------------------------------------------------------------------------- merge, save, load


def _assert_results_equal(a: ns.ScanResult, b: ns.ScanResult, exact: bool) -> None:
    assert list(a.layers) == list(b.layers)
    assert torch.equal(a.class_counts, b.class_counts)
    assert a.class_counts.dtype == b.class_counts.dtype
    assert a.tau_grid == b.tau_grid and a.relevance == b.relevance and a.target == b.target
    for name in a.layers:
        sa, sb = a.layer(name), b.layer(name)
        assert sa.kind == sb.kind
        for key, ta in sa.tensors().items():
            tb = sb.tensors()[key]
            assert ta.dtype == tb.dtype and ta.shape == tb.shape, key
            if exact or key in ("important", "weight"):
                assert torch.equal(ta, tb), key
            else:
                torch.testing.assert_close(ta, tb, rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def merge_setup():
    model = _init(SmallCNN(), seed=6)
    x, y = _data((3, 8, 8), n=20, seed=7)
    layers = ["conv1", "conv2", "fc1"]
    full = ns.scan(model, _batches(x, y, 4), layers, N_CLASSES, progress=False)
    first = ns.scan(model, _batches(x[:12], y[:12], 4), layers, N_CLASSES, progress=False)
    second = ns.scan(
        model, _batches(x[12:], y[12:], 4), layers, N_CLASSES, progress=False, sample_offset=12
    )
    return model, x, y, layers, full, first, second


def test_merge_of_halves_equals_full_scan(merge_setup) -> None:
    *_, full, first, second = merge_setup
    merged = first.merge(second)
    _assert_results_equal(merged, full, exact=False)
    assert merged.num_samples == 20
    assert merged.meta["merged"] == 2
    # the inputs of merge are left alone
    assert first.num_samples == 12 and second.num_samples == 8


def test_save_load_round_trip(merge_setup, tmp_path) -> None:
    *_, full, _, _ = merge_setup
    path = tmp_path / "scan.safetensors"
    full.save(path)
    loaded = ns.ScanResult.load(path)
    _assert_results_equal(loaded, full, exact=True)
    assert loaded.meta == full.meta
    assert loaded.num_classes == full.num_classes
    torch.testing.assert_close(loaded.arv("conv2", 3, 1), full.arv("conv2", 3, 1), rtol=0, atol=0)
    # loaded results merge like fresh ones
    _assert_results_equal(loaded.merge(full), full.merge(full), exact=True)


def test_merge_incompatible_results_raises(merge_setup) -> None:
    model, x, y, layers, full, _, _ = merge_setup
    loader = _batches(x, y, 10)
    two_class = _batches(x, y.clamp(max=1), 10)
    others = {
        "layers": ns.scan(model, loader, ["conv1", "conv2"], N_CLASSES, progress=False),
        "num_classes": ns.scan(model, two_class, layers, N_CLASSES - 1, progress=False),
        "tau_grid": ns.scan(model, loader, layers, N_CLASSES, tau_grid=(0.03,), progress=False),
        "target": ns.scan(model, loader, layers, N_CLASSES, target="prediction", progress=False),
    }
    other_model = _init(SmallCNN(), seed=99)
    others["weights"] = ns.scan(other_model, loader, layers, N_CLASSES, progress=False)
    for what, other in others.items():
        with pytest.raises(IncompatibleResultsError):
            full.merge(other)
        with pytest.raises(IncompatibleResultsError):
            other.merge(full)
        assert what  # keeps the loop variable meaningful in tracebacks


def _corrupt_files(tmp_path, valid) -> dict[str, object]:
    path = tmp_path / "valid.safetensors"
    valid.save(path)
    blob = path.read_bytes()
    files = {}

    def write(name: str, data: bytes) -> None:
        files[name] = tmp_path / f"{name}.safetensors"
        files[name].write_bytes(data)

    gen = torch.Generator().manual_seed(0)
    write(
        "random_bytes",
        bytes(torch.randint(0, 256, (4096,), generator=gen, dtype=torch.uint8).tolist()),
    )
    write("truncated", blob[: len(blob) // 2])
    write("empty", b"")
    tensors = load_file(str(path))
    header = json.loads(_metadata(path)["neuronsplit"])
    cases = {
        "no_metadata": None,
        "foreign_metadata": {"format": "pt"},
        "not_json": {"neuronsplit": "{not json"},
        "json_not_object": {"neuronsplit": "[1, 2]"},
        "wrong_format": {"neuronsplit": json.dumps({**header, "format": "other/9"})},
        "layers_not_pairs": {"neuronsplit": json.dumps({**header, "layers": [["conv1"]]})},
        "layers_not_list": {"neuronsplit": json.dumps({**header, "layers": 5})},
        "no_tau_grid": {
            "neuronsplit": json.dumps({k: v for k, v in header.items() if k != "tau_grid"})
        },
    }
    for name, metadata in cases.items():
        files[name] = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(files[name]), metadata=metadata)
    missing = {k: v for k, v in tensors.items() if "input_sums/" not in k}
    files["missing_tensor"] = tmp_path / "missing_tensor.safetensors"
    save_file(missing, str(files["missing_tensor"]), metadata=_metadata(path))
    return files


def _metadata(path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata())


def test_load_corrupt_files_raise_corrupt_file_error(merge_setup, tmp_path) -> None:
    *_, full, _, _ = merge_setup
    for name, path in _corrupt_files(tmp_path, full).items():
        with pytest.raises(CorruptFileError) as info:
            ns.ScanResult.load(path)
        assert str(path) in str(info.value), name


def test_load_missing_file_raises_file_not_found(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        ns.ScanResult.load(tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------- memory, targets


def test_memory_does_not_grow_with_number_of_images() -> None:
    model = _init(SmallCNN(), seed=8)
    x, y = _data((3, 8, 8), n=40, seed=9)
    loader = _batches(x, y, 8)
    one = ns.scan(model, loader, ["conv2", "fc1"], N_CLASSES, max_batches=1, progress=False)
    five = ns.scan(model, loader, ["conv2", "fc1"], N_CLASSES, progress=False)
    assert one.num_samples == 8 and five.num_samples == 40
    assert one.memory_bytes() == five.memory_bytes()
    # O(units x classes x inputs): conv2 has 8 units, 6 inputs x 9 taps; fc1 12 units, 128 inputs
    t, n = len(one.tau_grid), N_CLASSES
    expected = n * 8
    expected += 8 * 6 * 9 * 8 + t * n * 8 * 4 + n * 8 * 8 + n * 6 * 9 * 8
    expected += 12 * 128 * 8 + t * n * 12 * 4 + n * 12 * 8 + n * 128 * 8
    # plus per unit two reservoirs of 32 samples (value, index, position: 8 bytes each)
    expected += 2 * (8 + 12) * 32 * 24
    expected += 2 * n * 8  # per layer: images without positive relevance, per class
    assert five.memory_bytes() == expected


def test_target_prediction_groups_by_predicted_class() -> None:
    model = _init(SmallCNN(), seed=10)
    x, _ = _data((3, 8, 8), n=30, seed=11)
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert len(set(pred.tolist())) >= 2
    res = ns.scan(
        model, _batches(x, None, 7), ["conv2"], N_CLASSES, target="prediction", progress=False
    )
    assert res.target == "prediction"
    assert torch.equal(res.class_counts, torch.bincount(pred, minlength=N_CLASSES))
    attr = LayerGradientXActivation(model, model.conv2).attribute(x, target=pred).detach()
    expected = torch.zeros(N_CLASSES, 8, dtype=DT).index_add_(0, pred, attr.sum((2, 3)))
    torch.testing.assert_close(res.layer("conv2").relevance_sum, expected, rtol=1e-10, atol=1e-12)
    # labels, when present, are ignored with target="prediction"
    wrong = torch.zeros(30, dtype=torch.long)
    res2 = ns.scan(
        model, _batches(x, wrong, 7), ["conv2"], N_CLASSES, target="prediction", progress=False
    )
    assert torch.equal(res2.class_counts, res.class_counts)


def test_num_classes_inferred_from_logits() -> None:
    model = _init(SmallCNN(), seed=12)
    x, y = _data((3, 8, 8), n=5)
    res = ns.scan(model, [(x, y)], "fc1", progress=False)
    assert res.num_classes == N_CLASSES
    assert list(res.layers) == ["fc1"]


# --------------------------------------------------------------------------- frozen models


@pytest.mark.parametrize("backend", ["grad_x_act", "zennit"])
def test_frozen_model_gives_same_result(backend: str) -> None:
    from zennit.composites import EpsilonPlusFlat

    model = _init(SmallCNN(), seed=13)
    x, y = _data((3, 8, 8), n=12, seed=14)
    loader = _batches(x, y, 5)
    layers = ["conv1", "conv2", "fc1"]

    def relevance():
        return "grad_x_act" if backend == "grad_x_act" else ns.Zennit(EpsilonPlusFlat())

    ref = ns.scan(model, loader, layers, N_CLASSES, relevance=relevance(), progress=False)
    model.requires_grad_(False)
    frozen = ns.scan(model, loader, layers, N_CLASSES, relevance=relevance(), progress=False)
    _assert_results_equal(frozen, ref, exact=False)
    assert not any(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- timm models


def _timm(name: str, **kwargs) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def _images224(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _check_shapes(res: ns.ScanResult, name: str, units: int, inputs: int, taps: int) -> None:
    stats = res.layer(name)
    n, t = res.num_classes, len(res.tau_grid)
    assert stats.weight.shape == (units, inputs, taps)
    assert stats.important.shape == (t, n, units)
    assert stats.relevance_sum.shape == (n, units)
    assert stats.input_sums.shape == (n, inputs, taps)
    for key, tensor in stats.tensors().items():
        if not key.startswith("top_"):
            assert torch.isfinite(tensor.to(DT)).all(), key
    for top in (stats.top_activation, stats.top_relevance):
        filled = top.index >= 0  # fewer samples than slots: the rest stay empty (-inf, -1)
        assert filled.sum(1).tolist() == [min(res.num_samples, top.n)] * units
        assert torch.isfinite(top.values[filled]).all()
    assert stats.relevance_sum.abs().sum() > 0
    assert stats.input_sums.abs().sum() > 0


@pytest.mark.slow
def test_scan_timm_resnet50() -> None:
    # zero_init_last=False: timm zero-initialises the last BN of each block, which would make
    # every relevance at conv3 exactly zero at random init
    model = _timm("resnet50", num_classes=10, zero_init_last=False)
    labels = torch.tensor([3, 7])
    layers = ["layer4.2.conv3", "layer1.0.conv2"]
    res = ns.scan(model, [(_images224(), labels)], layers, 10, progress=False)
    assert res.class_counts.tolist() == [0, 0, 0, 1, 0, 0, 0, 1, 0, 0]
    _check_shapes(res, "layer4.2.conv3", 2048, 512, 1)
    _check_shapes(res, "layer1.0.conv2", 64, 64, 9)
    assert res.arv("layer4.2.conv3", 5, 3).shape == (512,)


@pytest.mark.slow
def test_scan_timm_vit_b16_matches_captum() -> None:
    model = _timm("vit_base_patch16_224", num_classes=10)
    x, labels = _images224(), torch.tensor([2, 5])
    layers = ["blocks.11.mlp.fc2", "blocks.0.attn.qkv"]
    res = ns.scan(model, [(x, labels)], layers, 10, progress=False)
    assert res.class_counts.tolist() == [0, 0, 1, 0, 0, 1, 0, 0, 0, 0]
    _check_shapes(res, "blocks.11.mlp.fc2", 768, 3072, 1)
    _check_shapes(res, "blocks.0.attn.qkv", 2304, 768, 1)
    layer = model.get_submodule("blocks.11.mlp.fc2")
    attr = LayerGradientXActivation(model, layer).attribute(x, target=labels).detach()
    expected = attr.sum(1).to(DT)  # (B, 768), summed over the 197 tokens
    got = res.layer("blocks.11.mlp.fc2").relevance_sum[labels]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.slow
def test_scan_timm_dinov2() -> None:
    model = _timm("vit_base_patch14_dinov2", img_size=224, num_classes=10)
    labels = torch.tensor([0, 9])
    res = ns.scan(model, [(_images224(), labels)], ["blocks.11.mlp.fc1"], 10, progress=False)
    assert res.class_counts.tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    _check_shapes(res, "blocks.11.mlp.fc1", 3072, 768, 1)


# --------------------------------------------------------------------------- bad input and hygiene


class Bomb(nn.Module):
    """Identity that raises on its ``fuse``-th call (0 = never)."""

    def __init__(self) -> None:
        super().__init__()
        self.fuse = 0
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fuse and self.calls >= self.fuse:
            raise RuntimeError("boom in the middle of the forward")
        return x


class HygieneNet(nn.Module):
    """Conv/BN/Dropout net with a grouped conv, an optional reused layer and a bomb."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.ReLU()
        self.gconv = nn.Conv2d(6, 6, 3, padding=1, groups=2)
        self.conv2 = nn.Conv2d(6, 8, 1)
        self.sq = nn.Conv2d(8, 8, 1)
        self.bomb = Bomb()
        self.drop = nn.Dropout(0.5)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, N_CLASSES)
        self.reuse = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.gconv(self.act(self.bn(self.conv1(x)))))
        x = self.bomb(self.sq(x))
        if self.reuse:
            x = self.sq(x)
        return self.fc(self.drop(self.pool(x).flatten(1)))


def _hygiene_model() -> HygieneNet:
    torch.manual_seed(0)
    model = HygieneNet().to(DT)
    with torch.no_grad():  # non-trivial BN state
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
        model.bn.num_batches_tracked.fill_(7)
    model.train()  # the user's model is in train mode ...
    model.bn.eval()  # ... with a frozen BatchNorm (mixed modes are common)
    model.conv1.weight.requires_grad_(False)  # and partly frozen parameters
    return model


HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
)


def _snapshot(model: nn.Module) -> dict:
    return {
        "params": {n: (p, p.detach().clone()) for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "modules": {n: (type(m), tuple(vars(m))) for n, m in model.named_modules()},
    }


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise-equal values, NaN == NaN (a NaN weight is part of one test's model)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.isnan(), b.isnan())
        and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    )


def _assert_unchanged(model: nn.Module, snap: dict) -> None:
    params = dict(model.named_parameters())
    assert list(params) == list(snap["params"])
    for name, (obj, value) in snap["params"].items():
        assert params[name] is obj, f"parameter {name} was replaced"
        assert _same(params[name].detach(), value), f"parameter {name} changed"
        assert params[name].grad is None, f"parameter {name} got a .grad"
    buffers = dict(model.named_buffers())
    assert list(buffers) == list(snap["buffers"])
    for name, value in snap["buffers"].items():
        assert _same(buffers[name], value), f"buffer {name} changed"
    assert {n: p.requires_grad for n, p in params.items()} == snap["requires_grad"]
    assert {n: m.training for n, m in model.named_modules()} == snap["training"]
    assert {n: (type(m), tuple(vars(m))) for n, m in model.named_modules()} == snap["modules"]
    for name, module in model.named_modules():
        for attr in HOOK_DICTS:
            assert not getattr(module, attr, {}), f"{attr} left on {name or 'model'}"
        assert module._backward_hooks == {} and not module._is_full_backward_hook


def _x(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _good_loader() -> list:
    return [(_x(4, 0), torch.tensor([0, 1, 2, 0])), (_x(4, 1), torch.tensor([2, 2, 1, 0]))]


def _nan_batch_loader() -> list:
    x = _x(4, 1)
    x[2, 1, 3, 3] = float("nan")
    return [_good_loader()[0], (x, torch.tensor([2, 2, 1, 0]))]


BAD_CASES: dict[str, dict] = {
    "unknown_layer": dict(layers=["conv_2"], exc=UnknownLayerError, match="'conv2'"),
    "batchnorm_layer": dict(layers=["bn"], exc=UnsupportedLayerError, match="BatchNorm2d"),
    "relu_layer": dict(layers=["act"], exc=UnsupportedLayerError, match="ReLU"),
    "grouped_conv": dict(layers=["gconv"], exc=UnsupportedLayerError, match="groups=2"),
    "label_out_of_range": dict(
        loader=lambda: [_good_loader()[0], (_x(4, 1), torch.tensor([1, 7, 0, 2]))],
        exc=InvalidTargetError,
        match="label 7",
    ),
    "negative_label": dict(
        loader=lambda: [(_x(4, 1), torch.tensor([1, -1, 0, 2]))],
        exc=InvalidTargetError,
        match="label -1",
    ),
    "no_labels": dict(loader=lambda: [_x(4, 0)], exc=InvalidTargetError, match="no labels"),
    "nan_inputs": dict(loader=_nan_batch_loader, exc=NonFiniteError, match="NaN"),
    "nan_activations": dict(prepare="nan_weight", exc=NonFiniteError, match="NaN"),
    "layer_used_twice": dict(
        prepare="reuse", layers=["sq"], exc=UnsupportedLayerError, match="2 times"
    ),
    "empty_loader": dict(loader=lambda: [], exc=InputShapeError, match="no batches"),
    "raises_mid_forward": dict(prepare="bomb", exc=RuntimeError, match="boom"),
}


@pytest.mark.parametrize("backend", ["grad_x_act", "zennit"])
@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_raises_and_leaves_model_unchanged(case: str, backend: str) -> None:
    from zennit.composites import EpsilonPlusFlat

    spec = BAD_CASES[case]
    model = _hygiene_model()
    prepare = spec.get("prepare")
    if prepare == "nan_weight":
        with torch.no_grad():
            model.sq.weight[0, 0, 0, 0] = float("nan")
    elif prepare == "reuse":
        model.reuse = True
    elif prepare == "bomb":
        model.bomb.fuse = 2  # the second batch blows up after conv1..sq ran
    snap = _snapshot(model)
    loader = spec.get("loader", _good_loader)()
    relevance = "grad_x_act" if backend == "grad_x_act" else ns.Zennit(EpsilonPlusFlat())
    layers = spec.get("layers", ["conv2", "fc"])
    with pytest.raises(spec["exc"], match=spec["match"]):
        ns.scan(model, loader, layers, N_CLASSES, relevance=relevance, progress=False)
    if prepare == "bomb" and backend == "grad_x_act":
        assert model.bomb.calls == 2  # it blew up inside the second forward, after conv2 ran
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("backend", ["grad_x_act", "zennit"])
def test_successful_scan_leaves_train_mode_model_unchanged(backend: str) -> None:
    from zennit.composites import EpsilonPlusFlat

    model = _hygiene_model()
    snap = _snapshot(model)
    relevance = "grad_x_act" if backend == "grad_x_act" else ns.Zennit(EpsilonPlusFlat())
    layers = ["conv1", "conv2", "sq", "fc"]
    res = ns.scan(model, _good_loader(), layers, N_CLASSES, relevance=relevance, progress=False)
    assert res.num_samples == 8
    _assert_unchanged(model, snap)


def test_scan_runs_the_model_in_eval_mode() -> None:
    """Dropout off and BatchNorm on running statistics: equals Captum on the eval-mode model."""
    model = _hygiene_model()
    model.bn.train()  # everything in train mode now
    x, y = _good_loader()[0]
    res = ns.scan(model, [(x, y)], ["conv2"], N_CLASSES, progress=False)
    assert model.training and model.bn.training and model.drop.training
    reference = _hygiene_model().eval()
    attr = LayerGradientXActivation(reference, reference.conv2).attribute(x, target=y).detach()
    expected = torch.zeros(N_CLASSES, 8, dtype=DT).index_add_(0, y, attr.sum((2, 3)))
    torch.testing.assert_close(res.layer("conv2").relevance_sum, expected, rtol=1e-10, atol=1e-12)


def test_ns_scan_is_the_function_after_importing_the_submodule() -> None:
    code = "import neuronsplit as ns, neuronsplit.stats.scanner; assert callable(ns.scan), ns.scan"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-500:]


def test_duplicate_and_empty_layer_lists_are_rejected() -> None:
    model = _hygiene_model()
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="twice"):
        ns.scan(model, _good_loader(), ["conv2", "conv2"], N_CLASSES, progress=False)
    with pytest.raises(ValueError, match="empty"):
        ns.scan(model, _good_loader(), [], N_CLASSES, progress=False)
    with pytest.raises(ValueError, match="target"):
        ns.scan(model, _good_loader(), ["conv2"], N_CLASSES, target="logit", progress=False)
    _assert_unchanged(model, snap)

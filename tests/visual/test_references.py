"""reference_images: the true top-k (brute force), exact crops, receptive fields known by hand,
the scan's reservoirs used without a pass, subunits' own images, ViT patches, typed errors."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import neuronsplit as ns
from helpers import assert_unchanged, snapshot
from neuronsplit.errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    InvalidTargetError,
    UnknownLayerError,
    UnknownSubunitError,
    UnsupportedLayerError,
)
from neuronsplit.evaluation import subunit_values
from neuronsplit.visual import ReferenceImage, ReferenceSet, reference_images
from neuronsplit.visual.receptive import receptive_boxes

N, HW = 40, 9


def _cnn(seed: int = 0) -> nn.Module:
    """conv 3x3 -> ReLU -> conv 3x3 (no padding: 9x9 -> 5x5) -> ReLU -> linear head."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(3 * 25, 3),
    ).eval()  # fmt: skip
    with torch.no_grad():  # every unit of the second conv active on some images
        model[0].bias.fill_(0.1)
        model[2].bias.fill_(0.1)
    return model


def _data(n: int = N, seed: int = 1) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, HW, HW, generator=gen), torch.arange(n) % 3)


def _relevance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer: int) -> torch.Tensor:
    """(N, C, P) grad x activation of layer ``layer`` of a Sequential for logit ``y``, by hand."""
    z = model[: layer + 1](x).detach().requires_grad_(True)
    logits = model[layer + 1 :](z)
    (g,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), z)
    return (z * g).detach().flatten(2)


def test_activation_top_k_is_the_brute_force_top_k() -> None:
    model, data = _cnn(), _data()
    x = data.tensors[0]
    refs = reference_images(model, data, ["2/u1", "0/u3"], k=6, progress=False)
    for name, layer, unit in (("2/u1", 2, 1), ("0/u3", 0, 3)):
        with torch.no_grad():
            act = model[: layer + 1](x)[:, unit].flatten(1)
        best, pos = act.max(1)
        order = best.argsort(descending=True)[:6]
        got = refs[name]
        assert [r.index for r in got] == order.tolist()
        assert [r.value for r in got] == pytest.approx(best[order].tolist(), abs=1e-6)
        assert [r.position for r in got] == pos[order].tolist()
    assert refs.sources == {"2/u1": "pass", "0/u3": "pass"}


@pytest.mark.parametrize("target", ["label", "prediction"])
def test_relevance_top_k_is_the_brute_force_top_k(target: str) -> None:
    model, data = _cnn(), _data()
    x, y = data.tensors
    if target == "prediction":
        with torch.no_grad():
            y = model(x).argmax(1)
    rel = _relevance(model, x, y, 2)[:, 2]  # unit 2 of the second conv
    value, pos = rel.sum(1), rel.argmax(1)
    order = value.argsort(descending=True)[:5]
    got = reference_images(model, data, "2/u2", by="relevance", k=5, target=target, progress=False)
    assert [r.index for r in got["2/u2"]] == order.tolist()
    assert [r.value for r in got["2/u2"]] == pytest.approx(value[order].tolist(), abs=1e-6)
    assert [r.position for r in got["2/u2"]] == pos[order].tolist()
    assert [r.label for r in got["2/u2"]] == (order % 3).tolist()


def test_crops_are_the_receptive_field_pixel_blocks() -> None:
    model, data = _cnn(), _data()
    refs = reference_images(model, data, ["2/u0", "0/u1"], k=5, progress=False)
    for name, size, width in (("2/u0", 5, 5), ("0/u1", 3, 7)):
        for r in refs[name]:
            h, w = divmod(r.position, width)  # output of the layer: 5x5 or 7x7
            assert r.box == (h, w, h + size, w + size)
            want = data.tensors[0][r.index][:, h : h + size, w : w + size]
            assert torch.equal(r.image, want)
    whole = reference_images(model, data, "2/u0", k=2, crop=False, progress=False)["2/u0"]
    assert whole[0].image.shape == (1, HW, HW) and whole[0].box == refs["2/u0"][0].box


def test_receptive_fields_known_by_hand() -> None:
    # two 3x3 convs with padding 1 on 9x9: 5x5 fields, clipped by the image border
    pad = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))
    assert receptive_boxes(pad, "2", (1, 9, 9), [0, 4 * 9 + 4, 80]) == {
        0: (0, 0, 3, 3), 40: (2, 2, 7, 7), 80: (6, 6, 9, 9),
    }  # fmt: skip
    # stride 2 then a 3x3 conv: 7 pixels wide, shifted by 2 per output step
    stride = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(), nn.Conv2d(2, 2, 3))
    assert receptive_boxes(stride, "2", (1, 13, 13), [0, 1 * 4 + 2]) == {
        0: (0, 0, 7, 7), 6: (2, 4, 9, 11),
    }  # fmt: skip
    # a max pool between: 3 + 1 + 2 * 2 = 8 wide; dead ReLUs and the pool's argmax would hide
    # pixels of the real model's gradient, the linearised copy's support does not shrink
    pool = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3))
    with torch.no_grad():
        pool[0].bias.fill_(-100.0)  # every ReLU off: the real gradient is zero everywhere
    assert receptive_boxes(pool, "3", (1, 12, 12), [0, 2]) == {0: (0, 0, 8, 8), 2: (0, 4, 8, 12)}


def test_a_scan_gives_the_units_without_a_pass() -> None:
    model, data = _cnn(), _data()
    loader = DataLoader(data, batch_size=8)
    scan = ns.scan(model, loader, ["2", "5"], 3, top_n=8, progress=False)

    class OnlyIndexing:
        """The dataset, readable only item by item: a pass (len or iteration) fails."""

        def __init__(self) -> None:
            self.read: set[int] = set()

        def __getitem__(self, i: int):
            if not isinstance(i, int) or not 0 <= i < N:
                raise IndexError(i)
            self.read.add(i)
            return data[i]

        def __len__(self) -> int:
            raise AssertionError("a pass over the dataset")

    refs = ["2/u0", "2/u1", "5/u2"]
    for by in ("activation", "relevance"):
        only = OnlyIndexing()
        got = reference_images(model, only, refs, by=by, k=5, scan=scan, progress=False)
        fresh = reference_images(model, data, refs, by=by, k=5, progress=False)
        assert set(got.sources.values()) == {"scan"} and set(fresh.sources.values()) == {"pass"}
        assert only.read == {r.index for refs_ in got.values() for r in refs_}
        for name in refs:
            assert [r.index for r in got[name]] == [r.index for r in fresh[name]]
            assert [r.position for r in got[name]] == [r.position for r in fresh[name]]
            assert [r.value for r in got[name]] == pytest.approx([r.value for r in fresh[name]])
            assert [r.box for r in got[name]] == [r.box for r in fresh[name]]
    # more than the reservoir holds: a pass after all
    more = reference_images(model, data, "2/u0", k=9, scan=scan, progress=False)
    assert more.sources == {"2/u0": "pass"} and len(more["2/u0"]) == 9


@functools.cache
def _demo_split() -> tuple[nn.Module, nn.Module, TensorDataset]:
    from neuronsplit.demo import get_demo_model, load_digits

    model = get_demo_model()
    plan = ns.SplitPlan([
        ns.UnitSplit("fc2", 1, [list(range(0, 64, 2)), list(range(1, 64, 2))]),
        ns.UnitSplit("conv2", 3, [list(range(8)), list(range(8, 16))], merge="overlap"),
    ])  # fmt: skip
    test = load_digits("test")
    return model, ns.apply_plan(model, plan), TensorDataset(test.images[:150], test.labels[:150])


def test_subunit_references_are_the_subunits_own_top_images() -> None:
    model, split, data = _demo_split()
    x = data.tensors[0]
    names = ["fc2/u1", "fc2/u1/k0", "fc2/u1/k1", "fc2/u1/residual"]
    refs = reference_images(split, data, names, k=6, progress=False)
    # brute force: the unit and each subunit's value on every image, from the evaluation helper
    values = subunit_values(split, "fc2", 1, x, reduce="max")  # (N, unit, k0, k1, residual)
    for col, name in enumerate(names):
        order = values[:, col].argsort(descending=True, stable=True)[:6].tolist()
        assert [r.index for r in refs[name]] == order, name
    assert [r.index for r in refs["fc2/u1/k0"]] != [r.index for r in refs["fc2/u1"]]
    assert [r.index for r in refs["fc2/u1/k1"]] != [r.index for r in refs["fc2/u1"]]
    # the unit's images are the same on the original model (the split changes no unit)
    plain = reference_images(model, data, "fc2/u1", k=6, progress=False)
    assert plain.indices()["fc2/u1"] == refs.indices()["fc2/u1"]


def test_conv_subunits_are_ranked_and_cropped_by_their_own_rows() -> None:
    _, split, data = _demo_split()
    x = data.tensors[0]
    refs = reference_images(split, data, ["conv2/u3/k1"], k=4, progress=False)["conv2/u3/k1"]
    layer = ns.nn.get_split_layer(split, "conv2")
    with torch.no_grad():
        inter = layer.subunits(split.act1(split.conv1(x)))  # the rows of conv2
    row = sum(w * inter[:, c] for c, w in layer.subunit_channels(3, 1)).flatten(1)  # t_1 + r
    best, pos = row.max(1)
    order = best.argsort(descending=True)[:4]
    assert [r.index for r in refs] == order.tolist()
    assert [r.position for r in refs] == pos[order].tolist()
    for r in refs:  # two 3x3 convs with padding 1 on 8x8: a 5x5 field clipped at the border
        h, w = divmod(r.position, 8)
        top, left = max(h - 2, 0), max(w - 2, 0)
        assert r.box == (top, left, min(h + 3, 8), min(w + 3, 8))
        assert torch.equal(r.image, x[r.index][:, top : h + 3, left : w + 3])
    # the heatmap of a subunit: grad x input of its own row (t_1 + r) at the position, by hand
    whole = reference_images(split, data, "conv2/u3/k1", k=4, heatmap=True, crop=False,
                             progress=False)["conv2/u3/k1"]  # fmt: skip
    for r in whole:
        xi = x[r.index : r.index + 1].clone().requires_grad_(True)
        rows = layer.subunits(split.act1(split.conv1(xi)))
        own = sum(w * rows[0, c] for c, w in layer.subunit_channels(3, 1)).flatten()[r.position]
        (g,) = torch.autograd.grad(own, xi)
        torch.testing.assert_close(r.heatmap, (xi * g).detach()[0, 0])


def test_vit_tokens_show_their_patch_and_prefix_tokens_the_whole_image() -> None:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=16, depth=1, num_heads=2,
        mlp_ratio=2, reg_tokens=1,
    ).eval()  # fmt: skip
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    names = [f"blocks.0.attn.qkv/u{i}" for i in range(48)]
    refs = reference_images(vit, x, names, k=2, progress=False)
    with torch.no_grad():
        tokens = {}
        handle = vit.blocks[0].attn.qkv.register_forward_hook(
            lambda m, a, out: tokens.setdefault("qkv", out)
        )
        vit(x)
        handle.remove()
    seen = set()
    for i, name in enumerate(names):
        best, pos = tokens["qkv"][..., i].max(1)
        # a prefix token does not depend on the image in block 0: ties go to the smaller index
        order = best.argsort(descending=True, stable=True)[:2]
        assert [r.index for r in refs[name]] == order.tolist()
        for r in refs[name]:
            assert r.position == int(pos[r.index])
            if r.position < 2:  # class token and one register
                seen.add("prefix")
                assert r.box == (0, 0, 8, 8) and r.image.shape == (1, 8, 8)
                assert "prefix token" in r.note
            else:
                seen.add("patch")
                row, col = divmod(r.position - 2, 4)
                assert r.box == (2 * row, 2 * col, 2 * row + 2, 2 * col + 2)
                assert torch.equal(
                    r.image, x[r.index][:, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2]
                )
                assert "prefix" not in r.note
    assert seen == {"prefix", "patch"}


def test_demo_vit_patch_boxes() -> None:
    from neuronsplit.demo import get_demo_vit, load_digits

    vit, images = get_demo_vit(), load_digits("test").images[:60]
    refs = reference_images(vit, images, ["blocks.1.mlp.fc1/u5", "head/u2"], k=3, progress=False)
    for r in refs["blocks.1.mlp.fc1/u5"]:
        if r.position:
            row, col = divmod(r.position - 1, 4)
            assert r.box == (2 * row, 2 * col, 2 * row + 2, 2 * col + 2)
    assert all(r.box == (0, 0, 8, 8) and r.note == "" for r in refs["head/u2"])  # (B, C) output


def test_heatmaps_are_grad_x_input_of_the_row_at_its_position() -> None:
    model, data = _cnn(), _data()
    refs = reference_images(model, data, "2/u1", k=3, heatmap=True, crop=False, progress=False)
    cropped = reference_images(model, data, "2/u1", k=3, heatmap=True, progress=False)
    for r, c in zip(refs["2/u1"], cropped["2/u1"], strict=True):
        x = data.tensors[0][r.index : r.index + 1].clone().requires_grad_(True)
        out = model[:3](x)[0, 1].flatten()[r.position]
        (g,) = torch.autograd.grad(out, x)
        want = (x * g).detach()[0, 0]
        torch.testing.assert_close(r.heatmap, want)
        top, left, bottom, right = r.box
        torch.testing.assert_close(c.heatmap, want[top:bottom, left:right])
        assert float(want.abs().sum()) == pytest.approx(float(c.heatmap.abs().sum()))  # 0 outside


def test_a_unit_that_never_activates_gets_a_note() -> None:
    model = _cnn()
    with torch.no_grad():
        model[2].weight[0].zero_()
        model[2].bias[0] = -1.0
    refs = reference_images(model, _data(), ["2/u0", "2/u1"], k=3, progress=False)
    assert "never activates" in refs.notes["2/u0"] and "never activates" in refs["2/u0"][0].note
    assert refs.notes["2/u1"] == "" and len(refs["2/u0"]) == 3
    few = reference_images(model, _data(2), "2/u1", k=5, progress=False)
    assert len(few["2/u1"]) == 2 and "only 2 samples" in few.notes["2/u1"]


def test_the_model_is_left_as_it_was() -> None:
    model = _cnn().train()
    model[0].register_forward_hook(lambda m, a, o: None)
    before = snapshot(model)
    reference_images(model, _data(), ["2/u1"], by="relevance", k=3, heatmap=True, progress=False)
    assert_unchanged(model, before)
    assert model.training


def test_reference_set_is_a_mapping_in_ref_order() -> None:
    model, data = _cnn(), _data()
    refs = reference_images(model, data, [("2", 1), "0/u2/k0", "2/u0/unit"], k=2, progress=False)
    assert isinstance(refs, ReferenceSet) and list(refs) == ["2/u1", "0/u2/k0", "2/u0"]
    assert all(isinstance(r, ReferenceImage) for v in refs.values() for r in v)
    with pytest.raises(AttributeError):
        refs["2/u1"][0].index = 3  # frozen


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"k": 0}, InvalidArgumentError, "k must be >= 1, got 0"),
        ({"by": "gradient"}, InvalidArgumentError, "by must be one of 'activation', 'relevance'; got 'gradient'"),
        ({"target": "logit"}, InvalidArgumentError, "target must be one of"),
        ({"refs": "2/u9"}, UnknownSubunitError, r"unit 9 .* has 3 units \(0..2\)"),
        ({"refs": "2/u1/k1"}, UnknownSubunitError, r"not split, so '2/u1/k1' does not exist"),
        ({"refs": "nope/u1"}, UnknownLayerError, "no layer 'nope'"),
        ({"refs": "1/u0"}, UnsupportedLayerError, "ReLU; references name the units of Conv2d and Linear"),
        ({"refs": "2"}, UnknownSubunitError, "cannot parse subunit '2'"),
        ({"refs": []}, InvalidArgumentError, "refs is empty"),
        ({"refs": ["2/u1", ("2", 1)]}, InvalidArgumentError, r"lists \['2/u1'\] more than once"),
        ({"dataset": torch.empty(0, 1, HW, HW)}, InvalidArgumentError, "dataset is empty"),
        ({"dataset": iter([])}, ArgumentTypeError, "dataset must be a tensor"),
        ({"scan": "scan.safetensors"}, ArgumentTypeError, "scan must be a ScanResult or None, got str"),
        ({"by": "relevance", "dataset": torch.rand(4, 1, HW, HW)}, InvalidTargetError, "target='prediction'"),
        ({"crop": "yes"}, ArgumentTypeError, "crop must be True or False"),
    ],
)  # fmt: skip
def test_bad_input_raises_typed_errors(kwargs: dict, error: type, pattern: str) -> None:
    args = {"dataset": _data(8), "refs": ["2/u1"], **kwargs}
    with pytest.raises(error, match=pattern):
        reference_images(_cnn(), args.pop("dataset"), args.pop("refs"), progress=False, **args)

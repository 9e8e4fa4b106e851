"""SplitConv2d / SplitLinear: disjoint row layout, overlap view, merge buffers, unsplit.

``apply_plan`` and friends are tested in ``test_apply_plan.py``, the merge scales in
``test_merge.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import rel_err
from neuronsplit.errors import PlanError, UnknownSubunitError, UnsupportedLayerError
from neuronsplit.nn import IndexMerge, SplitConv2d, SplitLinear
from neuronsplit.plan import LayerSplit, UnitSplit

DT = torch.float64
FORMS = ("overlap", "disjoint")
KW = {"stride": 2, "padding": 2, "dilation": 2}


def _conv(bias: bool = True) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(6, 5, 3, **KW, bias=bias, dtype=DT)


def _splits(form: str) -> tuple[UnitSplit, UnitSplit]:
    """Two units of one conv layer, given in descending unit order: K=3 for unit 3, K=2 for 1."""
    return (
        UnitSplit("c", 3, [[0, 4], [1], [5]], shared=[2, 3], merge=form),
        UnitSplit("c", 1, [[2, 3, 0], [5]], shared=[1, 4], merge=form),
    )


def _mask(n: int, cols: Sequence[int]) -> torch.Tensor:
    """0/1 float64 vector of length ``n`` with ones at ``cols``."""
    m = torch.zeros(n, dtype=DT)
    m[list(cols)] = 1
    return m


def _subunit_value(inter: torch.Tensor, layer: SplitConv2d | SplitLinear, unit: int, k: int):
    """Subunit ``k`` of ``unit`` in the layer's form: the weighted sum of its channels."""
    dim = layer.merge.dim
    return sum(w * inter.select(dim, c) for c, w in layer.subunit_channels(unit, k))


# --------------------------------------------------------------------------- structure
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_rows_are_disjoint_masked_copies(bias: bool, form: str) -> None:
    conv = _conv(bias)
    sc = SplitConv2d(conv, _splits(form))
    w, ws = conv.weight, sc.subunits.weight
    assert ws.shape == (5 + 2 + 3, 6, 3, 3)
    assert sc.original_out == 5 and sc.split_units == (1, 3) and sc.form == form
    for u in (0, 2, 4):  # untouched rows are bit-identical
        assert torch.equal(ws[u], w[u])
    # units ascending: unit 1 (K=2) gets rows 5 (t_1), 6 (r); unit 3 (K=3) rows 7, 8 (t_1, t_2), 9
    assert [sc.subunit_index(1, k) for k in range(2)] == [1, 5] and sc.residual_index(1) == 6
    assert [sc.subunit_index(3, k) for k in range(3)] == [3, 7, 8] and sc.residual_index(3) == 9
    for s in _splits(form):
        for k, g in enumerate(s.groups):  # t_k: the own group only, whatever the form
            assert torch.equal(
                ws[sc.subunit_index(s.unit, k)], w[s.unit] * _mask(6, g)[:, None, None]
            )
        r = sc.residual_index(s.unit)
        assert torch.equal(ws[r], w[s.unit] * _mask(6, s.shared)[:, None, None])
    # every weight entry of a split unit sits in exactly one row, unchanged
    for u, rows in ((1, [1, 5, 6]), (3, [3, 7, 8, 9])):
        assert torch.equal(ws[rows].sum(0), w[u])
        assert ((ws[rows] != 0).sum(0) <= 1).all()
    for attr in ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(sc.subunits, attr) == getattr(conv, attr)
    if bias:
        b, bs = conv.bias, sc.subunits.bias
        assert torch.equal(bs[[0, 2, 4]], b[[0, 2, 4]])
        assert bs[[1, 5, 3, 7, 8]].tolist() == [0.0] * 5  # t_k rows carry no bias
        assert bs[6] == b[1] and bs[9] == b[3]  # the whole bias is in the residual
    else:
        assert sc.subunits.bias is None
    # merge buffers are derived from the plan: the state dict holds only the weights
    assert set(sc.state_dict()) == {"subunits.weight"} | ({"subunits.bias"} if bias else set())


def test_rows_do_not_depend_on_the_form() -> None:
    conv = _conv()
    a, b = SplitConv2d(conv, _splits("overlap")), SplitConv2d(conv, _splits("disjoint"))
    assert torch.equal(a.subunits.weight, b.subunits.weight)
    assert torch.equal(a.subunits.bias, b.subunits.bias)
    x = torch.randn(2, 6, 9, 9, dtype=DT)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("form", FORMS)
def test_merge_buffers(form: str) -> None:
    sc = SplitConv2d(_conv(), _splits(form))
    mg = sc.merge
    assert isinstance(mg, IndexMerge) and mg.form == form and mg.dim == -3
    assert mg.original_out == 5 and mg.num_extra == 5
    assert mg.index.tolist() == [1, 1, 3, 3, 3]
    assert mg.sub.tolist() == [1, -1, 1, 2, -1]
    assert mg.units.tolist() == [1, 3] and mg.num_subunits.tolist() == [2, 3]
    assert mg.offsets.tolist() == [5, 7]
    assert mg.coef.tolist() == [1.0] * 5 and mg.row_scale.tolist() == [1.0] * 5
    assert mg.coef.dtype == DT and mg.index.dtype == torch.long
    assert not mg.steered and mg.scales == {}
    assert [mg.channel(3, k) for k in (0, 1, 2, -1)] == [3, 7, 8, 9]
    assert mg.position(3) == 1
    assert sc.layer_split == LayerSplit.from_unit_splits(list(_splits(form)))


def test_overlap_view_channels_and_coefficients() -> None:
    sc = SplitConv2d(_conv(), _splits("overlap"))
    assert sc.subunit_channels(3, 0) == ((3, 1.0), (9, 1.0))
    assert sc.subunit_channels(3, 2) == ((8, 1.0), (9, 1.0))
    assert sc.subunit_channels(3, -1) == ((9, 1.0),)
    assert [sc.merge_coefficient(3, k) for k in (0, 1, 2, -1)] == [1.0, 1.0, 1.0, -2.0]
    assert sc.merge_coefficient(1, -1) == -1.0
    dis = SplitConv2d(_conv(), _splits("disjoint"))
    assert dis.subunit_channels(3, 0) == ((3, 1.0),)
    assert dis.subunit_channels(3, 2) == ((8, 1.0),)
    assert dis.subunit_channels(3, -1) == ((9, 1.0),)
    assert [dis.merge_coefficient(3, k) for k in (0, 1, 2, -1)] == [1.0] * 4
    with pytest.raises(UnknownSubunitError, match="k=3 does not exist"):
        sc.subunit_channels(3, 3)
    with pytest.raises(UnknownSubunitError, match="unit 0 is not split"):
        sc.merge_coefficient(0, 0)


@pytest.mark.parametrize("bias", [True, False])
def test_rows_match_hand_computed_partial_sums(bias: bool) -> None:
    """Independent check via F.conv2d with masked original weights, in both readings."""
    conv = _conv(bias)
    x = torch.randn(3, 6, 11, 9, dtype=DT)
    z = conv(x)

    def part(u: int, cols: Sequence[int], with_bias: bool) -> torch.Tensor:
        m = _mask(6, cols)[None, :, None, None]
        b = conv.bias[u : u + 1] if (bias and with_bias) else None
        return F.conv2d(x, conv.weight[u : u + 1] * m, b, **KW)[:, 0]

    # disjoint rows: t_k = W[g_k] x, r = W[S0] x + b, z = sum_k t_k + r
    dis = SplitConv2d(conv, _splits("disjoint"))
    inter = dis.subunits(x)
    assert inter.shape[1] == 5 + 5
    for s in _splits("disjoint"):
        ts = [part(s.unit, g, False) for g in s.groups]
        r = part(s.unit, s.shared, True)
        for k, tk in enumerate(ts):
            torch.testing.assert_close(
                inter[:, dis.subunit_index(s.unit, k)], tk, rtol=0, atol=1e-12
            )
            torch.testing.assert_close(
                _subunit_value(inter, dis, s.unit, k), tk, rtol=0, atol=1e-12
            )
        torch.testing.assert_close(inter[:, dis.residual_index(s.unit)], r, rtol=0, atol=1e-12)
        torch.testing.assert_close(sum(ts) + r, z[:, s.unit], rtol=0, atol=1e-12)

    # overlap view: Hesse's d_k = W[g_k ∪ S0] x + b and sum_k d_k - (K-1) r = z
    ov = SplitConv2d(conv, _splits("overlap"))
    inter = ov.subunits(x)
    for s in _splits("overlap"):
        total = torch.zeros_like(z[:, 0])
        for k, g in enumerate(s.groups):
            d_k = _subunit_value(inter, ov, s.unit, k)
            torch.testing.assert_close(d_k, part(s.unit, g + s.shared, True), rtol=0, atol=1e-12)
            total = total + ov.merge_coefficient(s.unit, k) * d_k
        r = _subunit_value(inter, ov, s.unit, -1)
        torch.testing.assert_close(r, part(s.unit, s.shared, True), rtol=0, atol=1e-12)
        total = total + ov.merge_coefficient(s.unit, -1) * r
        torch.testing.assert_close(total, z[:, s.unit], rtol=0, atol=1e-12)
        k_ = s.num_subunits
        hesse = sum(part(s.unit, g + s.shared, True) for g in s.groups) - (k_ - 1) * r
        torch.testing.assert_close(hesse, z[:, s.unit], rtol=0, atol=1e-12)

    for sc in (dis, ov):
        out = sc(x)
        assert out.shape == z.shape and rel_err(z, out) < 1e-13
        # unsplit units pass through bit for bit
        assert torch.equal(out[:, [0, 2, 4]], sc.subunits(x)[:, [0, 2, 4]])


def test_linear_on_tokens_and_unbatched_conv() -> None:
    torch.manual_seed(1)
    fc = nn.Linear(7, 4, dtype=DT)
    sl = SplitLinear(fc, [UnitSplit("fc", 2, [[0, 1], [2], [3, 4]], shared=[5, 6])])
    x = torch.randn(2, 5, 7, dtype=DT)  # (B, T, D) tokens
    inter = sl.subunits(x)
    assert inter.shape == (2, 5, 4 + 3)
    assert rel_err(fc(x), sl(x)) < 1e-13
    assert rel_err(fc(x[0, 0]), sl(x[0, 0])) < 1e-13  # 1-d input
    assert sl.in_features == 7 and sl.out_features == 4
    # the residual row holds the shared inputs and the bias, on every token
    w_r = fc.weight[2] * _mask(7, [5, 6])
    torch.testing.assert_close(inter[..., sl.residual_index(2)], x @ w_r + fc.bias[2])

    conv = _conv()
    sc = SplitConv2d(conv, _splits("overlap"))
    x = torch.randn(6, 10, 10, dtype=DT)  # unbatched (C, H, W): channel dim is 0
    assert rel_err(conv(x), sc(x)) < 1e-13
    assert sc.in_channels == 6 and sc.out_channels == 5


def test_index_merge_is_out_of_place_and_subunits_run_once() -> None:
    sc = SplitConv2d(_conv(), _splits("overlap"))
    x = torch.randn(2, 6, 9, 9, dtype=DT)
    calls = []
    h = sc.subunits.register_forward_hook(lambda m, i, o: calls.append(o))
    try:
        out = sc(x)
    finally:
        h.remove()
    assert len(calls) == 1
    inter = calls[0]
    before = inter.clone()
    out2 = sc.merge(inter)
    assert torch.equal(inter, before), "merge modified its input"
    assert torch.equal(out, out2)
    assert out.untyped_storage().data_ptr() != inter.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="expects 10 channels at dim -3"):
        sc.merge(torch.zeros(2, 9, 3, 3, dtype=DT))


def test_gradients_match_original() -> None:
    conv = _conv()
    sc = SplitConv2d(conv, _splits("overlap"))
    x = torch.randn(2, 6, 9, 9, dtype=DT, requires_grad=True)
    g = torch.randn_like(conv(x))
    (ga,) = torch.autograd.grad((conv(x) * g).sum(), x)
    (gb,) = torch.autograd.grad((sc(x) * g).sum(), x)
    assert rel_err(ga, gb) < 1e-12


def test_dtype_and_requires_grad_follow_layer() -> None:
    fc = nn.Linear(4, 3, dtype=torch.float32)
    fc.bias.requires_grad_(False)
    sl = SplitLinear(fc, [UnitSplit("fc", 0, [[0], [1]], shared=[2, 3])])
    assert sl.subunits.weight.dtype == torch.float32 and sl.merge.coef.dtype == torch.float32
    assert sl.merge.row_scale.dtype == torch.float32
    assert sl.subunits.weight.requires_grad and not sl.subunits.bias.requires_grad
    sl64 = copy.deepcopy(sl).double()
    assert sl64.merge.coef.dtype == DT and sl64.merge.index.dtype == torch.long
    assert not fc.weight.dtype == DT  # the original is not touched


def test_lookup_methods_and_errors() -> None:
    sc = SplitConv2d(_conv(), _splits("overlap"))
    assert sc.num_subunits(3) == 3 and sc.num_subunits(1) == 2
    assert sc.unit_split(1) == _splits("overlap")[1]
    assert sc.splits == tuple(reversed(_splits("overlap")))  # ascending unit order
    with pytest.raises(UnknownSubunitError, match=r"unit 2 is not split .* split units: \[1, 3\]"):
        sc.subunit_index(2, 0)
    with pytest.raises(UnknownSubunitError, match=r"k=3 does not exist for unit 3, .* 0..2"):
        sc.subunit_index(3, 3)
    with pytest.raises(UnknownSubunitError, match=r"use residual_index\(3\) for the residual"):
        sc.subunit_index(3, -1)
    with pytest.raises(UnknownSubunitError, match="unit 7 is not split"):
        sc.residual_index(7)
    with pytest.raises(UnknownSubunitError, match="unit 0 is not split"):
        sc.num_subunits(0)
    with pytest.raises(UnknownSubunitError, match="unit 0 is not split"):
        sc.unit_split(0)
    text = repr(sc)
    assert "original_out=5, split_units=2, K=2..3, extra_rows=5, form='overlap'" in text
    assert "IndexMerge(original_out=5, split_units=2, extra=5, dim=-3, form='overlap')" in text


def test_constructor_validates() -> None:
    conv = _conv()
    s3, s1 = _splits("overlap")
    with pytest.raises(PlanError, match="same layer"):
        SplitConv2d(conv, [s3, UnitSplit("d", 0, [[0], [1]], shared=[2, 3, 4, 5])])
    with pytest.raises(PlanError, match="split twice"):
        SplitConv2d(conv, [s3, s3])
    with pytest.raises(PlanError, match="units of layer 'c' use different merge forms"):
        SplitConv2d(conv, [s3, _splits("disjoint")[1]])
    with pytest.raises(PlanError, match="covers 7 inputs, but the layer has 6"):
        SplitConv2d(conv, [UnitSplit("c", 0, [[0], [1]], shared=[2, 3, 4, 5, 6])])
    with pytest.raises(TypeError, match="wraps a Linear"):
        SplitLinear(conv, [s3, s1])
    with pytest.raises(UnsupportedLayerError, match="grouped Conv2d"):
        SplitConv2d(nn.Conv2d(4, 4, 1, groups=2), [UnitSplit("g", 0, [[0], [1]])])

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(UnsupportedLayerError, match="'fc' is a Scaled, a Linear subclass"):
        SplitLinear(Scaled(2, 2), [UnitSplit("fc", 0, [[0], [1]])])


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float64 tensor (sees -0.0 and NaN payloads, unlike torch.equal)."""
    return t.detach().contiguous().view(torch.int64)


@pytest.mark.parametrize("form", FORMS)
def test_unsplit_rebuilds_original_bitwise(form: str) -> None:
    for bias in (True, False):
        conv = _conv(bias)
        with torch.no_grad():  # entries torch.equal cannot tell apart
            conv.weight[3, 2, 0, 0] = -0.0
            conv.weight[3, 4, 1, 1] = float("nan")
            conv.weight[1, 5, 2, 2] = -0.0
            if bias:
                conv.bias[3] = -0.0
        back = SplitConv2d(conv, _splits(form)).unsplit()
        assert type(back) is nn.Conv2d
        assert torch.equal(_bits(back.weight), _bits(conv.weight))
        assert (back.bias is None) == (not bias)
        if bias:
            assert torch.equal(_bits(back.bias), _bits(conv.bias))
        for attr in ("kernel_size", "stride", "padding", "dilation", "out_channels"):
            assert getattr(back, attr) == getattr(conv, attr)
    fc = nn.Linear(5, 3)
    back = SplitLinear(fc, [UnitSplit("fc", 1, [[4], [0, 1]], shared=[2, 3], merge=form)])
    back = back.unsplit()
    assert type(back) is nn.Linear and back.out_features == 3
    assert torch.equal(back.weight, fc.weight) and torch.equal(back.bias, fc.bias)


@pytest.mark.parametrize("kind", ["linear", "conv1x1"])
def test_planted_concepts_separate_into_disjoint_rows(kind: str) -> None:
    """Unit 0 reads inputs A = 0..3 and B = 4..7; concept-1 data drives A, concept-2 data B.
    Each concept must land in its own row (t_0 or t_1); the residual (bias 0, no shared
    inputs) stays 0."""
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(8, 3, dtype=DT) if kind == "linear" else nn.Conv2d(8, 3, 1, dtype=DT)
    with torch.no_grad():
        layer.weight.view(3, 8).copy_(torch.rand(3, 8, generator=g, dtype=DT) + 0.5)
        layer.bias.zero_()
    cls = SplitLinear if kind == "linear" else SplitConv2d
    split = cls(layer, [UnitSplit("0", 0, [[0, 1, 2, 3], [4, 5, 6, 7]], merge="disjoint")])
    dim = split.merge.dim
    for concept, on in ((0, slice(0, 4)), (1, slice(4, 8))):
        x = torch.rand(64, 8, generator=g, dtype=DT) * 0.01  # faint background
        x[:, on] += 1 + torch.rand(64, 4, generator=g, dtype=DT)
        if kind == "conv1x1":
            x = x[:, :, None, None].expand(64, 8, 3, 3).contiguous()
        inter, z = split.subunits(x), layer(x).select(dim, 0)
        mine = inter.select(dim, split.subunit_index(0, concept))
        other = inter.select(dim, split.subunit_index(0, 1 - concept))
        assert (mine / z).min() > 0.97, f"concept {concept}: its row carries too little"
        assert (other / z).max() < 0.03, f"concept {concept}: the other row is not ~0"
        assert mine.mean() > 2.0  # the unit is strongly on
        assert inter.select(dim, split.residual_index(0)).abs().max() == 0
        torch.testing.assert_close(mine + other, z, rtol=0, atol=1e-12)


def test_meta_device_plumbing() -> None:
    fc = nn.Linear(6, 4, device="meta")
    sl = SplitLinear(fc, [UnitSplit("fc", 1, [[0, 1], [2]], shared=[3, 4, 5])])
    assert sl.subunits.weight.device.type == "meta"
    assert all(b.device.type == "meta" for b in sl.merge.buffers())
    out = sl(torch.empty(2, 6, device="meta"))
    assert out.shape == (2, 4) and out.device.type == "meta"


@pytest.mark.parametrize("module", ["merge", "split_layer", "surgery", "verify", "io", "report"])
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    mod = importlib.import_module(f"neuronsplit.nn.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} doctest(s) failed in neuronsplit.nn.{module}"

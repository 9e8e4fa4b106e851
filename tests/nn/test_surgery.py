"""SplitConv2d / SplitLinear / IndexMerge / apply_plan: structure, math, side effects."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import assert_unchanged, rel_err, snapshot
from neuronsplit.errors import (
    PlanError,
    UnknownLayerError,
    UnknownSubunitError,
    UnsupportedLayerError,
)
from neuronsplit.plan import SplitPlan, UnitSplit
from neuronsplit.nn import (
    IndexMerge,
    SplitConv2d,
    SplitLinear,
    apply_plan,
    get_split_layer,
    iter_split_layers,
    plan_of,
)

DT = torch.float64


def _conv(bias: bool = True) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(6, 5, 3, stride=2, padding=2, dilation=2, bias=bias, dtype=DT)


# two units of one layer: overlap K=3 first, then partition K=2 (plan order = row order)
SPLITS = (
    UnitSplit("c", 3, [[0, 4], [1], [5]], shared=[2, 3], merge="overlap"),
    UnitSplit("c", 1, [[2, 3, 0], [5]], shared=[1, 4], merge="disjoint"),
)


def _mask(n: int, cols) -> torch.Tensor:
    m = torch.zeros(n, dtype=DT)
    m[list(cols)] = 1
    return m


# --------------------------------------------------------------------------- structure
@pytest.mark.parametrize("bias", [True, False])
def test_conv_rows_are_masked_copies_and_merge_buffers(bias):
    conv = _conv(bias)
    sc = SplitConv2d(conv, SPLITS)
    w, ws = conv.weight, sc.subunits.weight
    assert ws.shape == (5 + 3 + 2, 6, 3, 3)
    assert sc.original_out == 5 and sc.split_units == (3, 1)
    # untouched rows are bit-identical
    for u in (0, 2, 4):
        assert torch.equal(ws[u], w[u])
    # overlap unit 3: subunit k sees groups[k] + shared, residual sees shared
    s = SPLITS[0]
    assert [sc.subunit_index(3, k) for k in range(3)] == [3, 5, 6]
    assert sc.residual_index(3) == 7
    for k, g in enumerate(s.groups):
        m = _mask(6, g + s.shared)[:, None, None]
        assert torch.equal(ws[sc.subunit_index(3, k)], w[3] * m)
    assert torch.equal(ws[7], w[3] * _mask(6, s.shared)[:, None, None])
    # partition unit 1: subunit k sees groups[k] only
    s = SPLITS[1]
    assert [sc.subunit_index(1, k) for k in range(2)] == [1, 8]
    assert sc.residual_index(1) == 9
    for k, g in enumerate(s.groups):
        assert torch.equal(ws[sc.subunit_index(1, k)], w[1] * _mask(6, g)[:, None, None])
    assert torch.equal(ws[9], w[1] * _mask(6, s.shared)[:, None, None])
    # same geometry
    for attr in ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(sc.subunits, attr) == getattr(conv, attr)
    # merge buffers: parent unit, subunit number (-1 residual), coefficients
    mg = sc.merge
    assert isinstance(mg, IndexMerge)
    assert mg.index.tolist() == [3, 3, 3, 1, 1]
    assert mg.sub.tolist() == [1, 2, -1, 1, -1]
    assert mg.coef.tolist() == [1.0, 1.0, -2.0, 1.0, 1.0]
    assert torch.equal(mg.coef_base, mg.coef)
    assert mg.rows == ((3, 1), (3, 2), (3, -1), (1, 1), (1, -1))
    assert mg.coef.dtype == DT and mg.index.dtype == torch.long
    if bias:
        b, bs = conv.bias, sc.subunits.bias
        assert torch.equal(bs[[0, 2, 4]], b[[0, 2, 4]])
        assert bs[[3, 5, 6, 7]].tolist() == [b[3].item()] * 4  # overlap: bias everywhere
        assert bs[[1, 8]].tolist() == [0.0, 0.0] and bs[9] == b[1]  # partition: residual only
    else:
        assert sc.subunits.bias is None
    # merge buffers are derived from the plan: the state dict holds only the weights
    assert set(sc.state_dict()) == {"subunits.weight"} | ({"subunits.bias"} if bias else set())


@pytest.mark.parametrize("bias", [True, False])
def test_subunits_match_hand_computed_partial_sums(bias):
    """Independent check: s_k / r / t_k via F.conv2d with masked original weights."""
    conv = _conv(bias)
    sc = SplitConv2d(conv, SPLITS)
    x = torch.randn(3, 6, 11, 9, dtype=DT)
    inter = sc.subunits(x)
    assert inter.shape[1] == 5 + 5
    z = conv(x)
    kw = {"stride": 2, "padding": 2, "dilation": 2}

    def part(u, cols, with_bias):
        m = _mask(6, cols)[None, :, None, None]
        b = conv.bias[u : u + 1] if (bias and with_bias) else None
        return F.conv2d(x, conv.weight[u : u + 1] * m, b, **kw)[:, 0]

    s = SPLITS[0]  # overlap
    subs = [part(3, g + s.shared, True) for g in s.groups]
    r = part(3, s.shared, True)
    for k, sk in enumerate(subs):
        torch.testing.assert_close(inter[:, sc.subunit_index(3, k)], sk, rtol=0, atol=1e-12)
    torch.testing.assert_close(inter[:, sc.residual_index(3)], r, rtol=0, atol=1e-12)
    torch.testing.assert_close(sum(subs) - 2 * r, z[:, 3], rtol=0, atol=1e-12)

    s = SPLITS[1]  # partition
    ts = [part(1, g, False) for g in s.groups]
    t0 = part(1, s.shared, True)
    for k, tk in enumerate(ts):
        torch.testing.assert_close(inter[:, sc.subunit_index(1, k)], tk, rtol=0, atol=1e-12)
    torch.testing.assert_close(inter[:, sc.residual_index(1)], t0, rtol=0, atol=1e-12)
    torch.testing.assert_close(sum(ts) + t0, z[:, 1], rtol=0, atol=1e-12)

    out = sc(x)
    assert out.shape == z.shape
    assert rel_err(z, out) < 1e-13
    # unsplit units pass through bit for bit
    assert torch.equal(out[:, [0, 2, 4]], inter[:, [0, 2, 4]])


def test_linear_on_tokens_and_unbatched_conv():
    torch.manual_seed(1)
    fc = nn.Linear(7, 4, dtype=DT)
    sl = SplitLinear(fc, [UnitSplit("fc", 2, [[0, 1], [2], [3, 4]], shared=[5, 6])])
    x = torch.randn(2, 5, 7, dtype=DT)  # (B, T, D) tokens
    inter = sl.subunits(x)
    assert inter.shape == (2, 5, 4 + 3)
    assert rel_err(fc(x), sl(x)) < 1e-13
    assert rel_err(fc(x[0, 0]), sl(x[0, 0])) < 1e-13  # 1-d input
    assert sl.in_features == 7 and sl.out_features == 4

    conv = _conv()
    sc = SplitConv2d(conv, SPLITS)
    x = torch.randn(6, 10, 10, dtype=DT)  # unbatched (C, H, W): channel dim is 0
    assert rel_err(conv(x), sc(x)) < 1e-13
    assert sc.in_channels == 6 and sc.out_channels == 5


def test_index_merge_is_out_of_place_and_subunits_run_once():
    sc = SplitConv2d(_conv(), SPLITS)
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


def test_gradients_match_original():
    conv = _conv()
    sc = SplitConv2d(conv, SPLITS)
    x = torch.randn(2, 6, 9, 9, dtype=DT, requires_grad=True)
    g = torch.randn_like(conv(x))
    (ga,) = torch.autograd.grad((conv(x) * g).sum(), x)
    (gb,) = torch.autograd.grad((sc(x) * g).sum(), x)
    assert rel_err(ga, gb) < 1e-12


def test_dtype_and_requires_grad_follow_layer():
    fc = nn.Linear(4, 3, dtype=torch.float32)
    fc.bias.requires_grad_(False)
    sl = SplitLinear(fc, [UnitSplit("fc", 0, [[0], [1]], shared=[2, 3])])
    assert sl.subunits.weight.dtype == torch.float32 and sl.merge.coef.dtype == torch.float32
    assert sl.subunits.weight.requires_grad and not sl.subunits.bias.requires_grad
    sl64 = copy.deepcopy(sl).double()
    assert sl64.merge.coef.dtype == DT and sl64.merge.index.dtype == torch.long


def test_lookup_methods_and_errors():
    sc = SplitConv2d(_conv(), SPLITS)
    assert sc.num_subunits(3) == 3 and sc.num_subunits(1) == 2
    assert sc.unit_split(1) == SPLITS[1]
    assert sc.splits == SPLITS
    with pytest.raises(UnknownSubunitError, match=r"unit 2 is not split .* split units: \[3, 1\]"):
        sc.subunit_index(2, 0)
    with pytest.raises(UnknownSubunitError, match=r"k=3 does not exist for unit 3, .* 0..2"):
        sc.subunit_index(3, 3)
    with pytest.raises(UnknownSubunitError, match=r"k=-1 does not exist"):
        sc.subunit_index(3, -1)
    with pytest.raises(UnknownSubunitError, match="unit 7 is not split"):
        sc.residual_index(7)
    with pytest.raises(UnknownSubunitError, match="unit 0 is not split"):
        sc.num_subunits(0)
    text = repr(sc)
    assert "original_out=5" in text and "extra_rows=5" in text
    assert "3:K=3/overlap" in text and "1:K=2/partition" in text
    assert "IndexMerge(original_out=5, extra=5, dim=-3)" in text


def test_constructor_validates():
    conv = _conv()
    with pytest.raises(PlanError, match="same layer"):
        SplitConv2d(conv, [SPLITS[0], UnitSplit("d", 0, [[0], [1]], shared=[2, 3, 4, 5])])
    with pytest.raises(PlanError, match="split twice"):
        SplitConv2d(conv, [SPLITS[0], SPLITS[0]])
    with pytest.raises(TypeError, match="wraps a Linear"):
        SplitLinear(conv, SPLITS)

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(UnsupportedLayerError, match="'fc' is a Scaled, a Linear subclass"):
        SplitLinear(Scaled(2, 2), [UnitSplit("fc", 0, [[0], [1]])])


def test_unsplit_rebuilds_original_bitwise():
    for bias in (True, False):
        conv = _conv(bias)
        back = SplitConv2d(conv, SPLITS).unsplit()
        assert type(back) is nn.Conv2d
        assert torch.equal(back.weight, conv.weight)
        assert (back.bias is None) == (not bias)
        if bias:
            assert torch.equal(back.bias, conv.bias)
    fc = nn.Linear(5, 3)
    back = SplitLinear(fc, [UnitSplit("fc", 1, [[4], [0, 1]], shared=[2, 3], merge="disjoint")])
    back = back.unsplit()
    assert torch.equal(back.weight, fc.weight) and torch.equal(back.bias, fc.bias)


def test_steering_primitives_scale_and_restore():
    torch.manual_seed(0)
    fc = nn.Linear(4, 2, dtype=DT)
    sl = SplitLinear(fc, [UnitSplit("fc", 0, [[0], [1]], shared=[2, 3], merge="disjoint")])
    x = torch.randn(6, 4, dtype=DT)
    exact = sl(x)
    inter = sl.subunits(x)
    t0, t1, r = inter[:, 0], inter[:, sl.subunit_index(0, 1)], inter[:, sl.residual_index(0)]
    sl.merge.set_scale(0, 1, 0.0)  # ablate concept 1
    torch.testing.assert_close(sl(x)[:, 0], t0 + r)
    sl.merge.set_scale(0, 0, 2.0)  # amplify concept 0
    assert sl.merge.steered
    torch.testing.assert_close(sl(x)[:, 0], 2 * t0 + r)
    torch.testing.assert_close(sl(x)[:, 1], exact[:, 1], rtol=0, atol=0)
    with pytest.raises(UnknownSubunitError, match="no subunit k=5 of unit 0"):
        sl.merge.set_scale(0, 5, 1.0)
    sl.merge.reset()
    assert not sl.merge.steered
    assert torch.equal(sl(x), exact)
    del t1


# --------------------------------------------------------------------------- apply_plan
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.shared = nn.Linear(6, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        h = self.body(x).mean((2, 3))
        h = torch.relu(self.shared(h))
        h = torch.relu(self.shared(h))  # same module twice
        return self.head(h)


def _plan() -> SplitPlan:
    return SplitPlan(
        [
            UnitSplit("body.0", 2, [[0], [1]], shared=[2]),
            UnitSplit("head", 1, [[0, 1], [2, 3], [4]], shared=[5], merge="disjoint"),
            UnitSplit("shared", 0, [[0, 1, 2], [3, 4, 5]]),
        ]
    )


def test_apply_plan_replaces_layers_and_keeps_function():
    torch.manual_seed(0)
    net = _Net().to(DT).eval()
    split = apply_plan(net, _plan())
    assert isinstance(split.body[0], SplitConv2d)
    assert isinstance(split.head, SplitLinear) and isinstance(split.shared, SplitLinear)
    assert [n for n, _ in iter_split_layers(split)] == ["body.0", "shared", "head"]
    assert get_split_layer(split, "head").split_units == (1,)
    x = torch.randn(4, 3, 8, 8, dtype=DT)
    assert rel_err(net(x), split(x)) < 1e-12
    assert not split.training and not split.head.training


def test_apply_plan_replaces_every_path_of_a_shared_module():
    torch.manual_seed(0)
    inner = nn.Linear(3, 3, dtype=DT)
    net = nn.Sequential(inner, nn.Tanh(), inner)
    split = apply_plan(net, SplitPlan([UnitSplit("0", 1, [[0], [1]], shared=[2])]))
    assert split[0] is split[2] and isinstance(split[2], SplitLinear)
    x = torch.randn(5, 3, dtype=DT)
    assert rel_err(net(x), split(x)) < 1e-12


def test_apply_plan_never_mutates_the_input():
    torch.manual_seed(0)
    net = _Net().train()
    net.head.weight.requires_grad_(False)
    handle = net.head.register_forward_hook(lambda m, i, o: None)
    snap = snapshot(net)
    split = apply_plan(net, _plan())
    assert_unchanged(net, snap)
    assert split.training and split.head.training  # same mode as the input
    assert not split.head.subunits.weight.requires_grad  # flags carried over
    assert split.body[0].subunits.weight.requires_grad
    # failing plans leave it untouched too (the failure is in the last layer of the plan)
    bad = SplitPlan([*_plan().splits[:2], UnitSplit("shared", 9, [[0], [1]], shared=[2, 3, 4, 5])])
    with pytest.raises(PlanError, match="unit 9 is out of range"):
        apply_plan(net, bad)
    assert_unchanged(net, snap)
    handle.remove()


def test_apply_plan_type_errors():
    with pytest.raises(TypeError, match="plan must be a SplitPlan, got list"):
        apply_plan(_Net(), list(_plan()))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        apply_plan("model", _plan())  # type: ignore[arg-type]


def test_plan_of_round_trip_and_get_split_layer_errors():
    net = _Net()
    plan = _plan()
    split = apply_plan(net, plan)
    rebuilt = plan_of(split)
    assert set(rebuilt.splits) == set(plan.splits)
    again = apply_plan(net, rebuilt)
    for (n1, a), (n2, b) in zip(iter_split_layers(split), iter_split_layers(again), strict=True):
        assert n1 == n2
        assert torch.equal(a.subunits.weight, b.subunits.weight)
        assert torch.equal(a.merge.index, b.merge.index)
    with pytest.raises(UnknownLayerError, match=r"'body.1' is a BatchNorm2d, not a split layer"):
        get_split_layer(split, "body.1")
    with pytest.raises(UnknownLayerError, match=r"none \(run apply_plan first\)"):
        get_split_layer(net, "head")
    with pytest.raises(UnknownLayerError, match="no layer 'heads'"):
        get_split_layer(split, "heads")
    assert plan_of(net) == SplitPlan([])


def test_empty_plan_gives_equal_copy():
    net = _Net()
    copy_ = apply_plan(net, SplitPlan([]))
    assert copy_ is not net
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(net.eval()(x), copy_.eval()(x))


# --------------------------------------------------------------------------- planted concepts
@pytest.mark.parametrize("kind", ["linear", "conv1x1"])
def test_planted_unit_separates_into_subunits(kind):
    """Unit 0 reads inputs A = 0..3 and B = 4..7. Concept-1 data drives A, concept-2 data B;
    splitting with groups (A, B) must give each concept its own subunit."""
    g = torch.Generator().manual_seed(0)
    n_in = 8
    if kind == "linear":
        layer = nn.Linear(n_in, 3, dtype=DT)
    else:
        layer = nn.Conv2d(n_in, 3, 1, dtype=DT)
    with torch.no_grad():
        w = layer.weight.view(3, n_in)
        w.copy_(torch.rand(3, n_in, generator=g, dtype=DT) + 0.5)  # positive weights
        layer.bias.zero_()
    split = apply_plan(
        nn.Sequential(layer),
        SplitPlan([UnitSplit("0", 0, [[0, 1, 2, 3], [4, 5, 6, 7]], merge="disjoint")]),
    )[0]

    def data(concept: int, n: int = 64) -> torch.Tensor:
        x = torch.rand(n, n_in, generator=g, dtype=DT) * 0.01  # faint background
        on = slice(0, 4) if concept == 1 else slice(4, 8)
        x[:, on] += 1 + torch.rand(n, 4, generator=g, dtype=DT)
        return x if kind == "linear" else x[:, :, None, None].expand(n, n_in, 3, 3).contiguous()

    for concept, (mine, other) in {1: (0, 1), 2: (1, 0)}.items():
        x = data(concept)
        inter = split.subunits(x)
        z = layer(x)[:, 0]
        s_mine = inter[:, split.subunit_index(0, mine)]
        s_other = inter[:, split.subunit_index(0, other)]
        frac_mine = (s_mine / z).flatten()
        frac_other = (s_other / z).flatten()
        assert frac_mine.min() > 0.97, f"concept {concept}: subunit {mine} carries too little"
        assert frac_other.max() < 0.03, f"concept {concept}: subunit {other} is not ~0"
        assert s_mine.mean() > 2.0  # the unit is strongly on
        torch.testing.assert_close(s_mine + s_other, z, rtol=0, atol=1e-12)  # residual = bias = 0


# --------------------------------------------------------------------------- devices, Captum
def test_meta_device_plumbing():
    fc = nn.Linear(6, 4, device="meta")
    sl = SplitLinear(fc, [UnitSplit("fc", 1, [[0, 1], [2]], shared=[3, 4, 5])])
    assert sl.subunits.weight.device.type == "meta"
    assert all(b.device.type == "meta" for b in sl.merge.buffers())
    out = sl(torch.empty(2, 6, device="meta"))
    assert out.shape == (2, 4) and out.device.type == "meta"


def test_captum_sees_subunits_and_relevance_is_conserved():
    """grad x act on the .subunits channels of a partition split sums to the unit's own."""
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).to(DT).eval()
    plan = SplitPlan([UnitSplit("0", 2, [[0, 1], [2, 3]], shared=[4, 5], merge="disjoint")])
    split = apply_plan(net, plan)
    x = torch.randn(4, 6, dtype=DT)
    a_orig = captum_attr.LayerGradientXActivation(net, net[0]).attribute(x, target=1)
    layer = split[0]
    a_sub = captum_attr.LayerGradientXActivation(split, layer.subunits).attribute(x, target=1)
    assert a_sub.shape == (4, 5 + 2)
    idx = [layer.subunit_index(2, 0), layer.subunit_index(2, 1), layer.residual_index(2)]
    torch.testing.assert_close(a_sub[:, idx].sum(1), a_orig[:, 2], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a_sub[:, [0, 1, 3, 4]], a_orig[:, [0, 1, 3, 4]])
    act = captum_attr.LayerActivation(split, layer.subunits).attribute(x)
    torch.testing.assert_close(act, layer.subunits(x))

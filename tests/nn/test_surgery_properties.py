"""Property tests: random small models x random valid plans stay exactly equivalent."""

from __future__ import annotations

import copy
import random

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from helpers import layer_sizes, random_split, rel_err
from neuronsplit.nn import SplitConv2d, SplitLinear, apply_plan
from neuronsplit.plan import SplitPlan

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # same examples on every run: the suite stays reproducible and fast
    suppress_health_check=[HealthCheck.too_slow],
)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


class _Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _bn(c: int, g: torch.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn.eval()


@st.composite
def conv_nets(draw):
    """Conv2d (random kernel/stride/padding/dilation/bias) + BN(eval) + ReLU, optional
    residual blocks, global pooling, Linear head. Returns (model, input shape)."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    c = draw(st.integers(1, 4))
    size = draw(st.integers(7, 12))
    shape = (2, c, size, size)
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(1, 3))
        d = draw(st.integers(1, 2))
        s = draw(st.integers(1, 2))
        p = draw(st.integers(0, 2))
        span = d * (k - 1) + 1
        if size + 2 * p < span:
            p = (span - size + 1) // 2 + 1
        out = draw(st.integers(2, 6))
        layers.append(
            nn.Conv2d(c, out, k, stride=s, padding=p, dilation=d, bias=draw(st.booleans()))
        )
        size = (size + 2 * p - span) // s + 1
        c = out
        if draw(st.booleans()):
            layers.append(_bn(c, g))
        layers.append(nn.ReLU())
        if draw(st.booleans()):  # shape-preserving residual block
            layers.append(
                _Residual(nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=draw(st.booleans()))))
            )
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, draw(st.integers(2, 5)))]
    model = nn.Sequential(*layers).eval()
    _init(model, g)
    return model, shape


@st.composite
def mlp_nets(draw):
    """Linear stacks with ReLU/GELU/LayerNorm on (B, D) or token (B, T, D) inputs."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    d = draw(st.integers(2, 8))
    shape = (3, d) if draw(st.booleans()) else (2, draw(st.integers(1, 5)), d)
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 3))):
        out = draw(st.integers(2, 9))
        layers.append(nn.Linear(d, out, bias=draw(st.booleans())))
        # LayerNorm over < 4 features is ill-conditioned (2 features: sign of a difference), so
        # float32 rounding alone would exceed 1e-5 there; that is not what this test is about
        acts = ["relu", "gelu", "ln"] if out >= 4 else ["relu", "gelu"]
        act = draw(st.sampled_from(acts))
        layers.append({"relu": nn.ReLU(), "gelu": nn.GELU(), "ln": nn.LayerNorm(out)}[act])
        d = out
    layers.append(nn.Linear(d, draw(st.integers(1, 4))))
    model = nn.Sequential(*layers).eval()
    _init(model, g)
    return model, shape


def _init(model: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:  # unit-variance pre-activations keep the relative test meaningful
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)


@st.composite
def plans(draw, model: nn.Module):
    """A random valid plan over the model's Conv2d/Linear layers (one merge form per layer)."""
    rng = random.Random(draw(st.integers(0, 2**31 - 1)))
    candidates = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    chosen = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique=True))
    splits = []
    mods = dict(model.named_modules())
    for name in chosen:
        n_in, n_out = layer_sizes(mods[name])
        units = rng.sample(range(n_out), rng.randint(1, min(3, n_out)))
        merge = draw(st.sampled_from(["overlap", "disjoint"]))
        for u in units:
            k = draw(st.sampled_from([2, 3, 4]))
            splits.append(random_split(rng, name, u, n_in, k, merge))
    return SplitPlan(splits)


def _check_structure(split_model: nn.Module, model: nn.Module, plan: SplitPlan) -> None:
    """Disjoint rows whatever the form; the form shows only in the overlap view."""
    mods = dict(model.named_modules())
    for name, ls in plan.by_layer().items():
        layer = dict(split_model.named_modules())[name]
        assert isinstance(layer, (SplitConv2d, SplitLinear))
        assert layer.layer_split == ls and layer.form == ls.merge
        orig = mods[name]
        c = layer_sizes(orig)[1]
        e = ls.num_extra_rows
        ws, w = layer.subunits.weight, orig.weight
        assert ws.shape[0] == c + e and layer.merge.num_extra == e
        assert layer.split_units == tuple(sorted(ls.units.tolist()))
        split_units = set(ls.units.tolist())
        for u in range(c):
            if u not in split_units:
                assert torch.equal(ws[u], w[u])
        assert layer.merge.coef.tolist() == [1.0] * e  # unsteered: a plain index-add
        overlap = ls.merge == "overlap"
        for s in ls.unit_splits():
            kk = s.num_subunits
            for k, grp in enumerate(s.groups):
                own = layer.subunit_index(s.unit, k)
                _check_masked(ws[own], w[s.unit], set(grp))
                r = layer.residual_index(s.unit)
                view = ((own, 1.0), (r, 1.0)) if overlap else ((own, 1.0),)
                assert layer.subunit_channels(s.unit, k) == view
                assert layer.merge_coefficient(s.unit, k) == 1.0
                if k:
                    p = own - c
                    assert layer.merge.index[p].item() == s.unit and layer.merge.sub[p].item() == k
            r = layer.residual_index(s.unit)
            _check_masked(ws[r], w[s.unit], set(s.shared))
            assert layer.merge_coefficient(s.unit, -1) == (-(kk - 1) if overlap else 1)
            assert layer.merge.index[r - c].item() == s.unit and layer.merge.sub[r - c] == -1
            if orig.bias is not None:
                bs = layer.subunits.bias
                assert torch.equal(bs[r], orig.bias[s.unit])
                assert all(bs[layer.subunit_index(s.unit, k)] == 0 for k in range(kk))


def _check_masked(row: torch.Tensor, orig: torch.Tensor, cols: set[int]) -> None:
    for j in range(orig.shape[0]):
        if j in cols:
            assert torch.equal(row[j], orig[j])
        else:
            assert not row[j].any()


def _check_equal(model: nn.Module, split: nn.Module, shape) -> None:
    for dtype, tol in TOL.items():
        a, b = copy.deepcopy(model).to(dtype), copy.deepcopy(split).to(dtype)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        with torch.no_grad():
            ya, yb = a(x.to(dtype)), b(x.to(dtype))
        assert ya.shape == yb.shape
        err = rel_err(ya, yb)
        assert err <= tol, f"{dtype}: max|Δ|/max|y| = {err:.3g} > {tol}"


@SETTINGS
@given(data=st.data())
def test_conv_stacks_stay_exact(data) -> None:
    model, shape = data.draw(conv_nets())
    plan = data.draw(plans(model))
    split = apply_plan(model, plan)
    _check_structure(split, model, plan)
    _check_equal(model, split, shape)


@SETTINGS
@given(data=st.data())
def test_mlp_and_token_stacks_stay_exact(data) -> None:
    model, shape = data.draw(mlp_nets())
    plan = data.draw(plans(model))
    split = apply_plan(model, plan)
    _check_structure(split, model, plan)
    _check_equal(model, split, shape)
    # intermediate tensor has C + E channels on the last dim for token inputs too
    name, ls = next(iter(plan.by_layer().items()))
    layer = split.get_submodule(name)
    inter_shape = []
    h = layer.subunits.register_forward_hook(lambda m, i, o: inter_shape.append(o.shape))
    try:
        with torch.no_grad():
            split(torch.randn(shape))
    finally:
        h.remove()
    assert inter_shape[0][-1] == layer.original_out + ls.num_extra_rows
    assert tuple(inter_shape[0][:-1]) == tuple(shape[:-1])


@SETTINGS
@given(data=st.data())
def test_partial_sums_add_up(data) -> None:
    """Per unit in float64: the stored rows add up (sum_k t_k + r == z), and the layer's own
    reading (subunit_channels / merge_coefficient) adds up too: for overlap that is
    sum_k s_k - (K-1) r == z with s_k = t_k + r."""
    model, shape = data.draw(st.one_of(conv_nets(), mlp_nets()))
    plan = data.draw(plans(model))
    model = model.double()
    split = apply_plan(model, plan)
    for name, ls in plan.by_layer().items():
        orig, layer = model.get_submodule(name), split.get_submodule(name)
        c_in = layer_sizes(orig)[0]
        x = torch.randn(
            (2, c_in, 6, 6) if isinstance(orig, nn.Conv2d) else (2, 3, c_in), dtype=torch.float64
        )
        if isinstance(orig, nn.Conv2d) and min(x.shape[-2:]) + 2 * orig.padding[0] < (
            orig.dilation[0] * (orig.kernel_size[0] - 1) + 1
        ):
            continue
        inter, z = layer.subunits(x), orig(x)
        dim = layer.merge.dim
        for s in ls.unit_splits():
            kk = s.num_subunits
            ts = [inter.select(dim, layer.subunit_index(s.unit, k)) for k in range(kk)]
            r = inter.select(dim, layer.residual_index(s.unit))
            ref = z.select(dim, s.unit)
            read = 0
            for k in (*range(kk), -1):
                value = sum(
                    wt * inter.select(dim, ch) for ch, wt in layer.subunit_channels(s.unit, k)
                )
                read = read + layer.merge_coefficient(s.unit, k) * value
            for total in (sum(ts) + r, read):
                assert rel_err(ref, total) <= 1e-12 or (ref - total).abs().max() <= 1e-12

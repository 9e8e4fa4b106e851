"""Disentangle: Captum contract, the definition of subunit attribution, Zennit path, errors."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from captum.attr import GradientAttribution, LayerGradientXActivation, NeuronGradient
from captum.attr import visualization as viz
from matplotlib.figure import Figure
from torch import nn

from neuronsplit import Disentangle, SubunitRef, subunit_layer, subunit_selector
from neuronsplit.attribution import UnitAttribution
from neuronsplit.errors import (
    InputShapeError,
    InvalidTargetError,
    PlanMismatchError,
    UnknownSubunitError,
)
from neuronsplit.plan import SplitPlan, UnitSplit
from neuronsplit.relevance import Zennit
from neuronsplit.nn import apply_plan, iter_split_layers

matplotlib.use("Agg")
DT = torch.float64


# ---------------------------------------------------------------------------------------------
# small models (float64, weights skewed positive so that units are alive on positive inputs)
# ---------------------------------------------------------------------------------------------
class ConvNet(nn.Module):
    def __init__(self, bias: bool = True, in_ch: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 4, 3, padding=1, bias=bias)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=bias)
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6 * 4 * 4, 5, bias=bias)
        self.act3 = nn.ReLU()
        self.out = nn.Linear(5, 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.out(self.act3(self.fc(self.flatten(x))))


class MLP(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8, bias=bias)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(8, 5, bias=bias)
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(5, 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _skew(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.2, 0.5)
    return model.to(DT).eval()


def conv_model(bias: bool = True, in_ch: int = 2) -> nn.Module:
    return _skew(ConvNet(bias, in_ch))


def mlp_model(bias: bool = True) -> nn.Module:
    return _skew(MLP(bias))


def conv_plan(merge: str = "disjoint") -> SplitPlan:
    return SplitPlan(
        [
            UnitSplit("conv2", 1, [[0, 1], [2]], shared=[3], merge=merge),
            UnitSplit("conv2", 4, [[0], [1], [2]], shared=[3], merge=merge),
        ]
    )


def mlp_plan(merge: str = "disjoint") -> SplitPlan:
    return SplitPlan(
        [
            UnitSplit("fc2", 0, [[0, 1, 2], [3, 4]], shared=[5, 6, 7], merge=merge),
            UnitSplit("fc2", 3, [[0], [1], [2, 3]], shared=[4, 5, 6, 7], merge=merge),
        ]
    )


CASES = {
    "conv": (conv_model, conv_plan, "conv2", (2, 2, 8, 8), 1),
    "mlp": (mlp_model, mlp_plan, "fc2", (3, 6), -1),
}


def _inputs(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def reference_unit(model: nn.Module, layer: str, unit: int, x: torch.Tensor, target: int, dim: int):
    """Conditional attribution of ``unit`` on the *unsplit* model, written out independently."""
    x = x.clone().requires_grad_(True)
    store: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.append(o))
    try:
        y = model(x)[:, target]
    finally:
        handle.remove()
    (z,) = store
    (g,) = torch.autograd.grad(y.sum(), z, retain_graph=True)
    mask = torch.zeros_like(g)
    mask.select(dim, unit).copy_(g.select(dim, unit))
    (gx,) = torch.autograd.grad(z, x, mask)
    relevance = (z * g).detach().select(dim, unit).reshape(x.shape[0], -1).sum(1)
    return x.detach() * gx, relevance


# ---------------------------------------------------------------------------------------------
# the Captum contract
# ---------------------------------------------------------------------------------------------
def test_captum_contract() -> None:
    dis = Disentangle(mlp_model(), mlp_plan())
    assert isinstance(dis, GradientAttribution)
    assert Disentangle.get_name() == "Disentangle"
    assert dis.multiplies_by_inputs is True
    assert dis.has_convergence_delta() is True
    assert callable(Disentangle.attribute.__wrapped__)  # log_usage uses functools.wraps
    x = _inputs((3, 6))
    out = dis.attribute(x, target=0, subunit=("fc2", 0, 1))
    assert isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == DT
    out_t = dis.attribute((x,), target=0, subunit=("fc2", 0, 1))
    assert isinstance(out_t, tuple) and len(out_t) == 1
    torch.testing.assert_close(out_t[0], out)
    attr, delta = dis.attribute(x, target=0, subunit=("fc2", 0, 1), return_convergence_delta=True)
    assert delta.shape == (3,)
    assert not x.requires_grad  # the caller's tensor is left alone


def test_multiple_inputs_and_additional_forward_args() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 5)
            self.b = nn.Linear(2, 5)
            self.act = nn.ReLU()
            self.head = nn.Linear(5, 3)

        def forward(self, x: torch.Tensor, z: torch.Tensor, scale: float) -> torch.Tensor:
            return self.head(self.act(self.a(x) + self.b(z))) * scale

    model = _skew(TwoInputs())
    plan = SplitPlan([UnitSplit("a", 2, [[0, 1], [2]], shared=[3], merge="disjoint")])
    dis = Disentangle(model, plan)
    x, z = _inputs((4, 4)), _inputs((4, 2), seed=2)
    a1, a2 = dis.attribute((x, z), target=1, additional_forward_args=2.0, subunit="a/u2/k0")
    assert a1.shape == x.shape and a2.shape == z.shape
    assert a1.abs().sum() > 0
    assert torch.count_nonzero(a2) == 0  # z does not flow through the split layer `a`
    doubled = dis.attribute((x, z), target=1, additional_forward_args=(4.0,), subunit="a/u2/k0")
    torch.testing.assert_close(doubled[0], 2 * a1)


@pytest.mark.parametrize("kind", ["conv", "mlp"])
@pytest.mark.parametrize("merge", ["disjoint", "overlap"])
def test_subunits_sum_to_the_unsplit_unit(kind: str, merge: str) -> None:
    make, make_plan, layer, shape, dim = CASES[kind]
    model = make()
    dis = Disentangle(model, make_plan(merge))
    x = _inputs(shape)
    for unit in dis.model.get_submodule(layer).split_units:
        res = dis.attribute_unit(x, target=2, layer=layer, unit=unit)
        assert isinstance(res, UnitAttribution)
        ref_attr, ref_rel = reference_unit(model, layer, unit, x, 2, dim)
        assert ref_attr.abs().max() > 1e-3, "test unit is dead; pick another seed"
        torch.testing.assert_close(res.unit, ref_attr, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res.unit_relevance, ref_rel, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res.subunits.sum(0), ref_attr, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res.relevance.sum(1), ref_rel, rtol=1e-9, atol=1e-12)
        k = dis.model.get_submodule(layer).num_subunits(unit)
        assert [r.k for r in res.refs] == [*range(k), -1]
        assert res.subunits.shape == (k + 1, *x.shape)
        for i, ref in enumerate(res.refs):  # attribute() agrees with attribute_unit()
            single = dis.attribute(x, target=2, subunit=ref)
            torch.testing.assert_close(single, res.subunits[i])


@pytest.mark.parametrize("merge", ["disjoint", "overlap"])
def test_subunit_relevance_is_its_share_of_grad_x_act(merge: str) -> None:
    """R_s = coef_s * s * dy/dz_u, written out with the merge coefficients of the plan."""
    model = mlp_model()
    split = apply_plan(model, mlp_plan(merge))
    x = _inputs((3, 6))
    store: list[torch.Tensor] = []
    h = split.fc2.subunits.register_forward_hook(lambda m, i, o: store.append(o.detach()))
    hz = model.fc2.register_forward_hook(lambda m, i, o: store.append(o))
    try:
        split(x)
        y = model(x.clone())[:, 0]
    finally:
        h.remove()
        hz.remove()
    inter, z = store
    (g,) = torch.autograd.grad(y.sum(), z)
    res = Disentangle(split).attribute_unit(x, target=0, layer="fc2", unit=3)
    k_total = 3
    coefs = [1.0] * k_total + ([1.0] if merge == "disjoint" else [-(k_total - 1.0)])
    channels = [split.fc2.subunit_index(3, k) for k in range(k_total)]
    channels.append(split.fc2.residual_index(3))
    expected = torch.stack(
        [c * inter[:, ch] * g[:, 3] for c, ch in zip(coefs, channels, strict=True)], 1
    )
    torch.testing.assert_close(res.relevance, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["conv", "mlp"])
@pytest.mark.parametrize("merge", ["disjoint", "overlap"])
def test_completeness_without_bias(kind: str, merge: str) -> None:
    make, make_plan, layer, shape, _ = CASES[kind]
    dis = Disentangle(make(bias=False), make_plan(merge))
    x = _inputs(shape)
    for ref in dis.subunits(layer):
        attr, delta = dis.attribute(x, target=1, subunit=ref, return_convergence_delta=True)
        scale = attr.abs().sum() + 1e-12
        assert delta.abs().max() <= 1e-10 * scale, (ref, delta)
        again = dis.compute_convergence_delta(attr, x, target=1, subunit=ref)
        torch.testing.assert_close(again, delta)


def test_delta_reports_the_bias_share() -> None:
    dis = Disentangle(mlp_model(bias=True), mlp_plan("overlap"))
    x = _inputs((3, 6))
    attr, delta = dis.attribute(x, target=0, subunit="fc2/u0/k0", return_convergence_delta=True)
    assert delta.abs().max() > 1e-6  # biases are not attributed to the input
    torch.testing.assert_close(
        dis.compute_convergence_delta(attr, x, target=0, subunit="fc2/u0/k0"), delta
    )


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_matches_neuron_gradient_times_layer_gradient() -> None:
    """For a Linear subunit c: attr = x * dA_c/dx * dy/dA_c (Captum's own methods)."""
    split = apply_plan(mlp_model(), mlp_plan("overlap"))
    x = _inputs((4, 6))
    layer = subunit_layer(split, "fc2")
    for ref in [SubunitRef("fc2", 3, 2), SubunitRef("fc2", 3, "residual"), SubunitRef("fc2", 2, 0)]:
        sel = subunit_selector(split, ref)
        grad_neuron = NeuronGradient(split, layer).attribute(x, sel)
        grad_layer = LayerGradientXActivation(split, layer, multiply_by_inputs=False).attribute(
            x, target=1
        )[:, sel]
        expected = x * grad_neuron * grad_layer[:, None]
        torch.testing.assert_close(Disentangle(split).attribute(x, target=1, subunit=ref), expected)


def test_target_forms() -> None:
    dis = Disentangle(mlp_model(), mlp_plan())
    x = _inputs((3, 6))
    ref = "fc2/u0/k1"
    by_int = dis.attribute(x, target=2, subunit=ref)
    torch.testing.assert_close(dis.attribute(x, target=torch.tensor(2), subunit=ref), by_int)
    torch.testing.assert_close(dis.attribute(x, target=[2, 2, 2], subunit=ref), by_int)
    mixed = dis.attribute(x, target=torch.tensor([0, 1, 2]), subunit=ref)
    for i in range(3):
        torch.testing.assert_close(mixed[i], dis.attribute(x[i : i + 1], target=i, subunit=ref)[0])

    class OneOutput(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)[:, 2]

    wrapped = Disentangle(
        OneOutput(mlp_model()),
        SplitPlan([UnitSplit("inner.fc2", 0, [[0], [1]], shared=[2, 3, 4, 5, 6, 7])]),
    )
    out = wrapped.attribute(x, subunit="inner.fc2/u0/k0")
    torch.testing.assert_close(
        out,
        Disentangle(
            mlp_model(), SplitPlan([UnitSplit("fc2", 0, [[0], [1]], shared=[2, 3, 4, 5, 6, 7])])
        ).attribute(x, target=2, subunit="fc2/u0/k0"),
    )


def test_unsplit_unit_is_its_own_subunit() -> None:
    model = conv_model()
    dis = Disentangle(model, conv_plan())
    x = _inputs((2, 2, 8, 8))
    ref_attr, _ = reference_unit(model, "conv2", 2, x, 0, 1)
    torch.testing.assert_close(dis.attribute(x, target=0, subunit=("conv2", 2, 0)), ref_attr)
    res = dis.attribute_unit(x, target=0, layer="conv2", unit=2)
    assert res.refs == (SubunitRef("conv2", 2, 0),)
    torch.testing.assert_close(res.unit, ref_attr)


# ---------------------------------------------------------------------------------------------
# Zennit
# ---------------------------------------------------------------------------------------------
def _epsilon_composite(eps: float = 1e-13):
    from zennit.composites import LayerMapComposite
    from zennit.rules import Epsilon, Pass
    from zennit.types import Activation, Linear

    return LayerMapComposite([(Activation, Pass()), (Linear, Epsilon(eps))])


@pytest.mark.parametrize("kind", ["conv", "mlp"])
@pytest.mark.parametrize("merge", ["disjoint", "overlap"])
def test_zennit_epsilon_agrees_with_grad_x_act(kind: str, merge: str) -> None:
    make, make_plan, layer, shape, _ = CASES[kind]
    model = make()
    x = _inputs(shape)
    plain = Disentangle(model, make_plan(merge))
    lrp = Disentangle(model, make_plan(merge), relevance=_epsilon_composite(), merge_epsilon=1e-15)
    for unit in plain.model.get_submodule(layer).split_units:
        a = plain.attribute_unit(x, target=1, layer=layer, unit=unit)
        b = lrp.attribute_unit(x, target=1, layer=layer, unit=unit)
        scale = a.subunits.abs().max()
        torch.testing.assert_close(b.subunits, a.subunits, rtol=0, atol=1e-8 * scale)
        torch.testing.assert_close(b.relevance, a.relevance, rtol=0, atol=1e-8 * scale)
        torch.testing.assert_close(b.unit, a.unit, rtol=0, atol=1e-8 * scale)


@pytest.mark.parametrize("merge", ["disjoint", "overlap"])
def test_zennit_conservation_with_epsilon_plus_flat(merge: str) -> None:
    from zennit.composites import EpsilonPlusFlat

    model = conv_model()
    x = _inputs((2, 2, 8, 8))
    for relevance in (EpsilonPlusFlat(), Zennit(EpsilonPlusFlat())):
        dis = Disentangle(model, conv_plan(merge), relevance=relevance)
        res = dis.attribute_unit(x, target=0, layer="conv2", unit=4)
        assert res.unit.abs().max() > 0
        torch.testing.assert_close(res.subunits.sum(0), res.unit, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res.relevance.sum(1), res.unit_relevance, rtol=1e-6, atol=1e-9)
    for module in dis.model.modules():  # nothing left behind
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_plain_gradients_through_the_merge_would_not_conserve() -> None:
    """Why the merge needs a rule: with plain gradients through the index-add, the partition
    rows of a unit each receive the unit's whole relevance (K+1 times it in total)."""
    model = mlp_model()
    x = _inputs((3, 6))
    split = apply_plan(model, mlp_plan("disjoint"))
    rows = [0, split.fc2.subunit_index(0, 1), split.fc2.residual_index(0)]
    composite = _epsilon_composite()
    store: list[torch.Tensor] = []
    with composite.context(split):
        handle = split.fc2.subunits.register_forward_hook(lambda m, i, o: store.append(o))
        try:
            xs = x.clone().requires_grad_(True)
            y = split(xs)[:, 0]
            (g,) = torch.autograd.grad(y, store[0], grad_outputs=y.detach())
        finally:
            handle.remove()
    res = Disentangle(split, relevance=_epsilon_composite()).attribute_unit(
        x, target=0, layer="fc2", unit=0
    )
    # without a rule each of the three rows gets the unit's relevance R_u (here: g[:, 0])
    torch.testing.assert_close(g[:, rows].sum(1), 3 * g[:, 0])
    torch.testing.assert_close(res.unit_relevance, g[:, 0], rtol=1e-9, atol=1e-12)
    # with the rule (Disentangle) the rows share it
    torch.testing.assert_close(res.relevance.sum(1), res.unit_relevance, rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# visualisation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_output_works_with_captum_visualization(channels: int) -> None:
    model = conv_model(in_ch=channels)
    dis = Disentangle(model, conv_plan())
    x = _inputs((2, channels, 8, 8))
    attr = dis.attribute(x, target=0, subunit=("conv2", 1, 0))
    attr_hwc = attr[0].permute(1, 2, 0).numpy()
    image = x[0].permute(1, 2, 0).numpy()
    fig, ax = viz.visualize_image_attr(
        attr_hwc, image, method="blended_heat_map", sign="all", use_pyplot=False
    )
    assert isinstance(fig, Figure)
    fig, axes = viz.visualize_image_attr_multiple(
        attr_hwc,
        image,
        ["original_image", "heat_map", "masked_image"],
        ["all", "absolute_value", "positive"],
        titles=["image", "subunit", "masked"],
        use_pyplot=False,
    )
    assert isinstance(fig, Figure) and len(axes) == 3


# ---------------------------------------------------------------------------------------------
# construction and bad input
# ---------------------------------------------------------------------------------------------
def test_user_model_is_not_split_in_place() -> None:
    model = mlp_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dis = Disentangle(model, mlp_plan())
    assert not list(iter_split_layers(model))
    assert list(iter_split_layers(dis.model))
    dis.attribute(_inputs((2, 6)), target=0, subunit="fc2/u0/k0")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in dis.model.parameters())


def test_split_model_is_used_as_is() -> None:
    split = apply_plan(mlp_model(), mlp_plan())
    assert Disentangle(split).model is split
    assert Disentangle(split, mlp_plan()).model is split


@pytest.mark.parametrize(
    ("subunit", "match"),
    [
        (("fc1", 0, 0), r"no split layer 'fc1'.*split layers: \['fc2'\]"),
        (("fc9", 0, 0), r"no split layer 'fc9'"),
        (("fc2", 7, 0), r"unit 7 does not exist in layer 'fc2', which has 5 units"),
        (("fc2", 0, 2), r"subunit k=2 does not exist for unit 0, which has 2 subunits"),
        (("fc2", 1, 1), r"unit 1 of layer 'fc2' is not split, so it has no subunit k=1"),
        (("fc2", 0, -2), r"k >= 0, or k = -1 / 'residual'"),
        ("fc2/unit0/k0", r"cannot parse subunit 'fc2/unit0/k0'"),
        (("fc2", 0.5, 0), r"unit of subunit .* must be an int"),
    ],
)
def test_unknown_subunit(subunit: object, match: str) -> None:
    dis = Disentangle(mlp_model(), mlp_plan())
    with pytest.raises(UnknownSubunitError, match=match):
        dis.attribute(_inputs((2, 6)), target=0, subunit=subunit)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (
            3,
            r"target 3 is out of range for model outputs of shape \(2, 3\) \(valid per sample: 0..2\)",
        ),
        (-1, r"target -1 is out of range"),
        (torch.tensor([0, 5]), r"target 5 is out of range"),
        ([0, 1, 2], r"target list has 3 entries but the batch has 2 samples"),
        (1.0, r"target 1.0 must be an int"),
        (None, r"target=None needs one output per sample.*shape \(2, 3\)"),
        ((0, 1), r"target \(0, 1\) is out of range"),
    ],
)
def test_invalid_target(target: object, match: str) -> None:
    dis = Disentangle(mlp_model(), mlp_plan())
    with pytest.raises(InvalidTargetError, match=match):
        dis.attribute(_inputs((2, 6)), target=target, subunit="fc2/u0/k0")


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        (torch.rand(2, 7, dtype=DT), r"inputs of shape \(2, 7\) do not fit MLP"),
        (torch.rand(2, 6, 1, dtype=DT), r"inputs of shape \(2, 6, 1\) do not fit MLP"),
        (torch.ones(2, 6, dtype=torch.long), r"input 0 has dtype torch.int64"),
        (
            [torch.rand(2, 6, dtype=DT)],
            r"must be a Tensor or a tuple of Tensors \(batch on dim 0\), got list",
        ),
        (torch.rand(0, 6, dtype=DT), r"expected a non-empty batch"),
    ],
)
def test_input_shape_errors(inputs: object, match: str) -> None:
    dis = Disentangle(mlp_model(), mlp_plan())
    with pytest.raises(InputShapeError, match=match):
        dis.attribute(inputs, target=0, subunit="fc2/u0/k0")


def test_batch_mismatch() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.fc(a) + b

    dis = Disentangle(Two(), SplitPlan([UnitSplit("fc", 0, [[0], [1]], shared=[2])]))
    with pytest.raises(InputShapeError, match=r"share the batch size.*\(2, 3\), \(3, 2\)"):
        dis.attribute((torch.rand(2, 3), torch.rand(3, 2)), target=0, subunit="fc/u0/k0")


def test_plan_for_another_model() -> None:
    with pytest.raises(PlanMismatchError, match=r"plan does not fit MLP.*'conv2'"):
        Disentangle(mlp_model(), conv_plan())
    wide = SplitPlan([UnitSplit("fc2", 9, [[0], [1]], shared=[2, 3, 4, 5, 6, 7])])
    with pytest.raises(PlanMismatchError, match=r"unit 9 is out of range for layer 'fc2'"):
        Disentangle(mlp_model(), wide)
    narrow = SplitPlan([UnitSplit("fc2", 0, [[0], [1]], shared=[2])])
    with pytest.raises(
        PlanMismatchError, match=r"input indices 3-7 of layer 'fc2' are in no group"
    ):
        Disentangle(mlp_model(), narrow)
    split = apply_plan(mlp_model(), mlp_plan())
    with pytest.raises(PlanMismatchError, match=r"already split with a different plan"):
        Disentangle(split, mlp_plan("overlap"))
    with pytest.raises(PlanMismatchError, match=r"MLP contains no split layers and no plan"):
        Disentangle(mlp_model())


def test_bad_relevance() -> None:
    with pytest.raises(ValueError, match=r"unknown relevance 'lrp'"):
        Disentangle(mlp_model(), mlp_plan(), relevance="lrp")
    with pytest.raises(ValueError, match=r"got int"):
        Disentangle(mlp_model(), mlp_plan(), relevance=3)


def test_subunit_ref() -> None:
    ref = SubunitRef("layer4.2.conv3", 1660, "residual")
    assert ref.k == -1 and ref.is_residual
    assert str(ref) == "layer4.2.conv3/u1660/residual"
    assert SubunitRef.parse(str(ref)) == ref
    assert SubunitRef.parse("fc2/u3/k2") == SubunitRef("fc2", 3, 2)
    assert SubunitRef.coerce(("fc2", 3, 2)) == SubunitRef("fc2", 3, 2)
    assert SubunitRef("fc2", torch.tensor(3), 1).unit == 3
    with pytest.raises(UnknownSubunitError, match=r"non-empty dotted name"):
        SubunitRef("", 0, 0)
    with pytest.raises(UnknownSubunitError, match=r"k of subunit .* must be an int, got True"):
        SubunitRef("fc2", 0, True)

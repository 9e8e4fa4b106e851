"""Disentangle: Captum contract, the definition of subunit attribution, merge forms, errors.

The Zennit path is tested in ``test_disentangle_zennit.py``.
"""

from __future__ import annotations

import matplotlib
import pytest
import torch
from captum.attr import GradientAttribution, LayerGradientXActivation, NeuronGradient
from captum.attr import visualization as viz
from matplotlib.figure import Figure
from torch import nn

from attribution_models import (
    CASES,
    DT,
    conv_model,
    conv_plan,
    inputs,
    mlp_model,
    mlp_plan,
    reference_unit,
    skew,
)
from neuronsplit import Disentangle, SubunitRef, Zennit, subunit_layer, subunit_selector
from neuronsplit.attribution import ChannelSumSelector, UnitAttribution
from neuronsplit.errors import (
    InputShapeError,
    InvalidTargetError,
    PlanMismatchError,
    UnknownSubunitError,
)
from neuronsplit.nn import apply_plan, iter_split_layers
from neuronsplit.plan import SplitPlan, UnitSplit

matplotlib.use("Agg")


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
    x = inputs((3, 6))
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

    model = skew(TwoInputs())
    plan = SplitPlan([UnitSplit("a", 2, [[0, 1], [2]], shared=[3], merge="disjoint")])
    dis = Disentangle(model, plan)
    x, z = inputs((4, 4)), inputs((4, 2), seed=2)
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
    x = inputs(shape)
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
    """R_s = coef_s * s * dy/dz_u, with s and coef_s written out from the unsplit weights.

    fc2 unit 3: groups [0], [1], [2, 3], shared 4..7, K = 3. Disjoint: s_k = t_k, r (coef 1).
    Overlap: s_k = t_k + r (coef 1) and the residual r with coef -(K-1) = -2.
    """
    model = mlp_model()
    x = inputs((3, 6))
    with torch.no_grad():
        h = model.act1(model.fc1(x))
        w, b = model.fc2.weight[3], model.fc2.bias[3]
        t = [h[:, g] @ w[g] for g in ([0], [1], [2, 3])]
        r = h[:, 4:] @ w[4:] + b
    xs = x.clone().requires_grad_(True)
    store: list[torch.Tensor] = []
    handle = model.fc2.register_forward_hook(lambda m, i, o: store.append(o))
    try:
        y = model(xs)[:, 0]
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(y.sum(), store[0])
    g = g[:, 3]
    if merge == "disjoint":
        parts = [t[0], t[1], t[2], r]
    else:
        parts = [t[0] + r, t[1] + r, t[2] + r, -2.0 * r]
    expected = torch.stack([p * g for p in parts], 1)
    res = Disentangle(model, mlp_plan(merge)).attribute_unit(x, target=0, layer="fc2", unit=3)
    assert r.abs().min() > 1e-3  # the residual matters, so the forms differ
    torch.testing.assert_close(res.relevance, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.relevance.sum(1), (sum(t) + r) * g, rtol=1e-10, atol=1e-12)


RELEVANCES = ["grad_x_act", "epsilon", "epsilon_plus_flat"]


def _relevance(name: str) -> object:
    from zennit.composites import EpsilonPlusFlat, LayerMapComposite
    from zennit.rules import Epsilon, Pass
    from zennit.types import Activation, Linear

    if name == "epsilon":
        return Zennit(LayerMapComposite([(Activation, Pass()), (Linear, Epsilon(1e-13))]))
    return Zennit(EpsilonPlusFlat()) if name == "epsilon_plus_flat" else name


@pytest.mark.parametrize("kind", ["conv", "mlp"])
@pytest.mark.parametrize("relevance", RELEVANCES)
def test_overlap_is_a_view_of_the_disjoint_rows(kind: str, relevance: str) -> None:
    """Same rows, two readings: overlap s_k = t_k + r, overlap residual = -(K-1) * r.

    The overlap subunits (residual included) sum to the unit, and the unit's attribution does
    not depend on the form; so relevance and input attribution of the overlap residual are
    -(K-1) times those of the disjoint residual.
    """
    make, make_plan, layer, shape, _ = CASES[kind]
    model = make()
    x = inputs(shape)
    disjoint = Disentangle(model, make_plan("disjoint"), relevance=_relevance(relevance))
    overlap = Disentangle(model, make_plan("overlap"), relevance=_relevance(relevance))
    for unit in disjoint.model.get_submodule(layer).split_units:
        d = disjoint.attribute_unit(x, target=0, layer=layer, unit=unit)
        o = overlap.attribute_unit(x, target=0, layer=layer, unit=unit)
        k_count = len(d.refs) - 1
        assert [r.k for r in o.refs] == [r.k for r in d.refs] == [*range(k_count), -1]
        scale = d.subunits.abs().max()
        rel_scale = d.relevance.abs().max()
        assert d.relevance[:, -1].abs().max() > 1e-3 * rel_scale  # the residual is not silent
        tol = {"rtol": 0.0, "atol": 1e-9 * rel_scale}
        # the unit itself is the same in both forms
        torch.testing.assert_close(o.unit_relevance, d.unit_relevance, **tol)
        torch.testing.assert_close(o.unit, d.unit, rtol=0.0, atol=1e-9 * scale)
        # overlap subunits sum to the unit's relevance and attribution
        torch.testing.assert_close(o.relevance.sum(1), o.unit_relevance, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(o.subunits.sum(0), o.unit, rtol=1e-6, atol=1e-9 * scale)
        # residual: the same row, coefficient -(K-1)
        torch.testing.assert_close(o.relevance[:, -1], -(k_count - 1) * d.relevance[:, -1], **tol)
        torch.testing.assert_close(
            o.subunits[-1], -(k_count - 1) * d.subunits[-1], rtol=0.0, atol=1e-9 * scale
        )
        # subunit k: t_k + r
        torch.testing.assert_close(
            o.relevance[:, :-1], d.relevance[:, :-1] + d.relevance[:, -1:], **tol
        )
        torch.testing.assert_close(
            o.subunits[:-1], d.subunits[:-1] + d.subunits[-1:], rtol=0.0, atol=1e-9 * scale
        )


def test_partition_is_a_deprecated_alias_of_disjoint() -> None:
    with pytest.warns(DeprecationWarning, match=r'merge="partition" is deprecated'):
        plan = SplitPlan(
            [UnitSplit("fc2", 0, [[0, 1, 2], [3, 4]], shared=[5, 6, 7], merge="partition")]
        )
    dis = Disentangle(mlp_model(), plan)
    assert dis.model.fc2.form == "disjoint"
    x = inputs((3, 6))
    res = dis.attribute_unit(x, target=0, layer="fc2", unit=0)
    ref = Disentangle(mlp_model(), mlp_plan("disjoint")).attribute_unit(
        x, target=0, layer="fc2", unit=0
    )
    torch.testing.assert_close(res.relevance, ref.relevance)
    torch.testing.assert_close(res.subunits, ref.subunits)


@pytest.mark.parametrize("kind", ["conv", "mlp"])
@pytest.mark.parametrize("merge", ["disjoint", "overlap"])
def test_completeness_without_bias(kind: str, merge: str) -> None:
    make, make_plan, layer, shape, _ = CASES[kind]
    dis = Disentangle(make(bias=False), make_plan(merge))
    x = inputs(shape)
    for ref in dis.subunits(layer):
        attr, delta = dis.attribute(x, target=1, subunit=ref, return_convergence_delta=True)
        scale = attr.abs().sum() + 1e-12
        assert delta.abs().max() <= 1e-10 * scale, (ref, delta)
        again = dis.compute_convergence_delta(attr, x, target=1, subunit=ref)
        torch.testing.assert_close(again, delta)


def test_delta_reports_the_bias_share() -> None:
    dis = Disentangle(mlp_model(bias=True), mlp_plan("overlap"))
    x = inputs((3, 6))
    attr, delta = dis.attribute(x, target=0, subunit="fc2/u0/k0", return_convergence_delta=True)
    assert delta.abs().max() > 1e-6  # biases are not attributed to the input
    torch.testing.assert_close(
        dis.compute_convergence_delta(attr, x, target=0, subunit="fc2/u0/k0"), delta
    )


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
@pytest.mark.parametrize("merge", ["disjoint", "overlap"])
def test_matches_neuron_gradient_times_layer_gradient(merge: str) -> None:
    """attr = coef * x * d(sum_w w A_row)/dx * dy/dz_u, from Captum's own methods.

    Every stored row of unit u receives dy/dz_u (the merge adds rows without coefficients); the
    subunit's reading (one row, or t_k + r in the overlap form) is its Captum selector, and
    coef is -(K-1) = -2 for the overlap residual of unit 3, else 1.
    """
    split = apply_plan(mlp_model(), mlp_plan(merge))
    x = inputs((4, 6))
    layer = subunit_layer(split, "fc2")
    grad_rows = LayerGradientXActivation(split, layer, multiply_by_inputs=False).attribute(
        x, target=1
    )
    coefs = {
        SubunitRef("fc2", 3, 2): 1.0,
        SubunitRef("fc2", 3, "residual"): 1.0 if merge == "disjoint" else -2.0,
        SubunitRef("fc2", 2, 0): 1.0,
    }
    for ref, coef in coefs.items():
        sel = subunit_selector(split, ref)
        if merge == "overlap" and ref.k == 2:
            assert isinstance(sel, ChannelSumSelector)
            rows = [row for row, _ in sel.channels]
        else:
            rows = [sel]
        for row in rows:  # dy/dA_row = dy/dz_u for every row of the unit
            torch.testing.assert_close(grad_rows[:, row], grad_rows[:, ref.unit])
        grad_neuron = NeuronGradient(split, layer).attribute(x, sel)
        expected = coef * x * grad_neuron * grad_rows[:, ref.unit][:, None]
        torch.testing.assert_close(Disentangle(split).attribute(x, target=1, subunit=ref), expected)


def test_target_forms() -> None:
    dis = Disentangle(mlp_model(), mlp_plan())
    x = inputs((3, 6))
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
    x = inputs((2, 2, 8, 8))
    ref_attr, _ = reference_unit(model, "conv2", 2, x, 0, 1)
    torch.testing.assert_close(dis.attribute(x, target=0, subunit=("conv2", 2, 0)), ref_attr)
    res = dis.attribute_unit(x, target=0, layer="conv2", unit=2)
    assert res.refs == (SubunitRef("conv2", 2, 0),)
    torch.testing.assert_close(res.unit, ref_attr)


# ---------------------------------------------------------------------------------------------
# visualisation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_output_works_with_captum_visualization(channels: int) -> None:
    model = conv_model(in_ch=channels)
    dis = Disentangle(model, conv_plan())
    x = inputs((2, channels, 8, 8))
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
    dis.attribute(inputs((2, 6)), target=0, subunit="fc2/u0/k0")
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
        dis.attribute(inputs((2, 6)), target=0, subunit=subunit)


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
        dis.attribute(inputs((2, 6)), target=target, subunit="fc2/u0/k0")


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
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


@pytest.mark.parametrize("shape", [(2, 7), (2, 6, 1)])
def test_errors_of_the_model_pass_through_with_a_note(shape: tuple[int, ...]) -> None:
    """Inputs the model cannot take: the model's own error, unchanged, plus a note (0.1 turned
    every RuntimeError mentioning a size into InputShapeError, hiding bugs of the model)."""
    dis = Disentangle(mlp_model(), mlp_plan())
    with pytest.raises(RuntimeError) as info:
        dis.attribute(torch.rand(*shape, dtype=DT), target=0, subunit="fc2/u0/k0")
    assert not isinstance(info.value, InputShapeError)
    assert any(f"inputs of shape {shape}" in note for note in info.value.__notes__)


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
        PlanMismatchError, match=r"layer 'fc2' covers 3 inputs, but the layer has 8: inputs 3-7"
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
    with pytest.raises(TypeError, match=r"got int"):
        Disentangle(mlp_model(), mlp_plan(), relevance=3)


def test_init_help_documents_neuronsplit_parameters_not_captums() -> None:
    import inspect

    doc = inspect.getdoc(Disentangle.__init__)
    assert doc is not None and doc is not inspect.getdoc(GradientAttribution.__init__)
    for name in ("model : nn.Module", "plan : SplitPlan, optional", "relevance : ", "Raises"):
        assert name in doc
    assert "forward_func" not in doc  # Captum's own parameter

"""Subunits as neurons: Captum's layer and neuron methods run unchanged on ``.subunits``.

The ``.subunits`` child holds the disjoint rows (``t_k`` and the residual ``r``) whatever the
merge form; an overlap subunit is the sum of two rows, ``t_k + r`` (:func:`subunit_rows`), and
its Captum selector a :class:`ChannelSumSelector`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import (
    LayerActivation,
    LayerConductance,
    LayerGradCam,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    NeuronConductance,
    NeuronGradient,
    NeuronIntegratedGradients,
)
from torch import nn

from neuronsplit import SubunitRef, subunit_layer, subunit_selector
from neuronsplit.attribution import (
    ChannelSumSelector,
    TokenSumSelector,
    subunit_channel,
    subunit_refs,
    subunit_rows,
)
from neuronsplit.attribution.selectors import UnitSelector
from neuronsplit.errors import UnknownSubunitError
from neuronsplit.nn import apply_plan
from neuronsplit.plan import SplitPlan, UnitSplit

DT = torch.float64
N_STEPS = 8  # integrated-gradient steps: enough to compare split and original, cheap on 2 cores


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.fc(self.flatten(x))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(8, 5)
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _skew(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.2, 0.5)
    return model.to(DT).eval()


# layer -> unit -> (groups, shared): unit 1 has K=2, unit 3 has K=3
SPLITS = {
    "conv2": {1: ([[0, 1], [2]], [3]), 3: ([[0], [1], [2]], [3])},
    "fc2": {1: ([[0, 1, 2], [3, 4]], [5, 6, 7]), 3: ([[0], [1], [2, 3]], [4, 5, 6, 7])},
}


def _plan(layer: str, merge: str) -> SplitPlan:
    return SplitPlan(
        [
            UnitSplit(layer, unit, groups, shared=shared, merge=merge)
            for unit, (groups, shared) in SPLITS[layer].items()
        ]
    )


# kind -> (model factory, split layer, input shape, channel dim, number of original units)
CASES = {
    "conv": (ConvNet, "conv2", (3, 2, 6, 6), 1, 6),
    "mlp": (MLP, "fc2", (3, 6), 1, 5),
}
UNSPLIT = [0, 2, 4]


def _setup(
    kind: str, merge: str = "disjoint"
) -> tuple[nn.Module, nn.Module, str, torch.Tensor, int]:
    make, layer, shape, dim, n_units = CASES[kind]
    model = _skew(make())
    split = apply_plan(model, _plan(layer, merge))
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    return model, split, layer, x, n_units


def _orig_selector(kind: str, unit: int) -> int | tuple[int, slice, slice]:
    return (unit, slice(None), slice(None)) if kind == "conv" else unit


# ---------------------------------------------------------------------------------------------
def test_subunit_layer_is_the_expanded_child() -> None:
    _, split, layer, x, n_units = _setup("conv")
    sub = subunit_layer(split, layer)
    assert sub is split.conv2.subunits and isinstance(sub, nn.Conv2d)
    out = LayerActivation(split, sub).attribute(x)
    assert out.shape == (3, n_units + 2 + 3, 6, 6)  # K=2 adds 2 rows, K=3 adds 3
    with pytest.raises(UnknownSubunitError, match=r"no split layer 'conv1'.*\['conv2'\]"):
        subunit_layer(split, "conv1")


def test_selector_forms() -> None:
    _, split, _, _, _ = _setup("conv")
    assert subunit_selector(split, ("conv2", 3, 2)) == (
        subunit_channel(split, ("conv2", 3, 2)),
    ) + (
        slice(None),
        slice(None),
    )
    assert subunit_selector(split, ("conv2", 0, 0)) == (0, slice(None), slice(None))
    with pytest.raises(ValueError, match=r"4-D outputs"):
        subunit_selector(split, ("conv2", 0, 0), ndim=3)
    _, msplit, _, _, _ = _setup("mlp")
    # without ndim a Linear gets an int that Captum calls: (B, C) picks, (B, T, C) sums tokens
    residual = subunit_selector(msplit, ("fc2", 1, "residual"))
    assert isinstance(residual, UnitSelector) and callable(residual)
    assert residual == msplit.fc2.residual_index(1) == 6
    flat = torch.arange(2 * 10, dtype=DT).reshape(2, 10)
    torch.testing.assert_close(residual(flat), flat[:, 6])
    torch.testing.assert_close(flat[:, residual], flat[:, 6])
    tokens = torch.arange(2 * 3 * 10, dtype=DT).reshape(2, 3, 10)
    torch.testing.assert_close(residual(tokens), tokens[:, :, 6].sum(1))
    assert subunit_selector(msplit, ("fc2", 1, 1), ndim=2) == 5
    token = subunit_selector(msplit, ("fc2", 1, 1), ndim=3)
    assert isinstance(token, TokenSumSelector) and token.channel == 5
    assert subunit_selector(msplit, ("fc2", 1, 1), ndim=3, token=2) == (2, 5)
    assert subunit_selector(msplit, ("fc2", 1, 1), token=2) == (2, 5)  # token implies (B, T, C)
    with pytest.raises(ValueError, match=r"token=0 needs a token output \(B, T, C\), but ndim=2"):
        subunit_selector(msplit, ("fc2", 1, 1), token=0, ndim=2)
    with pytest.raises(UnknownSubunitError, match=r"subunit k=5 does not exist for unit 1"):
        subunit_selector(msplit, ("fc2", 1, 5))
    assert [str(r) for r in subunit_refs(msplit)] == [
        "fc2/u1/k0",
        "fc2/u1/k1",
        "fc2/u1/residual",
        "fc2/u3/k0",
        "fc2/u3/k1",
        "fc2/u3/k2",
        "fc2/u3/residual",
    ]


def test_overlap_selector_forms() -> None:
    """An overlap subunit is two rows (t_k + r); the overlap residual is one row."""
    _, split, _, _, _ = _setup("conv", "overlap")
    sel = subunit_selector(split, ("conv2", 3, 2))
    assert isinstance(sel, ChannelSumSelector)
    assert sel.channels == ((9, 1.0), (10, 1.0)) and sel.dim == -3
    # k=0 of a split unit: its own channel plus the residual row
    assert subunit_selector(split, ("conv2", 1, 0)).channels == ((1, 1.0), (7, 1.0))
    assert subunit_selector(split, ("conv2", 3, -1)) == (10, slice(None), slice(None))
    assert subunit_selector(split, ("conv2", 0, 0)) == (0, slice(None), slice(None))  # unsplit
    _, msplit, _, _, _ = _setup("mlp", "overlap")
    sel = subunit_selector(msplit, ("fc2", 1, 1), ndim=3)
    assert isinstance(sel, ChannelSumSelector) and sel.channels == ((5, 1.0), (6, 1.0))
    assert sel.dim == -1
    tokens = torch.arange(2 * 4 * 10, dtype=DT).reshape(2, 4, 10)
    torch.testing.assert_close(sel(tokens), (tokens[..., 5] + tokens[..., 6]).sum(1))
    assert subunit_selector(msplit, ("fc2", 1, "residual")) == 6
    assert subunit_selector(msplit, ("fc2", 1, "residual"), ndim=2) == 6
    with pytest.raises(ValueError, match=r"overlap subunits are a sum of two rows"):
        subunit_selector(msplit, ("fc2", 1, 1), ndim=3, token=0)


# (unit, k) -> rows of the mlp plan (C=5; extra rows: u1 k1=5, r=6; u3 k1=7, k2=8, r=9)
DISJOINT_ROWS = {(1, 0): (1,), (1, 1): (5,), (3, 0): (3,), (3, 1): (7,), (3, 2): (8,)}
OVERLAP_ROWS = {(1, 0): (1, 6), (1, 1): (5, 6), (3, 0): (3, 9), (3, 1): (7, 9), (3, 2): (8, 9)}


@pytest.mark.parametrize("merge", ["disjoint", "overlap"])
def test_subunit_rows(merge: str) -> None:
    _, split, _, _, _ = _setup("mlp", merge)
    expected = DISJOINT_ROWS if merge == "disjoint" else OVERLAP_ROWS
    for (unit, k), rows in expected.items():
        layer, got, coef = subunit_rows(split, ("fc2", unit, k))
        assert layer is split.fc2
        assert got == tuple((row, 1.0) for row in rows), (unit, k)
        assert coef == 1.0
        assert subunit_channel(split, ("fc2", unit, k)) == rows[0]
    # the residual is one row in both forms; in the overlap form it enters the merge with
    # -(K-1): -1 for unit 1 (K=2), -2 for unit 3 (K=3)
    overlap = merge == "overlap"
    assert subunit_rows(split, ("fc2", 1, -1))[1:] == (((6, 1.0),), -1.0 if overlap else 1.0)
    assert subunit_rows(split, ("fc2", 3, "residual"))[1:] == (
        ((9, 1.0),),
        -2.0 if overlap else 1.0,
    )
    assert subunit_rows(split, ("fc2", 0, 0))[1:] == (((0, 1.0),), 1.0)  # unsplit unit
    with pytest.raises(UnknownSubunitError, match=r"unit 0 of layer 'fc2' is not split"):
        subunit_rows(split, ("fc2", 0, 1))


def _hand_parts(
    model: nn.Module, layer: str, unit: int, x: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """``t_k`` per group, the residual ``r`` and ``z_u``, from the unsplit weights."""
    h = model.act1(model.conv1(x) if layer == "conv2" else model.fc1(x))
    orig = model.get_submodule(layer)
    w, b = orig.weight[unit : unit + 1], orig.bias[unit : unit + 1]

    def part(idx: list[int], bias: torch.Tensor | None) -> torch.Tensor:
        if layer == "conv2":
            return F.conv2d(h[:, idx], w[:, idx], bias, padding=1)[:, 0]
        return F.linear(h[:, idx], w[:, idx], bias)[:, 0]

    groups, shared = SPLITS[layer][unit]
    z = orig(h).select(1, unit)
    return [part(g, None) for g in groups], part(shared, b), z


@pytest.mark.parametrize("kind", ["conv", "mlp"])
@pytest.mark.parametrize("merge", ["disjoint", "overlap"])
def test_subunit_activation_is_its_rows(kind: str, merge: str) -> None:
    """LayerActivation sees the disjoint rows; a subunit is sum_w w * row (t_k + r in the
    overlap form), and the coefficient-weighted subunits add up to the unit."""
    model, split, layer, x, _ = _setup(kind, merge)
    acts = LayerActivation(split, subunit_layer(split, layer)).attribute(x)
    for unit in (1, 3):
        with torch.no_grad():
            t, r, z = _hand_parts(model, layer, unit, x)
        total = torch.zeros_like(z)
        for k in [*range(len(t)), -1]:
            _, rows, coef = subunit_rows(split, (layer, unit, k))
            got = sum(w * acts[:, row] for row, w in rows)
            own = r if k == -1 else t[k]
            expected = own + r if merge == "overlap" and k >= 0 else own
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(acts[:, subunit_channel(split, (layer, unit, k))], own)
            total = total + coef * got
        torch.testing.assert_close(total, z, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# every listed Captum method runs on subunits, and matches the original model on unsplit units
# ---------------------------------------------------------------------------------------------
LAYER_METHODS = {
    "LayerActivation": lambda m, layer, x: LayerActivation(m, layer).attribute(x),
    "LayerGradientXActivation": lambda m, layer, x: LayerGradientXActivation(m, layer).attribute(
        x, target=1
    ),
    "LayerConductance": lambda m, layer, x: LayerConductance(m, layer).attribute(
        x, target=1, n_steps=N_STEPS
    ),
    "LayerIntegratedGradients": lambda m, layer, x: LayerIntegratedGradients(m, layer).attribute(
        x, target=1, n_steps=N_STEPS
    ),
    "LayerGradCam": lambda m, layer, x: LayerGradCam(m, layer).attribute(
        x, target=1, attr_dim_summation=False
    ),
}
NEURON_METHODS = {
    "NeuronGradient": lambda m, layer, x, sel: NeuronGradient(m, layer).attribute(x, sel),
    "NeuronIntegratedGradients": lambda m, layer, x, sel: NeuronIntegratedGradients(
        m, layer
    ).attribute(x, sel, n_steps=N_STEPS),
    "NeuronConductance": lambda m, layer, x, sel: NeuronConductance(m, layer).attribute(
        x, sel, target=1, n_steps=N_STEPS
    ),
}


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
@pytest.mark.parametrize("kind", ["conv", "mlp"])
@pytest.mark.parametrize("method", list(LAYER_METHODS))
def test_layer_methods_on_subunits(kind: str, method: str) -> None:
    model, split, layer, x, n_units = _setup(kind)
    run = LAYER_METHODS[method]
    got = run(split, subunit_layer(split, layer), x)
    ref = run(model, model.get_submodule(layer), x)
    assert got.shape[1] == n_units + 5 and got.shape[2:] == ref.shape[2:]
    assert torch.isfinite(got).all()
    # unsplit units: same channel, same values as on the original model
    torch.testing.assert_close(got[:, UNSPLIT], ref[:, UNSPLIT], rtol=1e-9, atol=1e-12)
    # subunits are ordinary channels with their own values
    res = subunit_channel(split, ("conv2" if kind == "conv" else "fc2", 3, "residual"))
    assert got[:, res].abs().sum() > 0 or method == "LayerGradCam"


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
# NeuronConductance warns about every callable selector; a Linear's UnitSelector is one (an int
# Captum calls), and the values below equal the plain int's on the original model
@pytest.mark.filterwarnings("ignore:The neuron_selector provided is a callable")
@pytest.mark.parametrize("kind", ["conv", "mlp"])
@pytest.mark.parametrize("method", list(NEURON_METHODS))
def test_neuron_methods_on_subunits(kind: str, method: str) -> None:
    model, split, layer, x, _ = _setup(kind)
    run = NEURON_METHODS[method]
    sub = subunit_layer(split, layer)
    for ref in subunit_refs(split):
        got = run(split, sub, x, subunit_selector(split, ref))
        assert got.shape == x.shape and torch.isfinite(got).all()
    for unit in UNSPLIT:
        got = run(split, sub, x, subunit_selector(split, SubunitRef(layer, unit, 0)))
        ref = run(model, model.get_submodule(layer), x, _orig_selector(kind, unit))
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
@pytest.mark.parametrize("kind", ["conv", "mlp"])
@pytest.mark.parametrize(
    "method",
    [
        "NeuronGradient",
        "NeuronIntegratedGradients",
    ],
)
def test_channel_sum_selector_with_captum_neuron_methods(kind: str, method: str) -> None:
    """Neuron methods are linear in the selected neuron: t_k + r gives the sum of both rows."""
    _, split, layer, x, _ = _setup(kind, "overlap")
    run = NEURON_METHODS[method]
    sub = subunit_layer(split, layer)
    for ref in [SubunitRef(layer, 3, 2), SubunitRef(layer, 1, 0)]:
        sel = subunit_selector(split, ref)
        assert isinstance(sel, ChannelSumSelector) and len(sel.channels) == 2
        got = run(split, sub, x, sel)
        rows = sum(run(split, sub, x, _orig_selector(kind, row)) for row, _ in sel.channels)
        assert got.abs().max() > 1e-6
        torch.testing.assert_close(got, rows, rtol=1e-9, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_neuron_gradient_of_an_overlap_subunit_by_hand() -> None:
    """d(t_k + r)/dx summed over the batch, against autograd on the unsplit model."""
    model, split, layer, x, _ = _setup("mlp", "overlap")
    got = NeuronGradient(split, subunit_layer(split, layer)).attribute(
        x, subunit_selector(split, (layer, 3, 2))
    )
    xs = x.clone().requires_grad_(True)
    t, r, _ = _hand_parts(model, layer, 3, xs)
    (expected,) = torch.autograd.grad((t[2] + r).sum(), xs)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["conv", "mlp"])
@pytest.mark.parametrize("merge", ["disjoint", "overlap"])
def test_layer_grad_x_act_of_subunits_sums_to_the_unit(kind: str, merge: str) -> None:
    model, split, layer, x, _ = _setup(kind, merge)
    got = LayerGradientXActivation(split, subunit_layer(split, layer)).attribute(x, target=2)
    ref = LayerGradientXActivation(model, model.get_submodule(layer)).attribute(x, target=2)
    for unit in (1, 3):
        rows = [subunit_channel(split, r) for r in subunit_refs(split) if r.unit == unit]
        assert len(rows) == (3 if unit == 1 else 4)
        # per position: the merge is linear, so grad x act splits exactly (both merge forms)
        torch.testing.assert_close(got[:, rows].sum(1), ref[:, unit], rtol=1e-9, atol=1e-12)
        assert ref[:, unit].abs().sum() > 1e-6


def test_layer_grad_cam_of_the_whole_split_layer_is_unchanged() -> None:
    model, split, layer, x, _ = _setup("conv", "overlap")
    got = LayerGradCam(split, subunit_layer(split, layer)).attribute(x, target=0)
    ref = LayerGradCam(model, model.conv2).attribute(x, target=0)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_token_tensors() -> None:
    class TokenMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(4, 6)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.act(self.fc1(x))).mean(1)

    model = _skew(TokenMLP())
    split = apply_plan(model, SplitPlan([UnitSplit("fc1", 2, [[0], [1, 2]], shared=[3])]))
    x = torch.rand(2, 5, 4, dtype=DT)
    sub = subunit_layer(split, "fc1")
    assert LayerActivation(split, sub).attribute(x).shape == (2, 5, 8)
    sel = subunit_selector(split, ("fc1", 2, 1), ndim=3)
    got = NeuronGradient(split, sub).attribute(x, sel)
    assert got.shape == x.shape and got.abs().sum() > 0
    unsplit = subunit_selector(split, ("fc1", 4, 0), ndim=3)
    torch.testing.assert_close(
        NeuronGradient(split, sub).attribute(x, unsplit),
        NeuronGradient(model, model.fc1).attribute(x, TokenSumSelector(4)),
    )
    one = NeuronGradient(split, sub).attribute(
        x, subunit_selector(split, ("fc1", 4, 0), ndim=3, token=1)
    )
    torch.testing.assert_close(one, NeuronGradient(model, model.fc1).attribute(x, (1, 4)))


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_demo_model_float32_unsplit_units() -> None:
    """The digits demo model in float32: unsplit fc2 units agree to 1e-5 relative."""
    from neuronsplit.demo import get_demo_model, load_digits

    model = get_demo_model()
    weight = model.fc2.weight.detach()
    pos = [i for i in range(64) if weight[2, i] > 0]
    neg = [i for i in range(64) if weight[2, i] <= 0]
    split = apply_plan(model, SplitPlan([UnitSplit("fc2", 2, [pos, neg], merge="disjoint")]))
    x = load_digits("test").images[:16]
    sub = subunit_layer(split, "fc2")
    got = LayerIntegratedGradients(split, sub).attribute(x, target=3, n_steps=N_STEPS)
    ref = LayerIntegratedGradients(model, model.fc2).attribute(x, target=3, n_steps=N_STEPS)
    keep = [0, 1, 3, 4, 5]
    scale = ref.abs().max()
    torch.testing.assert_close(got[:, keep], ref[:, keep], rtol=0, atol=1e-5 * scale)
    rows = [2, split.fc2.subunit_index(2, 1), split.fc2.residual_index(2)]
    torch.testing.assert_close(got[:, rows].sum(1), ref[:, 2], rtol=0, atol=1e-5 * scale)


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

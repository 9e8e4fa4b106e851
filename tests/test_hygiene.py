"""No side effects (after Captum's test_hook_removal): every call, also a failing one, leaves the
model exactly as it was -- no hooks (module or global), same parameters, flags and modes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from captum.attr import (
    LayerActivation,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    NeuronConductance,
    NeuronGradient,
    NeuronIntegratedGradients,
)
from torch import nn

from helpers import hook_counts
from neuronsplit import Disentangle, subunit_layer, subunit_selector
from neuronsplit.errors import (
    InputShapeError,
    InvalidTargetError,
    PlanMismatchError,
    UnknownSubunitError,
)
from neuronsplit.nn import apply_plan
from neuronsplit.plan import SplitPlan, UnitSplit


class Tripwire(nn.Module):
    """Identity that raises when armed: a module failing in the middle of the forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("tripwire: boom in the middle of the forward pass")
        return x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.trip = Tripwire()  # after the split conv: its hooks have fired when this raises
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 5 * 5, 6)
        self.act2 = nn.ReLU()
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trip(self.act1(self.conv(x)))
        return self.out(self.act2(self.fc(self.flatten(x))))


PLAN = SplitPlan(
    [
        UnitSplit("conv", 2, [[0], []], merge="disjoint"),
        UnitSplit(
            "fc",
            1,
            [list(range(50)), list(range(50, 80))],
            shared=list(range(80, 100)),
            merge="overlap",  # subunits of fc read two rows (t_k + r)
        ),
    ]
)


def _split_model() -> nn.Module:
    torch.manual_seed(0)
    model = Net()
    model.fc.bias.requires_grad_(False)  # a frozen parameter must stay frozen
    split = apply_plan(model, PLAN)
    split.train()  # training mode must survive too (no dropout/BN here, so results are fixed)
    return split


def _state(model: nn.Module) -> dict[str, Any]:
    return {
        "params": {
            k: (p.detach().clone(), p.requires_grad, p.grad) for k, p in model.named_parameters()
        },
        "param_ids": {k: id(p) for k, p in model.named_parameters()},
        "buffers": {k: b.detach().clone() for k, b in model.named_buffers()},
        "modules": {k: (type(m), m.training, sorted(vars(m))) for k, m in model.named_modules()},
        "forwards": {k: m.forward for k, m in model.named_modules()},
        "hooks": hook_counts(model),
    }


def assert_untouched(model: nn.Module, before: dict[str, Any]) -> None:
    after = _state(model)
    # the test models carry no hooks of their own: every count must be back to zero
    leftover = {k: v for k, v in after["hooks"].items() if any(v)}
    assert not leftover, f"hooks left behind: {leftover}"
    assert after["modules"] == before["modules"], (
        "module types, training flags or attributes changed"
    )
    assert after["forwards"] == before["forwards"], "a forward method was replaced"
    assert after["param_ids"] == before["param_ids"], "parameter objects were replaced"
    for k, (value, requires_grad, grad) in before["params"].items():
        now_value, now_requires_grad, now_grad = after["params"][k]
        assert now_requires_grad == requires_grad, f"requires_grad of {k} changed"
        assert torch.equal(now_value, value), f"parameter {k} changed"
        assert now_grad is grad, f".grad of {k} changed"
    for k, value in before["buffers"].items():
        assert torch.equal(after["buffers"][k], value), f"buffer {k} changed"


def _x(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 1, 5, 5, generator=torch.Generator().manual_seed(3))


def _epsilon_plus_flat() -> Any:
    from zennit.composites import EpsilonPlusFlat

    return EpsilonPlusFlat()


# name -> (call(model), expected exception or None, arm the tripwire)
Call = Callable[[nn.Module], Any]
CASES: dict[str, tuple[Call, type[BaseException] | None, bool]] = {
    "attribute": (
        lambda m: Disentangle(m).attribute(_x(), target=1, subunit="conv/u2/k1"),
        None,
        False,
    ),
    "attribute_delta": (
        lambda m: Disentangle(m).attribute(
            _x(), target=1, subunit="fc/u1/residual", return_convergence_delta=True
        ),
        None,
        False,
    ),
    "attribute_unit": (
        lambda m: Disentangle(m).attribute_unit(_x(), target=0, layer="fc", unit=1),
        None,
        False,
    ),
    "compute_convergence_delta": (
        lambda m: Disentangle(m).compute_convergence_delta(
            _x(), _x(), target=0, subunit="conv/u2/k0"
        ),
        None,
        False,
    ),
    "zennit_attribute": (
        lambda m: Disentangle(m, relevance=_epsilon_plus_flat()).attribute(
            _x(), target=2, subunit="conv/u2/k0"
        ),
        None,
        False,
    ),
    "zennit_attribute_unit": (
        lambda m: Disentangle(m, relevance=_epsilon_plus_flat()).attribute_unit(
            _x(), target=2, layer="conv", unit=2
        ),
        None,
        False,
    ),
    "invalid_target": (
        lambda m: Disentangle(m).attribute(_x(), target=3, subunit="conv/u2/k0"),
        InvalidTargetError,
        False,
    ),
    "zennit_invalid_target": (
        lambda m: Disentangle(m, relevance=_epsilon_plus_flat()).attribute(
            _x(), target=[0, 7], subunit="conv/u2/k0"
        ),
        InvalidTargetError,
        False,
    ),
    "unknown_subunit": (
        lambda m: Disentangle(m).attribute(_x(), target=0, subunit="conv/u2/k5"),
        UnknownSubunitError,
        False,
    ),
    "wrong_shape": (
        lambda m: Disentangle(m).attribute(torch.rand(2, 3, 5, 5), target=0, subunit="conv/u2/k0"),
        InputShapeError,
        False,
    ),
    "zennit_wrong_shape": (
        lambda m: Disentangle(m, relevance=_epsilon_plus_flat()).attribute(
            torch.rand(2, 1, 6, 6), target=0, subunit="fc/u1/k0"
        ),
        InputShapeError,
        False,
    ),
    "raises_mid_forward": (
        lambda m: Disentangle(m).attribute(_x(), target=0, subunit="conv/u2/k0"),
        RuntimeError,
        True,
    ),
    "zennit_raises_mid_forward": (
        lambda m: Disentangle(m, relevance=_epsilon_plus_flat()).attribute_unit(
            _x(), target=0, layer="conv", unit=2
        ),
        RuntimeError,
        True,
    ),
    # Captum's own methods on subunits through our helpers
    "layer_activation": (
        lambda m: LayerActivation(m, subunit_layer(m, "conv")).attribute(_x()),
        None,
        False,
    ),
    "layer_grad_x_act": (
        lambda m: LayerGradientXActivation(m, subunit_layer(m, "fc")).attribute(_x(), target=1),
        None,
        False,
    ),
    "layer_ig_invalid_target": (
        lambda m: LayerIntegratedGradients(m, subunit_layer(m, "fc")).attribute(
            _x(), target=9, n_steps=4
        ),
        Exception,  # Captum's own error type (IndexError / AssertionError)
        False,
    ),
    "neuron_gradient": (
        lambda m: NeuronGradient(m, subunit_layer(m, "fc")).attribute(
            _x(), subunit_selector(m, ("fc", 1, "residual"))
        ),
        None,
        False,
    ),
    "neuron_gradient_overlap": (
        lambda m: NeuronGradient(m, subunit_layer(m, "fc")).attribute(
            _x(), subunit_selector(m, ("fc", 1, 0))
        ),
        None,
        False,
    ),
    "zennit_overlap_attribute": (
        lambda m: Disentangle(m, relevance=_epsilon_plus_flat()).attribute(
            _x(), target=1, subunit="fc/u1/k1"
        ),
        None,
        False,
    ),
    "neuron_ig": (
        lambda m: NeuronIntegratedGradients(m, subunit_layer(m, "conv")).attribute(
            _x(), subunit_selector(m, ("conv", 2, 1)), n_steps=4
        ),
        None,
        False,
    ),
    "neuron_conductance_raises_mid_forward": (
        lambda m: NeuronConductance(m, subunit_layer(m, "conv")).attribute(
            _x(), subunit_selector(m, ("conv", 2, 1)), target=0, n_steps=4
        ),
        RuntimeError,
        True,
    ),
    "neuron_selector_unknown": (
        lambda m: subunit_selector(m, ("conv", 3, 1)),
        UnknownSubunitError,
        False,
    ),
}


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
@pytest.mark.parametrize("case", list(CASES))
def test_no_side_effects(case: str) -> None:
    call, error, arm = CASES[case]
    model = _split_model()
    before = _state(model)
    model.trip.armed = arm
    try:
        if error is None:
            call(model)
        else:
            with pytest.raises(error):
                call(model)
    finally:
        model.trip.armed = False
    assert_untouched(model, before)
    # and the model still works: a normal call after the failure gives the usual result
    x = _x()
    torch.testing.assert_close(
        Disentangle(model).attribute(x, target=1, subunit="conv/u2/k1"),
        Disentangle(_split_model()).attribute(x, target=1, subunit="conv/u2/k1"),
    )
    assert_untouched(model, before)


def test_unsplit_model_untouched_by_disentangle() -> None:
    torch.manual_seed(0)
    model = Net()
    before = _state(model)
    dis = Disentangle(model, PLAN)
    dis.attribute(_x(), target=0, subunit="conv/u2/k0")
    assert_untouched(model, before)
    bad = SplitPlan([UnitSplit("nope", 0, [[0], [1]])])
    with pytest.raises(PlanMismatchError, match=r"'nope'"):
        Disentangle(model, bad)
    assert_untouched(model, before)


def test_inputs_untouched() -> None:
    model = _split_model()
    x = _x()
    x_copy = x.clone()
    Disentangle(model).attribute(x, target=0, subunit="conv/u2/k0")
    assert not x.requires_grad and x.grad is None and torch.equal(x, x_copy)
    y = _x().requires_grad_(True)
    Disentangle(model, relevance=_epsilon_plus_flat()).attribute(y, target=0, subunit="conv/u2/k0")
    assert y.requires_grad and y.grad is None

"""FastEpsilon and FastLayerNormRule: the same relevance as Zennit's re-running rules.

The reference is Zennit's own ``Epsilon`` and this package's ``LayerNormRule`` (which re-run the
layer inside the backward pass); the fast rules must give the same input relevance on linear,
convolutional and LayerNorm layers, in float64 and float32, with zero outputs, and leave no hook.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zennit.composites import LayerMapComposite
from zennit.core import Stabilizer
from zennit.rules import Epsilon

from neuronsplit.errors import InvalidArgumentError
from neuronsplit.relevance.fast_rules import FastEpsilon
from neuronsplit.relevance.vit_rules import FastLayerNormRule, LayerNormRule


def _model(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, stride=2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 8),
        nn.LayerNorm(8),
        nn.Linear(8, 5),
    ).to(dtype)


def _lrp(model: nn.Module, linear_rule, norm_rule, x: torch.Tensor) -> torch.Tensor:
    """Input relevance of the target logit 0 under the given rules (no LayerNorm rule: None)."""
    layer_map = [((nn.Conv2d, nn.Linear), linear_rule)]
    if norm_rule is not None:
        layer_map.append((nn.LayerNorm, norm_rule))
    composite = LayerMapComposite(layer_map)
    x = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        y = modified(x)
        seed = torch.zeros_like(y)
        seed[:, 0] = y[:, 0]
        (relevance,) = torch.autograd.grad(y, x, seed)
    return relevance


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("epsilon", [1e-6, 0.25])
def test_fast_rules_equal_the_rerunning_rules(dtype, tol, epsilon):
    model = _model(dtype)
    x = torch.randn(4, 3, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(1))
    fast = _lrp(model, FastEpsilon(epsilon), FastLayerNormRule(epsilon), x)
    slow = _lrp(model, Epsilon(epsilon), LayerNormRule(epsilon), x)
    assert fast.abs().sum() > 0
    torch.testing.assert_close(fast, slow, rtol=tol, atol=tol * slow.abs().max())


def test_norm_scaled_stabilizer_is_called_as_zennit_defines_it():
    model = _model(torch.float64)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    stab = Stabilizer(epsilon=0.1, norm_scale=True)
    fast = _lrp(model, FastEpsilon(stab), FastLayerNormRule(stab), x)
    slow = _lrp(model, Epsilon(stab), LayerNormRule(stab), x)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)


def test_zero_output_with_zero_epsilon_gives_finite_relevance():
    """An output of exactly 0 must not give 0/0: eps is raised to the dtype's smallest normal."""
    layer = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0]]))
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64, requires_grad=True)  # output exactly 0
    composite = LayerMapComposite([(nn.Linear, FastEpsilon(0.0))])
    with composite.context(layer) as modified:
        y = modified(x)
        (relevance,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.isfinite(relevance).all()


def test_hooks_are_removed_and_copy_keeps_epsilon():
    model = _model(torch.float64)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    plain = model(x)
    _lrp(model, FastEpsilon(0.5), FastLayerNormRule(0.5), x)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    torch.testing.assert_close(model(x), plain, rtol=0, atol=0)
    assert FastEpsilon(0.5).copy().epsilon == 0.5
    assert isinstance(FastLayerNormRule(0.5).copy(), FastLayerNormRule)


def test_zero_params_is_refused():
    with pytest.raises(InvalidArgumentError, match="zero_params"):
        FastEpsilon(zero_params=["bias"])


class _InPlaceAfter(nn.Module):
    """Linear -> an in-place edit of its output -> Linear."""

    def __init__(self, edit: str) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b, self.edit = nn.Linear(4, 4), nn.Linear(4, 2), edit

    def forward(self, x):
        y = self.a(x)
        if self.edit == "leaky":
            y = nn.functional.leaky_relu(y, 0.1, inplace=True)
        else:
            y += x
        return self.b(y)


@pytest.mark.parametrize("edit", ["leaky", "add"])
def test_output_changed_in_place_is_recomputed(edit):
    model = _InPlaceAfter(edit).double()
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    fast = _lrp(model, FastEpsilon(1e-6), FastLayerNormRule(1e-6), x)
    slow = _lrp(model, Epsilon(1e-6), LayerNormRule(1e-6), x)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)


class _Twice(nn.Module):
    """One Linear layer applied twice (weights shared), and its unrolled copy."""

    def __init__(self, shared: nn.Linear, unrolled: bool) -> None:
        super().__init__()
        self.first = shared
        self.second = nn.Linear(4, 4).double() if unrolled else shared
        if unrolled:
            self.second.load_state_dict(shared.state_dict())
        self.head = nn.Linear(4, 2).double()
        torch.manual_seed(5)
        self.head.weight.data.normal_()

    def forward(self, x):
        return self.head(torch.relu(self.second(torch.relu(self.first(x)))))


def test_layer_called_twice_gets_each_calls_input():
    """Reference: the same network with the layer unrolled into two modules."""
    torch.manual_seed(6)
    shared = nn.Linear(4, 4).double()
    twice, unrolled = _Twice(shared, False), _Twice(shared, True)
    unrolled.head.load_state_dict(twice.head.state_dict())
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    fast = _lrp(twice, FastEpsilon(1e-6), None, x)
    reference = _lrp(unrolled, Epsilon(1e-6), None, x)
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-12)


def test_float16_agrees_with_float64():
    """Half precision: the fast rules against the float64 reference, within half's rounding."""
    model = _model(torch.float64)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    reference = _lrp(model, Epsilon(1e-3), LayerNormRule(1e-3), x)
    half = _lrp(model.half(), FastEpsilon(1e-3), FastLayerNormRule(1e-3), x.half())
    assert torch.isfinite(half).all()
    error = (half.double() - reference).abs().max() / reference.abs().max()
    assert error < 2e-2, error


def test_float16_layer_norm_with_a_large_deviation_keeps_the_output():
    """A deviation of 300 squares past float16's range; the statistics must be float32."""
    norm = nn.LayerNorm(8).half()
    x = torch.randn(3, 8).half()
    x[0, 2] = 300.0
    plain = norm(x)
    composite = LayerMapComposite([(nn.LayerNorm, FastLayerNormRule(1e-3))])
    xg = x.clone().requires_grad_(True)
    with composite.context(norm) as modified:
        y = modified(xg)
        (relevance,) = torch.autograd.grad(y, xg, y)
    torch.testing.assert_close(y, plain, rtol=1e-3, atol=1e-3)
    assert relevance[0].abs().sum() > 0 and torch.isfinite(relevance).all()

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
    """Input relevance of the target logit 0 under the given rules."""
    composite = LayerMapComposite(
        [((nn.Conv2d, nn.Linear), linear_rule), (nn.LayerNorm, norm_rule)]
    )
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


def test_zero_output_gives_finite_relevance_in_half_precision_range():
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

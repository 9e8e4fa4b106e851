"""Unobserved inference runs the original layer (rebuilt from the rows); observation runs the rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import neuronsplit as ns
from neuronsplit.nn import explicit_rows
from neuronsplit.plan import LayerSplit, SplitPlan

DT = torch.float64


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 5, 8)
    ).eval()


def _plan() -> SplitPlan:
    gen = torch.Generator().manual_seed(1)
    return SplitPlan(
        [
            LayerSplit("0", [1, 4], torch.randint(-1, 3, (2, 3), generator=gen), [3, 3]),
            LayerSplit("3", range(8), torch.randint(-1, 4, (8, 150), generator=gen), [4] * 8,
                       merge="overlap"),
        ]
    )  # fmt: skip


def _x() -> torch.Tensor:
    return torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(2))


def test_unobserved_inference_is_bitwise_the_original() -> None:
    model = _model()
    split = ns.apply_plan(model, _plan())
    with torch.no_grad():
        assert torch.equal(split(_x()), model(_x()))
        with explicit_rows(split):  # the rows agree up to rounding, not bit for bit
            rows = split(_x())
    torch.testing.assert_close(rows, model(_x()).detach(), rtol=1e-5, atol=1e-6)


def test_rows_run_whenever_something_observes() -> None:
    split = ns.apply_plan(_model(), _plan())
    layer = split[3]
    with torch.no_grad():
        assert not layer.rows_needed()
        with explicit_rows(split):
            assert layer.rows_needed()
        assert not layer.rows_needed() and not layer.force_rows
        handle = layer.subunits.register_forward_hook(lambda *a: None)
        assert layer.rows_needed()
        handle.remove()
        handle = layer.merge.register_forward_pre_hook(lambda *a: None)
        assert layer.rows_needed()
        handle.remove()
        handle = nn.modules.module.register_module_forward_hook(lambda *a: None)
        assert layer.rows_needed()
        handle.remove()
        with layer.merge.scaled({(0, 1): 0.5}):
            assert layer.rows_needed()
        assert not layer.rows_needed()
    assert layer.rows_needed()  # grad enabled: gradients must flow through the rows
    calls = []
    with ns.nn.explicit_rows(split), torch.no_grad():
        h = layer.subunits.register_forward_hook(lambda *a: calls.append(1))
        split(_x())
        h.remove()
    assert calls == [1]


def test_captum_and_gradients_see_the_rows() -> None:
    split = ns.apply_plan(_model(), _plan())
    x = _x().requires_grad_(True)
    out = split(x)
    out[:, 0].sum().backward()
    assert split[3].subunits.weight.grad is not None  # the rows took part in the graph
    assert split[0].subunits.weight.grad is not None


def test_the_cache_follows_every_change_of_the_rows() -> None:
    model = _model()
    split = ns.apply_plan(model, _plan())
    with torch.no_grad():
        split(_x())
        # an in-place edit of a row changes the function: the fast path must see it
        extra = split[3].residual_index(2)
        split[3].subunits.weight[extra].mul_(3.0)
        with explicit_rows(split):
            expected = split(_x())
        torch.testing.assert_close(split(_x()), expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(split(_x()), model(_x()))
        # a dtype change rebuilds the cache in the new dtype
        split64, model64 = ns.apply_plan(model, _plan()).to(DT), _model().to(DT)
        assert torch.equal(split64(_x().to(DT)), model64(_x().to(DT)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_verify_checks_the_rows_not_the_original(dtype: torch.dtype) -> None:
    model = _model()
    split = ns.apply_plan(model, _plan())
    assert ns.verify_equivalence(model, split, _x(), dtype=dtype).passed
    with torch.no_grad():  # break one row: unobserved inference would still rebuild from it
        split[0].subunits.weight[split[0].residual_index(4)].add_(1.0)
    report = ns.verify_equivalence(model, split, _x(), dtype=dtype)
    assert not report.passed
    (layer0,) = [lay for lay in report.rows[0].layers if lay.layer == "0"]
    assert not layer0.passed and layer0.worst_split.unit == 4


def test_writes_through_data_are_seen_too() -> None:
    # `.data` writes do not bump the parameter's version counter: nothing may be cached on it
    model = _model()
    split = ns.apply_plan(model, _plan())
    with torch.no_grad():
        before = split(_x())
        split[3].subunits.weight.data.mul_(2.0)
        after = split(_x())
        with explicit_rows(split):
            rows = split(_x())
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, rows, rtol=1e-5, atol=1e-6)

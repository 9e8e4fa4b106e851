"""``scan`` and ``plan_split`` on models in float64, float32, float16 and bfloat16, and under
``torch.autocast``.

Whatever the model's dtype, the statistics accumulate in float64 (counts in integers), so the
scan of a half-precision model differs from the float64 scan only by the model's own rounding:

* on a planted unit whose relevance signs cannot flip (the classes light up disjoint inputs),
  the counts and the plan (groups and the rho chosen by ``rho="auto"``) are exactly the
  float64 ones;
* on a random conv net, relevance sums and input sums agree with the float64 scan within a
  tolerance of the dtype, and importance counts differ only where a relevance sits at a
  threshold (at most 2% of the counts; bfloat16 flips 3 of 227).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import neuronsplit as ns
from helpers import planted_unit

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
IDS = [str(d).removeprefix("torch.") for d in DTYPES]
# relative tolerance (of the largest value) of a scan statistic against the float64 scan
STAT_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}


def _planted(n: int = 48) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Unit 0 of ``fc`` reads inputs 0-3 for class 0 and 4-7 for class 1 (as in test_rho)."""
    return planted_unit(n)


def _loader(x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> DataLoader:
    return DataLoader(TensorDataset(x.to(dtype), y), batch_size=32)


def _check_accumulators(res: ns.ScanResult) -> None:
    """Finite, float64 sums and integer counts, whatever the model's dtype."""
    for name in res.layers:
        for key, t in res.layer(name).tensors().items():
            assert t.dtype in (torch.float64, torch.int64, torch.int32), (name, key, t.dtype)
            if t.is_floating_point() and "top" not in key:
                assert torch.isfinite(t).all(), (name, key)


@pytest.fixture(scope="module")
def planted64():
    model, x, y = _planted()
    loader = _loader(x, y, torch.float64)
    res = ns.scan(model, loader, ["fc"], 2, progress=False)
    (unit,) = ns.find_polysemantic(res, "fc")
    plan = ns.plan_split(unit, res, loader, model=model, merge="disjoint")
    return res, plan


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_planted_scan_and_plan_equal_the_float64_ones(dtype: torch.dtype, planted64) -> None:
    res64, plan64 = planted64
    model64, x, y = _planted()
    model = copy.deepcopy(model64).to(dtype)
    loader = _loader(x, y, dtype)
    res = ns.scan(model, loader, ["fc"], 2, progress=False)
    _check_accumulators(res)
    assert torch.equal(res.class_counts, res64.class_counts)
    for tau in res.tau_grid:
        assert torch.equal(res.important_counts("fc", tau), res64.important_counts("fc", tau))
    rtol = STAT_RTOL[dtype]
    torch.testing.assert_close(
        res.layer("fc").relevance_sum, res64.layer("fc").relevance_sum, rtol=rtol, atol=0
    )
    units = ns.find_polysemantic(res, "fc")
    assert [(u.unit, u.classes) for u in units] == [(0, (0, 1))]
    plan = ns.plan_split(units[0], res, loader, model=model, merge="disjoint")  # rho="auto"
    assert plan.splits == plan64.splits
    assert plan.meta["units"][0]["rho"] == plan64.meta["units"][0]["rho"]
    split = ns.apply_plan(model, plan)
    assert next(split.parameters()).dtype == dtype
    assert ns.verify_equivalence(model, split, x[:16], dtype=dtype).passed
    assert next(model.parameters()).dtype == dtype  # scan and plan_split leave it alone


def test_planted_scan_and_plan_under_autocast(planted64) -> None:
    res64, plan64 = planted64
    model64, x, y = _planted()
    model = copy.deepcopy(model64).float()
    loader = _loader(x, y, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = ns.scan(model, loader, ["fc"], 2, progress=False)
        (unit,) = ns.find_polysemantic(res, "fc")
        plan = ns.plan_split(unit, res, loader, model=model, merge="disjoint")
    _check_accumulators(res)
    for tau in res.tau_grid:
        assert torch.equal(res.important_counts("fc", tau), res64.important_counts("fc", tau))
    assert plan.splits == plan64.splits
    assert plan.meta["units"][0]["rho"] == plan64.meta["units"][0]["rho"]


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.mean((2, 3)))


@pytest.fixture(scope="module")
def conv_setup():
    torch.manual_seed(0)
    model = _ConvNet().double().eval()
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(64, 3, 12, 12, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (64,), generator=gen)
    res64 = ns.scan(model, _loader(x, y, torch.float64), ["conv1", "conv2", "fc"], progress=False)
    return model, x, y, res64


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=IDS[1:])
def test_conv_scan_agrees_with_the_float64_scan(dtype: torch.dtype, conv_setup) -> None:
    model64, x, y, res64 = conv_setup
    model = copy.deepcopy(model64).to(dtype)
    res = ns.scan(model, _loader(x, y, dtype), ["conv1", "conv2", "fc"], progress=False)
    _check_accumulators(res)
    assert torch.equal(res.class_counts, res64.class_counts)
    rtol = STAT_RTOL[dtype]
    for name in ("conv1", "conv2", "fc"):
        a, b = res.layer(name), res64.layer(name)
        # the weights as the model holds them, in float64
        torch.testing.assert_close(a.weight, b.weight.to(dtype).double(), rtol=0, atol=0)
        for got, want in ((a.relevance_sum, b.relevance_sum), (a.input_sums, b.input_sums)):
            scale = float(want.abs().max())
            assert float((got - want).abs().max()) <= rtol * scale, name
        for tau in res.tau_grid:
            diff = (res.important_counts(name, tau) - res64.important_counts(name, tau)).abs()
            total = int(res64.important_counts(name, tau).sum())
            assert int(diff.sum()) <= 1 + total // 50, (name, tau)  # 1.3% at worst (bf16)

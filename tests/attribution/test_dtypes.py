"""``Disentangle`` on models in float64, float32, float16 and bfloat16, and under autocast.

Attributions come back in the inputs' dtype; relevances (sums over the layer's positions) in
float32 or better, as the scan's. Per dtype the subunits' attributions add up to the unit's and
their relevances to the unit's relevance, and both agree with the float64 computation on the
same (rounded) weights and inputs, within a tolerance of the dtype (relative to the largest
value). Zennit's rules divide by stabilised sums, which loses more in half precision (its
1e-6 epsilon is below float16's smallest normal number), so it gets a looser tolerance.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import neuronsplit as ns
from neuronsplit.plan import SplitPlan, UnitSplit

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
IDS = [str(d).removeprefix("torch.") for d in DTYPES]
# measured worst: grad_x_act 1.8e-3 (float16) and 8.8e-3 (bfloat16); Zennit 1.6e-2 (float16)
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}
# Zennit: its Norm rule on the merge divides by z + 1e-9 (merge_epsilon), a gap of ~1e-7 here
ZENNIT_RTOL = {torch.float64: 1e-6, torch.float32: 1e-5, torch.float16: 5e-2, torch.bfloat16: 5e-2}
PLAN = SplitPlan(
    [
        UnitSplit("2", 1, [[0, 1], [2, 3], [4]], shared=[5], merge="overlap"),
        UnitSplit("2", 5, [[0, 3], [1, 2, 4, 5]], merge="overlap"),
    ]
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).double().eval()  # fmt: skip


def _x() -> torch.Tensor:
    return torch.rand(4, 3, 10, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    want = want.double()
    return float((got.double() - want).abs().max() / want.abs().max())


def _relevance(kind: str):
    if kind == "grad_x_act":
        return "grad_x_act"
    from zennit.composites import EpsilonPlusFlat

    return ns.Zennit(EpsilonPlusFlat())


@pytest.mark.parametrize("kind", ["grad_x_act", "zennit"])
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_subunits_add_up_to_the_unit_in_every_dtype(dtype: torch.dtype, kind: str) -> None:
    if kind == "zennit":
        pytest.importorskip("zennit")
    rtol = (RTOL if kind == "grad_x_act" else ZENNIT_RTOL)[dtype]
    model = copy.deepcopy(_model()).to(dtype)
    reference = copy.deepcopy(model).double()  # the same rounded weights
    x = _x().to(dtype)
    dis = ns.Disentangle(model, PLAN, relevance=_relevance(kind))
    res = dis.attribute_unit(x, target=2, layer="2", unit=1)
    attr = dis.attribute(x, target=2, subunit=("2", 1, 2))
    ref = ns.Disentangle(reference, PLAN, relevance=_relevance(kind)).attribute_unit(
        x.double(), target=2, layer="2", unit=1
    )

    assert res.subunits.dtype == res.unit.dtype == attr.dtype == dtype
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    assert res.relevance.dtype == res.unit_relevance.dtype == res.delta.dtype == wide
    for t in (res.subunits, res.unit, res.relevance, res.unit_relevance, res.delta, attr):
        assert torch.isfinite(t).all()
    assert torch.equal(attr, res.subunits[2])  # one subunit alone = its slice of the unit call
    assert _rel(res.subunits.double().sum(0), res.unit) <= rtol
    assert _rel(res.relevance.sum(1), res.unit_relevance) <= rtol
    assert _rel(res.subunits, ref.subunits) <= rtol
    assert _rel(res.relevance, ref.relevance) <= rtol
    assert next(model.parameters()).dtype == dtype  # Disentangle works on a split copy


def test_disentangle_under_autocast_bfloat16() -> None:
    model = copy.deepcopy(_model()).float()
    dis = ns.Disentangle(model, PLAN)
    x = _x().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = dis.attribute_unit(x, target=2, layer="2", unit=1)
    ref = dis.attribute_unit(x, target=2, layer="2", unit=1)  # float32, no autocast
    assert res.subunits.dtype == torch.float32 and res.relevance.dtype == torch.float32
    assert _rel(res.subunits.sum(0), res.unit) <= RTOL[torch.bfloat16]
    assert _rel(res.relevance.sum(1), res.unit_relevance) <= RTOL[torch.bfloat16]
    assert _rel(res.subunits, ref.subunits) <= 4 * RTOL[torch.bfloat16]


def test_zennit_float16_where_a_merged_unit_is_exactly_zero() -> None:
    pytest.importorskip("zennit")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(6, 4),
    ).half()  # fmt: skip
    plan = SplitPlan([UnitSplit("0", 1, [[0], [1]], shared=[2], merge="overlap")])
    x = torch.rand(2, 3, 8, 8, dtype=torch.float16)
    x[:, :, :4] = 0  # unit 1's merged output is exactly 0 in the top rows
    dis = ns.Disentangle(model, plan, relevance=_relevance("zennit"))
    res = dis.attribute_unit(x, target=1, layer="0", unit=1)
    assert torch.isfinite(res.subunits).all() and torch.isfinite(res.relevance).all()

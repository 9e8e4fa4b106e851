"""verify_equivalence: pass/fail detection, input forms, errors, no side effects."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import assert_unchanged, snapshot
from neuronsplit.errors import InputShapeError, NotExactError, PlanMismatchError
from neuronsplit.nn import EquivalenceReport, apply_plan, verify_equivalence
from neuronsplit.plan import SplitPlan, UnitSplit


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 4),
    )


PLAN = SplitPlan(
    [
        UnitSplit("0", 1, [[0], [1]], shared=[2]),
        UnitSplit("0", 3, [[2], [0], [1]]),
        UnitSplit("5", 2, [[0, 1], [2, 3]], shared=[4]),
    ]
)


def _x(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(n))


def test_passes_and_reports_every_dtype_layer_and_unit() -> None:
    net = _net()
    rep = verify_equivalence(net, apply_plan(net, PLAN), [_x(), _x(3)])
    assert isinstance(rep, EquivalenceReport) and rep.passed
    assert [r.dtype for r in rep.rows] == ["float32", "float64"]
    f32, f64 = rep.rows
    assert f64.rtol == 1e-10 and f32.rtol == 1e-5 and f64.atol == 0.0
    assert f64.output_rel < 1e-12 and f32.output_rel < 1e-5
    assert f64.n_batches == 2 and f64.output_max_ref > 0
    assert [lay.layer for lay in f64.layers] == ["0", "5"]
    conv = f64.layers[0]
    assert [d.unit for d in conv.split_units] == [1, 3]
    assert conv.unsplit_worst_unit in (0, 2, 4)
    assert conv.max_ref > 0 and conv.passed
    text = str(rep)
    assert "PASSED" in text and "float64" in text and "max|Δ|" in text
    assert json.loads(json.dumps(rep.to_dict()))["passed"] is True
    with pytest.raises(AttributeError):
        rep.passed = False  # type: ignore[misc]


def test_detects_a_wrong_unsplit_row_and_names_it() -> None:
    net = _net()
    split = apply_plan(net, PLAN)
    with torch.no_grad():
        split[0].subunits.weight[4] += 1e-3  # unit 4 is not split
    rep = verify_equivalence(net, split, _x(), dtype=torch.float64)
    assert not rep.passed
    conv = rep.rows[0].layers[0]
    assert not conv.passed and conv.unsplit_worst_unit == 4 and conv.unsplit_max_abs > 1e-5
    assert all(d.max_abs < 1e-12 for d in conv.split_units)
    assert "NOT EXACT" in str(rep) and "FAILED" in str(rep)
    with pytest.raises(NotExactError, match=r"layer '0' unsplit unit 4: max\|Δ\|="):
        verify_equivalence(net, split, _x(), dtype=torch.float64, raise_on_fail=True)


def test_detects_a_wrong_merge_coefficient_on_a_split_unit() -> None:
    net = _net()
    split = apply_plan(net, PLAN)
    with split[5].merge.scaled({(2, 1): 1.01}):  # the copies verify makes are steered too
        rep = verify_equivalence(net, split, _x())
        with pytest.raises(NotExactError, match=r"layer '5' split unit 2"):
            verify_equivalence(net, split, _x(), raise_on_fail=True)
    assert not rep.passed and not any(r.passed for r in rep.rows)
    head = rep.rows[1].layers[1]
    assert head.worst_split.unit == 2 and head.worst_split.max_abs > 0
    assert head.unsplit_max_abs < 1e-12  # the other units are fine
    assert all(d.max_abs < 1e-12 for d in rep.rows[1].layers[0].split_units)  # layer '0' is fine
    # leaving the context restores the exact merge
    assert verify_equivalence(net, split, _x()).passed


def test_detects_a_wrong_split_row_and_names_the_unit() -> None:
    net = _net()
    split = apply_plan(net, PLAN)
    with torch.no_grad():  # a residual row (shared input 2 of unit 1) of the conv layer
        split[0].subunits.weight[split[0].residual_index(1), 2] += 1e-3
    rep = verify_equivalence(net, split, _x(), dtype=torch.float64)
    conv = rep.rows[0].layers[0]
    assert not rep.passed and not conv.passed
    assert conv.worst_split.unit == 1 and conv.worst_split.max_abs > 1e-6
    assert [d.max_abs < 1e-12 for d in conv.split_units] == [False, True]
    assert conv.unsplit_max_abs < 1e-12


def test_tolerance_overrides() -> None:
    net = _net()
    split = apply_plan(net, PLAN)
    with torch.no_grad():
        split[0].subunits.weight[4] += 1e-6
    assert not verify_equivalence(net, split, _x(), dtype=torch.float64).passed
    assert verify_equivalence(net, split, _x(), dtype=torch.float64, rtol=1e-3).passed
    assert verify_equivalence(net, split, _x(), dtype=torch.float64, rtol=0, atol=1e-3).passed


def test_input_forms() -> None:
    net = _net()
    split = apply_plan(net, PLAN)
    x = _x(6)
    y = torch.zeros(6, dtype=torch.long)
    forms = {
        "tensor": x,
        "list": [x[:3], x[3:]],
        "loader": DataLoader(TensorDataset(x, y), batch_size=4),
        "generator": (x[i : i + 2] for i in range(0, 6, 2)),
    }
    counts = {"tensor": 1, "list": 2, "loader": 2, "generator": 3}
    for name, inputs in forms.items():
        rep = verify_equivalence(net, split, inputs)
        assert rep.passed, name
        assert all(r.n_batches == counts[name] for r in rep.rows), name  # generator: both dtypes

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, a, b):
            return {"sum": self.fc(a + b), "parts": (self.fc(a), a)}

    two = Two()
    s2 = apply_plan(two, SplitPlan([UnitSplit("fc", 0, [[0], [1]], shared=[2])]))
    rep = verify_equivalence(two, s2, (torch.randn(4, 3), torch.randn(4, 3)))
    assert rep.passed and rep.rows[0].n_batches == 1
    assert rep.rows[1].layers[0].layer == "fc"


def test_bad_inputs_raise_input_shape_error_with_cause() -> None:
    net = _net()
    split = apply_plan(net, PLAN)
    # the model's own error passes through unchanged, with a note naming the batch
    with pytest.raises(RuntimeError) as ei:
        verify_equivalence(net, split, torch.randn(2, 4, 8, 8))
    assert not isinstance(ei.value, InputShapeError)
    assert any("failed on batch 0 (input shapes [(2, 4, 8, 8)]" in n for n in ei.value.__notes__)
    with pytest.raises(InputShapeError, match="held no batches"):
        verify_equivalence(net, split, [])
    with pytest.raises(InputShapeError, match="got dict"):
        verify_equivalence(net, split, {"x": _x()})
    with pytest.raises(InputShapeError, match="batch 1 of inputs is a str"):
        verify_equivalence(net, split, [_x(), "nope"])
    with pytest.raises(TypeError, match="floating torch.dtype"):
        verify_equivalence(net, split, _x(), dtype=torch.int64)


def test_wrong_original_model_is_named() -> None:
    net = _net()
    split = apply_plan(net, PLAN)
    other = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1))
    with pytest.raises(PlanMismatchError, match=r"no layer\(s\) \['5'\]"):
        verify_equivalence(other, split, _x())


def test_models_are_not_mutated() -> None:
    net = _net().train()  # train mode: BN would update running stats if run unguarded
    split = apply_plan(net, PLAN)
    h = net.register_forward_hook(lambda m, i, o: None)
    snap_n, snap_s = snapshot(net), snapshot(split)
    verify_equivalence(net, split, [_x(), _x(2)])
    assert_unchanged(net, snap_n)
    assert_unchanged(split, snap_s)
    assert net.training and split.training
    with pytest.raises(RuntimeError):  # the model's own error
        verify_equivalence(net, split, torch.randn(2, 4, 8, 8))
    assert_unchanged(net, snap_n)
    assert_unchanged(split, snap_s)
    h.remove()

"""ns.evaluate against values computed by hand on a two-layer linear model.

Layer "0" = Linear(3, 2) with rows [1, 2, 4] and [1, 1, 1]; unit 0 is split into t0 (input 0),
t1 (input 1) and the residual r (input 2). Layer "1" = Linear(2, 2) with rows [1, 0] and
[1, 100], so the unit's relative relevance is 1 for class 0 and z0 / (z0 + 100 z1) for class 1.

image       label  z0  t0  t1  r   rel(unit 0)     matters (tau 0.03)
[1, 0, 0]   0      1   1   0   0   1               yes
[0, 1, 0]   1      2   0   2   0   2/102 = 0.0196  no
[0, 0, 1]   1      4   0   0   4   4/104 = 0.0385  yes
[1, 1, 0]   0      3   1   2   0   1               yes
[0, 0, 0]   0      0   0   0   0   0               no (z0 = 0)
"""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

import neuronsplit as ns
from neuronsplit.errors import (
    InputShapeError,
    InvalidArgumentError,
    InvalidTargetError,
    PlanMismatchError,
)
from neuronsplit.evaluation import subunit_values

X = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]]
Y = [0, 1, 1, 0, 0]
LABEL_FREE = {"fraction", "fraction_images", "mean_activation", "top_indices", "exact"}


def _model(dtype: torch.dtype) -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0, 4.0], [1.0, 1.0, 1.0]]))
        model[1].weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 100.0]]))
    return model.to(dtype).eval()


def _plan(merge: str = "disjoint", groups=((0,), (1,)), shared=(2,)) -> ns.SplitPlan:
    return ns.SplitPlan([ns.UnitSplit("0", 0, groups, shared, merge=merge)])


def _loader(dtype: torch.dtype, batch: int = 2) -> list:
    x, y = torch.tensor(X, dtype=dtype), torch.tensor(Y)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(X), batch)]


def _eval(dtype=torch.float64, merge="disjoint", **kw) -> ns.Evaluation:
    model = _model(dtype)
    kw.setdefault("k", 2)
    return ns.evaluate(model, None, _loader(dtype), _plan(merge), progress=False, **kw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_disjoint_by_hand(dtype: torch.dtype) -> None:
    ev = _eval(dtype, concepts={("0", 0): [[0], [1]]})
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    unit, t0, t1, r = (ev.row("0", 0, s) for s in (None, 0, 1, -1))
    assert [x.name for x in ev.rows] == ["0/u0", "0/u0/k0", "0/u0/k1", "0/u0/residual"]
    assert ev.n_images == 5 and all(x.n_images == 5 for x in ev.rows)
    # fractions over the images where the unit matters: x1, x3, x4
    assert all(x.fraction_images == 3 for x in ev.rows)
    want = {unit: 1.0, t0: (1 + 0 + 1 / 3) / 3, t1: (0 + 0 + 2 / 3) / 3, r: (0 + 1 + 0) / 3}
    for row, value in want.items():
        assert row.fraction == pytest.approx(value, abs=tol), row.name
    # own concept: t0 <- class 0 (x1, x4), t1 <- class 1 (x3), residual <- both
    assert t0.fraction_own == pytest.approx((1 + 1 / 3) / 2, abs=tol)
    assert t1.fraction_own == pytest.approx(0.0, abs=tol)
    assert r.fraction_own == pytest.approx(1 / 3, abs=tol)
    assert unit.fraction_own is None
    assert [x.mean_activation for x in ev.rows] == pytest.approx([2, 0.4, 0.8, 0.8], abs=tol)
    # top 2 (ties to the earlier image) and their labels
    assert [x.top_indices for x in ev.rows] == [(2, 3), (0, 3), (1, 3), (2, 0)]
    assert [x.purity for x in ev.rows] == [0.5, 1.0, 0.5, 0.5]
    assert [x.entropy for x in ev.rows] == pytest.approx([1.0, 0.0, 1.0, 1.0])
    assert t0.top_class == 0
    # class means of relu(a): unit (4/3, 3), t0 (2/3, 0), t1 (2/3, 1), r (0, 2)
    sel = [5 / 13, 1.0, 1 / 5, 1.0]
    assert [x.selectivity for x in ev.rows] == pytest.approx(sel, abs=tol)
    assert [x.preferred_class for x in ev.rows] == [1, 0, 1, 1]
    assert [x.classes for x in ev.rows] == [(1,), (0,), (1,), (1,)]  # share >= 1/2
    assert [x.n_classes for x in ev.rows] == [1, 1, 1, 1]
    assert unit.exact is True and ev.equivalence.passed and ev.max_abs_delta <= 1e-5
    assert t0.exact is None and ev.notes == []


def test_class_share_threshold() -> None:
    ev = _eval(class_share=0.3)
    # shares: unit (4/13, 9/13), t1 (0.4, 0.6)
    assert ev.row("0", 0).classes == (0, 1) and ev.row("0", 0, 1).n_classes == 2
    assert ev.row("0", 0, 0).classes == (0,)


def test_overlap_form_reads_t_k_plus_r() -> None:
    ev = _eval(merge="overlap")
    # s0 = t0 + r = [1, 0, 4, 1, 0], s1 = t1 + r = [0, 2, 4, 2, 0]
    s0, s1, r = (ev.row("0", 0, s) for s in (0, 1, -1))
    assert s0.fraction == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert s1.fraction == pytest.approx((0 + 1 + 2 / 3) / 3)
    assert s0.fraction + s1.fraction - r.fraction == pytest.approx(1.0)
    assert s0.top_indices == (2, 0) and s0.form == "overlap"


def test_without_labels_only_label_free_measures() -> None:
    model = _model(torch.float64)
    x = torch.tensor(X, dtype=torch.float64)
    ev = ns.evaluate(model, None, [x[:3], x[3:]], _plan(), labels=False, k=2, progress=False)
    rows = ev.to_dicts()
    assert LABEL_FREE <= set(rows[0])
    assert not {"purity", "entropy", "selectivity", "classes", "fraction_own"} & set(rows[0])
    # the target is the prediction: argmax of [z0, z0 + 100 z1] is class 1 except for x5,
    # so the unit matters on x3 (4/104) only
    assert ev.row("0", 0, -1).fraction_images == 1
    assert ev.row("0", 0, -1).fraction == pytest.approx(1.0)
    assert ev.row("0", 0, 0).purity is None


def test_to_csv_round_trip(tmp_path) -> None:
    ev = _eval()
    text = ev.to_csv(tmp_path / "ev.csv")
    assert (tmp_path / "ev.csv").read_text() == text
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 4 and list(rows[0]) == ev.columns
    assert rows[1]["top_indices"] == "0;3" and rows[1]["subunit"] == "0"
    assert rows[0]["subunit"] == "" and float(rows[3]["fraction"]) == pytest.approx(1 / 3)


def test_split_model_and_plan_subset_give_the_same_rows() -> None:
    model = _model(torch.float64)
    plan = ns.SplitPlan(
        [ns.UnitSplit("0", 0, [[0], [1]], [2]), ns.UnitSplit("0", 1, [[0, 1], [2]])]
    )
    split = ns.apply_plan(model, plan)
    whole = ns.evaluate(model, split, _loader(torch.float64), k=2, progress=False)
    assert len(whole) == 4 + 4
    one = ns.evaluate(model, split, _loader(torch.float64), _plan(), k=2, progress=False)
    assert one.to_dicts() == whole.to_dicts()[:4]


def test_constant_subunit_and_silent_unit_are_notes_not_crashes() -> None:
    model = _model(torch.float64)
    with torch.no_grad():
        model[0].weight[1] = -1.0  # unit 1 never activates on these non-negative images
    plan = ns.SplitPlan(
        [ns.UnitSplit("0", 0, [[0, 1], []], [2]), ns.UnitSplit("0", 1, [[0], [1]], [2])]
    )
    ev = ns.evaluate(model, None, _loader(torch.float64), plan, k=2, progress=False)
    empty = ev.row("0", 0, 1)  # no inputs: 0 on every image
    assert "constant" in empty.note and empty.top_indices == () and math.isnan(empty.purity)
    assert math.isnan(empty.selectivity)
    silent = ev.row("0", 1)
    assert "never activates" in silent.note and math.isnan(silent.selectivity)
    assert silent.n_classes == 0
    assert any("0/u1: the unit never activates" in n for n in ev.notes)


def test_fewer_images_than_k_is_a_note() -> None:
    ev = _eval(k=50)
    assert len(ev.row("0", 0).top_indices) == 5
    assert any("k=50" in n for n in ev.notes)


def test_bad_input_raises_typed_errors() -> None:
    model = _model(torch.float64)
    with pytest.raises(InputShapeError, match="no images"):
        ns.evaluate(model, None, [], _plan(), progress=False)
    with pytest.raises(InvalidArgumentError, match="splits no unit"):
        ns.evaluate(model, None, _loader(torch.float64), ns.SplitPlan([]), progress=False)
    with pytest.raises(InvalidArgumentError, match="splits no unit"):
        ns.evaluate(model, model, _loader(torch.float64), progress=False)
    x = torch.tensor(X, dtype=torch.float64)
    with pytest.raises(InvalidTargetError, match="no labels"):
        ns.evaluate(model, None, [x], _plan(), progress=False)
    split = ns.apply_plan(model, _plan())
    other = ns.SplitPlan([ns.UnitSplit("0", 0, [[1], [0]], [2])])
    with pytest.raises(PlanMismatchError, match="split differently"):
        ns.evaluate(model, split, _loader(torch.float64), other, progress=False)
    with pytest.raises(PlanMismatchError, match="does not"):
        ns.evaluate(model, split, _loader(torch.float64),
                    ns.SplitPlan([ns.UnitSplit("0", 1, [[1], [0]], [2])]), progress=False)  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="2 subunits"):
        _eval(concepts={("0", 0): [[0]]})
    with pytest.raises(InvalidArgumentError, match="k must be >= 1"):
        _eval(k=0)


def test_conv_rows_sum_and_max_over_positions() -> None:
    """Conv2d(2, 1, 1) with weights [1, 2]; one image with channels [1, 3] and [2, -1]:
    t0 = [1, 3], t1 = [4, -2], unit = [5, 1] (residual 0)."""
    conv = nn.Conv2d(2, 1, 1, bias=False)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(2, 2, bias=False)).double().eval()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0]).reshape(1, 2, 1, 1))
        model[2].weight.copy_(torch.eye(2))
    plan = ns.SplitPlan([ns.UnitSplit("0", 0, [[0], [1]])])
    split = ns.apply_plan(model, plan)
    x = torch.tensor([[1.0, 3.0], [2.0, -1.0]], dtype=torch.float64).reshape(1, 2, 1, 2)
    sums = subunit_values(split, "0", 0, x)
    maxes = subunit_values(split, "0", 0, x, reduce="max")
    assert sums.tolist() == [[6.0, 4.0, 2.0, 0.0]] and maxes.tolist() == [[5.0, 3.0, 4.0, 0.0]]
    ev = ns.evaluate(model, split, [(x, torch.tensor([0]))], k=1, progress=False)
    assert [r.mean_activation for r in ev.rows] == [5.0, 3.0, 4.0, 0.0]
    # target 0: logit = 5 at position 0 only, so relevance is the unit's alone -> it matters
    assert [r.fraction for r in ev.rows[:3]] == pytest.approx([1.0, 4 / 6, 2 / 6])

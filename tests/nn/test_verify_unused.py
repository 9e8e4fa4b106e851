"""verify_equivalence reports split layers that never ran on the inputs, and fails on them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neuronsplit.errors import NotExactError
from neuronsplit.nn import apply_plan, get_split_layer, verify_equivalence
from neuronsplit.plan import SplitPlan, UnitSplit


class TwoHeads(nn.Module):
    """``head_b`` runs only for inputs with a negative mean (a branch the inputs may skip)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head_a = nn.Linear(6, 3)
        self.head_b = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.body(x))
        return self.head_b(h) if bool(x.mean() < 0) else self.head_a(h)


PLAN = SplitPlan(
    [
        UnitSplit("head_a", 1, [[0, 1], [2, 3]], shared=[4, 5]),
        UnitSplit("head_b", 0, [[0], [1, 2]], shared=[3, 4, 5]),
    ]
)


def _positive() -> torch.Tensor:
    return torch.rand(5, 4, generator=torch.Generator().manual_seed(0)) + 0.1  # head_a only


def _broken_split() -> tuple[nn.Module, nn.Module]:
    """The issue's case: head_b's split weights multiplied by 100, on inputs that skip it."""
    torch.manual_seed(0)
    model = TwoHeads()
    split = apply_plan(model, PLAN)
    with torch.no_grad():
        get_split_layer(split, "head_b").subunits.weight.mul_(100)
    return model, split


def test_a_wrong_split_layer_that_never_ran_fails_the_report() -> None:
    model, split = _broken_split()
    report = verify_equivalence(model, split, _positive())
    assert not report.passed
    for row in report.rows:
        assert not row.passed
        layers = {lay.layer: lay for lay in row.layers}
        assert layers["head_a"].ran and layers["head_a"].calls == 1 and layers["head_a"].passed
        assert not layers["head_b"].ran and layers["head_b"].calls == 0
        assert not layers["head_b"].passed
    assert "'head_b' never ran" in report.worst() and "allow_unused=True" in report.worst()
    assert "'head_a'" not in report.worst()  # only failing layers are named in a failed report
    text = str(report)
    assert "FAILED" in text and "'head_b' never ran" in text and "NOT CHECKED" in text
    with pytest.raises(NotExactError, match="'head_b' never ran"):
        verify_equivalence(model, split, _positive(), raise_on_fail=True)


def test_allow_unused_accepts_it_and_still_says_so() -> None:
    model, split = _broken_split()
    report = verify_equivalence(model, split, _positive(), allow_unused=True)
    assert report.passed, str(report)
    head_b = next(lay for lay in report.rows[0].layers if lay.layer == "head_b")
    assert head_b.passed and not head_b.ran
    assert "'head_b' never ran" in str(report) and "allowed by allow_unused=True" in str(report)
    assert "allowed" in report.worst()
    assert report.to_dict()["rows"][0]["layers"][1]["calls"] == 0


def test_once_the_layer_runs_the_wrong_weights_are_found() -> None:
    model, split = _broken_split()
    batches = [_positive(), -_positive()]  # the second batch takes head_b
    report = verify_equivalence(model, split, batches, allow_unused=True)
    assert not report.passed
    head_b = next(lay for lay in report.rows[0].layers if lay.layer == "head_b")
    assert head_b.calls == 1 and not head_b.passed and head_b.worst_split.unit == 0


def test_a_layer_called_on_every_batch_counts_every_call() -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    split = apply_plan(model, PLAN)
    report = verify_equivalence(model, split, [_positive()] * 3, dtype=torch.float64)
    calls = {lay.layer: lay.calls for lay in report.rows[0].layers}
    assert calls == {"head_a": 3, "head_b": 0} and not report.passed

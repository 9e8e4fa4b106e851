"""Top-k label purity: planted concepts as labels give pure subunits; controls score lower."""

from __future__ import annotations

import pytest
import torch

import neuronsplit as ns
from neuronsplit.errors import InvalidArgumentError
from neuronsplit.evaluation import label_purity, planted_concepts, top_k_purity


def _loader(data: torch.Tensor, labels: torch.Tensor) -> list:
    return [(data[i : i + 200], labels[i : i + 200]) for i in range(0, len(data), 200)]


def test_label_purity_by_hand() -> None:
    assert label_purity(torch.tensor([3, 3, 3, 3])) == (1.0, 0.0)
    purity, entropy = label_purity(torch.tensor([0, 1, 2, 3]))
    assert purity == 0.25 and entropy == pytest.approx(2.0)


def test_planted_concepts_give_pure_subunits() -> None:
    planted = planted_concepts([3, 2], seed=0)
    plan = ns.discover(planted.model, [planted.data], ["0"], progress=False)
    test = planted_concepts([3, 2], seed=0, samples=600)  # same model and concepts, new draws
    assert torch.equal(test.model[0].weight, planted.model[0].weight)
    report = top_k_purity(planted.model, plan, _loader(test.data, test.concept_of_sample), k=20)
    assert report.units == 2
    # a unit's top images mix its concepts; each subunit's belong to one concept
    assert report.unit_purity < 0.8
    assert report.subunit_purity == 1.0
    assert report.entropy_change < -0.5
    assert report.random_purity < report.subunit_purity - 0.1  # shuffled routing mixes concepts


def test_overlap_form_includes_the_residual() -> None:
    planted = planted_concepts([2], seed=1)
    plan = ns.discover(planted.model, [planted.data], ["0"], progress=False)
    split = plan.layer("0")
    overlap = ns.SplitPlan([ns.LayerSplit("0", split.units, split.assignment, merge="overlap")])
    loader = _loader(planted.data, planted.concept_of_sample)
    a = top_k_purity(planted.model, plan, loader)
    b = top_k_purity(planted.model, overlap, loader)
    assert a.unit_purity == b.unit_purity  # the whole unit does not depend on the form
    assert b.subunit_purity >= 0.9  # s_k = t_k + r still peaks on concept k


def test_errors() -> None:
    planted = planted_concepts([2], seed=1)
    loader = _loader(planted.data, planted.concept_of_sample)
    with pytest.raises(InvalidArgumentError, match="no unit"):
        top_k_purity(planted.model, ns.SplitPlan([]), loader)
    plan = ns.discover(planted.model, [planted.data], ["0"], progress=False)
    with pytest.raises(InvalidArgumentError, match="only"):
        top_k_purity(planted.model, plan, loader[:1], k=500)

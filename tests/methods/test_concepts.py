"""Concept grouping (complete linkage) and plan_split properties: same rho for both merge forms,
exact max_images, one data pass per layer."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import neuronsplit as ns
from neuronsplit.demo import DEMO_LAYER, digits_loader, get_demo_model
from neuronsplit.methods.hesse import (
    RHO_GRID,
    concept_groups,
    group_by_similarity,
    rho_assignment,
    rho_partition,
    scoring,
)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _unit_vectors(angles_deg: list[float]) -> torch.Tensor:
    rad = torch.tensor(angles_deg, dtype=torch.float64) * torch.pi / 180
    return torch.stack([rad.cos(), rad.sin()], 1)


def test_chain_is_not_merged_through_a_middle_class() -> None:
    # A-B and B-C are similar (cos 0.77), A-C is not (cos 0.17 < gamma): connected components
    # of cos >= gamma would put all three into one concept
    v = _unit_vectors([0.0, 40.0, 80.0])
    assert _cos(v[0], v[1]) > 0.5 and _cos(v[1], v[2]) > 0.5 and _cos(v[0], v[2]) < 0.5
    labels = group_by_similarity(v, 0.5)
    assert labels[0] != labels[2]
    assert len(set(labels)) == 2


def test_similar_classes_share_and_dissimilar_ones_do_not() -> None:
    v = _unit_vectors([0.0, 10.0, 90.0, 95.0, 180.0])
    assert group_by_similarity(v, 0.5) == [0, 0, 1, 1, 2]
    assert group_by_similarity(v[:1], 0.5) == [0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-180, 180, allow_nan=False), min_size=2, max_size=8),
    st.floats(-0.5, 0.95),
)
def test_no_two_gamma_polysemantic_classes_share_a_concept(
    angles: list[float], gamma: float
) -> None:
    v = _unit_vectors(angles)
    labels = group_by_similarity(v, gamma)
    for i, j in itertools.combinations(range(len(angles)), 2):
        if labels[i] == labels[j]:
            assert _cos(v[i], v[j]) > gamma - 1e-12


@pytest.fixture(scope="module")
def demo():
    model = get_demo_model()
    loader = digits_loader("train", batch_size=256)
    res = ns.scan(model, loader, [DEMO_LAYER], 10, progress=False)
    units = ns.find_polysemantic(res, DEMO_LAYER)
    return model, loader, res, units


def test_demo_concepts_keep_every_polysemantic_pair_apart(demo) -> None:
    _, _, res, units = demo
    assert units
    for unit in units:
        concept_of = {c: k for k, concept in enumerate(concept_groups(res, unit)) for c in concept}
        assert set(concept_of) == set(unit.classes)
        for pair in unit.pairs:  # every pair listed is gamma-polysemantic (cos < 0.5)
            assert concept_of[pair.class_a] != concept_of[pair.class_b], (unit.unit, pair)


def test_rho_grid_assignment_equals_one_rho_at_a_time() -> None:
    gen = torch.Generator().manual_seed(0)
    for k in (2, 3, 4):
        arvs = torch.randn(k, 40, generator=gen, dtype=torch.float64)
        grid = rho_assignment(arvs, torch.tensor(RHO_GRID, dtype=torch.float64))
        assert grid.shape == (len(RHO_GRID), 40)
        for r, rho in enumerate(RHO_GRID):
            assert torch.equal(grid[r], rho_assignment(arvs, rho))
            groups, shared = rho_partition(arvs, rho)
            for c, group in enumerate(groups):
                assert torch.nonzero(grid[r] == c).flatten().tolist() == list(group)
            assert torch.nonzero(grid[r] == -1).flatten().tolist() == list(shared)


def test_rho_and_assignment_do_not_depend_on_the_merge_form(demo) -> None:
    model, loader, res, units = demo
    overlap = ns.plan_split(units[:2], res, loader, model=model, merge="overlap")
    disjoint = ns.plan_split(units[:2], res, loader, model=model, merge="disjoint")
    assert [i["rho"] for i in overlap.meta["units"]] == [i["rho"] for i in disjoint.meta["units"]]
    assert [i["score"] for i in overlap.meta["units"]] == [
        i["score"] for i in disjoint.meta["units"]
    ]
    a, b = overlap.layer(DEMO_LAYER), disjoint.layer(DEMO_LAYER)
    assert torch.equal(a.assignment, b.assignment) and a.merge != b.merge


class _CountingLoader:
    """A loader that counts how often it is iterated and how many images it hands out."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter(self.loader)


def test_max_images_is_exact_and_one_pass_scores_every_unit_of_a_layer(demo, monkeypatch) -> None:
    model, _, res, units = demo
    seen: list[int] = []
    original = scoring.subunit_score

    def spy(sums: torch.Tensor, concept_of: torch.Tensor, k_count: int):
        seen.append(int(concept_of.numel()))
        return original(sums, concept_of, k_count)

    monkeypatch.setattr(scoring, "subunit_score", spy)
    counting = _CountingLoader(digits_loader("train", batch_size=256))
    plan = ns.plan_split(units[:3], res, counting, model=model, max_images=5)
    assert counting.passes == 1  # three units of one layer: one pass over the data
    per_unit = [len(info["concepts"]) * 5 for info in plan.meta["units"]]
    # one call per rho and unit, each on exactly 5 images per concept (batches hold 256); units
    # are scored in the given order (most polysemantic first), meta lists them by unit index
    assert sorted(seen) == sorted(n for n in per_unit for _ in RHO_GRID)


def test_scoring_pass_stops_after_the_layer() -> None:
    # a head that raises proves that the forward pass ends at the scored layer
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("the head must not run")

    model = nn.Sequential(nn.Linear(4, 2, bias=False), Boom()).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]]))
    x = torch.zeros(8, 4, dtype=torch.float64)
    x[:4, :2] = 1.0
    x[4:, 2:] = 1.0
    y = torch.tensor([0] * 4 + [1] * 4)
    item = scoring.UnitToScore(0, ((0,), (1,)), torch.tensor([[0, 0, 1, 1]]))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    (scores,) = scoring.score_units(model, loader, "0", [item])
    official, _ = scores[0]
    # each concept's subunit carries all of the unit on its images: ratio 2 / 1e-5 per concept
    assert official == pytest.approx(2 * 2.0 / 1e-5)

"""Hesse et al.'s rho rule, its K-way generalisation, rho selection and the planted split."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import neuronsplit as ns
from helpers import planted_unit
from neuronsplit.methods.hesse import RHO_GRID, rho_partition, subunit_score


def official_rule(
    a: list[float], b: list[float], rho: float
) -> tuple[list[int], list[int], list[int]]:
    """Literal transcription of the official if/elif loop (disentangle_channel.py)."""
    s1, s2, s0 = [], [], []
    for j, (aj, bj) in enumerate(zip(a, b, strict=True)):
        if rho * aj > bj:
            s1.append(j)
        elif rho * bj > aj:
            s2.append(j)
        else:
            s0.append(j)
    return s1, s2, s0


@pytest.mark.parametrize(
    ("a", "b", "rho", "expected"),
    [
        # the sign table of methods.md §1.7 at rho = 0.5
        (2.0, 0.5, 0.5, "S1"),  # both positive, a > b / rho
        (0.5, 2.0, 0.5, "S2"),  # both positive, b > a / rho
        (1.0, 1.5, 0.5, "S0"),  # both positive, inside the band
        (1.0, -1.0, 0.5, "S1"),  # a > 0 >= b: always S1
        (-1.0, 1.0, 0.5, "S2"),  # a <= 0 < b: always S2
        (-1.0, 0.0, 0.5, "S2"),
        (0.0, -1.0, 0.5, "S1"),
        (-1.0, -1.2, 0.5, "S1"),  # both negative: |b| > rho |a| -> S1
        (-2.0, -0.5, 0.5, "S2"),  # both negative, |b| <= rho |a| -> S2, never S0
        (-1.2, -1.0, 0.5, "S1"),  # both tests hold: S1 wins by precedence
        (0.0, 0.0, 0.5, "S0"),
        (1.0, 1.0, 1.0, "S0"),  # exact tie at rho = 1 falls through (strict comparisons)
    ],
)
def test_sign_table(a: float, b: float, rho: float, expected: str) -> None:
    (g1, g2), shared = rho_partition(torch.tensor([[a], [b]], dtype=torch.float64), rho)
    got = "S1" if g1 else "S2" if g2 else "S0"
    assert got == expected and len(g1) + len(g2) + len(shared) == 1


def test_two_concepts_match_official_loop_on_random_signed_arvs() -> None:
    gen = torch.Generator().manual_seed(0)
    arvs = torch.randn(2, 300, generator=gen, dtype=torch.float64)
    arvs[:, :20] = 0.0  # exact zeros exercise the tie rules
    for rho in RHO_GRID:
        (g1, g2), shared = rho_partition(arvs, rho)
        s1, s2, s0 = official_rule(arvs[0].tolist(), arvs[1].tolist(), rho)
        assert (list(g1), list(g2), list(shared)) == (s1, s2, s0), rho


def test_k_way_rule_first_passing_concept_wins() -> None:
    gen = torch.Generator().manual_seed(1)
    arvs = torch.randn(3, 200, generator=gen, dtype=torch.float64)
    rho = 0.6
    groups, shared = rho_partition(arvs, rho)
    for j in range(arvs.shape[1]):
        col = arvs[:, j].tolist()
        expected = next(
            (k for k in range(3) if all(rho * col[k] > col[m] for m in range(3) if m != k)), None
        )
        got = next((k for k, g in enumerate(groups) if j in g), None)
        assert got == expected, (j, col)
        assert (got is None) == (j in shared)


def test_magnitude_mode_uses_absolute_values() -> None:
    gen = torch.Generator().manual_seed(2)
    arvs = torch.randn(2, 100, generator=gen, dtype=torch.float64)
    assert rho_partition(arvs, 0.4, mode="magnitude") == rho_partition(arvs.abs(), 0.4)
    assert rho_partition(arvs, 0.4, mode="magnitude") != rho_partition(arvs, 0.4)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="rho must be in"):
        rho_partition(torch.ones(2, 3), 1.5)
    with pytest.raises(ValueError, match="K >= 2"):
        rho_partition(torch.ones(1, 3), 0.5)
    with pytest.raises(ValueError, match="mode"):
        rho_partition(torch.ones(2, 3), 0.5, mode="abs")


def test_score_is_mean_ratio_per_concept() -> None:
    sums = torch.tensor([[4.0, 1.0], [2.0, 0.0], [1.0, 3.0]])
    owners = torch.tensor([0, 0, 1])
    official, robust = subunit_score(sums, owners, 2)
    expected = (4.0 / (1 + 1e-5) + 2.0 / 1e-5) / 2 + 3.0 / (1 + 1e-5)
    assert official == pytest.approx(expected)
    assert robust == pytest.approx(
        torch.tensor([4.0 / (1 + 1e-5), 2.0 / 1e-5]).median().item() + 3.0 / (1 + 1e-5)
    )


# --------------------------------------------------------------------------- planted unit
def planted_setup(n: int = 64):
    """Unit 0 of `fc` sees inputs 0-3 for class 0 and inputs 4-7 for class 1 (nothing shared)."""
    model, x, y = planted_unit(n)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    return model.eval(), loader, x, y


def test_planted_unit_split_recovers_the_groups_exactly() -> None:
    model, loader, x, y = planted_setup()
    res = ns.scan(model, loader, ["fc"], 2, progress=False)
    units = ns.find_polysemantic(res, "fc")
    assert [(u.unit, u.classes) for u in units] == [(0, (0, 1))]
    plan = ns.plan_split(units[0], res, loader, model=model, merge="disjoint")
    (split_spec,) = plan.splits
    assert split_spec.groups == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert split_spec.shared == ()
    # every rho gives the same partition here, so the tie rule must pick the smallest
    assert plan.meta["units"][0]["rho"] == RHO_GRID[0]

    split = ns.apply_plan(model, plan)
    layer = split.get_submodule("fc")
    acts = layer.subunits(x).detach()
    unit = model.fc(x).detach()[:, 0]
    s0, s1 = acts[:, layer.subunit_index(0, 0)], acts[:, layer.subunit_index(0, 1)]
    # on class-0 inputs subunit 0 carries the whole unit and subunit 1 is exactly zero ...
    torch.testing.assert_close(s0[y == 0], unit[y == 0], rtol=1e-12, atol=1e-12)
    assert s1[y == 0].abs().max() == 0.0
    # ... and the reverse on class-1 inputs
    torch.testing.assert_close(s1[y == 1], unit[y == 1], rtol=1e-12, atol=1e-12)
    assert s0[y == 1].abs().max() == 0.0
    torch.testing.assert_close(split(x), model(x), rtol=0, atol=1e-12)


def test_plan_split_needs_data_for_auto_rho() -> None:
    model, loader, _, _ = planted_setup(8)
    res = ns.scan(model, loader, ["fc"], 2, progress=False)
    unit = ns.find_polysemantic(res, "fc")[0]
    with pytest.raises(ValueError, match="rho='auto'"):
        ns.plan_split(unit, res)
    with pytest.raises(ns.InvalidArgumentError, match=r"rho .* must be in \(0, 1\], got 0.0"):
        ns.plan_split(unit, res, rho=0.0)
    fixed = ns.plan_split(unit, res, rho=0.5)
    assert fixed.meta["units"][0]["rho"] == 0.5

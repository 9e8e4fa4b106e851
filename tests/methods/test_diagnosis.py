"""Detection that explains itself: ``units.diagnosis``, the warning, and gamma passed on to
``plan_split``.

The scans are hand-built (exact importance counts, exact ARVs, exact counts of images without
positive relevance), so every number the diagnosis reports is planted and written down here.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import neuronsplit as ns
from helpers import hand_built_scan as _result
from neuronsplit.errors import InvalidArgumentError
from neuronsplit.methods.hesse import (
    ClassPair,
    DetectionDiagnosis,
    PolysemanticUnit,
    PolysemanticUnits,
)
from neuronsplit.stats import ScanResult

DT = torch.float64


def _at(cos: float) -> list[float]:
    """A unit vector whose cosine with ``[1, 0]`` is ``cos``."""
    return [cos, math.sqrt(1.0 - cos * cos)]


#: units 0-2 are relevant to classes (0, 1), (1, 2), (2, 3) at p = 0.75 (3 or 4 of 4 images);
#: unit 3 to class 0 only; units 4 and 5 to none. Their pair cosines: 0.997, 0.998, 0.999.
COSINES = (0.997, 0.998, 0.999)
IMPORTANT = [  # [class][unit]
    [4, 0, 0, 4, 1, 0],
    [3, 4, 0, 0, 1, 0],
    [0, 3, 4, 2, 0, 0],
    [0, 0, 3, 0, 0, 2],
]


def _similar_scan(tau_grid: tuple[float, ...] = (0.03,)) -> ScanResult:
    arvs = {}
    for unit, (cls, cos) in enumerate(zip((0, 1, 2), COSINES, strict=True)):
        arvs[(unit, cls)] = [1.0, 0.0]
        arvs[(unit, cls + 1)] = _at(cos)
    arvs[(3, 0)] = [1.0, 0.0]
    return _result([4, 4, 4, 4], IMPORTANT, arvs, no_positive=[0, 2, 0, 1], tau_grid=tau_grid)


def test_all_cosines_near_one_give_an_empty_result_that_says_why() -> None:
    res = _similar_scan()
    with pytest.warns(UserWarning, match=r"raise gamma above 0\.997") as record:
        units = ns.find_polysemantic(res, tau=0.03, p=0.75, gamma=0.5)
    assert units == [] and isinstance(units, PolysemanticUnits)
    assert record[0].filename == __file__  # the warning points at the caller
    d = units.diagnosis
    assert isinstance(d, DetectionDiagnosis) and d.problem == "empty"
    assert (d.num_units, d.num_found, d.num_candidates, d.num_single) == (6, 0, 3, 1)
    assert (d.num_pairs, d.num_undefined, d.num_images, d.num_classes) == (3, 0, 16, 4)
    # linear-interpolation quantiles of 0.997, 0.998, 0.999
    assert d.cosine_quantiles == pytest.approx((0.997, 0.9975, 0.998, 0.9985, 0.999), abs=1e-12)
    assert d.no_positive == (("L", 3),)
    assert d.max_p == 0.75  # unit 0 is important for 4 of 4 images of class 0, 3 of 4 of class 1
    text = str(d)
    assert "0 of 6 units in 'L'" in text
    assert "relevant to 2+ classes (candidates): 3; to one class: 1; to none: 2" in text
    assert "candidate pair cosines (3 pairs): min 0.997  25% 0.9975  50% 0.998" in text
    assert "75% 0.9985  max 0.999" in text
    assert "images without positive relevance: 3 at 'L' (of 16)" in text
    assert "all 3 candidate units have pair cosines >= 0.997 >= gamma=0.5" in d.advice
    assert str(record[0].message) == text


def test_no_candidates_names_the_largest_p_and_the_smaller_taus() -> None:
    res = _similar_scan(tau_grid=(0.01, 0.03))
    with pytest.warns(UserWarning, match="no unit is relevant to 2\\+ classes"):
        units = ns.find_polysemantic(res, tau=0.03, p=1.0)
    d = units.diagnosis
    assert (d.num_candidates, d.num_single) == (0, 4)  # units 0-3 keep their 4-of-4 class
    assert d.cosine_quantiles == () and d.num_pairs == 0
    # the second-best class shares: units 0-2: 3/4, unit 3: 2/4, unit 4: 1/4, unit 5: 0
    assert d.max_p == 0.75
    assert "the largest p that gives a candidate is 0.75; lower p to it" in d.advice
    assert "lower tau (the scan has [0.01])" in d.advice
    assert ns.find_polysemantic(res, tau=0.03, p=0.75, gamma=1.0).diagnosis.problem is None


def test_most_images_without_positive_relevance_are_named() -> None:
    res = _result([2, 2], [[0, 0], [0, 0]], {(0, 0): [1.0]}, no_positive=[2, 1])
    with pytest.warns(UserWarning, match="no unit is important for images of two classes"):
        units = ns.find_polysemantic(res)
    assert units.diagnosis.max_p == 0.0
    assert "3 of 4 images had no positive relevance at a searched layer" in units.diagnosis.advice


def test_negative_cosines_advise_include_negative() -> None:
    res = _result([2, 2], [[2], [2]], {(0, 0): [1.0, 0.0], (0, 1): [-1.0, 0.2]})
    with pytest.warns(UserWarning, match="pass include_negative=True"):
        assert ns.find_polysemantic(res) == []
    found = ns.find_polysemantic(res, include_negative=True)
    assert len(found) == 1 and found.diagnosis.problem is None


def test_nearly_every_unit_flagged_warns_and_a_normal_result_does_not() -> None:
    n = 10
    important = [[3] * n, [3] * n]
    arvs = {(c, 0): [1.0, 0.0] for c in range(n)} | {(c, 1): _at(0.1 * c) for c in range(n)}
    res = _result([3, 3], important, arvs)
    with pytest.warns(UserWarning, match="10 of 10 units are flagged: lower gamma"):
        units = ns.find_polysemantic(res, gamma=0.95)
    assert units.diagnosis.problem == "nearly_all" and len(units) == n
    # cosines 0.0 .. 0.9: the 25 % quantile is 0.225
    assert "a quarter of the pair cosines are below 0.225" in units.diagnosis.advice
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 5 of 10: nothing to warn about
        units = ns.find_polysemantic(res, gamma=0.45)
    assert len(units) == 5 and units.diagnosis.problem is None and units.diagnosis.advice == ""
    assert units[:2] == list(units)[:2]  # still an ordinary list


def test_units_remember_their_parameters_and_plan_split_inherits_gamma() -> None:
    res = _similar_scan()
    units = ns.find_polysemantic(res, tau=0.03, p=0.75, gamma=1.0)
    assert [u.unit for u in units] == [0, 1, 2]
    u = units[0]
    assert (u.tau, u.p, u.gamma, u.include_negative) == (0.03, 0.75, 1.0, False)
    assert repr(u) == (
        "PolysemanticUnit('L', 0, classes=(0, 1), 1 pairs, min_cosine=0.997, tau=0.03, p=0.75, "
        "gamma=1.0)"
    )
    # equality is about the unit, not about how it was found
    assert u == PolysemanticUnit("L", 0, (0, 1), (ClassPair(0, 1, u.pairs[0].cosine),))
    plan = ns.plan_split(u, res, rho=0.5)  # gamma=1.0 from find_polysemantic: two concepts
    assert plan.meta["units"][0]["concepts"] == ((0,), (1,))
    assert plan.meta["units"][0]["gamma"] == 1.0
    with pytest.raises(InvalidArgumentError) as err:  # an explicit gamma wins
        ns.plan_split(u, res, rho=0.5, gamma=0.5)
    message = str(err.value)
    assert "single concept ((0, 1),) at gamma=0.5 (passed to plan_split)" in message
    assert "lowest ARV cosine 0.997); pass gamma= above 0.997 to plan_split" in message


def test_a_hand_built_unit_uses_the_default_gamma_and_says_so() -> None:
    res = _similar_scan()
    unit = PolysemanticUnit("L", 1, (1, 2), (ClassPair(1, 2, 0.998),))
    assert unit.gamma is None
    with pytest.raises(InvalidArgumentError, match=r"at gamma=0\.5 \(the default\)"):
        ns.plan_split(unit, res, rho=0.5)
    assert ns.plan_split(unit, res, rho=0.5, gamma=0.9995).meta["units"][0]["gamma"] == 0.9995


def test_the_advised_p_really_gives_a_candidate() -> None:
    # 2 of 3 images in each class: the largest p is 2/3; "0.6667" would need 3 of 3 again
    res = _result([3, 3], [[2], [2]], {(0, 0): [1.0, 0.0], (0, 1): [0.0, 1.0]})
    with pytest.warns(UserWarning):
        empty = ns.find_polysemantic(res, p=0.75)
    assert "the largest p that gives a candidate is 0.6666;" in empty.diagnosis.advice
    assert len(ns.find_polysemantic(res, p=0.6666)) == 1

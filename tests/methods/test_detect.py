"""Hesse et al.'s detection: tau/p candidates, ARV cosines, gamma pairs, ranking.

Two kinds of tests:

* hand-built :class:`ScanResult` objects whose counts and ARVs are chosen exactly, to pin down the
  semantics of ``tau``, ``p``, ``gamma``, ``cos_low``, ``include_negative`` and ``classes``;
* real scans of models with a planted polysemantic unit, and of the demo model, where every
  reported cosine is recomputed independently with autograd (per-image gradient x input).
"""

from __future__ import annotations

import math

import pytest
import torch
from captum.attr import LayerGradientXActivation
from torch import nn

import neuronsplit as ns
from neuronsplit.demo import digits_loader, get_demo_model, load_digits
from neuronsplit.errors import EmptyClassError, UnknownLayerError
from neuronsplit.methods.hesse import pairs_table, relevant_classes
from neuronsplit.stats import LayerStats, ScanResult

DT = torch.float64


# --------------------------------------------------------------------------- hand-built results


def hand_result(
    class_counts: list[int],
    important: list[list[int]],
    arvs: dict[tuple[int, int], list[float]],
    *,
    layer: str = "L",
    tau_grid: tuple[float, ...] = (0.03,),
) -> ScanResult:
    """A one-layer result with exact per-class counts and exact ARVs.

    ``important[t][c]`` is the count of class-t images making unit c important (same at every
    tau). ``arvs[(c, t)]`` is the desired ARV of unit c for class t (d numbers). Unit c reads its
    own block of d inputs with weight 1, so ARV(c, t) = input_sums[t, block c] / N_t exactly.
    """
    n_cls, n_units = len(class_counts), len(important[0])
    d = len(next(iter(arvs.values()))) if arvs else 1
    weight = torch.zeros(n_units, n_units * d, 1, dtype=DT)
    input_sums = torch.zeros(n_cls, n_units * d, 1, dtype=DT)
    for c in range(n_units):
        weight[c, c * d : (c + 1) * d, 0] = 1.0
    for (c, t), vec in arvs.items():
        input_sums[t, c * d : (c + 1) * d, 0] = torch.tensor(vec, dtype=DT) * class_counts[t]
    counts = torch.tensor(important, dtype=torch.int32).unsqueeze(0).repeat(len(tau_grid), 1, 1)
    stats = LayerStats.from_tensors(
        layer, "linear", weight, counts, torch.zeros(n_cls, n_units, dtype=DT), input_sums,
        taus=tau_grid,
    )  # fmt: skip
    return ScanResult({layer: stats}, torch.tensor(class_counts), tau_grid)


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.mark.parametrize(
    ("n", "p", "count", "relevant"),
    [
        (4, 0.75, 3, True),  # count == p * N counts
        (4, 0.75, 2, False),
        (100, 0.55, 55, True),  # 0.55 * 100 == 55.00000000000001 in floating point
        (100, 0.55, 54, False),
        (25, 0.28, 7, True),  # 0.28 * 25 == 7.000000000000001 as well
        (10, 0.7, 7, True),
        (10, 0.7, 6, False),
        (5, 0.6, 3, True),
        (5, 0.61, 3, False),
        (3, 1.0, 3, True),
        (3, 1.0, 2, False),
        (1400, 0.75, 1050, True),
        (1400, 0.75, 1049, False),
    ],
)
def test_p_boundary_is_inclusive(n: int, p: float, count: int, relevant: bool) -> None:
    # unit 0 is important for `count` images of class 0 and for all images of class 1
    res = hand_result([n, n], [[count], [n]], {(0, 0): [1.0, 0.0], (0, 1): [0.0, 1.0]})
    rel = relevant_classes(res, "L", tau=0.03, p=p)
    assert rel.tolist() == [[relevant], [True]]
    units = ns.find_polysemantic(res, tau=0.03, p=p)
    assert [(u.unit, u.classes) for u in units] == ([(0, (0, 1))] if relevant else [])


def test_empty_classes_are_never_relevant() -> None:
    # class 2 has no images (count 0 >= p * 0 would hold without the emptiness check)
    res = hand_result(
        [4, 4, 0],
        [[4, 0], [4, 4], [0, 0]],
        {
            (0, 0): [1.0, 0.0],
            (0, 1): [0.0, 1.0],
            (0, 2): [1.0, 1.0],
            (1, 0): [1.0, 0.0],
            (1, 1): [0.0, 1.0],
            (1, 2): [0.0, 0.0],
        },
    )
    rel = relevant_classes(res, "L", tau=0.03, p=0.01)
    assert rel[2].tolist() == [False, False]
    assert rel.tolist() == [[True, False], [True, True], [False, False]]
    units = ns.find_polysemantic(res, p=0.01)
    assert [(u.unit, u.relevant, u.classes) for u in units] == [(0, (0, 1), (0, 1))]
    assert res.empty_classes == (2,)


def test_p_out_of_range_raises() -> None:
    res = hand_result([2, 2], [[2], [2]], {(0, 0): [1.0], (0, 1): [1.0]})
    for p in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="p must be"):
            ns.find_polysemantic(res, p=p)


def test_tau_selects_its_slice_of_the_grid() -> None:
    res = hand_result(
        [4, 4], [[4], [4]], {(0, 0): [1.0, 0.0], (0, 1): [0.0, 1.0]}, tau_grid=(0.03, 0.05)
    )
    res.layer("L").important[1, 1, 0] = 1  # at tau = 0.05 class 1 is no longer relevant
    assert len(ns.find_polysemantic(res, tau=0.03)) == 1
    assert ns.find_polysemantic(res, tau=0.05) == []
    with pytest.raises(ValueError, match="tau grid"):
        ns.find_polysemantic(res, tau=0.04)


def test_negative_cosines_dropped_by_default_kept_with_include_negative() -> None:
    a, b = [1.0, 0.0], [-0.6, 0.8]  # cosine -0.6
    res = hand_result([4, 4], [[4], [4]], {(0, 0): a, (0, 1): b})
    assert ns.find_polysemantic(res) == []
    (unit,) = ns.find_polysemantic(res, include_negative=True)
    assert unit.top_pair.cosine == pytest.approx(-0.6, abs=1e-12)
    assert len(ns.find_polysemantic(res, cos_low=-0.7)) == 1
    assert ns.find_polysemantic(res, cos_low=-0.5) == []
    # include_negative lifts any lower bound
    assert len(ns.find_polysemantic(res, cos_low=0.3, include_negative=True)) == 1


def test_gamma_is_exclusive_and_cos_low_inclusive() -> None:
    # exact cosines: [1,1,1,1].[1,0,0,0] / (2 * 1) = 0.5 ; [1,0,0,0].[0,1,0,0] = 0
    half = hand_result([4, 4], [[4], [4]], {(0, 0): [1.0, 1.0, 1.0, 1.0], (0, 1): [1, 0, 0, 0]})
    assert ns.find_polysemantic(half, gamma=0.5) == []
    (unit,) = ns.find_polysemantic(half, gamma=0.5 + 1e-9)
    assert unit.min_cosine == 0.5
    zero = hand_result([4, 4], [[4], [4]], {(0, 0): [1.0, 0, 0, 0], (0, 1): [0, 1.0, 0, 0]})
    (unit,) = ns.find_polysemantic(zero)
    assert unit.min_cosine == 0.0
    assert ns.find_polysemantic(zero, cos_low=1e-9) == []


def test_zero_arv_pairs_are_skipped() -> None:
    res = hand_result(
        [4, 4, 4],
        [[4], [4], [4]],
        {(0, 0): [1.0, 0.0], (0, 1): [0.0, 0.0], (0, 2): [0.0, 1.0]},
    )
    (unit,) = ns.find_polysemantic(res)
    assert unit.relevant == (0, 1, 2)
    assert [(p.class_a, p.class_b) for p in unit.pairs] == [(0, 2)]


THREE_CLASS_ARVS = {
    (0, 0): [1.0, 0.0, 0.0],
    (0, 1): [0.0, 1.0, 0.0],
    (0, 2): [0.3, 0.0, 1.0],
}


def test_classes_restriction() -> None:
    res = hand_result([5, 5, 5, 0], [[5], [5], [5], [0]], THREE_CLASS_ARVS)
    (unit,) = ns.find_polysemantic(res)
    assert unit.relevant == (0, 1, 2)
    pairs = [(p.class_a, p.class_b) for p in unit.pairs]
    assert pairs == [(0, 1), (1, 2), (0, 2)]  # cosines 0, 0, 0.287 (ascending)
    (restricted,) = ns.find_polysemantic(res, classes=[1, 2])
    assert restricted.relevant == (1, 2)
    assert [(p.class_a, p.class_b) for p in restricted.pairs] == [(1, 2)]
    (other,) = ns.find_polysemantic(res, classes=[0, 2])
    assert other.top_pair.cosine == pytest.approx(_cos([1, 0, 0], [0.3, 0, 1]), abs=1e-12)
    assert ns.find_polysemantic(res, classes=[0]) == []
    with pytest.raises(EmptyClassError, match="class 3"):
        ns.find_polysemantic(res, classes=[0, 3])
    with pytest.raises(ns.InvalidArgumentError, match="classes entry must be <= 3, got 7"):
        ns.find_polysemantic(res, classes=[7])


def test_no_images_at_all_raises_empty_class_error() -> None:
    res = hand_result([0, 0], [[0], [0]], {(0, 0): [1.0], (0, 1): [1.0]})
    with pytest.raises(EmptyClassError):
        ns.find_polysemantic(res)


def test_ordering_lowest_cosine_first_and_pairs_table_descending() -> None:
    # unit c's pair cosine is cos_c; unit 3 is relevant to one class only
    cosines = {0: 0.3, 1: 0.1, 2: 0.2}
    arvs = {}
    for c, cos in cosines.items():
        arvs[(c, 0)] = [1.0, 0.0]
        arvs[(c, 1)] = [cos, math.sqrt(1 - cos * cos)]
    arvs[(3, 0)], arvs[(3, 1)] = [1.0, 0.0], [0.0, 1.0]
    res = hand_result([4, 4], [[4, 4, 4, 4], [4, 4, 4, 0]], arvs)
    units = ns.find_polysemantic(res)
    assert [u.unit for u in units] == [1, 2, 0]
    for u in units:
        assert u.min_cosine == pytest.approx(cosines[u.unit], abs=1e-12)
        assert u.top_pair is u.pairs[0]
    table = pairs_table(units)
    assert [row["unit"] for row in table] == [0, 2, 1]
    assert [row["cosine"] for row in table] == sorted((r["cosine"] for r in table), reverse=True)
    assert set(table[0]) == {"layer", "unit", "class_a", "class_b", "cosine"}


def test_pairs_within_a_unit_are_ascending_and_table_spans_units() -> None:
    # one unit, four relevant classes, random-ish but fixed ARVs: every pair is scored
    gen = torch.Generator().manual_seed(3)
    vecs = torch.randn(4, 6, generator=gen, dtype=DT)
    arvs = {(0, t): vecs[t].tolist() for t in range(4)}
    res = hand_result([3, 3, 3, 3], [[3], [3], [3], [3]], arvs)
    (unit,) = ns.find_polysemantic(res, gamma=1.0, include_negative=True)
    expected = {
        (a, b): _cos(vecs[a].tolist(), vecs[b].tolist()) for a in range(4) for b in range(a + 1, 4)
    }
    got = {(p.class_a, p.class_b): p.cosine for p in unit.pairs}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12)
    assert [p.cosine for p in unit.pairs] == sorted(p.cosine for p in unit.pairs)
    assert unit.classes == (0, 1, 2, 3)


def test_layers_argument_and_tie_break_by_layer_order() -> None:
    one = hand_result([4, 4], [[4], [4]], {(0, 0): [1.0, 0.0], (0, 1): [0.0, 1.0]}, layer="B")
    two = hand_result([4, 4], [[4], [4]], {(0, 0): [1.0, 0.0], (0, 1): [0.0, 1.0]}, layer="A")
    res = ScanResult({"B": one.layer("B"), "A": two.layer("A")}, one.class_counts, one.tau_grid)
    assert [u.layer for u in ns.find_polysemantic(res)] == ["B", "A"]  # equal cosine: scan order
    assert [u.layer for u in ns.find_polysemantic(res, layers="A")] == ["A"]
    assert [u.layer for u in ns.find_polysemantic(res, layers=["A", "B"])] == ["A", "B"]
    with pytest.raises(UnknownLayerError, match="'A'"):
        ns.find_polysemantic(res, layers=["C"])


def test_conv_taps_enter_the_arv() -> None:
    """ARV_j = sum_k W[c, j, k] S[t, j, k] / N_t with several kernel taps (hand einsum)."""
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(3, 4, 9, generator=gen, dtype=DT)
    sums = torch.randn(2, 4, 9, generator=gen, dtype=DT)
    counts = torch.tensor([2, 5])
    important = torch.tensor([[2, 2, 2], [5, 5, 5]], dtype=torch.int32).unsqueeze(0)
    stats = LayerStats.from_tensors(
        "conv", "conv2d", weight, important, torch.zeros(2, 3, dtype=DT), sums, taus=(0.03,)
    )
    res = ScanResult({"conv": stats}, counts, (0.03,))
    units = ns.find_polysemantic(res, gamma=1.0, include_negative=True)
    assert sorted(u.unit for u in units) == [0, 1, 2]
    for u in units:
        w, s = weight[u.unit].tolist(), sums.tolist()
        a = [sum(w[j][k] * s[0][j][k] for k in range(9)) / 2 for j in range(4)]
        b = [sum(w[j][k] * s[1][j][k] for k in range(9)) / 5 for j in range(4)]
        assert u.top_pair.cosine == pytest.approx(_cos(a, b), abs=1e-12)
        torch.testing.assert_close(res.arv("conv", u.unit, 1), torch.tensor(b, dtype=DT))


# --------------------------------------------------------------------------- planted unit


class Planted(nn.Module):
    """8 features -> lin (2 units) -> ReLU -> fixed head (3 classes).

    * unit 0 reads all 8 features; class 0 images light up features 0-3 and class 1 images
      features 4-7, and the head uses unit 0 for classes 0 and 1: polysemantic.
    * unit 1 reads only features 0-3; the head uses it for classes 0 and 2, whose images both
      drive it through features 0-3: monosemantic (relevant to 2 classes, high ARV cosine).
    """

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 2)
        self.act = nn.ReLU()
        self.head = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0] * 8, [1.0] * 4 + [0.0] * 4]))
            self.lin.bias.fill_(0.1)
            self.head.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.lin(x)))


def _planted_data(per_class: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    xs, ys = [], []
    profile2 = torch.tensor([1.5, 0.4, 1.0, 0.3], dtype=DT)
    for cls in range(3):
        x = 0.05 * torch.rand(per_class, 8, generator=gen, dtype=DT)  # small background
        bump = 0.5 + torch.rand(per_class, 4, generator=gen, dtype=DT)
        if cls == 0:
            x[:, :4] += bump
        elif cls == 1:
            x[:, 4:] += bump
        else:
            x[:, :4] += profile2 * (0.8 + 0.4 * torch.rand(per_class, 1, generator=gen, dtype=DT))
        xs.append(x)
        ys.append(torch.full((per_class,), cls))
    perm = torch.randperm(3 * per_class, generator=gen)
    return torch.cat(xs)[perm], torch.cat(ys)[perm]


def _autograd_arvs(layer: nn.Linear, h: torch.Tensor, y: torch.Tensor, unit: int, n_cls: int):
    """Per-image gradient x input of ``layer``'s unit w.r.t. its input, averaged per class."""
    hd = h.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(layer(hd)[:, unit].sum(), hd)
    contrib = (grad * hd).detach().to(DT)
    return torch.stack([contrib[y == t].mean(0) for t in range(n_cls)])


def _cos_t(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_planted_polysemantic_unit_is_found_and_monosemantic_one_is_not() -> None:
    model = Planted().to(DT).eval()
    x, y = _planted_data()
    loader = [(x[i : i + 16], y[i : i + 16]) for i in range(0, len(x), 16)]
    res = ns.scan(model, loader, ["lin"], 3, progress=False)

    # independent expectations from the construction (autograd per image)
    arv0 = _autograd_arvs(model.lin, x, y, 0, 3)
    arv1 = _autograd_arvs(model.lin, x, y, 1, 3)
    expected_cos0 = _cos_t(arv0[0], arv0[1])
    expected_cos1 = _cos_t(arv1[0], arv1[2])
    assert expected_cos0 < 0.5 and expected_cos1 >= 0.5  # the plant is what we think it is

    rel = relevant_classes(res, "lin")
    assert rel.tolist() == [[True, True], [True, False], [False, True]]

    units = ns.find_polysemantic(res, tau=0.03, p=0.75, gamma=0.5)
    assert [u.unit for u in units] == [0]
    (unit,) = units
    assert unit.layer == "lin" and unit.relevant == (0, 1) and unit.classes == (0, 1)
    assert unit.top_pair.cosine == pytest.approx(expected_cos0, rel=1e-10, abs=1e-12)
    assert unit.top_pair.cosine < 0.5
    # unit 1 shows up only once gamma exceeds its (high) cosine
    wide = ns.find_polysemantic(res, gamma=0.9999)
    assert [u.unit for u in wide] == [0, 1]
    assert wide[1].top_pair.cosine == pytest.approx(expected_cos1, rel=1e-10)
    for t in range(3):
        torch.testing.assert_close(res.arv("lin", 0, t), arv0[t], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- demo model


@pytest.fixture(scope="module")
def demo_scan():
    model = get_demo_model()
    res = ns.scan(model, digits_loader("train"), ["fc2"], 10, progress=False)
    return model, res


def test_demo_model_has_gamma_polysemantic_units_that_check_out(demo_scan) -> None:
    model, res = demo_scan
    units = ns.find_polysemantic(res, tau=0.03, p=0.75, gamma=0.5)
    assert len(units) >= 1
    assert res.num_samples == 1400

    data = load_digits("train")
    with torch.no_grad():
        h = model.hidden(data.images)
    # independent relevance (Captum) -> importance at tau=0.03 -> relevant classes (p=0.75)
    attr = LayerGradientXActivation(model, model.fc2).attribute(data.images, target=data.labels)
    rel = attr.detach().to(DT)
    important = rel >= 0.03 * rel.clamp(min=0).sum(1, keepdim=True)
    n_t = torch.bincount(data.labels, minlength=10)
    counts = torch.stack([important[data.labels == t].sum(0) for t in range(10)])
    relevant = counts >= torch.ceil(0.75 * n_t - 1e-9).unsqueeze(1)

    for unit in units:
        arvs = _autograd_arvs(model.fc2, h, data.labels, unit.unit, 10)
        assert unit.relevant == tuple(torch.nonzero(relevant[:, unit.unit]).flatten().tolist())
        assert unit.pairs
        for pair in unit.pairs:
            expected = _cos_t(arvs[pair.class_a], arvs[pair.class_b])
            assert 0.0 <= pair.cosine < 0.5
            assert pair.cosine == pytest.approx(expected, abs=1e-5)

"""The statistic objects: update, merge and selection against direct computations.

``TopN`` is checked against a brute-force sort of every value (ties to the smaller sample
index) and must not depend on batch order, batch sizes or how the data is split for merging.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from neuronsplit.stats import (
    ClassCounts,
    ClassSums,
    LayerBatch,
    Statistic,
    TapSums,
    TauCounts,
    TopN,
)
from neuronsplit.stats.statistics import STATISTIC_TYPES, NoPositiveCounts

N_SAMPLES, UNITS, CLASSES, INPUTS, TAPS = 37, 4, 3, 5, 2
TAUS = (0.05, 0.2, 0.5)


def _data(seed: int = 0, ties: bool = True) -> dict[str, Tensor]:
    """Per-sample tensors of a whole data set; small integer values give many ties."""
    gen = torch.Generator().manual_seed(seed)
    if ties:
        act = torch.randint(-3, 4, (N_SAMPLES, UNITS), generator=gen).float()
        rel = torch.randint(-2, 3, (N_SAMPLES, UNITS), generator=gen).float()
    else:
        act = torch.randn(N_SAMPLES, UNITS, generator=gen)
        rel = torch.randn(N_SAMPLES, UNITS, generator=gen)
    return {
        "targets": torch.randint(0, CLASSES, (N_SAMPLES,), generator=gen),
        "index": torch.randperm(N_SAMPLES, generator=gen) + 100,  # dataset indices, any order
        "relevance": rel,
        "taps": torch.randn(N_SAMPLES, INPUTS, TAPS, generator=gen, dtype=torch.float64),
        "act_max": act,
        "act_pos": torch.randint(0, 49, (N_SAMPLES, UNITS), generator=gen),
        "rel_pos": torch.randint(0, 49, (N_SAMPLES, UNITS), generator=gen),
    }


def _batch(data: dict[str, Tensor], rows: Tensor | slice) -> LayerBatch:
    return LayerBatch(**{k: v[rows] for k, v in data.items()})


def _split(n: int, sizes: list[int]) -> list[slice]:
    cuts, start = [], 0
    while start < n:
        for size in sizes:
            if start >= n:
                break
            cuts.append(slice(start, min(n, start + size)))
            start += size
    return cuts


def _fill(stat: Statistic, data: dict[str, Tensor], parts: list[slice]) -> Statistic:
    for part in parts:
        stat.update(_batch(data, part))
    return stat


def _brute_force_top(
    values: Tensor, index: Tensor, position: Tensor, n: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per unit, sort all samples by (value descending, index ascending) and keep ``n``."""
    units = values.shape[1]
    out_v = torch.full((units, n), -torch.inf, dtype=torch.float64)
    out_i = torch.full((units, n), -1, dtype=torch.int64)
    out_p = torch.zeros(units, n, dtype=torch.int64)
    for u in range(units):
        rows = sorted(range(values.shape[0]), key=lambda b: (-float(values[b, u]), int(index[b])))
        for slot, b in enumerate(rows[:n]):
            out_v[u, slot] = float(values[b, u])
            out_i[u, slot] = int(index[b])
            out_p[u, slot] = int(position[b, u])
    return out_v, out_i, out_p


def _assert_topn(stat: TopN, expected: tuple[Tensor, Tensor, Tensor]) -> None:
    for got, want in zip((stat.values, stat.index, stat.position), expected, strict=True):
        assert got.dtype == want.dtype
        assert torch.equal(got, want), (got, want)


# --------------------------------------------------------------------------- TopN


@pytest.mark.parametrize("by", ["activation", "relevance"])
@pytest.mark.parametrize("n", [1, 5, 50])  # 50 > samples: empty slots stay -inf / -1 / 0
def test_topn_keeps_the_n_largest_per_unit(by: str, n: int) -> None:
    data = _data()
    stat = _fill(TopN.empty(UNITS, n, by), data, _split(N_SAMPLES, [6]))
    values = data["act_max"] if by == "activation" else data["relevance"]
    position = data["act_pos"] if by == "activation" else data["rel_pos"]
    _assert_topn(stat, _brute_force_top(values, data["index"], position, n))


def test_topn_ties_go_to_the_smaller_sample_index() -> None:
    data = _data()
    data["act_max"] = torch.ones(N_SAMPLES, UNITS)
    stat = _fill(TopN.empty(UNITS, 4, "activation"), data, _split(N_SAMPLES, [5]))
    smallest = torch.sort(data["index"]).values[:4]
    assert torch.equal(stat.index, smallest.expand(UNITS, -1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topn_does_not_depend_on_batch_order_or_sizes(seed: int) -> None:
    data = _data(seed)
    reference = _fill(TopN.empty(UNITS, 7, "activation"), data, _split(N_SAMPLES, [N_SAMPLES]))
    gen = torch.Generator().manual_seed(seed)
    for sizes in ([1], [4], [5, 2, 9], [13]):
        parts = _split(N_SAMPLES, sizes)
        order = torch.randperm(len(parts), generator=gen).tolist()
        shuffled = [parts[i] for i in order]
        for arrangement in (parts, shuffled, parts[::-1]):
            stat = _fill(TopN.empty(UNITS, 7, "activation"), data, arrangement)
            assert stat.equal(reference), sizes


@pytest.mark.parametrize("cut", [0, 1, 18, 36, 37])
def test_topn_merge_of_two_parts_equals_the_whole(cut: int) -> None:
    data = _data(3)
    whole = _fill(TopN.empty(UNITS, 6, "relevance"), data, _split(N_SAMPLES, [4]))
    first = _fill(TopN.empty(UNITS, 6, "relevance"), data, _split(cut, [4]))
    rest = [slice(s.start + cut, s.stop + cut) for s in _split(N_SAMPLES - cut, [3])]
    second = _fill(TopN.empty(UNITS, 6, "relevance"), data, rest)
    before = [t.clone() for t in first.tensors.values()]
    assert first.merge(second).equal(whole)
    assert second.merge(first).equal(whole)
    assert all(torch.equal(a, b) for a, b in zip(before, first.tensors.values(), strict=True))


def test_topn_top_returns_the_filled_slots_largest_first() -> None:
    data = _data(ties=False)
    rows = slice(0, 3)
    stat = _fill(TopN.empty(UNITS, 5, "activation"), data, [rows])
    expected = _brute_force_top(
        data["act_max"][rows], data["index"][rows], data["act_pos"][rows], 3
    )
    for unit in range(UNITS):
        values, index, position = stat.top(unit)
        assert values.shape == (3,)  # two empty slots are left out
        assert torch.equal(values, expected[0][unit])
        assert torch.equal(index, expected[1][unit])
        assert torch.equal(position, expected[2][unit])
        v2, i2, p2 = stat.top(unit, 2)
        assert torch.equal(v2, values[:2]) and torch.equal(i2, index[:2])
        assert torch.equal(p2, position[:2])
        assert bool((values[:-1] >= values[1:]).all())
    assert TopN.empty(UNITS, 3, "activation").top(0)[0].numel() == 0


def test_topn_validates_by_and_needs_the_maxima() -> None:
    with pytest.raises(ValueError, match="activation"):
        TopN.empty(UNITS, 3, "gradient")
    data = _data()
    batch = LayerBatch(data["targets"], data["index"], data["relevance"], data["taps"])
    with pytest.raises(ValueError, match="maxima"):
        TopN.empty(UNITS, 3, "activation").update(batch)
    assert TopN.empty(UNITS, 3, "relevance").n == 3


# --------------------------------------------------------------------------- summed statistics


def _direct_tau_counts(data: dict[str, Tensor]) -> Tensor:
    counts = torch.zeros(len(TAUS), CLASSES, UNITS, dtype=torch.int32)
    for b in range(N_SAMPLES):
        rel = data["relevance"][b].double()
        total = float(rel.clamp(min=0).sum())
        if total == 0:  # no positive relevance: important for no unit
            continue
        for t, tau in enumerate(TAUS):
            for c in range(UNITS):
                if float(rel[c]) >= tau * total:
                    counts[t, int(data["targets"][b]), c] += 1
    return counts


def _direct(data: dict[str, Tensor]) -> dict[str, Statistic]:
    targets = data["targets"]
    class_sums = torch.zeros(CLASSES, UNITS, dtype=torch.float64)
    tap_sums = torch.zeros(CLASSES, INPUTS, TAPS, dtype=torch.float64)
    class_counts = torch.zeros(CLASSES, dtype=torch.int64)
    no_positive = torch.zeros(CLASSES, dtype=torch.int64)
    for b in range(N_SAMPLES):
        t = int(targets[b])
        no_positive[t] += int(bool((data["relevance"][b] <= 0).all()))
        class_sums[t] += data["relevance"][b].double()
        tap_sums[t] += data["taps"][b]
        class_counts[t] += 1
    return {
        "counts": ClassCounts(counts=class_counts),
        "tau": TauCounts(counts=_direct_tau_counts(data), taus=TAUS),
        "class_sums": ClassSums(sums=class_sums),
        "tap_sums": TapSums(sums=tap_sums),
        "no_positive": NoPositiveCounts(counts=no_positive),
    }


def _empty() -> dict[str, Statistic]:
    return {
        "counts": ClassCounts.zeros(CLASSES),
        "tau": TauCounts.zeros(TAUS, CLASSES, UNITS),
        "class_sums": ClassSums.zeros(CLASSES, UNITS),
        "tap_sums": TapSums.zeros(CLASSES, INPUTS, TAPS),
        "no_positive": NoPositiveCounts.zeros(CLASSES),
    }


@pytest.mark.parametrize("ties", [True, False])
def test_summed_statistics_update_and_merge_equal_a_direct_computation(ties: bool) -> None:
    data = _data(4, ties=ties)
    data["relevance"][0] = torch.tensor([1.0, 0.0, -1.0, 0.0])  # on the threshold at tau * 1
    data["relevance"][1] = 0.0  # a dead layer: no positive relevance, important for no unit
    data["relevance"][2] = torch.tensor([-1.0, -2.0, 0.0, -0.5])  # none positive either
    expected = _direct(data)
    whole, first, second = _empty(), _empty(), _empty()
    for key in expected:
        _fill(whole[key], data, _split(N_SAMPLES, [5, 3]))
        _fill(first[key], data, _split(20, [6]))
        _fill(second[key], data, [slice(20, 29), slice(29, N_SAMPLES)])
    for key, want in expected.items():
        for got in (whole[key], first[key].merge(second[key]), second[key].merge(first[key])):
            assert type(got) is type(want)
            for field in want.fields:
                a, b = got.tensors[field], want.tensors[field]
                assert a.dtype == b.dtype, (key, field)
                if a.is_floating_point():
                    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
                else:
                    assert torch.equal(a, b), key
    assert whole["tau"].taus == TAUS and first["tau"].merge(second["tau"]).taus == TAUS


def test_class_counts_add_counts_targets() -> None:
    counts = ClassCounts.zeros(4)
    counts.add(torch.tensor([3, 0, 3, 3]))
    assert torch.equal(counts.counts, torch.tensor([1, 0, 0, 3]))
    assert counts.counts.dtype == torch.int64


def test_tau_counts_compare_against_the_positive_total() -> None:
    stat = TauCounts.zeros((0.25, 0.5), 1, 3)
    # positive total 4: tau 0.25 -> threshold 1, tau 0.5 -> threshold 2
    relevance = torch.tensor([[1.0, 3.0, -5.0]])
    stat.update(LayerBatch(torch.tensor([0]), torch.tensor([0]), relevance, torch.zeros(1, 1, 1)))
    assert torch.equal(stat.counts, torch.tensor([[[1, 1, 0]], [[0, 1, 0]]], dtype=torch.int32))


@pytest.mark.parametrize(
    "relevance",
    [
        pytest.param([0.0, 0.0, 0.0], id="all_zero"),
        pytest.param([-1.0, 0.0, -3.0], id="none_positive"),
        pytest.param([-0.0, -1e-30, 0.0], id="negative_zero_and_tiny_negative"),
    ],
)
def test_images_without_positive_relevance_are_important_for_no_unit(
    relevance: list[float],
) -> None:
    # the official rule R_c >= tau * 0 would mark every unit with R_c = 0 as important
    taus = (0.01, 0.5)
    tau_counts, none = TauCounts.zeros(taus, 2, 3), NoPositiveCounts.zeros(2)
    rel = torch.tensor([relevance, [1.0, 0.0, 0.0], relevance])
    batch = LayerBatch(torch.tensor([1, 1, 0]), torch.arange(3), rel, torch.zeros(3, 1, 1))
    for stat in (tau_counts, none):
        stat.update(batch)
    want = torch.zeros(2, 2, 3, dtype=torch.int32)
    want[:, 1, 0] = 1  # only the image with positive relevance counts, for unit 0
    assert torch.equal(tau_counts.counts, want)
    assert torch.equal(none.counts, torch.tensor([1, 1]))
    assert none.counts.dtype == torch.int64 and none.nbytes() == 2 * 8


# --------------------------------------------------------------------------- Statistic API


def _examples() -> list[Statistic]:
    data = _data(5)
    parts = _split(N_SAMPLES, [8])
    stats: list[Statistic] = list(_empty().values())
    stats += [TopN.empty(UNITS, 4, "activation"), TopN.empty(UNITS, 4, "relevance")]
    for stat in stats:
        _fill(stat, data, parts)
    return stats


def test_to_makes_an_equal_copy() -> None:
    for stat in _examples():
        copy = stat.to("cpu")
        assert type(copy) is type(stat) and copy.spec() == stat.spec()
        assert copy.equal(stat) and stat.equal(copy)
        assert all(t.device.type == "cpu" for t in copy.tensors.values())


@pytest.mark.parametrize(
    "which",
    [
        pytest.param(0, id="ClassCounts"),
        pytest.param(1, id="TauCounts"),
        pytest.param(2, id="ClassSums"),
        pytest.param(3, id="TapSums"),
        pytest.param(4, id="NoPositiveCounts"),
        pytest.param(5, id="TopN_activation"),
        pytest.param(6, id="TopN_relevance"),
    ],
)
def test_to_copy_is_independent_of_the_original(which: int) -> None:
    stat = _examples()[which]
    before = {k: t.clone() for k, t in stat.tensors.items()}
    copy = stat.to("cpu")
    data = _data(6)
    data["relevance"][0] = 0.0  # something for NoPositiveCounts to count
    copy.update(_batch(data, slice(0, 12)))
    assert not copy.equal(stat)
    assert all(torch.equal(stat.tensors[k], t) for k, t in before.items())


def test_to_meta_keeps_shapes_and_spec() -> None:
    for stat in _examples():
        moved = stat.to("meta")
        assert moved.spec() == stat.spec()
        assert {k: (t.shape, t.dtype) for k, t in moved.tensors.items()} == {
            k: (t.shape, t.dtype) for k, t in stat.tensors.items()
        }
        assert all(t.is_meta for t in moved.tensors.values())


def test_equal_compares_type_spec_and_tensors() -> None:
    stats = _examples()
    for i, a in enumerate(stats):
        for j, b in enumerate(stats):
            assert a.equal(b) == (i == j)
    counts = TauCounts.zeros(TAUS, CLASSES, UNITS)
    assert not counts.equal(TauCounts.zeros((0.1,), CLASSES, UNITS))
    regridded = TauCounts(counts=counts.counts.clone(), taus=(0.5, 0.6, 0.7))
    assert not counts.equal(regridded)  # same tensors, other tau grid
    a, b = ClassSums.zeros(2, 2), ClassSums.zeros(2, 2)
    assert a.equal(b)
    b.sums[1, 1] = 1e-300
    assert not a.equal(b)
    assert not ClassSums.zeros(2, 2).equal(TapSums(sums=torch.zeros(2, 2)))


def test_nbytes_counts_every_tensor() -> None:
    assert ClassCounts.zeros(7).nbytes() == 7 * 8
    assert TauCounts.zeros(TAUS, CLASSES, UNITS).nbytes() == len(TAUS) * CLASSES * UNITS * 4
    assert ClassSums.zeros(CLASSES, UNITS).nbytes() == CLASSES * UNITS * 8
    assert TapSums.zeros(CLASSES, INPUTS, TAPS).nbytes() == CLASSES * INPUTS * TAPS * 8
    assert TopN.empty(UNITS, 6, "activation").nbytes() == 3 * UNITS * 6 * 8
    for stat in _examples():  # filling does not change the footprint
        empty = type(stat)(
            **{k: torch.zeros_like(t) for k, t in stat.tensors.items()}, **stat.spec()
        )
        assert stat.nbytes() == empty.nbytes()


def test_missing_tensors_and_attributes_are_refused() -> None:
    with pytest.raises(ValueError, match="counts"):
        ClassCounts()
    with pytest.raises(ValueError, match="sums"):
        TapSums(total=torch.zeros(1, 1, 1))
    with pytest.raises(AttributeError, match="nothing"):
        ClassSums.zeros(1, 1).nothing  # noqa: B018
    assert set(STATISTIC_TYPES) == {
        "ClassCounts",
        "TauCounts",
        "NoPositiveCounts",
        "ClassSums",
        "TapSums",
        "TopN",
    }

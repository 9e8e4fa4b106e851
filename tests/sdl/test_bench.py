"""The Linear Representation Bench: PGD, sampling, metrics, bad settings."""

from __future__ import annotations

import math

import pytest
import torch

from neuronsplit.errors import ArgumentTypeError, InvalidArgumentError
from neuronsplit.sdl import dictionary_recovery, make_bench, welch_bound
from neuronsplit.sdl.bench import pgd_dictionary


def _off_diagonal_max(w: torch.Tensor) -> float:
    g = w.T @ w
    return float(g.masked_fill(torch.eye(w.shape[1], dtype=torch.bool), -math.inf).max())


def test_pgd_reaches_the_interference_bound_from_above() -> None:
    gen = torch.Generator().manual_seed(3)
    start = torch.nn.functional.normalize(torch.randn(32, 64, dtype=torch.float64,
                                                      generator=torch.Generator().manual_seed(3)),
                                          dim=0)  # fmt: skip
    assert _off_diagonal_max(start) > 0.5  # PGD has work to do
    w = pgd_dictionary(64, 32, 0.3, generator=gen)
    assert _off_diagonal_max(w) <= 0.3
    assert torch.allclose(w.norm(dim=0), torch.ones(64, dtype=torch.float64))


def test_bench_is_reproducible_by_seed() -> None:
    a, b = make_bench(64, 32, 0.95, 0.3, seed=1), make_bench(64, 32, 0.95, 0.3, seed=1)
    c = make_bench(64, 32, 0.95, 0.3, seed=2)
    assert torch.equal(a.w_p, b.w_p) and torch.equal(a.w_r, b.w_r)
    assert not torch.equal(a.w_p, c.w_p)
    assert all(torch.equal(s, t) for s, t in zip(a.sample(50), b.sample(50), strict=False))
    assert a.interference() <= 0.3 and a.interference("r") <= 0.3


def test_samples_follow_the_model() -> None:
    bench = make_bench(64, 32, 0.9, 0.3, seed=0)
    x, x_p, x_r = bench.sample(4000, target=True, dtype=torch.float64)
    active = (x > 0).double().mean()
    assert abs(float(active) - 0.1) < 0.01  # Bernoulli(1 - S)
    assert abs(float(x[x > 0].mean()) - 1.0) < 0.05  # c_min + Exp(beta=1)
    assert torch.allclose(x_p, x @ bench.w_p.T) and torch.allclose(x_r, x @ bench.w_r.T)


def test_magnitudes_are_shifted_exponentials_independent_of_the_mask() -> None:
    # the sampler draws one uniform per entry for both the mask and the magnitude: the active
    # values must still be c_min + Exp(beta) (mean c_min + beta, P(> c_min + beta) = 1/e)
    bench = make_bench(64, 32, 0.8, 0.3, c_min=0.5, beta=2.0, seed=0)
    x, _ = bench.sample(5000, dtype=torch.float64)
    values = x[x > 0]
    assert abs(float((x > 0).double().mean()) - 0.2) < 0.005
    assert float(values.min()) >= 0.5
    assert abs(float(values.mean()) - 2.5) < 0.05
    assert abs(float((values > 2.5).double().mean()) - math.exp(-1)) < 0.01


def test_welch_bound_values() -> None:
    assert welch_bound(10, 20) == 0.0
    assert welch_bound(4, 3) == pytest.approx(math.sqrt(1 / 9))  # (4-3)/(3*3)


def test_metrics_on_a_hand_computed_toy() -> None:
    truth = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # 3 GT columns in 2-D
    truth[:, 2] = torch.tensor([0.6, 0.8])
    learned = torch.tensor([[-3.0, 0.0], [0.0, 0.5]])  # sign and scale must not matter
    r = dictionary_recovery(learned, truth, tau=0.95)
    # s = (|<e1,e1>|, |<e2,e2>|, max(0.6, 0.8)) = (1, 1, 0.8)
    assert r.best_match.tolist() == pytest.approx([1.0, 1.0, 0.8])
    assert r.gt_recovery == pytest.approx(2 / 3)
    assert r.max_inner_product == pytest.approx(2.8 / 3)
    anchored = dictionary_recovery(learned, truth, exclude=torch.tensor([0, 1]))
    assert anchored.gt_recovery == 0.0 and anchored.max_inner_product == pytest.approx(0.8)
    assert r.max_inner_product >= r.tau * r.gt_recovery  # the paper's sanity invariant


def test_the_raw_reading_keeps_the_rows_scale() -> None:
    """``normalize=False`` reads inner products with the rows as trained: a row that points
    at a feature but reads it at half its magnitude passes as a cosine and fails raw."""
    truth = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    truth[:, 2] = torch.tensor([0.6, 0.8])
    learned = torch.tensor([[-0.5, 0.0], [0.1, 1.0]])
    raw = dictionary_recovery(learned, truth, tau=0.95, normalize=False)
    # (max(0.5, 0.1), max(0, 1), max(0.3, 0.86))
    assert raw.best_match.tolist() == pytest.approx([0.5, 1.0, 0.86])
    assert raw.gt_recovery == pytest.approx(1 / 3)
    cos = dictionary_recovery(learned, truth, tau=0.95)
    norm = math.hypot(0.1, 1.0)
    assert cos.best_match.tolist() == pytest.approx([1.0, 1.0 / norm, 0.86 / norm])
    assert cos.gt_recovery == pytest.approx(2 / 3)
    with pytest.raises(ArgumentTypeError, match="normalize"):
        dictionary_recovery(learned, truth, normalize="no")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n": 64, "n_p": 16, "max_interference": 0.0}, r"<= 0 is impossible for n=64 > 2 n_p"),
        ({"n": 20, "n_p": 16, "max_interference": -0.01}, r"< 0 is impossible for n=20 > n_p"),
        ({"n": 5, "n_p": 16, "max_interference": -0.3}, r"below -1/\(n-1\) = -0\.2500"),
        ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\), got 1\.0"),
        ({"sparsity": -0.1}, r"sparsity must be in \[0, 1\)"),
        ({"n": 64, "n_p": 32, "max_interference": 0.18, "max_iter": 3}, "PGD reached"),
    ],
)
def test_infeasible_settings_name_the_bound(kwargs: dict, pattern: str) -> None:
    settings = {"n": 64, "n_p": 32, "sparsity": 0.9, "max_interference": 0.3, **kwargs}
    with pytest.raises(InvalidArgumentError, match=pattern):
        make_bench(**settings)


def test_metric_shapes_are_checked() -> None:
    with pytest.raises(InvalidArgumentError, match="same d"):
        dictionary_recovery(torch.ones(3, 4), torch.ones(5, 2))


def test_a_simplex_meets_a_negative_bound_that_the_welch_bound_would_refuse() -> None:
    # 3 vectors at 120 degrees in 2-D: every inner product is -0.5 <= M = -0.4, although the
    # Welch bound (on |<w_i, w_j>|) is 0.5; the constraint is signed
    from neuronsplit.sdl import pgd_dictionary

    w = pgd_dictionary(3, 2, -0.4, generator=torch.Generator().manual_seed(0), max_iter=5000)
    off_diagonal = (w.T @ w)[~torch.eye(3, dtype=torch.bool)]
    assert float(off_diagonal.max()) <= -0.4
    assert welch_bound(3, 2) == pytest.approx(0.5)

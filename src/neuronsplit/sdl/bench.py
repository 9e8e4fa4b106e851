"""The Linear Representation Bench (LRB) of Tang et al. (arXiv 2512.05534, App. C) and its metrics.

Ground-truth (GT) features are the unit columns of ``W_p`` (``n_p x n``), pushed apart by
projected gradient descent (PGD) until no two have an inner product above the maximum
interference ``M``; a sample is ``x_p = W_p x`` with ``x_d = m_d * (c_min + Exp(beta))`` and
``m_d ~ Bernoulli(1 - S)``. A second dictionary ``W_r`` (same recipe, same coefficients) is
the target of a transcoder. Everything is drawn from seeded ``torch.Generator`` s, so a bench is
a function of its settings and seed.

:func:`dictionary_recovery` scores a learned dictionary: ``s_i`` is the largest absolute cosine
between GT feature ``i`` and any learned row; **GT recovery** is the share of ``s_i > tau``
(``tau = 0.95``), **max inner product** their mean. Anchored GT features are left out.

Examples
--------
>>> bench = make_bench(n=40, n_p=32, sparsity=0.9, max_interference=0.4, seed=0)
>>> bench.interference() <= 0.4
True
>>> x, x_p = bench.sample(5)
>>> x.shape, x_p.shape
(torch.Size([5, 40]), torch.Size([5, 32]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .._checks import check_bool, check_int, check_number
from ..errors import InvalidArgumentError

__all__ = [
    "LinearRepresentationBench",
    "Recovery",
    "make_bench",
    "pgd_dictionary",
    "welch_bound",
    "dictionary_recovery",
]


def welch_bound(n: int, n_p: int) -> float:
    """The least possible maximum |inner product| of ``n`` unit vectors in ``n_p`` dimensions.

    ``sqrt((n - n_p) / (n_p (n - 1)))`` when ``n > n_p``, else 0 (orthonormal columns fit).

    Examples
    --------
    >>> round(welch_bound(1000, 768), 4)
    0.0174
    """
    n = check_int(n, "n", low=1)
    n_p = check_int(n_p, "n_p", low=1)
    return math.sqrt((n - n_p) / (n_p * (n - 1))) if n > n_p else 0.0


def _check_feasible(m: float, n: int, n_p: int) -> None:
    """Refuse an ``M`` that no ``n`` unit vectors in ``n_p`` dimensions can meet.

    The constraint is signed (``<w_i, w_j> <= M``; negative overlaps are free), so the Welch
    bound, a bound on ``max |<w_i, w_j>|``, does not apply. What does: ``|sum w_i|^2 >= 0`` gives
    ``M >= -1/(n - 1)`` (met by a simplex when ``n <= n_p + 1``); more than ``n_p + 1`` vectors
    cannot all overlap negatively and more than ``2 n_p`` cannot all have non-positive overlaps
    (Rankin), so ``M >= 0`` and ``M > 0`` there. Between these and what PGD reaches, the
    "PGD reached" error names the value.
    """
    if n == 1:
        return
    if m < -1 / (n - 1):
        raise InvalidArgumentError(
            f"max_interference={m:g} is below -1/(n-1) = {-1 / (n - 1):.4f}: no {n} unit "
            f"vectors have all pairwise inner products below it; raise max_interference"
        )
    if n > n_p + 1 and m < 0:
        raise InvalidArgumentError(
            f"max_interference={m:g} < 0 is impossible for n={n} > n_p + 1 = {n_p + 1} unit "
            "vectors (at most n_p + 1 can overlap pairwise negatively); raise it to >= 0"
        )
    if n > 2 * n_p and m <= 0:
        raise InvalidArgumentError(
            f"max_interference={m:g} <= 0 is impossible for n={n} > 2 n_p = {2 * n_p} unit "
            "vectors (at most 2 n_p have pairwise non-positive overlaps); raise it above 0"
        )


def pgd_dictionary(
    n: int, n_p: int, max_interference: float, *, generator: torch.Generator,
    eps: float = 1e-3, lam: float = 1e-3, eta: float = 0.05, max_iter: int = 2000,
) -> Tensor:  # fmt: skip
    """Unit columns ``(n_p, n)`` (float64) with every pairwise inner product ``<= M``.

    Gradient steps on ``sum_{i != j} relu(<w_i, w_j> - (M - eps))^2 + lam relu(<w_i, w_j>)^2``
    (only positive overlaps are penalised), each followed by renormalising the columns; stops as
    soon as the bound holds (App. C.1). Raises :class:`~neuronsplit.errors.InvalidArgumentError`
    when no dictionary meets ``M`` (below ``-1/(n-1)``, or ``M < 0`` for ``n > n_p + 1``, ``M <= 0``
    for ``n > 2 n_p``) or the bound is not reached in ``max_iter`` steps.

    Examples
    --------
    >>> w = pgd_dictionary(20, 16, 0.3, generator=torch.Generator().manual_seed(0))
    >>> g = w.T @ w
    >>> bool((g - torch.eye(20, dtype=g.dtype)).max() <= 0.3), w.shape
    (True, torch.Size([16, 20]))
    """
    m = check_number(max_interference, "max_interference", low=-1, high=1)
    _check_feasible(m, check_int(n, "n", low=1), check_int(n_p, "n_p", low=1))
    bound = welch_bound(n, n_p)
    check_int(max_iter, "max_iter", low=1)
    w = F.normalize(torch.randn(n_p, n, generator=generator, dtype=torch.float64), dim=0)
    eye = torch.eye(n, dtype=torch.bool)
    if n == 1:
        return w
    for _ in range(max_iter):
        # the diagonal (each column with itself) is no interference: -inf for the max, and no
        # penalty term (with a negative M, relu(0 - (M - eps)) would push a column off itself)
        g = (w.T @ w).masked_fill_(eye, -math.inf)
        if float(g.max()) <= m:
            return w
        d = 2 * (g - (m - eps)).clamp_min(0) + 2 * lam * g.clamp_min(0)
        w = F.normalize(w - eta * 2 * (w @ d), dim=0)
    reached = float((w.T @ w).masked_fill_(eye, -math.inf).max())
    if reached <= m:
        return w
    raise InvalidArgumentError(
        f"PGD reached a max interference of {reached:.4f} after max_iter={max_iter} steps, "
        f"above max_interference={m:g} (Welch bound {bound:.4f}); raise max_interference or "
        "max_iter"
    )


@dataclass(frozen=True)
class LinearRepresentationBench:
    """A generated LRB: the GT dictionaries and a seeded sampler of sparse coefficients.

    Attributes
    ----------
    w_p, w_r : Tensor
        ``(n_p, n)`` and ``(n_r, n)`` float64 unit-column GT dictionaries (``w_r`` is the
        transcoder's target map, an independent PGD dictionary with the same ``M``).
    sparsity : float
        ``S``: the probability that a feature is inactive.
    c_min, beta : float
        Magnitudes are ``c_min + Exp(beta)`` (``beta`` the scale).
    seed : int
        The seed of the dictionaries; samples come from ``seed + 1`` unless a generator is given.
    """

    w_p: Tensor
    w_r: Tensor
    sparsity: float
    c_min: float
    beta: float
    seed: int

    @property
    def n(self) -> int:
        """Number of GT features."""
        return int(self.w_p.shape[1])

    def interference(self, which: str = "p") -> float:
        """The largest inner product between two different GT columns of ``w_p`` / ``w_r``."""
        w = self.w_p if which == "p" else self.w_r
        g = w.T @ w
        return float(g.masked_fill(torch.eye(self.n, dtype=torch.bool), -math.inf).max())

    def generator(self) -> torch.Generator:
        """A fresh generator for this bench's sample stream (seeded ``seed + 1``)."""
        return torch.Generator().manual_seed(self.seed + 1)

    def sample(
        self, count: int, *, generator: torch.Generator | None = None, target: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, ...]:  # fmt: skip
        """``(x, x_p)`` (and ``x_r`` when ``target``) for ``count`` samples.

        ``x`` is ``(count, n)``; ``x_p = x W_p^T``, ``x_r = x W_r^T``. Without ``generator`` the
        stream restarts at the bench's own seed, so two calls give the same samples.
        """
        count = check_int(count, "count", low=1)
        check_bool(target, "target")
        rows, cols, vals = self._codes(count, self.generator() if generator is None else generator)
        x = torch.zeros(count, self.n, dtype=torch.float64)
        x[rows, cols] = vals
        return (x.to(dtype),) + self._project(rows, cols, vals, count, target, dtype)

    def _codes(self, count: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """The active entries ``(rows, cols, values)`` of ``count`` sparse code vectors."""
        p = 1 - self.sparsity
        u = torch.rand(count, self.n, generator=gen)
        rows, cols = (u < p).nonzero(as_tuple=True)
        # one uniform draw gives both: given u < p, u / p is uniform on [0, 1), so
        # -beta log(1 - u / p) is Exp(beta) and independent of the mask (half the random
        # numbers of a mask plus magnitudes, and the logarithm only where a feature is active)
        vals = self.c_min - self.beta * torch.log1p(-u[rows, cols].double() / p)
        return rows, cols, vals

    def _project(
        self, rows: Tensor, cols: Tensor, vals: Tensor, count: int, target: bool,
        dtype: torch.dtype,
    ) -> tuple[Tensor, ...]:  # fmt: skip
        """``x_p`` (and ``x_r``) of the codes: sums of the active columns, ``nnz * n_p`` work
        instead of ``count * n * n_p`` for a dense product."""

        def one(w: Tensor) -> Tensor:
            out = torch.zeros(count, w.shape[0], dtype=torch.float64)
            return out.index_add_(0, rows, vals[:, None] * w.T[cols]).to(dtype)

        return (one(self.w_p), one(self.w_r)) if target else (one(self.w_p),)

    def inputs(
        self, count: int, *, generator: torch.Generator, target: bool = False
    ) -> tuple[Tensor, ...]:
        """``(x_p,)`` or ``(x_p, x_r)`` as float32: :meth:`sample` without the codes ``x``
        (training needs only these); the same stream as :meth:`sample` with ``generator``.

        Examples
        --------
        >>> bench = make_bench(40, 32, 0.9, 0.4, seed=0)
        >>> gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        >>> torch.equal(bench.inputs(8, generator=gen_a)[0], bench.sample(8, generator=gen_b)[1])
        True
        """
        count = check_int(count, "count", low=1)
        return self._project(*self._codes(count, generator), count, target, torch.float32)


def make_bench(
    n: int = 1000, n_p: int = 768, sparsity: float = 0.99, max_interference: float = 0.1, *,
    n_r: int | None = None, c_min: float = 0.0, beta: float = 1.0, seed: int = 0,
    max_iter: int = 2000,
) -> LinearRepresentationBench:  # fmt: skip
    """Generate the LRB (defaults: the paper's n = 1000, n_p = 768, S = 0.99, M = 0.1).

    Parameters
    ----------
    n, n_p : int
        GT features and representation dimension.
    sparsity : float
        ``S`` in ``[0, 1)``: the probability that a feature is inactive (``1 - S`` active).
    max_interference : float
        ``M``: the largest allowed (signed) inner product between two GT columns; PGD reaches
        values near the Welch bound :func:`welch_bound` ``(n, n_p)`` and above.
    n_r : int, optional
        Transcoder target dimension (default ``n_p``).
    c_min, beta : float
        Shifted-exponential magnitudes ``c_min + Exp(beta)`` (defaults 0 and 1, not given by
        the paper).
    seed : int
        Seeds ``W_p`` (``seed``), ``W_r`` (``seed + 10_000``) and the sample stream
        (``seed + 1``).
    max_iter : int
        PGD step cap.

    Returns
    -------
    LinearRepresentationBench
    """
    n = check_int(n, "n", low=2)
    n_p = check_int(n_p, "n_p", low=1)
    n_r = n_p if n_r is None else check_int(n_r, "n_r", low=1)
    s = check_number(sparsity, "sparsity", low=0, high=1, high_open=True)
    check_number(c_min, "c_min", low=0)
    check_number(beta, "beta", low=0, low_open=True)
    seed = check_int(seed, "seed", low=0)
    w_p = pgd_dictionary(
        n, n_p, max_interference, generator=torch.Generator().manual_seed(seed), max_iter=max_iter
    )  # fmt: skip
    w_r = pgd_dictionary(
        n, n_r, max_interference, generator=torch.Generator().manual_seed(seed + 10_000),
        max_iter=max_iter,
    )  # fmt: skip
    return LinearRepresentationBench(w_p, w_r, s, float(c_min), float(beta), seed)


@dataclass(frozen=True)
class Recovery:
    """GT recovery and max inner product of a learned dictionary.

    Attributes
    ----------
    gt_recovery : float
        Share of scored GT features whose best match exceeds ``tau``.
    max_inner_product : float
        Mean best match.
    best_match : Tensor
        ``s_i`` per scored GT feature (float64).
    tau : float
        The threshold.
    """

    gt_recovery: float
    max_inner_product: float
    best_match: Tensor
    tau: float


def dictionary_recovery(
    learned: Tensor, truth: Tensor, *, tau: float = 0.95, exclude: Tensor | None = None,
    normalize: bool = True,
) -> Recovery:  # fmt: skip
    """Score learned directions against GT columns (absolute cosines, rows normalised).

    ``s_i = max_j |<l_j, w_i>|`` over the learned rows ``l_j`` for each unit GT column ``w_i``;
    GT recovery is the share of ``s_i > tau``, max inner product the mean ``s_i``.

    Parameters
    ----------
    learned : Tensor
        ``(n_q, n_p)``: one learned direction per row (encoder rows ``W_E``, or decoder columns
        transposed).
    truth : Tensor
        ``(n_p, n)``: GT features as columns.
    tau : float, default 0.95
        Recovery threshold on ``s_i``.
    exclude : Tensor, optional
        GT feature indices (e.g. the anchored ones) left out of both metrics.
    normalize : bool, default True
        Normalise the learned rows (cosines: ``s_i <= 1``, independent of the rows' scale).
        ``False`` is the literal "max inner product" with the rows as trained: an encoder row
        that reads feature ``i`` at its full magnitude scores ``<l_j, w_i> = 1`` wherever it
        points otherwise (the paper does not say which it uses; ``neuronsplit bench lrb``
        prints both, docs/sdl.md).

    Examples
    --------
    >>> truth = torch.eye(3, dtype=torch.float64)
    >>> learned = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.6, 0.8]], dtype=torch.float64)
    >>> r = dictionary_recovery(learned, truth, tau=0.7)
    >>> r.best_match.tolist(), r.gt_recovery
    ([1.0, 0.6, 0.8], 0.6666666666666666)
    >>> dictionary_recovery(learned, truth, exclude=torch.tensor([0])).max_inner_product
    0.7
    >>> dictionary_recovery(learned, truth, normalize=False).best_match.tolist()
    [2.0, 0.6, 0.8]
    """
    tau = check_number(tau, "tau", low=0, high=1)
    check_bool(normalize, "normalize")
    if learned.dim() != 2 or truth.dim() != 2 or learned.shape[1] != truth.shape[0]:
        raise InvalidArgumentError(
            f"learned must be (n_q, d) and truth (d, n) with the same d; got "
            f"{tuple(learned.shape)} and {tuple(truth.shape)}"
        )
    keep = torch.ones(truth.shape[1], dtype=torch.bool)
    if exclude is not None:
        keep[exclude.long().cpu()] = False
    if not bool(keep.any()):
        raise InvalidArgumentError("exclude leaves no GT feature to score")
    rows = learned.detach().double().cpu()
    rows = F.normalize(rows, dim=1) if normalize else rows
    cols = F.normalize(truth.detach().double().cpu()[:, keep], dim=0)
    s = (rows @ cols).abs().amax(dim=0)
    return Recovery(float((s > tau).double().mean()), round(float(s.mean()), 12), s, tau)

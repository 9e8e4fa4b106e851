"""Hesse et al.'s rho rule, its K-way form, and the rho score.

The rule (official code, ``disentangle_channel.py``), for two concepts with signed ARVs ``a, b``::

    if   rho * a_j > b_j:  j -> S1
    elif rho * b_j > a_j:  j -> S2
    else:                  j -> S0   (shared; seen by the residual)

K-way generalisation used here (identical to the above for K = 2): input ``j`` goes to the
*first* concept ``k`` (in concept order) with ``rho * a_k[j] > a_l[j]`` for every other concept
``l``; if no concept passes, to ``S0``. Strict comparisons, so exact ties fall through to S0, and
concept order breaks the double-pass cases exactly as the official ``elif`` does.
``mode="magnitude"`` applies the same rule to ``|a_k|`` (a documented deviation that treats
negative contributions symmetrically).

rho is chosen from the grid 0.05, 0.10, ..., 1.00 by the official score: for each concept the mean
over its images of ``sum_hw ReLU(d_k) / (sum_{l != k} sum_hw ReLU(d_l) + 1e-5)``, summed over
concepts; the argmax, ties to the smallest rho. ``d_k`` is Hesse's subunit (its own inputs, the
shared inputs and the bias), whatever merge form the plan reads the rows in, so the same rho
comes out for both forms. A robust score (medians instead of means) is reported next to it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import check_choice
from ...errors import InvalidArgumentError
from ...plan import SHARED

__all__ = ["RHO_GRID", "rho_assignment", "rho_partition", "subunit_score", "hesse_masks"]

RHO_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 21))
_EPS = 1e-5


def _check(arvs: Tensor, rhos: Tensor, mode: str) -> None:
    if arvs.dim() != 2 or arvs.shape[0] < 2:
        raise InvalidArgumentError(f"arvs must be (K >= 2, J), got shape {tuple(arvs.shape)}")
    if rhos.numel() == 0 or bool(((rhos <= 0) | (rhos > 1)).any()):
        raise InvalidArgumentError(f"rho must be in (0, 1], got {rhos.tolist()}")
    check_choice(mode, "mode", ("faithful", "magnitude"))


def rho_assignment(arvs: Tensor, rho: float | Tensor, *, mode: str = "faithful") -> Tensor:
    """The subunit of every input under the rho rule, for one rho or a whole grid.

    Parameters
    ----------
    arvs : Tensor
        ``(K, J)`` concept ARVs (signed); concept order = precedence order.
    rho : float or 1-d Tensor
        Factor(s) in (0, 1]; smaller is stricter for positive entries.
    mode : {"faithful", "magnitude"}
        Signed rule as in the official code, or the same rule on absolute values.

    Returns
    -------
    Tensor
        ``(J,)`` int64 (``(R, J)`` for a grid of ``R`` rhos): the concept of each input, or
        ``-1`` for the shared set S0.

    Examples
    --------
    >>> a = torch.tensor([[3.0, 1.0, 1.0, -1.0], [1.0, 3.0, 1.0, -2.0]])
    >>> rho_assignment(a, 0.5)
    tensor([ 0,  1, -1,  0])
    """
    rhos = torch.as_tensor(rho, dtype=arvs.dtype).reshape(-1)
    _check(arvs, rhos, mode)
    values = arvs.abs() if mode == "magnitude" else arvs
    k_count = values.shape[0]
    # passes[r, k, j]: rho * a_k[j] > a_l[j] for every l != k
    scaled = rhos.view(-1, 1, 1) * values.unsqueeze(0)  # (R, K, J)
    beats = scaled.unsqueeze(2) > values.view(1, 1, k_count, -1)  # (R, K, L, J)
    eye = torch.eye(k_count, dtype=torch.bool).view(1, k_count, k_count, 1)
    passes = (beats | eye).all(2)  # (R, K, J)
    first = torch.where(passes.any(1), passes.to(torch.int8).argmax(1), SHARED)
    return first if torch.is_tensor(rho) and rho.dim() > 0 else first[0]


def rho_partition(
    arvs: Tensor, rho: float, *, mode: str = "faithful"
) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """:func:`rho_assignment` as index sets: ``(groups, shared)``.

    Examples
    --------
    >>> a = torch.tensor([[3.0, 1.0, 1.0, -1.0], [1.0, 3.0, 1.0, -2.0]])
    >>> rho_partition(a, 0.5)
    (((0, 3), (1,)), (2,))
    """
    assign = rho_assignment(arvs, float(rho), mode=mode)
    groups = tuple(
        tuple(torch.nonzero(assign == k).flatten().tolist()) for k in range(arvs.shape[0])
    )
    return groups, tuple(torch.nonzero(assign == SHARED).flatten().tolist())


def hesse_masks(assignments: Tensor, k_count: int) -> Tensor:
    """0/1 masks of Hesse's subunits ``d_k``: the inputs of concept ``k`` plus the shared S0.

    Parameters
    ----------
    assignments : Tensor
        ``(R, J)`` assignments (one per rho), ``-1`` for shared.
    k_count : int
        Number of concepts K.

    Returns
    -------
    Tensor
        ``(R, K, J)`` float64.

    Examples
    --------
    >>> hesse_masks(torch.tensor([[0, 1, -1]]), 2)[0]
    tensor([[1., 0., 1.],
            [0., 1., 1.]], dtype=torch.float64)
    """
    concept = torch.arange(k_count).view(1, -1, 1)
    a = assignments.unsqueeze(1)  # (R, 1, J)
    return ((a == concept) | (a == SHARED)).to(torch.float64)


def subunit_score(sums: Tensor, concept_of: Tensor, k_count: int) -> tuple[float, float]:
    """Official and robust rho scores from per-image ReLU-summed subunit activations.

    Parameters
    ----------
    sums : Tensor
        ``(n_images, K)``: ``sum_hw ReLU(d_k)`` per image.
    concept_of : Tensor
        ``(n_images,)`` concept index of each image.
    k_count : int
        Number of concepts K.

    Returns
    -------
    (float, float)
        Sum over concepts of the mean (official) and of the median (robust) ratio.

    Examples
    --------
    >>> subunit_score(torch.tensor([[2.0, 1.0], [0.0, 4.0]]), torch.tensor([0, 1]), 2)[0] > 1
    True
    """
    official = robust = 0.0
    for k in range(k_count):
        rows = sums[concept_of == k]
        if rows.shape[0] == 0:
            continue
        others = rows.sum(1) - rows[:, k]
        ratio = rows[:, k] / (others + _EPS)
        official += float(ratio.mean())
        robust += float(ratio.median())
    return official, robust

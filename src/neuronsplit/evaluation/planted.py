"""Synthetic ground truth for unsupervised splits: :func:`planted_concepts`, :func:`recovery`.

A one-layer model ``Linear(J, U) -> ReLU`` sees samples each driven by one latent concept: the
concept's own inputs are large (a random amplitude times a per-input level), every other input
is small noise. Unit ``u`` is planted with ``k_u`` concepts -- positive weights on their inputs,
scaled so every concept drives it equally on average, small random weights elsewhere -- so it is
polysemantic when ``k_u >= 2`` and monosemantic when ``k_u == 1``. No labels reach the method;
:func:`recovery` scores a plan against the planted groups with the adjusted Rand index (ARI) on
the unit's planted inputs (the shared residual counts as one more label) and whether ``K`` is
right.

Examples
--------
>>> planted = planted_concepts([2, 1], seed=0)
>>> planted.data.shape, [len(g) for g in planted.groups]
(torch.Size([2000, 34]), [2, 1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._checks import check_int, check_number
from ..errors import InvalidArgumentError
from ..plan import SplitPlan

__all__ = ["PlantedConcepts", "UnitRecovery", "planted_concepts", "recovery"]


@dataclass(frozen=True)
class PlantedConcepts:
    """A model with planted concepts, its data, and the truth.

    Attributes
    ----------
    model : nn.Sequential
        ``Linear(J, U)`` (layer ``"0"``) then ``ReLU``, float32.
    data : Tensor
        ``(N, J)`` float32 samples.
    concept_of_sample : Tensor
        ``(N,)`` the latent concept behind each sample (never shown to the method).
    groups : list of list of ndarray
        ``groups[u][k]``: the input indices of unit ``u``'s ``k``-th planted concept.
    """

    model: nn.Sequential
    data: torch.Tensor
    concept_of_sample: torch.Tensor
    groups: list[list[np.ndarray]]


@dataclass(frozen=True)
class UnitRecovery:
    """How well a plan recovered one unit's planted concepts."""

    unit: int
    planted_k: int
    found_k: int
    ari: float
    exact: bool


def planted_concepts(
    concepts_per_unit: Sequence[int], *, inputs_per_concept: int = 6, background: int = 16,
    samples: int = 2000, noise: float = 0.1, seed: int = 0,
) -> PlantedConcepts:  # fmt: skip
    """Build a model whose unit ``u`` is driven by ``concepts_per_unit[u]`` planted concepts.

    Parameters
    ----------
    concepts_per_unit : sequence of int
        ``k_u >= 1`` per unit; every concept has its own ``inputs_per_concept`` inputs.
    inputs_per_concept, background : int
        Inputs per concept, and inputs that belong to no concept.
    samples : int
        Samples; each is driven by one concept drawn uniformly.
    noise : float
        Scale of the small inputs (half-normal); the off-concept weights are normal with a
        quarter of it.
    seed : int
        Everything is drawn from ``numpy.random.default_rng(seed)``.
    """
    ks = [check_int(k, "each entry of concepts_per_unit", low=1) for k in concepts_per_unit]
    if not ks:
        raise InvalidArgumentError("concepts_per_unit is empty; plant at least one unit")
    per = check_int(inputs_per_concept, "inputs_per_concept", low=1)
    check_int(background, "background", low=0)
    check_int(samples, "samples", low=1)
    check_number(noise, "noise", low=0)
    rng = np.random.default_rng(check_int(seed, "seed", low=0))
    n_concepts = sum(ks)
    n_inputs = n_concepts * per + background
    owner = rng.permutation(n_inputs)  # concept c owns inputs owner[c*per:(c+1)*per]
    concept_inputs = [np.sort(owner[c * per : (c + 1) * per]) for c in range(n_concepts)]
    level = rng.uniform(0.5, 1.5, n_inputs)
    # off-concept weights small enough that no unit's top samples come from a foreign concept
    weight = rng.normal(0.0, noise / 4, (len(ks), n_inputs))
    groups: list[list[np.ndarray]] = []
    c = 0
    for u, k in enumerate(ks):
        groups.append([])
        for _ in range(k):
            idx = concept_inputs[c]
            w = rng.uniform(0.5, 1.5, per)
            weight[u, idx] = w / (w * level[idx]).sum()  # every concept drives u equally
            groups[u].append(idx)
            c += 1
    which = rng.integers(0, n_concepts, samples)
    data = np.abs(rng.normal(0.0, noise, (samples, n_inputs)))
    amplitude = rng.uniform(0.5, 1.5, samples)
    for c in range(n_concepts):
        rows = np.flatnonzero(which == c)
        idx = concept_inputs[c]
        data[np.ix_(rows, idx)] += (
            amplitude[rows, None] * level[idx] * rng.uniform(0.8, 1.2, (len(rows), per))
        )
    layer = nn.Linear(n_inputs, len(ks))
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.zero_()
    return PlantedConcepts(
        nn.Sequential(layer, nn.ReLU()), torch.from_numpy(data).float(),
        torch.from_numpy(which), groups,
    )  # fmt: skip


def recovery(plan: SplitPlan, planted: PlantedConcepts, layer: str = "0") -> list[UnitRecovery]:
    """Score ``plan`` against the planted concepts, one :class:`UnitRecovery` per unit.

    A monosemantic unit is recovered when it is left out of the plan (ARI 1, exact); a
    polysemantic one by the ARI between the planted concept of each of its planted inputs and
    the subunit the plan routes it to (shared = its own label); ``exact`` means ARI 1 with the
    right ``K``.
    """
    from sklearn.metrics import adjusted_rand_score  # here: scikit-learn takes ~1 s to import

    split = plan.by_layer().get(layer)
    out = []
    for u, groups in enumerate(planted.groups):
        truth = np.concatenate([np.full(len(g), k) for k, g in enumerate(groups)])
        inputs = np.concatenate(groups)
        if split is None or u not in split:
            found_k = 1
            predicted = np.zeros(len(inputs), dtype=np.int64)
        else:
            row = split.assignment[split.position(u)].long().numpy()
            found_k = int(split.num_subunits[split.position(u)])
            predicted = row[inputs]
        ari = 1.0 if len(groups) == 1 and found_k == 1 else adjusted_rand_score(truth, predicted)
        if len(groups) == 1 and found_k > 1:
            ari = 0.0  # a monosemantic unit that was split: nothing recovered
        out.append(UnitRecovery(u, len(groups), found_k, float(ari),
                                bool(ari == 1.0 and found_k == len(groups))))  # fmt: skip
    return out

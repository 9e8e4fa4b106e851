"""Grouping a unit's polysemantic classes into concepts, one per subunit.

Rule: complete-linkage agglomerative clustering of the classes on the distance ``1 - cos``
between their average relevance vectors, merging only while the distance stays below
``1 - gamma``. Complete linkage measures a cluster by its *least* similar pair, so every two
classes that end up in one concept have ``cos > gamma``: two gamma-polysemantic classes
(``cos < gamma``) never share a subunit. (Connected components of ``cos >= gamma``, the rule of
neuronsplit 0.1, could chain two dissimilar classes through a third one that resembles both.)
Concepts are ordered by their smallest class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...stats import ScanResult
from .detect import PolysemanticUnit

__all__ = ["concept_groups", "group_by_similarity", "concept_labels"]


def group_by_similarity(arvs: torch.Tensor, gamma: float) -> list[int]:
    """Concept label of each row of ``arvs`` (see the module docstring for the rule).

    Parameters
    ----------
    arvs : Tensor
        ``(n, J)`` vectors (no zero row).
    gamma : float
        Rows whose cosine is not above ``gamma`` end up in different concepts.

    Returns
    -------
    list of int
        A concept label per row, numbered by first appearance.

    Examples
    --------
    >>> v = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> group_by_similarity(v, 0.5)
    [0, 0, 1]
    """
    n = arvs.shape[0]
    if n < 2:
        return [0] * n
    from sklearn.cluster import AgglomerativeClustering

    unit = torch.nn.functional.normalize(arvs.to(torch.float64), dim=1)
    dist = (1.0 - unit @ unit.T).clamp(min=0.0).numpy()
    np.fill_diagonal(dist, 0.0)
    labels = (
        AgglomerativeClustering(
            n_clusters=None,
            metric="precomputed",
            linkage="complete",
            distance_threshold=1.0 - gamma,
        )
        .fit(dist)
        .labels_
    )
    renumber: dict[int, int] = {}
    return [renumber.setdefault(int(label), len(renumber)) for label in labels]


def concept_groups(
    result: ScanResult, unit: PolysemanticUnit, *, gamma: float = 0.5
) -> tuple[tuple[int, ...], ...]:
    """Group a unit's polysemantic classes into concepts (see the module docstring).

    A unit relevant to three mutually dissimilar classes gets three concepts; classes whose ARVs
    all point the same way share one.

    Parameters
    ----------
    result : ScanResult
        The scan the unit was found in (gives the ARVs).
    unit : PolysemanticUnit
        The unit; its ``classes`` are grouped.
    gamma : float
        Classes whose ARV cosine is not above ``gamma`` never share a concept.

    Returns
    -------
    tuple of tuple of int
        Sorted class sets, ordered by their smallest class.

    Examples
    --------
    >>> concept_groups(res, units[0])  # doctest: +SKIP
    ((3,), (5,), (8,))
    """
    classes = list(unit.classes)
    labels = group_by_similarity(result.arvs(unit.layer, unit.unit, classes), gamma)
    groups: dict[int, list[int]] = {}
    for cls, label in zip(classes, labels, strict=True):
        groups.setdefault(label, []).append(cls)
    return tuple(sorted(tuple(sorted(g)) for g in groups.values()))


def concept_labels(concepts: Sequence[Sequence[int]]) -> tuple[str, ...]:
    """Readable names of concepts given as class sets: ``"class 0+4"``."""
    return tuple("class " + "+".join(str(c) for c in concept) for concept in concepts)

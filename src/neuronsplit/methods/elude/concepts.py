"""One unit's concepts from its input contributions: :func:`find_concepts`.

The rules, and why (they are ELUDe's unstated parts; see ``docs/elude.md``):

1. **What is clustered.** The contribution vectors ``c_j = w_uj * x_j`` (summed over a
   convolution's kernel taps) of the unit's top-activating samples whose activation is positive,
   each divided by its L2 norm: two samples show the same concept when the *same inputs carry
   the activation in the same proportions*, whatever its size. Samples that do not activate
   the unit say nothing about what it detects and are left out.
2. **Clustering.** scikit-learn's ``KMeans`` (k-means++, ``n_init`` restarts, a fixed seed) for
   every ``K`` in ``2 .. max_concepts``, run for many units at once by
   :func:`~neuronsplit.methods.elude.kmeans.batched_kmeans` (the same algorithm and labels). It runs on the samples' coordinates in their own span
   (at most ``m`` dimensions for ``m`` samples, from an eigendecomposition of the Gram matrix):
   distances there equal those in input space, so the clusters are the same and a ViT-B unit
   costs a 32-dimensional problem instead of a 768-dimensional one.
3. **How many concepts.** The ``K`` with the best silhouette (euclidean on the unit vectors, the
   chord distance ``sqrt(2 - 2 cos)``, so a monotone function of cosine distance) wins if that
   silhouette reaches ``min_silhouette`` (0.4) and every cluster holds at least ``min_cluster``
   samples; otherwise ``K = 1``: the unit is not polysemantic and is left alone. A blob of noise
   cut in two scores about 0.1-0.2, planted concepts about 0.85 (``evaluation.planted``). On a
   validation split of the *training* digits (never the test images; top 64 samples) the demo
   ViT's purity gain rose with the threshold while the share of split units fell (0.25: +0.066,
   86 % split; 0.35: +0.081, 60 %; 0.4: +0.095, 44 %; 0.5: +0.101, 22 %): weakly separated
   clusters are mostly noise, so 0.4 splits the units whose concepts are clear and still a large
   share of them.
4. **Routing.** Each cluster's centroid is the mean of its samples' contribution *shares*
   ``c_j / sum_i |c_i|`` (the fraction of the activation input ``j`` carries). Input ``j`` goes
   to the subunit whose centroid share is largest if that share is positive and exceeds the
   runner-up's by the factor ``1 / (1 - margin)``; otherwise it is ambiguous (a tie, or
   inhibitory everywhere) and goes to the shared residual. The default ``margin = 0`` routes
   every input with a clear winner: on the same validation split, sending inputs that two
   concepts share to the residual (margin 0.1: +0.078; 0.5: +0.013) *lowered* the subunits'
   purity, because a subunit then loses the inputs that make it fire on its concept's images.
   Subunits left without an input are dropped; fewer than two left means ``K = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .kmeans import batched_kmeans, batched_silhouette

__all__ = [
    "ConceptRule",
    "UnitConcepts",
    "find_concepts",
    "find_concepts_batch",
    "span_coordinates",
]


@dataclass(frozen=True)
class ConceptRule:
    """The settings of :func:`find_concepts` (see the module docstring for the reasoning).

    Parameters
    ----------
    max_concepts : int, default 4
        Largest ``K`` tried.
    min_silhouette : float, default 0.4
        Silhouette the best ``K`` must reach to split the unit.
    min_cluster : int, default 4
        Fewest samples a cluster may hold.
    margin : float, default 0.0
        Input ``j`` goes to subunit ``k`` only if ``(1 - margin) * share_k > share_l`` for
        every other ``l``; ``0`` is an argmax (ties and inputs negative everywhere: shared).
    n_init : int, default 4
        k-means restarts.
    seed : int, default 0
        Seed of k-means.
    """

    max_concepts: int = 4
    min_silhouette: float = 0.4
    min_cluster: int = 4
    margin: float = 0.0
    n_init: int = 4
    seed: int = 0


@dataclass(frozen=True)
class UnitConcepts:
    """What :func:`find_concepts` decided for one unit.

    Attributes
    ----------
    k : int
        Number of subunits (1: not split).
    assignment : numpy.ndarray or None
        ``(J,)`` int64: subunit of each input, ``-1`` shared; ``None`` when ``k == 1``.
    silhouette : float
        Silhouette of the best ``K >= 2`` (``nan`` if none could be tried).
    samples : int
        Samples that were clustered (positive activation).
    reason : str
        Why the unit was (not) split: ``"split"``, ``"few_active"`` (fewer than
        ``2 * min_cluster`` active samples), ``"constant"`` (all active samples alike),
        ``"small_clusters"`` (no clustering had clusters of ``min_cluster``),
        ``"low_silhouette"`` or ``"one_subunit_left"`` (routing left fewer than two subunits).
    """

    k: int
    assignment: np.ndarray | None
    silhouette: float
    samples: int
    reason: str


def span_coordinates(vectors: Tensor) -> Tensor:
    """``(m, r)`` coordinates of ``m`` row vectors in their span: pairwise distances unchanged.

    From the Gram matrix ``V V^T = Q L Q^T``: the coordinates are ``Q sqrt(L)`` (batched over a
    leading axis). Directions with eigenvalues below ``1e-10`` of the largest are dropped.

    Examples
    --------
    >>> v = torch.randn(5, 40, dtype=torch.float64)
    >>> c = span_coordinates(v)
    >>> torch.allclose(torch.cdist(c, c), torch.cdist(v, v), atol=1e-9)
    True
    """
    gram = vectors @ vectors.transpose(-1, -2)
    evals, evecs = torch.linalg.eigh(gram.double())
    keep = evals > evals[..., -1:].clamp_min(0) * 1e-10
    coords = evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)
    if vectors.dim() == 2:
        return coords[:, keep].to(vectors.dtype)
    return (coords * keep.unsqueeze(-2)).to(vectors.dtype)


def _route(shares: np.ndarray, labels: np.ndarray, k: int, margin: float) -> np.ndarray:
    centroids = np.stack([shares[labels == c].mean(0) for c in range(k)])  # (K, J)
    order = np.sort(centroids, axis=0)
    best, second = order[-1], order[-2]
    winner = centroids.argmax(0)
    dominant = (best > 0) & ((1.0 - margin) * best > second)
    return np.where(dominant, winner, -1).astype(np.int64)


def _renumber(assignment: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    used = [c for c in range(k) if (assignment == c).any()]
    out = np.full_like(assignment, -1)
    for new, old in enumerate(used):
        out[assignment == old] = new
    return out, len(used)


def find_concepts(
    contributions: np.ndarray | Tensor, coords: np.ndarray | Tensor, rule: ConceptRule,
    activations: np.ndarray | Tensor, *, force: bool = False,
) -> UnitConcepts:  # fmt: skip
    """Cluster one unit's samples and route its inputs (rules in the module docstring).

    Parameters
    ----------
    contributions : ndarray or Tensor
        ``(m, J)`` contributions of the unit's kept samples.
    coords : ndarray or Tensor
        ``(m, r)`` span coordinates of the L2-normalised contributions
        (:func:`span_coordinates`); computed by the caller, batched over units.
    rule : ConceptRule
        The settings.
    activations : ndarray or Tensor
        ``(m,)`` the samples' activations; only positive ones are clustered.
    force : bool, default False
        Split with the best ``K >= 2`` even below ``rule.min_silhouette``.

    Returns
    -------
    UnitConcepts
    """
    contributions, coords, activations = (
        t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)
        for t in (contributions, coords, activations)
    )
    return find_concepts_batch(contributions[None], coords[None], rule, activations[None], force)[0]


def find_concepts_batch(
    contributions: np.ndarray, coords: np.ndarray, rule: ConceptRule, activations: np.ndarray,
    force: bool = False,
) -> list[UnitConcepts]:  # fmt: skip
    """:func:`find_concepts` for ``G`` units at once: ``(G, m, J)``, ``(G, m, r)``, ``(G, m)``.

    Units with the same number of positive samples are clustered together
    (:func:`~neuronsplit.methods.elude.kmeans.batched_kmeans`: scikit-learn's k-means without
    its per-call overhead, the same labels).
    """
    positive = activations > 0
    counts = positive.sum(1)
    found: dict[int, UnitConcepts] = {}
    by_count: dict[int, list[int]] = {}
    for i, m in enumerate(counts.tolist()):
        if m < 2 * rule.min_cluster:
            found[i] = UnitConcepts(1, None, float("nan"), m, "few_active")
            continue
        if np.ptp(coords[i][positive[i]], axis=0).max() <= 1e-12:
            found[i] = UnitConcepts(1, None, float("nan"), m, "constant")
            continue
        by_count.setdefault(m, []).append(i)
    for m, units in by_count.items():
        x = np.stack([coords[i][positive[i]] for i in units]).astype(np.float64)
        for i, (score, k, labels) in zip(units, _best_clustering(x, rule), strict=True):
            found[i] = _decide(contributions[i][positive[i]], m, score, k, labels, rule, force)
    return [found[i] for i in range(len(counts))]


def _best_clustering(
    x: np.ndarray, rule: ConceptRule
) -> list[tuple[float, int, np.ndarray | None]]:
    """Per problem of ``x`` ``(G, m, r)``: the best silhouette, its ``K`` and labels (``K = 0``:
    no clustering had clusters of ``rule.min_cluster``)."""
    g, m, _ = x.shape
    best: list[tuple[float, int, np.ndarray | None]] = [(float("nan"), 0, None)] * g
    for k in range(2, min(rule.max_concepts, m // rule.min_cluster) + 1):
        labels, empty = batched_kmeans(x, k, n_init=rule.n_init, seed=rule.seed)
        for i in np.flatnonzero(empty):  # rare: scikit-learn relocates emptied clusters
            from sklearn.cluster import KMeans

            labels[i] = KMeans(k, n_init=rule.n_init, random_state=rule.seed).fit_predict(x[i])
        sizes = (labels[..., None] == np.arange(k)).sum(1).min(-1)
        ok = np.flatnonzero(sizes >= rule.min_cluster)
        if ok.size == 0:
            continue
        scores = batched_silhouette(x[ok], labels[ok], k)
        for i, score in zip(ok.tolist(), scores.tolist(), strict=True):
            if best[i][2] is None or score > best[i][0]:
                best[i] = (score, k, labels[i])
    return best


def _decide(
    contributions: np.ndarray, m: int, score: float, k: int, labels: np.ndarray | None,
    rule: ConceptRule, force: bool,
) -> UnitConcepts:  # fmt: skip
    """The unit's concepts from its best clustering (contributions of its positive samples)."""
    if labels is None:
        return UnitConcepts(1, None, float("nan"), m, "small_clusters")
    if score < rule.min_silhouette and not force:
        return UnitConcepts(1, None, score, m, "low_silhouette")
    c = contributions.astype(np.float64)
    shares = c / np.maximum(np.abs(c).sum(1, keepdims=True), 1e-300)
    assignment, k = _renumber(_route(shares, labels, k, rule.margin), k)
    if k < 2:
        return UnitConcepts(1, None, score, m, "one_subunit_left")
    return UnitConcepts(k, assignment, score, m, "split")

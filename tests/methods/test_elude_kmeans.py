"""The batched k-means and silhouette of ``discover`` give scikit-learn's labels and scores."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import sklearn.cluster
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from neuronsplit.methods.elude import ConceptRule, concepts
from neuronsplit.methods.elude.concepts import UnitConcepts, find_concepts, find_concepts_batch
from neuronsplit.methods.elude.kmeans import batched_kmeans, batched_silhouette


def _problems(seed: int, g: int, m: int, d: int) -> np.ndarray:
    """``g`` problems of ``m`` points around four centres, some with all-zero columns (the
    padded span coordinates ``discover`` clusters)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(g, 4, d)) * rng.uniform(0.5, 3.0)
    which = rng.integers(0, 4, size=(g, m))
    x = centres[np.arange(g)[:, None], which] + rng.normal(size=(g, m, d))
    if seed % 2:
        x[:, :, d // 2 :] = 0.0
    return x


@pytest.mark.parametrize(("seed", "m", "d"), [(0, 8, 3), (1, 17, 32), (2, 32, 32), (3, 24, 5)])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_labels_are_scikit_learns(seed: int, m: int, d: int, k: int) -> None:
    x = _problems(seed, 10, m, d)
    labels, empty = batched_kmeans(x, k, n_init=4, seed=7)
    assert not empty.any()
    for i in range(len(x)):
        ref = KMeans(k, n_init=4, random_state=7).fit_predict(x[i])
        np.testing.assert_array_equal(labels[i], ref)


def test_silhouette_is_scikit_learns_with_singletons_and_absent_clusters() -> None:
    x = _problems(4, 6, 15, 6)
    labels = np.random.default_rng(0).integers(0, 3, size=(6, 15))
    labels[0] = [0] * 14 + [1]  # a singleton cluster scores 0
    labels[1] = [0] * 7 + [2] * 8  # cluster 1 absent
    got = batched_silhouette(x, labels, 3)
    ref = [silhouette_score(p, lab) for p, lab in zip(x, labels, strict=True)]
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_emptied_cluster_is_flagged_and_handed_to_scikit_learn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # two distinct points and K = 3: k-means++ picks a point twice and one centre empties
    x = np.zeros((1, 12, 2))
    x[0, 11] = 1.0  # eleven points at 0, one at 1: K = 2 leaves a cluster of one
    assert batched_kmeans(x, 3)[1].tolist() == [True]
    assert batched_kmeans(x, 2)[1].tolist() == [False]
    # a stand-in for scikit-learn's KMeans whose labels differ from any k-means answer: the
    # batched labels of K = 3 hold an empty cluster and K = 2 a cluster of one, so without
    # the fallback's labels the unit would be "small_clusters" with a NaN silhouette
    handed = np.repeat([0, 1, 2], 4)
    calls: list[tuple[int, int, int, np.ndarray]] = []

    class Recorder:
        def __init__(self, n_clusters: int, *, n_init: int, random_state: int) -> None:
            self.args = (n_clusters, n_init, random_state)

        def fit_predict(self, points: np.ndarray) -> np.ndarray:
            calls.append((*self.args, points.copy()))
            return handed.copy()

    monkeypatch.setattr(sklearn.cluster, "KMeans", Recorder)
    rule = ConceptRule(min_cluster=2, max_concepts=3, n_init=3, seed=5)
    contrib = np.abs(np.random.default_rng(0).normal(size=(12, 5)))
    c = find_concepts(contrib, x[0], rule, np.ones(12), force=True)
    assert [call[:3] for call in calls] == [(3, 3, 5)]  # K = 3 only, the rule's n_init and seed
    np.testing.assert_array_equal(calls[0][3], x[0])
    assert c.reason != "small_clusters"
    assert c.silhouette == pytest.approx(silhouette_score(x[0], handed), abs=1e-12)


def _reference(
    contrib: np.ndarray, coords: np.ndarray, rule: ConceptRule, acts: np.ndarray, force: bool
) -> tuple[UnitConcepts, tuple[int, np.ndarray] | None]:
    """One unit as ``find_concepts`` decided it before batching (commit 7503727): one
    scikit-learn ``KMeans`` and ``silhouette_score`` per ``K``; the best silhouette among the
    clusterings whose clusters all hold ``min_cluster`` samples wins if it reaches
    ``min_silhouette`` (or ``force``). Also the winning ``(K, labels)``."""
    positive = acts > 0
    m = int(positive.sum())
    if m < 2 * rule.min_cluster:
        return UnitConcepts(1, None, float("nan"), m, "few_active"), None
    x = coords[positive]
    if np.ptp(x, axis=0).max() <= 1e-12:
        return UnitConcepts(1, None, float("nan"), m, "constant"), None
    best: tuple[float, int, np.ndarray] | None = None
    for k in range(2, min(rule.max_concepts, m // rule.min_cluster) + 1):
        labels = KMeans(k, n_init=rule.n_init, random_state=rule.seed).fit_predict(x)
        if np.bincount(labels, minlength=k).min() < rule.min_cluster:
            continue
        score = float(silhouette_score(x, labels))
        if best is None or score > best[0]:
            best = (score, k, labels)
    if best is None:
        return UnitConcepts(1, None, float("nan"), m, "small_clusters"), None
    score, k, labels = best
    if score < rule.min_silhouette and not force:
        return UnitConcepts(1, None, score, m, "low_silhouette"), (k, labels)
    # routing: input j to the cluster whose mean share of the activation is largest and
    # positive and beats the runner-up by 1 / (1 - margin); subunits left empty are dropped
    c = contrib[positive]
    shares = c / np.abs(c).sum(1, keepdims=True)
    centroids = np.stack([shares[labels == j].mean(0) for j in range(k)])
    second, first = np.sort(centroids, axis=0)[-2:]
    clear = (first > 0) & ((1 - rule.margin) * first > second)
    winner = np.where(clear, centroids.argmax(0), -1)
    kept = [j for j in range(k) if (winner == j).any()]
    assignment = np.array([kept.index(w) if w >= 0 else -1 for w in winner])
    if len(kept) < 2:
        return UnitConcepts(1, None, score, m, "one_subunit_left"), (k, labels)
    return UnitConcepts(len(kept), assignment, score, m, "split"), (k, labels)


@pytest.mark.parametrize("force", [False, True])
def test_batch_decides_as_one_unit_at_a_time(force: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Units with different numbers of positive samples (clustered in groups of the same
    number), few active and constant ones, against the per-unit scikit-learn loop."""
    rng = np.random.default_rng(3)
    x = _problems(2, 8, 32, 10)
    x[6] = rng.normal(size=(32, 10))  # one blob: no clear concepts
    contrib = np.abs(rng.normal(size=(8, 32, 10)))
    acts = rng.uniform(0.1, 1.0, size=(8, 32))
    acts[1, :9] = -1.0  # 23 positive samples
    acts[2, :28] = 0.0  # 4: too few
    x[3] = 1.0  # constant
    acts[7, ::3] = 0.0  # 21 positive samples
    rule = ConceptRule()
    # the clustering each unit's decision starts from, as find_concepts_batch hands it on
    # (it groups units by their number of samples: the unit is found by its contributions)
    chosen: dict[int, tuple[int, np.ndarray | None]] = {}
    decide = concepts._decide

    def spy(contributions: np.ndarray, *args: Any) -> UnitConcepts:
        unit = [i for i in range(8) if np.array_equal(contrib[i][acts[i] > 0], contributions)]
        chosen[unit[0]] = (args[2], args[3])
        return decide(contributions, *args)

    monkeypatch.setattr(concepts, "_decide", spy)
    batch = find_concepts_batch(contrib, x, rule, acts, force)
    ref = [_reference(contrib[i], x[i], rule, acts[i], force) for i in range(8)]
    reasons = [r.reason for r, _ in ref]
    assert reasons[2:4] == ["few_active", "constant"]
    assert "split" in reasons and ("low_silhouette" in reasons or force)
    for a, (b, _) in zip(batch, ref, strict=True):
        assert (a.k, a.reason, a.samples) == (b.k, b.reason, b.samples)
        assert a.silhouette == pytest.approx(b.silhouette, abs=1e-12, nan_ok=True)
        assert (a.assignment is None) is (b.assignment is None)
        if a.assignment is not None:
            np.testing.assert_array_equal(a.assignment, b.assignment)
    # the chosen K and labels themselves, of every unit clustered at all
    assert sorted(chosen) == [i for i, (_, kl) in enumerate(ref) if kl is not None]
    for i, (k, labels) in chosen.items():
        k_ref, labels_ref = ref[i][1]
        assert k == k_ref
        np.testing.assert_array_equal(labels, labels_ref)


def test_no_restart_is_a_typed_error() -> None:
    from neuronsplit.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="n_init"):
        batched_kmeans(np.zeros((1, 4, 2)), 2, n_init=0)

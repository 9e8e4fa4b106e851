"""The batched k-means and silhouette of ``discover`` give scikit-learn's labels and scores."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from neuronsplit.methods.elude import ConceptRule
from neuronsplit.methods.elude.concepts import find_concepts, find_concepts_batch
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


def test_emptied_cluster_is_flagged_and_handed_to_scikit_learn() -> None:
    # duplicates: k-means++ can pick a point twice, and one of the two centres then empties
    x = np.zeros((1, 12, 2))
    x[0, 6:] = 1.0
    labels, empty = batched_kmeans(x, 3)
    assert empty.tolist() == [True]
    rule = ConceptRule(min_cluster=2, max_concepts=3)
    contrib = np.abs(np.random.default_rng(0).normal(size=(12, 5)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn: fewer distinct clusters than K
        c = find_concepts(contrib, x[0], rule, np.ones(12))
    assert c.samples == 12 and c.reason != "few_active"


def test_batch_decides_as_one_unit_at_a_time() -> None:
    """Units with different numbers of positive samples, few active and constant ones."""
    rng = np.random.default_rng(3)
    x = _problems(2, 6, 32, 10)
    contrib = np.abs(rng.normal(size=(6, 32, 10)))
    acts = rng.uniform(0.1, 1.0, size=(6, 32))
    acts[1, :9] = -1.0  # 23 positive samples
    acts[2, :28] = 0.0  # 4: too few
    x[3] = 1.0  # constant
    rule = ConceptRule()
    batch = find_concepts_batch(contrib, x, rule, acts)
    one = [find_concepts(contrib[i], x[i], rule, acts[i]) for i in range(6)]
    assert [c.reason for c in batch][2:4] == ["few_active", "constant"]
    for a, b in zip(batch, one, strict=True):
        assert (a.k, a.reason, a.samples) == (b.k, b.reason, b.samples)
        assert a.silhouette == pytest.approx(b.silhouette, nan_ok=True)
        assert (a.assignment is None) is (b.assignment is None)
        if a.assignment is not None:
            np.testing.assert_array_equal(a.assignment, b.assignment)

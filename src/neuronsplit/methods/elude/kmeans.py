"""scikit-learn's ``KMeans`` and ``silhouette_score``, batched over many small problems.

``discover`` clusters every unit of a layer: thousands of problems of about 32 points each, for
which scikit-learn spends most of its time validating arguments and limiting thread pools (a
demo ViT's 768 units took about 8 s of 9). :func:`batched_kmeans` runs ``G`` problems of the
same shape at once with numpy and follows scikit-learn's algorithm step by step: the data
centred, greedy k-means++ with ``2 + int(log k)`` local trials drawing from
``numpy.random.RandomState(seed)`` exactly as ``KMeans(random_state=seed)`` does, Lloyd
iterations with the same stopping rules (unchanged labels, or a centre shift within
``1e-4 *`` the mean variance), the run with the lowest inertia kept unless it is the same
clustering. The labels are scikit-learn's up to floating-point rounding (ties broken by a last
bit may differ); a problem in which a cluster empties is flagged so the caller can hand it to
scikit-learn, which relocates empty clusters.

The draws are those of scikit-learn 1.3 and later (hence ``scikit-learn>=1.3`` in
``pyproject.toml``): since 1.3 (sample weights in k-means++) the first centre is
``random_state.choice(m, p=w / w.sum())`` and candidates are found in the cumulative sum of
``w * distance``; up to 1.2 the first centre was ``random_state.randint(m)``, another draw, so
every label differs (checked against 1.2.2 and 1.3.0).
"""

from __future__ import annotations

import numpy as np

from ..._checks import check_int

__all__ = ["batched_kmeans", "batched_silhouette"]

_MAX_ITER = 300  # scikit-learn's default
_TOL = 1e-4


def _sq_distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """``(G, p, q)`` squared distances as scikit-learn computes them: ``-2 a.b + |a|^2 + |b|^2``."""
    d = -2.0 * (a @ b.transpose(0, 2, 1))
    d += (a * a).sum(-1)[..., None]
    d += b_sq[:, None, :]
    return np.maximum(d, 0.0, out=d)


def _plusplus(x: np.ndarray, x_sq: np.ndarray, k: int, rng: np.random.RandomState) -> np.ndarray:
    """Greedy k-means++ centres ``(G, k, d)`` (scikit-learn's ``_kmeans_plusplus``, unit weights)."""
    g, m, _ = x.shape
    rows = np.arange(g)
    trials = 2 + int(np.log(k))
    first = rng.choice(m, p=np.full(m, 1.0 / m))  # the same draw for every problem
    chosen = np.empty((g, k), dtype=np.int64)
    chosen[:, 0] = first
    closest = _sq_distances(x[:, first : first + 1], x, x_sq)[:, 0]  # (G, m)
    pot = closest.sum(-1)
    for c in range(1, k):
        targets = rng.uniform(size=trials)[None, :] * pot[:, None]  # (G, trials)
        cum = np.cumsum(closest, axis=-1)
        cand = (cum[:, :, None] < targets[:, None, :]).sum(1)  # searchsorted, side="left"
        cand = np.minimum(cand, m - 1)
        dist = _sq_distances(x[rows[:, None], cand], x, x_sq)  # (G, trials, m)
        np.minimum(closest[:, None, :], dist, out=dist)
        pots = dist.sum(-1)
        best = pots.argmin(-1)
        pot = pots[rows, best]
        closest = dist[rows, best]
        chosen[:, c] = cand[rows, best]
    return x[rows[:, None], chosen]


def _assign(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Nearest centre by ``|c|^2 - 2 x.c`` (scikit-learn's Lloyd step; first minimum wins)."""
    d = (centers * centers).sum(-1)[:, None, :] - 2.0 * (x @ centers.transpose(0, 2, 1))
    return d.argmin(-1)


def _lloyd(
    x: np.ndarray, centers: np.ndarray, tol: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels (G, m), inertia (G,), empty (G,))`` of Lloyd runs from ``centers``."""
    g, m, _ = x.shape
    k = centers.shape[1]
    labels = np.full((g, m), -1, dtype=np.int64)
    running = np.ones(g, dtype=bool)
    empty = np.zeros(g, dtype=bool)
    centers = centers.copy()
    for _ in range(_MAX_ITER):
        idx = np.flatnonzero(running)
        if idx.size == 0:
            break
        xs, cs = x[idx], centers[idx]
        new_labels = _assign(xs, cs)
        onehot = new_labels[..., None] == np.arange(k)  # (g', m, k)
        counts = onehot.sum(1)  # (g', k)
        empty[idx] |= (counts == 0).any(-1)
        sums = onehot.transpose(0, 2, 1).astype(np.float64) @ xs  # (g', k, d)
        new_centers = sums * (1.0 / np.maximum(counts, 1))[..., None]  # as scikit-learn
        shift = ((new_centers - cs) ** 2).sum((-1, -2))
        same = (new_labels == labels[idx]).all(-1)
        centers[idx], labels[idx] = new_centers, new_labels
        # converged: the labels did not change (they match the centres they produced), or
        # the centres moved within tol (one more assignment step, as scikit-learn does)
        done = same | (shift <= tol[idx])
        shifted = idx[done & ~same]
        if shifted.size:
            labels[shifted] = _assign(x[shifted], centers[shifted])
        running[idx[done]] = False
    else:  # max_iter reached: labels from the last centres
        idx = np.flatnonzero(running)
        if idx.size:
            labels[idx] = _assign(x[idx], centers[idx])
    rows = np.arange(g)[:, None]
    inertia = ((x - centers[rows, labels]) ** 2).sum((-1, -2))
    return labels, inertia, empty


def _same_clustering(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Per problem: does every cluster of ``a`` map into one cluster of ``b`` (scikit-learn's
    ``_is_same_clustering``)?"""
    onehot = a[..., None] == np.arange(k)  # (G, m, k)
    hi = np.where(onehot, b[..., None], -1).max(1)
    lo = np.where(onehot, b[..., None], k).min(1)
    present = onehot.any(1)
    return ((hi == lo) | ~present).all(-1)


def batched_kmeans(
    x: np.ndarray, k: int, *, n_init: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``KMeans(k, n_init=n_init, random_state=seed).fit_predict`` on each of ``G`` problems.

    Parameters
    ----------
    x : numpy.ndarray
        ``(G, m, d)`` float64: ``G`` problems of ``m`` points each, ``m >= k``.
    k, n_init, seed : int
        Clusters, k-means++ restarts and the seed (the same seed for every problem, as one
        ``KMeans`` per problem would use).

    Returns
    -------
    labels : numpy.ndarray
        ``(G, m)`` int64 cluster of each point.
    empty : numpy.ndarray
        ``(G,)`` bool: a cluster emptied during a run (scikit-learn relocates it; recompute
        those problems with scikit-learn).

    Examples
    --------
    >>> from sklearn.cluster import KMeans
    >>> x = np.random.default_rng(0).normal(size=(3, 20, 4))
    >>> labels, empty = batched_kmeans(x, 3)
    >>> ref = [KMeans(3, n_init=4, random_state=0).fit_predict(p) for p in x]
    >>> bool((labels == np.stack(ref)).all()), bool(empty.any())
    (True, False)
    """
    check_int(n_init, "n_init (k-means++ restarts)", low=1)
    x = np.asarray(x, dtype=np.float64)
    tol = x.var(axis=1).mean(-1) * _TOL
    x = x - x.mean(axis=1, keepdims=True)  # scikit-learn centres the data first
    x_sq = (x * x).sum(-1)
    rng = np.random.RandomState(seed)
    # the first restart is the best so far; each later one replaces it where it is better
    best_labels, best_inertia, empty = _lloyd(x, _plusplus(x, x_sq, k, rng), tol)
    for _ in range(n_init - 1):
        labels, inertia, emptied = _lloyd(x, _plusplus(x, x_sq, k, rng), tol)
        empty = empty | emptied
        better = (inertia < best_inertia) & ~_same_clustering(labels, best_labels, k)
        best_labels = np.where(better[:, None], labels, best_labels)
        best_inertia = np.where(better, inertia, best_inertia)
    return best_labels, empty


def batched_silhouette(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``silhouette_score(x[i], labels[i])`` (euclidean) for each problem, ``(G,)``.

    Every problem must have at least two clusters among ``0 .. k-1``; points alone in their
    cluster score 0, as in scikit-learn.

    Examples
    --------
    >>> from sklearn.metrics import silhouette_score
    >>> x = np.random.default_rng(1).normal(size=(2, 12, 3))
    >>> labels = np.array([[0] * 6 + [1] * 6, [0, 1, 2] * 4])
    >>> ref = [silhouette_score(p, lab) for p, lab in zip(x, labels)]
    >>> bool(np.allclose(batched_silhouette(x, labels, 3), ref, atol=1e-12))
    True
    """
    x = np.asarray(x, dtype=np.float64)
    sq = (x * x).sum(-1)
    d = -2.0 * (x @ x.transpose(0, 2, 1))
    d += sq[:, :, None]
    d += sq[:, None, :]
    np.maximum(d, 0.0, out=d)
    d[:, np.arange(x.shape[1]), np.arange(x.shape[1])] = 0.0  # as scikit-learn does
    d = np.sqrt(d)
    onehot = (labels[..., None] == np.arange(k)).astype(np.float64)  # (G, m, k)
    per_cluster = d @ onehot  # (G, m, k): summed distance to each cluster
    sizes = onehot.sum(1)  # (G, k)
    own = onehot.astype(bool)
    own_size = (onehot * sizes[:, None, :]).sum(-1)  # (G, m)
    with np.errstate(divide="ignore", invalid="ignore"):
        intra = (per_cluster * onehot).sum(-1) / (own_size - 1)
        mean_other = np.where(
            own | (sizes[:, None, :] == 0), np.inf, per_cluster / sizes[:, None, :]
        )
        inter = mean_other.min(-1)
        score = (inter - intra) / np.maximum(intra, inter)
    score = np.where(own_size > 1, np.nan_to_num(score), 0.0)
    return score.mean(-1)

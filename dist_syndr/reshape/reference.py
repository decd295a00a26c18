"""Dense brute-force forms of DDCUp and DRCDown, written straight from docs/METHOD.md.

They build full ``n x n`` SciPy distance matrices and loop the way the method is
described, so they are the oracle for tests and the baseline for
``launchers/bench.py reshape``. Memory grows as ``n^2`` and DDCUp's greedy loop
as ``n^3``: never use them on real pools.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist, pdist, squareform


def dense_select_candidates(train_features: np.ndarray, candidate_features: np.ndarray) -> np.ndarray:
    """docs/METHOD.md section 3 steps 1-3 with dense matrices and the repeated global-minimum loop."""
    train_distance = squareform(pdist(train_features.astype(np.float64), "cosine"))
    farthest_train = train_distance.max(axis=1)
    np.fill_diagonal(train_distance, 1.0)
    nearest_train = train_distance.min(axis=1)
    to_train = cdist(candidate_features.astype(np.float64), train_features.astype(np.float64), "cosine")
    radius = np.median(nearest_train)
    inside = np.flatnonzero((to_train.min(axis=1) > radius) & (to_train.max(axis=1) < farthest_train.max()))
    if inside.size <= 1:
        return inside.astype(np.int64)
    between = squareform(pdist(candidate_features[inside].astype(np.float64), "cosine"))
    np.fill_diagonal(between, 1.0)
    alive = list(range(inside.size))
    while len(alive) > 1:
        sub = between[np.ix_(alive, alive)]
        # argmin scans row-major: smallest distance, then smallest row, then smallest column.
        row, _ = np.unravel_index(np.argmin(sub), sub.shape)
        if sub[row].min() >= radius:
            break
        del alive[row]
    return inside[alive].astype(np.int64)


def dense_redundant_clusters(
    features: np.ndarray, labels: np.ndarray, sim_threshold: float = 0.9, label_threshold: float = 1.0
) -> list[np.ndarray]:
    """docs/METHOD.md section 4 steps 1-2 with the dense similarity and label-gap matrices."""
    similarity = 1.0 - squareform(pdist(features.astype(np.float64), "cosine"))
    labels = np.asarray(labels, dtype=np.float64)
    linked = (similarity > sim_threshold) & (np.abs(labels[:, None] - labels[None, :]) < label_threshold)
    np.fill_diagonal(linked, False)
    _, component = connected_components(linked, directed=False)
    clusters = []
    for name in np.unique(component):
        members = np.flatnonzero(component == name)
        if members.size >= 2:
            clusters.append(members.astype(np.int64))
    clusters.sort(key=lambda c: int(c[0]))
    return clusters


def dense_keep_counts(clusters: list[np.ndarray], cap: int = 20) -> dict[int, int]:
    """How many members each cluster keeps, keyed by the cluster's first index."""
    return {int(c[0]): c.size if c.size <= cap else max(cap, c.size // 2) for c in clusters}

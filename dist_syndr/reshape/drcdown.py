"""DRCDown: density-aware redundant cluster downsampling (docs/METHOD.md section 4).

Two samples are linked when their features are nearly parallel
(``cos > sim_threshold``) and their labels nearly equal
(``|y_i - y_j| < label_threshold``). Connected components with two or more
members are the redundant clusters; a cluster larger than ``cap`` keeps a
seeded uniform subset of ``max(cap, floor(m / 2))`` members, everything else is
kept. The graph comes from :mod:`dist_syndr.reshape.neighbors` (FAISS, blocked,
never N x N); components from ``scipy.sparse.csgraph``.

Shapes: ``N`` samples, ``D`` feature dimension.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from dist_syndr import runtime
from dist_syndr.config import DRCDownConfig, NeighborsConfig
from dist_syndr.reshape import neighbors
from dist_syndr.reshape._inputs import check_features, check_labels, check_threshold

log = logging.getLogger(__name__)


@dataclass
class DRCDownResult:
    """Kept indices and the clusters they were chosen from."""

    kept: np.ndarray  # sorted int64 indices
    clusters: list[np.ndarray]
    num_samples: int
    search_stats: dict

    @property
    def largest_cluster(self) -> int:
        """Size of the largest cluster (0 when there is none)."""
        return max((c.size for c in self.clusters), default=0)


def epoch_seed(run_seed: int, epoch: int) -> int:
    """The DRCDown seed for one epoch: resumed runs repeat the same choice."""
    return int(np.random.SeedSequence([int(run_seed), int(epoch)]).generate_state(1, dtype=np.uint32)[0])


def redundant_clusters(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    sim_threshold: float = 0.9,
    label_threshold: float = 1.0,
    search: NeighborsConfig | None = None,
) -> list[np.ndarray]:
    """Clusters with >= 2 members, each a sorted int64 index array; list sorted by first index."""
    return _clusters_and_stats(features, labels, sim_threshold, label_threshold, search)[0]


def downsample(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    cap: int = 20,
    sim_threshold: float = 0.9,
    label_threshold: float = 1.0,
    seed: int = 0,
    search: NeighborsConfig | None = None,
) -> np.ndarray:
    """Sorted int64 indices kept after thinning every cluster larger than ``cap``."""
    return run(
        features,
        labels,
        cap=cap,
        sim_threshold=sim_threshold,
        label_threshold=label_threshold,
        seed=seed,
        search=search,
    ).kept


def run(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    cap: int = 20,
    sim_threshold: float = 0.9,
    label_threshold: float = 1.0,
    seed: int = 0,
    search: NeighborsConfig | None = None,
) -> DRCDownResult:
    """:func:`downsample` with the clusters and search statistics, for logging."""
    if int(cap) != cap or cap < 1:
        raise ValueError(f"cap: expected a positive integer, got {cap!r}")
    clusters, stats = _clusters_and_stats(features, labels, sim_threshold, label_threshold, search)
    num_samples = features.shape[0]
    kept = np.ones(num_samples, dtype=bool)
    rng = np.random.default_rng(seed)
    for cluster in clusters:
        if cluster.size > cap:
            kept[cluster] = False
            chosen = rng.choice(cluster, size=max(int(cap), cluster.size // 2), replace=False)
            kept[chosen] = True
    kept_indices = np.flatnonzero(kept).astype(np.int64)
    log.info(
        "DRCDown: %d of %d kept, %d clusters (largest %d)",
        kept_indices.size,
        num_samples,
        len(clusters),
        max((c.size for c in clusters), default=0),
    )
    return DRCDownResult(kept_indices, clusters, num_samples, stats)


def kept_keys(
    keys: list[str],
    features: np.ndarray,
    labels: np.ndarray,
    *,
    config: DRCDownConfig,
    run_seed: int,
    epoch: int,
    search: NeighborsConfig | None = None,
) -> tuple[list[str], DRCDownResult | None]:
    """Keys of the original samples kept this epoch (docs/METHOD.md section 4, steps 4-5).

    ``keys[i]`` names row ``i`` of ``features``; the result is in that order.
    Upsampled samples never enter here: the caller keeps them all. With
    ``config.enabled`` false every key is kept and no result is returned.
    """
    if len(keys) != features.shape[0]:
        raise ValueError(f"keys: {len(keys)} keys for {features.shape[0]} feature rows")
    duplicates = [key for key, count in collections.Counter(keys).items() if count > 1]
    if duplicates:
        raise ValueError(f"keys: duplicate sample key(s) {duplicates[:3]}; samples are identified by key")
    if not config.enabled:
        return list(keys), None
    result = run(
        features,
        labels,
        cap=config.cap,
        sim_threshold=config.sim_threshold,
        label_threshold=config.label_threshold,
        seed=epoch_seed(run_seed, epoch),
        search=search,
    )
    return [keys[i] for i in result.kept.tolist()], result


def clusters_from_edges(num_nodes: int, rows: np.ndarray, cols: np.ndarray) -> list[np.ndarray]:
    """Connected components with >= 2 members of an edge list, sorted as :func:`redundant_clusters`."""
    if rows.size == 0:
        return []
    graph = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(num_nodes, num_nodes))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    members = np.flatnonzero(sizes[component] >= 2)
    # A stable sort keeps members ascending within each component.
    members = members[np.argsort(component[members], kind="stable")]
    boundaries = np.flatnonzero(np.diff(component[members])) + 1
    clusters = np.split(members.astype(np.int64), boundaries)
    clusters.sort(key=lambda c: int(c[0]))
    return clusters


def _clusters_and_stats(features, labels, sim_threshold, label_threshold, search):
    features = check_features(features, "features")
    labels = check_labels(labels, "labels", features.shape[0])
    sim_threshold = check_threshold(sim_threshold, "sim_threshold", -1.0, 1.0)
    label_threshold = float(label_threshold)
    if not label_threshold > 0 or not np.isfinite(label_threshold):
        raise ValueError(f"label_threshold: expected a positive finite value, got {label_threshold}")
    search = search or NeighborsConfig()

    def labels_close(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.abs(labels[rows] - labels[cols]) < label_threshold

    rank, world_size = runtime.rank_world() if search.split_across_ranks else (0, 1)
    band = neighbors.LabelBand(labels, label_threshold)  # prunes whole blocks before the GEMM; keep decides
    pairs = neighbors.similar_pairs(
        features,
        sim_threshold,
        settings=search,
        keep=labels_close,
        rank=rank,
        world_size=world_size,
        band=band,
        connectivity_only=True,  # only the components matter: a spanning forest bounds the edges' memory
    )
    if world_size > 1:
        pairs = neighbors.gather_pairs(pairs)
    return clusters_from_edges(features.shape[0], pairs.rows, pairs.cols), pairs.stats

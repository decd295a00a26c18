"""DRCDown's redundant clusters as tables: size histograms, the clusters left after downsampling,
and before/after measure tables.

Shapes: clusters are int64 index arrays into ``N`` samples.
"""

from __future__ import annotations

import math

import numpy as np

HISTOGRAM_BINS: tuple[tuple[int, int | None], ...] = ((1, 1), (2, 4), (5, 9), (10, 19), (20, 49), (50, None))
"""Cluster-size bins ``(low, high)`` inclusive; ``None`` is open-ended. Size 1 = in no redundant cluster."""


def cluster_size_histogram(clusters: list[np.ndarray], num_samples: int) -> dict:
    """DRCDown's redundant clusters binned by size (:data:`HISTOGRAM_BINS`).

    Returns ``bins`` (labels ``1``, ``2-4``, ``5-9``, ``10-19``, ``20-49``, ``50+``),
    ``clusters`` (clusters per bin; in bin ``1`` each sample outside every cluster
    counts once), ``samples`` (samples per bin), ``num_samples``, ``num_clusters``
    (clusters of 2 or more) and ``largest`` (1 when there are none).
    """
    if int(num_samples) != num_samples or num_samples < 0:
        raise ValueError(f"num_samples: expected a non-negative integer, got {num_samples!r}")
    sizes = np.array([np.asarray(c).size for c in clusters], dtype=np.int64)
    if sizes.size and sizes.min() < 2:
        raise ValueError(
            f"clusters: cluster {int(np.argmin(sizes))} has {sizes.min()} member(s); redundant clusters have >= 2"
        )
    members = (
        np.concatenate([np.asarray(c, dtype=np.int64).ravel() for c in clusters])
        if clusters
        else np.zeros(0, np.int64)
    )
    if members.size and (members.min() < 0 or members.max() >= num_samples):
        raise ValueError(f"clusters: member indices must lie in [0, {num_samples})")
    if np.unique(members).size != members.size:
        raise ValueError("clusters: a sample belongs to more than one cluster")
    num_singletons = int(num_samples) - members.size
    labels, cluster_counts, sample_counts = [], [], []
    for low, high in HISTOGRAM_BINS:
        labels.append(str(low) if high == low else (f"{low}+" if high is None else f"{low}-{high}"))
        in_bin = (sizes >= low) & (sizes <= (high if high is not None else np.iinfo(np.int64).max))
        if low == 1:
            cluster_counts.append(num_singletons)
            sample_counts.append(num_singletons)
        else:
            cluster_counts.append(int(in_bin.sum()))
            sample_counts.append(int(sizes[in_bin].sum()))
    return {
        "bins": labels,
        "clusters": cluster_counts,
        "samples": sample_counts,
        "num_samples": int(num_samples),
        "num_clusters": int(sizes.size),
        "largest": int(sizes.max()) if sizes.size else 1,
    }


def restrict_clusters(clusters: list[np.ndarray], kept_index: np.ndarray) -> list[np.ndarray]:
    """The clusters after downsampling: kept members only, as positions in ``kept_index``,
    dropping clusters left with fewer than 2 members."""
    kept = np.asarray(kept_index, dtype=np.int64)
    position = {int(row): i for i, row in enumerate(kept.tolist())}
    restricted = []
    for cluster in clusters:
        members = np.array(
            [position[int(row)] for row in np.asarray(cluster).tolist() if int(row) in position], dtype=np.int64
        )
        if members.size >= 2:
            restricted.append(np.sort(members))
    return restricted


def flat_metrics(result: dict[str, dict[str, float]], prefix: str = "diag") -> dict[str, float]:
    """``{f"{prefix}/{measure}/{side}": value}`` from a :func:`before_after` result, for MLflow."""
    return {
        f"{prefix}/{measure}/{side}": float(value)
        for side, measures in result.items()
        for measure, value in measures.items()
    }


def format_table(result: dict[str, dict[str, float]]) -> str:
    """A plain-text before/after table of a :func:`before_after` result."""
    sides = list(result)
    measures = list(result[sides[0]])
    width = max(len(m) for m in measures) + 2
    lines = [f"{'measure':<{width}}" + "".join(f"{side:>12}" for side in sides)]
    for measure in measures:
        cells = "".join(f"{_cell(result[side][measure], measure):>12}" for side in sides)
        lines.append(f"{measure:<{width}}" + cells)
    return "\n".join(lines)


def _cell(value: float, measure: str) -> str:
    if measure == "num_samples":
        return f"{int(value)}"
    return "nan" if math.isnan(value) else f"{value:.4f}"

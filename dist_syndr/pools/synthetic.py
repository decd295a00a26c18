"""Generated feature pools for the demo, benchmarks and tests.

:func:`clustered_pool` imitates what DRCDown sees: samples grouped around
content/distortion centres of varied size and tightness, labels that agree
within a group up to noise; :func:`kadid_like_pool` is the same at a million
rows in bounded memory, with group labels drawn from KADID-10k's DMOS
distribution. :func:`reference_sets` imitates DDCUp's input:
training references plus candidates of which some duplicate a training
reference, some duplicate each other, some lie outside the distribution and
the rest are new, diverse contents.

Shapes: ``N`` samples, ``D`` feature dimension, ``K`` clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dist_syndr.config import SyntheticPoolConfig


@dataclass(frozen=True)
class ClusteredPool:
    """Features ``(N, D)`` float32, labels ``(N,)`` in [0, 10], the generating cluster of each row."""

    features: np.ndarray
    labels: np.ndarray
    cluster: np.ndarray
    keys: list[str]


def clustered_pool(
    num_samples: int, dim: int, num_clusters: int, spread: float = 0.25, seed: int = 0
) -> ClusteredPool:
    """``num_samples`` rows around ``num_clusters`` centres; sizes are skewed, tightness varies."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_clusters, dim)).astype(np.float32)
    weights = rng.lognormal(sigma=1.0, size=num_clusters)
    cluster = rng.choice(num_clusters, size=num_samples, p=weights / weights.sum())
    tightness = rng.uniform(0.5, 1.6, size=num_clusters).astype(np.float32) * spread
    noise = rng.standard_normal(size=(num_samples, dim), dtype=np.float32)
    features = centres[cluster] + noise * tightness[cluster, None]
    base_label = rng.uniform(0.5, 9.5, size=num_clusters)
    labels = np.clip(base_label[cluster] + rng.normal(scale=0.45, size=num_samples), 0.0, 10.0)
    keys = [f"synthetic/{i:08d}" for i in range(num_samples)]
    return ClusteredPool(features, labels, cluster.astype(np.int64), keys)


KADID_DMOS_HISTOGRAM = (
    146,
    474,
    540,
    455,
    530,
    576,
    664,
    630,
    445,
    492,
    490,
    445,
    435,
    460,
    515,
    554,
    679,
    859,
    633,
    103,
)
"""KADID-10k's 10,125 DMOS values scaled to [0, 10] (``10 (d - 1) / 3.93``), counted in 20 bins of 0.5.

Under this distribution 20.3% of all label pairs lie within 1.0 of each other (20.7% for the binned form).
"""


def kadid_dmos_labels(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` labels drawn from :data:`KADID_DMOS_HISTOGRAM` (uniform within a bin)."""
    weights = np.asarray(KADID_DMOS_HISTOGRAM, dtype=np.float64)
    bins = rng.choice(weights.size, size=count, p=weights / weights.sum())
    return (bins + rng.uniform(size=count)) * (10.0 / weights.size)


def kadid_like_pool(
    num_samples: int, dim: int, num_clusters: int, spread: float = 0.25, label_noise: float = 0.3, seed: int = 0
) -> ClusteredPool:
    """:func:`clustered_pool` built in chunks (one float32 ``N x D`` array), group labels from KADID's DMOS.

    Each group's label is drawn from :func:`kadid_dmos_labels`; members add
    ``N(0, label_noise)``, clipped to [0, 10].
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_clusters, dim)).astype(np.float32)
    weights = rng.lognormal(sigma=1.0, size=num_clusters)
    cluster = rng.choice(num_clusters, size=num_samples, p=weights / weights.sum())
    tightness = rng.uniform(0.5, 1.6, size=num_clusters).astype(np.float32) * spread
    features = np.empty((num_samples, dim), dtype=np.float32)
    for start in range(0, num_samples, 1 << 15):
        members = cluster[start : start + (1 << 15)]
        block = rng.standard_normal(size=(members.size, dim), dtype=np.float32)
        block *= tightness[members, None]
        block += centres[members]
        features[start : start + members.size] = block
    group_labels = kadid_dmos_labels(rng, num_clusters)
    labels = np.clip(group_labels[cluster] + rng.normal(scale=label_noise, size=num_samples), 0.0, 10.0)
    keys = [f"synthetic/{i:08d}" for i in range(num_samples)]
    return ClusteredPool(features, labels, cluster.astype(np.int64), keys)


def pool_from_config(config: SyntheticPoolConfig, seed: int) -> ClusteredPool:
    """:func:`clustered_pool` with the sizes of a config section."""
    return clustered_pool(config.num_samples, config.dim, config.num_clusters, config.spread, seed)


@dataclass(frozen=True)
class ReferenceSets:
    """Training references, candidate references and what each candidate was made as."""

    train: np.ndarray  # (T, D) float32
    candidates: np.ndarray  # (A, D) float32
    candidate_kind: list[str]  # new | near-train | near-candidate | outlier
    train_labels: np.ndarray  # (T, 125): a label per (type, level), falling with level


def reference_sets(num_train: int, num_candidates: int, dim: int, seed: int = 0) -> ReferenceSets:
    """DDCUp inputs with a known make-up (see the module docstring).

    New candidates come in scenes of about 20 similar contents, so the
    redundancy removal has real work: most of a scene goes, one survives.
    """
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=dim)
    train = mean + rng.normal(size=(num_train, dim))
    scenes = rng.normal(size=(max(1, num_candidates // 20), dim))
    kinds = rng.choice(["new", "near-train", "near-candidate", "outlier"], size=num_candidates, p=[0.7, 0.1, 0.1, 0.1])
    scene_of = rng.integers(scenes.shape[0], size=num_candidates)
    candidates = mean + 0.7 * scenes[scene_of] + 0.7 * rng.normal(size=(num_candidates, dim))
    for row, kind in enumerate(kinds):
        if kind == "near-train":
            candidates[row] = train[rng.integers(num_train)] + 0.05 * rng.normal(size=dim)
        elif kind == "near-candidate" and row > 0:
            candidates[row] = candidates[rng.integers(row)] + 0.05 * rng.normal(size=dim)
        elif kind == "outlier":
            candidates[row] = -mean + 3.0 * rng.normal(size=dim)
    levels = np.tile(np.arange(5), 25)
    quality = rng.uniform(7.5, 10, size=(num_train, 1)) - 1.6 * levels[None, :]
    train_labels = np.clip(quality + rng.normal(scale=0.3, size=(num_train, 125)), 0, 10)
    return ReferenceSets(train.astype(np.float32), candidates.astype(np.float32), kinds.tolist(), train_labels)

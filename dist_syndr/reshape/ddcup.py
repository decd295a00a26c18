"""DDCUp: distribution-aware diverse content upsampling (docs/METHOD.md section 3).

:func:`select_candidates` keeps candidate contents that lie far from every
training reference yet inside the training distribution, then removes
redundant candidates greedily (the globally closest pair first). Pairwise
candidate distances come from the FAISS neighbour graph as an edge list, so no
``n x n`` matrix is built. :func:`transfer_labels` pseudo-labels each selected
content from its nearest training references.

Shapes: ``T`` training references, ``A`` candidates, ``D`` feature dimension,
``S`` selected candidates, ``C = num_types * num_levels`` label columns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dist_syndr.config import NeighborsConfig, label_column
from dist_syndr.reshape import neighbors
from dist_syndr.reshape._inputs import check_features, check_same_dim

log = logging.getLogger(__name__)

_TRAIN_BLOCK = 4096
# Candidate pairs are searched a hair below the float64 threshold; the exact test follows.
_SEARCH_SLACK = 1e-12


@dataclass(frozen=True)
class TrainingSpread:
    """Per-reference nearest / farthest distances among the training references."""

    nearest: np.ndarray  # (T,) distance to the nearest other reference, capped at 1
    farthest: np.ndarray  # (T,)

    @property
    def redundancy_radius(self) -> float:
        """``median(minT)``: candidates closer than this to anything are redundant."""
        return float(np.median(self.nearest))

    @property
    def outer_radius(self) -> float:
        """``max(maxT)``: candidates must stay within this of every reference."""
        return float(np.max(self.farthest))


def training_spread(train_features: np.ndarray) -> TrainingSpread:
    """``minT`` and ``maxT`` of docs/METHOD.md section 3 step 1, computed in row blocks."""
    train_features = check_features(train_features, "train_features", min_rows=2)
    norms = neighbors.row_norms(train_features)
    num_train = train_features.shape[0]
    nearest = np.empty(num_train)
    farthest = np.empty(num_train)
    for start in range(0, num_train, _TRAIN_BLOCK):
        end = min(start + _TRAIN_BLOCK, num_train)
        block = neighbors.cross_cosine_distance(train_features[start:end], train_features, norms[start:end], norms)
        own = np.arange(start, end)
        block[own - start, own] = 0.0  # the self-distance scipy's squareform puts on the diagonal
        farthest[start:end] = block.max(axis=1)
        block[own - start, own] = 1.0  # filled with 1 before the minimum, as the method does
        nearest[start:end] = block.min(axis=1)
    return TrainingSpread(nearest, farthest)


def candidate_extremes(train_features: np.ndarray, candidate_features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(minA, maxA)``: each candidate's nearest and farthest training-reference distance."""
    train_norms = neighbors.row_norms(train_features)
    candidate_norms = neighbors.row_norms(candidate_features)
    block_rows = max(1, (1 << 24) // max(1, train_features.shape[0]))
    nearest = np.empty(candidate_features.shape[0])
    farthest = np.empty(candidate_features.shape[0])
    for start in range(0, candidate_features.shape[0], block_rows):
        end = min(start + block_rows, candidate_features.shape[0])
        block = neighbors.cross_cosine_distance(
            candidate_features[start:end], train_features, candidate_norms[start:end], train_norms
        )
        nearest[start:end] = block.min(axis=1)
        farthest[start:end] = block.max(axis=1)
    return nearest, farthest


def select_candidates(
    train_features: np.ndarray,
    candidate_features: np.ndarray,
    *,
    search: NeighborsConfig | None = None,
) -> np.ndarray:
    """Int64 indices of the candidates DDCUp selects, ascending (docs/METHOD.md section 3 steps 1-3)."""
    train_features = check_features(train_features, "train_features", min_rows=2)
    candidate_features = check_features(candidate_features, "candidate_features")
    check_same_dim(train_features, candidate_features, "train_features", "candidate_features")
    spread = training_spread(train_features)
    nearest, farthest = candidate_extremes(train_features, candidate_features)
    radius = spread.redundancy_radius
    inside = np.flatnonzero((nearest > radius) & (farthest < spread.outer_radius))
    selected = inside[_remove_redundant(candidate_features[inside], radius, search)]
    log.info(
        "DDCUp: %d candidates, %d inside the training distribution, %d selected (radius %.6f)",
        candidate_features.shape[0],
        inside.size,
        selected.size,
        radius,
    )
    return selected.astype(np.int64)


def _remove_redundant(features: np.ndarray, radius: float, search: NeighborsConfig | None) -> np.ndarray:
    """Positions that survive the closest-pair-first removal (step 3), ascending."""
    num = features.shape[0]
    if num <= 1:
        return np.arange(num)
    pairs = neighbors.similar_pairs(
        features,
        max(-1.0, 1.0 - radius - _SEARCH_SLACK),
        settings=search,
        is_exact_distance=True,
    )
    close = pairs.distance < radius
    rows, cols, distance = pairs.rows[close], pairs.cols[close], pairs.distance[close]
    order = np.lexsort((cols, rows, distance))
    alive = np.ones(num, dtype=bool)
    num_alive = num
    for first, second in zip(rows[order].tolist(), cols[order].tolist(), strict=True):
        if num_alive <= 1:
            break
        if alive[first] and alive[second]:
            alive[first] = False  # the member earlier in the kept list goes
            num_alive -= 1
    return np.flatnonzero(alive)


def transfer_labels(
    train_features: np.ndarray,
    candidate_features: np.ndarray,
    selected: np.ndarray,
    train_label_table: np.ndarray,
    *,
    top_k: int = 5,
    window: float = 0.05,
    weighting: str = "reference",
    temperature: float = 0.05,
) -> np.ndarray:
    """Pseudo labels ``(S, C)`` for the selected candidates (docs/METHOD.md section 3 step 4).

    ``train_label_table[t, label_column(type, level)]`` is reference ``t``'s
    label; each candidate gets the weighted mean over its ``top_k`` nearest
    references within ``window`` of the nearest one. ``weighting="reference"``
    is softmax of the distances (the published behaviour);
    ``"similarity"`` is softmax of ``-distance / temperature``.
    """
    train_features = check_features(train_features, "train_features")
    candidate_features = check_features(candidate_features, "candidate_features")
    check_same_dim(train_features, candidate_features, "train_features", "candidate_features")
    selected = _check_selected(selected, candidate_features.shape[0])
    table = _check_label_table(train_label_table, train_features.shape[0])
    if weighting not in ("reference", "similarity"):
        raise ValueError(f"weighting: expected 'reference' or 'similarity', got {weighting!r}")
    if int(top_k) != top_k or top_k < 1:
        raise ValueError(f"top_k: expected a positive integer, got {top_k!r}")
    if not window >= 0 or not temperature > 0:
        raise ValueError(f"window must be >= 0 and temperature > 0, got {window}, {temperature}")
    distances = neighbors.cross_cosine_distance(
        candidate_features[selected],
        train_features,
        neighbors.row_norms(candidate_features[selected]),
        neighbors.row_norms(train_features),
    )
    labels = np.empty((selected.size, table.shape[1]))
    for row, candidate_distances in enumerate(distances):
        nearest = np.argsort(candidate_distances, kind="stable")[: int(top_k)]
        near = candidate_distances[nearest]
        within = near - near[0] < window
        logits = near[within] if weighting == "reference" else -near[within] / temperature
        weights = np.exp(logits - logits.max())
        weights /= weights.sum()
        labels[row] = weights @ table[nearest[within]]
    return labels


def upsampled_records(
    candidate_names: list[str],
    selected: np.ndarray,
    labels: np.ndarray,
    types: tuple[int, ...] | list[int],
    levels: tuple[int, ...] | list[int],
) -> list[tuple[str, str, int, int, float]]:
    """``(dist_name, ref_name, type, level, score)`` for each upsampled image, in SPEC order.

    Distorted names follow ``{stem}_{tt:02d}_{ll:02d}.bmp``; ``labels`` is the
    :func:`transfer_labels` output for ``selected``.
    """
    records = []
    for row, candidate in enumerate(np.asarray(selected).tolist()):
        ref_name = candidate_names[candidate]
        stem = ref_name.rsplit(".", 1)[0]
        for t in types:
            for level in levels:
                score = float(labels[row, label_column(t, level)])
                records.append((f"{stem}_{t:02d}_{level:02d}.bmp", ref_name, t, level, score))
    return records


def _check_selected(selected: object, num_candidates: int) -> np.ndarray:
    selected = np.asarray(selected)
    if selected.ndim != 1 or (selected.size and selected.dtype.kind not in "iu"):
        raise ValueError(
            f"selected: expected a 1-D integer index array, got dtype {selected.dtype}, shape {selected.shape}"
        )
    selected = selected.astype(np.int64)
    if selected.size and (selected.min() < 0 or selected.max() >= num_candidates):
        raise ValueError(
            f"selected: indices must lie in [0, {num_candidates}), got range [{selected.min()}, {selected.max()}]"
        )
    return selected


def _check_label_table(table: object, num_train: int) -> np.ndarray:
    table = np.asarray(table)
    if table.ndim != 2 or table.shape[0] != num_train or table.dtype.kind not in "fiu":
        raise ValueError(
            f"train_label_table: expected a numeric ({num_train}, types * levels) array, "
            f"got dtype {table.dtype}, shape {table.shape}"
        )
    if not np.isfinite(table).all():
        raise ValueError("train_label_table: contains NaN or inf")
    return table.astype(np.float64)

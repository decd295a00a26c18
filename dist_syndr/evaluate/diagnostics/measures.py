"""Measures of the clustered feature pattern that SynDR-IQA reshapes.

Synthetic IQA features cluster by reference image and by distortion type; DRCDown
thins the densest clusters. This module puts numbers on that pattern:

* :func:`silhouette_by` — cosine silhouette coefficient of a label (ref or type);
* :func:`knn_label_consistency` — share of a sample's k nearest cosine neighbours
  with its label;
* :func:`cheap_measures` — the four label measures at a per-epoch cost;
* :func:`before_after` — the measures on all samples and on DRCDown's kept subset.

No step builds an ``N x N`` matrix. Rows are L2-normalised in blocks of
:data:`BLOCK_ROWS`, and one streaming pass over the pool feeds every measure:
for cosine distance ``1 - u.v`` the mean distance from ``u`` to a label's members
is ``1 - u.S / n`` with ``S`` the sum of their unit vectors, so the silhouette of
each sampled query is exact against the whole pool from per-label sums; k-NN
search is exact, query tiles against database blocks with a running top-k.
Sampling bounds only the number of queries. Cluster tables are in
:mod:`~dist_syndr.evaluate.diagnostics.clusters`, plots in :mod:`~dist_syndr.evaluate.diagnostics.plots`.

Shapes: ``N`` samples, ``D`` feature dimension, ``Q`` sampled queries, ``L`` labels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

BLOCK_ROWS = 8192
"""Rows normalised and searched at a time: memory stays ``O(BLOCK_ROWS * (D + Q))``."""

LABEL_BLOCK = 2048
"""Label sums compared with the queries at a time (``Q x LABEL_BLOCK`` similarities)."""

MEASURES = ("silhouette_ref", "silhouette_type", "knn_ref", "knn_type")
"""The keys of :func:`cheap_measures`."""

_NAN = float("nan")


# ---------------------------------------------------------------------------
# inputs


def check_features(features: object, name: str = "features") -> np.ndarray:
    """``features`` as a 2-D floating numpy array (not copied), or ValueError naming ``name``.

    Finiteness is checked block by block during the pass; all-zero rows are allowed
    (cosine distance 1 to everything, as scikit-learn treats them).
    """
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    if not isinstance(features, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array of shape (N, D), got {type(features).__name__}")
    if features.ndim != 2 or features.shape[1] == 0:
        raise ValueError(f"{name}: expected shape (N, D) with D >= 1, got shape {features.shape}")
    if features.dtype.kind != "f":
        raise ValueError(f"{name}: expected a floating dtype, got {features.dtype}")
    return features


def encode_labels(labels: object, num_rows: int, name: str) -> tuple[np.ndarray, list]:
    """Integer codes ``(N,)`` (-1 where the label is missing) and the distinct labels, sorted.

    Labels may be ints, strings or any hashable; ``None`` and float NaN mean missing.
    """
    array = labels if isinstance(labels, np.ndarray) else np.asarray(labels, dtype=object)
    if array.ndim != 1 or array.shape[0] != num_rows:
        raise ValueError(f"{name}: expected {num_rows} labels (one per feature row), got shape {array.shape}")
    if array.dtype.kind in "iub":
        names, codes = np.unique(array, return_inverse=True)
        return codes.astype(np.int64), names.tolist()
    if array.dtype.kind in "f":
        valid = np.isfinite(array)
    elif array.dtype.kind in "US":
        valid = np.ones(num_rows, dtype=bool)
    else:
        valid = np.array([not _is_missing(value) for value in array.tolist()], dtype=bool)
    codes = np.full(num_rows, -1, dtype=np.int64)
    present = array[valid]
    try:
        names, inverse = np.unique(present, return_inverse=True)
        names = names.tolist()
    except TypeError:  # mixed, unorderable kinds (e.g. ints and strings): order by first appearance
        index: dict = {}
        inverse = np.array([index.setdefault(value, len(index)) for value in present.tolist()], dtype=np.int64)
        names = list(index)
    codes[valid] = inverse
    return codes, names


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ---------------------------------------------------------------------------
# the streaming pass


def _unit_blocks(features: np.ndarray):
    """``(start, unit rows as a float32 tensor)`` for consecutive blocks of ``features``."""
    for start in range(0, features.shape[0], BLOCK_ROWS):
        yield start, unit_rows(features, slice(start, start + BLOCK_ROWS))


def unit_rows(features: np.ndarray, rows: slice | np.ndarray) -> torch.Tensor:
    """The rows ``features[rows]`` L2-normalised as float32 (all-zero rows stay zero)."""
    block = torch.from_numpy(np.ascontiguousarray(features[rows], dtype=np.float32))
    norms = torch.linalg.vector_norm(block, dim=1, keepdim=True)
    # A NaN or inf anywhere in a row makes its norm non-finite: one cheap check per row.
    if not bool(torch.isfinite(norms).all()):
        local = int(torch.nonzero(~torch.isfinite(norms[:, 0]))[0, 0])
        row = rows.start + local if isinstance(rows, slice) else int(rows[local])
        raise ValueError(f"features: row {row} contains NaN or inf (or overflows float32)")
    return block / norms.clamp_min(1e-30)


class _LabelSums:
    """Per-label sums of unit rows, for exact mean cosine distances to every label."""

    def __init__(self, codes: np.ndarray, num_labels: int, dim: int):
        self.codes = torch.from_numpy(codes)
        self.counts = torch.bincount(self.codes[self.codes >= 0], minlength=num_labels).to(torch.float64)
        self.sums = torch.zeros(num_labels, dim)

    def add(self, start: int, unit: torch.Tensor) -> None:
        codes = self.codes[start : start + unit.shape[0]]
        present = codes >= 0
        if bool(present.all()):
            self.sums.index_add_(0, codes, unit)
        else:
            self.sums.index_add_(0, codes[present], unit[present])

    def silhouette(self, queries: torch.Tensor, query_codes: np.ndarray) -> float:
        """Mean silhouette of the query unit rows ``(Q, D)`` against the whole pool."""
        codes = torch.from_numpy(query_codes)
        own_count = self.counts[codes]
        own_dot = (queries * self.sums[codes]).sum(dim=1).double()
        self_dot = (queries * queries).sum(dim=1).double()
        # Mean distance to the other members of its own label (self excluded).
        within = 1.0 - (own_dot - self_dot) / (own_count - 1).clamp_min(1)
        nearest_other = torch.full((queries.shape[0],), math.inf, dtype=torch.float64)
        rows = torch.arange(queries.shape[0])
        for first in range(0, self.sums.shape[0], LABEL_BLOCK):
            sums = self.sums[first : first + LABEL_BLOCK]
            counts = self.counts[first : first + LABEL_BLOCK]
            distance = 1.0 - (queries @ sums.T).double() / counts.clamp_min(1)
            distance[:, counts == 0] = math.inf
            local = codes - first
            inside = (local >= 0) & (local < sums.shape[0])
            distance[rows[inside], local[inside]] = math.inf
            nearest_other = torch.minimum(nearest_other, distance.min(dim=1).values)
        scale = torch.maximum(within, nearest_other)
        silhouette = torch.where(
            scale > 0, (nearest_other - within) / scale.clamp_min(1e-300), torch.zeros_like(scale)
        )
        silhouette = torch.where(own_count > 1, silhouette, torch.zeros_like(silhouette))  # singleton: 0 by convention
        return float(silhouette.mean())


class _TopK:
    """Exact k nearest cosine neighbours of query rows over every pool row that has a label."""

    def __init__(self, query_index: np.ndarray, queries: torch.Tensor, has_label: np.ndarray, k: int):
        self.query_index = torch.from_numpy(query_index)
        self.queries = queries
        self.has_label = torch.from_numpy(has_label)
        self.k = k
        self.best_sims = torch.full((queries.shape[0], 0), -math.inf)
        self.best_index = torch.zeros((queries.shape[0], 0), dtype=torch.int64)

    def add(self, start: int, unit: torch.Tensor) -> None:
        sims = self.queries @ unit.T
        local = self.query_index - start
        inside = (local >= 0) & (local < unit.shape[0])
        sims[torch.nonzero(inside)[:, 0], local[inside]] = -math.inf  # a sample is not its own neighbour
        unlabelled = ~self.has_label[start : start + unit.shape[0]]
        if bool(unlabelled.any()):
            sims[:, unlabelled] = -math.inf
        values, index = torch.topk(sims, min(self.k, sims.shape[1]), dim=1)
        merged_sims = torch.cat([self.best_sims, values], dim=1)
        merged_index = torch.cat([self.best_index, index + start], dim=1)
        values, order = torch.topk(merged_sims, min(self.k, merged_sims.shape[1]), dim=1)
        self.best_sims, self.best_index = values, torch.gather(merged_index, 1, order)

    def consistency(self, codes: np.ndarray, query_codes: np.ndarray) -> float:
        """Mean share of neighbours whose code equals their query's."""
        neighbour_codes = torch.from_numpy(codes)[self.best_index]
        return float((neighbour_codes == torch.from_numpy(query_codes)[:, None]).double().mean())


@dataclass
class _LabelTask:
    name: str
    codes: np.ndarray
    num_labels: int
    sums: _LabelSums | None = None
    silhouette_index: np.ndarray | None = None
    topk: _TopK | None = None
    knn_index: np.ndarray | None = None


def _measure(
    features: np.ndarray,
    labels: dict[str, object],
    *,
    silhouette_queries: int | None,
    knn_queries: int | None,
    k: int,
    seed: int,
) -> dict[str, float]:
    """``silhouette_<name>`` and ``knn_<name>`` for each label set, from one pass over ``features``.

    ``None`` query counts mean every labelled sample; 0 skips that measure.
    """
    features = check_features(features)
    num_rows, dim = features.shape
    if int(k) != k or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    for count, what in ((silhouette_queries, "max_samples"), (knn_queries, "max_queries")):
        if count is not None and (int(count) != count or count < 0):
            raise ValueError(f"{what}: expected a non-negative integer or None, got {count!r}")
    rng = np.random.default_rng(seed)
    results: dict[str, float] = {}
    tasks: list[_LabelTask] = []
    shared_topk: list[tuple[np.ndarray, _TopK, np.ndarray]] = []  # (has_label, search, query index)
    for name, raw in labels.items():
        codes, names = encode_labels(raw, num_rows, name)
        task = _LabelTask(name, codes, len(names))
        has_label = codes >= 0
        num_labelled = int(has_label.sum())
        if task.num_labels < 2:
            log.warning(
                "%s: %d distinct label(s) among %d labelled samples; its measures are undefined (NaN)",
                name,
                task.num_labels,
                num_labelled,
            )
            if silhouette_queries != 0:
                results[f"silhouette_{name}"] = _NAN
            if knn_queries != 0:
                results[f"knn_{name}"] = _NAN
            continue
        if silhouette_queries != 0:
            task.sums = _LabelSums(codes, task.num_labels, dim)
            task.silhouette_index = sample_rows(np.flatnonzero(has_label), silhouette_queries, rng)
        if knn_queries != 0:
            # Label sets missing on the same rows share one search (the costly part).
            for other_has_label, search, query_index in shared_topk:
                if np.array_equal(other_has_label, has_label):
                    task.topk, task.knn_index = search, query_index
                    break
            else:
                query_index = sample_rows(np.flatnonzero(has_label), knn_queries, rng)
                queries = unit_rows(features, query_index)
                task.topk = _TopK(query_index, queries, has_label, min(int(k), num_labelled - 1))
                task.knn_index = query_index
                shared_topk.append((has_label, task.topk, query_index))
        tasks.append(task)
    searches = [search for _, search, _ in shared_topk]
    if any(task.sums is not None for task in tasks) or searches:
        for start, unit in _unit_blocks(features):
            for task in tasks:
                if task.sums is not None:
                    task.sums.add(start, unit)
            for search in searches:
                search.add(start, unit)
    for task in tasks:
        if task.sums is not None:
            queries = unit_rows(features, task.silhouette_index)
            results[f"silhouette_{task.name}"] = task.sums.silhouette(queries, task.codes[task.silhouette_index])
        if task.topk is not None:
            results[f"knn_{task.name}"] = task.topk.consistency(task.codes, task.codes[task.knn_index])
    return results


def sample_rows(candidates: np.ndarray, count: int | None, rng: np.random.Generator) -> np.ndarray:
    if count is None or candidates.size <= count:
        return candidates.astype(np.int64)
    return np.sort(rng.choice(candidates, size=int(count), replace=False)).astype(np.int64)


# ---------------------------------------------------------------------------
# measures


def silhouette_by(features: np.ndarray, labels: Sequence, *, max_samples: int | None = 5000, seed: int = 0) -> float:
    """Mean cosine silhouette coefficient of ``labels`` over the features ``(N, D)``.

    The silhouette of each of up to ``max_samples`` sampled queries is exact against
    the whole pool (as ``sklearn.metrics.silhouette_score(..., metric="cosine")``
    computes it, singleton labels scoring 0); with ``N <= max_samples`` the result is
    that score. Samples whose label is ``None`` are left out. Cost ``O(N D + Q L D)``.
    NaN, with a logged warning, when fewer than two distinct labels are present.
    """
    return _measure(features, {"labels": labels}, silhouette_queries=max_samples, knn_queries=0, k=1, seed=seed)[
        "silhouette_labels"
    ]


def knn_label_consistency(
    features: np.ndarray, labels: Sequence, *, k: int = 10, max_queries: int | None = 5000, seed: int = 0
) -> float:
    """Share of each sampled query's ``k`` nearest cosine neighbours (itself excluded) with its label.

    Exact search over every labelled sample in blocks of :data:`BLOCK_ROWS` rows
    (memory ``O(Q * BLOCK_ROWS)``, never ``N x N``); up to ``max_queries`` queries.
    Chance level is ``sum_c p_c^2`` for label frequencies ``p_c``. Samples labelled
    ``None`` are neither queries nor neighbours. NaN with a warning below two labels.
    """
    return _measure(features, {"labels": labels}, silhouette_queries=0, knn_queries=max_queries, k=k, seed=seed)[
        "knn_labels"
    ]


def cheap_measures(
    features: np.ndarray,
    refs: Sequence,
    types: Sequence,
    *,
    seed: int = 0,
    max_samples: int = 2000,
    knn_queries: int | None = None,
    k: int = 10,
) -> dict[str, float]:
    """``silhouette_ref``, ``silhouette_type``, ``knn_ref`` and ``knn_type`` in one pass.

    Meant for every epoch: silhouettes from ``max_samples`` queries, k-NN from
    ``knn_queries`` (default ``max_samples // 4``) queries searched over the whole pool.
    Labels may be strings or ints; ``None`` excludes a sample from that label's measures.
    """
    knn_queries = max(1, max_samples // 4) if knn_queries is None else knn_queries
    measured = _measure(
        features, {"ref": refs, "type": types}, silhouette_queries=max_samples, knn_queries=knn_queries, k=k, seed=seed
    )
    return {name: measured[name] for name in MEASURES}


def before_after(
    features: np.ndarray,
    refs: Sequence,
    types: Sequence,
    scores: Sequence[float],
    kept_index: np.ndarray,
    *,
    max_samples: int = 5000,
    k: int = 10,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """The measures on all samples (``before``) and on the rows ``kept_index`` (``after``).

    Each side holds :data:`MEASURES` (silhouettes and k-NN from up to ``max_samples``
    queries) plus ``num_samples``, ``score_mean`` and ``score_std``.
    """
    features = check_features(features)
    num_rows = features.shape[0]
    kept = np.asarray(kept_index)
    if kept.ndim != 1 or (kept.size and kept.dtype.kind not in "iu"):
        raise ValueError(f"kept_index: expected a 1-D integer index array, got dtype {kept.dtype} shape {kept.shape}")
    kept = kept.astype(np.int64)
    if kept.size and (kept.min() < 0 or kept.max() >= num_rows):
        raise ValueError(f"kept_index: indices must lie in [0, {num_rows}), got [{kept.min()}, {kept.max()}]")
    if np.unique(kept).size != kept.size:
        raise ValueError("kept_index: repeated indices")
    refs_array, types_array = labels_array(refs, num_rows, "refs"), labels_array(types, num_rows, "types")
    scores_array = np.asarray(scores, dtype=np.float64)
    if scores_array.shape != (num_rows,):
        raise ValueError(f"scores: expected {num_rows} scores, got shape {scores_array.shape}")
    result = {}
    for side, rows in (("before", None), ("after", kept)):
        subset = (lambda a: a) if rows is None else (lambda a, rows=rows: a[rows])
        measured = _measure(
            subset(features),
            {"ref": subset(refs_array), "type": subset(types_array)},
            silhouette_queries=max_samples,
            knn_queries=max_samples,
            k=k,
            seed=seed,
        )
        side_scores = subset(scores_array)
        finite = side_scores[np.isfinite(side_scores)]
        result[side] = {name: measured[name] for name in MEASURES} | {
            "num_samples": float(side_scores.size),
            "score_mean": float(finite.mean()) if finite.size else _NAN,
            "score_std": float(finite.std()) if finite.size else _NAN,
        }
    return result


def labels_array(labels: Sequence, num_rows: int, name: str) -> np.ndarray:
    array = labels if isinstance(labels, np.ndarray) else np.asarray(labels, dtype=object)
    if array.shape != (num_rows,):
        raise ValueError(f"{name}: expected {num_rows} labels (one per feature row), got shape {array.shape}")
    return array

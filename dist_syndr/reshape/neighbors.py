"""Cosine neighbour graph over feature rows, built with FAISS without an N x N matrix.

The graph holds every pair ``i < j`` whose cosine similarity exceeds a threshold.
Search runs on L2-normalised float32 copies of the rows with an exact
inner-product index (CPU: blocked range search over the upper triangle; GPUs:
k-NN whose k grows until the k-th neighbour falls below the threshold). Pairs
whose float32 similarity lies within ``margin`` of the threshold are re-decided
in float64 with SciPy's ``cosine`` formula, so the edges do not depend on the
backend. An IVF index is an opt-in for pools beyond exact reach; it reports its
measured edge recall against exact search on sampled rows.

Shapes: ``N`` rows, ``D`` feature dimension, ``E`` edges.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from dist_syndr import runtime
from dist_syndr.config import NeighborsConfig
from dist_syndr.reshape._inputs import check_features, check_threshold
from dist_syndr.reshape.scanners import cpu_scanner

log = logging.getLogger(__name__)

PairFilter = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Takes edge endpoint arrays ``(rows, cols)`` and returns a boolean keep-mask."""

_EPS32 = 2.0**-24
_PAIR_CHUNK = 1 << 16
_GPU_START_K = 64


@dataclass(frozen=True)
class LabelBand:
    """A label condition ``|y_i - y_j| < width`` that every kept pair meets (``keep`` still decides exactly)."""

    labels: np.ndarray  # (N,) float64
    width: float


@dataclass
class Pairs:
    """Edges ``rows[e] < cols[e]`` with their cosine distance ``1 - cos``.

    ``distance`` is the float64 SciPy-formula value where ``is_exact`` says so
    (always for pairs near the threshold), else ``1 - float32 similarity``.
    """

    rows: np.ndarray
    cols: np.ndarray
    distance: np.ndarray
    is_exact: bool
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rows.size)

    @staticmethod
    def concatenate(parts: list[Pairs], stats: dict | None = None, is_exact: bool = True) -> Pairs:
        """Join edge lists (in the order given)."""
        if not parts:
            return _with_stats(_empty_pairs(is_exact), **(stats or {}))
        rows = np.concatenate([p.rows for p in parts])
        cols = np.concatenate([p.cols for p in parts])
        distance = np.concatenate([p.distance for p in parts])
        merged_stats = dict(parts[0].stats) | (stats or {})
        return Pairs(rows, cols, distance, all(p.is_exact for p in parts), merged_stats)


def row_norms(features: np.ndarray) -> np.ndarray:
    """Float64 Euclidean norm of every row, computed in bounded chunks."""
    norms = np.empty(features.shape[0], dtype=np.float64)
    for start in range(0, features.shape[0], _PAIR_CHUNK):
        block = features[start : start + _PAIR_CHUNK].astype(np.float64)
        norms[start : start + block.shape[0]] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return norms


def pair_cosine_distance(features: np.ndarray, norms: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Float64 cosine distance of the listed pairs with SciPy's formula.

    ``1 - dot(u, v) / (|u| |v|)``, the cosine clipped to [-1, 1] as
    ``scipy.spatial.distance.cdist(..., "cosine")`` does.
    """
    out = np.empty(rows.size, dtype=np.float64)
    for start in range(0, rows.size, _PAIR_CHUNK):
        r = rows[start : start + _PAIR_CHUNK]
        c = cols[start : start + _PAIR_CHUNK]
        dots = np.einsum("ij,ij->i", features[r].astype(np.float64), features[c].astype(np.float64))
        cosine = np.clip(dots / (norms[r] * norms[c]), -1.0, 1.0)
        out[start : start + r.size] = 1.0 - cosine
    return out


def cross_cosine_distance(
    queries: np.ndarray, database: np.ndarray, query_norms: np.ndarray, database_norms: np.ndarray
) -> np.ndarray:
    """Dense float64 cosine distances ``(len(queries), len(database))``; callers keep both small."""
    dots = queries.astype(np.float64) @ database.astype(np.float64).T
    cosine = np.clip(dots / np.outer(query_norms, database_norms), -1.0, 1.0)
    return 1.0 - cosine


def normalized_float32(features: np.ndarray) -> np.ndarray:
    """L2-normalised float32 copy of the rows (the search-side representation).

    Its rounding (a few float32 ulps) lies well inside the re-decision margin.
    """
    out = np.empty(features.shape, dtype=np.float32)
    for start in range(0, features.shape[0], _PAIR_CHUNK):
        block = features[start : start + _PAIR_CHUNK].astype(np.float32)
        block /= np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]
        out[start : start + block.shape[0]] = block
    return out


def auto_margin(dim: int) -> float:
    """A bound on the float32 inner-product error of unit vectors of dimension ``dim``."""
    return (dim + 8) * _EPS32


def similar_pairs(
    features: np.ndarray,
    min_similarity: float,
    *,
    settings: NeighborsConfig | None = None,
    keep: PairFilter | None = None,
    is_exact_distance: bool = False,
    rank: int = 0,
    world_size: int = 1,
    band: LabelBand | None = None,
) -> Pairs:
    """All pairs ``i < j`` with ``cos(F_i, F_j) > min_similarity``, decided in float64.

    ``keep`` filters edges block by block (e.g. a label condition) before they
    are stored. ``band`` (DRCDown's label condition) lets the exact CPU search skip,
    before any arithmetic, every block of pairs whose labels lie too far apart to
    pass ``keep``: the edges are the same, the work shrinks to the label-banded
    blocks. With ``world_size > 1`` only this rank's share of the work is
    searched; combine shares with :func:`gather_pairs`. With
    ``is_exact_distance`` every returned distance is the float64 value.
    """
    settings = settings or NeighborsConfig()
    features = check_features(features, "features")
    min_similarity = check_threshold(min_similarity, "min_similarity", -1.0, 1.0)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    search = _Search(features, min_similarity, settings, keep, is_exact_distance)
    started = time.perf_counter()
    if settings.index == "ivf":
        pairs = search.ivf(rank, world_size)
    elif _use_gpu(settings):
        pairs = search.gpu(rank, world_size)
    elif band is not None:
        pairs = search.cpu_banded(band, rank, world_size)
    else:
        pairs = search.cpu(rank, world_size)
    pairs = canonical_order(pairs)
    pairs.stats["seconds"] = time.perf_counter() - started
    pairs.stats["num_edges"] = len(pairs)
    return pairs


def gather_pairs(pairs: Pairs) -> Pairs:
    """All ranks' edges on every rank, in canonical order (identity without a process group)."""
    rows = runtime.all_gather_array(pairs.rows)
    cols = runtime.all_gather_array(pairs.cols)
    distance = runtime.all_gather_array(pairs.distance)
    parts = [Pairs(r, c, d, pairs.is_exact) for r, c, d in zip(rows, cols, distance, strict=True)]
    return canonical_order(Pairs.concatenate(parts, pairs.stats, pairs.is_exact))


def canonical_order(pairs: Pairs) -> Pairs:
    """The edges sorted by ``(rows, cols)``: the same arrays whatever backend, block size or rank split found them."""
    if len(pairs) < 2:
        return pairs
    order = np.lexsort((pairs.cols, pairs.rows))
    return Pairs(pairs.rows[order], pairs.cols[order], pairs.distance[order], pairs.is_exact, pairs.stats)


def _use_gpu(settings: NeighborsConfig) -> bool:
    if settings.backend == "cpu":
        return False
    num_gpus = runtime.faiss_gpu_count()
    if settings.backend == "gpu" and num_gpus == 0:
        raise ValueError(
            "reshape.neighbors.backend=gpu but FAISS sees no GPU (install dist_syndr[gpu] on a CUDA machine)"
        )
    return num_gpus > 0


def _empty_pairs(is_exact: bool) -> Pairs:
    empty = np.empty(0, dtype=np.int64)
    return Pairs(empty, empty.copy(), np.empty(0, dtype=np.float64), is_exact)


def balanced_assignment(costs: list[int], world_size: int, rank: int) -> list[int]:
    """Items for ``rank`` when each goes, costliest first, to the least-loaded rank (ascending)."""
    loads = [0] * world_size
    mine = []
    for item in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        owner = min(range(world_size), key=lambda r: (loads[r], r))
        loads[owner] += costs[item]
        if owner == rank:
            mine.append(item)
    return sorted(mine)


class _Search:
    """One similarity search: shared state for the CPU, GPU and IVF paths."""

    def __init__(self, features, min_similarity, settings, keep, is_exact_distance):
        self.features = features
        self.threshold = min_similarity
        self.settings = settings
        self.keep = keep
        self.is_exact_distance = is_exact_distance
        self.margin = settings.margin if settings.margin > 0 else auto_margin(features.shape[1])
        self.radius = np.float32(min_similarity - self.margin)
        self.unit = normalized_float32(features)
        self.norms = row_norms(features)

    @property
    def faiss(self):
        return runtime.import_faiss()

    # -- edge decisions -------------------------------------------------
    def decide(self, rows: np.ndarray, cols: np.ndarray, sims: np.ndarray) -> Pairs:
        """Keep upper-triangle edges that pass ``keep`` and the float64 threshold test."""
        mask = cols > rows
        rows, cols, sims = rows[mask], cols[mask], sims[mask]
        if self.keep is not None and rows.size:
            mask = self.keep(rows, cols)
            rows, cols, sims = rows[mask], cols[mask], sims[mask]
        distance = 1.0 - sims.astype(np.float64)
        if self.is_exact_distance:
            recheck = np.ones(rows.size, dtype=bool)
        else:
            recheck = sims <= self.threshold + self.margin
        if recheck.any():
            distance[recheck] = pair_cosine_distance(self.features, self.norms, rows[recheck], cols[recheck])
        accept = (1.0 - distance) > self.threshold
        accept |= ~recheck
        return Pairs(rows[accept], cols[accept], distance[accept], self.is_exact_distance)

    # -- exact CPU: database chunks, queries restricted to the upper triangle
    def cpu(self, rank: int, world_size: int) -> Pairs:
        num_rows = self.unit.shape[0]
        chunk = self.settings.database_block
        num_chunks = -(-num_rows // chunk)
        scanner_type = cpu_scanner(self.settings.cpu_engine)
        parts = []
        # Chunk c is searched by every row before its end: later chunks cost more.
        costs = [min((c + 1) * chunk, num_rows) for c in range(num_chunks)]
        my_chunks = balanced_assignment(costs, world_size, rank)
        for chunk_id in tqdm(my_chunks, desc="neighbour graph", unit="block", disable=self._quiet()):
            start, end = chunk_id * chunk, min((chunk_id + 1) * chunk, num_rows)
            scan = scanner_type(self.unit[start:end], self.radius)
            for query_start in range(0, end, self.settings.query_block):
                query_end = min(query_start + self.settings.query_block, end)
                rows, cols, sims = scan(self.unit[query_start:query_end])
                parts.append(self.decide(rows + query_start, cols + start, sims))
        stats = {"backend": scanner_type.name, "index": "flat"}
        return Pairs.concatenate(parts, stats, self.is_exact_distance)

    # -- exact CPU over label-banded blocks: rows sorted by label, each database block searched only by the
    # earlier rows whose labels lie within the band of its own label range
    def cpu_banded(self, band: LabelBand, rank: int, world_size: int) -> Pairs:
        num_rows = self.unit.shape[0]
        order = np.argsort(band.labels, kind="stable")
        sorted_labels = band.labels[order]
        unit = self.unit[order]
        chunk = self.settings.database_block
        starts = list(range(0, num_rows, chunk))
        # Block [s, e) meets only rows whose labels reach its lowest one; inclusive, so no pair is lost.
        firsts = [int(np.searchsorted(sorted_labels, sorted_labels[s] - band.width, side="left")) for s in starts]
        costs = [min(s + chunk, num_rows) - first for s, first in zip(starts, firsts, strict=True)]
        scanner_type = cpu_scanner(self.settings.cpu_engine)
        parts = []
        for block in tqdm(
            balanced_assignment(costs, world_size, rank), desc="neighbour graph", unit="block", disable=self._quiet()
        ):
            start, end = starts[block], min(starts[block] + chunk, num_rows)
            scan = scanner_type(unit[start:end], self.radius)
            for query_start in range(firsts[block], end, self.settings.query_block):
                query_end = min(query_start + self.settings.query_block, end)
                rows, cols, sims = scan(unit[query_start:query_end])
                rows, cols = rows + query_start, cols + start
                upper = cols > rows  # each sorted pair once
                first, second = order[rows[upper]], order[cols[upper]]
                parts.append(self.decide(np.minimum(first, second), np.maximum(first, second), sims[upper]))
        searched = sum(costs[b] * (min(starts[b] + chunk, num_rows) - starts[b]) for b in range(len(starts)))
        stats = {
            "backend": scanner_type.name,
            "index": "flat",
            "banded_pair_share": searched / max(1, num_rows**2 / 2),
        }
        return Pairs.concatenate(parts, stats, self.is_exact_distance)

    # -- exact GPU: k-NN with growing k, CPU range search for saturated rows
    def gpu(self, rank: int, world_size: int) -> Pairs:
        num_rows, dim = self.unit.shape
        cpu_index = self.faiss.IndexFlatIP(dim)
        cpu_index.add(self.unit)
        gpu_index = runtime.faiss_index_to_gpus(cpu_index)
        bounds = np.linspace(0, num_rows, world_size + 1).astype(np.int64)
        parts = []
        for query_start in range(bounds[rank], bounds[rank + 1], self.settings.query_block):
            query_end = min(query_start + self.settings.query_block, bounds[rank + 1])
            parts.append(self._gpu_block(gpu_index, cpu_index, query_start, query_end))
        stats = {"backend": "faiss-gpu", "index": "flat", "num_gpus": runtime.faiss_gpu_count()}
        return Pairs.concatenate(parts, stats, self.is_exact_distance)

    def _gpu_block(self, gpu_index, cpu_index, query_start: int, query_end: int) -> Pairs:
        num_rows = self.unit.shape[0]
        pending = np.arange(query_start, query_end, dtype=np.int64)
        k = min(_GPU_START_K, num_rows, self.settings.max_gpu_k)
        parts = []
        while pending.size:
            sims, ids = gpu_index.search(self.unit[pending], k)
            saturated = sims[:, -1] > self.radius
            done = ~saturated if k < num_rows else np.ones_like(saturated)
            parts.append(self._knn_rows(pending[done], sims[done], ids[done]))
            pending = pending[~done]
            if pending.size and k >= self.settings.max_gpu_k:
                parts.extend(self._range_block_rows(cpu_index, pending))
                break
            k = min(2 * k, num_rows, self.settings.max_gpu_k)
        return Pairs.concatenate(parts, is_exact=self.is_exact_distance)

    def _knn_rows(self, rows: np.ndarray, sims: np.ndarray, ids: np.ndarray) -> Pairs:
        hit = (sims > self.radius) & (ids >= 0)
        counts = hit.sum(axis=1)
        return self.decide(np.repeat(rows, counts), ids[hit].astype(np.int64), sims[hit])

    def _range_block_rows(self, index, rows: np.ndarray) -> list[Pairs]:
        lims, sims, ids = index.range_search(self.unit[rows], float(self.radius))
        return [self.decide(np.repeat(rows, np.diff(lims).astype(np.int64)), ids.astype(np.int64), sims)]

    # -- approximate: IVF, symmetric union, measured edge recall
    def ivf(self, rank: int, world_size: int) -> Pairs:
        index = self._train_ivf()
        num_rows = self.unit.shape[0]
        bounds = np.linspace(0, num_rows, world_size + 1).astype(np.int64)
        parts = []
        for query_start in range(bounds[rank], bounds[rank + 1], self.settings.query_block):
            query_end = min(query_start + self.settings.query_block, bounds[rank + 1])
            lims, sims, ids = index.range_search(self.unit[query_start:query_end], float(self.radius))
            rows = np.repeat(np.arange(query_start, query_end, dtype=np.int64), np.diff(lims).astype(np.int64))
            ids = ids.astype(np.int64)
            # IVF is asymmetric: an edge found from either end counts.
            low, high = np.minimum(rows, ids), np.maximum(rows, ids)
            parts.append(self.decide(low, high, sims))
        pairs = _unique_pairs(Pairs.concatenate(parts, is_exact=self.is_exact_distance))
        pairs.stats.update(backend="faiss-cpu", index="ivf", nlist=index.nlist, nprobe=index.nprobe)
        pairs.stats["edge_recall"] = self._measure_recall(index)
        log.info("IVF neighbour graph: %d edges, measured edge recall %.4f", len(pairs), pairs.stats["edge_recall"])
        return pairs

    def _train_ivf(self):
        num_rows, dim = self.unit.shape
        nlist = self.settings.ivf_nlist or max(1, int(4 * np.sqrt(num_rows)))
        nlist = min(nlist, num_rows)
        quantizer = self.faiss.IndexFlatIP(dim)
        index = self.faiss.IndexIVFFlat(quantizer, dim, nlist, self.faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample_size = min(num_rows, nlist * 64)
        index.train(self.unit[np.sort(rng.choice(num_rows, sample_size, replace=False))])
        index.add(self.unit)
        index.nprobe = min(self.settings.ivf_nprobe, nlist)
        return index

    def _measure_recall(self, index) -> float:
        """Share of exact edges touching sampled rows that the IVF search also finds."""
        num_rows = self.unit.shape[0]
        rng = np.random.default_rng(1)
        sample = np.sort(rng.choice(num_rows, min(self.settings.recall_sample, num_rows), replace=False))
        exact = self._edge_set(*self._sampled_exact_hits(sample))
        if not exact:
            return 1.0
        lims, sims, ids = index.range_search(self.unit[sample], float(self.radius))
        found = self._edge_set(np.repeat(sample, np.diff(lims).astype(np.int64)), ids.astype(np.int64), sims)
        return len(exact & found) / len(exact)

    def _sampled_exact_hits(self, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact search of the sampled rows against every database chunk (no full copy)."""
        scanner_type = cpu_scanner(self.settings.cpu_engine)
        chunk = self.settings.database_block
        rows, cols, sims = [], [], []
        for start in range(0, self.unit.shape[0], chunk):
            local_rows, local_cols, local_sims = scanner_type(self.unit[start : start + chunk], self.radius)(
                self.unit[sample]
            )
            rows.append(sample[local_rows])
            cols.append(local_cols + start)
            sims.append(local_sims)
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(sims)

    def _edge_set(self, rows: np.ndarray, cols: np.ndarray, sims: np.ndarray) -> set[tuple[int, int]]:
        pairs = self.decide(np.minimum(rows, cols), np.maximum(rows, cols), sims)
        return set(zip(pairs.rows.tolist(), pairs.cols.tolist(), strict=True))

    def _quiet(self) -> bool:
        return self.unit.shape[0] < self.settings.progress_min_rows


def _unique_pairs(pairs: Pairs) -> Pairs:
    """Drop repeated edges; the result is sorted by ``(rows, cols)``."""
    if not len(pairs):
        return pairs
    order = np.lexsort((pairs.cols, pairs.rows))
    rows, cols, distance = pairs.rows[order], pairs.cols[order], pairs.distance[order]
    keep = np.ones(rows.size, dtype=bool)
    keep[1:] = (np.diff(rows) != 0) | (np.diff(cols) != 0)
    return Pairs(rows[keep], cols[keep], distance[keep], pairs.is_exact, pairs.stats)


def _with_stats(pairs: Pairs, **stats) -> Pairs:
    pairs.stats.update(stats)
    return pairs

"""Cosine neighbour graph over feature rows, built without an N x N matrix.

The graph holds every pair ``i < j`` whose cosine similarity exceeds a threshold.
Backends (``reshape.neighbors.backend``):

- with a label band (DRCDown), ``cpu`` and ``torch-cuda`` run the label-banded
  torch search of :mod:`dist_syndr.reshape.banded_search` in bf16 or fp32 with
  proven bounds (on the CPU, or on every GPU this process owns);
- without one (DDCUp), ``cpu`` is a blocked range search over the upper triangle
  on L2-normalised float32 rows (:mod:`dist_syndr.reshape.scanners`), and
  ``torch-cuda`` the banded search with a single band;
- ``faiss-gpu``: FAISS GPU flat indexes, k-NN whose k grows until the k-th
  neighbour falls below the threshold.

Pairs near the threshold are re-decided in float64 with SciPy's ``cosine``
formula (:func:`~dist_syndr.reshape.pairs.decide_edges`), so the edges do not
depend on the backend. An IVF index is an opt-in for pools beyond exact reach;
it reports its measured edge recall against exact search on sampled rows.

Shapes: ``N`` rows, ``D`` feature dimension, ``E`` edges.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from tqdm.auto import tqdm

from dist_syndr import collectives, runtime
from dist_syndr.config import NeighborsConfig
from dist_syndr.reshape._inputs import check_features, check_threshold
from dist_syndr.reshape.banded_search import BandedSearch, LabelBand, balanced_assignment
from dist_syndr.reshape.pairs import (
    Decision,
    PairFilter,
    Pairs,
    canonical_order,
    decide_edges,
    pair_cosine_distance,
    row_norms,
)
from dist_syndr.reshape.scanners import cpu_scanner

__all__ = [
    "LabelBand",
    "Pairs",
    "balanced_assignment",
    "canonical_order",
    "cross_cosine_distance",
    "gather_pairs",
    "pair_cosine_distance",
    "row_norms",
    "similar_pairs",
]

log = logging.getLogger(__name__)

_EPS32 = 2.0**-24
_PAIR_CHUNK = 1 << 16
_GPU_START_K = 64
_FAISS_GPU_HINT = "install faiss-gpu on a CUDA machine, or use backend torch-cuda"


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
    connectivity_only: bool = False,
) -> Pairs:
    """All pairs ``i < j`` with ``cos(F_i, F_j) > min_similarity``, decided in float64.

    ``keep`` filters edges block by block (e.g. a label condition) before they
    are stored. ``band`` (DRCDown's label condition) lets the search skip,
    before any arithmetic, every block of pairs whose labels lie too far apart to
    pass ``keep``: the edges are the same, the work shrinks to the label-banded
    blocks. With ``world_size > 1`` only this rank's share of the work is
    searched; combine shares with :func:`gather_pairs`. With
    ``is_exact_distance`` every returned distance is the float64 value. With
    ``connectivity_only`` the banded search may return a spanning forest of the
    graph's components instead of every edge (bounded memory; DRCDown).
    """
    settings = settings or NeighborsConfig()
    features = check_features(features, "features")
    min_similarity = check_threshold(min_similarity, "min_similarity", -1.0, 1.0)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    started = time.perf_counter()
    backend = search_backend(settings)
    if settings.index == "exact" and (backend == "torch-cuda" or (backend == "cpu" and band is not None)):
        banded = BandedSearch(
            features,
            min_similarity,
            band,
            settings,
            backend=backend,
            keep=keep,
            is_exact_distance=is_exact_distance,
            connectivity_only=connectivity_only,
        )
        pairs = banded.run(rank, world_size)
    else:
        search = _Search(features, min_similarity, settings, keep, is_exact_distance)
        if settings.index == "ivf":
            pairs = search.ivf(rank, world_size)
        elif backend == "faiss-gpu":
            pairs = search.gpu(rank, world_size)
        else:
            pairs = search.cpu(rank, world_size)
    pairs = canonical_order(pairs)
    pairs.stats["seconds"] = time.perf_counter() - started
    pairs.stats["num_edges"] = pairs.stats.get("edges_found", len(pairs))  # a forest holds fewer
    return pairs


def search_backend(settings: NeighborsConfig) -> str:
    """``cpu``, ``torch-cuda`` or ``faiss-gpu``: what ``reshape.neighbors.backend`` means in this process.

    ``auto`` is ``torch-cuda`` where torch sees a CUDA device, else ``cpu``; FAISS GPU only when asked for.
    """
    if settings.backend == "faiss-gpu":
        if runtime.faiss_gpu_count() == 0:
            raise ValueError(f"reshape.neighbors.backend=faiss-gpu but FAISS sees no GPU ({_FAISS_GPU_HINT})")
        return "faiss-gpu"
    if settings.backend == "auto":
        return "torch-cuda" if runtime.has_cuda() else "cpu"
    return settings.backend


def gather_pairs(pairs: Pairs) -> Pairs:
    """All ranks' edges on every rank, in canonical order (identity without a process group)."""
    rows = collectives.all_gather_array(pairs.rows)
    cols = collectives.all_gather_array(pairs.cols)
    distance = collectives.all_gather_array(pairs.distance)
    parts = [Pairs(r, c, d, pairs.is_exact) for r, c, d in zip(rows, cols, distance, strict=True)]
    return canonical_order(Pairs.concatenate(parts, pairs.stats, pairs.is_exact))


class _Search:
    """One similarity search: shared state for the CPU, GPU and IVF paths."""

    def __init__(self, features, min_similarity, settings, keep, is_exact_distance):
        self.settings = settings
        self.is_exact_distance = is_exact_distance
        margin = settings.margin if settings.margin > 0 else auto_margin(features.shape[1])
        self.radius = np.float32(min_similarity - margin)
        self.unit = normalized_float32(features)
        self.decision = Decision(
            features, row_norms(features), min_similarity, min_similarity + margin, keep, is_exact_distance
        )

    @property
    def faiss(self):
        return runtime.import_faiss()

    # -- edge decisions -------------------------------------------------
    def decide(self, rows: np.ndarray, cols: np.ndarray, sims: np.ndarray) -> Pairs:
        """Keep upper-triangle edges that pass ``keep`` and the float64 threshold test."""
        return decide_edges(self.decision, rows, cols, sims)

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

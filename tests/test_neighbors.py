"""The FAISS neighbour graph: exactness, rank splitting, IVF recall, the GPU path."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from dist_syndr.config import NeighborsConfig
from dist_syndr.reshape import neighbors
from tests.conftest import straddling_pool


def _dense_edges(features, threshold):
    similarity = 1.0 - squareform(pdist(features.astype(np.float64), "cosine"))
    rows, cols = np.nonzero(np.triu(similarity > threshold, k=1))
    return set(zip(rows.tolist(), cols.tolist(), strict=True))


@pytest.mark.parametrize("engine, backend", [("torch", "torch-gemm"), ("faiss", "faiss-cpu")])
@pytest.mark.parametrize("threshold", [0.3, 0.9, 0.97])
def test_exact_cpu_graph_equals_dense(threshold, engine, backend):
    features, _ = straddling_pool(4)
    settings = NeighborsConfig(database_block=50, query_block=17, cpu_engine=engine)
    pairs = neighbors.similar_pairs(features, threshold, settings=settings)
    assert set(zip(pairs.rows.tolist(), pairs.cols.tolist(), strict=True)) == _dense_edges(features, threshold)
    assert np.all(pairs.rows < pairs.cols) and len(
        set(zip(pairs.rows.tolist(), pairs.cols.tolist(), strict=True))
    ) == len(pairs)
    assert pairs.stats["backend"] == backend


def test_exact_distances_match_scipy():
    features, _ = straddling_pool(5)
    pairs = neighbors.similar_pairs(features, 0.5, is_exact_distance=True)
    dense = squareform(pdist(features.astype(np.float64), "cosine"))
    np.testing.assert_allclose(pairs.distance, dense[pairs.rows, pairs.cols], rtol=0, atol=1e-15)


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_rank_shares_partition_the_graph(world_size):
    features, _ = straddling_pool(6)
    settings = NeighborsConfig(database_block=16)
    whole = neighbors.similar_pairs(features, 0.9, settings=settings)
    shares = [
        neighbors.similar_pairs(features, 0.9, settings=settings, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    edge_sets = [set(zip(s.rows.tolist(), s.cols.tolist(), strict=True)) for s in shares]
    assert sum(len(s) for s in edge_sets) == len(whole)
    assert set().union(*edge_sets) == set(zip(whole.rows.tolist(), whole.cols.tolist(), strict=True))


def test_balanced_assignment_covers_and_balances():
    costs = [i + 1 for i in range(10)]
    owners = [neighbors.balanced_assignment(costs, 3, r) for r in range(3)]
    assert sorted(sum(owners, [])) == list(range(10))
    loads = [sum(costs[i] for i in mine) for mine in owners]
    assert max(loads) - min(loads) <= max(costs) // 2


def test_ivf_reports_measured_recall():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 24))
    features = (np.repeat(centres, 50, axis=0) + 0.15 * rng.normal(size=(2000, 24))).astype(np.float32)
    exact = neighbors.similar_pairs(features, 0.9)
    approx = neighbors.similar_pairs(
        features, 0.9, settings=NeighborsConfig(index="ivf", ivf_nlist=16, ivf_nprobe=4, recall_sample=300)
    )
    exact_set = set(zip(exact.rows.tolist(), exact.cols.tolist(), strict=True))
    approx_set = set(zip(approx.rows.tolist(), approx.cols.tolist(), strict=True))
    assert len(approx_set) == len(approx), "an edge found from both ends must be stored once"
    assert approx_set <= exact_set  # IVF can miss edges, never invent them
    assert 0.5 < approx.stats["edge_recall"] <= 1.0
    true_recall = len(approx_set) / len(exact_set)
    assert abs(true_recall - approx.stats["edge_recall"]) < 0.1


def test_gpu_backend_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(neighbors.runtime, "faiss_gpu_count", lambda: 0)
    with pytest.raises(ValueError, match="no GPU"):
        neighbors.similar_pairs(np.eye(3, dtype=np.float32), 0.5, settings=NeighborsConfig(backend="faiss-gpu"))


class _FakeGpuIndex:
    """A flat CPU index that refuses k above a limit, standing in for FAISS GPU's k-NN-only API."""

    def __init__(self, cpu_index, max_k):
        self.index, self.max_k, self.calls, self.num_queries = cpu_index, max_k, [], []

    def search(self, queries, k):
        assert k <= self.max_k
        self.calls.append(k)
        self.num_queries.append(len(queries))
        return self.index.search(queries, k)


def test_growing_k_path_is_exact(monkeypatch):
    """The GPU algorithm (k grown until the k-th neighbour drops below the threshold, CPU range
    search for rows still saturated at the k limit) run over a CPU index."""
    features, _ = straddling_pool(7, num_groups=4, group_size=40)
    fake = {}

    def to_gpus(cpu_index):
        fake["index"] = _FakeGpuIndex(cpu_index, 8)
        return fake["index"]

    monkeypatch.setattr(neighbors.runtime, "faiss_gpu_count", lambda: 1)
    monkeypatch.setattr(neighbors.runtime, "faiss_index_to_gpus", to_gpus)
    settings = NeighborsConfig(backend="faiss-gpu", max_gpu_k=8, query_block=50)
    pairs = neighbors.similar_pairs(features, 0.9, settings=settings)
    assert set(zip(pairs.rows.tolist(), pairs.cols.tolist(), strict=True)) == _dense_edges(features, 0.9)
    assert max(fake["index"].calls) == 8 and pairs.stats["backend"] == "faiss-gpu"


def _fake_gpus(monkeypatch, max_k):
    fake = {}

    def to_gpus(cpu_index):
        fake["index"] = _FakeGpuIndex(cpu_index, max_k)
        return fake["index"]

    monkeypatch.setattr(neighbors.runtime, "faiss_gpu_count", lambda: 1)
    monkeypatch.setattr(neighbors.runtime, "faiss_index_to_gpus", to_gpus)
    return fake


def test_gpu_path_equals_the_cpu_path_in_canonical_order(monkeypatch):
    """Same edges, same arrays: every backend returns the graph sorted by (rows, cols)."""
    features, _ = straddling_pool(11, num_groups=6, group_size=30)
    cpu = neighbors.similar_pairs(features, 0.9, settings=NeighborsConfig(backend="cpu", database_block=37))
    _fake_gpus(monkeypatch, 16)
    gpu = neighbors.similar_pairs(
        features, 0.9, settings=NeighborsConfig(backend="faiss-gpu", max_gpu_k=16, query_block=23)
    )
    assert len(gpu) == len(cpu) > 0
    for name in ("rows", "cols"):
        np.testing.assert_array_equal(getattr(gpu, name), getattr(cpu, name))
    np.testing.assert_allclose(gpu.distance, cpu.distance, rtol=0, atol=1e-6)
    assert np.all(np.lexsort((cpu.cols, cpu.rows)) == np.arange(len(cpu)))


def test_growing_k_searches_again_only_the_rows_still_saturated(monkeypatch):
    features, _ = straddling_pool(7, num_groups=3, group_size=200)  # groups larger than the first k
    fake = _fake_gpus(monkeypatch, 512)
    settings = NeighborsConfig(backend="faiss-gpu", max_gpu_k=512, query_block=len(features))
    neighbors.similar_pairs(features, 0.9, settings=settings)
    index = fake["index"]
    assert index.num_queries[0] == len(features) and len(index.calls) > 1
    assert all(later < earlier for earlier, later in zip(index.num_queries, index.num_queries[1:], strict=False))
    assert index.calls == sorted(index.calls) and len(set(index.calls)) == len(index.calls)  # k doubles


def test_max_gpu_k_is_checked_against_the_faiss_gpu_limit():
    with pytest.raises(ValueError, match="max_gpu_k"):
        NeighborsConfig(max_gpu_k=4096)
    assert NeighborsConfig(max_gpu_k=2048).max_gpu_k == 2048


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch-cuda", "faiss-gpu"])
def test_real_gpu_graph_equals_cpu_graph(backend):
    if backend == "faiss-gpu":
        pytest.importorskip("faiss").get_num_gpus() or pytest.skip("faiss has no GPU support in this install")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, 64))
    features = (np.repeat(centres, 100, axis=0) + 0.2 * rng.normal(size=(20000, 64))).astype(np.float32)
    cpu = neighbors.similar_pairs(features, 0.9, settings=NeighborsConfig(backend="cpu"))
    gpu = neighbors.similar_pairs(features, 0.9, settings=NeighborsConfig(backend=backend))
    np.testing.assert_array_equal(cpu.rows, gpu.rows)
    np.testing.assert_array_equal(cpu.cols, gpu.cols)

"""GPU-only checks at scale (marked ``gpu``; skipped without a CUDA device)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dist_syndr.config import NeighborsConfig
from dist_syndr.pools.synthetic import clustered_pool
from dist_syndr.reshape import drcdown


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_million_by_768_drcdown_on_gpu(capsys):
    pool = clustered_pool(1_000_000, 768, 20_000, seed=0)
    settings = NeighborsConfig(backend="torch-cuda", query_block=16384, database_block=8192)
    started = time.perf_counter()
    result = drcdown.run(pool.features, pool.labels, search=settings)
    seconds = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nDRCDown 1M x 768 on GPU: {seconds:.1f} s, {len(result.clusters)} clusters, kept {result.kept.size}")
    assert result.search_stats["backend"] == "torch-cuda"
    assert 0 < result.kept.size < pool.features.shape[0]


@pytest.mark.gpu
@pytest.mark.parametrize("backend, precision", [("torch-cuda", "bf16"), ("torch-cuda", "fp32"), ("faiss-gpu", "auto")])
def test_gpu_and_cpu_drcdown_agree_on_clustered_pool(backend, precision):
    if backend == "faiss-gpu":
        pytest.importorskip("faiss").get_num_gpus() or pytest.skip("faiss has no GPU support in this install")
    pool = clustered_pool(30_000, 128, 600, seed=1)
    cpu = drcdown.run(pool.features, pool.labels, search=NeighborsConfig(backend="cpu", precision="fp32"))
    gpu = drcdown.run(pool.features, pool.labels, search=NeighborsConfig(backend=backend, precision=precision))
    assert gpu.search_stats["backend"] == backend
    assert len(cpu.clusters) == len(gpu.clusters)
    for a, b in zip(cpu.clusters, gpu.clusters, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(cpu.kept, gpu.kept)

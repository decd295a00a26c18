"""Worker for the 2-process gloo tests: run as ``python -m tests.dist_worker OUT_DIR``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from dist_syndr import collectives, runtime
from dist_syndr.config import NeighborsConfig, RuntimeConfig
from dist_syndr.reshape import drcdown
from tests.conftest import straddling_pool


def main(out_dir: str) -> None:
    backends = runtime.init(RuntimeConfig(device="cpu", faiss="cpu"), timeout_s=60)
    rank, world_size = runtime.rank_world()
    assert runtime.is_distributed() and backends.dist_backend == "gloo"
    gathered = collectives.all_gather_array(np.arange(rank + 2, dtype=np.int64) * (rank + 1))
    assert [g.tolist() for g in gathered] == [[0, 1], [0, 2, 4]][:world_size]
    shared = collectives.broadcast_array(np.array([3.5, 1.5]) if rank == 0 else None)
    assert shared.tolist() == [3.5, 1.5]
    features, labels = straddling_pool(3)
    result = drcdown.run(features, labels, cap=5, seed=11, search=NeighborsConfig(database_block=23))
    out = Path(out_dir)
    np.save(out / f"kept-{rank}.npy", result.kept)
    np.save(out / f"members-{rank}.npy", np.concatenate(result.clusters))
    runtime.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])

"""Exact inner-product range search of query rows against one database block, on the CPU.

Both scanners take L2-normalised float32 rows and return every ``(query row,
database row, similarity)`` with similarity above the search radius;
:mod:`dist_syndr.reshape.neighbors` decides the edges from them.

Shapes: queries ``(Q, D)``, database ``(B, D)`` float32.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from dist_syndr import runtime


class FaissFlatScanner:
    """Exact range search of query rows against one database chunk with a FAISS flat index."""

    name = "faiss-cpu"

    def __init__(self, database: np.ndarray, radius: np.float32):
        faiss = runtime.import_faiss()
        # BLAS tiles spanning the whole chunk: fewer, larger GEMMs (about 1.3x here).
        faiss.cvar.distance_compute_blas_database_bs = max(1024, min(database.shape[0], 16384))
        self.index = faiss.IndexFlatIP(database.shape[1])
        self.index.add(database)
        self.radius = float(radius)

    def __call__(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lims, sims, ids = self.index.range_search(queries, self.radius)
        rows = np.repeat(np.arange(queries.shape[0], dtype=np.int64), np.diff(lims).astype(np.int64))
        return rows, ids.astype(np.int64), sims


class TorchGemmScanner:
    """The same exact search as one float32 GEMM per tile through torch's CPU BLAS.

    FAISS's wheel bundles a generic OpenBLAS; torch's oneDNN/MKL GEMM is about
    4x faster on the same cores, and the search is GEMM-bound.
    """

    name = "torch-gemm"

    def __init__(self, database: np.ndarray, radius: np.float32):
        import torch

        self.torch = torch
        self.database_t = torch.from_numpy(np.ascontiguousarray(database)).T
        self.radius = float(radius)
        self.buffer = torch.empty(0)

    def __call__(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        torch = self.torch
        num_queries, num_database = queries.shape[0], self.database_t.shape[1]
        if self.buffer.numel() < num_queries * num_database:
            self.buffer = torch.empty(num_queries * num_database)
        sims = self.buffer[: num_queries * num_database].view(num_queries, num_database)
        with torch.inference_mode():
            torch.mm(torch.from_numpy(np.ascontiguousarray(queries)), self.database_t, out=sims)
        # numpy's flatnonzero is about 3x torch's nonzero on these masks.
        flat_sims = sims.numpy().reshape(-1)
        hits = np.flatnonzero(flat_sims > self.radius)
        rows, cols = np.divmod(hits, num_database)
        return rows, cols, flat_sims[hits]


def cpu_scanner(engine: str):
    """The scanner class of ``reshape.neighbors.cpu_engine``: torch's GEMM where torch is installed, else FAISS."""
    if engine == "faiss":
        return FaissFlatScanner
    if engine == "torch" or importlib.util.find_spec("torch") is not None:
        return TorchGemmScanner
    return FaissFlatScanner

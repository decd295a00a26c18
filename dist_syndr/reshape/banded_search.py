"""Exact neighbour search over label-banded blocks through torch, on the CPU or on every visible GPU.

DRCDown links a pair only if ``|y_i - y_j| < width``. With the rows sorted by
label, database block ``[s, e)`` can only link to rows whose labels reach
``y_s - width``: each block is multiplied only with that band of earlier rows
(:class:`BlockPlan`), and whole label-distant blocks cost nothing. Each tile is
one GEMM of L2-normalised rows in bf16 or fp32 (float32 accumulation); its
candidates are the entries at or above a proven lower bound, those above a
proven upper bound are edges at once, and the few in between are re-decided in
float64 (:mod:`dist_syndr.reshape.precision_bounds`, :func:`~dist_syndr.reshape.pairs.decide_edges`).
The graph is the float64 definition's whatever the precision, device or split.

Memory: one sorted, normalised copy of the rows in the search precision (bf16:
half the float32 input) per device, plus one tile; the re-check reads the
caller's rows.

Shapes: ``N`` rows, ``D`` feature dimension, tiles ``(Q, B)``.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from dist_syndr import runtime
from dist_syndr.config import NeighborsConfig
from dist_syndr.reshape.pairs import Decision, PairFilter, Pairs, decide_edges, row_norms, spanning_forest
from dist_syndr.reshape.precision_bounds import DecisionBounds, Precision, decision_bounds

_ROW_CHUNK = 1 << 15
_COMPACT_EDGES = 1 << 23
"""With ``connectivity_only``, a device's edges are folded into a spanning forest past this many."""


@dataclass(frozen=True)
class LabelBand:
    """A label condition ``|y_i - y_j| < width`` that every kept pair meets (``keep`` still decides exactly)."""

    labels: np.ndarray  # (N,) float64
    width: float


@dataclass(frozen=True)
class BlockPlan:
    """Database blocks ``[starts[b], ends[b])`` of the label-sorted rows.

    Block ``b`` meets the query rows ``[firsts[b], ends[b])``.
    """

    starts: np.ndarray
    ends: np.ndarray
    firsts: np.ndarray

    @property
    def costs(self) -> np.ndarray:
        """Similarities each block computes (its GEMM size)."""
        return (self.ends - self.firsts) * (self.ends - self.starts)

    def __len__(self) -> int:
        return int(self.starts.size)


def plan_blocks(sorted_labels: np.ndarray, width: float, block_rows: int) -> BlockPlan:
    """Blocks of ``block_rows`` sorted rows, each with the first row whose label reaches its lowest minus ``width``.

    The bound is inclusive (``side="left"``), so rounding in ``y_s - width`` cannot lose a pair;
    ``width = inf`` (no label condition) makes every block meet every earlier row.
    """
    num_rows = sorted_labels.size
    starts = np.arange(0, num_rows, block_rows, dtype=np.int64)
    ends = np.minimum(starts + block_rows, num_rows)
    firsts = np.searchsorted(sorted_labels, sorted_labels[starts] - width, side="left").astype(np.int64)
    return BlockPlan(starts, ends, firsts)


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


def resolve_devices(backend: str) -> list:
    """Torch devices of a banded search: the CPU, or the GPUs this process owns (its local one under a launcher)."""
    import torch

    if backend == "cpu":
        # One worker per intra-op thread, each GEMM on one thread: one worker's thresholds and
        # decisions (numpy, one core) overlap the other's GEMM instead of leaving a core idle.
        return [torch.device("cpu")] * max(1, torch.get_num_threads())
    count = runtime.cuda_device_count()
    if count == 0:
        raise ValueError("reshape.neighbors.backend=torch-cuda but torch sees no CUDA device")
    _, world_size, local_rank = runtime.env_rank_world()
    if world_size > 1 or runtime.is_distributed():
        return [torch.device("cuda", local_rank % count)]
    return [torch.device("cuda", index) for index in range(count)]


def search_precision(requested: str, devices: list) -> Precision:
    """``bf16`` or ``fp32``; ``auto`` picks bf16 where the hardware multiplies it fast."""
    if requested in ("bf16", "fp32"):
        return requested
    return "bf16" if runtime.has_fast_bf16(devices[0]) else "fp32"


def sorted_unit_rows(features: np.ndarray, order: np.ndarray, precision: Precision):
    """The rows in ``order``, L2-normalised in float32, as one CPU torch tensor in the search precision.

    Built chunk by chunk: the only full-size array is the result (bf16: half the float32 input).
    The float32 -> bf16 cast rounds to nearest (even).
    """
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    out = torch.empty(features.shape, dtype=dtype)
    for start in range(0, order.size, _ROW_CHUNK):
        block = features[order[start : start + _ROW_CHUNK]].astype(np.float32, copy=False)
        block /= np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]
        out[start : start + block.shape[0]] = torch.from_numpy(block)
    return out


class BandedSearch:
    """One label-banded search: the sorted rows, the block plan and the proven decision bounds."""

    def __init__(
        self,
        features: np.ndarray,
        threshold: float,
        band: LabelBand | None,
        settings: NeighborsConfig,
        *,
        backend: str = "cpu",
        keep: PairFilter | None = None,
        is_exact_distance: bool = False,
        connectivity_only: bool = False,
    ):
        self.settings = settings
        self.connectivity_only = connectivity_only
        self.devices = resolve_devices(backend)
        self.precision = search_precision(settings.precision, self.devices)
        self.bounds: DecisionBounds = decision_bounds(threshold, features.shape[1], self.precision, settings.margin)
        num_rows = features.shape[0]
        if band is None:
            self.order = np.arange(num_rows, dtype=np.int64)
            sorted_labels, width = np.zeros(num_rows), np.inf
        else:
            self.order = np.argsort(band.labels, kind="stable").astype(np.int64)
            sorted_labels, width = band.labels[self.order], band.width
        self.plan = plan_blocks(sorted_labels, width, settings.database_block)
        self.decision = Decision(
            features, row_norms(features), threshold, self.bounds.accept_above, keep, is_exact_distance
        )
        self.unit = sorted_unit_rows(features, self.order, self.precision)
        self._counts_lock = threading.Lock()
        self.counts = {"candidates": 0, "rechecked": 0, "edges_found": 0}

    @property
    def num_workers(self) -> int:
        """Devices, or CPU worker threads (one GEMM thread each)."""
        return len(self.devices)

    @property
    def backend_name(self) -> str:
        """``torch-cpu`` or ``torch-cuda``."""
        return f"torch-{self.devices[0].type}"

    def rank_blocks(self, rank: int, world_size: int) -> list[int]:
        """The blocks this rank searches: costliest first to the least-loaded rank."""
        return balanced_assignment(self.plan.costs.tolist(), world_size, rank)

    def run(self, rank: int = 0, world_size: int = 1) -> Pairs:
        """This rank's edges (all of them with ``world_size`` 1), unsorted."""
        blocks = self.rank_blocks(rank, world_size)
        shares = self._device_shares(blocks)
        quiet = self.unit.shape[0] < self.settings.progress_min_rows
        with (
            runtime.exact_fp32_math(),
            tqdm(total=len(blocks), desc="neighbour graph", unit="block", disable=quiet) as bar,
        ):
            parts = [part for found in self._on_workers(self._search_blocks, shares, bar) for part in found]
        if self.connectivity_only:
            parts = [spanning_forest(self.unit.shape[0], parts)]
        return Pairs.concatenate(parts, self._stats(), self.decision.is_exact_distance and not self.connectivity_only)

    def gemm_seconds(self, blocks: list[int]) -> float:
        """Wall time of the bare GEMMs of ``blocks`` (no thresholds, no decisions): the floor of :meth:`run`.

        The blocks are dealt over the same workers as :meth:`run` (CPU: one GEMM thread each).
        """
        import time

        shares = self._device_shares(blocks)
        with runtime.exact_fp32_math():
            started = time.perf_counter()
            self._on_workers(self._bare_gemms, shares)
            return time.perf_counter() - started

    def _on_workers(self, work, shares: list[list[int]], *args) -> list:
        """``work(device, blocks, *args)`` for every worker, in one thread each where there are several."""
        if len(self.devices) == 1:
            return [work(self.devices[0], shares[0], *args)]
        with ThreadPoolExecutor(len(self.devices)) as pool:
            jobs = [pool.submit(work, d, s, *args) for d, s in zip(self.devices, shares, strict=True)]
            return [job.result() for job in jobs]

    def _enter_worker(self, device):
        """This worker's rows on its device; a CPU shared by several workers gets one GEMM thread each."""
        import torch

        if device.type == "cpu" and len(self.devices) > 1:
            torch.set_num_threads(1)  # this worker thread only: the CPU is shared by len(devices) workers
        return self._on(device)

    def _bare_gemms(self, device, blocks: list[int]) -> None:
        import torch

        unit = self._enter_worker(device)
        with torch.inference_mode():
            for block in blocks:
                for queries, database_t, _, _ in self._tiles(unit, block):
                    torch.mm(queries, database_t)
            runtime.synchronize(device)

    # -- one device ---------------------------------------------------------
    def _device_shares(self, blocks: list[int]) -> list[list[int]]:
        costs = [int(self.plan.costs[b]) for b in blocks]
        return [
            [blocks[i] for i in balanced_assignment(costs, len(self.devices), d)] for d in range(len(self.devices))
        ]

    def _on(self, device):
        return self.unit if device.type == "cpu" else self.unit.to(device)

    def _tiles(self, unit, block: int):
        start, end = int(self.plan.starts[block]), int(self.plan.ends[block])
        database_t = unit[start:end].T
        for query_start in range(int(self.plan.firsts[block]), end, self.settings.query_block):
            query_end = min(query_start + self.settings.query_block, end)
            yield unit[query_start:query_end], database_t, query_start, start

    def _search_blocks(self, device, blocks: list[int], bar) -> list[Pairs]:
        import torch

        unit = self._enter_worker(device)
        find_hits = _cpu_hits if device.type == "cpu" else _device_hits
        parts, num_edges = [], 0
        with torch.inference_mode():
            for block in blocks:
                for queries, database_t, query_start, database_start in self._tiles(unit, block):
                    sims = torch.mm(queries, database_t)
                    rows, cols, coarse = find_hits(sims, self.bounds.candidate_at_least)
                    parts.append(self._decide(rows + query_start, cols + database_start, coarse))
                    num_edges += len(parts[-1])
                if self.connectivity_only and num_edges > max(_COMPACT_EDGES, self.unit.shape[0]):
                    parts = [spanning_forest(self.unit.shape[0], parts)]
                    num_edges = len(parts[0])
                bar.update(1)
        return parts

    def _decide(self, sorted_rows: np.ndarray, sorted_cols: np.ndarray, coarse: np.ndarray) -> Pairs:
        upper = sorted_cols > sorted_rows  # each label-sorted pair once
        first, second = self.order[sorted_rows[upper]], self.order[sorted_cols[upper]]
        coarse = coarse[upper]
        edges = decide_edges(self.decision, np.minimum(first, second), np.maximum(first, second), coarse)
        with self._counts_lock:
            self.counts["candidates"] += int(coarse.size)
            self.counts["rechecked"] += int((coarse <= self.bounds.accept_above).sum())
            self.counts["edges_found"] += len(edges)
        return edges

    def _stats(self) -> dict:
        num_rows = self.unit.shape[0]
        return {
            "backend": self.backend_name,
            "index": "flat-banded",
            "precision": self.precision,
            "margin": self.bounds.margin,
            "candidate_at_least": self.bounds.candidate_at_least,
            "accept_above": self.bounds.accept_above,
            "num_devices": len(set(self.devices)),
            "num_workers": len(self.devices),
            "banded_pair_share": float(self.plan.costs.sum()) / max(1.0, num_rows**2 / 2),
            "candidates": self.counts["candidates"],
            "rechecked": self.counts["rechecked"],
            "edges_found": self.counts["edges_found"],
            "connectivity_only": self.connectivity_only,
        }


def _cpu_hits(sims, candidate_at_least: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, cols, coarse)`` of the tile entries ``>= candidate_at_least``.

    Positive bf16 values order like their int16 bit patterns, so bf16 tiles are
    compared as integers (numpy has no bf16); float64 coarse values are exact.
    """
    import torch

    is_bits = sims.dtype == torch.bfloat16 and candidate_at_least > 0
    if is_bits:
        values = sims.view(torch.int16).numpy()
        key = np.int16(np.array(candidate_at_least, dtype=np.float32).view(np.uint32) >> 16)
    else:
        values = sims.float().numpy() if sims.dtype == torch.bfloat16 else sims.numpy()
        key = np.float32(candidate_at_least)
    flat = np.flatnonzero(values.reshape(-1) >= key)  # measured: faster than row maxima or 8-byte words first
    rows, cols = np.divmod(flat, values.shape[1])
    raw = values.reshape(-1)[flat]
    coarse = _bf16_bits_to_float64(raw) if is_bits else raw.astype(np.float64)
    return rows.astype(np.int64), cols.astype(np.int64), coarse


def _device_hits(sims, candidate_at_least: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same on a GPU: the comparison and compaction there, only the hits copied back.

    ``candidate_at_least`` is a value of the tile's format, so the comparison is exact.
    """
    mask = sims >= candidate_at_least
    index = mask.nonzero()
    coarse = sims[mask].float()
    index, coarse = index.cpu().numpy(), coarse.cpu().numpy()
    return index[:, 0].astype(np.int64), index[:, 1].astype(np.int64), coarse.astype(np.float64)


def _bf16_bits_to_float64(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)

"""``bench.py reshape --scale million``: DRCDown's exact search from 60k to 1M x 768 rows, beside its baselines.

Features come from :func:`dist_syndr.pools.synthetic.kadid_like_pool` (groups
of near-duplicates, group labels from KADID-10k's DMOS distribution). Each case
runs in its own process (peak RSS includes the interpreter and the float32
features, 3.1 GB at 1M x 768). Measured in the same run:

- **ours**: the label-banded search (``reshape.neighbors`` defaults: bf16 where
  the hardware has fast bf16, proven bounds, float64 re-check);
- **today's exact path**: every pair in float32 tiles, labels filtered after
  (what DRCDown did before the label banding), where it fits in the time limit;
- **FAISS** ``IndexFlatIP.range_search`` on the CPU, block by block, labels filtered after;
- **the GEMM floor**: the bare GEMMs of ours' own tiles, no thresholds or
  decisions, timed over a sample of the blocks and scaled by their share of the work;
- GPU rows (``torch-cuda``, and ``faiss-gpu`` where FAISS has GPUs) where a GPU is present, their
  floor timed with CUDA events on one GPU.

:meth:`ScalePlan.gpu` (``--gpu-only``, the GPU kit's plan) runs the GPU rows alone: ours on the
accelerator against its GEMM floor, no CPU baselines. Without a GPU (a dry run) those rows run
on the CPU and say so. Clusters are compared by digest wherever two paths ran.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dist_syndr import runtime
from dist_syndr.bench.harness import (
    Measurement,
    Report,
    SummaryRow,
    child_main,
    digest_arrays,
    markdown_table,
    run_child,
)

log = logging.getLogger(__name__)

_MODULE = "dist_syndr.bench.reshape_scale"
_BASELINE = "today's exact path (all pairs, fp32)"


@dataclass(frozen=True)
class ScalePlan:
    """Sizes and which baselines run at each."""

    sizes: tuple[int, ...] = (60_000, 200_000, 1_000_000)
    dim: int = 768
    today_max: int = 200_000
    faiss_max: int = 60_000
    floor_full_max: int = 200_000  # above: the floor is timed on a sample of blocks
    floor_sample_share: float = 0.1
    timeout_s: float = 3600.0
    is_gpu_only: bool = False  # only the accelerator's rows (ours against its floor), no CPU baselines

    @staticmethod
    def quick() -> ScalePlan:
        """Small sizes, every path, in well under a minute."""
        return ScalePlan((3_000, 8_000), 64, 8_000, 8_000, 8_000, 0.5, 300.0)

    @staticmethod
    def gpu() -> ScalePlan:
        """The GPU kit's plan: 1M x 768 on the accelerator against its GEMM floor, nothing on the CPU."""
        return ScalePlan((1_000_000,), 768, 0, 0, 1_000_000, 1.0, 300.0, is_gpu_only=True)

    @staticmethod
    def gpu_quick() -> ScalePlan:
        """:meth:`gpu` at a tiny size (a dry run's)."""
        return ScalePlan((3_000,), 64, 0, 0, 3_000, 1.0, 300.0, is_gpu_only=True)


def run(plan: ScalePlan) -> Report:
    """Measure every size of ``plan``; the Markdown section and one summary row per size."""
    has_gpu = runtime.has_cuda()
    # The accelerator's rows: torch-cuda, or (a GPU-only plan on a machine without one) the CPU standing in.
    device, backend = ("gpu", "torch-cuda") if has_gpu else ("cpu (no GPU visible)", "cpu")
    rows, summary, failures = [], [], []
    for size in plan.sizes:
        case = {"op": "search", "n": size, "d": plan.dim}
        floor_case = case | {"op": "floor", "backend": "cpu", "share": _floor_share(plan, size)}
        ours = None
        if not plan.is_gpu_only:
            ours = run_child(_MODULE, case | {"impl": "ours", "backend": "cpu"}, plan.timeout_s)
            floor = run_child(_MODULE, floor_case, plan.timeout_s)
            today = run_child(_MODULE, case | {"impl": "today"}, plan.timeout_s) if size <= plan.today_max else None
            faiss = run_child(_MODULE, case | {"impl": "faiss"}, plan.timeout_s) if size <= plan.faiss_max else None
            rows.append(_row(size, "cpu", ours, floor, today, faiss))
            failures += _failed(size, "cpu", ours=ours, floor=floor)
            summary.append(_summary(size, ours, today))
        if has_gpu or plan.is_gpu_only:
            gpu = run_child(_MODULE, case | {"impl": "ours", "backend": backend}, plan.timeout_s)
            gpu_floor = run_child(_MODULE, floor_case | {"backend": backend, "share": 1.0}, plan.timeout_s)
            faiss_gpu = run_child(_MODULE, case | {"impl": "faiss-gpu"}, plan.timeout_s) if _has_faiss_gpu() else None
            rows.append(_row(size, device, gpu, gpu_floor, ours, faiss_gpu))
            failures += _failed(size, device, ours=gpu, floor=gpu_floor)
            if plan.is_gpu_only:
                summary.append(_floor_summary(size, device, gpu, gpu_floor))
        log.info("drcdown search n=%d: %s", size, rows[-1])
    header = [
        "N x D",
        "device",
        "ours (s / peak RSS)",
        "GEMM floor",
        "ours / floor",
        "baseline (s / peak RSS)",
        "speed-up",
        "FAISS range_search",
        "same clusters",
        "banded share, precision, re-checked",
    ]
    text = (
        f"### DRCDown exact search at scale (D={plan.dim}, KADID-like labels)\n\n"
        + (
            "GPU rows only: ours on the accelerator against the bare GEMM time of its own tiles (CUDA events "
            "on one GPU); no CPU baselines.\n\n"
            if plan.is_gpu_only
            else "Baseline on the CPU rows: today's exact path (every pair in fp32, labels filtered after); "
            "on GPU rows: ours on the CPU. The floor is the bare GEMM time of ours' own tiles.\n\n"
        )
        + markdown_table(header, rows)
    )
    return Report(text, tuple(summary), tuple(failures))


def _floor_share(plan: ScalePlan, size: int) -> float:
    return 1.0 if size <= plan.floor_full_max else plan.floor_sample_share


def _row(size, device, ours, floor, baseline, faiss) -> list[str]:
    floor_s = floor.detail["floor_s"] if floor else None
    ratio = f"{ours.seconds / floor_s:.2f}" if ours and floor_s else "-"
    speedup = f"{baseline.seconds / ours.seconds:.1f}x" if ours and baseline else "-"
    digests = {m.digest for m in (ours, baseline, faiss) if m is not None}
    same = "-" if len([m for m in (ours, baseline, faiss) if m]) < 2 else ("yes" if len(digests) == 1 else "NO")
    detail = (
        f"{ours.detail['banded_pair_share']:.3f}, {ours.detail['precision']}, {ours.detail['rechecked']:,}"
        if ours
        else "-"
    )
    floor_label = (
        f"{floor_s:.2f} s"
        + ("" if floor.detail["share"] == 1.0 else f" ({floor.detail['share']:.0%} timed)")
        + (" (CUDA events)" if floor.detail.get("timer") == "cuda events" else "")
    )
    return [
        f"{size:,} x {ours.detail['d'] if ours else '?'}",
        device,
        _label(ours),
        floor_label if floor else "-",
        ratio,
        _label(baseline),
        speedup,
        _label(faiss),
        same,
        detail,
    ]


def _label(measurement: Measurement | None) -> str:
    return measurement.label if measurement else "not run"


def _failed(size: int, device: str, **measured: Measurement | None) -> list[str]:
    return [f"{name} at N={size:,} on {device}: failed or timed out" for name, m in measured.items() if m is None]


def _has_faiss_gpu() -> bool:
    try:
        return runtime.faiss_gpu_count() > 0
    except ValueError:  # FAISS is not installed (no CUDA 13 build exists)
        return False


def _floor_summary(size: int, device: str, ours: Measurement | None, floor: Measurement | None) -> SummaryRow:
    floor_s = floor.detail["floor_s"] if floor else None
    return SummaryRow(
        "reshape",
        f"DRCDown search N={size:,} on {device}",
        ours.label if ours else "failed/timeout",
        "the bare GEMMs of its own tiles (floor)",
        f"{floor_s:.2f} s" if floor_s else "not run",
        floor_s / ours.seconds if ours and floor_s else None,
    )


def _summary(size: int, ours: Measurement | None, today: Measurement | None) -> SummaryRow:
    text = ours.label if ours else "failed/timeout"
    if ours and today:
        text += ", same clusters" if ours.digest == today.digest else ", clusters DIFFER"
    ratio = today.seconds / ours.seconds if ours and today else None
    return SummaryRow(
        "reshape", f"DRCDown search N={size:,}", text, _BASELINE, today.label if today else "not run", ratio
    )


# ---------------------------------------------------------------------------
# child side


def _pool(case: dict):
    from dist_syndr.pools.synthetic import kadid_like_pool

    return kadid_like_pool(case["n"], case["d"], max(4, case["n"] // 50), seed=case.get("seed", 0))


def _search_case(case: dict):
    import numpy as np

    from dist_syndr.config import NeighborsConfig
    from dist_syndr.reshape import drcdown, neighbors

    pool = _pool(case)
    quiet = 10**12
    settings = {
        "ours": NeighborsConfig(backend=case.get("backend", "cpu"), progress_min_rows=quiet),
        "today": NeighborsConfig(backend="cpu", cpu_engine="torch", precision="fp32", progress_min_rows=quiet),
        "faiss": NeighborsConfig(backend="cpu", cpu_engine="faiss", progress_min_rows=quiet),
        "faiss-gpu": NeighborsConfig(backend="faiss-gpu", progress_min_rows=quiet),
    }[case["impl"]]

    def search(features, labels):
        if case["impl"] == "ours":
            result = drcdown.run(features, labels, search=settings)
            return result.clusters, result.search_stats

        def labels_close(rows, cols):
            return np.abs(labels[rows] - labels[cols]) < 1.0

        # no label band: every pair searched, the label condition applied to the hits
        pairs = neighbors.similar_pairs(features, 0.9, settings=settings, keep=labels_close)
        return drcdown.clusters_from_edges(labels.size, pairs.rows, pairs.cols), pairs.stats

    search(pool.features[:512], pool.labels[:512])  # warm-up outside the timing: kernels, thread pools

    def work():
        clusters, stats = search(pool.features, pool.labels)
        detail = {"d": case["d"], "clusters": len(clusters), "edges": stats.get("num_edges", 0)}
        for name in ("banded_pair_share", "precision", "rechecked", "candidates", "backend"):
            detail[name] = stats.get(name, 0)
        return digest_arrays(clusters), detail

    return work


def _floor_case(case: dict):
    import numpy as np

    from dist_syndr.config import NeighborsConfig
    from dist_syndr.reshape.banded_search import BandedSearch, LabelBand

    pool = _pool(case)
    search = BandedSearch(pool.features, 0.9, LabelBand(pool.labels, 1.0), NeighborsConfig(), backend=case["backend"])
    costs = search.plan.costs
    blocks = list(range(len(search.plan)))
    if case["share"] < 1.0:
        step = max(1, round(1 / case["share"]))
        blocks = blocks[::step]
    timed_share = float(costs[blocks].sum() / costs.sum())
    search.gemm_seconds(blocks[:1])  # warm-up outside the timing
    # One GPU: CUDA events around the GEMMs; several GPUs or the CPU: the host clock around all of them.
    is_events = case["backend"] == "torch-cuda" and runtime.cuda_device_count() == 1

    def work():
        if is_events:
            seconds = runtime.cuda_event_seconds(runtime.torch_device(), lambda: search.gemm_seconds(blocks))
        else:
            seconds = search.gemm_seconds(blocks)
        detail = {"floor_s": seconds / timed_share, "share": timed_share, "blocks": int(np.size(blocks))}
        return "", detail | {"timer": "cuda events" if is_events else "host clock"}

    return work


if __name__ == "__main__":
    child_main({"search": _search_case, "floor": _floor_case})

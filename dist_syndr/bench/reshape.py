"""``bench.py reshape``: DRCDown and DDCUp against their dense brute-force forms.

Each case runs in its own process (peak RSS includes the interpreter, about
0.2 GB). The baseline is :mod:`dist_syndr.reshape.reference`, the dense
``n x n`` SciPy form of the published method, run in the same benchmark where
it fits; the ratio is baseline time / our time, and ``same`` says whether both
produced the identical result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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

_MODULE = "dist_syndr.bench.reshape"


@dataclass(frozen=True)
class ReshapePlan:
    """Sizes to measure; dense baselines run only up to their limits."""

    drcdown_sizes: tuple[int, ...] = (2_000, 10_000, 60_000, 200_000)
    drcdown_dims: tuple[int, ...] = (256, 768)
    drcdown_dense_max: int = 10_000
    ddcup_sizes: tuple[int, ...] = (1_000, 4_000, 50_000)
    ddcup_dim: int = 768
    ddcup_train_refs: int = 200
    ddcup_dense_max: int = 4_000
    timeout_s: float = 1800.0

    @staticmethod
    def quick() -> ReshapePlan:
        """A plan that finishes in well under a minute (for tests and smoke runs)."""
        return ReshapePlan((1_000, 3_000), (64,), 3_000, (300, 600), 64, 40, 600, 300.0)


def run(plan: ReshapePlan) -> Report:
    """Measure every case of ``plan``; the Markdown report and one summary row per case."""
    drcdown_text, drcdown_rows = _drcdown_section(plan)
    ddcup_text, ddcup_rows = _ddcup_section(plan)
    return Report("\n\n".join([drcdown_text, ddcup_text]), (*drcdown_rows, *ddcup_rows))


_BASELINE = "dense n x n SciPy (reference.py)"


def _summary(case: str, fast: Measurement | None, dense: Measurement | None) -> SummaryRow:
    ours = f"{fast.seconds:.2f} s" if fast else "failed/timeout"
    if fast and dense:
        ours += ", same result" if fast.digest == dense.digest else ", result DIFFERS"
    baseline = f"{dense.seconds:.2f} s" if dense else "not run"
    ratio = dense.seconds / fast.seconds if fast and dense else None
    return SummaryRow("reshape", case, ours, _BASELINE, baseline, ratio)


def _compare(fast: Measurement | None, dense: Measurement | None) -> list[str]:
    if fast is None:
        return ["failed/timeout", dense.label if dense else "-", "-", "-"]
    if dense is None:
        return [fast.label, "not run (n x n does not fit)", "-", "-"]
    same = "yes" if fast.digest == dense.digest else "NO"
    return [fast.label, dense.label, f"{dense.seconds / fast.seconds:.1f}x", same]


def _drcdown_section(plan: ReshapePlan) -> tuple[str, list[SummaryRow]]:
    rows, summary = [], []
    for dim in plan.drcdown_dims:
        for size in plan.drcdown_sizes:
            case = {"op": "drcdown", "n": size, "d": dim}
            fast = run_child(_MODULE, case | {"impl": "fast"}, plan.timeout_s)
            dense = None
            if size <= plan.drcdown_dense_max:
                dense = run_child(_MODULE, case | {"impl": "dense"}, plan.timeout_s)
            extra = f"{fast.detail['clusters']} / {fast.detail['kept']}" if fast else "-"
            rows.append([f"{size:,}", str(dim), extra, *_compare(fast, dense)])
            summary.append(_summary(f"DRCDown N={size:,} D={dim}", fast, dense))
            log.info("drcdown n=%d d=%d: %s", size, dim, rows[-1])
    header = ["N", "D", "clusters / kept", "ours (blocked exact graph)", "dense baseline", "speed-up", "same clusters"]
    return "### DRCDown (clustered features)\n\n" + markdown_table(header, rows), summary


def _ddcup_section(plan: ReshapePlan) -> tuple[str, list[SummaryRow]]:
    rows, summary = [], []
    for size in plan.ddcup_sizes:
        case = {"op": "ddcup", "n": size, "d": plan.ddcup_dim, "t": plan.ddcup_train_refs}
        fast = run_child(_MODULE, case | {"impl": "fast"}, plan.timeout_s)
        dense = None
        if size <= plan.ddcup_dense_max:
            dense = run_child(_MODULE, case | {"impl": "dense"}, plan.timeout_s)
        extra = f"{fast.detail['selected']}" if fast else "-"
        rows.append([f"{size:,}", str(plan.ddcup_dim), str(plan.ddcup_train_refs), extra, *_compare(fast, dense)])
        summary.append(_summary(f"DDCUp selection, {size:,} candidates D={plan.ddcup_dim}", fast, dense))
        log.info("ddcup n=%d: %s", size, rows[-1])
    header = [
        "candidates",
        "D",
        "train refs",
        "selected",
        "ours (edge list)",
        "dense baseline",
        "speed-up",
        "same selection",
    ]
    return "### DDCUp selection\n\n" + markdown_table(header, rows), summary


# ---------------------------------------------------------------------------
# child side


def _drcdown_case(case: dict):
    from dist_syndr.config import NeighborsConfig
    from dist_syndr.pools.synthetic import clustered_pool
    from dist_syndr.reshape import drcdown
    from dist_syndr.reshape.reference import dense_redundant_clusters

    pool = clustered_pool(case["n"], case["d"], max(4, case["n"] // 50), seed=case.get("seed", 0))
    # Warm-up outside the timing: library imports and thread pools, for both forms.
    dense_redundant_clusters(pool.features[:64], pool.labels[:64])
    drcdown.redundant_clusters(pool.features[:64], pool.labels[:64])

    def work():
        if case["impl"] == "dense":
            clusters = dense_redundant_clusters(pool.features, pool.labels)
        else:
            settings = NeighborsConfig(progress_min_rows=10**12)
            clusters = drcdown.redundant_clusters(pool.features, pool.labels, search=settings)
        kept = (
            case["n"]
            - sum(c.size for c in clusters)
            + sum(c.size if c.size <= 20 else max(20, c.size // 2) for c in clusters)
        )
        return digest_arrays(clusters), {"clusters": len(clusters), "kept": kept}

    return work


def _ddcup_case(case: dict):
    from dist_syndr.pools.synthetic import reference_sets
    from dist_syndr.reshape import ddcup
    from dist_syndr.reshape.reference import dense_select_candidates

    sets = reference_sets(case["t"], case["n"], case["d"], seed=case.get("seed", 0))
    dense_select_candidates(sets.train, sets.candidates[:64])
    ddcup.select_candidates(sets.train, sets.candidates[:64])

    def work():
        select = dense_select_candidates if case["impl"] == "dense" else ddcup.select_candidates
        selected = select(sets.train, sets.candidates)
        return digest_arrays([selected]), {"selected": int(selected.size)}

    return work


if __name__ == "__main__":
    child_main({"drcdown": _drcdown_case, "ddcup": _ddcup_case})

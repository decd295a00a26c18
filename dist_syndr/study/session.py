"""One study from start to report: plan the runs, train what is missing, read them back, summarise, report.

What ``launchers/study.py`` runs. The study folder is
``<train.output_dir>/studies/<name>``: ``study.md``, ``study.csv``, ``study.png``,
the parent run's id and one log per training.

Shapes: none.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from dist_syndr import config
from dist_syndr.study import report, results, runner
from dist_syndr.study.plan import plan_study
from dist_syndr.tracking.tracker import tracking_uri

log = logging.getLogger(__name__)

MIN_SEEDS = 3  # where a study with a stopping rule starts (fewer give no usable interval)
LAST_SRCC = results.MEASURES[0]  # srcc@LAST


@dataclass(frozen=True)
class StudyReport:
    """What a study produced."""

    folder: Path
    parent_run_id: str
    outcomes: list[runner.RunOutcome]
    rows: list[results.SummaryRow]
    markdown: str


def _widest_halfwidth(rows: list[results.SummaryRow], variant: str) -> float:
    """Half the width of ``variant``'s paired-difference interval in SRCC at LAST, the widest over targets."""
    widths = [
        (row.difference.high - row.difference.low) / 2
        for row in rows
        if row.variant == variant and row.measure == LAST_SRCC and row.difference is not None
    ]
    return max(widths) if widths and all(math.isfinite(w) for w in widths) else math.inf


def run_study(
    preset: Path,
    variants: list[str],
    num_seeds: int,
    overrides: list[str],
    *,
    name: str | None = None,
    parallel: int = 1,
    until_halfwidth: float | None = None,
) -> StudyReport:
    """Train (or reuse) every variant x seed of ``preset`` and report; seeds are the preset's seed onwards.

    ``until_halfwidth``: ``num_seeds`` is a ceiling; seeds are added (from
    :data:`MIN_SEEDS`, ``parallel`` at a time) until the 95% interval of the last
    variant's paired difference from the baseline in SRCC at LAST, on every target, is
    at most that wide either side of its mean.
    """
    if num_seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {num_seeds}")
    if until_halfwidth is not None and (until_halfwidth <= 0 or len(variants) < 2 or "baseline" not in variants):
        raise ValueError("--until-halfwidth needs a positive width and the baseline plus another variant")
    cfg = config.load(preset, overrides)
    name = name or f"{cfg.run_name}-study"
    folder = Path(cfg.train.output_dir) / "studies" / name
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri(Path("mlruns")))
    count = num_seeds if until_halfwidth is None else min(MIN_SEEDS, num_seeds)
    while True:
        seeds = [cfg.seed + offset for offset in range(count)]
        runs = plan_study(name, variants, seeds, overrides)
        outcomes = runner.run_all(preset, runs, folder / "logs", parallel=parallel)
        values = results.collect(client, outcomes)
        rows = results.summarise(values, variants, seeds)
        widest = _widest_halfwidth(rows, variants[-1])
        if until_halfwidth is None or count >= num_seeds or widest <= until_halfwidth:
            break
        log.info("%d seeds: interval half-width %.4f > %.4f, adding seeds", count, widest, until_halfwidth)
        count = min(num_seeds, count + max(1, parallel))
    text = report.markdown(rows, results.diagnostics_means(values, variants), len(seeds))
    if until_halfwidth is not None:
        reached = "reached" if widest <= until_halfwidth else f"not reached within {num_seeds} seeds"
        text += (
            f"\nStopping rule: seeds added until the 95% interval of {variants[-1]} - baseline (srcc@LAST, every "
            f"target) is at most ±{until_halfwidth:g}: {reached} (±{widest:.4f} with {len(seeds)} seeds).\n"
        )
    report.plot(rows, folder / "study.png")
    params = {"preset": preset, "variants": ",".join(variants), "seeds": ",".join(map(str, seeds))}
    params["overrides"] = " ".join(overrides) or "-"
    texts = {"study.md": f"# Study {name}\n\n{text}", "study.csv": report.csv_text(rows)}
    parent = report.write_and_log(client, folder, outcomes, values, texts, params)
    return StudyReport(folder, parent, outcomes, rows, text)

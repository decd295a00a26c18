"""What each run of a study measured, read back from MLflow, and the per-variant summary with its statistics.

Per run and target: SRCC and PLCC at LAST (the final epoch) and at BEST (the epoch
with the highest SRCC on that target, chosen on the test set as the paper does, so
optimistic), read from the run's metric history as ``launchers/compare.py`` reads
it; and the run's last clustering measures (``diag/*``, logged where DRCDown ran).

Shapes: ``S`` seeds per variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dist_syndr.study import statistics
from dist_syndr.study.runner import RunOutcome
from dist_syndr.tracking import compare

MEASURES = ("srcc@LAST", "plcc@LAST", "srcc@BEST", "plcc@BEST")


@dataclass(frozen=True)
class RunValues:
    """One run's figures: ``values[(target, measure)]`` and ``diagnostics[name]``."""

    variant: str
    seed: int
    run_id: str
    values: dict[tuple[str, str], float]
    best_epochs: dict[str, int]
    diagnostics: dict[str, float]


@dataclass(frozen=True)
class SummaryRow:
    """One (target, measure, variant) line of the study table."""

    target: str
    measure: str
    variant: str
    spread: statistics.Spread
    difference: statistics.PairedDifference | None  # None for the baseline itself


def collect(client, outcomes: list[RunOutcome]) -> list[RunValues]:
    """Every run's figures from ``client`` (an ``mlflow.MlflowClient``)."""
    records = compare.fetch_runs(client, [outcome.run_id for outcome in outcomes])
    collected = []
    for outcome, record in zip(outcomes, records, strict=True):
        values, best_epochs = {}, {}
        for target in compare.targets_of(record):
            srcc, plcc = record.history[f"{target}/srcc"], record.history.get(f"{target}/plcc", {})
            last, best = max(srcc), compare.best_epoch(srcc)
            values[(target, "srcc@LAST")], values[(target, "plcc@LAST")] = srcc[last], plcc.get(last, math.nan)
            values[(target, "srcc@BEST")] = math.nan if best is None else srcc[best]
            values[(target, "plcc@BEST")] = math.nan if best is None else plcc.get(best, math.nan)
            if best is not None:
                best_epochs[target] = best
        metrics = client.get_run(outcome.run_id).data.metrics
        diagnostics = {key: float(value) for key, value in sorted(metrics.items()) if key.startswith("diag/")}
        collected.append(
            RunValues(outcome.run.variant, outcome.run.seed, outcome.run_id, values, best_epochs, diagnostics)
        )
    return collected


def summarise(runs: list[RunValues], variants: list[str], seeds: list[int]) -> list[SummaryRow]:
    """Mean and spread per variant, and each variant's paired difference from the baseline, per target and measure."""
    by_key = {(run.variant, run.seed): run for run in runs}
    targets = sorted({target for run in runs for target, _ in run.values})
    rows = []
    for target in targets:
        for measure in MEASURES:
            baseline = _series(by_key, "baseline", seeds, (target, measure))
            for variant in variants:
                series = _series(by_key, variant, seeds, (target, measure))
                difference = None if variant == "baseline" else statistics.paired_difference(series, baseline)
                rows.append(SummaryRow(target, measure, variant, statistics.spread(series), difference))
    return rows


def diagnostics_means(runs: list[RunValues], variants: list[str]) -> dict[str, dict[str, float]]:
    """Variant -> diag measure -> mean over its seeds (measures a variant never logged are absent)."""
    means = {}
    for variant in variants:
        names = sorted({name for run in runs if run.variant == variant for name in run.diagnostics})
        means[variant] = {
            name: float(
                np.mean([run.diagnostics[name] for run in runs if run.variant == variant and name in run.diagnostics])
            )
            for name in names
        }
    return means


def _series(by_key: dict, variant: str, seeds: list[int], key: tuple[str, str]) -> np.ndarray:
    return np.array([by_key[(variant, seed)].values.get(key, math.nan) for seed in seeds], dtype=np.float64)

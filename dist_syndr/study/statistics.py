"""Uncertainty over seeds: mean and spread per variant, paired differences from the baseline with a seeded
bootstrap interval and a paired t-test.

Differences are paired by seed: the same seed gives both runs the same initial
weights and data order, so ``variant - baseline`` per seed removes what the seed
alone does. The interval is the percentile bootstrap of the mean paired difference
(``num_resamples`` resamples of the seeds with replacement, from a fixed seed, so a
report is reproducible); the p-value is scipy's two-sided paired t-test. With one
seed there is no spread and neither is defined (NaN).

Shapes: ``S`` seeds; arrays ``(S,)`` float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

BOOTSTRAP_SEED = 0
NUM_RESAMPLES = 10_000


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (``ddof=1``) over seeds."""

    mean: float
    std: float
    count: int


@dataclass(frozen=True)
class PairedDifference:
    """``variant - baseline`` over paired seeds."""

    mean: float
    low: float  # bootstrap 95% interval of the mean
    high: float
    p_value: float  # two-sided paired t-test
    count: int


def spread(values: np.ndarray) -> Spread:
    """Mean and standard deviation of finite ``values`` (NaN std with fewer than two)."""
    values = _finite(values)
    if not len(values):
        return Spread(math.nan, math.nan, 0)
    return Spread(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values))


def paired_difference(
    variant: np.ndarray, baseline: np.ndarray, *, num_resamples: int = NUM_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> PairedDifference:
    """The paired difference of two ``(S,)`` arrays (pairs with a NaN on either side are left out)."""
    variant, baseline = np.asarray(variant, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if variant.shape != baseline.shape:
        raise ValueError(f"paired arrays differ in shape: {variant.shape} and {baseline.shape}")
    keep = np.isfinite(variant) & np.isfinite(baseline)
    differences = variant[keep] - baseline[keep]
    count = len(differences)
    if count == 0:
        return PairedDifference(math.nan, math.nan, math.nan, math.nan, 0)
    low, high = bootstrap_interval(differences, num_resamples=num_resamples, seed=seed)
    p_value = math.nan
    if count > 1 and np.ptp(differences) > 0:
        p_value = float(stats.ttest_rel(variant[keep], baseline[keep]).pvalue)
    elif count > 1 and differences[0] != 0:
        p_value = 0.0  # the same non-zero difference on every seed: no spread at all
    return PairedDifference(float(differences.mean()), low, high, p_value, count)


def bootstrap_interval(
    differences: np.ndarray, *, num_resamples: int = NUM_RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = 0.95
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``differences`` (NaN with fewer than two)."""
    differences = np.asarray(differences, dtype=np.float64)
    if len(differences) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    resampled = rng.choice(differences, size=(num_resamples, len(differences)), replace=True).mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return float(low), float(high)


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]

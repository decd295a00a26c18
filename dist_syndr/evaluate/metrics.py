"""IQA agreement metrics: SRCC, PLCC, KRCC and RMSE, raw and after the 4-parameter logistic mapping.

``plcc`` is the raw (linear) Pearson correlation: the paper's headline PLCC, as in the reference code
and pyiqa's benchmark. ``plcc_logistic`` and ``rmse_logistic`` are taken after mapping the predictions
onto the targets' scale with the VQEG 4-parameter logistic, fitted by least squares in standardised
units (so the result does not depend on the predictions' scale or offset). They are NaN, with one
warning saying why, below ``MIN_LOGISTIC_SAMPLES`` images and whenever the fit fails; never the
linear value under the logistic name. Constant predictions or targets make every correlation NaN,
with a warning, instead of an exception deep in SciPy.

Shapes: ``N`` images; predictions and targets are ``(N,)``.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy import optimize, stats

log = logging.getLogger(__name__)

METRIC_KEYS = ("srcc", "plcc", "krcc", "rmse", "plcc_logistic", "rmse_logistic")
"""Every key ``iqa_metrics`` returns, in report order; consumers take the key set from here."""
MIN_LOGISTIC_SAMPLES = 5
"""Below this the 4 parameters can pass through every point, so the fitted PLCC says nothing."""
MAX_FIT_EVALUATIONS = 10_000
"""Function evaluations the least-squares fit may spend before it counts as not converged."""
_START_SLOPE = 0.25  # the VQEG/pyiqa start: a quarter of the predictions' standard deviation
_FLAT_FIT = 1e-10  # a fitted curve with less spread (in target standard deviations) explains nothing


class LogisticFitError(ValueError):
    """No usable 4-parameter logistic fit; the message says why."""


def logistic4(x: np.ndarray, upper: float, lower: float, centre: float, slope: float) -> np.ndarray:
    """The usual 4-parameter logistic mapping of predictions onto the subjective scale (VQEG)."""
    # Far tails saturate to the asymptotes, as they should; a zero slope (a step) is caught by the caller.
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return (upper - lower) / (1.0 + np.exp(-(x - centre) / slope)) + lower


def fit_logistic4(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Predictions mapped onto the targets' scale by the least-squares 4-parameter logistic fit.

    Both are standardised before fitting and the curve is mapped back: the logistic family is closed
    under affine maps of its input and output, so this is the same least-squares optimum, reached
    the same way for predictions of any scale. Raises ``LogisticFitError`` naming why there is no fit.
    """
    predictions = np.asarray(predictions, dtype=np.float64).ravel()
    targets = np.asarray(targets, dtype=np.float64).ravel()
    if predictions.size < MIN_LOGISTIC_SAMPLES:
        raise LogisticFitError(f"{predictions.size} images; the 4-parameter fit needs at least {MIN_LOGISTIC_SAMPLES}")
    constant = _constant(predictions, targets)
    if constant:
        raise LogisticFitError(f"{constant} are constant")
    target_mean, target_std = float(np.mean(targets)), float(np.std(targets))
    x = (predictions - np.mean(predictions)) / np.std(predictions)
    y = (targets - target_mean) / target_std
    start = [float(np.max(y)), float(np.min(y)), 0.0, _START_SLOPE]
    with warnings.catch_warnings():
        # Only the parameters' covariance (unused) is lost when this warns; the fit itself is checked below.
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        try:
            parameters, _ = optimize.curve_fit(logistic4, x, y, p0=start, method="lm", maxfev=MAX_FIT_EVALUATIONS)
        except (RuntimeError, ValueError, FloatingPointError, np.linalg.LinAlgError) as error:
            raise LogisticFitError(f"the fit did not converge ({error})") from None
    if not np.isfinite(parameters).all() or parameters[3] == 0:
        raise LogisticFitError(f"the fit gave non-finite parameters {parameters.tolist()}")
    fitted = logistic4(x, *parameters)
    if not np.isfinite(fitted).all():
        raise LogisticFitError("the fitted curve is not finite at every prediction")
    if np.std(fitted) < _FLAT_FIT:
        raise LogisticFitError("the fitted curve is flat")
    return target_mean + target_std * fitted


def iqa_metrics(predictions, targets, *, name: str = "") -> dict[str, float]:
    """Every ``METRIC_KEYS`` value of predictions against targets; ``name`` labels the warnings."""
    predictions = np.asarray(predictions, dtype=np.float64).ravel()
    targets = np.asarray(targets, dtype=np.float64).ravel()
    if predictions.shape != targets.shape:
        raise ValueError(f"{predictions.size} predictions for {targets.size} targets")
    if predictions.size < 2:
        raise ValueError(f"need at least 2 images for correlations, got {predictions.size}")
    if not (np.isfinite(predictions).all() and np.isfinite(targets).all()):
        raise ValueError("predictions or targets contain NaN or inf")
    where = f"target {name}: " if name else ""
    result = dict.fromkeys(METRIC_KEYS, float("nan"))
    result["rmse"] = _rmse(predictions, targets)
    constant = _constant(predictions, targets)
    if constant:
        log.warning("%s%s are constant: correlations are undefined (NaN)", where, constant)
        return result
    result["srcc"] = float(stats.spearmanr(predictions, targets).statistic)
    result["plcc"] = float(stats.pearsonr(predictions, targets).statistic)
    result["krcc"] = float(stats.kendalltau(predictions, targets).statistic)
    try:
        mapped = fit_logistic4(predictions, targets)
    except LogisticFitError as error:
        log.warning("%splcc_logistic and rmse_logistic are NaN: %s", where, error)
        return result
    result["plcc_logistic"] = float(stats.pearsonr(mapped, targets).statistic)
    result["rmse_logistic"] = _rmse(mapped, targets)
    return result


def _rmse(predictions: np.ndarray, targets: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predictions - targets) ** 2)))


def _constant(predictions: np.ndarray, targets: np.ndarray) -> str:
    """ "predictions", "targets", both joined by "and", or "" when neither is constant."""
    return " and ".join(label for label, v in (("predictions", predictions), ("targets", targets)) if np.ptp(v) == 0)

"""IQA agreement metrics: SRCC, PLCC, KRCC, RMSE and PLCC after the 4-parameter logistic fit.

Constant predictions or targets make correlations undefined: those metrics are
NaN and a warning says why, instead of an exception deep in SciPy.

Shapes: ``N`` images; predictions and targets are ``(N,)``.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy import optimize, stats

log = logging.getLogger(__name__)


def logistic4(x: np.ndarray, upper: float, lower: float, centre: float, slope: float) -> np.ndarray:
    """The usual 4-parameter logistic mapping of predictions onto the subjective scale (VQEG)."""
    with np.errstate(over="ignore"):  # far tails saturate to the asymptotes, as they should
        return (upper - lower) / (1.0 + np.exp(-(x - centre) / slope)) + lower


def fit_logistic4(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Predictions mapped through the least-squares 4-parameter logistic fit."""
    spread = max(float(np.std(predictions)), 1e-6)
    start = [float(np.max(targets)), float(np.min(targets)), float(np.mean(predictions)), spread]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        try:
            parameters, _ = optimize.curve_fit(logistic4, predictions, targets, p0=start, method="trf", maxfev=20000)
        except (RuntimeError, ValueError):
            log.warning("4-parameter logistic fit did not converge; reporting the linear PLCC instead")
            return predictions
    return logistic4(predictions, *parameters)


def iqa_metrics(predictions, targets) -> dict[str, float]:
    """``srcc``, ``plcc``, ``krcc``, ``rmse`` and ``plcc_logistic`` of predictions against targets."""
    predictions = np.asarray(predictions, dtype=np.float64).ravel()
    targets = np.asarray(targets, dtype=np.float64).ravel()
    if predictions.shape != targets.shape:
        raise ValueError(f"{predictions.size} predictions for {targets.size} targets")
    if predictions.size < 2:
        raise ValueError(f"need at least 2 images for correlations, got {predictions.size}")
    if not (np.isfinite(predictions).all() and np.isfinite(targets).all()):
        raise ValueError("predictions or targets contain NaN or inf")
    result = {"rmse": float(np.sqrt(np.mean((predictions - targets) ** 2)))}
    constant = [name for name, v in (("predictions", predictions), ("targets", targets)) if np.ptp(v) == 0]
    if constant:
        log.warning("%s are constant: correlations are undefined (NaN)", " and ".join(constant))
        return result | {
            "srcc": float("nan"),
            "plcc": float("nan"),
            "krcc": float("nan"),
            "plcc_logistic": float("nan"),
        }
    result["srcc"] = float(stats.spearmanr(predictions, targets).statistic)
    result["plcc"] = float(stats.pearsonr(predictions, targets).statistic)
    result["krcc"] = float(stats.kendalltau(predictions, targets).statistic)
    fitted = fit_logistic4(predictions, targets)
    result["plcc_logistic"] = float(stats.pearsonr(fitted, targets).statistic) if np.ptp(fitted) > 0 else float("nan")
    return result

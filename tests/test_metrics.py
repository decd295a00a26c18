"""IQA metrics against direct SciPy/NumPy computations, with ties and constant inputs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import stats

from dist_syndr.evaluate import metrics


def test_metrics_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    targets = np.round(rng.uniform(0, 10, 200), 1)  # many ties
    predictions = np.round(targets + rng.normal(scale=1.5, size=200), 0)  # more ties
    result = metrics.iqa_metrics(predictions, targets)
    assert result["srcc"] == pytest.approx(stats.spearmanr(predictions, targets)[0], abs=1e-12)
    assert result["plcc"] == pytest.approx(np.corrcoef(predictions, targets)[0, 1], abs=1e-12)
    assert result["krcc"] == pytest.approx(stats.kendalltau(predictions, targets)[0], abs=1e-12)
    assert result["rmse"] == pytest.approx(np.sqrt(np.mean((predictions - targets) ** 2)))
    assert result["plcc_logistic"] >= result["plcc"] - 1e-3


def test_logistic_fit_recovers_a_monotone_distortion():
    predictions = np.linspace(-3, 3, 121)
    targets = metrics.logistic4(predictions, 9.0, 1.0, 0.3, 0.7)  # monotone, non-linear
    result = metrics.iqa_metrics(predictions, targets)
    assert result["srcc"] == pytest.approx(1.0)
    assert result["plcc"] < 0.98 and result["plcc_logistic"] == pytest.approx(1.0, abs=1e-6)


def test_constant_predictions_give_nan_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        result = metrics.iqa_metrics(np.ones(10), np.arange(10.0))
    assert np.isnan(result["srcc"]) and np.isnan(result["plcc"]) and np.isfinite(result["rmse"])
    assert "constant" in caplog.text


@pytest.mark.parametrize(
    "predictions, targets, message",
    [([1.0], [1.0], "at least 2"), ([1, 2], [1, 2, 3], "targets"), ([1, np.nan], [1, 2], "NaN")],
)
def test_bad_input(predictions, targets, message):
    with pytest.raises(ValueError, match=message):
        metrics.iqa_metrics(predictions, targets)

"""IQA metrics against SciPy and an independent 4-parameter logistic fit, with ties, tiny and constant inputs."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
from scipy import optimize, stats

from dist_syndr.evaluate import metrics


def _vqeg_fit(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The VQEG mapping beta2 + (beta1 - beta2) / (1 + exp(-(x - beta3) / |beta4|)) fitted in raw units.

    A different optimiser (trust-region reflective on the residuals, Jacobian-scaled), a different
    start (centre at the median, slope from the interquartile range) and no standardisation.
    """

    def curve(beta, x):
        return beta[1] + (beta[0] - beta[1]) / (1.0 + np.exp(-(x - beta[2]) / abs(beta[3])))

    low, high = np.percentile(predictions, [25, 75])
    start = [np.percentile(targets, 95), np.percentile(targets, 5), np.median(predictions), (high - low) / 2]
    fit = optimize.least_squares(
        lambda beta: curve(beta, predictions) - targets, start, method="trf", x_scale="jac", ftol=1e-15, xtol=1e-15
    )
    assert fit.success, fit.message
    return curve(fit.x, predictions)


def _mos_like(seed: int, num_images: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Noisy predictions of a latent quality, and targets on a MOS scale ``(0, scale)`` saturating at both ends."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(size=num_images)
    targets = scale / (1.0 + np.exp(-2.0 * quality))
    return quality + rng.normal(scale=0.3, size=num_images), targets


def _quietly(predictions, targets) -> dict[str, float]:
    """``iqa_metrics`` with every Python warning (RuntimeWarning, SciPy's) turned into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return metrics.iqa_metrics(predictions, targets)


def test_metrics_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    targets = np.round(rng.uniform(0, 10, 200), 1)  # many ties
    predictions = np.round(targets + rng.normal(scale=1.5, size=200), 0)  # more ties
    result = _quietly(predictions, targets)
    assert tuple(result) == metrics.METRIC_KEYS
    assert result["srcc"] == pytest.approx(stats.spearmanr(predictions, targets)[0], abs=1e-12)
    assert result["plcc"] == pytest.approx(np.corrcoef(predictions, targets)[0, 1], abs=1e-12)
    assert result["krcc"] == pytest.approx(stats.kendalltau(predictions, targets)[0], abs=1e-12)
    assert result["rmse"] == pytest.approx(np.sqrt(np.mean((predictions - targets) ** 2)))
    mapped = _vqeg_fit(predictions, targets)
    assert result["plcc_logistic"] == pytest.approx(np.corrcoef(mapped, targets)[0, 1], abs=1e-7)
    assert result["rmse_logistic"] == pytest.approx(np.sqrt(np.mean((mapped - targets) ** 2)), rel=1e-7)


@pytest.mark.parametrize("seed, num_images, scale", [(1, 300, 5.0), (2, 1000, 100.0), (3, 40, 1.0)])
def test_logistic_metrics_match_an_independent_vqeg_fit(seed, num_images, scale):
    predictions, targets = _mos_like(seed, num_images, scale)
    result = _quietly(predictions, targets)
    mapped = _vqeg_fit(predictions, targets)
    expected_rmse = np.sqrt(np.mean((mapped - targets) ** 2))
    assert result["plcc_logistic"] == pytest.approx(stats.pearsonr(mapped, targets)[0], abs=1e-8)
    assert result["rmse_logistic"] == pytest.approx(expected_rmse, rel=1e-7)
    # the mapping is worth having on this data: better than the raw figures, which stay the raw ones
    assert result["plcc_logistic"] > result["plcc"] + 1e-3 and result["rmse_logistic"] < result["rmse"]
    assert result["plcc"] == pytest.approx(stats.pearsonr(predictions, targets)[0], abs=1e-12)
    # the curve itself is as close as the fit's stopping rule (relative change of the squared error 1.5e-8) allows
    np.testing.assert_allclose(metrics.fit_logistic4(predictions, targets), mapped, atol=1e-5 * scale)


def test_logistic_fit_recovers_a_monotone_distortion():
    predictions = np.linspace(-3, 3, 121)
    targets = metrics.logistic4(predictions, 9.0, 1.0, 0.3, 0.7)  # monotone, non-linear
    result = _quietly(predictions, targets)
    assert result["srcc"] == pytest.approx(1.0)
    assert result["plcc"] < 0.98 and result["plcc_logistic"] == pytest.approx(1.0, abs=1e-9)
    assert result["rmse_logistic"] == pytest.approx(0.0, abs=1e-6) and result["rmse"] > 1


@pytest.mark.parametrize("scale, offset", [(1e-7, 0.0), (1e-7, 3e-6), (1e7, 0.0), (1.0, 1000.0), (-1.0, 0.0)])
def test_logistic_metrics_do_not_depend_on_the_predictions_scale_or_offset(scale, offset):
    predictions, targets = _mos_like(4, 500, 5.0)
    reference = _quietly(predictions, targets)
    moved = _quietly(predictions * scale + offset, targets)
    assert moved["plcc_logistic"] == pytest.approx(reference["plcc_logistic"], abs=1e-10)
    assert moved["rmse_logistic"] == pytest.approx(reference["rmse_logistic"], rel=1e-9)
    assert moved["srcc"] == pytest.approx(np.sign(scale) * reference["srcc"], abs=1e-12)
    assert moved["plcc"] == pytest.approx(np.sign(scale) * reference["plcc"], abs=1e-9)


def test_logistic_metrics_follow_the_targets_scale():
    predictions, targets = _mos_like(5, 200, 1.0)
    reference = _quietly(predictions, targets)
    rescaled = _quietly(predictions, 100 * targets + 7)  # e.g. KonIQ's 0-100 MOS against a 0-1 one
    assert rescaled["plcc_logistic"] == pytest.approx(reference["plcc_logistic"], abs=1e-10)
    assert rescaled["rmse_logistic"] == pytest.approx(100 * reference["rmse_logistic"], rel=1e-9)


@pytest.mark.parametrize("num_images", [2, 3, 4])
def test_too_few_images_give_nan_logistic_metrics_and_finite_linear_ones(num_images, caplog):
    predictions, targets = np.array([0.1, 0.5, 0.3, 0.9]), np.array([1.0, 2.0, 4.0, 3.0])
    predictions, targets = predictions[:num_images], targets[:num_images]
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        result = _quietly(predictions, targets)
    assert np.isnan(result["plcc_logistic"]) and np.isnan(result["rmse_logistic"])
    assert result["srcc"] == pytest.approx(stats.spearmanr(predictions, targets)[0], abs=1e-12)
    assert result["plcc"] == pytest.approx(stats.pearsonr(predictions, targets)[0], abs=1e-12)
    assert result["krcc"] == pytest.approx(stats.kendalltau(predictions, targets)[0], abs=1e-12)
    assert np.isfinite(result["rmse"])
    (record,) = caplog.records
    assert f"{num_images} images" in record.getMessage() and "at least 5" in record.getMessage()


def test_five_images_are_enough_for_the_fit():
    predictions, targets = np.array([-2.0, -1.0, 0.0, 1.0, 2.0]), np.array([0.3, 0.9, 2.6, 4.0, 4.6])
    result = _quietly(predictions, targets)
    mapped = _vqeg_fit(predictions, targets)
    assert result["plcc_logistic"] == pytest.approx(stats.pearsonr(mapped, targets)[0], abs=1e-9)
    assert result["plcc_logistic"] > result["plcc"] + 0.01


@pytest.mark.parametrize(
    "predictions, targets, which",
    [
        (np.ones(10), np.arange(10.0), "predictions are constant"),
        (np.arange(10.0), np.full(10, 3.0), "targets are constant"),
        (np.ones(10), np.ones(10), "predictions and targets are constant"),
    ],
)
def test_constant_inputs_give_nan_correlations_with_one_warning(predictions, targets, which, caplog):
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        result = _quietly(predictions, targets)  # no exception, no RuntimeWarning
    for key in ("srcc", "plcc", "krcc", "plcc_logistic", "rmse_logistic"):
        assert np.isnan(result[key]), key
    assert result["rmse"] == pytest.approx(np.sqrt(np.mean((predictions - targets) ** 2)))
    (record,) = caplog.records
    assert which in record.getMessage()


def test_a_fit_that_does_not_converge_is_nan_not_the_linear_plcc(monkeypatch, caplog):
    predictions, targets = _mos_like(6, 200, 5.0)
    monkeypatch.setattr(metrics, "MAX_FIT_EVALUATIONS", 3)  # the real optimiser, stopped early
    with caplog.at_level(logging.WARNING, logger=metrics.__name__), warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning or OptimizeWarning on the way either
        result = metrics.iqa_metrics(predictions, targets, name="koniq")
    assert np.isnan(result["plcc_logistic"]) and np.isnan(result["rmse_logistic"])
    assert result["plcc"] == pytest.approx(stats.pearsonr(predictions, targets)[0], abs=1e-12)
    (record,) = caplog.records
    assert record.getMessage().startswith("target koniq: plcc_logistic and rmse_logistic are NaN")
    assert "did not converge" in record.getMessage()


@pytest.mark.parametrize(
    "parameters, reason",
    [
        ([np.nan, 0.0, 0.0, 1.0], "non-finite parameters"),
        ([1.0, -1.0, 0.0, 0.0], "non-finite parameters"),  # a zero slope: a step, not a curve
        ([1.0, 1.0, 0.0, 1.0], "flat"),  # equal asymptotes
    ],
)
def test_an_unusable_fit_is_nan(monkeypatch, caplog, parameters, reason):
    predictions, targets = _mos_like(7, 50, 5.0)
    monkeypatch.setattr(metrics.optimize, "curve_fit", lambda *args, **kwargs: (np.array(parameters), None))
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        result = _quietly(predictions, targets)
    assert np.isnan(result["plcc_logistic"]) and np.isnan(result["rmse_logistic"]) and np.isfinite(result["plcc"])
    (record,) = caplog.records
    assert reason in record.getMessage()
    with pytest.raises(metrics.LogisticFitError, match=reason):
        metrics.fit_logistic4(predictions, targets)


@pytest.mark.parametrize(
    "predictions, targets, message",
    [([1.0], [1.0], "at least 2"), ([1, 2], [1, 2, 3], "targets"), ([1, np.nan], [1, 2], "NaN")],
)
def test_bad_input(predictions, targets, message):
    with pytest.raises(ValueError, match=message):
        metrics.iqa_metrics(predictions, targets)

"""Weak labels from the full-reference ensemble."""

from __future__ import annotations

import numpy as np
import pytest

from dist_syndr.pools import weak_labels


def _scene(size=(180, 200)):
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    base = np.stack([(x * 255 / size[1]), (y * 255 / size[0]), ((x + y) % 64) * 4], axis=-1)
    return base.astype(np.uint8)


def test_quality_falls_as_noise_grows():
    reference = _scene()
    rng = np.random.default_rng(0)
    qualities = []
    for sigma in (0, 5, 15, 40):
        noisy = np.clip(reference + rng.normal(scale=sigma, size=reference.shape), 0, 255).astype(np.uint8)
        metrics = weak_labels.metric_qualities(noisy, reference)
        assert set(metrics) == {"ssim", "ms_ssim", "gmsd", "vif", "fsim"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
        qualities.append(weak_labels.ensemble_quality(metrics))
    assert qualities[0] == pytest.approx(1.0, abs=1e-4)
    assert all(a > b for a, b in zip(qualities, qualities[1:], strict=False))


def test_small_images_skip_ms_ssim_and_shapes_must_match():
    small = _scene((64, 72))
    assert "ms_ssim" not in weak_labels.metric_qualities(small, small)
    with pytest.raises(ValueError, match="one shape"):
        weak_labels.metric_qualities(small, _scene((64, 70)))
    with pytest.raises(ValueError, match="no metric"):
        weak_labels.ensemble_quality({})

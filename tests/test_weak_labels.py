"""Weak labels from the full-reference ensemble, and how they rank KADID-10k's cells against human scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dist_syndr.pools import fr_metrics, weak_agreement, weak_labels
from dist_syndr.sharding import torch_threads

# Measured 0.859 (GMSD + FSIM; 0.849 for SSIM, GMSD, VIF, FSIM) on 3 photographs at 192x144; README "Weak labels"
# has the full-size figures.
AGREEMENT_FLOOR = 0.80


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """As the sharding workers run them."""
    with torch_threads.one_torch_thread():
        yield


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
        assert tuple(metrics) == weak_labels.ENSEMBLE == ("gmsd", "fsim")
        every = weak_labels.metric_qualities(noisy, reference, fr_metrics.METRICS)
        assert set(every) == set(fr_metrics.METRICS)
        assert all(0.0 <= v <= 1.0 for v in every.values())
        assert {name: every[name] for name in metrics} == metrics
        qualities.append(weak_labels.ensemble_quality(metrics))
    assert qualities[0] == pytest.approx(1.0, abs=1e-4)
    assert all(a > b for a, b in zip(qualities, qualities[1:], strict=False))


def test_small_images_skip_ms_ssim_and_shapes_must_match():
    small = _scene((64, 72))
    assert "ms_ssim" not in weak_labels.metric_qualities(small, small, fr_metrics.METRICS)
    with pytest.raises(ValueError, match="one shape"):
        weak_labels.metric_qualities(small, _scene((64, 70)))
    with pytest.raises(ValueError, match="no metric"):
        weak_labels.ensemble_quality({})
    with pytest.raises(ValueError, match="at least 41 px"):
        weak_labels.metric_qualities(_scene((40, 72)), _scene((40, 72)))


def test_a_batch_gives_each_image_its_label_alone():
    references = [_scene(), _scene()[::-1].copy()]
    rng = np.random.default_rng(1)
    pairs = []
    for row, reference in enumerate(references * 2):
        noisy = np.clip(reference + rng.normal(scale=4 + 6 * row, size=reference.shape), 0, 255).astype(np.uint8)
        pairs.append((noisy, row % 2))
    stack = torch.from_numpy(np.stack([noisy for noisy, _ in pairs])).permute(0, 3, 1, 2)
    labels = weak_labels.label_images(
        stack, torch.from_numpy(np.stack(references)).permute(0, 3, 1, 2), [row for _, row in pairs]
    )
    for (noisy, row), label in zip(pairs, labels, strict=True):
        alone = weak_labels.metric_qualities(noisy, references[row])
        assert label == {"metrics": alone, "quality": weak_labels.ensemble_quality(alone)}


@pytest.mark.timeout(300)
def test_weak_labels_rank_kadid_cells_like_the_human_means(fixtures_dir):
    human = weak_agreement.kadid_cell_means(fixtures_dir / "kadid10k" / "dmos.csv")
    assert human.shape == (25, 5) and 1.0 < human.min() < human.max() < 5.0
    assert human[0, 0] > human[0, 4]  # blur: level 1 looks better than level 5
    photos = weak_agreement.photographs(192, 144, weak_agreement.AGREEMENT_PHOTOS[:3])
    cells = weak_agreement.engine_cell_qualities(photos)
    assert cells["fsim"].shape == (3, 25, 5)
    chosen = weak_agreement.rank_agreement(cells, human, weak_labels.ENSEMBLE)
    every = weak_agreement.rank_agreement(cells, human, tuple(cells))
    assert chosen >= AGREEMENT_FLOOR
    assert chosen >= every - 0.02  # the cheaper ensemble ranks the cells at least about as well as all metrics

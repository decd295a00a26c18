"""Weak labels for pools without human scores: an ensemble of full-reference metrics.

Each distorted image is compared with its pristine reference by SSIM, MS-SSIM
(when the image is large enough for five scales), GMSD, VIF and FSIM from
``piq``. Every metric is turned into a quality in [0, 1] (higher is better) and
the ensemble quality is their mean; the sharding step maps the qualities of a
whole pool to [0, 10] with one min-max (docs/METHOD.md section 2). These are
algorithmic labels, not human opinion scores.

Shapes: images ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

import numpy as np

# GMSD is a deviation: 0 for identical images, about 0.35 for the worst KADID distortions.
_GMSD_WORST = 0.35
# MS-SSIM's five scales with an 11-pixel window need at least this many pixels per side.
_MS_SSIM_MIN_SIDE = 161


def metric_qualities(distorted: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Per-metric quality in [0, 1] of ``distorted`` against ``reference`` (same shape)."""
    import piq
    import torch

    if distorted.shape != reference.shape or distorted.ndim != 3 or distorted.shape[2] != 3:
        raise ValueError(
            f"weak labels need two (H, W, 3) images of one shape, got {distorted.shape} and {reference.shape}"
        )
    pair = torch.from_numpy(np.stack([distorted, reference])).permute(0, 3, 1, 2).float() / 255.0
    x, y = pair[:1], pair[1:]
    with torch.inference_mode():
        qualities = {
            "ssim": float(piq.ssim(x, y, data_range=1.0)),
            "gmsd": 1.0 - min(1.0, float(piq.gmsd(x, y, data_range=1.0)) / _GMSD_WORST),
            "vif": min(1.0, float(piq.vif_p(x, y, data_range=1.0))),
            "fsim": float(piq.fsim(x, y, data_range=1.0)),
        }
        if min(distorted.shape[:2]) >= _MS_SSIM_MIN_SIDE:
            qualities["ms_ssim"] = float(piq.multi_scale_ssim(x, y, data_range=1.0))
    return {name: float(np.clip(value, 0.0, 1.0)) for name, value in qualities.items()}


def ensemble_quality(qualities: dict[str, float]) -> float:
    """The mean of the per-metric qualities (the raw weak label, before min-max to [0, 10])."""
    if not qualities:
        raise ValueError("no metric qualities to combine")
    return float(np.mean(list(qualities.values())))

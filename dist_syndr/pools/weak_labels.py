"""Weak labels for pools without human scores: an ensemble of full-reference metrics.

Each distorted image is compared with its pristine reference by the metrics of
``ENSEMBLE`` -- GMSD and FSIM -- out of the five that
:mod:`dist_syndr.pools.fr_metrics` computes (SSIM, MS-SSIM, GMSD, VIF, FSIM:
piq's definitions, computed once per reference where they can be). Every metric
is turned into a quality in [0, 1] (higher is better) and the ensemble quality
is their mean; the sharding step maps the qualities of a whole pool to [0, 10]
with one min-max (docs/METHOD.md section 2). These are algorithmic labels, not
human opinion scores. Why these two: README "Weak labels" (each metric's cost,
and how well every subset ranks KADID-10k's (type, level) cells against the
human means; GMSD + FSIM ranks them better than all five, at a third of the cost).

:func:`label_images` labels a batch on any device (the sharding step's engine
batches); :func:`metric_qualities` labels one pair of arrays. An image gets the
same label either way, on the CPU bit for bit.

Shapes: arrays ``(H, W, 3)`` uint8 RGB; tensors uint8 ``(B, 3, H, W)`` distorted and
``(R, 3, H, W)`` references, ``ref_index`` ``(B,)``.
"""

from __future__ import annotations

import numpy as np

ENSEMBLE = ("gmsd", "fsim")
"""The metrics of every weak label (README "Weak labels"; until this choice: all five of ``fr_metrics.METRICS``)."""
# GMSD is a deviation: 0 for identical images, about 0.35 for the worst KADID distortions.
_GMSD_WORST = 0.35
# Metric order inside a label (and so in its mean): the order the first sets were written with.
_ORDER = ("ssim", "gmsd", "vif", "fsim", "ms_ssim")
# Pixels per metric pass on a GPU (the CPU works image by image in cache-sized bands anyway).
_PIXELS_PER_PASS = 32 * 512 * 384


def label_images(distorted, references, ref_index, metrics: tuple[str, ...] = ENSEMBLE) -> list[dict]:
    """``{"metrics": {name: quality}, "quality": ensemble}`` of every distorted image against its reference.

    ``distorted`` and ``references`` are uint8 tensors on one device; the work runs there.
    """
    import torch

    from dist_syndr.pools import fr_metrics

    ref_index = torch.as_tensor(ref_index, dtype=torch.int64, device=distorted.device)
    with torch.inference_mode():
        prepared = fr_metrics.prepare_references(references, metrics)
        per_pass = 1 if distorted.device.type == "cpu" else max(1, _PIXELS_PER_PASS // distorted[0, 0].numel())
        raw = {name: [] for name in prepared.metrics}
        for start in range(0, distorted.shape[0], per_pass):
            values = fr_metrics.qualities(
                distorted[start : start + per_pass], prepared, ref_index[start : start + per_pass]
            )
            for name, value in values.items():
                raw[name].append(value)
        columns = {name: torch.cat(parts).double().cpu().tolist() for name, parts in raw.items()}
    return [weak_label({name: columns[name][i] for name in columns}) for i in range(distorted.shape[0])]


def metric_qualities(
    distorted: np.ndarray, reference: np.ndarray, metrics: tuple[str, ...] = ENSEMBLE
) -> dict[str, float]:
    """Per-metric quality in [0, 1] of ``distorted`` against ``reference`` (same shape)."""
    import torch

    if distorted.shape != reference.shape or distorted.ndim != 3 or distorted.shape[2] != 3:
        raise ValueError(
            f"weak labels need two (H, W, 3) images of one shape, got {distorted.shape} and {reference.shape}"
        )
    pair = torch.from_numpy(np.ascontiguousarray(np.stack([distorted, reference]))).permute(0, 3, 1, 2)
    return label_images(pair[:1], pair[1:], [0], metrics)[0]["metrics"]


def weak_label(raw: dict[str, float]) -> dict:
    """The stored label of raw metric values (GMSD a deviation, the others similarities)."""
    qualities = {}
    for name in _ORDER:
        if name in raw:
            value = 1.0 - min(1.0, raw[name] / _GMSD_WORST) if name == "gmsd" else min(1.0, raw[name])
            qualities[name] = float(np.clip(value, 0.0, 1.0))
    return {"metrics": qualities, "quality": ensemble_quality(qualities)}


def ensemble_quality(qualities: dict[str, float]) -> float:
    """The mean of the per-metric qualities (the raw weak label, before min-max to [0, 10])."""
    if not qualities:
        raise ValueError("no metric qualities to combine")
    return float(np.mean(list(qualities.values())))

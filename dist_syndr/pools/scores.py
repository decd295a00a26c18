"""Score scaling shared by every label source (docs/METHOD.md section 2).

Scores map to [0, 10] by one global min-max per source dataset, flipped for
datasets where lower means better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def minmax_to_ten(scores: np.ndarray, *, is_lower_better: bool = False) -> np.ndarray:
    """``10 (s - min) / (max - min)``, or ``10 - that`` when lower scores mean better quality."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("cannot normalise an empty score list")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    low, high = scores.min(), scores.max()
    if high == low:
        raise ValueError(f"all scores equal {low}; min-max normalisation is undefined")
    scaled = (scores - low) / (high - low)
    if is_lower_better:
        scaled = 1.0 - scaled
    return scaled * 10.0


@dataclass(frozen=True)
class LabelScale:
    """A dataset's own label scale as its min-max map to [0, 10] saw it: the label at training scores 0 and 10
    (``at_0 > at_10`` where lower labels meant better quality, as DMOS)."""

    name: str  # what the labels are, e.g. "kadid10k"
    at_0: float
    at_10: float

    def to_original(self, scores) -> np.ndarray:
        """Training-scale scores back on the dataset's own scale."""
        return self.at_0 + (self.at_10 - self.at_0) * np.asarray(scores, dtype=np.float64) / 10.0

    def as_dict(self) -> dict:
        return {"name": self.name, "at_0": self.at_0, "at_10": self.at_10}

    @staticmethod
    def from_dict(values: dict | None) -> LabelScale | None:
        if not values:
            return None
        return LabelScale(str(values["name"]), float(values["at_0"]), float(values["at_10"]))


def fit_label_scale(name: str, scores, raw_scores) -> LabelScale | None:
    """The one linear map from training scores back to ``raw_scores``, or None when there is no such map
    (fewer than two distinct scores, a missing raw score, or samples from datasets with different scales)."""
    if any(raw is None for raw in raw_scores) or len(raw_scores) != len(scores):
        return None
    scores, raw = np.asarray(scores, dtype=np.float64), np.asarray(raw_scores, dtype=np.float64)
    if scores.size < 2 or np.ptp(scores) == 0:
        return None
    low, high = int(np.argmin(scores)), int(np.argmax(scores))
    slope = (raw[high] - raw[low]) / (scores[high] - scores[low])
    at_0 = float(raw[low] - slope * scores[low])
    tolerance = 1e-6 * max(1.0, float(np.abs(raw).max()))
    if np.abs(at_0 + slope * scores - raw).max() > tolerance:
        return None
    return LabelScale(name, at_0, at_0 + 10.0 * float(slope))

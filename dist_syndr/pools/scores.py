"""Score scaling shared by every label source (docs/METHOD.md section 2).

Scores map to [0, 10] by one global min-max per source dataset, flipped for
datasets where lower means better.
"""

from __future__ import annotations

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

"""The one record every pool reader produces.

Shapes: none (records only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ORIGINS = ("original", "reference", "distorted", "upsampled")
"""``original``: a dataset's own (distorted or authentic) image; ``reference``: a
pristine image; ``distorted``: made by our distortion engine; ``upsampled``:
a DDCUp content with a pseudo label."""


@dataclass(frozen=True)
class Sample:
    """One image of a pool.

    ``key`` is unique within the pool and stable across runs (``<source>/<name
    without extension>``); ``score`` is on [0, 10] (higher is better) or None for
    unlabelled pools; ``ref`` names the pristine reference (``<source>/<stem>``) and
    ``ref_path`` locates it when it is on disk; ``distortion_type`` (1-25 for
    KADID types, the dataset's own numbering elsewhere) and ``level`` are None for
    authentic images. ``raw_score`` is the label on the dataset's own scale (its
    MOS or DMOS before the min-max map), where the reader knows it.
    """

    key: str
    path: Path | None
    score: float | None = None
    ref: str | None = None
    ref_path: Path | None = None
    distortion_type: int | None = None
    level: int | None = None
    origin: str = "original"
    source: str = ""
    raw_score: float | None = None

    def __post_init__(self) -> None:
        if not self.key or self.key.startswith("/") or ".." in self.key.split("/"):
            raise ValueError(f"sample key {self.key!r} must be a non-empty relative name without '..'")
        if self.origin not in ORIGINS:
            raise ValueError(f"sample {self.key}: origin must be one of {ORIGINS}, got {self.origin!r}")
        if self.score is not None and not 0.0 <= self.score <= 10.0:
            raise ValueError(f"sample {self.key}: score {self.score} lies outside [0, 10]")

"""Which windows of an image a scorer shows the model, and how their predictions become one score.

``random`` and ``centre`` are the evaluation protocol (``data.eval_crops`` crops of
``data.crop`` pixels whose anchors come from ``dist_syndr.imaging.digest.evaluation_anchors``,
drawn from the run's seed and the digest of the image's upright pixels: the same image gets
the same crops whatever its name or path, and the crops ``evaluate.py`` cuts from the same
image in a shard set, whose index records that digest). ``full`` covers the whole image
with the fewest ``crop x crop`` tiles that reach every pixel, evenly spaced (overlapping
where the size is not a multiple), because a fixed-size ViT cannot take an arbitrary size;
the tiles' predictions are averaged.
Images with a side below the crop are resized up (bicubic, aspect kept) until they fit,
as the feature pass does; training would refuse them, and the result row says
``resized``.

Shapes: windows ``(K, C, C, 3)`` uint8; normalised ``(K, 3, C, C)`` float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dist_syndr.features.preprocess import normalise_batch, resize_to_fit
from dist_syndr.imaging.digest import cut, evaluation_anchors, pixel_digest

CropMode = Literal["random", "centre", "full"]
CROP_MODES: tuple[str, ...] = ("random", "centre", "full")


@dataclass(frozen=True)
class CropProtocol:
    """``num_crops`` windows of ``size`` pixels per image, chosen by ``mode`` (``full``: tiles, any number)."""

    size: int
    num_crops: int
    mode: CropMode
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in CROP_MODES:
            raise ValueError(f"crop mode must be one of {', '.join(CROP_MODES)}, got {self.mode!r}")
        if self.num_crops < 1 or self.size < 8:
            raise ValueError(f"crops must be >= 1 and the crop side >= 8 (got {self.num_crops}, {self.size})")

    @staticmethod
    def of_run(data_crop: int, eval_crops: int, eval_mode: str, seed: int, *, crops=None, mode=None) -> CropProtocol:
        """The run's evaluation protocol, with ``crops``/``mode`` overriding it where given."""
        mode = mode or eval_mode
        count = crops if crops is not None else (1 if mode == "centre" else eval_crops)
        return CropProtocol(size=data_crop, num_crops=1 if mode == "centre" else count, mode=mode, seed=seed)

    def describe(self) -> str:
        """One line for logs and model cards."""
        upright = "images decoded to 8-bit RGB with their EXIF orientation applied"
        if self.mode == "full":
            return f"{upright}; the whole image as {self.size}x{self.size} tiles, predictions averaged"
        if self.mode == "centre":
            return f"{upright}; one {self.size}x{self.size} centre crop"
        return (
            f"{upright}; {self.num_crops} random {self.size}x{self.size} crops, predictions averaged; their positions "
            f"are drawn from the seed ({self.seed}) and the xxh3-64 of the upright pixels (shape and RGB bytes), "
            "never from the file's name or place"
        )

    def windows(self, pixels: np.ndarray) -> tuple[np.ndarray, bool]:
        """``((K, C, C, 3) uint8 windows, was_resized)`` of an ``(H, W, 3)`` upright image; random crops are
        drawn from its pixel digest (of the pixels as given, before any resize)."""
        digest = pixel_digest(pixels) if self.mode == "random" else 0
        pixels, resized = resize_to_fit(pixels, self.size)
        height, width = pixels.shape[:2]
        if self.mode == "full":
            anchors = tile_anchors(width, height, self.size)
        else:
            options = {"seed": self.seed, "num_crops": self.num_crops, "mode": self.mode}
            anchors = evaluation_anchors(digest, width, height, self.size, **options)
        return np.stack([cut(pixels, anchor, self.size) for anchor in anchors]), resized

    def model_inputs(self, pixels: np.ndarray) -> tuple[np.ndarray, bool]:
        """``((K, 3, C, C) float32 normalised windows, was_resized)``."""
        windows, resized = self.windows(pixels)
        return normalise_batch(windows), resized


def tile_anchors(width: int, height: int, crop: int) -> np.ndarray:
    """``(K, 2)`` int32 ``[x, y]`` of the fewest evenly spaced ``crop`` tiles covering a ``width x height`` image."""
    xs = _positions(width, crop)
    ys = _positions(height, crop)
    return np.array([(x, y) for y in ys for x in xs], dtype=np.int32)


def _positions(length: int, crop: int) -> list[int]:
    count = math.ceil(length / crop)
    if count == 1:
        return [(length - crop) // 2]
    return [round(i * (length - crop) / (count - 1)) for i in range(count)]

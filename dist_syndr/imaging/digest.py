"""What makes evaluation crops a function of the image: a digest of its pixels, and anchors drawn from it.

:func:`pixel_digest` is the xxh3-64 of an image's shape and its upright 8-bit RGB
bytes: the sharding step records it per sample in the index, the scorer computes
it from the pixels it decodes, so one image gets one digest whatever its name,
path, format or place in a set. :func:`evaluation_anchors` draws the random
evaluation crops from ``(seed, digest, crop index)``; the loaders' training crops
draw from ``(seed, epoch, key, crop index)`` through the same :func:`hashed_anchors`.
An anchor is an absolute integer ``[x, y]`` (never a rounded relative position), so
every path that cuts at it cuts the same pixels.

Shapes: pixels ``(H, W, 3)`` uint8; anchors ``(n, 2)`` int32 as ``[x, y]``; windows ``(C, C, 3)``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import xxhash

CROP_MODES = ("random", "centre")


def pixel_digest(pixels: np.ndarray) -> int:
    """xxh3-64 of ``"<H>x<W>x<C>:"`` followed by the C-ordered bytes of ``(H, W, C)`` uint8 pixels (about 1 ms
    for 12 megapixels)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise ValueError(f"pixel digests are of (H, W, C) uint8 images, got {pixels.dtype} {pixels.shape}")
    height, width, channels = pixels.shape
    hasher = xxhash.xxh3_64(f"{height}x{width}x{channels}:".encode())
    hasher.update(np.ascontiguousarray(pixels))
    return hasher.intdigest()


def evaluation_anchors(
    digest: int, width: int, height: int, crop: int, *, seed: int, num_crops: int, mode: str
) -> np.ndarray:
    """``(num_crops, 2)`` int32 top-left ``[x, y]`` of the evaluation crops of the image whose
    :func:`pixel_digest` is ``digest``; ValueError if the image is smaller than ``crop``."""
    return hashed_anchors(f"eval:{seed}:{int(digest):016x}", width, height, crop, num_crops=num_crops, mode=mode)


def hashed_anchors(label: str, width: int, height: int, crop: int, *, num_crops: int, mode: str) -> np.ndarray:
    """``(num_crops, 2)`` int32 anchors: the centre, or crop ``i`` drawn from the blake2b hash of ``"<label>:<i>"``;
    ValueError if the image is smaller than ``crop``."""
    if width < crop or height < crop:
        raise ValueError(f"image is {width}x{height}, smaller than the {crop}x{crop} crop (images are never resized)")
    anchors = np.empty((num_crops, 2), dtype=np.int32)
    if mode == "centre":
        anchors[:] = ((width - crop) // 2, (height - crop) // 2)
        return anchors
    if mode != "random":
        raise ValueError(f"crop mode must be one of {', '.join(CROP_MODES)}, got {mode!r}")
    for index in range(num_crops):
        drawn = hashlib.blake2b(f"{label}:{index}".encode(), digest_size=16).digest()
        # 64-bit draws modulo the range: the bias (< 2^-50) is far below anything measurable.
        anchors[index, 0] = int.from_bytes(drawn[:8], "little") % (width - crop + 1)
        anchors[index, 1] = int.from_bytes(drawn[8:], "little") % (height - crop + 1)
    return anchors


def cut(pixels: np.ndarray, anchor: np.ndarray, crop: int) -> np.ndarray:
    """The ``(crop, crop, 3)`` window of an ``(H, W, 3)`` image at ``anchor = [x, y]``."""
    x, y = int(anchor[0]), int(anchor[1])
    return pixels[y : y + crop, x : x + crop]

"""Crop geometry shared by the DALI and torch paths: image size from the header, anchors, windows.

Both loaders must cut the same pixels, so neither uses its own random
generator. A crop's top-left anchor is an integer pair drawn from a hash of
``(seed, epoch, key, crop index)`` and the image size, which is read from the
PNG/JPEG header before decoding (cheap, and it validates the signature). DALI
then receives absolute integer anchors (``fn.decoders.image_slice`` /
``fn.slice`` with ``normalized_anchor=False``) and the torch path slices the
same rows and columns. No relative position is ever rounded (``fn.crop``'s
``crop_pos_x`` would become ``round_half_away(pos * (W - C))`` in float32, a
rule the torch path would have to mimic), so the two paths cannot disagree by
a pixel, and an image too small for the crop is caught before decoding.

Images smaller than the crop are refused (no resize, no padding: docs/METHOD.md
section 5 forbids changing the image's quality, and padding would feed the
model borders it never sees at test time).

Shapes: anchors ``(n, 2)`` int32 as ``[x, y]``; crops ``(C, C, 3)`` uint8 HWC or
``(3, C, C)`` float32 CHW after normalisation.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

from dist_syndr.config import DataConfig

CROP_MODES = ("random", "centre")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])


@dataclass(frozen=True)
class CropSpec:
    """How many crops of which side each image gives, and how their anchors are chosen."""

    size: int
    num_crops: int
    mode: str  # random | centre

    @staticmethod
    def from_config(config: DataConfig, *, is_training: bool) -> CropSpec:
        """Training: one random crop. Evaluation: ``eval_crops`` random crops, or one centre crop
        (``n`` identical centre crops would average to the same prediction)."""
        if is_training:
            return CropSpec(config.crop, 1, "random")
        if config.eval_crop_mode == "centre":
            return CropSpec(config.crop, 1, "centre")
        return CropSpec(config.crop, config.eval_crops, "random")

    def anchors(self, key: str, width: int, height: int, *, seed: int, epoch: int) -> np.ndarray:
        """``(num_crops, 2)`` int32 anchors of sample ``key`` (see :func:`crop_anchors`)."""
        return crop_anchors(
            key, width, height, self.size, seed=seed, epoch=epoch, num_crops=self.num_crops, mode=self.mode
        )


def image_size(data: bytes | memoryview) -> tuple[int, int]:
    """``(width, height)`` from a PNG or JPEG header (other formats through PIL); ValueError if unreadable."""
    if data[:8] == _PNG_SIGNATURE:
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("PNG header is truncated")
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"not a readable image ({error})") from None


def _jpeg_size(data: bytes | memoryview) -> tuple[int, int]:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        if marker in _JPEG_SOF:
            if position + 9 > len(data):
                break
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            if height == 0 or width == 0:
                raise ValueError("JPEG frame header gives a zero size")
            return width, height
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    raise ValueError("JPEG header is truncated (no frame header)")


def crop_anchors(
    key: str, width: int, height: int, crop: int, *, seed: int, epoch: int, num_crops: int, mode: str
) -> np.ndarray:
    """``(num_crops, 2)`` int32 top-left ``[x, y]`` of each crop; ValueError if the image is smaller than ``crop``."""
    if width < crop or height < crop:
        raise ValueError(f"image is {width}x{height}, smaller than the {crop}x{crop} crop (images are never resized)")
    anchors = np.empty((num_crops, 2), dtype=np.int32)
    if mode == "centre":
        anchors[:] = ((width - crop) // 2, (height - crop) // 2)
        return anchors
    if mode != "random":
        raise ValueError(f"crop mode must be one of {', '.join(CROP_MODES)}, got {mode!r}")
    for index in range(num_crops):
        digest = hashlib.blake2b(f"{seed}:{epoch}:{key}:{index}".encode(), digest_size=16).digest()
        # 64-bit draws modulo the range: the bias (< 2^-50) is far below anything measurable.
        anchors[index, 0] = int.from_bytes(digest[:8], "little") % (width - crop + 1)
        anchors[index, 1] = int.from_bytes(digest[8:], "little") % (height - crop + 1)
    return anchors


def cut(pixels: np.ndarray, anchor: np.ndarray, crop: int) -> np.ndarray:
    """The ``(crop, crop, 3)`` window of an ``(H, W, 3)`` image at ``anchor = [x, y]``."""
    x, y = int(anchor[0]), int(anchor[1])
    return pixels[y : y + crop, x : x + crop]

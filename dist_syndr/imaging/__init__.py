"""Images, decoded one way everywhere: headers and the pixel cap, the one decode to upright RGB, pixel digests.

The bottom stage: it imports only the top level, and every stage that touches
image bytes goes through it (sharding, both loaders, the feature pass, scoring).

::

    header = read_header(data, max_pixels)       # size and layout, refused above the cap before decoding
    pixels = decode(data, max_pixels=max_pixels)  # (H, W, 3) uint8, EXIF orientation applied
    anchors = evaluation_anchors(pixel_digest(pixels), width, height, crop, seed=0, num_crops=5, mode="random")

Shapes: decoded images ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

from dist_syndr.config import DEFAULT_MAX_PIXELS
from dist_syndr.imaging.decode import (
    TRANSPOSING_ORIENTATIONS,
    DecodedImage,
    decode,
    decode_file,
    decode_image,
    orient,
    to_rgb,
    upright_rgb,
)
from dist_syndr.imaging.digest import cut, evaluation_anchors, hashed_anchors, pixel_digest
from dist_syndr.imaging.headers import ImageError, ImageHeader, check_pixels, image_size, read_header

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "TRANSPOSING_ORIENTATIONS",
    "DecodedImage",
    "ImageError",
    "ImageHeader",
    "check_pixels",
    "cut",
    "decode",
    "decode_file",
    "decode_image",
    "evaluation_anchors",
    "hashed_anchors",
    "image_size",
    "orient",
    "pixel_digest",
    "read_header",
    "to_rgb",
    "upright_rgb",
]

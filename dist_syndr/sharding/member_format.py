"""Which bytes a shard stores for an image: the one place the sharding step picks the image member's format.

``shard.image_format`` chooses, for the whole set:

- ``png`` (the default, for interchange): plain JPEG and PNG files (8-bit RGB or grey,
  orientation 1) keep their bytes; every other image (distortion-engine outputs,
  sideways JPEGs, other formats and modes) becomes a lossless PNG of its upright
  pixels. Every tar reader and image library reads such a set; on a GPU, DALI's
  ``mixed`` decoder decodes the JPEGs (nvJPEG) and the PNGs on the CPU.
- ``lz4``: every image, JPEG and PNG files included, becomes its upright 8-bit RGB
  pixels in LZ4 row bands (:mod:`dist_syndr.imaging.lz4_pixels`, member ``.lz4``),
  which DALI inflates on the GPU with no CPU decoding at all. About 1.5x the bytes of
  the PNG this step writes (JPEGs lose their compression); only this package decodes them.

Both are lossless: a sample's pixels, and so its pixel digest, are the same in either.

Shapes: pixels ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

import numpy as np

from dist_syndr.config import ImageFormat
from dist_syndr.imaging import lz4_pixels

IMAGE_FORMATS: tuple[str, ...] = ImageFormat.__args__


def image_member(
    pixels: np.ndarray, image_format: str, *, png_compress_level: int = 1, kept: tuple[bytes, str] | None = None
) -> tuple[bytes, str]:
    """The stored bytes and member extension of an image with upright ``pixels``. ``kept``: the original file's
    bytes and extension where they may be stored as they are (a plain, upright JPEG or PNG), which ``png`` keeps."""
    if image_format == "png":
        if kept is not None:
            return kept
        from dist_syndr.pools import images

        return images.encode_png(pixels, png_compress_level), "png"
    if image_format == "lz4":
        return lz4_pixels.encode(pixels), lz4_pixels.EXTENSION
    raise ValueError(f"shard.image_format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")

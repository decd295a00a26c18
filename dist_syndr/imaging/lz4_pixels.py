"""Upright RGB pixels as LZ4-compressed row bands: the lossless image format a GPU inflates without decoding.

DALI's ``mixed`` image decoder decodes JPEG (nvJPEG) and JPEG 2000 on the GPU but PNG on
the CPU. This format needs no image decoder: the pixels are raw 8-bit RGB, cut into
bands of whole rows (about 64 KiB each), each band one LZ4 block. DALI's
``fn.decoders.inflate`` (nvCOMP; a GPU operator only) inflates every band of a batch
in parallel from the band offsets and sizes this header gives; on the CPU
``lz4.block`` inflates the same blocks to the same bytes, so every path sees
identical pixels (and the identical pixel digest). The blocks are written with
LZ4's high-compression encoder (level 9): on photographs about 1.5x the bytes of
the level-1 PNG the sharding step writes, and about 30x faster to decode on one
CPU core (``python launchers/bench.py loader``).

This module only knows the bytes: :mod:`dist_syndr.imaging.headers` checks the
declared size against the pixel cap before :func:`inflate` allocates anything.

Layout (little-endian unsigned integers)::

    offset  bytes          field
    0       8              magic b"DSRGBLZ4"
    8       2              version (1)
    10      2              channels (3)
    12      4              width
    16      4              height
    20      4              band_rows: rows per band (1 <= band_rows <= height)
    24      4              num_bands = ceil(height / band_rows); the last band is padded with zero rows
    28      4 * num_bands  compressed size of each band (> 0)
    then the bands' LZ4 blocks (raw block format: no frame, no stored size), top to bottom, filling the member

Shapes: pixels ``(H, W, 3)`` uint8; one band ``(band_rows, W, 3)``; all bands inflated
``(num_bands * band_rows, W, 3)``, whose first ``H`` rows are the image.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"DSRGBLZ4"
VERSION = 1
FORMAT = "LZ4"  # the header's format name (imaging.ImageHeader.format)
EXTENSION = "lz4"  # the shard member's extension
BAND_BYTES = 64 * 1024  # target inflated size of a band: nvCOMP's batched LZ4 works on chunks of this order
COMPRESSION_LEVEL = 9  # LZ4 HC; decoding speed does not depend on it
_FIXED = struct.Struct("<8sHHIIII")  # magic, version, channels, width, height, band_rows, num_bands


@dataclass(frozen=True)
class Layout:
    """What a member's header declares."""

    width: int
    height: int
    band_rows: int
    band_sizes: tuple[int, ...]  # compressed bytes of each band, top to bottom

    @property
    def num_bands(self) -> int:
        """Bands in the member."""
        return len(self.band_sizes)

    @property
    def header_bytes(self) -> int:
        """Bytes before the first band."""
        return _FIXED.size + 4 * self.num_bands

    @property
    def padded_height(self) -> int:
        """Rows of all bands inflated (the image's rows, then zero rows to a whole band)."""
        return self.num_bands * self.band_rows

    def band_offsets(self) -> np.ndarray:
        """``(num_bands,)`` int64 byte offset of each band within the member."""
        sizes = np.asarray(self.band_sizes, dtype=np.int64)
        return self.header_bytes + np.concatenate(([0], np.cumsum(sizes)[:-1]))


def is_lz4_pixels(data: bytes | memoryview) -> bool:
    """True when ``data`` starts like a member of this format."""
    return bytes(data[: len(MAGIC)]) == MAGIC


def read_layout(data: bytes | memoryview) -> Layout:
    """The header of a member; ValueError saying what is wrong (bad magic or version, sizes that do not add up)."""
    if len(data) < _FIXED.size:
        raise ValueError("LZ4 pixel header is truncated")
    magic, version, channels, width, height, band_rows, num_bands = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not an LZ4 pixel member (wrong magic)")
    if version != VERSION or channels != 3:
        raise ValueError(f"LZ4 pixel member of version {version} with {channels} channels (expected 1 and 3)")
    if width == 0 or height == 0 or not 1 <= band_rows <= height or num_bands != -(-height // band_rows):
        raise ValueError(f"LZ4 pixel header is inconsistent ({width}x{height}, {num_bands} bands of {band_rows} rows)")
    end = _FIXED.size + 4 * num_bands
    if len(data) < end:
        raise ValueError("LZ4 pixel header is truncated (band table)")
    sizes = struct.unpack_from(f"<{num_bands}I", data, _FIXED.size)
    if min(sizes) == 0 or end + sum(sizes) != len(data):
        raise ValueError(f"LZ4 pixel bands hold {sum(sizes)} bytes, the member {len(data) - end} after its header")
    return Layout(width, height, band_rows, sizes)


def band_rows_for(width: int, band_bytes: int = BAND_BYTES) -> int:
    """Rows per band for images ``width`` pixels wide: whole rows, about ``band_bytes`` inflated."""
    return max(1, band_bytes // (3 * width))


def encode(pixels: np.ndarray, *, band_bytes: int = BAND_BYTES) -> bytes:
    """The member of ``(H, W, 3)`` uint8 ``pixels``."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"LZ4 pixel members hold (H, W, 3) uint8 images, got {pixels.dtype} {pixels.shape}")
    block = _lz4_block()
    height, width, _ = pixels.shape
    rows = min(band_rows_for(width, band_bytes), height)
    bands = []
    for top in range(0, height, rows):
        band = np.ascontiguousarray(pixels[top : top + rows])
        if len(band) < rows:  # the last band, padded with zero rows so every band inflates to one shape
            band = np.concatenate([band, np.zeros((rows - len(band), width, 3), dtype=np.uint8)])
        bands.append(block.compress(band, mode="high_compression", compression=COMPRESSION_LEVEL, store_size=False))
    num_bands = len(bands)
    header = _FIXED.pack(MAGIC, VERSION, 3, width, height, rows, num_bands)
    return header + struct.pack(f"<{num_bands}I", *map(len, bands)) + b"".join(bands)


def inflate(data: bytes | memoryview, layout: Layout | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8 pixels of a member (whose declared size the caller has checked against its pixel cap);
    ValueError when a band does not inflate to exactly its rows."""
    layout = layout or read_layout(data)
    block = _lz4_block()
    band_size = layout.band_rows * layout.width * 3
    inflated = np.empty((layout.padded_height, layout.width, 3), dtype=np.uint8)
    flat = inflated.reshape(layout.num_bands, band_size)
    view = memoryview(data)
    for band, (offset, size) in enumerate(zip(layout.band_offsets().tolist(), layout.band_sizes, strict=True)):
        try:
            rows = block.decompress(view[offset : offset + size], uncompressed_size=band_size)
        except Exception as error:  # lz4.block.LZ4BlockError: the block is corrupt or inflates past its band
            raise ValueError(f"LZ4 pixel band {band} does not inflate ({error})") from None
        if len(rows) != band_size:
            raise ValueError(f"LZ4 pixel band {band} inflates to {len(rows)} bytes, not {band_size}")
        flat[band] = np.frombuffer(rows, dtype=np.uint8)
    return inflated[: layout.height]


def _lz4_block():
    try:
        import lz4.block
    except ImportError:
        raise ImportError(
            "the lz4 image format (shard.image_format: lz4) needs the lz4 package, a dependency of dist_syndr: "
            "pip install 'lz4>=4.4.5,<5'"
        ) from None
    return lz4.block

"""The one image decode: encoded bytes (or a PIL image) -> upright 8-bit RGB, refused above the pixel cap.

Every stage decodes through here: the sharding step (pool images, references,
engine inputs), both loaders' torch path, the feature pass and the scorer. The
steps, in order:

1. the header (:mod:`dist_syndr.imaging.headers`): the declared size is checked
   against ``max_pixels`` before anything is decoded, and PIL's own bomb limit
   follows the cap, so a decompression bomb is an :class:`ImageError` like any
   unreadable file; our LZ4 pixel members (:mod:`dist_syndr.imaging.lz4_pixels`)
   are inflated here, after that check, and hold RGB pixels stored upright;
2. PIL decodes (libjpeg-turbo, libpng: what DALI's CPU decoder gives bit for bit);
3. every mode becomes 8-bit RGB (:func:`to_rgb`: 16-bit and 32-bit integers
   scaled by ``1/257``, floats clipped, alpha dropped, palette and CMYK converted);
4. the EXIF orientation is applied (:func:`orient`, ``ImageOps.exif_transpose``'s
   eight cases as numpy transposes), unless the caller reads stored pixels that
   are upright by construction (shard members: the sharding step applied it).

Shapes: decoded images ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import dist_syndr.imaging.lz4_pixels as lz4_pixels  # the module, not the package (imported by it)
from dist_syndr.config import DEFAULT_MAX_PIXELS
from dist_syndr.imaging.headers import ImageError, ImageHeader, check_pixels, open_image, orientation_of, read_header

TRANSPOSING_ORIENTATIONS = frozenset(range(2, 9))  # EXIF values that move pixels; 1 and anything else leave them


@dataclass(frozen=True)
class DecodedImage:
    """Upright pixels and what the bytes said about them."""

    pixels: np.ndarray  # (H, W, 3) uint8 RGB, C-contiguous, upright
    header: ImageHeader
    orientation: int  # the EXIF orientation found (1 where none; not applied when the caller said so)

    @property
    def is_stored_upright(self) -> bool:
        """True when the bytes, decoded by any of our decoders without orientation, already are ``pixels``
        (a plain JPEG/PNG whose orientation moves nothing): the sharding step keeps such bytes as they are."""
        return self.header.is_plain and self.orientation not in TRANSPOSING_ORIENTATIONS


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, is_oriented: bool = True, name: str | None = None
) -> DecodedImage:
    """Decode encoded bytes; ``is_oriented=False`` keeps the stored orientation (shard members, upright already).
    :class:`ImageError` with the reason (prefixed by ``name`` where given) when the bytes cannot be used."""
    try:
        return _decode(bytes(data), max_pixels, is_oriented)
    except ImageError as error:
        if name is None:
            raise
        raise ImageError(f"{name}: {error}") from None


def decode(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, is_oriented: bool = True, name: str | None = None
) -> np.ndarray:
    """``(H, W, 3)`` uint8 upright RGB of encoded bytes (see :func:`decode_image`)."""
    return decode_image(data, max_pixels=max_pixels, is_oriented=is_oriented, name=name).pixels


def decode_file(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8 upright RGB of an image file; :class:`ImageError` when it cannot be read or used."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        reason = f"unreadable file ({error.strerror or error})"
        raise ImageError(reason if name is None else f"{name}: {reason}") from None
    return decode(data, max_pixels=max_pixels, name=name)


def _decode(data: bytes, max_pixels: int, is_oriented: bool) -> DecodedImage:
    from PIL import Image

    header = read_header(data, max_pixels)  # refused here, before PIL allocates anything
    if header.format == lz4_pixels.FORMAT:  # upright RGB already: no mode, no orientation
        try:
            return DecodedImage(lz4_pixels.inflate(data), header, 1)
        except ValueError as error:
            raise ImageError(f"not a readable image ({error})") from None
    try:
        with open_image(data, max_pixels) as image:
            check_pixels(*image.size, max_pixels)  # PIL's own idea of the size, for formats parsed twice
            image.load()
            orientation = orientation_of(image)
            pixels = to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ImageError(f"refused as a decompression bomb ({error})") from None
    except (OSError, SyntaxError, ValueError, MemoryError) as error:
        raise ImageError(f"not a readable image ({error})") from None
    if is_oriented:
        pixels = orient(pixels, orientation)
    return DecodedImage(pixels, header, orientation)


def to_rgb(image) -> np.ndarray:
    """``(H, W, 3)`` uint8 of a PIL image in any mode: 16-bit and 32-bit integer images are scaled to 8 bits
    (``v / 257``, rounded), float images clipped to [0, 255], alpha dropped, palette and CMYK converted."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        wide = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode != "RGB":
        image = image.convert("RGBA" if mode in ("P", "PA", "LA") else "RGB").convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``(H, W, C)`` ``pixels`` as the EXIF ``orientation`` says to show them, C-contiguous (``exif_transpose``'s
    mapping: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90
    counter-clockwise); other values return ``pixels`` as they are."""
    move = _MOVES.get(orientation)
    if move is None:
        return pixels
    height, width, channels = pixels.shape
    # Whole pixels as single opaque items: the transposed copy moves 3-byte cells, about 5x faster than bytes.
    cells = np.ascontiguousarray(pixels).view(np.dtype((np.void, channels * pixels.itemsize))).reshape(height, width)
    moved = np.ascontiguousarray(move(cells))
    return moved.view(pixels.dtype).reshape(*moved.shape, channels)


_MOVES = {
    2: lambda cells: cells[:, ::-1],
    3: lambda cells: cells[::-1, ::-1],
    4: lambda cells: cells[::-1],
    5: lambda cells: cells.T,
    6: lambda cells: np.rot90(cells, k=-1),
    7: lambda cells: cells[::-1, ::-1].T,
    8: lambda cells: np.rot90(cells, k=1),
}


def upright_rgb(image) -> np.ndarray:
    """``(H, W, 3)`` uint8 upright RGB of an opened PIL image (the Python API's PIL inputs)."""
    image.load()
    return orient(to_rgb(image), orientation_of(image))

"""What an image file declares before any pixel is decoded: format, size, layout, EXIF orientation.

PNG and JPEG headers are parsed here (the PNG ``IHDR`` and chunk list, the JPEG
markers up to the frame header), and the header of our LZ4 pixel members
(:mod:`dist_syndr.imaging.lz4_pixels`, format ``LZ4``): cheap, no PIL, and a wrong
signature or a truncated header is an :class:`ImageError` at once. Other formats
are opened by PIL, which reads only their header. :func:`check_pixels` is the one pixel cap:
every path calls it on the declared size before decoding, so a 22 KB PNG that
declares 14000 x 13000 pixels is refused without allocating them.

``is_plain`` marks the files that every decoder here turns into the same pixels
(PIL and DALI's CPU decoder bit for bit, measured): complete 8-bit RGB or grey
JPEG (baseline or progressive Huffman) and PNG without palette, alpha or
transparency. The sharding step stores such files as they are (when their
orientation is 1) and re-encodes the rest.

Shapes: none (headers only).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import dist_syndr.imaging.lz4_pixels as lz4_pixels  # the module, not the package (imported by it)
from dist_syndr.config import DEFAULT_MAX_PIXELS

ORIENTATION_TAG = 0x0112  # EXIF Orientation; 2..8 transpose the stored pixels, anything else leaves them

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
# Chunks through which PIL may find an orientation (eXIf, or EXIF/XMP text) and which it reads only while decoding.
_PNG_METADATA_KEYS = (b"Raw profile type exif\x00", b"XML:com.adobe.xmp\x00")
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_PLAIN_SOF = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended and progressive Huffman
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])


class ImageError(ValueError):
    """An image that cannot be used: unreadable, truncated, a decompression bomb or above the pixel cap.
    The message is the reason (callers add the file, key or sample)."""


@dataclass(frozen=True)
class ImageHeader:
    """An image's declared facts."""

    format: str  # "PNG", "JPEG", or PIL's name of another format
    width: int
    height: int
    is_plain: bool  # complete 8-bit RGB/grey JPEG or PNG without palette or alpha: every decoder gives the same pixels
    has_png_metadata: bool = False  # a PNG with eXIf or EXIF/XMP text chunks (an orientation PIL reads on decoding)

    @property
    def num_pixels(self) -> int:
        """Declared width times height."""
        return self.width * self.height


def read_header(data: bytes | memoryview, max_pixels: int | None = None) -> ImageHeader:
    """The header of encoded image bytes; :class:`ImageError` if unreadable or (with ``max_pixels``) above the cap."""
    if len(data) == 0:
        raise ImageError("empty file")
    if data[:8] == _PNG_SIGNATURE:
        header = _png_header(data)
    elif data[:2] == b"\xff\xd8":
        header = _jpeg_header(data)
    elif lz4_pixels.is_lz4_pixels(data):
        header = _lz4_header(data)
    else:
        header = _pil_header(bytes(data), DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    if max_pixels is not None:
        check_pixels(header.width, header.height, max_pixels)
    return header


def image_size(data: bytes | memoryview) -> tuple[int, int]:
    """``(width, height)`` from the header; :class:`ImageError` (a ValueError) if unreadable."""
    header = read_header(data)
    return header.width, header.height


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """:class:`ImageError` when ``width x height`` exceeds ``max_pixels`` (checked before any decoding)."""
    if width * height > max_pixels:
        raise ImageError(
            f"{width}x{height} pixels exceeds the limit of {max_pixels:,} (max_pixels); refused before decoding"
        )


def orientation_of(image) -> int:
    """The EXIF orientation of an opened PIL image as ``ImageOps.exif_transpose`` reads it (EXIF, then XMP);
    1 where there is none. PNG and TIFF images may have to be decoded to know."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
        return int(value)
    except (TypeError, ValueError, OSError, SyntaxError):  # a malformed EXIF block: exif_transpose would fail too
        return 1


def jpeg_orientation(data: bytes | memoryview, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """The EXIF orientation of JPEG bytes without decoding pixels (PIL parses the APP1 segments on opening)."""
    with open_image(bytes(data), max_pixels) as image:
        return orientation_of(image)


def open_image(data: bytes, max_pixels: int):
    """``PIL.Image.open`` of ``data`` (header only) with PIL's own bomb limit set to our cap, so PIL never refuses an
    image under the cap and an image above it is an :class:`ImageError` here, before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    if Image.MAX_IMAGE_PIXELS != max_pixels:
        # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; the warning is turned into our refusal.
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ImageError(f"refused as a decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise ImageError("not a readable image (no image format PIL knows)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"not a readable image ({error})") from None
    check_pixels(*image.size, max_pixels)
    return image


def _pil_header(data: bytes, max_pixels: int) -> ImageHeader:
    image = open_image(data, max_pixels)
    with image:
        return ImageHeader(str(image.format), image.size[0], image.size[1], is_plain=False)


def _lz4_header(data: bytes | memoryview) -> ImageHeader:
    try:
        layout = lz4_pixels.read_layout(data)
    except ValueError as error:
        raise ImageError(f"not a readable image ({error})") from None
    return ImageHeader(lz4_pixels.FORMAT, layout.width, layout.height, is_plain=False)


def _png_header(data: bytes | memoryview) -> ImageHeader:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageError("not a readable image (PNG header is truncated)")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if width == 0 or height == 0:
        raise ImageError("not a readable image (PNG header gives a zero size)")
    bit_depth, colour_type = data[24], data[25]
    has_transparency = has_metadata = False
    position = 8
    while position + 8 <= len(data):  # chunk headers only: a walk over lengths, never over pixel data
        length = int.from_bytes(data[position : position + 4], "big")
        kind = bytes(data[position + 4 : position + 8])
        if kind == b"tRNS":
            has_transparency = True
        elif kind == b"eXIf" or (
            kind in (b"tEXt", b"zTXt", b"iTXt")
            and bytes(data[position + 8 : position + 8 + 32]).startswith(_PNG_METADATA_KEYS)
        ):
            has_metadata = True
        elif kind == b"IEND":
            break
        position += 12 + length
    is_complete = bytes(data[-12:]).endswith(_PNG_END)
    is_plain = bit_depth == 8 and colour_type in (0, 2) and not has_transparency and is_complete
    return ImageHeader("PNG", width, height, is_plain=is_plain, has_png_metadata=has_metadata)


def _jpeg_header(data: bytes | memoryview) -> ImageHeader:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ImageError(f"not a readable image (JPEG marker expected at byte {position})")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        if marker in _JPEG_SOF:
            if position + 10 > len(data):
                break
            precision, components = data[position + 4], data[position + 9]
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            if height == 0 or width == 0:
                raise ImageError("not a readable image (JPEG frame header gives a zero size)")
            is_plain = (
                marker in _JPEG_PLAIN_SOF
                and precision == 8
                and components in (1, 3)
                and bytes(data[-2:]) == b"\xff\xd9"
            )
            return ImageHeader("JPEG", width, height, is_plain=is_plain)
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    raise ImageError("not a readable image (JPEG header is truncated: no frame header)")

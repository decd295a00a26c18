"""LZ4 pixel members (imaging/lz4_pixels.py): bit-exact round trips, the header, the pixel cap before inflating,
corrupt members as clear errors."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from dist_syndr.imaging import ImageError, decode, decode_image, lz4_pixels, pixel_digest, read_header

SHAPES = [(1, 1), (1, 5), (7, 3), (224, 224), (301, 233), (97, 1000), (3, 30000), (1000, 21)]


def _pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x * 7 % 256, y * 3 % 256, (x + y) % 256], axis=-1)
    return np.clip(smooth + rng.integers(-20, 20, size=(height, width, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("height, width", SHAPES)
def test_round_trip_is_bit_exact_for_any_shape(height, width):
    pixels = _pixels(height, width, seed=height + width)
    data = lz4_pixels.encode(pixels)
    layout = lz4_pixels.read_layout(data)
    assert (layout.width, layout.height) == (width, height)
    assert 1 <= layout.band_rows <= height and layout.num_bands == -(-height // layout.band_rows)
    assert layout.band_rows * width * 3 <= max(lz4_pixels.BAND_BYTES, width * 3)  # whole rows, about 64 KiB
    assert layout.band_offsets()[0] == layout.header_bytes and int(layout.band_offsets()[-1]) < len(data)
    header = read_header(data, max_pixels=height * width)
    assert (header.format, header.width, header.height, header.is_plain) == ("LZ4", width, height, False)
    decoded = decode_image(data, is_oriented=True)
    assert decoded.pixels.shape == pixels.shape and decoded.pixels.flags.c_contiguous and decoded.orientation == 1
    np.testing.assert_array_equal(decoded.pixels, pixels)
    assert pixel_digest(decoded.pixels) == pixel_digest(pixels)


def test_bands_are_independent_lz4_blocks_of_whole_rows_padded_with_zero_rows():
    import lz4.block

    pixels = _pixels(301, 233)
    data = lz4_pixels.encode(pixels)
    layout = lz4_pixels.read_layout(data)
    band_size = layout.band_rows * 233 * 3
    bands = [
        np.frombuffer(lz4.block.decompress(data[o : o + s], uncompressed_size=band_size), dtype=np.uint8)
        for o, s in zip(layout.band_offsets().tolist(), layout.band_sizes, strict=True)
    ]  # what the GPU's inflate does with each (offset, size): one raw block per band
    inflated = np.concatenate(bands).reshape(layout.padded_height, 233, 3)
    np.testing.assert_array_equal(inflated[:301], pixels)
    assert layout.padded_height > 301 and not inflated[301:].any()


def test_the_pixel_cap_refuses_a_member_from_its_header_before_inflating(monkeypatch):
    data = lz4_pixels.encode(_pixels(40, 50))
    inflated = []
    real = lz4_pixels.inflate
    monkeypatch.setattr(lz4_pixels, "inflate", lambda *args: inflated.append(1) or real(*args))
    with pytest.raises(ImageError, match="50x40 pixels exceeds the limit of 1,999 .*refused before decoding"):
        decode(data, max_pixels=1999)
    with pytest.raises(ImageError, match="exceeds the limit"):
        read_header(data, max_pixels=1999)
    assert inflated == []
    assert decode(data, max_pixels=2000).shape == (40, 50, 3) and inflated == [1]
    # A forged header declaring 60000 x 60000 pixels in a few bytes: refused unread under the default cap.
    forged = struct.pack("<8sHHIIII", lz4_pixels.MAGIC, 1, 3, 60000, 60000, 1, 60000) + struct.pack(
        "<60000I", *[1] * 60000
    )
    with pytest.raises(ImageError, match="60000x60000 pixels exceeds the limit"):
        decode(forged + b"\x00" * 60000)
    assert inflated == [1]


def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d[:20], "LZ4 pixel header is truncated"),
        (lambda d: d[:-1], "bands hold .* bytes, the member"),
        (lambda d: d + b"\x00", "bands hold .* bytes, the member"),
        (lambda d: _with(d, 8, struct.pack("<H", 2)), "version 2"),
        (lambda d: _with(d, 10, struct.pack("<H", 4)), "with 4 channels"),
        (lambda d: _with(d, 20, struct.pack("<I", 0)), "header is inconsistent"),
        (lambda d: _with(d, 24, struct.pack("<I", 7)), "header is inconsistent"),
        (lambda d: _with(d, 28, struct.pack("<I", 0)), "bands hold|header is inconsistent"),
    ],
)
def test_a_damaged_header_is_an_image_error_saying_what_is_wrong(damage, message):
    data = lz4_pixels.encode(_pixels(300, 120))
    assert lz4_pixels.read_layout(data).num_bands > 1
    with pytest.raises(ImageError, match=f"not a readable image .*{message}"):
        decode(damage(data))


def test_a_damaged_band_is_an_image_error_never_wrong_pixels():
    pixels = _pixels(300, 120)
    data = lz4_pixels.encode(pixels)
    layout = lz4_pixels.read_layout(data)
    last = int(layout.band_offsets()[-1])
    # A band cut short: its block ends early (the member keeps its length, so the header still adds up).
    shortened = bytearray(data)
    shortened[last:] = b"\x00" * (len(data) - last)
    with pytest.raises(ImageError, match="not a readable image \\(LZ4 pixel band"):
        decode(bytes(shortened))


def test_encode_refuses_anything_but_rgb_bytes():
    with pytest.raises(ValueError, match="\\(H, W, 3\\) uint8"):
        lz4_pixels.encode(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="\\(H, W, 3\\) uint8"):
        lz4_pixels.encode(np.zeros((4, 4, 3), dtype=np.float32))
    assert not lz4_pixels.is_lz4_pixels(b"\x89PNG\r\n\x1a\n") and lz4_pixels.is_lz4_pixels(lz4_pixels.MAGIC + b"x")

"""The imaging stage: headers and the pixel cap, the one decode to upright RGB, pixel digests and their anchors."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from dist_syndr import imaging
from dist_syndr.imaging import ImageError
from dist_syndr.imaging.headers import jpeg_orientation


def bomb_png(width: int = 14000, height: int = 13000, rows: int = 520) -> bytes:
    """A valid PNG signature and IHDR declaring ``width x height`` 8-bit RGB, then an IDAT holding only ``rows``
    zero rows (about 21 KB for the default): a decoder would allocate the whole image before finding it short."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(bytes((width * 3 + 1) * rows), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def phone_photos(folder: Path) -> np.ndarray:
    """``phone.jpg``: a 96x64 JPEG tagged Orientation=6 (shown 64x96), and ``plain.jpg``: one without a tag.
    Returns the upright pixels of ``phone.jpg``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(21)
    coarse = rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    stored = np.asarray(Image.fromarray(coarse).resize((96, 64), Image.BILINEAR))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(stored).save(folder / "phone.jpg", exif=exif, quality=92)
    Image.fromarray(stored[::-1, ::-1]).save(folder / "plain.jpg", quality=92)
    with Image.open(folder / "phone.jpg") as image:
        return np.rot90(np.asarray(image.convert("RGB")), k=-1)


def _encoded(pixels: np.ndarray, format: str, orientation: int | None = None, **options) -> bytes:
    buffer = io.BytesIO()
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif
    Image.fromarray(pixels).save(buffer, format=format, **options)
    return buffer.getvalue()


def _pixels(height: int = 40, width: int = 56, seed: int = 0) -> np.ndarray:
    coarse = np.random.default_rng(seed).integers(0, 256, size=(height // 4, width // 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def test_headers_give_size_and_layout_without_decoding():
    pixels = _pixels()
    cases = {
        "png": (_encoded(pixels, "PNG"), "PNG", True),
        "grey png": (_encoded(pixels[:, :, 0], "PNG"), "PNG", True),
        "jpeg": (_encoded(pixels, "JPEG", quality=90), "JPEG", True),
        "progressive": (_encoded(pixels, "JPEG", progressive=True), "JPEG", True),
        "16-bit": (_encoded(pixels[:, :, 0].astype(np.uint16) * 257, "PNG"), "PNG", False),
        "rgba": (_encoded(np.dstack([pixels, pixels[:, :, :1]]), "PNG"), "PNG", False),
        "bmp": (_encoded(pixels, "BMP"), "BMP", False),
        "truncated jpeg": (_encoded(pixels, "JPEG")[:-40], "JPEG", False),  # no end marker: not plain
    }
    for name, (data, format, is_plain) in cases.items():
        header = imaging.read_header(data)
        assert (header.format, header.width, header.height, header.is_plain) == (format, 56, 40, is_plain), name
    for mode, format in (("CMYK", "JPEG"), ("P", "PNG")):
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buffer, format=format)
        assert not imaging.read_header(buffer.getvalue()).is_plain, mode
    assert imaging.read_header(_encoded(pixels, "PNG", orientation=6)).has_png_metadata
    for garbage, reason in (
        (b"", "empty file"),
        (b"not an image", "no image format"),
        (b"\xff\xd8\xff\xe0\x00", "JPEG"),
    ):
        with pytest.raises(ImageError, match=reason):
            imaging.read_header(garbage)


def test_a_bomb_is_refused_from_its_header_and_pils_limit_follows_the_cap():
    data = bomb_png()
    assert 15_000 < len(data) < 30_000
    assert imaging.image_size(data) == (14000, 13000)  # the header alone is fine to read
    for refuse in (
        lambda: imaging.read_header(data, max_pixels=imaging.DEFAULT_MAX_PIXELS),
        lambda: imaging.decode(data),
        lambda: imaging.decode_image(data, is_oriented=False, name="bomb.png"),
    ):
        with pytest.raises(ImageError, match=r"14000x13000 pixels exceeds the limit of 120,000,000"):
            refuse()
    # formats parsed by PIL: PIL's own bomb limit is our cap, and what it refuses is an ImageError
    bmp = _encoded(_pixels(), "BMP")
    with pytest.raises(ImageError, match="decompression bomb|exceeds the limit of 1,000"):
        imaging.decode(bmp, max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == 1000
    big_cap = 400_000_000  # above PIL's default limit: PIL must not refuse what the cap allows
    assert imaging.decode(bmp, max_pixels=big_cap).shape == (40, 56, 3) and Image.MAX_IMAGE_PIXELS == big_cap
    imaging.decode(bmp)
    assert Image.MAX_IMAGE_PIXELS == imaging.DEFAULT_MAX_PIXELS


@pytest.mark.parametrize("format", ["JPEG", "PNG", "WEBP"])
def test_every_orientation_decodes_as_exif_transpose_shows_it(format):
    pixels = _pixels(height=24, width=36)
    for orientation in (None, *range(0, 10)):
        data = _encoded(pixels, format, orientation, **({"quality": 90} if format == "JPEG" else {}))
        with Image.open(io.BytesIO(data)) as image:
            expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        decoded = imaging.decode_image(data)
        np.testing.assert_array_equal(decoded.pixels, expected, err_msg=f"{format} {orientation}")
        assert decoded.pixels.flags.c_contiguous
        stored = imaging.decode(data, is_oriented=False)  # shard members: as stored
        with Image.open(io.BytesIO(data)) as image:
            np.testing.assert_array_equal(stored, np.asarray(image.convert("RGB")))
        is_moved = orientation in imaging.TRANSPOSING_ORIENTATIONS
        assert decoded.is_stored_upright == (format != "WEBP" and not is_moved), (format, orientation)
        if format == "JPEG":
            assert jpeg_orientation(data) == (1 if orientation is None else orientation)
        with Image.open(io.BytesIO(data)) as image:  # the Python API's PIL images
            np.testing.assert_array_equal(imaging.upright_rgb(image), expected)


def test_every_mode_becomes_8_bit_rgb():
    pixels = _pixels()
    gray16 = (pixels[:, :, 0].astype(np.uint32) * 251 % 65536).astype(np.uint16)
    cases = {
        "L": (_encoded(pixels[:, :, 0], "PNG"), np.repeat(pixels[:, :, :1], 3, axis=2)),
        "I;16": (_encoded(gray16, "PNG"), np.repeat(np.rint(gray16 / 257.0).astype(np.uint8)[:, :, None], 3, axis=2)),
        "RGBA": (_encoded(np.dstack([pixels, np.full(pixels.shape[:2], 9, np.uint8)]), "PNG"), pixels),
    }
    for mode, (data, expected) in cases.items():
        np.testing.assert_array_equal(imaging.decode(data), expected, err_msg=mode)
    with pytest.raises(ImageError, match="not a readable image"):
        imaging.decode(_encoded(pixels, "PNG")[:80])


def test_the_pixel_digest_is_of_the_pixels_not_the_file():
    pixels = _pixels()
    digest = imaging.pixel_digest(pixels)
    assert imaging.pixel_digest(imaging.decode(_encoded(pixels, "PNG"))) == digest
    assert imaging.pixel_digest(imaging.decode(_encoded(pixels, "BMP"))) == digest
    assert imaging.pixel_digest(np.array(pixels, order="F")) == digest  # memory layout does not matter
    # a phone photo stored sideways with its tag, and the same view stored upright, are one image
    sideways = np.ascontiguousarray(np.rot90(pixels, k=1))
    assert imaging.pixel_digest(imaging.decode(_encoded(sideways, "PNG", orientation=6))) == digest
    changed = pixels.copy()
    changed[0, 0, 0] ^= 1
    assert imaging.pixel_digest(changed) != digest
    assert imaging.pixel_digest(pixels.reshape(56, 40, 3)) != digest  # same bytes, other shape
    with pytest.raises(ValueError, match="uint8"):
        imaging.pixel_digest(pixels.astype(np.float32))


def test_evaluation_anchors_come_from_the_digest_and_the_seed_only():
    anchors = imaging.evaluation_anchors(123, 300, 200, 64, seed=0, num_crops=5, mode="random")
    assert anchors.dtype == np.int32 and anchors.shape == (5, 2)
    assert ((anchors >= 0) & (anchors <= [300 - 64, 200 - 64])).all()
    np.testing.assert_array_equal(
        anchors, imaging.evaluation_anchors(123, 300, 200, 64, seed=0, num_crops=5, mode="random")
    )
    assert not np.array_equal(
        anchors, imaging.evaluation_anchors(124, 300, 200, 64, seed=0, num_crops=5, mode="random")
    )
    assert not np.array_equal(
        anchors, imaging.evaluation_anchors(123, 300, 200, 64, seed=1, num_crops=5, mode="random")
    )
    centre = imaging.evaluation_anchors(123, 300, 200, 64, seed=0, num_crops=1, mode="centre")
    np.testing.assert_array_equal(centre, [[118, 68]])
    with pytest.raises(ValueError, match="smaller than the 64x64 crop"):
        imaging.evaluation_anchors(123, 63, 200, 64, seed=0, num_crops=1, mode="random")


@pytest.mark.timeout(300)
def test_a_bomb_is_skipped_and_listed_on_every_path_and_never_decoded(tmp_path):
    """A 21 KB PNG declaring 14000x13000 pixels in a pool (image and engine input), the references' feature pass,
    a raw target set, a shard set's member (torch loader, DALI's CPU pipeline, decodes_fully) and a scoring job
    (PIL and DALI routing): refused from its header everywhere, in one process whose peak RSS does not grow
    (decoding it would take 546 MB as RGB)."""
    from tests.conftest import PROJECT_ROOT
    from tests.test_evaluation import _run_dir, _tiny_model

    run_dir = _run_dir(tmp_path, _tiny_model(3))
    command = [sys.executable, "-m", "tests.bomb_worker", str(run_dir), str(tmp_path / "work")]
    completed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=280)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.splitlines()[-1])
    good, bomb = report["rounds"]["good"], report["rounds"]["bomb"]
    refused = "14000x13000 pixels exceeds the limit of 120,000,000 (max_pixels); refused before decoding"
    assert good["pool_skipped"] == [] and bomb["pool_skipped"] == ["pool/bomb", "pool/engine"]
    assert bomb["features_error"] == f"{tmp_path / 'work' / 'bomb.png'}: {refused}"
    assert bomb["target_skipped"] == ["labels-bomb/bomb"] and len(bomb["target_predicted"]) == 2
    for loader in ("torch", "dali") if "dali_skipped" in bomb else ("torch",):
        assert good[f"{loader}_skipped"] == [] and bomb[f"{loader}_skipped"] == ["set/bomb"], loader
    assert bomb["loader_error"].endswith("sample set/bomb: image is 14000x13000, 182,000,000 pixels above "
                                         "data.max_pixels=120,000,000; refused before decoding")  # fmt: skip
    assert "\n" not in bomb["loader_error"] and bomb["decodes_fully"] == [True, False]
    for decoder in ("pil", "dali") if "score_errors_dali" in bomb else ("pil",):
        errors = bomb[f"score_errors_{decoder}"]
        assert [(Path(row["path"]).name, row["reason"]) for row in errors] == [("bomb.png", refused)], decoder
    assert "14000x13000" not in report["decoded_sizes"]  # PIL never started decoding it
    for process in ("self", "children"):
        growth = bomb["peak_mb"][process] - good["peak_mb"][process]
        assert growth < 100, f"{process}: peak RSS grew by {growth:.0f} MB meeting the bomb"

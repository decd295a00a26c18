"""Decoding scoring inputs with DALI: "mixed" (nvJPEG, the hardware JPEG decoder) on a GPU, "cpu" without one.

DALI takes the files it decodes as PIL does: the header's "plain" files
(:mod:`dist_syndr.imaging.headers`: complete 8-bit JPEG and PNG in RGB or grayscale, JPEG chroma
upsampled the way libjpeg does by default), no larger than the pixel limit and no smaller than the
crop. DALI decodes them as stored (``adjust_orientation=False``) and the EXIF orientation PIL reads
from the header is applied by the same :func:`dist_syndr.imaging.decode.orient` that the PIL path
uses, so both paths turn a file into the same upright pixels (bit for bit on the CPU, measured; the
GPU's nvJPEG within a JPEG's last grey levels). A PNG whose orientation PIL would find only by
decoding (eXIf or EXIF/XMP text chunks), every other file, and every file of a batch DALI fails on
goes through PIL (:func:`dist_syndr.imaging.decode.decode`), which converts the rarer modes, resizes
small images up and names the reason a file cannot be scored.

Shapes: decoded images ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from dist_syndr.imaging import ImageError, decode, orient, read_header
from dist_syndr.imaging.headers import jpeg_orientation

log = logging.getLogger(__name__)

DECODERS = ("auto", "pil", "dali")


def resolve_decoder(decoder: str, device_type: str) -> str:
    """``pil`` or ``dali``: ``auto`` is DALI where it runs on a GPU (decoding is the cost there), PIL on a CPU,
    where the forward pass is the cost and PIL in worker processes keeps up with it."""
    from dist_syndr import runtime

    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if decoder == "auto":
        return "dali" if device_type == "cuda" and runtime.dali_mode("auto") == "gpu" else "pil"
    if decoder == "dali" and runtime.dali_mode("auto") == "off":
        raise ValueError("decoder=dali but nvidia-dali is not installed")
    return decoder


def dali_orientation(data: bytes, min_side: int, max_pixels: int) -> int | None:
    """The EXIF orientation to apply to what DALI decodes of ``data``, or None when DALI does not take the file
    (not plain, outside the size limits, or a PNG whose orientation only decoding would tell)."""
    try:
        header = read_header(data, max_pixels)
    except ImageError:
        return None
    if not header.is_plain or min(header.width, header.height) < min_side:
        return None
    if header.format == "PNG":
        return None if header.has_png_metadata else 1
    try:
        return jpeg_orientation(data, max_pixels)
    except ImageError:
        return None


def is_complete_simple_image(data: bytes, min_side: int, max_pixels: int) -> bool:
    """True for the files DALI decodes here (see :func:`dali_orientation`)."""
    return dali_orientation(data, min_side, max_pixels) is not None


class DaliDecoder:
    """A DALI graph fed one batch of encoded files at a time: ``decode(list of bytes) -> list of RGB arrays``."""

    def __init__(self, mode: str, *, batch_size: int = 32, num_threads: int = 2, device_id: int = 0):
        self.mode, self.batch_size = mode, batch_size
        self._build = lambda: _pipeline(mode, batch_size, num_threads, device_id)
        self._pipe = self._build()

    def decode(self, encoded: Sequence[bytes]) -> list[np.ndarray]:
        """Up to ``batch_size`` files; RuntimeError when DALI fails on any of them (the graph is rebuilt)."""
        try:
            self._pipe.feed_input("encoded", [np.frombuffer(data, dtype=np.uint8) for data in encoded])
            (images,) = self._pipe.run()
        except RuntimeError:
            self._pipe = self._build()  # a failed run leaves the graph unusable
            raise
        if self.mode == "gpu":
            images = images.as_cpu()
        return [np.array(images.at(i)) for i in range(len(encoded))]


def _pipeline(mode: str, batch_size: int, num_threads: int, device_id: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if mode == "gpu" else None,
        prefetch_queue_depth=1,
        exec_pipelined=False,
        exec_async=False,
    )
    def graph():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        device = "mixed" if mode == "gpu" else "cpu"
        options = {"output_type": types.RGB, "jpeg_fancy_upsampling": True}
        # As stored: orient() applies the orientation PIL reads, exactly as on the PIL path.
        return fn.decoders.image(encoded, device=device, adjust_orientation=False, **options)

    pipe = graph()
    pipe.build()
    return pipe


def decoded_files(
    paths: Sequence[Path], decoder: DaliDecoder, *, min_side: int, max_pixels: int
) -> Iterator[tuple[int, Path, Callable[[], np.ndarray]]]:
    """``(index, path, decode)`` per file, in order, a batch at a time: ``decode()`` returns what DALI decoded
    (oriented), or decodes with PIL (raising :class:`~dist_syndr.imaging.ImageError` with the reason) for files
    DALI does not take or failed on."""
    for start in range(0, len(paths), decoder.batch_size):
        batch = list(enumerate(paths[start : start + decoder.batch_size], start=start))
        encoded: dict[int, bytes | ImageError] = {}
        for index, path in batch:
            try:
                encoded[index] = Path(path).read_bytes()
            except OSError as error:
                encoded[index] = ImageError(f"unreadable file ({error.strerror or error})")
        orientations = {
            i: dali_orientation(data, min_side, max_pixels) for i, data in encoded.items() if isinstance(data, bytes)
        }
        simple = [i for i, orientation in orientations.items() if orientation is not None]
        images: dict[int, np.ndarray] = {}
        if simple:
            try:
                decoded = decoder.decode([encoded[i] for i in simple])
            except RuntimeError as error:
                log.info("DALI failed on a batch of %d files (%s); PIL decodes them one by one", len(simple), error)
            else:
                images = {i: orient(image, orientations[i]) for i, image in zip(simple, decoded, strict=True)}
        for index, path in batch:
            yield index, path, _decode_function(images.get(index), encoded[index], max_pixels)


def _decode_function(image, data, max_pixels) -> Callable[[], np.ndarray]:
    if image is not None:
        return lambda: image
    if not isinstance(data, bytes):
        error = data

        def fail() -> np.ndarray:
            raise error

        return fail
    return lambda: decode(data, max_pixels=max_pixels)

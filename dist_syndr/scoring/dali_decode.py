"""Decoding scoring inputs with DALI: "mixed" (nvJPEG, the hardware JPEG decoder) on a GPU, "cpu" without one.

DALI takes the files it decodes as PIL does: complete 8-bit JPEG and PNG files in RGB or grayscale,
no larger than the pixel limit and no smaller than the crop, EXIF orientation applied by both and
JPEG chroma upsampled the way libjpeg does by default. Every other file, and every file of a batch
DALI fails on, goes through PIL (:func:`dist_syndr.scoring.inputs.decode_bytes`), which converts the
rarer modes, resizes small images up and names the reason a file cannot be scored. So the result of a
file does not depend on the decoder beyond a JPEG's last grey levels; PNG decodes bit-exactly.

Shapes: decoded images ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from dist_syndr.scoring.inputs import ImageError, decode_bytes

log = logging.getLogger(__name__)

DALI_MODES = {"JPEG": ("RGB", "L"), "PNG": ("RGB", "L")}  # format -> the PIL modes DALI decodes alike
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


def is_complete_simple_image(data: bytes, min_side: int, max_pixels: int) -> bool:
    """True for whole (end marker present) 8-bit RGB or grayscale JPEG/PNG bytes within the size limits."""
    from PIL import Image

    if not (data.endswith(b"\xff\xd9") or data.endswith(b"IEND\xaeB`\x82")):
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            return (
                image.format in DALI_MODES
                and image.mode in DALI_MODES[image.format]
                and "transparency" not in image.info
                and min(width, height) >= min_side
                and width * height <= max_pixels
            )
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


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
        return fn.decoders.image(encoded, device=device, output_type=types.RGB, jpeg_fancy_upsampling=True)

    pipe = graph()
    pipe.build()
    return pipe


def decoded_files(
    paths: Sequence[Path], decoder: DaliDecoder, *, min_side: int, max_pixels: int
) -> Iterator[tuple[int, Path, Callable[[], np.ndarray]]]:
    """``(index, path, decode)`` per file, in order, a batch at a time: ``decode()`` returns what DALI decoded,
    or decodes with PIL (raising :class:`~dist_syndr.scoring.inputs.ImageError` with the reason) for files
    DALI does not take or failed on."""
    for start in range(0, len(paths), decoder.batch_size):
        batch = list(enumerate(paths[start : start + decoder.batch_size], start=start))
        encoded: dict[int, bytes | ImageError] = {}
        for index, path in batch:
            try:
                encoded[index] = Path(path).read_bytes()
            except OSError as error:
                encoded[index] = ImageError(f"unreadable file ({error.strerror or error})")
        simple = [
            i
            for i, _ in batch
            if isinstance(encoded[i], bytes) and is_complete_simple_image(encoded[i], min_side, max_pixels)
        ]
        images: dict[int, np.ndarray] = {}
        if simple:
            try:
                images = dict(zip(simple, decoder.decode([encoded[i] for i in simple]), strict=True))
            except RuntimeError as error:
                log.info("DALI failed on a batch of %d files (%s); PIL decodes them one by one", len(simple), error)
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
    return lambda: decode_bytes(data, max_pixels)

"""``bench.py loader``'s member-format table: bytes per image, one CPU thread's decode time and the DALI loaders'
images/s for each image format a shard set can hold, measured in the same run.

The rows are the shard sets the loader benchmark wrote and read (PNG as datasets ship
it, PNG re-encoded by the sharding step, LZ4 pixel bands), plus lossless JPEG 2000
(Pillow's OpenJPEG, reversible 5/3 wavelet), the other format DALI's ``mixed``
decoder reads on a GPU (nvJPEG2000): measured here on a sample of the same crops,
bytes and a one-thread decode only, since the sharding step does not write it. Each
JPEG 2000 file is decoded back and compared with its pixels, so a row only stands
for a lossless round trip. A GPU column is filled only where a GPU ran the loader;
nothing on it is estimated.

Shapes: pixels ``(H, W, 3)`` uint8.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dist_syndr.bench.harness import SummaryRow, markdown_table

FORMAT_NAMES = {
    "dataset": "PNG as datasets ship them (level 6, adaptive filters)",
    "sharded": "PNG written by the sharding step (libpng level 1)",
    "lz4": "LZ4 pixel bands (shard.image_format: lz4)",
}
DALI_CPU = "ours: DALI over the plan, CPU"
JPEG2000_SAMPLE = 16  # crops encoded as JPEG 2000: its encoder and decoder take about 0.1 s each per crop


def member_stats(shard_root: Path) -> tuple[float, float]:
    """Mean bytes of a set's image members and the mean milliseconds one thread takes to decode one
    (``imaging.decode``: header, pixel cap, PIL or LZ4 inflate, 8-bit RGB)."""
    from dist_syndr import imaging
    from dist_syndr.sharding.shard_set import ShardSet

    shard_set = ShardSet(shard_root)
    members = [shard_set.read_image_bytes(key) for key in shard_set.keys()]
    started = time.perf_counter()
    for data in members:
        imaging.decode(data, is_oriented=False)
    seconds = time.perf_counter() - started
    return float(np.mean([len(data) for data in members])), 1000 * seconds / len(members)


def jpeg2000_stats(pool: Path, num_images: int = JPEG2000_SAMPLE) -> tuple[float, float]:
    """Mean bytes and one-thread decode milliseconds of lossless JPEG 2000 (JP2, reversible 5/3) of the first
    ``num_images`` images in ``pool``; ValueError if one does not decode to its pixels."""
    from PIL import Image

    sizes, seconds = [], 0.0
    for path in sorted(pool.iterdir())[:num_images]:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG2000", irreversible=False)
        data = buffer.getvalue()
        started = time.perf_counter()
        with Image.open(io.BytesIO(data)) as image:
            decoded = np.asarray(image.convert("RGB"))
        seconds += time.perf_counter() - started
        if not np.array_equal(decoded, pixels):
            raise ValueError(f"{path}: lossless JPEG 2000 did not give its pixels back")
        sizes.append(len(data))
    return float(np.mean(sizes)), 1000 * seconds / len(sizes)


def format_table(
    stats: Mapping[str, tuple[float, float]], best: Mapping[str, Mapping[str, object]], *, num_jpeg2000: int
) -> str:
    """The Markdown table: one row per measured format (``stats``: encoding -> (bytes, decode ms); ``best``:
    encoding -> loader name -> its best run), bytes against the sharding step's PNG where it was measured."""
    reference = stats.get("sharded", stats.get("dataset"))
    names = FORMAT_NAMES | {
        "jpeg2000": f"lossless JPEG 2000 (Pillow/OpenJPEG, 5/3; {num_jpeg2000} of the crops, not written by the step)"
    }
    rows = []
    for encoding, (num_bytes, decode_ms) in stats.items():
        runs = best.get(encoding, {})
        gpu = next((run for name, run in runs.items() if "GPU" in name), None)
        rows.append(
            [
                names.get(encoding, encoding),
                f"{num_bytes / 1e3:.0f}",
                f"{num_bytes / reference[0]:.2f}x" if reference else "-",
                f"{decode_ms:.2f}",
                f"{runs[DALI_CPU].images_per_second:.1f}" if DALI_CPU in runs else "not a shard format",
                f"{gpu.images_per_second:.1f}" if gpu is not None else "not measured (no GPU)",
            ]
        )
    header = ["image member", "KB/image", "bytes vs PNG", "decode, 1 thread (ms)", "DALI CPU images/s"]
    return markdown_table([*header, "DALI GPU images/s"], rows)


def summary_rows(best: Mapping[str, Mapping[str, object]]) -> list[SummaryRow]:
    """DALI's CPU loader on LZ4 pixel bands against the same loader on the sharding step's PNG (same run)."""
    png = best.get("sharded", best.get("dataset", {}))
    if DALI_CPU not in best.get("lz4", {}) or DALI_CPU not in png:
        return []
    ours, baseline = best["lz4"][DALI_CPU].images_per_second, png[DALI_CPU].images_per_second
    png_name = "sharded" if "sharded" in best else "dataset"
    return [
        SummaryRow(
            "loader",
            "DALI over the plan, CPU, LZ4 pixel members",
            f"{ours:.1f} images/s",
            f"the same loader on {png_name} PNG",
            f"{baseline:.1f} images/s",
            ours / baseline,
        )
    ]

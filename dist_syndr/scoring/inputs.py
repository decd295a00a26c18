"""What to score: command-line paths expanded to image files, and any image decoded to RGB as training sees it.

A PATH is an image file, a folder (searched recursively for image suffixes), a glob
pattern (``**`` allowed), or a list file (``.txt``/``.lst``: one path per line;
``.csv``: a ``path`` column, else the first column), whose relative entries are
read against the list's folder. Files are decoded by :mod:`dist_syndr.imaging`,
as the sharding step decodes a dataset's images: EXIF orientation applied,
grayscale, palette, CMYK, alpha and 16-bit images turned into 8-bit RGB, and
images above a pixel limit refused before decoding, so a huge file cannot take
the memory of the whole job.

Shapes: decoded images ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

import csv
import glob
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from dist_syndr.imaging import ImageError, decode_file, upright_rgb

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"})
LIST_SUFFIXES = frozenset({".txt", ".lst", ".csv"})


def expand_paths(specs: Sequence[str | Path]) -> list[Path]:
    """Every image path the specs name, in order, each once; ValueError for a spec that names nothing."""
    found: dict[Path, None] = {}
    for spec in specs:
        for path in _expand_one(str(spec)):
            found.setdefault(path, None)
    return list(found)


def _expand_one(spec: str) -> Iterable[Path]:
    path = Path(spec)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if path.is_file():
        return _read_list(path) if path.suffix.lower() in LIST_SUFFIXES else [path]
    if glob.has_magic(spec):
        matches = sorted(Path(p) for p in glob.glob(spec, recursive=True))
        files = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if files:
            return files
        raise ValueError(f"{spec}: the pattern matches no image file")
    raise ValueError(f"{spec}: no such file, folder or pattern")


def _read_list(path: Path) -> list[Path]:
    """The paths a ``.txt``/``.lst`` (one per line, ``#`` comments) or ``.csv`` (``path`` column) file lists."""
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return []
        column = rows[0].index("path") if "path" in rows[0] else 0
        body = rows[1:] if "path" in rows[0] else rows
        entries = [row[column].strip() for row in body if len(row) > column and row[column].strip()]
    else:
        entries = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [Path(entry) if Path(entry).is_absolute() else path.parent / entry for entry in entries]


def as_rgb_array(item) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of a Python-API item: a path, a PIL image, an ``(H, W)``/``(H, W, 3|4)`` uint8
    array, or a ``(3, H, W)`` uint8 tensor (or float tensor in [0, 1])."""
    if isinstance(item, str | Path):
        return decode_file(Path(item))
    if hasattr(item, "mode") and hasattr(item, "convert"):  # a PIL image: upright by its EXIF orientation
        return upright_rgb(item)
    if type(item).__module__.startswith("torch"):
        import torch

        tensor = item.detach().cpu()
        if tensor.is_floating_point():
            tensor = (tensor.clamp(0, 1) * 255).round().to(torch.uint8)
        array = tensor.numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (3, 4):
            array = array.transpose(1, 2, 0)
        return as_rgb_array(np.ascontiguousarray(array))
    array = np.asarray(item)
    if array.dtype != np.uint8:
        raise ImageError(f"arrays must be uint8 (got {array.dtype}); scale floats to 0-255 first")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        return np.ascontiguousarray(np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[:, :, :3])
    raise ImageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {array.shape}")

"""Shared pieces of the dataset readers: folder scans, label tables, missing-image policy.

Every reader scans each image folder once into a name index (lower-cased file
name -> path) and looks listed images up there, so a 700k-image pool costs one
directory walk, not 700k ``stat`` calls. File names match case-insensitively
because the public sets mix cases (``I01.BMP`` beside ``i01_01_1.bmp``).

Shapes: none (records and file names only).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from dist_syndr.pools.sample import Sample
from dist_syndr.pools.scores import minmax_to_ten

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
ON_MISSING = ("error", "skip")


def require_dir(path: Path, what: str) -> Path:
    """``path`` when it is a folder; ValueError naming it and what it should hold otherwise."""
    if not path.is_dir():
        raise ValueError(f"{path}: {what} folder not found")
    return path


def require_file(path: Path, what: str) -> Path:
    """``path`` when it is a file; ValueError naming it and what it should hold otherwise."""
    if not path.is_file():
        raise ValueError(f"{path}: {what} not found")
    return path


def check_on_missing(on_missing: str) -> None:
    """ValueError unless ``on_missing`` is ``"error"`` or ``"skip"``."""
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {ON_MISSING}, got {on_missing!r}")


def is_image_name(name: str, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> bool:
    """Whether ``name`` ends in one of ``extensions`` (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in extensions


def image_index(
    folder: Path,
    *,
    recursive: bool = False,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    skip_dirs: Iterable[Path] = (),
) -> dict[str, Path]:
    """Lower-cased file name -> path of every image in ``folder`` (one scan).

    Raises ValueError when the folder is absent or, in a recursive scan, when two
    images share a name, since a listed name would then be ambiguous.
    """
    require_dir(folder, "image")
    extensions = tuple(e.lower() for e in extensions)
    skipped = {_normalised(d) for d in skip_dirs}
    index: dict[str, Path] = {}
    for directory, subdirs, files in os.walk(folder):
        # os.walk descends into whatever is left in subdirs, so pruning it here is the skip
        subdirs[:] = [d for d in subdirs if recursive and _normalised(Path(directory, d)) not in skipped]
        parent = Path(directory)
        for name in files:
            if not is_image_name(name, extensions):
                continue
            lowered = name.lower()
            if lowered in index:
                raise ValueError(f"{folder}: image name {name!r} occurs twice ({index[lowered]} and {parent / name})")
            # joining a bare name to a parsed parent is several times cheaper than Path(directory, name)
            index[lowered] = parent / name
    return index


def stem_index(index: dict[str, Path]) -> dict[str, list[Path]]:
    """Lower-cased name without extension -> images with that stem, for labels that omit extensions."""
    stems: dict[str, list[Path]] = {}
    for name, path in index.items():
        stems.setdefault(os.path.splitext(name)[0], []).append(path)
    return stems


def lookup_stem(stems: dict[str, list[Path]], stem: str, where: str) -> Path | None:
    """The one image named ``stem`` plus an extension, or None; ValueError naming ``where`` if several."""
    matches = stems.get(stem.lower(), [])
    if len(matches) > 1:
        raise ValueError(f"{where}: {stem!r} matches several images: {sorted(map(str, matches))}")
    return matches[0] if matches else None


def _normalised(path: Path) -> str:
    return os.path.normcase(os.path.abspath(path))


def report_missing(missing: list[str], *, on_missing: str, labels: Path, folder: Path) -> None:
    """Raise (``"error"``) or warn (``"skip"``) about images listed in ``labels`` but absent from ``folder``."""
    if not missing:
        return
    shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
    if on_missing == "error":
        raise ValueError(f"{labels}: {len(missing)} listed image(s) absent under {folder}: {shown}")
    log.warning("%s: skipping %d listed image(s) absent under %s: %s", labels, len(missing), folder, shown)


def warn_missing_refs(missing_refs: set[str], source: str, folder: Path) -> None:
    """Log once per reader that some references are not on disk (their samples get ``ref_path=None``)."""
    if missing_refs:
        shown = ", ".join(sorted(missing_refs)[:5])
        log.warning(
            "%s: %d reference image(s) absent under %s (ref_path left empty): %s",
            source,
            len(missing_refs),
            folder,
            shown,
        )


def finish(samples: list[Sample]) -> list[Sample]:
    """``samples`` sorted by key; ValueError naming the first key that occurs twice."""
    ordered = sorted(samples, key=lambda sample: sample.key)
    for before, after in zip(ordered, ordered[1:], strict=False):
        if before.key == after.key:
            raise ValueError(f"duplicate sample key {after.key!r} ({before.path} and {after.path})")
    return ordered


def read_csv_table(path: Path, required: Iterable[str], what: str) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of every non-empty row of a CSV with a header.

    ValueError naming the file when it is absent, lacks a required column or has no rows.
    """
    require_file(path, what)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        # restval: a short row reads as empty cells, so callers may .strip() every column
        reader = csv.DictReader(handle, restval="")
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        missing = [c for c in required if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {columns}")
        rows = [
            (reader.line_num, row) for row in reader if any(isinstance(v, str) and v.strip() for v in row.values())
        ]
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def parse_float(text: str | None, where: str) -> float:
    """``float(text)`` or ValueError naming ``where`` (file and line)."""
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {text!r} is not a number") from None


def load_mat(path: Path, variables: Iterable[str], what: str) -> dict[str, np.ndarray]:
    """The named variables of a MATLAB file; ValueError naming the file and a missing variable."""
    from scipy.io import loadmat  # scipy.io is slow to import and only the MATLAB readers need it

    require_file(path, what)
    try:
        content = loadmat(str(path))
    except Exception as error:  # scipy raises several types for a corrupt file
        raise ValueError(f"{path}: cannot read MATLAB file: {error}") from None
    missing = [v for v in variables if v not in content]
    if missing:
        raise ValueError(f"{path}: missing variable(s) {missing}")
    return {v: content[v] for v in variables}


def mat_strings(cell: np.ndarray, where: str) -> list[str]:
    """The strings of a MATLAB cell array as ``loadmat`` returns it (object array of 1-element char arrays)."""
    names = []
    for position, entry in enumerate(np.asarray(cell, dtype=object).ravel(order="F")):
        value = np.asarray(entry).ravel()
        if value.size != 1 or not isinstance(value[0], str):
            raise ValueError(f"{where}: cell entry {position + 1} is not a string ({entry!r})")
        names.append(value[0].strip())
    return names


def mat_vector(values: np.ndarray, where: str) -> np.ndarray:
    """A MATLAB row or column vector as a flat float64 array; ValueError naming ``where`` for a matrix."""
    values = np.asarray(values)
    if values.ndim > 2 or (values.ndim == 2 and min(values.shape) > 1):
        raise ValueError(f"{where}: expected a vector, got shape {values.shape}")
    try:
        return values.astype(np.float64).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"{where}: not numeric") from None


def normalise(raw: np.ndarray, labels: Path, *, is_lower_better: bool = False) -> np.ndarray:
    """:func:`minmax_to_ten` over one dataset's scores; its ValueError names the label file."""
    try:
        return minmax_to_ten(raw, is_lower_better=is_lower_better)
    except ValueError as error:
        raise ValueError(f"{labels}: {error}") from None

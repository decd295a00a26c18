"""Pools without a dataset-specific layout: a ``path,score`` CSV and a plain folder of pristine images.

CSV columns: ``path`` and ``score`` required, ``ref``, ``type`` and ``level``
optional (empty cells read as absent). Relative paths resolve against the CSV's
folder. Keys are ``<source>/<path relative to the CSV's folder, no extension>``
(``<source>/<file stem>`` for an absolute path outside it); ``source`` defaults
to the CSV's file stem, or to the folder's name for :func:`read_folder`.

Shapes: none (records only).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np

from dist_syndr.pools.layout import (
    IMAGE_EXTENSIONS,
    check_on_missing,
    finish,
    parse_float,
    read_csv_table,
    report_missing,
    require_dir,
    warn_missing_refs,
)
from dist_syndr.pools.sample import Sample
from dist_syndr.pools.scores import minmax_to_ten


class _DirectoryListings:
    """Existence checks answered from one ``listdir`` per folder, not one ``stat`` per file."""

    def __init__(self) -> None:
        self._names: dict[Path, set[str]] = {}

    def exists(self, path: Path) -> bool:
        names = self._names.get(path.parent)
        if names is None:
            names = set(os.listdir(path.parent)) if path.parent.is_dir() else set()
            self._names[path.parent] = names
        return path.name in names


def read_csv_pool(
    path: str | Path,
    *,
    is_lower_better: bool = False,
    is_normalised: bool = False,
    source: str | None = None,
    on_missing: str = "error",
) -> list[Sample]:
    """The images a ``path,score[,ref,type,level]`` CSV lists, sorted by key.

    Scores are min-max mapped to [0, 10] over every row (flipped when
    ``is_lower_better``); with ``is_normalised`` they must already lie on
    [0, 10] and are kept (only flipped, ``10 - s``, when also ``is_lower_better``).
    """
    labels = Path(path)
    check_on_missing(on_missing)
    rows = read_csv_table(labels, ["path", "score"], "CSV pool")
    source = source or labels.stem
    folder = labels.parent
    raw = np.array([parse_float(row["score"], f"{labels}:{line}") for line, row in rows])
    scores = _scores(raw, rows, labels, is_lower_better=is_lower_better, is_normalised=is_normalised)
    listings = _DirectoryListings()
    samples, missing, missing_refs = [], [], set()
    for (line, row), score, raw_score in zip(rows, scores, raw, strict=True):
        where = f"{labels}:{line}"
        image = _resolve(row["path"], folder, where)
        if not listings.exists(image):
            missing.append(row["path"].strip())
            continue
        ref_key, ref_path = _reference(row.get("ref"), folder, source, where, listings, missing_refs)
        samples.append(
            Sample(
                key=f"{source}/{_key_name(image, folder)}",
                path=image,
                score=float(score),
                ref=ref_key,
                ref_path=ref_path,
                distortion_type=_optional_int(row.get("type"), f"{where} (type)"),
                level=_optional_int(row.get("level"), f"{where} (level)"),
                origin="original",
                source=source,
                raw_score=float(raw_score),
            )
        )
    report_missing(missing, on_missing=on_missing, labels=labels, folder=folder)
    warn_missing_refs(missing_refs, source, folder)
    return finish(samples)


def read_folder(
    root: str | Path,
    *,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    source: str | None = None,
) -> list[Sample]:
    """Every image under ``root`` (recursive) as an unlabelled ``origin="reference"`` sample, sorted by key.

    Keys are ``<source>/<relative path without extension>``; a pristine image is
    its own reference, so ``ref`` and ``ref_path`` point at the sample itself.
    """
    root = require_dir(Path(root), "image")
    source = source or root.name
    extensions = tuple(e.lower() for e in extensions)
    samples = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() not in extensions:
                continue
            image = Path(directory, name)
            key = f"{source}/{_key_name(image, root)}"
            samples.append(Sample(key=key, path=image, ref=key, ref_path=image, origin="reference", source=source))
    if not samples:
        raise ValueError(f"{root}: no images with extensions {extensions}")
    return finish(samples)


def _scores(raw: np.ndarray, rows, labels: Path, *, is_lower_better: bool, is_normalised: bool) -> np.ndarray:
    if not is_normalised:
        return minmax_to_ten(raw, is_lower_better=is_lower_better)
    outside = np.flatnonzero(~((raw >= 0.0) & (raw <= 10.0)))
    if outside.size:
        line = rows[outside[0]][0]
        raise ValueError(f"{labels}:{line}: score {raw[outside[0]]} lies outside [0, 10] but is_normalised=True")
    return 10.0 - raw if is_lower_better else raw


def _resolve(text: str | None, folder: Path, where: str) -> Path:
    text = (text or "").strip()
    if not text:
        raise ValueError(f"{where}: empty path")
    path = Path(text)
    return path if path.is_absolute() else folder / path


def _key_name(image: Path, folder: Path) -> str:
    try:
        relative = image.relative_to(folder)
    except ValueError:
        return image.stem
    name = PurePosixPath(*relative.parts)
    return str(name.with_suffix("")) if name.suffix else str(name)


def _reference(text, folder: Path, source: str, where: str, listings: _DirectoryListings, missing_refs: set[str]):
    if not (text or "").strip():
        return None, None
    ref_path = _resolve(text, folder, where)
    if listings.exists(ref_path):
        return f"{source}/{_key_name(ref_path, folder)}", ref_path
    missing_refs.add(text.strip())
    return f"{source}/{_key_name(ref_path, folder)}", None


def _optional_int(text: str | None, where: str) -> int | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer():
        raise ValueError(f"{where}: {text!r} is not an integer")
    return int(value)

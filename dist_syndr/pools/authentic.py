"""Authentic-distortion test sets: LIVE Challenge, KonIQ-10k and BID (docs/METHOD.md section 7).

Each image is its own content, so samples carry a score but no reference,
distortion type or level. Scores are min-max mapped to [0, 10] over every
labelled image of the set (all three are higher-is-better).

- LIVE Challenge: ``Data/AllImages_release.mat`` (cell array of names) and
  ``Data/AllMOS_release.mat`` (MOS row vector); the first 7 entries are the
  training images in ``Images/trainingImages/`` and are skipped, the other 1,162
  (0-based 7..1168) lie in ``Images/``.
- KonIQ-10k: ``koniq10k_scores_and_distributions.csv`` (``image_name`` and
  ``MOS`` used), images in ``512x384/``.
- BID: ``DatabaseGrades.xlsx`` (``Image Number``, ``Average Subjective Grade``)
  and ``DatabaseImage%04d.JPG`` anywhere under the root (releases differ on the
  sub-folder).

Shapes: none (records only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dist_syndr.pools.layout import (
    check_on_missing,
    finish,
    image_index,
    load_mat,
    mat_strings,
    mat_vector,
    normalise,
    parse_float,
    read_csv_table,
    report_missing,
    require_file,
)
from dist_syndr.pools.sample import Sample

LIVEC_NUM_TRAINING_ENTRIES = 7
KONIQ_LABELS = "koniq10k_scores_and_distributions.csv"
BID_GRADES = "DatabaseGrades.xlsx"
_BID_COLUMNS = ("Image Number", "Average Subjective Grade")


def read_livec(root: str | Path, *, on_missing: str = "error") -> list[Sample]:
    """The 1,162 LIVE Challenge test images with scores, sorted by key."""
    root = Path(root)
    check_on_missing(on_missing)
    names_file, mos_file = root / "Data" / "AllImages_release.mat", root / "Data" / "AllMOS_release.mat"
    names_cell = load_mat(names_file, ["AllImages_release"], "LIVE Challenge names")["AllImages_release"]
    names = mat_strings(names_cell, str(names_file))
    mos = mat_vector(load_mat(mos_file, ["AllMOS_release"], "LIVE Challenge MOS")["AllMOS_release"], str(mos_file))
    if len(names) != mos.size:
        raise ValueError(f"{names_file} lists {len(names)} images but {mos_file} holds {mos.size} scores")
    if len(names) <= LIVEC_NUM_TRAINING_ENTRIES:
        raise ValueError(
            f"{names_file}: {len(names)} entries, expected the {LIVEC_NUM_TRAINING_ENTRIES} training ones and more"
        )
    names, mos = names[LIVEC_NUM_TRAINING_ENTRIES:], mos[LIVEC_NUM_TRAINING_ENTRIES:]
    scores = normalise(mos, mos_file)
    named = list(zip(names, scores, mos, strict=True))
    return _authentic_samples(named, "livec", root / "Images", names_file, on_missing)


def read_koniq10k(root: str | Path, *, image_folder: str = "512x384", on_missing: str = "error") -> list[Sample]:
    """KonIQ-10k images with their MOS on [0, 10], sorted by key."""
    root = Path(root)
    check_on_missing(on_missing)
    labels = root / KONIQ_LABELS
    rows = read_csv_table(labels, ["image_name", "MOS"], "KonIQ-10k score table")
    mos = np.array([parse_float(row["MOS"], f"{labels}:{line}") for line, row in rows])
    names = [row["image_name"].strip() for _, row in rows]
    return _authentic_samples(
        list(zip(names, normalise(mos, labels), mos, strict=True)), "koniq10k", root / image_folder, labels, on_missing
    )


def read_bid(root: str | Path, *, on_missing: str = "error") -> list[Sample]:
    """BID images with their average grade on [0, 10], sorted by key."""
    root = Path(root)
    check_on_missing(on_missing)
    grades_file = root / BID_GRADES
    grades = _read_bid_grades(grades_file)
    raw = np.array([grade for _, grade in grades])
    named = [
        (f"DatabaseImage{number:04d}.JPG", score, grade)
        for (number, grade), score in zip(grades, normalise(raw, grades_file), strict=True)
    ]
    return _authentic_samples(named, "bid", root, grades_file, on_missing, recursive=True)


def _read_bid_grades(path: Path) -> list[tuple[int, float]]:
    """``(image number, grade)`` per data row of ``DatabaseGrades.xlsx``."""
    from openpyxl import load_workbook  # only BID needs it; keep it off the import path of the rest

    require_file(path, "BID grade workbook")
    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as error:  # openpyxl raises zipfile, KeyError and its own types for a bad file
        raise ValueError(f"{path}: cannot read workbook: {error}") from None
    try:
        rows = workbook.active.iter_rows(values_only=True)
        header = [str(cell).strip() if cell is not None else "" for cell in next(rows, ())]
        missing = [c for c in _BID_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {header}")
        number_at, grade_at = (header.index(c) for c in _BID_COLUMNS)
        grades = []
        for row_number, row in enumerate(rows, start=2):
            if all(cell is None for cell in row):
                continue
            where = f"{path} row {row_number}"
            number = parse_float(_cell(row, number_at), f"{where} ({_BID_COLUMNS[0]})")
            if not number.is_integer():
                raise ValueError(f"{where}: image number {number} is not an integer")
            grades.append((int(number), parse_float(_cell(row, grade_at), f"{where} ({_BID_COLUMNS[1]})")))
    finally:
        workbook.close()
    if not grades:
        raise ValueError(f"{path}: no rows")
    return grades


def _cell(row: tuple, column: int):
    # read-only worksheets trim trailing empty cells, so a short row means an empty cell
    return row[column] if column < len(row) else None


def _authentic_samples(
    named_scores: list[tuple[str, float, float]],
    source: str,
    folder: Path,
    labels: Path,
    on_missing: str,
    *,
    recursive: bool = False,
) -> list[Sample]:
    """One sample per ``(file name, score, raw score)`` found in ``folder``; absent ones follow ``on_missing``."""
    images = image_index(folder, recursive=recursive)
    samples, missing = [], []
    for name, score, raw_score in named_scores:
        path = images.get(name.lower())
        if path is None:
            missing.append(name)
            continue
        key = f"{source}/{Path(name).stem}"
        samples.append(
            Sample(
                key=key, path=path, score=float(score), origin="original", source=source, raw_score=float(raw_score)
            )
        )
    report_missing(missing, on_missing=on_missing, labels=labels, folder=folder)
    return finish(samples)

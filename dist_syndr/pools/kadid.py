"""KADID-10k: ``dmos.csv`` (``dist_img,ref_img,dmos,var``), the per-reference label table and the pool reader.

Distorted images are named ``I01_TT_LL.png`` (reference, distortion type 1-25,
level 1-5); DMOS is higher-is-better and mapped to [0, 10] once over the whole
file (docs/METHOD.md section 2). On disk: ``images/`` holds the distorted images and
usually the references ``I01.png`` … ``I81.png``, which may instead sit in
``ref_imgs/``.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dist_syndr.config import NUM_DISTORTION_TYPES, NUM_LEVELS, label_column
from dist_syndr.pools.layout import check_on_missing, finish, image_index, report_missing, warn_missing_refs
from dist_syndr.pools.sample import Sample
from dist_syndr.pools.scores import minmax_to_ten

_DISTORTED_NAME = re.compile(r"^(?P<stem>.+)_(?P<type>\d{2})_(?P<level>\d{2})\.\w+$")
_COLUMNS = ("dist_img", "ref_img", "dmos")

NUM_KADID_REFS = 81
KADID_EXCLUDED_TRAINING_REFS = ("I06", "I07", "I18", "I19", "I53", "I58", "I70")
"""References the reference code leaves out of training (docs/METHOD.md section 6)."""


@dataclass(frozen=True)
class KadidScore:
    """One row of ``dmos.csv`` with its [0, 10] score."""

    dist_img: str
    ref_img: str
    distortion_type: int
    level: int
    dmos: float
    score: float


def parse_distorted_name(name: str, source: str = "") -> tuple[str, int, int]:
    """``("I01", 3, 5)`` from ``"I01_03_05.png"``; ValueError naming the file otherwise."""
    match = _DISTORTED_NAME.match(os.path.basename(name))
    if match is None:
        raise ValueError(f"{source or name}: {name!r} is not named <ref>_<type:02d>_<level:02d>.<ext>")
    distortion_type, level = int(match["type"]), int(match["level"])
    if not (1 <= distortion_type <= NUM_DISTORTION_TYPES and 1 <= level <= NUM_LEVELS):
        raise ValueError(f"{source or name}: {name!r} has type {distortion_type} / level {level} out of range")
    return match["stem"], distortion_type, level


def read_dmos_csv(path: str | Path) -> list[KadidScore]:
    """Every row of a KADID-10k ``dmos.csv`` with scores mapped to [0, 10]."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: KADID-10k dmos.csv not found")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected {','.join(_COLUMNS)},var")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no rows")
    try:
        dmos = np.array([float(r["dmos"]) for r in rows])
    except ValueError as error:
        raise ValueError(f"{path}: non-numeric dmos: {error}") from None
    scores = minmax_to_ten(dmos)
    records = []
    for line, (row, value, score) in enumerate(zip(rows, dmos, scores, strict=True), start=2):
        _, distortion_type, level = parse_distorted_name(row["dist_img"], f"{path}:{line}")
        records.append(KadidScore(row["dist_img"], row["ref_img"], distortion_type, level, float(value), float(score)))
    return records


def label_table(records: list[KadidScore], ref_names: list[str]) -> np.ndarray:
    """``(len(ref_names), 25 * 5)`` scores, column ``label_column(type, level)``.

    Raises ValueError naming the reference and cell when a score is missing.
    """
    table = np.full((len(ref_names), NUM_DISTORTION_TYPES * NUM_LEVELS), np.nan)
    row_of = {name: i for i, name in enumerate(ref_names)}
    for record in records:
        row = row_of.get(record.ref_img)
        if row is not None:
            table[row, label_column(record.distortion_type, record.level)] = record.score
    missing = np.argwhere(np.isnan(table))
    if missing.size:
        ref, column = missing[0]
        raise ValueError(
            f"no score for reference {ref_names[ref]} type {column // NUM_LEVELS + 1} level {column % NUM_LEVELS + 1}"
            f" ({len(missing)} missing cell(s))"
        )
    return table


def kadid_training_refs() -> list[str]:
    """The 74 training reference names ``"I01.png"`` … (all 81 but :data:`KADID_EXCLUDED_TRAINING_REFS`)."""
    names = (f"I{number:02d}" for number in range(1, NUM_KADID_REFS + 1))
    return [f"{name}.png" for name in names if name not in KADID_EXCLUDED_TRAINING_REFS]


def read_kadid10k(
    root: str | Path,
    *,
    references: list[str] | tuple[str, ...] | None = None,
    on_missing: str = "error",
) -> list[Sample]:
    """The distorted KADID-10k images under ``root`` as samples, sorted by key.

    ``references`` (``"I01.png"`` or ``"I01"``) keeps only those references'
    images; scores are normalised over the whole ``dmos.csv`` either way. An image
    listed in ``dmos.csv`` but absent from ``images/`` is an error, or skipped with
    a warning when ``on_missing="skip"``.
    """
    root = Path(root)
    check_on_missing(on_missing)
    labels = root / "dmos.csv"
    records = read_dmos_csv(labels)
    images = image_index(root / "images")
    refs = dict(images)
    if (root / "ref_imgs").is_dir():
        refs.update(image_index(root / "ref_imgs"))
    wanted = _wanted_refs(references, records, labels)
    samples, missing, missing_refs = [], [], set()
    for record in records:
        ref_stem = Path(record.ref_img).stem
        if wanted is not None and ref_stem not in wanted:
            continue
        path = images.get(record.dist_img.lower())
        if path is None:
            missing.append(record.dist_img)
            continue
        ref_path = refs.get(record.ref_img.lower())
        if ref_path is None:
            missing_refs.add(record.ref_img)
        samples.append(
            Sample(
                key=f"kadid10k/{Path(record.dist_img).stem}",
                path=path,
                score=record.score,
                ref=f"kadid10k/{ref_stem}",
                ref_path=ref_path,
                distortion_type=record.distortion_type,
                level=record.level,
                origin="original",
                source="kadid10k",
                raw_score=record.dmos,
            )
        )
    report_missing(missing, on_missing=on_missing, labels=labels, folder=root / "images")
    warn_missing_refs(missing_refs, "kadid10k", root / "images")
    return finish(samples)


def _wanted_refs(references, records: list[KadidScore], labels: Path) -> set[str] | None:
    if references is None:
        return None
    wanted = {Path(name).stem for name in references}
    unknown = wanted - {Path(record.ref_img).stem for record in records}
    if unknown:
        raise ValueError(f"{labels}: reference(s) {sorted(unknown)} not listed")
    return wanted

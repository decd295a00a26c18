"""Synthetic-distortion test sets: PIPAL, TID2013, LIVE and CSIQ (docs/METHOD.md section 7).

Distortion types and levels keep each set's own numbering (they are not KADID
ids): PIPAL ``A0001_TT_SS`` gives the distortion family ``TT`` (0-6) as the type
and the sub-type ``SS`` as the level; TID2013 ``i01_TT_L`` its type 1-24 and
level 1-5; LIVE the folder's position 1-5 (jp2k, jpeg, wn, gblur, fastfading)
and no level; CSIQ the type of ``<ref>.<TYPE>.<level>`` as numbered in
:data:`CSIQ_TYPES` and the level 1-5. Scores are min-max mapped to [0, 10] over
every entry of the label file (LIVE: all 982 entries of ``dmos_new``, reference
copies included, as the reference code does), flipped for LIVE and CSIQ DMOS.

Shapes: none (records only).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dist_syndr.pools.layout import (
    check_on_missing,
    finish,
    image_index,
    is_image_name,
    load_mat,
    lookup_stem,
    mat_strings,
    mat_vector,
    normalise,
    parse_float,
    read_csv_table,
    report_missing,
    require_dir,
    stem_index,
    warn_missing_refs,
)
from dist_syndr.pools.sample import Sample

LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
"""LIVE's distortion folders in ``dmos_realigned.mat`` order, with their image counts."""
CSIQ_TYPES = {"awgn": 1, "jpeg": 2, "jpeg2000": 3, "fnoise": 4, "blur": 5, "contrast": 6}
"""CSIQ's own type order (its DMOS table's ``dst_idx``), keyed by the lower-cased name part or folder."""

_PIPAL_NAME = re.compile(r"^(?P<ref>[^_]+)_(?P<type>\d+)_(?P<level>\d+)\.\w+$")
_TID_NAME = re.compile(r"^i(?P<ref>\d+)_(?P<type>\d+)_(?P<level>\d+)\.\w+$", re.IGNORECASE)


def read_pipal(root: str | Path, *, on_missing: str = "error") -> list[Sample]:
    """PIPAL's training images (``train/``) with their ELO-like scores on [0, 10], sorted by key."""
    train = Path(root) / "train"
    check_on_missing(on_missing)
    label_dir = require_dir(train / "Train_Label", "PIPAL label")
    entries = [entry for label_file in sorted(label_dir.glob("*.txt")) for entry in _pipal_label_lines(label_file)]
    if not entries:
        raise ValueError(f"{label_dir}: no name,score lines in any .txt file")
    scores = normalise(np.array([raw for _, _, raw in entries]), label_dir)
    named = []
    for (name, where, raw), score in zip(entries, scores, strict=True):
        match = _PIPAL_NAME.match(name)
        if match is None:
            raise ValueError(f"{where}: {name!r} is not named <ref>_<family>_<subtype>.<ext>")
        named.append((name, score, match["ref"], int(match["type"]), int(match["level"]), raw))
    return _reference_samples(named, "pipal", train / "Distortion", train / "Train_Ref", label_dir, on_missing)


def _pipal_label_lines(label_file: Path) -> list[tuple[str, str, float]]:
    entries = []
    for number, line in enumerate(label_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label_file}:{number}"
        parts = line.split(",")
        if len(parts) != 2:
            raise ValueError(f"{where}: expected 'name,score', got {line.strip()!r}")
        entries.append((parts[0].strip(), where, parse_float(parts[1].strip(), where)))
    return entries


def read_tid2013(root: str | Path, *, on_missing: str = "error") -> list[Sample]:
    """TID2013's distorted images with their MOS on [0, 10], sorted by key."""
    root = Path(root)
    check_on_missing(on_missing)
    labels = root / "mos_with_names.txt"
    if not labels.is_file():
        raise ValueError(f"{labels}: TID2013 score list not found")
    entries = []
    for number, line in enumerate(labels.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{labels}:{number}"
        parts = line.split()
        match = _TID_NAME.match(parts[-1]) if len(parts) == 2 else None
        if match is None:
            raise ValueError(f"{where}: expected 'score i<ref>_<type>_<level>.bmp', got {line.strip()!r}")
        entries.append((parts[1], parse_float(parts[0], where), match))
    scores = normalise(np.array([raw for _, raw, _ in entries]), labels)
    named = [
        (name, score, f"I{m['ref']}", int(m["type"]), int(m["level"]), raw)
        for (name, raw, m), score in zip(entries, scores, strict=True)
    ]
    return _reference_samples(
        named, "tid2013", root / "distorted_images", root / "reference_images", labels, on_missing
    )


def _reference_samples(
    named, source: str, folder: Path, ref_folder: Path, labels: Path, on_missing: str
) -> list[Sample]:
    """Samples of ``(name, score, ref stem, type, level, raw score)`` entries whose image is in ``folder``."""
    images = image_index(folder)
    refs = stem_index(image_index(ref_folder))
    samples, missing, missing_refs = [], [], set()
    for name, score, ref, distortion_type, level, raw_score in named:
        path = images.get(name.lower())
        if path is None:
            missing.append(name)
            continue
        ref_path = lookup_stem(refs, ref, str(ref_folder))
        if ref_path is None:
            missing_refs.add(ref)
        samples.append(
            Sample(
                key=f"{source}/{Path(name).stem}",
                path=path,
                score=float(score),
                ref=f"{source}/{ref}",
                ref_path=ref_path,
                distortion_type=distortion_type,
                level=level,
                origin="original",
                source=source,
                raw_score=float(raw_score),
            )
        )
    report_missing(missing, on_missing=on_missing, labels=labels, folder=folder)
    warn_missing_refs(missing_refs, source, ref_folder)
    return finish(samples)


def read_live(root: str | Path, *, folders=LIVE_FOLDERS, on_missing: str = "error") -> list[Sample]:
    """LIVE's distorted images (reference copies skipped) with flipped DMOS on [0, 10], sorted by key.

    ``folders`` lists ``(folder, image count)`` in the order of the MATLAB files;
    keys are ``live/<folder>/img<k>`` since every folder numbers from ``img1``.
    """
    root = Path(root)
    check_on_missing(on_missing)
    dmos_file, names_file = root / "dmos_realigned.mat", root / "refnames_all.mat"
    info = load_mat(dmos_file, ["dmos_new", "orgs"], "LIVE DMOS")
    dmos = mat_vector(info["dmos_new"], f"{dmos_file} (dmos_new)")
    is_reference_copy = mat_vector(info["orgs"], f"{dmos_file} (orgs)").astype(bool)
    refnames = mat_strings(
        load_mat(names_file, ["refnames_all"], "LIVE reference names")["refnames_all"], str(names_file)
    )
    num_expected = sum(count for _, count in folders)
    if not dmos.size == is_reference_copy.size == len(refnames) == num_expected:
        raise ValueError(
            f"{dmos_file} / {names_file}: dmos_new has {dmos.size}, orgs {is_reference_copy.size}, refnames_all"
            f" {len(refnames)} entries; the folders {[f for f, _ in folders]} hold {num_expected} images"
        )
    scores = normalise(dmos, dmos_file, is_lower_better=True)
    refs = image_index(root / "refimgs")
    samples, missing, missing_refs, position = [], [], set(), 0
    for folder_number, (folder, count) in enumerate(folders, start=1):
        images = image_index(root / folder)
        for number in range(1, count + 1):
            entry, position = position, position + 1
            if is_reference_copy[entry]:
                continue
            path = images.get(f"img{number}.bmp")
            if path is None:
                missing.append(f"{folder}/img{number}.bmp")
                continue
            ref_name = refnames[entry]
            ref_path = refs.get(ref_name.lower())
            if ref_path is None:
                missing_refs.add(ref_name)
            samples.append(
                Sample(
                    key=f"live/{folder}/img{number}",
                    path=path,
                    score=float(scores[entry]),
                    raw_score=float(dmos[entry]),
                    ref=f"live/{Path(ref_name).stem}",
                    ref_path=ref_path,
                    distortion_type=folder_number,
                    level=None,
                    origin="original",
                    source="live",
                )
            )
    report_missing(missing, on_missing=on_missing, labels=dmos_file, folder=root)
    warn_missing_refs(missing_refs, "live", root / "refimgs")
    return finish(samples)


def read_csiq(root: str | Path, *, labels: str | Path | None = None, on_missing: str = "error") -> list[Sample]:
    """CSIQ's distorted images with flipped DMOS on [0, 10], sorted by key.

    ``labels`` is the ``dist_img,ref_img,dmos`` CSV (relative to ``root``); by
    default the only ``*.csv`` in ``root``. Names may omit the extension.
    Distorted images are found by one recursive scan of ``root`` outside
    ``src_imgs/``.
    """
    root = Path(root)
    check_on_missing(on_missing)
    labels_file = _csiq_labels(root, labels)
    rows = read_csv_table(labels_file, ["dist_img", "ref_img", "dmos"], "CSIQ DMOS table")
    dmos = np.array([parse_float(row["dmos"], f"{labels_file}:{line}") for line, row in rows])
    scores = normalise(dmos, labels_file, is_lower_better=True)
    distorted = image_index(root, recursive=True, skip_dirs=[root / "src_imgs"])
    distorted_stems, refs = stem_index(distorted), stem_index(image_index(root / "src_imgs"))
    samples, missing, missing_refs = [], [], set()
    for (line, row), score, raw_score in zip(rows, scores, dmos, strict=True):
        where = f"{labels_file}:{line}"
        path = _find_image(row["dist_img"].strip(), distorted, distorted_stems, where)
        if path is None:
            missing.append(row["dist_img"].strip())
            continue
        ref = _without_image_extension(row["ref_img"].strip())
        ref_path = lookup_stem(refs, ref, where)
        if ref_path is None:
            missing_refs.add(ref)
        distortion_type, level = _csiq_type_level(path)
        samples.append(
            Sample(
                key=f"csiq/{path.stem}",
                path=path,
                score=float(score),
                ref=f"csiq/{ref}",
                ref_path=ref_path,
                distortion_type=distortion_type,
                level=level,
                origin="original",
                source="csiq",
                raw_score=float(raw_score),
            )
        )
    report_missing(missing, on_missing=on_missing, labels=labels_file, folder=root)
    warn_missing_refs(missing_refs, "csiq", root / "src_imgs")
    return finish(samples)


def _csiq_labels(root: Path, labels: str | Path | None) -> Path:
    if labels is not None:
        return root / labels
    found = sorted(require_dir(root, "CSIQ").glob("*.csv"))
    if len(found) != 1:
        raise ValueError(
            f"{root}: expected exactly one DMOS CSV (dist_img,ref_img,dmos),"
            f" found {[p.name for p in found]}; pass labels="
        )
    return found[0]


def _find_image(name: str, index: dict[str, Path], stems: dict[str, list[Path]], where: str) -> Path | None:
    if is_image_name(name):
        return index.get(name.lower())
    return lookup_stem(stems, name, where)


def _without_image_extension(name: str) -> str:
    return Path(name).stem if is_image_name(name) else name


def _csiq_type_level(path: Path) -> tuple[int | None, int | None]:
    """Type and level from ``<ref>.<TYPE>.<level>``; the type folder's name when the file is named otherwise."""
    parts = path.stem.split(".")
    if len(parts) >= 3 and parts[-2].lower() in CSIQ_TYPES and parts[-1].isdigit():
        return CSIQ_TYPES[parts[-2].lower()], int(parts[-1])
    return CSIQ_TYPES.get(path.parent.name.lower()), None

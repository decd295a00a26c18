"""Unlabelled synthetic pools: DDCUp's candidate contents (kadid_add81) and KADIS-700k.

Both follow KADID's generator naming: a pristine ``<stem>.png`` in ``ref_imgs/``
and its distorted versions ``<stem>_TT_LL.bmp`` (KADID type 1-25, level 1-5) in
``dist_imgs/``. Types and levels come from the file names, so a pool is read
with one scan of each folder.

KADIS-700k's ``kadis700k_ref_imgs.csv`` (public release: ``ref_im`` then the
distortion type drawn for that reference, ``dist_type_1`` …) is used only for
the reference list: ``ref_im`` names the 140,000 references; a listed reference
without any distorted image on disk counts as missing, distorted images of an
unlisted reference are skipped with a warning. The MATLAB generator writes five
levels of one type per reference, but nothing here depends on that.

Shapes: none (records only).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dist_syndr.pools.generic import read_folder
from dist_syndr.pools.kadid import parse_distorted_name
from dist_syndr.pools.layout import (
    check_on_missing,
    finish,
    image_index,
    read_csv_table,
    report_missing,
    warn_missing_refs,
)
from dist_syndr.pools.sample import Sample

log = logging.getLogger(__name__)

KADIS_REF_LIST = "kadis700k_ref_imgs.csv"


def _add81_folder(root: Path) -> Path:
    # accept both the folder holding kadid_add81/ and kadid_add81/ itself
    nested = root / "kadid_add81"
    return nested if nested.is_dir() else root


def read_reference_images(root: str | Path) -> list[Sample]:
    """kadid_add81's pristine candidate contents ``ref_imgs/*.png`` as ``origin="reference"`` samples."""
    return read_folder(_add81_folder(Path(root)) / "ref_imgs", source="kadid_add81")


def read_kadid_add81(root: str | Path) -> list[Sample]:
    """kadid_add81's distorted images (no scores), each with its reference, sorted by key."""
    return _distorted_samples(_add81_folder(Path(root)), "kadid_add81")


def read_kadis700k(root: str | Path, *, on_missing: str = "error") -> list[Sample]:
    """KADIS-700k's distorted images (no scores), each with its reference, sorted by key.

    References come from ``kadis700k_ref_imgs.csv`` (column ``ref_im``); see the
    module docstring for how listed and on-disk images are reconciled.
    """
    root = Path(root)
    check_on_missing(on_missing)
    ref_list = root / KADIS_REF_LIST
    rows = read_csv_table(ref_list, ["ref_im"], "KADIS-700k reference list")
    listed = {Path(row["ref_im"].strip()).stem for _, row in rows}
    samples = _distorted_samples(root, "kadis700k", listed=listed)
    with_images = {sample.ref.split("/", 1)[1] for sample in samples}
    missing = sorted(f"{stem}_*" for stem in listed - with_images)
    report_missing(missing, on_missing=on_missing, labels=ref_list, folder=root / "dist_imgs")
    return samples


def _distorted_samples(folder: Path, source: str, listed: set[str] | None = None) -> list[Sample]:
    """Samples of the ``dist_imgs/<stem>_TT_LL`` images under ``folder``; with ``listed``, only listed stems."""
    distorted = image_index(folder / "dist_imgs")
    ref_folder = folder / "ref_imgs"
    ref_by_stem = {os.path.splitext(name)[0]: path for name, path in image_index(ref_folder).items()}
    where = str(folder / "dist_imgs")
    samples, missing_refs, num_unlisted = [], set(), 0
    for path in distorted.values():
        name = path.name  # the lower-cased index key would lose the file's own spelling
        stem, distortion_type, level = parse_distorted_name(name, where)
        if listed is not None and stem not in listed:
            num_unlisted += 1
            continue
        ref_path = ref_by_stem.get(stem.lower())
        if ref_path is None:
            missing_refs.add(stem)
        samples.append(
            Sample(
                key=f"{source}/{os.path.splitext(name)[0]}",
                path=path,
                ref=f"{source}/{stem}",
                ref_path=ref_path,
                distortion_type=distortion_type,
                level=level,
                origin="original",
                source=source,
            )
        )
    if num_unlisted:
        log.warning("%s: skipped %d distorted image(s) whose reference is not listed", source, num_unlisted)
    warn_missing_refs(missing_refs, source, ref_folder)
    return finish(samples)

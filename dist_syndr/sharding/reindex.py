"""Bringing a set written by older code up to date in place (``launchers/shard.py --reindex DIR``).

Sets written before member checksums get them (xxh3-64 of each member's bytes),
sets written before pixel digests get them (of each image as the loaders read
it), and the index is rewritten in format 2, atomically. The loaders read an
older set as it was written, with one warning recommending this step.

Shapes: ``N`` samples.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

from tqdm.auto import tqdm

from dist_syndr import files, imaging
from dist_syndr.sharding.index_columns import CHECKSUM_FIELD, PIXEL_DIGEST_FIELD
from dist_syndr.sharding.shard_set import FORMAT_VERSION, ShardSet, member_checksum, write_index
from dist_syndr.sharding.writer import shard_name, sidecar_path, writing

log = logging.getLogger(__name__)


class Reindexed(NamedTuple):
    """What :func:`reindex` did."""

    is_rewritten: bool
    num_checksums: int  # samples given member checksums
    num_digests: int  # samples given pixel digests


def reindex(out_dir: Path) -> Reindexed:
    """Bring an older set up to date in place: add member checksums and pixel digests where the index has none
    and rewrite the index in format 2. Every shard's size and sha256 are checked against the index first; the
    new index replaces the old atomically. A digest is of the pixels as the loaders read the member (stored
    orientation: EXIF tags the set was written with stay unapplied, with a warning; reshard to store them
    upright). The rewrite holds the set's lock (:func:`dist_syndr.sharding.writer.writing`); an up-to-date set
    is only read."""
    if _is_current(ShardSet(out_dir)):  # nothing to write: no lock either (the set may be read-only)
        return Reindexed(False, 0, 0)
    with writing(out_dir):
        return _reindex(out_dir)


def _is_current(shard_set: ShardSet) -> bool:
    return (
        shard_set.format_version == FORMAT_VERSION and shard_set.has_member_checksums and shard_set.has_pixel_digests
    )


def _reindex(out_dir: Path) -> Reindexed:
    shard_set = ShardSet(out_dir)  # read again under the lock
    if _is_current(shard_set):
        return Reindexed(False, 0, 0)
    for info in shard_set.shards.values():
        path = out_dir / info.name
        if not path.is_file() or path.stat().st_size != info.bytes or files.sha256_file(path) != info.sha256:
            raise ValueError(f"{path}: missing or changed since it was indexed (sha256 mismatch); reshard it first")
    records, num_checksums, num_digests, sideways, unreadable = [], 0, 0, [], []
    progress = tqdm(shard_set.records(), total=len(shard_set), desc="reindexing", disable=len(shard_set) < 1000)
    for record in progress:
        if CHECKSUM_FIELD not in record:
            record[CHECKSUM_FIELD] = _member_checksums(out_dir / record["shard"], record["members"])
            num_checksums += 1
        if PIXEL_DIGEST_FIELD not in record:
            try:
                decoded = imaging.decode_image(shard_set.read_image_bytes(record["key"]), is_oriented=False)
            except ValueError as error:  # left without a digest: the loaders key it by its bytes, as before
                unreadable.append(f"{record['key']} ({error})")
            else:
                record[PIXEL_DIGEST_FIELD] = imaging.pixel_digest(decoded.pixels)
                num_digests += 1
                if decoded.orientation in imaging.TRANSPOSING_ORIENTATIONS:
                    sideways.append(record["key"])
        records.append(record)
    _warn_reindexed(out_dir, sideways, unreadable)
    _update_sidecars(out_dir, list(shard_set.shards), {record["key"]: record for record in records})
    shards = [
        {"name": i.name, "num_samples": i.num_samples, "bytes": i.bytes, "sha256": i.sha256}
        for i in shard_set.shards.values()
    ]
    path = write_index(out_dir, config=shard_set.config, shards=shards, records=records, skipped=shard_set.skipped)
    log.info(
        "%s: index rewritten in format %d; member checksums added for %d samples, pixel digests for %d",
        path,
        FORMAT_VERSION,
        num_checksums,
        num_digests,
    )
    return Reindexed(True, num_checksums, num_digests)


def _warn_reindexed(out_dir: Path, sideways: list[str], unreadable: list[str]) -> None:
    if sideways:
        log.warning(
            "%s: %d sample(s) (e.g. %s) carry an EXIF orientation the loaders do not apply, while score.py does; "
            "reshard the set to store them upright",
            out_dir,
            len(sideways),
            sideways[0],
        )
    if unreadable:
        message = "%s: %d image(s) do not decode and got no pixel digest, e.g. %s"
        log.warning(message, out_dir, len(unreadable), unreadable[0])


def _update_sidecars(out_dir: Path, shard_names: list[str], records: dict[str, dict]) -> None:
    """The per-shard sidecars a rerun reads get the checksums and digests too."""
    for number, name in enumerate(shard_names):
        sidecar = sidecar_path(out_dir, number)
        if sidecar.is_file() and name == shard_name(number):
            side = json.loads(sidecar.read_text())
            for record in side["samples"]:
                for field_name in (CHECKSUM_FIELD, PIXEL_DIGEST_FIELD):
                    if field_name in records.get(record["key"], {}):
                        record.setdefault(field_name, records[record["key"]][field_name])
            files.write_text(sidecar, json.dumps(side, sort_keys=True))


def _member_checksums(path: Path, members: dict[str, list[int]]) -> dict[str, int]:
    with path.open("rb") as handle:
        checksums = {}
        for extension, (offset, size) in members.items():
            handle.seek(offset)
            checksums[extension] = member_checksum(handle.read(size))
    return checksums

"""Reading a written shard set: ``index.json``, member bytes by offset, verification.

A shard set (see ``shards/README.md``) is a folder of WebDataset tars plus an index
that records, for every sample, the shard and the byte offset, size and checksum
(xxh3-64) of each member: ``index.json`` holds the header and
``index-<xxh3-64>.columns`` the per-sample columns (:mod:`index_columns`), so a
million-sample set opens in well under a second. Readers seek straight to a member
instead of scanning a tar, check its checksum before anything decodes it, refuse
unsafe member names (``..`` or absolute paths), and check whole-shard sha256 when
asked to.

Shapes: ``N`` samples; records are built per sample on access.
"""

from __future__ import annotations

import json
import math
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash
from tqdm.auto import tqdm

from dist_syndr import files
from dist_syndr.files import sha256_file
from dist_syndr.imaging.decode import decode
from dist_syndr.imaging.digest import pixel_digest
from dist_syndr.sharding import index_columns
from dist_syndr.sharding.index_columns import (
    CHECKSUM_FIELD,
    IMAGE_EXTENSIONS,
    PIXEL_DIGEST_FIELD,
    is_safe_member_name,
    member_base,
)

INDEX_NAME = "index.json"
LOCK_NAME = ".lock"  # the writers' advisory lock (sharding.writer.writing); readers never open it
FORMAT_VERSION = 2  # 2: header + memory-mapped columns; 1: one JSON record per sample (still read)
READABLE_VERSIONS = (1, 2)


def member_checksum(data: bytes) -> int:
    """The xxh3-64 hash of a member's bytes, as ``index.json`` records it: about 30 GB/s, so checking every
    member on every read costs well under 1% of decoding it (crc32 would cost about 3%)."""
    return xxhash.xxh3_64_intdigest(data)


def checksum_error(root: Path, entry: SampleEntry, extension: str, data: bytes) -> str | None:
    """The message for a member whose bytes differ from their recorded checksum; None when they match
    (or the set records none)."""
    if entry.checksums is None or extension not in entry.checksums:
        return None
    actual = member_checksum(data)
    if actual == entry.checksums[extension]:
        return None
    return (
        f"{root / entry.shard}: sample {entry.key}: member {member_base(entry.key)}.{extension} fails its checksum "
        f"(xxh3-64 {actual:016x}, index {entry.checksums[extension]:016x}); the shard changed after writing"
    )


@dataclass(frozen=True)
class ShardInfo:
    """One tar of the set."""

    name: str
    num_samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SampleEntry:
    """One sample of the set as ``index.json`` records it."""

    key: str
    shard: str
    members: dict[str, tuple[int, int]]  # extension -> (data offset, size) within the shard
    score: float | None
    ref: str | None
    distortion_type: int | None
    level: int | None
    origin: str
    source: str
    checksums: dict[str, int] | None = None  # extension -> xxh3-64 of the bytes (None: older set)
    pixel_digest: int | None = None  # imaging.pixel_digest of the image's upright pixels (None: older set)

    @property
    def image_extension(self) -> str:
        """``png``, ``jpg`` or ``lz4``: the member holding the image."""
        for extension in IMAGE_EXTENSIONS:
            if extension in self.members:
                return extension
        raise ValueError(f"sample {self.key}: no image member among {sorted(self.members)}")


class ShardSet:
    """A shard set on disk, opened from its ``index.json`` (format 2: header plus memory-mapped columns;
    format 1, one JSON record per sample, stays readable)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        index_path = self.root / INDEX_NAME
        header = _read_header(index_path, self.root)
        self.format_version: int = header["version"]
        self.config = header.get("config", {})
        self.skipped = header.get("skipped", [])
        self.shards = _shard_infos(header, index_path)
        names = list(self.shards)
        if self.format_version == 1:
            self.columns = index_columns.from_records(header.get("samples", []), names, index_path)
        else:
            self.columns = index_columns.load(self.root, header.get("columns"), index_path)
        self.columns.check(names, [info.bytes for info in self.shards.values()], index_path)
        self.shard_names: tuple[str, ...] = tuple(names)  # by shard id

    def __len__(self) -> int:
        return len(self.columns)

    def keys(self) -> list[str]:
        """Sample keys in index order."""
        return self.columns.keys.tolist()

    def scores(self) -> np.ndarray:
        """Scores in index order (NaN where a sample has none)."""
        return np.array(self.columns.scores, dtype=np.float64)

    def is_upsampled(self) -> np.ndarray:
        """``(N,)`` bool in index order: DDCUp's pseudo-labelled samples."""
        return self.columns.is_upsampled()

    def keys_by_shard(self) -> dict[str, list[str]]:
        """Shard name -> the keys of its samples, in index order (shards without samples left out)."""
        order = np.argsort(self.columns.shard_ids, kind="stable")
        counts = np.bincount(self.columns.shard_ids, minlength=len(self.shard_names))
        keys = self.keys()
        groups, start = {}, 0
        for shard_id, count in enumerate(counts.tolist()):
            if count:
                groups[self.shard_names[shard_id]] = [keys[row] for row in order[start : start + count].tolist()]
            start += count
        return groups

    def entry(self, row: int) -> SampleEntry:
        """The sample at ``row`` (index order) as a record."""
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} outside a set of {len(self)} samples")
        columns = self.columns
        present = [
            (column, ext) for column, ext in enumerate(columns.extensions) if columns.member_sizes[row, column] >= 0
        ]
        score, ref_code = float(columns.scores[row]), int(columns.ref_codes[row])
        return SampleEntry(
            key=columns.keys[row],
            shard=self.shard_names[columns.shard_ids[row]],
            members={
                ext: (int(columns.member_offsets[row, c]), int(columns.member_sizes[row, c])) for c, ext in present
            },
            score=None if math.isnan(score) else score,
            ref=None if ref_code == index_columns.NONE_CODE else columns.refs[ref_code],
            distortion_type=_optional(columns.distortion_types[row]),
            level=_optional(columns.levels[row]),
            origin=columns.origins[int(columns.origin_codes[row])],
            source=columns.sources[int(columns.source_codes[row])],
            checksums={ext: int(columns.member_checksums[row, c]) for c, ext in present}
            if columns.has_checksums[row]
            else None,
            pixel_digest=int(columns.pixel_digests[row]) if columns.has_pixel_digests[row] else None,
        )

    @property
    def samples(self) -> Sequence[SampleEntry]:
        """Every sample as a record, in index order, built on access (a million are never all held)."""
        return _Samples(self)

    @property
    def by_key(self) -> Mapping[str, SampleEntry]:
        """Sample key -> record, looked up through the index's sorted key hashes."""
        return _ByKey(self)

    def read_member(self, key: str, extension: str) -> bytes:
        """The bytes of one member of sample ``key``, read by offset."""
        return self._read(self._entry_of(key), extension)

    def _entry_of(self, key: str) -> SampleEntry:
        row = self.columns.row_of(key)
        if row is None:
            raise ValueError(f"{self.root}: no sample with key {key!r}")
        return self.entry(row)

    def _read(self, entry: SampleEntry, extension: str) -> bytes:
        if extension not in entry.members:
            raise ValueError(f"{self.root}: sample {entry.key} has no .{extension} member")
        offset, size = entry.members[extension]
        with (self.root / entry.shard).open("rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        if len(data) != size:
            raise ValueError(f"{self.root / entry.shard}: truncated at sample {entry.key} (.{extension})")
        problem = checksum_error(self.root, entry, extension, data)
        if problem is not None:
            raise ValueError(problem)
        return data

    @property
    def has_member_checksums(self) -> bool:
        """True when the index records a checksum for every member (sets written before them do not)."""
        return bool(self.columns.has_checksums.all())

    @property
    def has_pixel_digests(self) -> bool:
        """True when the index records every sample's pixel digest (sets written before them do not)."""
        return bool(self.columns.has_pixel_digests.all())

    def read_image_bytes(self, key: str) -> bytes:
        """The encoded image of sample ``key``."""
        entry = self._entry_of(key)  # one lookup for the extension and the read
        return self._read(entry, entry.image_extension)

    def read_meta(self, key: str) -> dict:
        """The ``.json`` member of sample ``key``."""
        return json.loads(self.read_member(key, "json"))

    def records(self) -> Iterator[dict]:
        """Every sample as a plain JSON-ready record (format 1's fields), in index order."""
        for entry in self.samples:
            record = {
                "key": entry.key,
                "shard": entry.shard,
                "members": {ext: list(place) for ext, place in entry.members.items()},
                "score": entry.score,
                "ref": entry.ref,
                "type": entry.distortion_type,
                "level": entry.level,
                "origin": entry.origin,
                "source": entry.source,
            }
            if entry.checksums is not None:
                record[CHECKSUM_FIELD] = entry.checksums
            if entry.pixel_digest is not None:
                record[PIXEL_DIGEST_FIELD] = entry.pixel_digest
            yield record

    def verify(self, *, check_members: bool = True, decode_images: bool = False) -> None:
        """Check every shard's size and sha256; with ``check_members``, that each tar's members
        (names, offsets, sizes) match the index; with ``decode_images``, that every image and
        metadata member decodes and that each image's pixels give its recorded digest. Raises ValueError naming
        the shard or sample."""
        for info in self.shards.values():
            path = self.root / info.name
            if not path.is_file():
                raise ValueError(f"{path}: shard listed in the index is missing")
            if path.stat().st_size != info.bytes or sha256_file(path) != info.sha256:
                raise ValueError(f"{path}: checksum mismatch (shard corrupt or changed after writing)")
        if check_members:
            for name, keys in self.keys_by_shard().items():
                _check_tar_members(self.root / name, [self.by_key[key] for key in keys])
        if decode_images:
            for entry in tqdm(self.samples, desc="decoding", unit="img", disable=len(self) < 1000):
                where = f"sample {entry.key} in {entry.shard}"
                pixels = decode(self.read_image_bytes(entry.key), is_oriented=False, name=where)  # stored upright
                if entry.pixel_digest is not None and pixel_digest(pixels) != entry.pixel_digest:
                    raise ValueError(f"{where}: decoded pixels differ from the index's pixel digest")
                try:
                    self.read_meta(entry.key)
                except json.JSONDecodeError:
                    raise ValueError(
                        f"{self.root / entry.shard}: metadata of sample {entry.key} is not JSON"
                    ) from None


class _Samples(Sequence[SampleEntry]):
    def __init__(self, shard_set: ShardSet):
        self._set = shard_set

    def __len__(self) -> int:
        return len(self._set)

    def __getitem__(self, row):
        if isinstance(row, slice):
            return [self._set.entry(r) for r in range(*row.indices(len(self)))]
        return self._set.entry(row + len(self) if row < 0 else row)

    def __iter__(self) -> Iterator[SampleEntry]:
        return (self._set.entry(row) for row in range(len(self)))


class _ByKey(Mapping[str, SampleEntry]):
    def __init__(self, shard_set: ShardSet):
        self._set = shard_set

    def __getitem__(self, key: str) -> SampleEntry:
        row = self._set.columns.row_of(key)
        if row is None:
            raise KeyError(key)
        return self._set.entry(row)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._set.columns.row_of(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._set.keys())

    def __len__(self) -> int:
        return len(self._set)


def write_index(out_dir: Path, *, config: dict, shards: list[dict], records: list[dict], skipped: list[dict]) -> Path:
    """Write a format-2 index over finished shards: the columns file first, then ``index.json`` (so an index
    always names a complete columns file), then remove columns files of earlier indexes."""
    index_path = out_dir / INDEX_NAME
    names = [shard["name"] for shard in shards]
    columns = index_columns.from_records(records, names, index_path)
    columns.check(names, [shard["bytes"] for shard in shards], index_path)
    layout = columns.write(out_dir)
    header = {
        "version": FORMAT_VERSION,
        "config": config,
        "shards": shards,
        "skipped": skipped,
        "num_samples": len(columns),
        "columns": layout,
    }
    files.write_text(index_path, json.dumps(header, indent=1, sort_keys=True))
    for stale in index_columns.stale_columns_files(out_dir, layout["file"]):
        stale.unlink(missing_ok=True)
    return index_path


def _read_header(index_path: Path, root: Path) -> dict:
    if not index_path.is_file():
        raise ValueError(f"{root}: no {INDEX_NAME}; is this a finished shard set? (run launchers/shard.py)")
    try:
        header = json.loads(index_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{index_path}: not valid JSON ({error})") from None
    if not isinstance(header, dict) or header.get("version") not in READABLE_VERSIONS:
        version = header.get("version") if isinstance(header, dict) else None
        raise ValueError(f"{index_path}: format version {version!r}, expected one of {READABLE_VERSIONS}")
    return header


def _shard_infos(header: dict, index_path: Path) -> dict[str, ShardInfo]:
    try:
        shards = [ShardInfo(s["name"], int(s["num_samples"]), int(s["bytes"]), s["sha256"]) for s in header["shards"]]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{index_path}: malformed 'shards' list ({error})") from None
    for info in shards:
        if not is_safe_member_name(info.name) or "/" in info.name:
            raise ValueError(f"{index_path}: refusing unsafe shard name {info.name!r}")
    return {info.name: info for info in shards}


def _optional(value: np.integer) -> int | None:
    return None if int(value) == index_columns.NONE_CODE else int(value)


def scan_tar(path: Path) -> dict[str, tuple[int, int]]:
    """``{member name: (data offset, size)}`` of a tar, refusing unsafe names."""
    members = {}
    try:
        with tarfile.open(path, "r:") as archive:
            for info in archive:
                if not is_safe_member_name(info.name):
                    raise ValueError(f"{path}: refusing unsafe member name {info.name!r}")
                if info.isfile():
                    members[info.name] = (info.offset_data, info.size)
    except tarfile.TarError as error:
        raise ValueError(f"{path}: unreadable tar ({error})") from None
    return members


def _check_tar_members(path: Path, entries: list[SampleEntry]) -> None:
    members = scan_tar(path)
    for entry in entries:
        for extension, (offset, size) in entry.members.items():
            name = f"{member_base(entry.key)}.{extension}"
            if members.get(name) != (offset, size):
                raise ValueError(f"{path}: member {name} of sample {entry.key} does not match the index")

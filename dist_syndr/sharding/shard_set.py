"""Reading a written shard set: ``index.json``, member bytes by offset, verification.

A shard set (see ``shards/README.md``) is a folder of WebDataset tars plus one
``index.json`` that records, for every sample, the shard and the byte offset,
size and checksum (xxh3-64) of each member. Readers seek straight to a member instead of
scanning a tar, check its checksum before anything decodes it, refuse unsafe member
names (``..`` or absolute paths), and check whole-shard sha256 when asked to.

Shapes: none (bytes and records).
"""

from __future__ import annotations

import collections
import json
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import xxhash
from tqdm.auto import tqdm

from dist_syndr.files import sha256_file
from dist_syndr.pools import images

INDEX_NAME = "index.json"
CHECKSUM_FIELD = "xxh3_64"  # index.json: per sample, extension -> the member's checksum
FORMAT_VERSION = 1


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


def is_safe_member_name(name: str) -> bool:
    """False for absolute names, ``..`` components, empty names or backslashes."""
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


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

    @property
    def image_extension(self) -> str:
        """``png`` or ``jpg``: the member holding the image."""
        for extension in ("png", "jpg", "jpeg", "bmp"):
            if extension in self.members:
                return extension
        raise ValueError(f"sample {self.key}: no image member among {sorted(self.members)}")


class ShardSet:
    """A shard set on disk, loaded from its ``index.json``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        index_path = self.root / INDEX_NAME
        if not index_path.is_file():
            raise ValueError(f"{self.root}: no {INDEX_NAME}; is this a finished shard set? (run launchers/shard.py)")
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{index_path}: not valid JSON ({error})") from None
        if index.get("version") != FORMAT_VERSION:
            raise ValueError(f"{index_path}: format version {index.get('version')!r}, expected {FORMAT_VERSION}")
        self.config = index.get("config", {})
        self.skipped = index.get("skipped", [])
        self.shards = {
            s["name"]: ShardInfo(s["name"], s["num_samples"], s["bytes"], s["sha256"]) for s in index["shards"]
        }
        self.samples = [_entry(record, index_path) for record in index["samples"]]
        self.by_key = {entry.key: entry for entry in self.samples}
        _check_consistent(index_path, self.shards, self.samples, self.by_key)

    def __len__(self) -> int:
        return len(self.samples)

    def keys(self) -> list[str]:
        """Sample keys in index order."""
        return [entry.key for entry in self.samples]

    def scores(self) -> np.ndarray:
        """Scores in index order (NaN where a sample has none)."""
        return np.array([np.nan if e.score is None else e.score for e in self.samples], dtype=np.float64)

    def read_member(self, key: str, extension: str) -> bytes:
        """The bytes of one member of sample ``key``, read by offset."""
        entry = self.by_key.get(key)
        if entry is None:
            raise ValueError(f"{self.root}: no sample with key {key!r}")
        if extension not in entry.members:
            raise ValueError(f"{self.root}: sample {key} has no .{extension} member")
        offset, size = entry.members[extension]
        with (self.root / entry.shard).open("rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        if len(data) != size:
            raise ValueError(f"{self.root / entry.shard}: truncated at sample {key} (.{extension})")
        problem = checksum_error(self.root, entry, extension, data)
        if problem is not None:
            raise ValueError(problem)
        return data

    @property
    def has_member_checksums(self) -> bool:
        """True when ``index.json`` records a checksum for every member (sets written before them do not)."""
        return all(entry.checksums is not None for entry in self.samples)

    def read_image_bytes(self, key: str) -> bytes:
        """The encoded image of sample ``key``."""
        return self.read_member(key, self.by_key[key].image_extension)

    def read_meta(self, key: str) -> dict:
        """The ``.json`` member of sample ``key``."""
        return json.loads(self.read_member(key, "json"))

    def verify(self, *, check_members: bool = True, decode_images: bool = False) -> None:
        """Check every shard's size and sha256; with ``check_members``, that each tar's members
        (names, offsets, sizes) match the index; with ``decode_images``, that every image and
        metadata member decodes. Raises ValueError naming the shard or sample."""
        for info in self.shards.values():
            path = self.root / info.name
            if not path.is_file():
                raise ValueError(f"{path}: shard listed in the index is missing")
            if path.stat().st_size != info.bytes or sha256_file(path) != info.sha256:
                raise ValueError(f"{path}: checksum mismatch (shard corrupt or changed after writing)")
        if check_members:
            by_shard: dict[str, list[SampleEntry]] = {}
            for entry in self.samples:
                by_shard.setdefault(entry.shard, []).append(entry)
            for name, entries in by_shard.items():
                _check_tar_members(self.root / name, entries)
        if decode_images:
            for entry in tqdm(self.samples, desc="decoding", unit="img", disable=len(self.samples) < 1000):
                images.decode(self.read_image_bytes(entry.key), f"sample {entry.key} in {entry.shard}")
                try:
                    self.read_meta(entry.key)
                except json.JSONDecodeError:
                    raise ValueError(
                        f"{self.root / entry.shard}: metadata of sample {entry.key} is not JSON"
                    ) from None


def _check_consistent(
    index_path: Path, shards: dict[str, ShardInfo], samples: list[SampleEntry], by_key: dict[str, SampleEntry]
) -> None:
    """One clear error for an index that contradicts itself: unique keys, listed shards, members inside
    their shard's bytes, finite scores."""
    if len(by_key) != len(samples):
        duplicate = next(key for key, count in collections.Counter(e.key for e in samples).items() if count > 1)
        raise ValueError(f"{index_path}: sample key {duplicate!r} appears more than once")
    for entry in samples:
        shard = shards.get(entry.shard)
        if shard is None:
            raise ValueError(
                f"{index_path}: sample {entry.key} names shard {entry.shard}, which the index does not list"
            )
        for extension, (offset, size) in entry.members.items():
            if offset < 0 or size < 0 or offset + size > shard.bytes:
                raise ValueError(
                    f"{index_path}: member {entry.key}.{extension} (offset {offset}, {size} bytes) lies outside "
                    f"shard {entry.shard} ({shard.bytes} bytes)"
                )
        if entry.score is not None and not math.isfinite(entry.score):
            raise ValueError(f"{index_path}: sample {entry.key} has a score that is not finite ({entry.score})")


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


def member_base(key: str) -> str:
    """The tar member base name of a sample key (dots would split WebDataset keys)."""
    return key.replace(".", "_")


def _entry(record: dict, index_path: Path) -> SampleEntry:
    try:
        members = {ext: (int(v[0]), int(v[1])) for ext, v in record["members"].items()}
        entry = SampleEntry(
            key=record["key"],
            shard=record["shard"],
            members=members,
            score=record.get("score"),
            ref=record.get("ref"),
            distortion_type=record.get("type"),
            level=record.get("level"),
            origin=record.get("origin", "original"),
            source=record.get("source", ""),
            checksums={ext: int(value) for ext, value in record[CHECKSUM_FIELD].items()}
            if CHECKSUM_FIELD in record
            else None,
        )
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise ValueError(f"{index_path}: malformed sample record {str(record)[:120]} ({error})") from None
    if not is_safe_member_name(entry.shard) or "/" in entry.shard:
        raise ValueError(f"{index_path}: refusing unsafe shard name {entry.shard!r}")
    if not is_safe_member_name(member_base(entry.key)):
        raise ValueError(f"{index_path}: refusing unsafe sample key {entry.key!r}")
    return entry

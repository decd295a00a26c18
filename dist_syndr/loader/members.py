"""Reading image members straight out of shard tars by byte offset, in any worker process.

:class:`SampleTable` is a compact, picklable copy of what the readers need from
``index.json`` (shard, offset, size, score per sample), small enough to ship
to spawned workers. :class:`MemberReader` reads a member with ``os.pread``
(no file position, so forked workers may share inherited descriptors), checks
that the bytes are all there and start like an image whose header declares no
more than ``data.max_pixels`` pixels (before anything decodes them), decodes
through :mod:`dist_syndr.imaging`, and raises :class:`SampleError` naming the
shard file and the key.

Each sample's evaluation crops are drawn from its pixel digest (the index's
column). Sets written before it fall back to the xxh3-64 of the image member's
bytes (its recorded checksum), with one warning recommending ``--reindex``, and
one more where a JPEG member carries an EXIF orientation that the loaders, reading
such sets as written, do not apply.

Shapes: ``N`` samples in the table.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass

import numpy as np

from dist_syndr.config import DEFAULT_MAX_PIXELS
from dist_syndr.imaging import TRANSPOSING_ORIENTATIONS, ImageError, decode, read_header
from dist_syndr.imaging.headers import jpeg_orientation
from dist_syndr.sharding.index_columns import member_base
from dist_syndr.sharding.shard_set import ShardSet, member_checksum

log = logging.getLogger(__name__)


class SampleError(ValueError):
    """A sample that cannot be delivered; the message names the shard file and the key."""


@dataclass(frozen=True)
class SampleTable:
    """Per-sample reading facts, in index order."""

    keys: tuple[str, ...]
    shard_paths: tuple[str, ...]
    shard_ids: np.ndarray  # (N,) int32 into shard_paths
    offsets: np.ndarray  # (N,) int64 byte offset of the image member's data
    sizes: np.ndarray  # (N,) int64
    scores: np.ndarray  # (N,) float32, NaN where the index has none
    extensions: tuple[str, ...] = ()  # (N,) the image member's extension, for messages
    image_checksums: np.ndarray | None = None  # (N,) uint64 xxh3-64 of the image member; None: not checked
    meta_offsets: np.ndarray | None = None  # (N,) int64 offset of the .json member
    meta_sizes: np.ndarray | None = None  # (N,) int64
    meta_checksums: np.ndarray | None = None  # (N,) uint64 xxh3-64 of the .json member
    pixel_digests: np.ndarray | None = None  # (N,) uint64 of the upright pixels; None: none recorded
    has_pixel_digests: np.ndarray | None = None  # (N,) bool; False: key the crops by the member's xxh3-64
    root: str = ""  # the set's folder, for messages

    @staticmethod
    def from_shard_set(shard_set: ShardSet, *, is_verified: bool = True) -> SampleTable:
        """The table of every sample of ``shard_set``; ``is_verified``: members are checked against their
        recorded checksums before anything decodes them (``data.verify_checksums`` not ``off``)."""
        columns = shard_set.columns
        rows = np.arange(len(columns))
        image_column = columns.image_columns()
        checked = {}
        if is_verified and _has_checksums(shard_set):
            json_column = columns.extensions.index("json")
            checked = {
                "image_checksums": np.asarray(columns.member_checksums[rows, image_column], dtype=np.uint64),
                "meta_offsets": np.array(columns.member_offsets[:, json_column], dtype=np.int64),
                "meta_sizes": np.array(columns.member_sizes[:, json_column], dtype=np.int64),
                "meta_checksums": np.array(columns.member_checksums[:, json_column], dtype=np.uint64),
            }
        return SampleTable(
            keys=tuple(shard_set.keys()),
            shard_paths=tuple(str(shard_set.root / name) for name in shard_set.shard_names),
            shard_ids=np.array(columns.shard_ids, dtype=np.int32),
            offsets=np.asarray(columns.member_offsets[rows, image_column], dtype=np.int64),
            sizes=np.asarray(columns.member_sizes[rows, image_column], dtype=np.int64),
            scores=shard_set.scores().astype(np.float32),
            extensions=tuple(np.array(columns.extensions)[image_column].tolist()),
            pixel_digests=np.array(columns.pixel_digests, dtype=np.uint64),
            has_pixel_digests=_digest_flags(shard_set),
            root=str(shard_set.root),
            **checked,
        )

    def rows(self, keys: tuple[str, ...] | list[str]) -> np.ndarray:
        """``(len(keys),)`` int64 row of each key; ValueError naming an unknown key."""
        row_of = self._row_of()
        try:
            return np.array([row_of[key] for key in keys], dtype=np.int64)
        except KeyError as error:
            raise ValueError(f"sample {error.args[0]!r} is not in the shard set") from None

    def _row_of(self) -> dict[str, int]:
        cached = self.__dict__.get("_row_cache")
        if cached is None:
            cached = {key: row for row, key in enumerate(self.keys)}
            object.__setattr__(self, "_row_cache", cached)
        return cached

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_row_cache"}

    def describe(self, row: int) -> str:
        """``"<shard path>: sample <key>"`` for messages."""
        return f"{self.shard_paths[self.shard_ids[row]]}: sample {self.keys[row]}"


@dataclass(frozen=True)
class CheckedMember:
    """A sample's encoded image whose header passed the checks, and the digest its evaluation crops come from."""

    data: bytes
    width: int
    height: int
    digest: int  # the pixel digest (sets written before them: the member's xxh3-64)


class MemberReader:
    """Reads, checks and decodes image members; opens each shard once per process."""

    def __init__(self, table: SampleTable, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.table = table
        self.max_pixels = max_pixels
        self._handles: dict[int, int] = {}

    def __getstate__(self) -> dict:
        return {"table": self.table, "max_pixels": self.max_pixels}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["table"], state["max_pixels"])

    def read(self, row: int) -> bytes:
        """The encoded image of sample ``row``; SampleError if the shard is missing or too short, or (where the
        table is verified) the image or the metadata member fails its checksum."""
        table = self.table
        data = self._pread(row, int(table.offsets[row]), int(table.sizes[row]))
        if table.image_checksums is not None:
            self._check(row, table.extensions[row], data, int(table.image_checksums[row]))
            meta = self._pread(row, int(table.meta_offsets[row]), int(table.meta_sizes[row]))
            self._check(row, "json", meta, int(table.meta_checksums[row]))
        return data

    def _pread(self, row: int, offset: int, size: int) -> bytes:
        shard = int(self.table.shard_ids[row])
        handle = self._handles.get(shard)
        if handle is None:
            try:
                handle = self._handles[shard] = os.open(self.table.shard_paths[shard], os.O_RDONLY)
            except OSError as error:
                raise SampleError(f"{self.table.describe(row)}: cannot open the shard ({error.strerror})") from None
        data = os.pread(handle, size, offset)
        if len(data) != size:
            raise SampleError(f"{self.table.describe(row)}: member truncated ({len(data)} of {size} bytes)")
        return data

    def _check(self, row: int, extension: str, data: bytes, expected: int) -> None:
        actual = member_checksum(data)
        if actual != expected:
            member = f"{member_base(self.table.keys[row])}.{extension}"
            raise SampleError(
                f"{self.table.describe(row)}: member {member} fails its checksum (xxh3-64 {actual:016x}, index "
                f"{expected:016x}); the shard changed after writing"
            )

    def read_checked(self, row: int, crop: int) -> CheckedMember:
        """The member and its declared size; SampleError if the header is unreadable, declares more than
        ``max_pixels`` pixels (nothing is decoded) or an image smaller than ``crop``."""
        data = self.read(row)
        try:
            header = read_header(data)
        except ImageError as error:
            raise SampleError(f"{self.table.describe(row)}: image bytes are corrupt ({error})") from None
        width, height = header.width, header.height
        if header.num_pixels > self.max_pixels:
            raise SampleError(
                f"{self.table.describe(row)}: image is {width}x{height}, {header.num_pixels:,} pixels above "
                f"data.max_pixels={self.max_pixels:,}; refused before decoding"
            )
        if width < crop or height < crop:
            raise SampleError(
                f"{self.table.describe(row)}: image is {width}x{height}, smaller than the {crop}x{crop} crop"
                " (images are never resized)"
            )
        table = self.table
        if table.has_pixel_digests is not None and table.has_pixel_digests[row]:
            return CheckedMember(data, width, height, int(table.pixel_digests[row]))
        if header.format == "JPEG":
            _warn_sideways_once(table.root, data)
        return CheckedMember(data, width, height, member_checksum(data))

    def decode(self, row: int, member: CheckedMember) -> np.ndarray:
        """``(H, W, 3)`` uint8 pixels of a checked member as stored (shards hold upright pixels); SampleError
        if they do not decode or their size differs from the header's."""
        try:
            pixels = decode(member.data, max_pixels=self.max_pixels, is_oriented=False)
        except ImageError as error:
            raise SampleError(f"{self.table.describe(row)}: image bytes are corrupt ({error})") from None
        if pixels.shape[:2] != (member.height, member.width):
            raise SampleError(
                f"{self.table.describe(row)}: decoded size {pixels.shape[1]}x{pixels.shape[0]} differs from the "
                f"header's {member.width}x{member.height}"
            )
        return pixels

    def close(self) -> None:
        """Close the shard files this process opened."""
        for handle in self._handles.values():
            os.close(handle)
        self._handles = {}

    def __del__(self) -> None:
        for handle in self._handles.values():
            try:
                os.close(handle)
            except OSError:
                pass


def decodes_fully(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """True when ``data`` decodes without error (slow; used to name the samples of a shard that fails
    verification); False without decoding when the header declares more than ``max_pixels`` pixels."""
    try:
        decode(data, max_pixels=max_pixels, is_oriented=False)
    except ImageError:
        return False
    return True


def placeholder_png(crop: int) -> bytes:
    """A black ``crop x crop`` PNG fed in place of padding and skipped samples
    (dropped before the batch is yielded).
    """
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (crop, crop)).save(buffer, format="PNG")
    return buffer.getvalue()


def warn_skipped(epoch: int, num_skipped: int) -> None:
    """One warning per epoch and rank for the samples dropped under ``data.on_error=skip`` (none: silent)."""
    if num_skipped > 0:
        log.warning("epoch %d: %d sample(s) skipped on this rank (data.on_error=skip)", epoch, num_skipped)


_WARNED_ROOTS: set[str] = set()
_WARNED_DIGESTS: set[str] = set()
_WARNED_SIDEWAYS: set[str] = set()


def _digest_flags(shard_set: ShardSet) -> np.ndarray:
    """``(N,)`` bool: which samples have a pixel digest; a set written before them gets one warning."""
    flags = np.array(shard_set.columns.has_pixel_digests, dtype=bool)
    if not flags.all() and str(shard_set.root) not in _WARNED_DIGESTS:
        _WARNED_DIGESTS.add(str(shard_set.root))
        log.warning(
            "%s: written before pixel digests; its evaluation crops are drawn from each image member's xxh3-64, "
            "not from the upright pixels score.py digests, so the two may cut different windows "
            "(add them with: python launchers/shard.py --reindex %s)",
            shard_set.root,
            shard_set.root,
        )
    return flags


def _warn_sideways_once(root: str, data: bytes) -> None:
    """One warning per process and set when a member of an older set carries an EXIF orientation that moves
    pixels: such sets are read as written (sideways), while score.py applies the tag."""
    if root in _WARNED_SIDEWAYS:
        return
    try:
        orientation = jpeg_orientation(data)
    except ImageError:
        return
    if orientation in TRANSPOSING_ORIENTATIONS:
        _WARNED_SIDEWAYS.add(root)
        log.warning(
            "%s: written before the sharding step applied EXIF orientation: JPEG members with an orientation tag "
            "(%d here) are read as stored, while score.py shows them upright; reshard the set to store them upright",
            root,
            orientation,
        )


def _has_checksums(shard_set: ShardSet) -> bool:
    """Whether the set records member checksums; a set written before them is read unchecked, with one warning."""
    if shard_set.has_member_checksums:
        return True
    if str(shard_set.root) not in _WARNED_ROOTS:
        _WARNED_ROOTS.add(str(shard_set.root))
        log.warning(
            "%s: written before member checksums; its members are read unchecked "
            "(add them with: python launchers/shard.py --reindex %s)",
            shard_set.root,
            shard_set.root,
        )
    return False

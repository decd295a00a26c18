"""Reading image members straight out of shard tars by byte offset, in any worker process.

:class:`SampleTable` is a compact, picklable copy of what the readers need from
``index.json`` (shard, offset, size, score per sample), small enough to ship
to spawned workers. :class:`MemberReader` reads a member with ``os.pread``
(no file position, so forked workers may share inherited descriptors), checks
that the bytes are all there and start like an image whose size the header
gives, and raises :class:`SampleError` naming the shard file and the key.

Shapes: ``N`` samples in the table.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass

import numpy as np

from dist_syndr.loader.crops import image_size
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


class MemberReader:
    """Reads and checks image members; opens each shard once per process."""

    def __init__(self, table: SampleTable):
        self.table = table
        self._handles: dict[int, int] = {}

    def __getstate__(self) -> dict:
        return {"table": self.table}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["table"])

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

    def read_checked(self, row: int, crop: int) -> tuple[bytes, int, int]:
        """``(bytes, width, height)``; SampleError if the header is unreadable or the image is smaller
        than ``crop``.
        """
        data = self.read(row)
        try:
            width, height = image_size(data)
        except ValueError as error:
            raise SampleError(f"{self.table.describe(row)}: image bytes are corrupt ({error})") from None
        if width < crop or height < crop:
            raise SampleError(
                f"{self.table.describe(row)}: image is {width}x{height}, smaller than the {crop}x{crop} crop"
                " (images are never resized)"
            )
        return data, width, height

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


def decodes_fully(data: bytes) -> bool:
    """True when PIL decodes ``data`` without error (slow; used to name the samples of a shard
    that fails verification).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


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

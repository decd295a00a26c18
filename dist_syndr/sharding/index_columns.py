"""The per-sample part of a shard set's index as columns, in one memory-mapped file beside ``index.json``.

A JSON list of records is 325 MB at a million samples and takes about 20 s and 2 GB to load in
every process. Format 2 keeps the small header in ``index.json`` (config, shards, skipped inputs
and the layout and xxh3-64 of the columns file) and puts one array per field in
``index-<xxh3-64>.columns``, each 64-byte aligned, read back with ``numpy.memmap``: opening costs a digest
and a few vectorised checks, and every rank and worker on a node shares the same page-cache
pages. Keys are found through a sorted table of their xxh3-64 hashes (binary search, then one
string compare), so no per-key dict is ever built.

Each sample also records the :func:`~dist_syndr.imaging.digest.pixel_digest` of its upright decoded
pixels (``pixel_digest`` in a record), from which evaluation crops are drawn. Sets written before it
lack the two arrays; they read as samples without a digest (``--reindex`` adds them), and readers
older than the column ignore it.

Shapes: ``N`` samples, ``E`` member extensions in the set.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import xxhash

from dist_syndr import files

COLUMNS_SUFFIX = ".columns"  # index-<xxh3-64 of the content>.columns
CHECKSUM_FIELD = "xxh3_64"  # per-sample record: extension -> the member's checksum
PIXEL_DIGEST_FIELD = "pixel_digest"  # per-sample record: xxh3-64 of the upright decoded pixels (imaging.pixel_digest)
_OPTIONAL_ARRAYS = ("pixel_digests", "has_pixel_digests")  # absent from columns files written before them
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "lz4")  # a sample's image member: the first of these it has (lz4:
# imaging.lz4_pixels)
NONE_CODE = -1  # category code, distortion type or level of a sample that has none
_ALIGN = 64
_WRITE_CHUNK = 1 << 24


@dataclass(frozen=True)
class StringColumn:
    """``N`` strings as one UTF-8 blob, each followed by a newline, and their ``N + 1`` start offsets."""

    blob: np.ndarray  # (bytes,) uint8
    starts: np.ndarray  # (N + 1,) int64

    @staticmethod
    def of(values: Sequence[str], what: str) -> StringColumn:
        """The column of ``values``; ValueError for a value holding a newline (``what`` names the field)."""
        encoded = [value.encode() for value in values]
        if any(b"\n" in value for value in encoded):
            bad = next(value for value in values if "\n" in value)
            raise ValueError(f"{what} {bad!r} holds a newline, which the index cannot store")
        starts = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter((len(e) + 1 for e in encoded), np.int64, len(encoded)), out=starts[1:])
        blob = np.frombuffer(b"".join(e + b"\n" for e in encoded), dtype=np.uint8)
        return StringColumn(blob, starts)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, row: int) -> str:
        return self.blob[self.starts[row] : self.starts[row + 1] - 1].tobytes().decode()

    def tolist(self) -> list[str]:
        """Every string, in order (one decode and split: about 50 ms per million)."""
        return self.blob.tobytes().decode().split("\n")[:-1] if len(self) else []


@dataclass(frozen=True)
class IndexColumns:
    """Every per-sample field of a shard set, one array each, in index order."""

    extensions: tuple[str, ...]  # (E,) member extensions, sorted
    keys: StringColumn
    key_hashes: np.ndarray  # (N,) uint64 xxh3-64 of each key, ascending
    key_rows: np.ndarray  # (N,) int64 row of the key behind each sorted hash
    shard_ids: np.ndarray  # (N,) int32 into the header's shard list
    scores: np.ndarray  # (N,) float64, NaN: no score
    distortion_types: np.ndarray  # (N,) int16, NONE_CODE: none
    levels: np.ndarray  # (N,) int16, NONE_CODE: none
    ref_codes: np.ndarray  # (N,) int32 into refs, NONE_CODE: none
    refs: StringColumn
    origin_codes: np.ndarray  # (N,) int32 into origins
    origins: StringColumn
    source_codes: np.ndarray  # (N,) int32 into sources
    sources: StringColumn
    member_offsets: np.ndarray  # (N, E) int64 data offset within the shard
    member_sizes: np.ndarray  # (N, E) int64, -1: the sample has no such member
    member_checksums: np.ndarray  # (N, E) uint64 xxh3-64 of the member's bytes
    has_checksums: np.ndarray  # (N,) bool, False in sets written before member checksums
    pixel_digests: np.ndarray  # (N,) uint64 pixel digest of the image (0 where has_pixel_digests is False)
    has_pixel_digests: np.ndarray  # (N,) bool, False in sets written before pixel digests

    def __len__(self) -> int:
        return len(self.shard_ids)

    def row_of(self, key: str) -> int | None:
        """The row of sample ``key``, or None."""
        digest = np.uint64(xxhash.xxh3_64_intdigest(key.encode()))
        position = int(np.searchsorted(self.key_hashes, digest, side="left"))
        while position < len(self.key_hashes) and self.key_hashes[position] == digest:
            row = int(self.key_rows[position])
            if self.keys[row] == key:
                return row
            position += 1
        return None

    def rows_of(self, keys: Sequence[str]) -> np.ndarray:
        """``(len(keys),)`` int64 rows of ``keys`` in one vectorised pass; ValueError naming a key not in the set."""
        if not len(keys) or not len(self):
            if len(keys):
                raise ValueError(f"sample {keys[0]!r} is not in the shard set")
            return np.zeros(0, dtype=np.int64)
        digests = np.fromiter((xxhash.xxh3_64_intdigest(k.encode()) for k in keys), np.uint64, len(keys))
        positions = np.minimum(np.searchsorted(self.key_hashes, digests), len(self) - 1)
        rows = self.key_rows[positions].astype(np.int64)
        names = self.keys.tolist()
        for index, (key, row) in enumerate(zip(keys, rows.tolist(), strict=True)):
            if names[row] != key:  # another key with the same hash first, or not in the set
                found = self.row_of(key)
                if found is None:
                    raise ValueError(f"sample {key!r} is not in the shard set")
                rows[index] = found
        return rows

    def image_columns(self) -> np.ndarray:
        """``(N,)`` int64: the member column holding each sample's image; ValueError naming a sample with none."""
        choice = np.full(len(self), -1, dtype=np.int64)
        for extension in reversed(IMAGE_EXTENSIONS):
            if extension in self.extensions:
                column = self.extensions.index(extension)
                choice = np.where(self.member_sizes[:, column] >= 0, column, choice)
        missing = np.flatnonzero(choice < 0)
        if len(missing):
            raise ValueError(f"sample {self.keys[int(missing[0])]}: no image member among {list(self.extensions)}")
        return choice

    def is_upsampled(self) -> np.ndarray:
        """``(N,)`` bool: DDCUp's pseudo-labelled samples."""
        names = self.origins.tolist()
        upsampled = np.array([name == "upsampled" for name in names] + [False], dtype=bool)
        return upsampled[self.origin_codes]

    def check(self, shard_names: Sequence[str], shard_bytes: Sequence[int], where: Path) -> None:
        """One clear error (naming ``where`` and the sample) for columns that contradict the header or
        themselves: listed shards, members inside their shard's bytes, unique keys, finite scores."""
        outside = np.flatnonzero((self.shard_ids < 0) | (self.shard_ids >= len(shard_names)))
        if len(outside):
            row = int(outside[0])
            raise ValueError(
                f"{where}: sample {self.keys[row]} names shard #{self.shard_ids[row]}, which the index does not "
                f"list ({len(shard_names)} shards)"
            )
        limit = np.asarray(shard_bytes, dtype=np.int64)[self.shard_ids]
        for column, extension in enumerate(self.extensions):
            offsets, sizes = self.member_offsets[:, column], self.member_sizes[:, column]
            bad = np.flatnonzero((sizes >= 0) & ((offsets < 0) | (offsets + sizes > limit)))
            if len(bad):
                row = int(bad[0])
                raise ValueError(
                    f"{where}: member {self.keys[row]}.{extension} (offset {offsets[row]}, {sizes[row]} bytes) lies "
                    f"outside shard {shard_names[self.shard_ids[row]]} ({limit[row]} bytes)"
                )
        infinite = np.flatnonzero(np.isinf(self.scores))
        if len(infinite):
            row = int(infinite[0])
            raise ValueError(f"{where}: sample {self.keys[row]} has a score that is not finite ({self.scores[row]})")
        duplicate = self._duplicate_key()
        if duplicate is not None:
            raise ValueError(f"{where}: sample key {duplicate!r} appears more than once")

    def _duplicate_key(self) -> str | None:
        repeats = np.flatnonzero(self.key_hashes[1:] == self.key_hashes[:-1])
        seen: dict[int, set[str]] = {}
        for position in repeats:
            for neighbour in (position, position + 1):
                key = self.keys[int(self.key_rows[neighbour])]
                group = seen.setdefault(int(self.key_hashes[neighbour]), set())
                if key in group and neighbour == position + 1:
                    return key
                group.add(key)
        return None

    def write(self, folder: Path) -> dict:
        """Write the columns into ``folder`` as ``index-<xxh3-64>.columns``, atomically (a new name for new
        content, so an index that names the old file stays readable until it is replaced); returns the
        header entry that describes the file."""
        hasher, layout, size = xxhash.xxh3_64(), {}, 0
        for piece, name, array, offset in _pieces(self):
            hasher.update(piece)
            if name is not None:
                layout[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "offset": offset}
            size = offset + len(piece)
        digest = f"{hasher.intdigest():016x}"
        path = folder / f"index-{digest}{COLUMNS_SUFFIX}"
        with files.atomic_path(path) as temporary, temporary.open("wb") as handle:
            for piece, *_ in _pieces(self):
                handle.write(piece)
        return {
            "file": path.name,
            "bytes": size,
            CHECKSUM_FIELD: digest,
            "extensions": list(self.extensions),
            "arrays": layout,
        }


def _pieces(columns: IndexColumns) -> Iterator[tuple[memoryview | bytes, str | None, np.ndarray, int]]:
    """The file's bytes in order: (piece, array name or None for padding and later chunks, array, offset)."""
    position = 0
    for name, array in _flat_arrays(columns).items():
        padding = -position % _ALIGN
        if padding:
            yield bytes(padding), None, array, position
            position += padding
        data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        if not len(data):
            yield b"", name, array, position
        for start in range(0, len(data), _WRITE_CHUNK):
            yield memoryview(data[start : start + _WRITE_CHUNK]), name if start == 0 else None, array, position
            position += min(_WRITE_CHUNK, len(data) - start)


def stale_columns_files(folder: Path, current: str) -> list[Path]:
    """Columns files in ``folder`` other than ``current`` (left by an earlier index), to delete."""
    return [path for path in folder.glob(f"index-*{COLUMNS_SUFFIX}") if path.name != current]


def load(root: Path, header: dict, where: Path) -> IndexColumns:
    """Memory-map the columns file that ``header`` (the index's ``columns`` entry) describes, checking its
    size and xxh3-64 first."""
    try:
        path = root / header["file"]
        expected_bytes, expected_digest, layout = header["bytes"], header[CHECKSUM_FIELD], header["arrays"]
        extensions = tuple(header["extensions"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"{where}: malformed 'columns' entry ({error})") from None
    if "/" in str(header["file"]) or not str(header["file"]).endswith(COLUMNS_SUFFIX) or not path.is_file():
        raise ValueError(f"{where}: its columns file {header['file']} is missing; the set was not written completely")
    if path.stat().st_size != expected_bytes:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, the index says {expected_bytes}; rewrite the index")
    mapped = np.memmap(path, dtype=np.uint8, mode="r") if expected_bytes else np.zeros(0, np.uint8)
    actual = f"{xxhash.xxh3_64_intdigest(mapped):016x}"
    if actual != expected_digest:
        raise ValueError(f"{path}: xxh3-64 {actual}, the index says {expected_digest}; changed after writing")
    arrays = {}
    for name, spec in layout.items():
        dtype, shape, offset = np.dtype(spec["dtype"]), tuple(spec["shape"]), spec["offset"]
        count = math.prod(shape)
        arrays[name] = mapped[offset : offset + count * dtype.itemsize].view(dtype).reshape(shape)
    return _from_flat_arrays(arrays, extensions, where)


def is_safe_member_name(name: str) -> bool:
    """False for absolute names, ``..`` components, empty names or backslashes."""
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


def member_base(key: str) -> str:
    """The tar member base name of a sample key (dots would split WebDataset keys)."""
    return key.replace(".", "_")


def from_records(records: Sequence[dict], shard_names: Sequence[str], where: Path) -> IndexColumns:
    """The columns of per-sample records as format 1 and the sharding step hold them; ValueError naming
    the record for a malformed one, an unlisted or unsafe shard, or a score that is not finite."""
    shard_number = {name: number for number, name in enumerate(shard_names)}
    extensions = tuple(sorted({extension for record in records for extension in record.get("members", {})}))
    column_of = {extension: column for column, extension in enumerate(extensions)}
    count = len(records)
    offsets = np.zeros((count, len(extensions)), dtype=np.int64)
    sizes = np.full((count, len(extensions)), -1, dtype=np.int64)
    checksums = np.zeros((count, len(extensions)), dtype=np.uint64)
    has_checksums = np.zeros(count, dtype=bool)
    digests = np.zeros(count, dtype=np.uint64)
    has_digests = np.zeros(count, dtype=bool)
    fields: dict[str, list] = {
        name: [] for name in ("key", "shard", "score", "type", "level", "ref", "origin", "source")
    }
    for row, record in enumerate(records):
        try:
            _add_record(record, row, fields, column_of, offsets, sizes, checksums, has_checksums)
            if record.get(PIXEL_DIGEST_FIELD) is not None:
                digests[row], has_digests[row] = int(record[PIXEL_DIGEST_FIELD]), True
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as error:
            raise ValueError(f"{where}: malformed sample record {str(record)[:120]} ({error})") from None
        shard, key, score = record["shard"], record["key"], fields["score"][-1]
        if shard not in shard_number:
            if not is_safe_member_name(shard) or "/" in shard:
                raise ValueError(f"{where}: refusing unsafe shard name {shard!r}")
            raise ValueError(f"{where}: sample {key} names shard {shard}, which the index does not list")
        if not is_safe_member_name(member_base(key)):
            raise ValueError(f"{where}: refusing unsafe sample key {key!r}")
        if record.get("score") is not None and not math.isfinite(score):
            raise ValueError(f"{where}: sample {key} has a score that is not finite ({score})")
    ref_codes, refs = _categories(fields["ref"], "ref")
    origin_codes, origins = _categories(fields["origin"], "origin")
    source_codes, sources = _categories(fields["source"], "source")
    keys = StringColumn.of(fields["key"], "sample key")
    key_hashes = np.fromiter((xxhash.xxh3_64_intdigest(k.encode()) for k in fields["key"]), np.uint64, count)
    key_rows = np.argsort(key_hashes, kind="stable").astype(np.int64)
    return IndexColumns(
        extensions=extensions,
        keys=keys,
        key_hashes=key_hashes[key_rows],
        key_rows=key_rows,
        shard_ids=np.array([shard_number[name] for name in fields["shard"]], dtype=np.int32),
        scores=np.array(fields["score"], dtype=np.float64),
        distortion_types=np.array(fields["type"], dtype=np.int16),
        levels=np.array(fields["level"], dtype=np.int16),
        ref_codes=ref_codes,
        refs=refs,
        origin_codes=origin_codes,
        origins=origins,
        source_codes=source_codes,
        sources=sources,
        member_offsets=offsets,
        member_sizes=sizes,
        member_checksums=checksums,
        has_checksums=has_checksums,
        pixel_digests=digests,
        has_pixel_digests=has_digests,
    )


def _add_record(record, row, fields, column_of, offsets, sizes, checksums, has_checksums) -> None:
    for extension, (offset, size) in record["members"].items():
        offsets[row, column_of[extension]], sizes[row, column_of[extension]] = int(offset), int(size)
    if CHECKSUM_FIELD in record:
        for extension, value in record[CHECKSUM_FIELD].items():
            checksums[row, column_of[extension]] = int(value)
        has_checksums[row] = True
    score = record.get("score")
    fields["key"].append(str(record["key"]))
    fields["shard"].append(str(record["shard"]))
    fields["score"].append(math.nan if score is None else float(score))
    fields["type"].append(NONE_CODE if record.get("type") is None else int(record["type"]))
    fields["level"].append(NONE_CODE if record.get("level") is None else int(record["level"]))
    fields["ref"].append(record.get("ref"))
    fields["origin"].append(record.get("origin", "original"))
    fields["source"].append(record.get("source", ""))


def _categories(values: Sequence[str | None], what: str) -> tuple[np.ndarray, StringColumn]:
    table: dict[str, int] = {}
    codes = np.fromiter(
        (NONE_CODE if value is None else table.setdefault(str(value), len(table)) for value in values),
        np.int32,
        len(values),
    )
    return codes, StringColumn.of(list(table), what)


def _flat_arrays(columns: IndexColumns) -> dict[str, np.ndarray]:
    flat = {}
    for field in dataclasses.fields(columns):
        value = getattr(columns, field.name)
        if isinstance(value, StringColumn):
            flat[f"{field.name}.blob"], flat[f"{field.name}.starts"] = value.blob, value.starts
        elif isinstance(value, np.ndarray):
            flat[field.name] = value
    return flat


def _from_flat_arrays(arrays: dict[str, np.ndarray], extensions: tuple[str, ...], where: Path) -> IndexColumns:
    values = {}
    try:
        for field in dataclasses.fields(IndexColumns):
            if field.name == "extensions":
                continue
            if f"{field.name}.blob" in arrays or field.type == "StringColumn":
                values[field.name] = StringColumn(arrays[f"{field.name}.blob"], arrays[f"{field.name}.starts"])
            elif field.name in arrays or field.name not in _OPTIONAL_ARRAYS:
                values[field.name] = arrays[field.name]
    except KeyError as error:
        raise ValueError(f"{where}: the columns file lacks the array {error.args[0]}") from None
    count = len(values["shard_ids"])  # files written before pixel digests hold neither array
    values.setdefault("pixel_digests", np.zeros(count, dtype=np.uint64))
    values.setdefault("has_pixel_digests", np.zeros(count, dtype=bool))
    return IndexColumns(extensions=extensions, **values)

"""Checking a shard set once before the first epoch, and naming what is wrong.

:func:`verify_shard_set` compares every shard's size and sha256 with
``index.json``, and the tar members with the recorded offsets. A mismatch is
an error naming the shard and, where PIL finds them, the samples whose bytes
no longer decode; under ``on_error=skip`` every sample of a mismatched shard
is excluded instead (a changed shard may hold samples that decode to wrong
pixels, so none of it is trusted) and the count is logged.

Shapes: none (keys and files).
"""

from __future__ import annotations

import logging

from dist_syndr.config import DataConfig
from dist_syndr.files import sha256_file
from dist_syndr.loader.members import MemberReader, SampleError, SampleTable, decodes_fully
from dist_syndr.sharding.shard_set import ShardSet, member_base, scan_tar

log = logging.getLogger(__name__)


def verify_shard_set(shard_set: ShardSet, config: DataConfig) -> frozenset[str]:
    """Keys to exclude from every plan (empty unless ``on_error=skip`` found bad shards); ValueError otherwise."""
    if config.verify_checksums != "shards":
        return frozenset()
    excluded: set[str] = set()
    by_shard: dict[str, list[str]] = {}
    for entry in shard_set.samples:
        by_shard.setdefault(entry.shard, []).append(entry.key)
    for info in shard_set.shards.values():
        problem = _shard_problem(shard_set, info.name, info.bytes, info.sha256, by_shard.get(info.name, []))
        if problem is None:
            continue
        if config.on_error != "skip":
            raise ValueError(problem)
        keys = by_shard.get(info.name, [])
        excluded.update(keys)
        log.warning("%s; skipping its %d sample(s) (data.on_error=skip)", problem, len(keys))
    if excluded:
        log.warning("verification excluded %d of %d samples of %s", len(excluded), len(shard_set), shard_set.root)
    return frozenset(excluded)


def _shard_problem(shard_set: ShardSet, name: str, size: int, sha256: str, keys: list[str]) -> str | None:
    path = shard_set.root / name
    if not path.is_file():
        return f"{path}: shard listed in the index is missing"
    try:
        members = scan_tar(path)
    except ValueError as error:
        return str(error)
    is_intact = path.stat().st_size == size and sha256_file(path) == sha256
    if is_intact:
        # The tar is the one indexed, but index.json itself may have been edited since.
        moved = [key for key in keys if not _matches_index(shard_set, key, members)]
        return f"{path}: member offsets of sample {moved[0]} do not match the index" if moved else None
    bad = _broken_samples(shard_set, keys, members)
    detail = (
        f" (samples that no longer decode or match the index: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''})"
        if bad
        else ""
    )
    return f"{path}: checksum mismatch (shard corrupt or changed after writing){detail}"


def _matches_index(shard_set: ShardSet, key: str, members: dict[str, tuple[int, int]]) -> bool:
    entry = shard_set.by_key[key]
    return all(members.get(f"{member_base(key)}.{extension}") == place for extension, place in entry.members.items())


def _broken_samples(shard_set: ShardSet, keys: list[str], members: dict[str, tuple[int, int]]) -> list[str]:
    table = SampleTable.from_shard_set(shard_set)
    reader = MemberReader(table)
    bad = []
    for key, row in zip(keys, table.rows(keys), strict=True):
        if not _matches_index(shard_set, key, members):
            bad.append(key)
            continue
        try:
            if not decodes_fully(reader.read(int(row))):
                bad.append(key)
        except SampleError:
            bad.append(key)
    reader.close()
    return bad

"""Checking whole shards once before the first read, and naming what is wrong.

:func:`verify_shards_once` is what ``data.verify_checksums: shards`` runs before
training and evaluation (the member checksums are checked on every read in any
mode but ``off``). :func:`verify_shard_set` compares every shard's size and sha256 with
``index.json``, and the tar members with the recorded offsets. A mismatch is
an error naming the shard and, where PIL finds them, the samples whose bytes
no longer decode; under ``on_error=skip`` every sample of a mismatched shard
is excluded instead (a changed shard may hold samples that decode to wrong
pixels, so none of it is trusted) and the count is logged.

Shapes: none (keys and files).
"""

from __future__ import annotations

import json
import logging

from dist_syndr import collectives, files, runtime
from dist_syndr.config import DataConfig
from dist_syndr.files import sha256_file
from dist_syndr.loader.members import MemberReader, SampleError, SampleTable, decodes_fully
from dist_syndr.sharding.index_columns import member_base
from dist_syndr.sharding.shard_set import ShardSet, scan_tar

log = logging.getLogger(__name__)


def verify_shard_set(shard_set: ShardSet, config: DataConfig) -> frozenset[str]:
    """Keys to exclude from every plan (empty unless ``on_error=skip`` found bad shards); ValueError otherwise."""
    if config.verify_checksums != "shards":
        return frozenset()
    excluded: set[str] = set()
    by_shard = shard_set.keys_by_shard()
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


RECORD_NAME = ".verified-shards.json"


def verify_shards_once(shard_set: ShardSet, config: DataConfig) -> None:
    """``data.verify_checksums: shards``: each whole shard's size and sha256 against the index, once.

    Collective under a process group: the ranks split the shards and share what they found. A record
    beside the index (name -> size, mtime, sha256) skips shards unchanged since they last passed, so a
    rerun does not hash hundreds of GB again. A mismatch is an error naming the shard; under
    ``on_error=skip`` it is logged and the member checksums then skip the damaged samples one by one.

    With ``data.shard_storage: node-local`` every node holds its own copy: the shards are hashed unless
    ``verify_checksums`` is ``off``, each node's ranks split that node's copy, a problem names the node,
    and each node keeps its own record.
    """
    is_node_local = config.shard_storage == "node-local"
    if config.verify_checksums == "off" or (config.verify_checksums != "shards" and not is_node_local):
        return
    node_rank, label = runtime.node_rank_and_label()
    part, parts = (runtime.env_rank_world()[2], runtime.local_world_size()) if is_node_local else runtime.rank_world()
    record = _read_record(shard_set.root)
    by_shard = shard_set.keys_by_shard()
    # One stat per shard, before hashing: a shard that changes while it is hashed is not recorded as verified.
    stamps = {info.name: _stamp(shard_set.root, info) for info in shard_set.shards.values()}
    todo = [info for info in shard_set.shards.values() if record.get(info.name) != stamps[info.name]]
    found = {
        info.name: _shard_problem(shard_set, info.name, info.bytes, info.sha256, by_shard.get(info.name, []))
        for info in todo[part::parts]
    }
    everyone = collectives.all_gather_objects((node_rank, label, found))
    bad = {
        (their_node, name): f"{their_label}: {problem}" if is_node_local else problem
        for their_node, their_label, part_found in everyone
        for name, problem in part_found.items()
        if problem is not None
    }
    if bad and config.on_error != "skip":
        raise ValueError("\n".join(bad.values()))
    for problem in bad.values():
        log.warning("%s; its damaged samples are skipped as the member checksums find them", problem)
    mine_bad = {name for rank_of_bad, name in bad if not is_node_local or rank_of_bad == node_rank}
    log.info(
        "%s%s: %d of %d shards hashed (%d unchanged since verified), %d bad",
        f"{label}: " if is_node_local else "",
        shard_set.root,
        len(todo),
        len(shard_set.shards),
        len(shard_set.shards) - len(todo),
        len(mine_bad),
    )
    if part == 0 and todo:
        passed = {info.name: stamps[info.name] for info in todo if info.name not in mine_bad}
        _write_record(shard_set.root, {name: stamp for name, stamp in record.items() if name not in mine_bad} | passed)


def _stamp(root, info) -> dict:
    path = root / info.name
    stat = path.stat() if path.is_file() else None
    return {"bytes": stat.st_size if stat else -1, "mtime_ns": stat.st_mtime_ns if stat else -1, "sha256": info.sha256}


def _read_record(root) -> dict:
    try:
        return json.loads((root / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _write_record(root, record: dict) -> None:
    try:
        files.write_text(root / RECORD_NAME, json.dumps(record, sort_keys=True))
    except OSError as error:  # a read-only dataset: verified again next time
        log.info("%s: verification record not written (%s)", root, error)


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

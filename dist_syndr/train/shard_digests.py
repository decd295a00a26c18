"""The run's shard sets pinned by their index digests, and every node's copy checked against them.

At a run's first start global rank 0 records, in ``<run_dir>/shard_sets.json`` (on the shared path),
the sha256 of each shard set's ``index.json``. That index holds every shard's size and sha256 and the
columns file's checksum, so its digest names the whole set. Before training each rank hashes the
index it sees and the ranks compare with the record: a resumed run whose set changed since it
started, or a node whose own copy (``data.shard_storage: node-local``) differs, stops the run with a
message naming the node and the set. The shards themselves are then hashed by
:func:`dist_syndr.loader.checks.verify_shards_once`, on every node for node-local sets.

Shapes: none.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dist_syndr import collectives, files, runtime
from dist_syndr.sharding.shard_set import INDEX_NAME, ShardSet

log = logging.getLogger(__name__)

RECORD_NAME = "shard_sets.json"


def index_digest(shard_set: ShardSet) -> str:
    """sha256 of the set's ``index.json``."""
    return files.sha256_file(shard_set.root / INDEX_NAME)


def check_index_digests(run_dir: Path, sets: dict[str, ShardSet]) -> dict[str, str]:
    """Every rank's copy of ``sets`` (role -> set) against the run's recorded digests; returns them.

    Collective under a process group. Without a record (a new run) rank 0's copy defines the digests
    and rank 0 writes the record. Raises ValueError naming each node, set and digest that differ.
    """
    _, label = runtime.node_rank_and_label()
    rank, _ = runtime.rank_world()
    seen = {role: index_digest(shard_set) for role, shard_set in sets.items()}
    recorded = _read_record(run_dir) if rank == 0 else None
    shared = (_expected(recorded, seen, sets), recorded is not None) if rank == 0 else None
    expected, is_recorded = collectives.all_gather_objects(shared)[0]
    against = f"the run's record ({run_dir / RECORD_NAME})" if is_recorded else "node 0's copy"
    problems = [
        f"{label}: {shard_set.root} ({role}): index.json sha256 {seen[role][:16]}... differs from {against}, "
        f"{expected[role]['index_sha256'][:16]}..."
        for role, shard_set in sets.items()
        if seen[role] != expected[role]["index_sha256"]
    ]
    everyone = [problem for part in collectives.all_gather_objects(problems) for problem in part]
    if everyone:
        cause = (
            "the set changed since the run started, or a node holds another copy"
            if is_recorded
            else "a node holds another copy"
        )
        raise ValueError(f"shard sets differ ({cause}):\n" + "\n".join(everyone))
    if rank == 0 and expected != recorded:
        files.write_text(run_dir / RECORD_NAME, json.dumps(expected, indent=1, sort_keys=True))
    log.info("%s: shard set index digests match %s (%s)", label, against, ", ".join(sorted(sets)))
    return {role: entry["index_sha256"] for role, entry in expected.items()}


def _expected(recorded: dict | None, seen: dict[str, str], sets: dict[str, ShardSet]) -> dict[str, dict]:
    """The record, completed by this copy for roles it lacks (a target added on resume)."""
    fresh = {
        role: {"folder": str(shard_set.root), "index_sha256": seen[role], "num_samples": len(shard_set)}
        for role, shard_set in sets.items()
    }
    return fresh | (recorded or {})


def _read_record(run_dir: Path) -> dict | None:
    path = run_dir / RECORD_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); remove it to pin the sets afresh") from None

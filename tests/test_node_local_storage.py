"""Shard sets on each node's own disk: every copy is checked against the run's index digest and hashed on
its node; a stale or damaged copy stops the run naming the node and the shard."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from dist_syndr.sharding.photos import photo_shard_set
from dist_syndr.sharding.shard_set import INDEX_NAME, ShardSet
from dist_syndr.train import shard_digests
from tests.conftest import run_ranks

PHOTOS, TYPES = ("astronaut", "coffee", "chelsea"), (1, 11)  # 30 samples: two shards of 25 and 5


def _copy_set(source, *targets):
    for target in targets:
        shutil.copytree(source, target)


def _flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_run_pins_its_sets_and_a_set_changed_before_resume_is_refused(tmp_path):
    shard_set = photo_shard_set(tmp_path / "set", PHOTOS, TYPES, size=64, num_workers=1)
    run_dir = tmp_path / "run"
    digests = shard_digests.check_index_digests(run_dir, {"train": shard_set})
    record = json.loads((run_dir / shard_digests.RECORD_NAME).read_text())
    assert record["train"]["index_sha256"] == digests["train"] == shard_digests.index_digest(shard_set)
    assert record["train"]["num_samples"] == len(shard_set) == 3 * 2 * 5
    assert shard_digests.check_index_digests(run_dir, {"train": shard_set}) == digests  # a resume: same set

    index = shard_set.root / INDEX_NAME
    index.write_text(index.read_text() + "\n")  # still a valid index, but not the one the run started with
    with pytest.raises(ValueError, match=r"node 0 .*\(train\): index.json sha256 .* the run's record"):
        shard_digests.check_index_digests(run_dir, {"train": ShardSet(shard_set.root)})


@pytest.mark.dist
@pytest.mark.timeout(180)
def test_each_node_checks_its_own_copy_and_a_bad_one_names_node_and_shard(tmp_path):
    """Two gloo ranks, each a node with its own folder standing in for its disk: identical copies pass;
    a flipped byte in node 1's shard, or node 1 holding another set, stops both ranks with the same message."""
    built = photo_shard_set(tmp_path / "built" / "set", PHOTOS, TYPES, size=64, num_workers=1)
    other = photo_shard_set(tmp_path / "built" / "other", PHOTOS, TYPES, size=64, seed=5, num_workers=1)
    for case in ("same", "damaged-shard", "other-index"):
        _copy_set(built.root, tmp_path / "disk0" / case, tmp_path / "disk1" / case)
    damaged_shard = sorted(built.shards)[-1]
    assert len(built.shards) == 2
    _flip_a_byte(tmp_path / "disk1" / "damaged-shard" / damaged_shard)
    shutil.rmtree(tmp_path / "disk1" / "other-index")
    _copy_set(other.root, tmp_path / "disk1" / "other-index")

    run_ranks([sys.executable, "-m", "tests.node_copies_worker", str(tmp_path)], timeout_s=150)
    results = [json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in range(2)]
    assert results[0] == results[1], "the ranks disagree on what they found"
    outcome = results[0]
    assert outcome["same"] == "ok"
    assert outcome["damaged-shard"].startswith("node 1 (")
    assert f"disk1/damaged-shard/{damaged_shard}: checksum mismatch" in outcome["damaged-shard"]
    assert "node 0" not in outcome["damaged-shard"]
    assert "node 1 (" in outcome["other-index"] and "disk1/other-index (train)" in outcome["other-index"]
    assert "differs from node 0's copy" in outcome["other-index"]
    for disk in ("disk0", "disk1"):  # each node hashed its own copy and keeps its own record
        record = tmp_path / disk / "same" / ".verified-shards.json"
        assert set(json.loads(record.read_text())) == set(built.shards)
    assert not (tmp_path / "disk1" / "damaged-shard" / ".verified-shards.json").exists()


def test_the_node_rank_comes_from_the_launcher_or_from_the_ranks_per_node(monkeypatch):
    from dist_syndr import runtime

    for name in (*runtime.NODE_RANK_VARIABLES, "LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_SIZE", "4")  # DeepSpeed's launcher
    assert runtime.local_world_size() == 4 and runtime.node_rank_and_label()[0] == 1
    monkeypatch.setenv("SLURM_NODEID", "3")
    assert runtime.node_rank_and_label()[0] == 3
    monkeypatch.setenv("CROSS_RANK", "2")  # the launcher's own node rank wins over Slurm's
    node_rank, label = runtime.node_rank_and_label()
    assert node_rank == 2 and label.startswith("node 2 (")

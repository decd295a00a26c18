"""The format-2 index: header in index.json, per-sample columns memory-mapped from index-<xxh3>.columns."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dist_syndr.sharding import index_columns
from dist_syndr.sharding.index_columns import StringColumn
from dist_syndr.sharding.reindex import reindex
from dist_syndr.sharding.shard_set import FORMAT_VERSION, INDEX_NAME, ShardSet, write_index
from tests.conftest import PROJECT_ROOT, index_as_format_1, write_format_1
from tests.test_sharding import _make_images, _write


@pytest.fixture()
def written(tmp_path) -> ShardSet:
    _make_images(tmp_path / "src", 7)
    return _write(tmp_path / "src", tmp_path / "out", samples_per_shard=3)


def _columns_files(shard_set: ShardSet) -> list[str]:
    return sorted(path.name for path in shard_set.root.glob("index-*.columns"))


def _rewrite_columns(shard_set: ShardSet, columns: index_columns.IndexColumns) -> None:
    """Put ``columns`` under the set's header unchecked, as a damaged or hand-made index would be."""
    header = json.loads((shard_set.root / INDEX_NAME).read_text())
    header["columns"] = columns.write(shard_set.root)
    (shard_set.root / INDEX_NAME).write_text(json.dumps(header))


def test_a_written_set_is_format_2_and_reads_as_its_format_1_twin(written, tmp_path):
    assert written.format_version == FORMAT_VERSION == 2 and len(_columns_files(written)) == 1
    header = json.loads((written.root / INDEX_NAME).read_text())
    assert "samples" not in header and header["num_samples"] == len(written) == 7
    twin_root = tmp_path / "twin"
    shutil.copytree(written.root, twin_root)
    write_format_1(twin_root, index_as_format_1(twin_root))
    twin = ShardSet(twin_root)
    assert twin.format_version == 1 and not _columns_files(twin)
    assert list(twin.records()) == list(written.records())
    assert twin.keys() == written.keys() and written.keys() == [entry.key for entry in written.samples]
    np.testing.assert_array_equal(twin.scores(), written.scores())
    assert [written.read_image_bytes(key) for key in written.keys()] == [twin.read_image_bytes(k) for k in twin.keys()]


def test_samples_and_keys_are_views_over_the_columns(written):
    keys = written.keys()
    assert written.samples[-1].key == keys[-1] and [e.key for e in written.samples[1:3]] == keys[1:3]
    assert keys[4] in written.by_key and "test/nope" not in written.by_key and 5 not in written.by_key
    assert written.by_key[keys[4]] == written.entry(4) and len(written.by_key) == 7
    with pytest.raises(KeyError):
        written.by_key["test/nope"]
    with pytest.raises(IndexError):
        written.entry(7)
    assert written.keys_by_shard() == {
        name: [k for k in keys if written.by_key[k].shard == name] for name in written.shards
    }
    assert not written.is_upsampled().any()


def test_a_changed_or_missing_columns_file_is_refused(written):
    (path,) = written.root.glob("index-*.columns")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="changed after writing"):
        ShardSet(written.root)
    path.unlink()
    with pytest.raises(ValueError, match="columns file .* is missing"):
        ShardSet(written.root)


def test_columns_that_contradict_the_header_are_one_clear_error(written):
    columns = written.columns
    shard_ids = np.array(columns.shard_ids)
    shard_ids[2] = 99
    _rewrite_columns(written, dataclasses.replace(columns, shard_ids=shard_ids))
    with pytest.raises(ValueError, match=f"sample {written.keys()[2]} names shard #99, which the index does not list"):
        ShardSet(written.root)
    sizes = np.array(columns.member_sizes)
    sizes[1, columns.extensions.index("json")] = 10**9
    _rewrite_columns(written, dataclasses.replace(columns, member_sizes=sizes))
    with pytest.raises(ValueError, match=f"member {written.keys()[1]}.json .* lies outside shard"):
        ShardSet(written.root)
    scores = np.array(columns.scores)
    scores[0] = np.inf
    _rewrite_columns(written, dataclasses.replace(columns, scores=scores))
    with pytest.raises(ValueError, match="score that is not finite"):
        ShardSet(written.root)


def test_duplicate_keys_are_found_even_among_colliding_hashes(written):
    columns = written.columns
    colliding = dataclasses.replace(columns, key_hashes=np.zeros(len(columns), dtype=np.uint64))
    colliding.check(written.shard_names, [i.bytes for i in written.shards.values()], written.root)  # distinct keys
    keys = columns.keys.tolist()
    keys[5] = keys[2]
    duplicated = dataclasses.replace(colliding, keys=StringColumn.of(keys, "key"))
    with pytest.raises(ValueError, match=f"sample key '{keys[2]}' appears more than once"):
        duplicated.check(written.shard_names, [i.bytes for i in written.shards.values()], written.root)


def test_keys_with_a_newline_are_refused_when_writing():
    with pytest.raises(ValueError, match="holds a newline"):
        StringColumn.of(["fine", "not\nfine"], "sample key")


def test_a_new_index_leaves_the_old_readable_until_it_replaces_it(written):
    old = _columns_files(written)
    records = list(written.records())
    records[0]["score"] = 9.5
    columns = index_columns.from_records(records, written.shard_names, written.root)
    columns.write(written.root)  # a rewrite killed before index.json was replaced
    assert len(_columns_files(written)) == 2 and ShardSet(written.root).by_key[records[0]["key"]].score != 9.5
    header = json.loads((written.root / INDEX_NAME).read_text())
    write_index(written.root, config=header["config"], shards=header["shards"], records=records, skipped=[])
    assert ShardSet(written.root).by_key[records[0]["key"]].score == 9.5
    assert len(_columns_files(written)) == 1 and _columns_files(written) != old


def test_reindex_of_a_current_set_changes_nothing(written):
    before = {path.name: path.read_bytes() for path in written.root.iterdir()}
    assert reindex(written.root) == (False, 0, 0)
    assert {path.name: path.read_bytes() for path in written.root.iterdir()} == before


def test_describe_prints_the_set_and_exports_one_json_line_per_sample(written, tmp_path):
    out = tmp_path / "records.jsonl"
    command = [sys.executable, str(PROJECT_ROOT / "launchers" / "shard.py"), "--describe", str(written.root)]
    completed = subprocess.run(
        [*command, "--records", str(out)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == f"{written.root}: index format 2"
    assert "samples    7 (7 original)" in completed.stdout and "3 tars" in completed.stdout
    assert "checksums recorded" in completed.stdout and f"{out}: 7 sample records" in completed.stdout
    assert "pixels     digests recorded" in completed.stdout
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert exported == json.loads(json.dumps(list(written.records())))


def test_rows_of_finds_every_key_at_once_even_among_colliding_hashes(written):
    keys = written.keys()
    order = [keys[5], keys[0], keys[3]]
    assert written.columns.rows_of(order).tolist() == [5, 0, 3]
    colliding = dataclasses.replace(written.columns, key_hashes=np.zeros(len(keys), dtype=np.uint64))
    with pytest.raises(ValueError, match="'test/nope' is not in the shard set"):
        written.columns.rows_of([keys[1], "test/nope"])
    assert colliding.row_of(keys[4]) is None  # a real hash finds nothing in an all-zero table
    assert written.columns.rows_of([]).tolist() == []

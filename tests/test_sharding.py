"""Shard sets: lossless round trip, determinism, resume after SIGKILL, bad input, unsafe tars."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dist_syndr.imaging import decode as decode_image
from dist_syndr.imaging import pixel_digest
from dist_syndr.sharding import describe, writer
from dist_syndr.sharding.reindex import reindex
from dist_syndr.sharding.shard_set import ShardSet, scan_tar
from tests.conftest import PROJECT_ROOT, index_as_format_1, write_format_1
from tests.shard_worker import items_from_folder


def _make_images(folder: Path, count: int, size=(48, 40)) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = {}
    for i in range(count):
        array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        extension = ("png", "bmp", "jpg")[i % 3]
        path = folder / f"img{i:03d}.{extension}"
        Image.fromarray(array).save(path, quality=90) if extension == "jpg" else Image.fromarray(array).save(path)
        pixels[f"test/img{i:03d}"] = np.asarray(Image.open(path).convert("RGB"))
    return pixels


def _write(source: Path, out: Path, workers: int = 1, samples_per_shard: int = 4, on_error: str = "error") -> ShardSet:
    options = writer.WriteOptions(samples_per_shard=samples_per_shard, num_workers=workers, on_error=on_error)
    writer.write_shard_set(items_from_folder(source), out, options, {"test": True})
    return ShardSet(out)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_round_trip_is_bit_exact_with_metadata(tmp_path):
    pixels = _make_images(tmp_path / "src", 10)
    shard_set = _write(tmp_path / "src", tmp_path / "out")
    assert len(shard_set) == 10 and len(shard_set.shards) == 3
    shard_set.verify()
    for number, key in enumerate(sorted(pixels)):
        entry = shard_set.by_key[key]
        np.testing.assert_array_equal(decode_image(shard_set.read_image_bytes(key), name=key), pixels[key])
        assert entry.pixel_digest == pixel_digest(pixels[key])  # evaluation crops are drawn from it
        meta = shard_set.read_meta(key)
        assert meta["key"] == key and meta["score"] == entry.score == (number % 11) * 1.0
        assert (entry.ref, entry.distortion_type, entry.level) == (
            f"test/ref{number % 3}",
            1 + number % 25,
            1 + number % 5,
        )
    # JPEG and PNG sources keep their bytes; BMP becomes PNG.
    assert shard_set.read_image_bytes("test/img002") == (tmp_path / "src" / "img002.jpg").read_bytes()
    assert shard_set.read_image_bytes("test/img000") == (tmp_path / "src" / "img000.png").read_bytes()
    assert shard_set.by_key["test/img001"].image_extension == "png"


def test_output_is_deterministic_across_worker_counts(tmp_path):
    _make_images(tmp_path / "src", 13)
    _write(tmp_path / "src", tmp_path / "one", workers=1)
    _write(tmp_path / "src", tmp_path / "two", workers=2)
    assert _snapshot(tmp_path / "one") == _snapshot(tmp_path / "two")


def test_rerun_skips_finished_shards_and_rewrites_corrupt_ones(tmp_path):
    _make_images(tmp_path / "src", 12)
    _write(tmp_path / "src", tmp_path / "out")
    before = _snapshot(tmp_path / "out")
    shard = tmp_path / "out" / "shard-000001.tar"
    mtime = (tmp_path / "out" / "shard-000000.tar").stat().st_mtime_ns
    shard.write_bytes(shard.read_bytes()[:-700])  # truncate one shard
    with pytest.raises(ValueError, match="shard-000001.tar: checksum mismatch"):
        ShardSet(tmp_path / "out").verify()
    _write(tmp_path / "src", tmp_path / "out")
    assert _snapshot(tmp_path / "out") == before
    assert (tmp_path / "out" / "shard-000000.tar").stat().st_mtime_ns == mtime  # untouched


@pytest.mark.timeout(240)
def test_sigkill_mid_run_then_rerun_gives_identical_set(tmp_path):
    _make_images(tmp_path / "src", 120, size=(160, 120))
    reference = tmp_path / "reference"
    _write(tmp_path / "src", reference)
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "tests.shard_worker", str(tmp_path / "src"), str(killed), "2"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(killed.glob("shard-*.json"))) < 5:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list(killed.glob("shard-*.json")))
    assert 5 <= finished < 30, f"the kill should land mid-run ({finished} of 30 shards done)"
    assert not (killed / "index.json").exists()
    subprocess.run(command, cwd=PROJECT_ROOT, check=True, stderr=subprocess.DEVNULL, timeout=180)
    assert _snapshot(killed) == _snapshot(reference)


def test_unreadable_image_is_an_error_naming_the_file_or_a_listed_skip(tmp_path):
    _make_images(tmp_path / "src", 6)
    bad = tmp_path / "src" / "img001.bmp"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated BMP
    with pytest.raises(ValueError, match="img001.bmp"):
        _write(tmp_path / "src", tmp_path / "out")
    shard_set = _write(tmp_path / "src", tmp_path / "skip", on_error="skip")
    assert len(shard_set) == 5 and "test/img001" not in shard_set.by_key
    assert [s["key"] for s in shard_set.skipped] == ["test/img001"]
    assert "img001.bmp" in shard_set.skipped[0]["path"]


def test_the_summary_counts_written_planned_and_skipped_apart(tmp_path):
    from dist_syndr.sharding.plan import Plan, summary

    _make_images(tmp_path / "src", 6)
    items = items_from_folder(tmp_path / "src")
    bad = tmp_path / "src" / "img001.bmp"
    bad.write_bytes(bad.read_bytes()[:60])
    shard_set = _write(tmp_path / "src", tmp_path / "skip", on_error="skip")
    line = summary(tmp_path / "skip", shard_set, Plan(items, len(items), 0, []))
    assert "5 samples written (5 original, 0 upsampled) of 6 planned (6 original, 0 upsampled)" in line
    assert "1 skipped as unreadable" in line


def test_verify_decodes_every_image(tmp_path):
    _make_images(tmp_path / "src", 4)
    shard_set = _write(tmp_path / "src", tmp_path / "out", samples_per_shard=10)
    shard_set.verify(decode_images=True)
    entry = shard_set.by_key["test/img000"]
    offset, size = entry.members["png"]
    path = tmp_path / "out" / entry.shard
    data = bytearray(path.read_bytes())
    data[offset + 40 : offset + size - 20] = bytes(size - 60)  # zero the PNG body, keep sizes
    path.write_bytes(bytes(data))
    damaged = ShardSet(tmp_path / "out")
    with pytest.raises(ValueError, match="checksum mismatch"):
        damaged.verify()
    damaged.shards = {}  # skip the checksum step: the member's own checksum catches it before any decoder
    with pytest.raises(ValueError, match="sample test/img000: member test/img000.png fails its checksum"):
        damaged.verify(decode_images=True)
    older = np.zeros(len(damaged), dtype=bool)  # as in a set written before member checksums
    damaged.columns = dataclasses.replace(damaged.columns, has_checksums=older)
    with pytest.raises(ValueError, match="test/img000 in shard-000000.tar"):
        damaged.verify(decode_images=True)


def test_missing_file_is_an_error_naming_it(tmp_path):
    item = writer.WorkItem(key="test/gone", source_path=str(tmp_path / "gone.png"), score=1.0)
    with pytest.raises(ValueError, match="gone.png"):
        writer.write_shard_set([item], tmp_path / "out", writer.WriteOptions(num_workers=1), {})


@pytest.mark.parametrize("name", ["../escape.png", "/abs/path.png", "a/../../b.json"])
def test_unsafe_member_names_are_refused_on_read(tmp_path, name):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo(name)
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ValueError, match="unsafe member name"):
        scan_tar(path)


def test_index_with_unsafe_shard_name_is_refused(tmp_path):
    _make_images(tmp_path / "src", 3)
    _write(tmp_path / "src", tmp_path / "out")
    index = index_as_format_1(tmp_path / "out")
    index["samples"][0]["shard"] = "../outside.tar"
    write_format_1(tmp_path / "out", index)
    with pytest.raises(ValueError, match="unsafe shard name"):
        ShardSet(tmp_path / "out")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda index: index["samples"][1].update(shard="shard-000099.tar"), "names shard shard-000099.tar, which"),
        (lambda index: index["samples"][1]["members"]["json"].__setitem__(0, 10**9), "lies outside shard"),
        (lambda index: index["samples"][1].update(key=index["samples"][0]["key"]), "appears more than once"),
        (lambda index: index["samples"][1].update(score=float("nan")), "score that is not finite"),
    ],
)
def test_an_index_that_contradicts_itself_is_one_clear_error(tmp_path, edit, message):
    _make_images(tmp_path / "src", 3)
    _write(tmp_path / "src", tmp_path / "out")
    index = index_as_format_1(tmp_path / "out")
    edit(index)
    write_format_1(tmp_path / "out", index)
    with pytest.raises(ValueError, match=message):
        ShardSet(tmp_path / "out")


def test_a_sample_naming_an_unlisted_shard_stops_a_launcher_with_one_line(tmp_path):
    _make_images(tmp_path / "src", 3)
    _write(tmp_path / "src", tmp_path / "shards" / "set")
    index = index_as_format_1(tmp_path / "shards" / "set")
    index["samples"][2]["shard"] = "shard-000099.tar"
    write_format_1(tmp_path / "shards" / "set", index)
    preset = PROJECT_ROOT / "configs" / "shard" / "folder-weak.yaml"
    command = [sys.executable, str(PROJECT_ROOT / "launchers" / "shard.py"), "--config", str(preset), "--verify"]
    command += ["shard.name=set"]
    command += [f"shard.output_root={tmp_path / 'shards'}"]
    completed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    key = index["samples"][2]["key"]
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert f"sample {key} names shard shard-000099.tar" in completed.stderr.strip().splitlines()[-1]


def _index_files(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in out.iterdir() if path.suffix in (".json", ".columns")}


def _strip_member_checksums(out: Path) -> None:
    """Make a set look as sets written before member checksums, pixel digests and format 2 look."""
    write_format_1(out, index_as_format_1(out))
    for path in [out / "index.json", *out.glob("shard-*.json")]:
        record = json.loads(path.read_text())
        for sample in record["samples"]:
            del sample["xxh3_64"], sample["pixel_digest"]
        path.write_text(json.dumps(record, indent=1 if path.name == "index.json" else None, sort_keys=True))


def test_an_older_set_stays_readable_with_one_warning_and_reindex_restores_its_checksums(tmp_path, caplog):
    from dist_syndr.config import DataConfig
    from dist_syndr.loader import plan_epoch
    from dist_syndr.loader.torch_loader import TorchLoader

    _make_images(tmp_path / "src", 6, size=(40, 40))
    _write(tmp_path / "src", tmp_path / "out", samples_per_shard=4)
    written = _index_files(tmp_path / "out")
    _strip_member_checksums(tmp_path / "out")
    old = ShardSet(tmp_path / "out")
    assert not old.has_member_checksums and "digests for 0 of 6 samples" in describe.summary_text(old)
    config = DataConfig(batch_size=2, num_workers=1, crop=32)
    with caplog.at_level(logging.WARNING), TorchLoader(old, config, is_training=True) as loader:
        keys = [k for b in loader.batches(plan_epoch(old.keys(), config, seed=0, epoch=0).for_rank(0)) for k in b.keys]
    assert len(keys) == 6 and sum("written before member checksums" in m for m in caplog.messages) == 1
    command = [sys.executable, str(PROJECT_ROOT / "launchers" / "shard.py"), "--reindex", str(tmp_path / "out")]
    completed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "member checksums added for 6 samples, pixel digests for 6" in completed.stdout
    rewritten = _index_files(tmp_path / "out")
    assert rewritten == written and any(name.endswith(".columns") for name in written)  # as if written today
    assert ShardSet(tmp_path / "out").has_member_checksums and ShardSet(tmp_path / "out").has_pixel_digests
    shard = tmp_path / "out" / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    _strip_member_checksums(tmp_path / "out")
    with pytest.raises(ValueError, match="shard-000000.tar: missing or changed since it was indexed"):
        reindex(tmp_path / "out")


def test_a_full_disk_while_writing_a_shard_names_it_and_a_rerun_completes_the_same_set(tmp_path, monkeypatch):
    import errno

    from dist_syndr import files

    _make_images(tmp_path / "src", 10)
    reference = _snapshot(_write(tmp_path / "src", tmp_path / "reference").root)
    real_fsync = files.fsync_file

    def full_disk(path):
        if "shard-000001.tar" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_fsync(path)

    monkeypatch.setattr(files, "fsync_file", full_disk)
    with pytest.raises(OSError, match="shard-000001.tar"):
        _write(tmp_path / "src", tmp_path / "out")
    out = tmp_path / "out"
    assert not (out / "shard-000001.tar").exists() and not (out / "index.json").exists()
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    monkeypatch.setattr(files, "fsync_file", real_fsync)
    assert _snapshot(_write(tmp_path / "src", out).root) == reference


def test_duplicate_keys_are_refused(tmp_path):
    item = writer.WorkItem(key="test/a", source_path="x.png")
    with pytest.raises(ValueError, match="duplicate"):
        writer.write_shard_set([item, item], tmp_path / "out", writer.WriteOptions(), {})


def test_missing_index_names_the_folder(tmp_path):
    with pytest.raises(ValueError, match="no index.json"):
        ShardSet(tmp_path)


def test_webdataset_reads_the_shards(tmp_path):
    import webdataset as wds

    pixels = _make_images(tmp_path / "src", 5)
    shard_set = _write(tmp_path / "src", tmp_path / "out", samples_per_shard=10)
    dataset = wds.WebDataset(str(tmp_path / "out" / "shard-000000.tar"), shardshuffle=False).decode("rgb8")
    seen = {}
    for sample in dataset:
        image = sample.get("png", sample.get("jpg"))
        seen[sample["__key__"]] = image
        assert sample["json"]["key"] == sample["__key__"]
    assert set(seen) == set(shard_set.keys())
    np.testing.assert_array_equal(seen["test/img001"], pixels["test/img001"])

"""Engine items in batches: the per-image path's bytes on the CPU, whole references per batch, overlap, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dist_syndr.pools.embedded import photo_crops
from dist_syndr.sharding import engine_batches, writer
from dist_syndr.sharding.shard_set import LOCK_NAME, ShardSet


def _references(folder: Path, count: int = 2, width: int = 80, height: int = 64) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, crop in enumerate(photo_crops(np.random.default_rng(5), count, width, height)):
        paths.append(folder / f"photo{number}.png")
        Image.fromarray(crop).save(paths[-1])
    return paths


def _engine_item(reference: Path, distortion_type: int, level: int, *, is_weak: bool = True, score=None):
    key = f"pool/{reference.stem}_{distortion_type:02d}_{level:02d}"
    meta = {"ref": f"pool/{reference.stem}", "type": distortion_type, "level": level, "origin": "distorted"}
    return writer.WorkItem(
        key=key,
        ref_path=str(reference),
        is_engine=True,
        seed=writer.item_seed(0, key),
        score=score,
        wants_weak_label=is_weak,
        meta=meta,
    )


def _mixed_items(references: list[Path], other: Path) -> list[writer.WorkItem]:
    """Weak engine items of every reference, two chains, engine items with known scores and a stored file."""
    items = [_engine_item(r, t, v) for r in references for t in (1, 11, 19) for v in (1, 4)]
    for number, chain in enumerate(([[3, 2], [10, 4]], [[16, 1], [21, 3], [25, 5]])):
        key = f"test/{references[0].stem}_mix{number:02d}"
        meta = {
            "ref": f"test/{references[0].stem}",
            "type": None,
            "level": None,
            "chain": chain,
            "origin": "composite",
        }
        items.append(
            writer.WorkItem(
                key=key,
                ref_path=str(references[0]),
                is_engine=True,
                seed=writer.item_seed(0, key),
                wants_weak_label=True,
                meta=meta,
            )
        )
    items += [_engine_item(references[1], t, 3, is_weak=False, score=float(t)) for t in (2, 7)]
    items.append(writer.WorkItem(key="stored/other", source_path=str(other), score=4.0))
    return items


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a set but its lock (which names the job that held it)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != LOCK_NAME}


def _write(items, out: Path, **options) -> dict[str, bytes]:
    writer.write_shard_set(items, out, writer.WriteOptions(samples_per_shard=5, **options), {"test": True})
    return _snapshot(out)


def test_batches_keep_references_together_in_plan_order(tmp_path):
    a, b, c = (tmp_path / f"{name}.png" for name in "abc")
    items = [_engine_item(a, t, 1) for t in range(1, 6)] + [_engine_item(b, t, 1) for t in range(1, 4)]
    items += [writer.WorkItem(key="stored/x", source_path=str(a))] + [_engine_item(c, t, 2) for t in range(1, 13)]
    batches = engine_batches.batches_of(7, items, 8)
    assert all(batch.shard == 7 for batch in batches)
    assert [[Path(i.ref_path).stem for i in batch.items] for batch in batches] == [
        ["a"] * 5 + ["b"] * 3,  # two whole references fill one batch
        ["c"] * 8,  # a reference longer than a batch is split, in order
        ["c"] * 4,
    ]
    assert [i.key for batch in batches for i in batch.items] == [i.key for i in items if i.is_engine]


def _same_everywhere(items, tmp_path, monkeypatch) -> dict[str, bytes]:
    """The set written by the per-image path; the batched step must write the same bytes every way."""
    expected = _write(items, tmp_path / "per-image", num_workers=1, images_per_engine_batch=0)
    assert _write(items, tmp_path / "batched-1", num_workers=1, images_per_engine_batch=4) == expected
    assert _write(items, tmp_path / "batched-2", num_workers=2) == expected
    # The GPU arrangement (this process makes the batches, workers encode them) with the device set to the CPU.
    monkeypatch.setattr(engine_batches, "_is_made_in_workers", lambda device: False)
    assert _write(items, tmp_path / "device-route", num_workers=2, images_per_engine_batch=3) == expected
    monkeypatch.undo()
    return expected


@pytest.mark.timeout(300)
def test_batched_step_writes_the_per_image_paths_bytes_and_resumes(tmp_path, monkeypatch):
    references = _references(tmp_path / "pristine")
    other = tmp_path / "other.bmp"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(other)
    items = _mixed_items(references, other)
    expected = _same_everywhere(items, tmp_path, monkeypatch)
    shard_set = ShardSet(tmp_path / "batched-2")
    shard_set.verify(decode_images=True)
    assert len(shard_set) == len(items) and len(shard_set.shards) == 4
    weak = [shard_set.read_meta(i.key)["weak_label"] for i in items if i.wants_weak_label]
    assert all(set(label["metrics"]) == {"gmsd", "fsim"} for label in weak)
    assert len({label["quality"] for label in weak}) > 10  # real labels, one per image
    for route, is_made_in_workers in (("batched-2", True), ("device-route", False)):
        out = tmp_path / route
        monkeypatch.setattr(engine_batches, "_is_made_in_workers", lambda device, answer=is_made_in_workers: answer)
        kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p.name != "shard-000001.tar"}
        (out / "shard-000001.tar").unlink()
        (out / "index.json").unlink()
        assert _write(items, out, num_workers=2) == expected, route  # a resumed step rewrites the missing shard
        assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p.name in kept} == kept, route


@pytest.mark.gpu
@pytest.mark.timeout(300)
def test_on_a_gpu_the_step_repeats_itself_and_stays_near_the_cpus_labels(tmp_path):
    references = _references(tmp_path / "pristine", width=200, height=176)
    items = [_engine_item(r, t, v) for r in references for t in (1, 3, 10, 11, 16) for v in (1, 3, 5)]
    on_cpu = _write(items, tmp_path / "cpu", num_workers=2)
    on_gpu = _write(items, tmp_path / "gpu", num_workers=2, device="cuda")
    assert _write(items, tmp_path / "gpu-again", num_workers=2, device="cuda") == on_gpu
    assert on_gpu.keys() == on_cpu.keys()
    cpu, gpu = ShardSet(tmp_path / "cpu"), ShardSet(tmp_path / "gpu")
    for item in items:
        expected, got = cpu.read_meta(item.key)["weak_label"], gpu.read_meta(item.key)["weak_label"]
        assert abs(expected["quality"] - got["quality"]) < 0.02, item.key  # pixels may move by a level or two


@pytest.mark.timeout(300)
def test_a_failing_item_is_skipped_or_raised_as_the_per_image_path_does(tmp_path):
    references = _references(tmp_path / "pristine", count=1)
    missing = tmp_path / "pristine" / "gone.png"
    tiny = tmp_path / "pristine" / "tiny.png"
    Image.fromarray(np.full((30, 40, 3), 60, np.uint8)).save(tiny)  # distorts, but too small for weak labels
    items = [_engine_item(references[0], 1, v) for v in (1, 2)] + [_engine_item(missing, 1, 1)]
    items += [_engine_item(tiny, 11, 2), _engine_item(tiny, 11, 3, is_weak=False, score=3.0)]
    per_image = _write(items, tmp_path / "per-image", num_workers=1, images_per_engine_batch=0, on_error="skip")
    assert _write(items, tmp_path / "batched", num_workers=2, on_error="skip") == per_image
    skipped = ShardSet(tmp_path / "batched").skipped
    assert [s["key"] for s in skipped] == ["pool/gone_01_01", "pool/tiny_11_02"]
    assert "gone.png" in skipped[0]["reason"] and "41 px" in skipped[1]["reason"]
    with pytest.raises(ValueError, match="gone.png"):
        _write(items, tmp_path / "raised", num_workers=2, on_error="error")


def test_the_device_route_encodes_a_batch_while_making_the_next(monkeypatch):
    import torch

    events = []

    def fake_make(items, device, is_skipping, max_pixels):
        events.append(f"make {items[0]}")
        return {}

    monkeypatch.setattr(engine_batches, "make", fake_make)
    batches = [engine_batches.Batch(0, (number,)) for number in range(5)]
    options = writer.WriteOptions(num_workers=1)
    engine_batches._make_on_device(
        batches, torch.device("cpu"), options, False, lambda batch, made: events.append(f"collect {batch.items[0]}")
    )
    # One encoding worker, at most two batches waiting: batches 1 and 2 are made while batch 0 is encoded.
    assert events == [
        "make 0",
        "make 1",
        "make 2",
        "collect 0",
        "make 3",
        "collect 1",
        "make 4",
        "collect 2",
        "collect 3",
        "collect 4",
    ]

"""Loaders over real PNG/JPEG shard sets: DALI (CPU here, mixed decoder on a GPU) against the torch
fallback and a PIL/numpy reference; crop geometry; errors that name the shard and the key."""

from __future__ import annotations

import collections
import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dist_syndr.config import DataConfig
from dist_syndr.features.preprocess import IMAGENET_STD_255, normalise
from dist_syndr.imaging import decode, evaluation_anchors, image_size, pixel_digest
from dist_syndr.loader import make_loader, plan_epoch, verify_shard_set
from dist_syndr.loader.crops import crop_anchors, cut
from dist_syndr.loader.dali_pipeline import DaliLoader
from dist_syndr.loader.torch_loader import TorchLoader
from dist_syndr.sharding import writer
from dist_syndr.sharding.shard_set import ShardSet
from tests.conftest import index_as_format_1, write_format_1

CROP = 224
SEED = 11


def photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    # Smooth gradients plus texture: JPEG-compressible like a photograph, not pure noise.
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1)
    return np.clip(base + rng.integers(-40, 40, size=(height, width, 3)), 0, 255).astype(np.uint8)


def save_as(image, path: Path, kind: str) -> None:
    """``image`` saved as a JPEG (quality 90), a grayscale or palette PNG, or an RGB PNG (``kind`` "png")."""
    if kind == "jpeg":
        image.save(path, quality=90)
    elif kind == "gray":
        image.convert("L").save(path)
    elif kind == "palette":
        image.convert("P").save(path)
    else:
        image.save(path)


def _write_set(folder: Path, images: list[tuple[str, np.ndarray, str]], samples_per_shard: int = 4) -> ShardSet:
    # (name, pixels, format) images, written to disk and sharded by the real sharding step.
    source = folder / "src"
    source.mkdir(parents=True)
    items = []
    for number, (name, pixels, kind) in enumerate(images):
        path = source / f"{name}.{'jpg' if kind == 'jpeg' else 'png'}"
        save_as(Image.fromarray(pixels), path, kind)
        items.append(writer.WorkItem(key=f"set/{name}", source_path=str(path), score=float(number) / 2))
    options = writer.WriteOptions(samples_per_shard=samples_per_shard, num_workers=1)
    writer.write_shard_set(items, folder / "shards", options, {"test": True})
    return ShardSet(folder / "shards")


def _images(count: int, seed: int = 0, extra: tuple = ()) -> list[tuple[str, np.ndarray, str]]:
    rng = np.random.default_rng(seed)
    kinds = ("png", "jpeg", "png", "gray", "jpeg", "palette")
    images = []
    for i in range(count):
        width, height = CROP + int(rng.integers(0, 70)), CROP + int(rng.integers(0, 50))
        images.append((f"img{i:03d}", photo(rng, width, height), kinds[i % len(kinds)]))
    return images + list(extra)


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> ShardSet:
    exact = ("exact", photo(np.random.default_rng(5), CROP, CROP), "png")  # W == H == crop: one possible anchor
    return _write_set(tmp_path_factory.mktemp("loader"), _images(17, extra=(exact,)))


def _config(**overrides) -> DataConfig:
    return DataConfig(**({"batch_size": 4, "num_workers": 2, "crop": CROP, "verify_checksums": "off"} | overrides))


def _collect(loader, rank_plan) -> tuple[list, dict[str, torch.Tensor]]:
    batches = list(loader.batches(rank_plan))
    crops = {}
    for batch in batches:
        images = batch.images.cpu().reshape(len(batch), batch.num_crops, 3, CROP, CROP)
        for row, key in enumerate(batch.keys):
            crops[key] = images[row]
    return batches, crops


def _reference(
    shard_set: ShardSet, key: str, *, epoch: int, num_crops: int = 1, mode: str = "random", is_training: bool = True
) -> torch.Tensor:
    # PIL decode of the whole image, numpy slice at the hashed anchors (training: of the key and epoch;
    # evaluation: of the pixels' digest), numpy normalisation.
    pixels = decode(shard_set.read_image_bytes(key), name=key)
    height, width = pixels.shape[:2]
    if is_training:
        anchors = crop_anchors(key, width, height, CROP, seed=SEED, epoch=epoch, num_crops=num_crops, mode=mode)
    else:
        assert shard_set.by_key[key].pixel_digest == pixel_digest(pixels)  # the index records the pixels' digest
        anchors = evaluation_anchors(
            pixel_digest(pixels), width, height, CROP, seed=SEED, num_crops=num_crops, mode=mode
        )
    return torch.from_numpy(np.stack([normalise(cut(pixels, anchor, CROP)) for anchor in anchors]))


def _assert_pixels_match(
    shard_set: ShardSet, key: str, got: torch.Tensor, want: torch.Tensor, jpeg_max_levels: float = 0
) -> None:
    if shard_set.by_key[key].image_extension == "png":
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # lossless: bit-exact up to float rounding
        return
    std = torch.tensor(IMAGENET_STD_255).view(1, 3, 1, 1)
    # JPEG: the CPU decoders are one libjpeg-turbo (exact); the GPU's nvJPEG may differ by a few grey levels
    levels = ((got - want) * std).abs()
    assert float(levels.max()) <= jpeg_max_levels and float(levels.mean()) <= jpeg_max_levels / 8, key


# ---------------------------------------------------------------------------
# crop geometry


def test_image_size_reads_png_and_jpeg_headers(tmp_path):
    pixels = photo(np.random.default_rng(1), 301, 233)
    for options in ({"format": "PNG"}, {"format": "JPEG"}, {"format": "JPEG", "progressive": True}):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, **options)
        assert image_size(buffer.getvalue()) == (301, 233)
    with pytest.raises(ValueError, match="not a readable image"):
        image_size(b"garbage bytes, no image here")
    with pytest.raises(ValueError, match="JPEG"):
        image_size(b"\xff\xd8\xff\xe0\x00\x10JFIF")


def test_anchors_are_reproducible_inside_the_image_and_spread():
    seen_x = set()
    for width, height in ((224, 224), (225, 300), (512, 384), (1024, 768)):
        for epoch in range(3):
            for key in ("a", "b/c", "d.e"):
                anchors = crop_anchors(key, width, height, CROP, seed=SEED, epoch=epoch, num_crops=5, mode="random")
                again = crop_anchors(key, width, height, CROP, seed=SEED, epoch=epoch, num_crops=5, mode="random")
                np.testing.assert_array_equal(anchors, again)
                assert anchors.dtype == np.int32 and anchors.shape == (5, 2)
                assert (
                    (anchors >= 0).all()
                    and (anchors[:, 0] <= width - CROP).all()
                    and (anchors[:, 1] <= height - CROP).all()
                )
                if width == 1024:
                    seen_x.update(anchors[:, 0].tolist())
    assert len(seen_x) > 30  # draws differ by key, epoch and crop index
    centre = crop_anchors("a", 512, 384, CROP, seed=0, epoch=0, num_crops=1, mode="centre")
    np.testing.assert_array_equal(centre, [[144, 80]])
    with pytest.raises(ValueError, match="smaller than the 224x224 crop"):
        crop_anchors("a", 223, 400, CROP, seed=0, epoch=0, num_crops=1, mode="random")


# ---------------------------------------------------------------------------
# DALI and torch deliver the same planned samples and pixels


def test_dali_and_torch_agree_with_each_other_and_the_pil_reference(shard_set):
    config = _config()
    kept = shard_set.keys()[1:]
    plan = plan_epoch(shard_set.keys(), config, seed=SEED, epoch=3, world_size=2, kept_keys=kept)
    delivered = {"dali": collections.Counter(), "torch": collections.Counter()}
    with (
        DaliLoader(shard_set, config, is_training=True) as dali,
        TorchLoader(shard_set, config, is_training=True) as fallback,
    ):
        for rank in range(2):
            rank_plan = plan.for_rank(rank)
            dali_batches, dali_crops = _collect(dali, rank_plan)
            torch_batches, torch_crops = _collect(fallback, rank_plan)
            assert len(dali_batches) == len(torch_batches) == plan.num_batches
            assert (
                [b.keys for b in dali_batches]
                == [b.keys for b in torch_batches]
                == [
                    list(rank_plan.keys[i * rank_plan.batch_size : (i + 1) * rank_plan.batch_size])
                    for i in range(plan.num_batches)
                ]
            )
            for batch in dali_batches:
                assert batch.images.shape == (len(batch), 3, CROP, CROP) and batch.images.dtype == torch.float32
                expected = [shard_set.by_key[key].score for key in batch.keys]
                np.testing.assert_allclose(batch.scores.numpy(), expected)
            for key, crop in dali_crops.items():
                reference = _reference(shard_set, key, epoch=3)
                _assert_pixels_match(shard_set, key, crop, reference)
                _assert_pixels_match(shard_set, key, torch_crops[key], reference)
            delivered["dali"].update(key for batch in dali_batches for key in batch.keys)
            delivered["torch"].update(key for batch in torch_batches for key in batch.keys)
    assert delivered["dali"] == delivered["torch"] == collections.Counter(plan.keys)
    assert max(delivered["dali"].values()) == 1  # ranks are disjoint


def test_dali_pipeline_serves_changing_plans_resumes_and_survives_an_abandoned_epoch(shard_set):
    config = _config()
    keys = shard_set.keys()
    with DaliLoader(shard_set, config, is_training=True) as dali:
        for epoch, kept in enumerate((keys, keys[::2], keys[1:12])):
            plan = plan_epoch(keys, config, seed=SEED, epoch=epoch, kept_keys=kept)
            got = [key for batch in dali.batches(plan.for_rank(0)) for key in batch.keys]
            assert got == list(plan.keys)
        plan = plan_epoch(keys, config, seed=SEED, epoch=5)
        batch = next(iter(dali.batches(plan.for_rank(0))))  # abandon after one batch
        resumed = plan_epoch(keys, config, seed=SEED, epoch=5, start=config.batch_size)
        got = [key for batch in dali.batches(resumed.for_rank(0)) for key in batch.keys]
        assert got == list(plan.keys[config.batch_size :]) == list(resumed.keys)
        assert batch.keys == list(plan.keys[: config.batch_size])


@pytest.mark.timeout(300)
def test_dali_cpu_workers_spawn_once_the_cuda_driver_is_initialised(shard_set, monkeypatch):
    """On a GPU machine the driver is initialised before the loader starts (torch.cuda.is_available(),
    faiss.get_num_gpus()): DALI then refuses to fork. With its check reporting an initialised driver,
    the CPU loader spawns its workers and yields exactly what forked workers yield."""
    from nvidia.dali import backend

    from dist_syndr import runtime

    config = _config()
    plan = plan_epoch(shard_set.keys(), config, seed=SEED, epoch=2)
    assert runtime.worker_start_method() == "fork"  # no CUDA here: forking is safe
    with DaliLoader(shard_set, config, is_training=True) as forked:
        forked_batches, forked_crops = _collect(forked, plan.for_rank(0))

    monkeypatch.setattr(backend, "IsDriverInitialized", lambda: True)
    assert runtime.worker_start_method() == "spawn"
    with DaliLoader(shard_set, config, is_training=True) as spawned:
        spawned_batches, spawned_crops = _collect(spawned, plan.for_rank(0))
    assert [b.keys for b in spawned_batches] == [b.keys for b in forked_batches] and spawned_crops.keys()
    for key, crops in forked_crops.items():
        assert torch.equal(spawned_crops[key], crops), key


@pytest.mark.parametrize("mode", ["random", "centre"])
def test_evaluation_crops_are_grouped_per_image(shard_set, mode):
    config = _config(eval_crops=3, eval_crop_mode=mode, batch_size=5)
    num_crops = 3 if mode == "random" else 1
    plan = plan_epoch(shard_set.keys(), config, seed=SEED, epoch=0, is_training=False)
    with (
        DaliLoader(shard_set, config, is_training=False) as dali,
        TorchLoader(shard_set, config, is_training=False) as fallback,
    ):
        dali_batches, dali_crops = _collect(dali, plan.for_rank(0))
        _, torch_crops = _collect(fallback, plan.for_rank(0))
    assert [key for batch in dali_batches for key in batch.keys] == shard_set.keys()
    last = dali_batches[-1]
    assert len(last) == len(shard_set) % 5 or len(last) == 5  # evaluation keeps the short last batch
    first = dali_batches[0]
    assert first.images.shape == (5 * num_crops, 3, CROP, CROP)
    per_image = first.mean_over_crops(first.images.cpu().mean(dim=(1, 2, 3)))
    assert per_image.shape == (5,)
    for key, crops in dali_crops.items():
        reference = _reference(shard_set, key, epoch=0, num_crops=num_crops, mode=mode, is_training=False)
        _assert_pixels_match(shard_set, key, crops, reference)
        _assert_pixels_match(shard_set, key, torch_crops[key], reference)


@pytest.mark.gpu
@pytest.mark.dali
@pytest.mark.parametrize("is_training", [True, False])
def test_mixed_decoder_on_the_gpu_matches_the_reference(shard_set, is_training):
    config = _config(eval_crops=3)
    num_crops = 1 if is_training else 3
    plan = plan_epoch(shard_set.keys(), config, seed=SEED, epoch=1, is_training=is_training)
    with DaliLoader(shard_set, config, is_training=is_training, device="gpu", device_id=0) as gpu:
        gpu_batches, gpu_crops = _collect(gpu, plan.for_rank(0))
    assert gpu_batches[0].images.is_cuda and gpu_batches[0].images.shape[0] == config.batch_size * num_crops
    assert [key for b in gpu_batches for key in b.keys] == list(plan.keys)
    for key, crops in gpu_crops.items():
        reference = _reference(shard_set, key, epoch=1, num_crops=num_crops, is_training=is_training)
        _assert_pixels_match(shard_set, key, crops, reference, jpeg_max_levels=8)


# ---------------------------------------------------------------------------
# errors name the shard and the key; on_error=skip counts instead


def _corrupt_member(shard_set: ShardSet, key: str) -> None:
    # Damages the coded data but not the header: only a decoder can notice.
    entry = shard_set.by_key[key]
    offset, size = entry.members[entry.image_extension]
    data = shard_set.read_image_bytes(key)
    if entry.image_extension == "png":
        where, garbage = size // 2, b"\x07" * 200  # inside IDAT: zlib and CRC errors
    else:
        where, garbage = data.index(b"\xff\xc4") + 5, b"\xff" * 16  # Huffman table counts: a bogus table
    with (shard_set.root / entry.shard).open("r+b") as handle:
        handle.seek(offset + where)
        handle.write(garbage)


@pytest.fixture
def damaged_set(tmp_path) -> ShardSet:
    rng = np.random.default_rng(9)
    small = ("small", photo(rng, 200, 300), "png")
    shard_set = _write_set(tmp_path, _images(10, seed=3, extra=(small,)))
    _corrupt_member(shard_set, "set/img002")  # PNG: libpng and PIL both reject it
    _corrupt_member(shard_set, "set/img007")  # JPEG
    return shard_set


@pytest.mark.parametrize("loader_class", [DaliLoader, TorchLoader])
def test_corrupt_or_too_small_members_are_errors_naming_shard_and_key(damaged_set, loader_class):
    config = _config()
    keys = damaged_set.keys()
    cases = {
        "set/img002": "image bytes are corrupt",
        "set/img007": "image bytes are corrupt",
        "set/small": "image is 200x300, smaller than the 224x224 crop",
    }
    good = [key for key in keys if key not in ("set/img002", "set/img007", "set/small")]
    for bad_key, reason in cases.items():
        plan = plan_epoch(keys, config, seed=SEED, epoch=0, kept_keys=good[:7] + [bad_key])
        shard = damaged_set.by_key[bad_key].shard
        with loader_class(damaged_set, config, is_training=True) as loader:
            with pytest.raises(ValueError, match=f"{shard}: sample {bad_key}: {reason}"):
                list(loader.batches(plan.for_rank(0)))


@pytest.mark.parametrize("loader_class", [DaliLoader, TorchLoader])
def test_skip_mode_drops_bad_samples_and_counts_them(damaged_set, loader_class, caplog):
    config = _config(on_error="skip")
    bad = {"set/img002", "set/img007", "set/small"}
    with caplog.at_level(logging.WARNING), loader_class(damaged_set, config, is_training=True) as loader:
        num_expected_skips, ever_planned_bad = 0, set()
        for epoch in (2, 3):  # the second epoch runs on the pipeline rebuilt after the first one's failures
            plan = plan_epoch(damaged_set.keys(), config, seed=SEED, epoch=epoch)
            batches = list(loader.batches(plan.for_rank(0)))
            planned_bad = bad & set(plan.keys)
            num_expected_skips += len(planned_bad)
            ever_planned_bad |= planned_bad
            assert loader.num_skipped == num_expected_skips
            assert len(batches) == plan.num_batches  # batch count unchanged: collectives stay in step
            delivered = [key for batch in batches for key in batch.keys]
            assert sorted(delivered) == sorted(set(plan.keys) - bad)
            assert {key for batch in batches for key in batch.skipped_keys} == planned_bad
            for batch in batches:
                assert batch.images.shape[0] == len(batch.keys) == batch.scores.shape[0]
    assert ever_planned_bad and all(any(key in message for message in caplog.messages) for key in ever_planned_bad)


def _flip_byte(shard_set: ShardSet, key: str, extension: str) -> None:
    """One byte flipped in the middle of a member: sizes and headers intact, the pixels (or text) wrong."""
    offset, size = shard_set.by_key[key].members[extension]
    path = shard_set.root / shard_set.by_key[key].shard
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def flipped_set(tmp_path) -> ShardSet:
    shard_set = _write_set(tmp_path, _images(12, seed=4))
    _flip_byte(shard_set, "set/img000", "png")
    _flip_byte(shard_set, "set/img001", "jpg")
    _flip_byte(shard_set, "set/img002", "json")
    return ShardSet(shard_set.root)


FLIPPED = {"set/img000": "png", "set/img001": "jpg", "set/img002": "json"}


@pytest.mark.parametrize("loader_class", [DaliLoader, TorchLoader])
def test_a_flipped_byte_in_any_member_stops_the_read_naming_sample_and_member(flipped_set, loader_class):
    """A JPEG with a flipped byte still decodes, to wrong pixels: the member checksum stops it first."""
    config = _config(verify_checksums="members")
    keys = flipped_set.keys()
    good = [key for key in keys if key not in FLIPPED]
    for key, extension in FLIPPED.items():
        plan = plan_epoch(keys, config, seed=SEED, epoch=0, kept_keys=good[:7] + [key])
        shard = flipped_set.by_key[key].shard
        message = f"{shard}: sample {key}: member {key}.{extension} fails its checksum"
        with loader_class(flipped_set, config, is_training=True) as loader:
            with pytest.raises(ValueError, match=message):
                list(loader.batches(plan.for_rank(0)))


@pytest.mark.parametrize("loader_class", [DaliLoader, TorchLoader])
def test_flipped_members_are_skipped_and_counted_under_skip(flipped_set, loader_class):
    config = _config(verify_checksums="members", on_error="skip")
    plan = plan_epoch(flipped_set.keys(), config, seed=SEED, epoch=1, kept_keys=flipped_set.keys())
    with loader_class(flipped_set, config, is_training=True) as loader:
        batches = list(loader.batches(plan.for_rank(0)))
        assert loader.num_skipped == len(set(FLIPPED) & set(plan.keys)) > 0
    assert len(batches) == plan.num_batches
    delivered = {key for batch in batches for key in batch.keys}
    assert not delivered & set(FLIPPED) and delivered == set(plan.keys) - set(FLIPPED)


def test_checksum_mismatch_names_the_shard_and_the_broken_sample_or_excludes_the_shard(damaged_set, caplog):
    shard = damaged_set.by_key["set/img002"].shard
    with pytest.raises(ValueError, match=f"{shard}: checksum mismatch .*set/img002"):
        verify_shard_set(damaged_set, _config(verify_checksums="shards"))
    with caplog.at_level(logging.WARNING):
        excluded = verify_shard_set(damaged_set, _config(verify_checksums="shards", on_error="skip"))
    damaged_shards = {damaged_set.by_key["set/img002"].shard, damaged_set.by_key["set/img007"].shard}
    assert excluded == {e.key for e in damaged_set.samples if e.shard in damaged_shards}
    assert any(shard in message and "skipping" in message for message in caplog.messages)
    plan = plan_epoch(damaged_set.keys(), _config(drop_last=False), seed=0, epoch=0, excluded_keys=excluded)
    assert not set(plan.keys) & excluded


def test_shards_mode_hashes_each_shard_once_and_names_a_changed_one(tmp_path, monkeypatch, caplog):
    from dist_syndr.loader import checks

    shard_set = _write_set(tmp_path, _images(8, seed=2))
    hashed = []
    real = checks.sha256_file
    monkeypatch.setattr(checks, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    config = _config(verify_checksums="shards")
    checks.verify_shards_once(shard_set, _config(verify_checksums="members"))  # members mode: no whole-shard pass
    assert hashed == []
    checks.verify_shards_once(shard_set, config)
    assert sorted(hashed) == sorted(shard_set.shards) and (shard_set.root / checks.RECORD_NAME).is_file()
    hashed.clear()
    checks.verify_shards_once(ShardSet(shard_set.root), config)  # unchanged since verified: nothing hashed
    assert hashed == []
    _flip_byte(shard_set, "set/img005", "png" if shard_set.by_key["set/img005"].image_extension == "png" else "jpg")
    shard = shard_set.by_key["set/img005"].shard
    with pytest.raises(ValueError, match=f"{shard}: checksum mismatch"):
        checks.verify_shards_once(ShardSet(shard_set.root), config)
    assert hashed == [shard]  # only the changed shard is hashed again
    with caplog.at_level(logging.WARNING):
        checks.verify_shards_once(ShardSet(shard_set.root), _config(verify_checksums="shards", on_error="skip"))
    assert any(shard in message for message in caplog.messages)


def test_verification_passes_a_clean_set_and_catches_an_edited_index(tmp_path):
    shard_set = _write_set(tmp_path, _images(5, seed=4))
    assert verify_shard_set(shard_set, _config(verify_checksums="shards")) == frozenset()
    index = index_as_format_1(shard_set.root)
    record = index["samples"][3]
    extension = "png" if "png" in record["members"] else "jpg"
    record["members"][extension][0] += 512
    write_format_1(shard_set.root, index)
    with pytest.raises(ValueError, match=f"{record['shard']}: member offsets of sample {record['key']} do not match"):
        verify_shard_set(ShardSet(shard_set.root), _config(verify_checksums="shards"))


# ---------------------------------------------------------------------------
# choosing the loader


def test_make_loader_follows_config_and_runtime(shard_set):
    assert isinstance(make_loader(shard_set, _config(loader="torch"), is_training=True), TorchLoader)
    assert isinstance(make_loader(shard_set, _config(loader="auto"), is_training=True, dali="off"), TorchLoader)
    with pytest.raises(ValueError, match="data.loader=dali"):
        make_loader(shard_set, _config(loader="dali"), is_training=True, dali="off")
    loader = make_loader(shard_set, _config(loader="auto"), is_training=True, dali="cpu")
    assert isinstance(loader, DaliLoader) and loader.device == "cpu"
    loader.close()

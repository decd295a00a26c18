"""``shard.image_format: lz4`` (sharding/member_format.py) end to end: the same pixels and digests as a PNG set
through the writer, both loaders and every reader; checksums and the pixel cap before inflating; describe,
verify, reindex, resume; what plain tar readers see."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dist_syndr.config import DataConfig
from dist_syndr.imaging import decode, lz4_pixels, pixel_digest
from dist_syndr.loader import plan_epoch
from dist_syndr.loader.dali_pipeline import DaliLoader
from dist_syndr.loader.members import MemberReader, SampleError, SampleTable
from dist_syndr.loader.torch_loader import TorchLoader
from dist_syndr.sharding import describe, member_format, writer
from dist_syndr.sharding.reindex import reindex
from dist_syndr.sharding.shard_set import ShardSet
from tests.conftest import PROJECT_ROOT, index_as_format_1, write_format_1
from tests.test_loader import photo, save_as

CROP = 32
SEED = 5
# name, (width, height), how the source file is written: odd sizes, every path the writer takes
SOURCES = [
    ("png", (37, 45), "png"),
    ("jpeg", (64, 33), "jpeg"),
    ("gray", (33, 70), "gray"),
    ("palette", (41, 41), "palette"),
    ("bmp", (32, 32), "bmp"),
    ("sideways", (50, 36), "sideways"),
    ("wide", (301, 34), "png"),
    ("tall", (35, 233), "jpeg"),
]


def _sources(folder: Path) -> list[writer.WorkItem]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for number, (name, (width, height), kind) in enumerate(SOURCES):
        image = Image.fromarray(photo(rng, width, height))
        path = folder / f"{name}.{ {'jpeg': 'jpg', 'sideways': 'jpg', 'bmp': 'bmp'}.get(kind, 'png') }"
        if kind == "sideways":  # stored 50x36, shown 36x50 (EXIF orientation 6: rotate 90 clockwise)
            exif = Image.Exif()
            exif[0x0112] = 6
            image.save(path, quality=92, exif=exif)
        else:
            save_as(image, path, kind)
        items.append(writer.WorkItem(key=f"set/{name}", source_path=str(path), score=float(number)))
    reference = folder / "reference.png"
    Image.fromarray(photo(rng, 48, 40)).save(reference)
    for level in (2, 5):  # distortion-engine outputs: encoded by the step itself
        meta = {"type": 1, "level": level, "ref": "reference", "origin": "original"}
        items.append(
            writer.WorkItem(
                key=f"set/engine{level}", ref_path=str(reference), is_engine=True, seed=level, score=1.0, meta=meta
            )
        )
    return items


def _write(items: list[writer.WorkItem], out: Path, image_format: str) -> ShardSet:
    options = writer.WriteOptions(samples_per_shard=4, num_workers=1, image_format=image_format)
    writer.write_shard_set(items, out, options, {"shard": {"image_format": image_format}})
    return ShardSet(out)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, ShardSet]:
    root = tmp_path_factory.mktemp("formats")
    items = _sources(root / "src")
    return {image_format: _write(items, root / image_format, image_format) for image_format in ("png", "lz4")}


def _config(**overrides) -> DataConfig:
    return DataConfig(**({"batch_size": 3, "num_workers": 1, "crop": CROP, "eval_crops": 3} | overrides))


def _crops(loader, plan) -> dict[str, torch.Tensor]:
    crops = {}
    for batch in loader.batches(plan):
        images = batch.images.cpu().reshape(len(batch), batch.num_crops, 3, CROP, CROP)
        crops.update(zip(batch.keys, images, strict=True))
    return crops


def test_an_lz4_set_holds_the_same_upright_pixels_and_digests_as_a_png_set(sets):
    png, lz4 = sets["png"], sets["lz4"]
    assert png.keys() == lz4.keys() and len(lz4) == len(SOURCES) + 2
    assert {entry.image_extension for entry in lz4.samples} == {"lz4"}
    assert {entry.image_extension for entry in png.samples} == {"png", "jpg"}
    for key in lz4.keys():
        data = lz4.read_image_bytes(key)
        assert lz4_pixels.is_lz4_pixels(data)
        pixels = decode(data, is_oriented=False)
        np.testing.assert_array_equal(pixels, decode(png.read_image_bytes(key), is_oriented=False), err_msg=key)
        assert lz4.by_key[key].pixel_digest == png.by_key[key].pixel_digest == pixel_digest(pixels)
    assert decode(lz4.read_image_bytes("set/sideways")).shape == (50, 36, 3)  # stored upright
    lz4.verify(decode_images=True)  # every member decodes to its recorded digest
    sidecar = json.loads((lz4.root / "shard-000000.json").read_text())
    assert sidecar["image_format"] == "lz4"


@pytest.mark.parametrize("is_training", [True, False])
def test_torch_and_dali_cpu_read_an_lz4_set_bit_exactly_as_the_png_set(sets, is_training):
    config = _config()
    plan = plan_epoch(sets["png"].keys(), config, seed=SEED, epoch=1, is_training=is_training).for_rank(0)
    with TorchLoader(sets["png"], config, is_training=is_training) as loader:
        want = _crops(loader, plan)
    with TorchLoader(sets["lz4"], config, is_training=is_training) as loader:
        from_torch = _crops(loader, plan)
    with DaliLoader(sets["lz4"], config, is_training=is_training) as loader:
        assert loader.inputs == "pixels"  # no CPU inflate in DALI: the source workers inflate
        from_dali = _crops(loader, plan)
    assert list(want) == list(from_torch) == list(from_dali) and len(want) == len(plan.keys)
    for key, crops in want.items():
        assert crops.shape == ((1 if is_training else 3), 3, CROP, CROP)
        assert torch.equal(from_torch[key], crops) and torch.equal(from_dali[key], crops), key


@pytest.mark.gpu
@pytest.mark.parametrize("is_training", [True, False])
def test_dali_inflates_lz4_members_on_the_gpu_to_the_png_sets_pixels(sets, is_training):
    config = _config()
    plan = plan_epoch(sets["png"].keys(), config, seed=SEED, epoch=2, is_training=is_training).for_rank(0)
    with TorchLoader(sets["png"], config, is_training=is_training) as loader:
        want = _crops(loader, plan)
    with DaliLoader(sets["lz4"], config, is_training=is_training, device="gpu", device_id=0) as loader:
        assert loader.inputs == "bands"  # fn.decoders.inflate on the GPU: no image decoder, no CPU inflate
        batch = next(iter(loader.batches(plan)))
        assert batch.images.is_cuda
        got = _crops(loader, plan)
    assert list(got) == list(want) and len(got) == len(plan.keys)
    for key, crops in want.items():  # lossless: equal up to the float rounding of GPU normalisation
        torch.testing.assert_close(got[key], crops, atol=1e-5, rtol=0, msg=key)


def test_a_flipped_byte_fails_its_checksum_before_anything_inflates(tmp_path, monkeypatch):
    shard_set = _write(_sources(tmp_path / "src"), tmp_path / "set", "lz4")
    key = "set/wide"
    entry = shard_set.by_key[key]
    offset, size = entry.members["lz4"]
    path = shard_set.root / entry.shard
    data = bytearray(path.read_bytes())
    data[offset + size - 5] ^= 0xFF  # inside the last band: the header still adds up
    path.write_bytes(bytes(data))
    damaged = bytes(data[offset : offset + size])
    inflated, real = [], lz4_pixels.inflate
    monkeypatch.setattr(lz4_pixels, "inflate", lambda member, *rest: inflated.append(bytes(member)) or real(member))
    message = f"{entry.shard}: sample {key}: member {key}.lz4 fails its checksum"
    reader = MemberReader(SampleTable.from_shard_set(shard_set), 10**6)
    with pytest.raises(SampleError, match=message):
        reader.read_checked(shard_set.keys().index(key), CROP)
    shard_set.shards = {}  # past the whole-shard sha256: the member's own checksum stops the decode
    with pytest.raises(ValueError, match=f"sample {key}: member {key}.lz4 fails its checksum"):
        shard_set.verify(decode_images=True)
    assert inflated and damaged not in inflated  # the members before it decoded; the damaged one never did
    monkeypatch.undo()
    config = _config(verify_checksums="members", drop_last=False)
    plan = plan_epoch(shard_set.keys(), config, seed=SEED, epoch=0, kept_keys=[key]).for_rank(0)
    for loader_class in (TorchLoader, DaliLoader):
        with loader_class(ShardSet(shard_set.root), config, is_training=True) as loader:
            with pytest.raises(ValueError, match=message):
                list(loader.batches(plan))


def test_the_pixel_cap_refuses_an_lz4_member_from_its_header_before_inflating(sets, monkeypatch):
    shard_set = sets["lz4"]
    row = shard_set.keys().index("set/wide")  # 301 x 34 = 10,234 pixels
    monkeypatch.setattr(lz4_pixels, "inflate", lambda *args: pytest.fail("inflated above the cap"))
    reader = MemberReader(SampleTable.from_shard_set(shard_set), max_pixels=10_233)
    with pytest.raises(SampleError, match="set/wide: image is 301x34, 10,234 pixels above data.max_pixels=10,233"):
        reader.read_checked(row, CROP)
    monkeypatch.undo()
    config = _config(max_pixels=10_233, drop_last=False)
    plan = plan_epoch(shard_set.keys(), config, seed=SEED, epoch=0, kept_keys=["set/wide"]).for_rank(0)
    for loader_class in (TorchLoader, DaliLoader):
        with loader_class(shard_set, config, is_training=True) as loader:
            with pytest.raises(ValueError, match="set/wide: image is 301x34, .* refused before decoding"):
                list(loader.batches(plan))


def test_describe_and_records_show_the_format_and_how_a_gpu_reads_it(sets, tmp_path):
    facts = describe.summary(sets["lz4"])
    assert facts["extensions"] == ["json", "lz4"] and facts["images"] == {"lz4": len(sets["lz4"])}
    assert describe.summary(sets["png"])["images"] == {"jpg": 2, "png": len(sets["png"]) - 2}
    records = tmp_path / "samples.jsonl"
    command = [sys.executable, str(PROJECT_ROOT / "launchers" / "shard.py"), "--describe", str(sets["lz4"].root)]
    completed = subprocess.run(
        [*command, "--records", str(records)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert f"images     {len(sets['lz4'])} lz4 (inflated on the GPU)" in completed.stdout
    assert "members    json, lz4; checksums recorded" in completed.stdout
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert [line["key"] for line in lines] == sets["lz4"].keys()
    for line in lines:
        assert set(line["members"]) == set(line["xxh3_64"]) == {"lz4", "json"}
        assert line["pixel_digest"] == sets["png"].by_key[line["key"]].pixel_digest


def test_the_sharding_launcher_writes_and_verifies_an_lz4_set_from_its_config(tmp_path, capsys):
    from launchers import shard as shard_launcher
    from tests.test_shard_step import _pristine_folder, undistorted_folder_overrides

    _pristine_folder(tmp_path / "pristine", count=3)
    overrides = [*undistorted_folder_overrides(tmp_path / "pristine"), f"shard.output_root={tmp_path / 'shards'}"]
    preset = str(PROJECT_ROOT / "configs" / "shard" / "folder-weak.yaml")
    assert shard_launcher.main(["--config", preset, *overrides, "shard.image_format=lz4"]) == 0
    shard_set = ShardSet(tmp_path / "shards" / "folder-weak")
    assert len(shard_set) == 3 and {entry.image_extension for entry in shard_set.samples} == {"lz4"}
    assert shard_set.config["shard"]["image_format"] == "lz4"  # the resolved config travels with the set
    capsys.readouterr()
    assert shard_launcher.main(["--config", preset, "--verify", *overrides, "shard.image_format=lz4"]) == 0
    assert "3 samples in 2 shards verified (checksums, members, images)" in capsys.readouterr().out
    for path in sorted((tmp_path / "pristine").iterdir()):
        key = f"pristine/{path.stem}"
        np.testing.assert_array_equal(decode(shard_set.read_image_bytes(key)), np.asarray(Image.open(path)))


def test_reindex_gives_an_lz4_set_the_digests_it_was_written_with(sets, tmp_path):
    out = tmp_path / "set"
    _write(_sources(tmp_path / "src"), out, "lz4")
    written = {entry.key: entry.pixel_digest for entry in ShardSet(out).samples}
    write_format_1(out, index_as_format_1(out))
    for path in [out / "index.json", *out.glob("shard-*.json")]:
        record = json.loads(path.read_text())
        for sample in record["samples"]:
            del sample["xxh3_64"], sample["pixel_digest"]
        path.write_text(json.dumps(record, sort_keys=True))
    assert not ShardSet(out).has_pixel_digests
    done = reindex(out)
    assert done.num_digests == done.num_checksums == len(written)
    assert {entry.key: entry.pixel_digest for entry in ShardSet(out).samples} == written


def test_a_rerun_with_another_format_rewrites_the_shards(tmp_path):
    items = _sources(tmp_path / "src")
    _write(items, tmp_path / "set", "png")
    rewritten = _write(items, tmp_path / "set", "lz4")
    fresh = _write(items, tmp_path / "fresh", "lz4")
    assert {entry.image_extension for entry in rewritten.samples} == {"lz4"}
    for name in rewritten.shards:
        assert (rewritten.root / name).read_bytes() == (fresh.root / name).read_bytes()


def test_dali_refuses_a_set_that_mixes_lz4_and_encoded_members(tmp_path):
    items = _sources(tmp_path / "src")
    out = tmp_path / "mixed"
    with writer.writing(out):
        for first_shard, (image_format, part) in enumerate((("png", items[:4]), ("lz4", items[4:8]))):
            options = writer.WriteOptions(samples_per_shard=4, num_workers=1, image_format=image_format)
            writer.write_shards(part, out, options, first_shard=first_shard)
        writer.finish_index(out, 2, {})
    mixed = ShardSet(out)
    with pytest.raises(ValueError, match="mixes .lz4 members with jpg, png; DALI reads one kind per set"):
        DaliLoader(mixed, _config(), is_training=True)
    config = _config()
    plan = plan_epoch(mixed.keys(), config, seed=SEED, epoch=0).for_rank(0)
    with TorchLoader(mixed, config, is_training=True) as loader:  # the torch fallback reads anything
        assert sorted(key for batch in loader.batches(plan) for key in batch.keys) == sorted(plan.keys)


def test_plain_tar_readers_see_lz4_members_as_bytes_that_imaging_decodes(sets):
    import webdataset as wds

    lz4 = sets["lz4"]
    first = lz4.root / "shard-000000.tar"
    with tarfile.open(first) as archive:
        names = archive.getnames()
    assert names[:2] == ["set/png.lz4", "set/png.json"] and all(n.endswith((".lz4", ".json")) for n in names)
    seen = {}
    for sample in wds.WebDataset(str(first), shardshuffle=False).decode("rgb8"):
        assert isinstance(sample["lz4"], bytes)  # webdataset has no decoder for it: the raw member
        seen[sample["__key__"]] = decode(sample["lz4"], is_oriented=False)
        assert sample["json"]["key"] == sample["__key__"]
    assert len(seen) == 4
    for key, pixels in seen.items():
        assert pixel_digest(pixels) == lz4.by_key[key].pixel_digest


def test_the_format_is_chosen_in_one_place_and_checked(tmp_path):
    pixels = photo(np.random.default_rng(1), 40, 30)
    png_bytes, extension = member_format.image_member(pixels, "png")
    assert extension == "png" and np.array_equal(decode(png_bytes), pixels)
    data, extension = member_format.image_member(pixels, "lz4", kept=(png_bytes, "png"))  # lz4 keeps no file
    assert extension == "lz4" and np.array_equal(decode(data), pixels)
    assert member_format.image_member(pixels, "png", kept=(b"kept", "jpg")) == (b"kept", "jpg")
    with pytest.raises(ValueError, match="shard.image_format must be one of png, lz4, got 'webp'"):
        member_format.image_member(pixels, "webp")
    from dist_syndr import config

    assert config.load(None, ["shard.image_format=lz4"]).shard.image_format == "lz4"
    with pytest.raises(ValueError, match="image_format"):
        config.load(None, ["shard.image_format=webp"])
    assert writer.WriteOptions.from_config(config.load(None, ["shard.image_format=lz4"]).shard).image_format == "lz4"
    assert member_format.IMAGE_FORMATS == ("png", "lz4")

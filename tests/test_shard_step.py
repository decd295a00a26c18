"""The sharding step end to end: plans from real layouts, DDCUp samples, the launcher, resume."""

from __future__ import annotations

import csv
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from dist_syndr import config
from dist_syndr.config import TARGET_TYPES
from dist_syndr.pools import kadid
from dist_syndr.sharding.plan import build_plan
from dist_syndr.sharding.shard_set import LOCK_NAME, ShardSet
from launchers import shard as shard_launcher
from tests.conftest import fixture_file


def _tiny_png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 8, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiny_bmp(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 8, 3), value, dtype=np.uint8)).save(buffer, format="BMP")
    return buffer.getvalue()


def _kadid_replica(root):
    """A KADID-10k + kadid_add81 layout with placeholder pixels and the real scores and features."""
    images = root / "kadid10k" / "images"
    images.mkdir(parents=True)
    shutil.copy(fixture_file("kadid10k/dmos.csv"), root / "kadid10k" / "dmos.csv")
    png = _tiny_png(120)
    for record in kadid.read_dmos_csv(root / "kadid10k" / "dmos.csv"):
        (images / record.dist_img).write_bytes(png)
    for i in range(1, 82):
        (images / f"I{i:02d}.png").write_bytes(png)
    add81 = root / "kadid_add81"
    (add81 / "ref_imgs").mkdir(parents=True)
    (add81 / "dist_imgs").mkdir()
    bmp = _tiny_bmp(60)
    for name in fixture_file("refset/additional_ref_names.txt").read_text().split():
        (add81 / "ref_imgs" / name).write_bytes(png)
        stem = name.rsplit(".", 1)[0]
        for t in range(1, 26):
            for level in range(1, 6):
                (add81 / "dist_imgs" / f"{stem}_{t:02d}_{level:02d}.bmp").write_bytes(bmp)
    return root


def _kadid_overrides(root, out_root, target="bid"):
    refset = fixture_file("refset/train_ref_features.npy").parent
    return [
        f"reshape.ddcup.target={target}",
        f"shard.name=kadid-{target}",
        f"shard.output_root={out_root}",
        f"shard.pool.root={root / 'kadid10k'}",
        f"shard.candidates.root={root / 'kadid_add81'}",
        f"shard.features.train_features={refset / 'train_ref_features.npy'}",
        f"shard.features.train_names={refset / 'train_ref_names.txt'}",
        f"shard.features.candidate_features={refset / 'additional_ref_features.npy'}",
        f"shard.features.candidate_names={refset / 'additional_ref_names.txt'}",
        "shard.samples_per_shard=700",
    ]


@pytest.mark.timeout(300)
def test_kadid_bid_preset_selects_spec_rows_plus_ddcup_samples(tmp_path, fixtures_dir):
    root = _kadid_replica(tmp_path / "data")
    preset = "configs/shard/kadid-bid.yaml"
    assert shard_launcher.main(["--config", preset, *_kadid_overrides(root, tmp_path / "shards")]) == 0
    shard_set = ShardSet(tmp_path / "shards" / "kadid-bid")
    shard_set.verify()
    original = [e for e in shard_set.samples if e.origin == "original"]
    upsampled = [e for e in shard_set.samples if e.origin == "upsampled"]
    assert len(original) == 74 * 6 * 5 and len(upsampled) == 432
    excluded = {f"kadid10k/{r}" for r in kadid.KADID_EXCLUDED_TRAINING_REFS}
    assert not {e.ref for e in original} & excluded and len({e.ref for e in original}) == 74
    assert {e.distortion_type for e in original} == set(TARGET_TYPES["bid"])
    with fixture_file("refset/expected_upsampled_bid.csv").open() as handle:
        expected = {row["dist_img"].rsplit(".", 1)[0]: float(row["score"]) for row in csv.DictReader(handle)}
    got = {e.key.rsplit("/", 1)[-1]: e.score for e in upsampled}
    assert set(got) == set(expected)
    assert max(abs(got[k] - expected[k]) for k in expected) < 1e-4
    scores = {r.dist_img.rsplit(".", 1)[0]: r.score for r in kadid.read_dmos_csv(root / "kadid10k" / "dmos.csv")}
    assert all(abs(e.score - scores[e.key.rsplit("/", 1)[-1]]) < 1e-12 for e in original)
    # BMP candidates became PNG, the PNG originals kept their bytes.
    assert all(e.image_extension == "png" for e in shard_set.samples)
    assert shard_launcher.main(["--config", preset, "--verify", *_kadid_overrides(root, tmp_path / "shards")]) == 0


def test_livec_preset_uses_its_types(tmp_path, fixtures_dir):
    root = _kadid_replica(tmp_path / "data")
    overrides = _kadid_overrides(root, tmp_path / "shards", target="livec")
    cfg = config.load("configs/shard/kadid-livec.yaml", overrides)
    plan = build_plan(cfg)
    assert plan.num_original == 74 * 6 * 5
    assert {item.meta["type"] for item in plan.items} == set(TARGET_TYPES["livec"])
    assert plan.num_upsampled == len(plan.selected_candidates) * 6 * 3


def test_ddcup_needs_a_labelled_pool(tmp_path):
    (tmp_path / "pristine").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "pristine" / "a.png")
    cfg = config.load(
        "configs/shard/folder-weak.yaml",
        [
            f"shard.pool.root={tmp_path / 'pristine'}",
            "shard.candidates.kind=folder",
            f"shard.candidates.root={tmp_path}",
            "shard.pool.labels=none",
        ],
    )
    with pytest.raises(ValueError, match="DDCUp needs labels"):
        build_plan(cfg)


@pytest.mark.timeout(300)
def test_ddcup_on_a_weakly_labelled_engine_pool(tmp_path):
    """Originals are written and weakly labelled first; DDCUp transfers those labels to the selected contents."""
    from dist_syndr.pools.embedded import photo_crops
    from dist_syndr.sharding.plan import run_shard_step
    from dist_syndr.sharding.writer import WriteOptions

    crops = photo_crops(np.random.default_rng(0), 6, 64, 64)
    for folder, names in (("pristine", ["a", "b", "c", "d"]), ("candidates", ["x", "y"])):
        (tmp_path / folder).mkdir()
        for name in names:
            Image.fromarray(crops.pop()).save(tmp_path / folder / f"{name}.png")
    # Two tight pairs of training contents; x sits between the pairs (selected), y is orthogonal to all (outside).
    e = np.eye(4, dtype=np.float32)
    np.save(tmp_path / "train.npy", np.stack([e[0], e[0] + 0.1 * e[1], e[1], e[1] + 0.1 * e[0]]))
    np.save(tmp_path / "candidates.npy", np.stack([e[0] + e[1], e[2]]))
    (tmp_path / "train.txt").write_text("a b c d")
    (tmp_path / "candidates.txt").write_text("x y")
    overrides = [
        f"shard.pool.root={tmp_path / 'pristine'}",
        "shard.pool.types=[1, 11]",
        "shard.candidates.kind=folder",
        f"shard.candidates.root={tmp_path / 'candidates'}",
        "shard.samples_per_shard=16",
        f"shard.features.train_features={tmp_path / 'train.npy'}",
        f"shard.features.train_names={tmp_path / 'train.txt'}",
        f"shard.features.candidate_features={tmp_path / 'candidates.npy'}",
        f"shard.features.candidate_names={tmp_path / 'candidates.txt'}",
    ]
    cfg = config.load("configs/shard/folder-weak.yaml", overrides)
    out = tmp_path / "shards" / "weak-ddcup"
    plan = run_shard_step(cfg, out, WriteOptions(samples_per_shard=16, num_workers=1))
    assert (
        plan.selected_candidates == ["candidates/x"] and plan.num_original == 4 * 2 * 5 and plan.num_upsampled == 2 * 3
    )
    shard_set = ShardSet(out)
    entries = shard_set.by_key
    upsampled = [e for e in entries.values() if e.origin == "upsampled"]
    assert len(entries) == 46 and len(upsampled) == 6 and all(e.ref == "candidates/x" for e in upsampled)
    for e in upsampled:  # a weighted mean of the training contents' weak scores at the same (type, level)
        same = [
            o.score
            for o in entries.values()
            if o.origin != "upsampled" and (o.distortion_type, o.level) == (e.distortion_type, e.level)
        ]
        assert min(same) - 1e-9 <= e.score <= max(same) + 1e-9
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    run_shard_step(cfg, out, WriteOptions(samples_per_shard=16, num_workers=1))  # a rerun reuses every shard
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".tar"} == {
        k: v for k, v in before.items() if k.endswith(".tar")
    }


def test_missing_pool_root_is_a_clear_error(tmp_path):
    cfg = config.load("configs/shard/folder-weak.yaml", [f"shard.pool.root={tmp_path / 'nope'}"])
    with pytest.raises(ValueError, match="does not exist"):
        build_plan(cfg)


def _pristine_folder(folder, count=2):
    folder.mkdir(parents=True)
    y, x = np.mgrid[0:48, 0:64]
    for i in range(count):
        image = np.stack([x * 4 + i * 20, y * 5, (x + y) * 2 + 40 * (((x // 8) + (y // 8)) % 2)], -1)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"photo{i}.png")


@pytest.mark.timeout(300)
def test_folder_pool_engine_distortions_with_weak_labels_and_resume(tmp_path):
    _pristine_folder(tmp_path / "pristine")
    overrides = [
        f"shard.pool.root={tmp_path / 'pristine'}",
        f"shard.output_root={tmp_path / 'shards'}",
        "shard.pool.types=[1, 11]",
        "shard.samples_per_shard=7",
        "shard.num_workers=2",
    ]
    assert shard_launcher.main(["--config", "configs/shard/folder-weak.yaml", *overrides]) == 0
    out = tmp_path / "shards" / "folder-weak"
    shard_set = ShardSet(out)
    shard_set.verify()
    assert len(shard_set) == 2 * 2 * 5
    scores = shard_set.scores()
    assert scores.min() == 0.0 and scores.max() == 10.0
    for entry in shard_set.samples:
        assert (
            entry.origin == "distorted"
            and entry.key == f"pristine/{entry.ref.split('/')[-1]}_{entry.distortion_type:02d}_{entry.level:02d}"
        )
        assert shard_set.read_meta(entry.key)["weak_label"]["metrics"]
    for ref in ("pristine/photo0", "pristine/photo1"):
        for distortion_type in (1, 11):
            by_level = sorted(
                (e.level, e.score) for e in shard_set.samples if e.ref == ref and e.distortion_type == distortion_type
            )
            assert [s for _, s in by_level] == sorted((s for _, s in by_level), reverse=True)
    before = _set_files(out)
    (out / "shard-000001.tar").unlink()
    (out / "index.json").unlink()
    assert shard_launcher.main(["--config", "configs/shard/folder-weak.yaml", *overrides, "shard.num_workers=1"]) == 0
    assert _set_files(out) == before


def _set_files(folder) -> dict[str, bytes]:
    """A set's files and their bytes, without its lock file (which names the last job that held it)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != LOCK_NAME}


def undistorted_folder_overrides(pristine) -> list[str]:
    """The folder-weak preset on ``pristine`` as it is: no distortions, no labels, 2 samples per shard."""
    return [
        f"shard.pool.root={pristine}",
        "shard.pool.distort=false",
        "shard.pool.labels=none",
        "shard.samples_per_shard=2",
        "shard.num_workers=1",
        "runtime.device=cpu",
    ]


@pytest.mark.dist
@pytest.mark.timeout(240)
def test_two_ranks_write_the_same_set_as_one(tmp_path):
    import sys

    from tests.conftest import run_ranks

    _pristine_folder(tmp_path / "pristine", count=9)
    common = ["--config", "configs/shard/folder-weak.yaml", *undistorted_folder_overrides(tmp_path / "pristine")]
    assert shard_launcher.main([*common, f"shard.output_root={tmp_path / 'one'}"]) == 0
    run_ranks([sys.executable, "launchers/shard.py", *common, f"shard.output_root={tmp_path / 'two'}"], timeout_s=200)
    one, two = tmp_path / "one" / "folder-weak", tmp_path / "two" / "folder-weak"
    assert _set_files(one) == _set_files(two)
    assert len(ShardSet(two)) == 9 and len(ShardSet(two).shards) == 5

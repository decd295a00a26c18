"""Evaluation: multi-crop predictions and features in key order, checkpoint loading, raw targets, the launcher."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_syndr import config
from dist_syndr.config import DataConfig, ModelConfig
from dist_syndr.evaluate import metrics
from dist_syndr.evaluate.predict import (
    Predictions,
    embed,
    evaluate_targets,
    predict,
    target_metrics,
    write_predictions_csv,
)
from dist_syndr.evaluate.targets import parse_target, target_shard_set
from dist_syndr.features.model import build_model
from dist_syndr.features.passes import PassOptions
from dist_syndr.features.preprocess import normalise
from dist_syndr.imaging import evaluation_anchors, pixel_digest
from dist_syndr.loader.crops import cut
from dist_syndr.runs import consolidate, weights
from dist_syndr.runs.checkpoints import load_model
from dist_syndr.sharding import writer
from dist_syndr.sharding.shard_set import ShardSet
from tests.conftest import PROJECT_ROOT, tf32_switches

NUM_IMAGES = 7  # odd: two ranks need one padded repeat
TINY_MODEL = ["model.backbone=vit_tiny_patch16_224", "model.is_random_init=true", "model.image_size=32"]
TINY_DATA = [
    "data.crop=32",
    "data.batch_size=3",
    "data.num_workers=1",
    "data.eval_crops=3",
    "data.loader=torch",
    "runtime.device=cpu",
]


def _write_images(folder: Path, count: int = NUM_IMAGES, seed: int = 0) -> list[tuple[Path, float]]:
    """Smooth random colour images (48x40 and 40x44) with scores; PNG files in ``folder``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        width, height = (48, 40) if i % 2 else (40, 44)
        coarse = rng.integers(0, 256, size=(height // 4, width // 4, 3), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
        path = folder / f"img{i:02d}.png"
        Image.fromarray(pixels).save(path)
        written.append((path, float(rng.uniform(0, 10))))
    return written


def _tiny_shard_set(root: Path) -> ShardSet:
    images = _write_images(root / "images")
    items = [
        writer.WorkItem(
            key=f"tiny/{path.stem}", source_path=str(path), score=score, meta={"origin": "original", "source": "tiny"}
        )
        for path, score in images
    ]
    writer.write_shard_set(
        items, root / "set", writer.WriteOptions(samples_per_shard=3, num_workers=1), {"test": "tiny"}
    )
    return ShardSet(root / "set")


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(backbone="vit_tiny_patch16_224", is_random_init=True, image_size=32)).eval()


def _data(**changes) -> DataConfig:
    return config.load(None, [*TINY_DATA, *(f"data.{key}={value}" for key, value in changes.items())]).data


def _manual_crops(shard_set: ShardSet, key: str, *, num_crops: int, mode: str, seed: int = 0) -> torch.Tensor:
    """PIL's pixels cut at the evaluation anchors drawn from their digest (never from the key)."""
    from PIL import Image

    with Image.open(io.BytesIO(shard_set.read_image_bytes(key))) as image:
        pixels = np.asarray(image.convert("RGB"))
    options = {"seed": seed, "num_crops": num_crops, "mode": mode}
    anchors = evaluation_anchors(pixel_digest(pixels), pixels.shape[1], pixels.shape[0], 32, **options)
    return torch.from_numpy(np.stack([normalise(cut(pixels, anchor, 32)) for anchor in anchors]))


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> ShardSet:
    return _tiny_shard_set(tmp_path_factory.mktemp("tiny"))


# ---------------------------------------------------------------------------
# predict / embed


@pytest.mark.timeout(120)
def test_predict_averages_crops_in_key_order(tiny_set):
    model = _tiny_model()
    result = predict(model, tiny_set, _data(), PassOptions(device="cpu", dali="off", seed=5))
    assert result.keys.tolist() == tiny_set.keys() and len(result) == NUM_IMAGES
    np.testing.assert_array_equal(result.scores, tiny_set.scores())
    with torch.no_grad():
        manual = [
            float(model(_manual_crops(tiny_set, key, num_crops=3, mode="random", seed=5)).mean())
            for key in tiny_set.keys()
        ]
    np.testing.assert_allclose(result.predictions, manual, rtol=0, atol=1e-5)
    # the crops matter (a different seed moves them) and batching does not
    other_seed = predict(model, tiny_set, _data(), PassOptions(device="cpu", dali="off", seed=6))
    assert not np.allclose(other_seed.predictions, result.predictions, atol=1e-6)
    one_batch = predict(model, tiny_set, _data(batch_size=16), PassOptions(device="cpu", dali="off", seed=5))
    np.testing.assert_allclose(one_batch.predictions, result.predictions, atol=1e-5)
    assert model.training is False


@pytest.mark.timeout(120)
def test_dali_cpu_pipeline_gives_the_torch_loader_predictions(tiny_set):
    pytest.importorskip("nvidia.dali")
    model = _tiny_model()
    torch_path = predict(model, tiny_set, _data(), PassOptions(device="cpu", dali="off", seed=5))
    dali_path = predict(model, tiny_set, _data(loader="dali"), PassOptions(device="cpu", dali="cpu", seed=5))
    assert dali_path.keys.tolist() == torch_path.keys.tolist()
    np.testing.assert_allclose(dali_path.predictions, torch_path.predictions, atol=1e-5)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("dali", ["off", "cpu"])
def test_a_target_with_a_flipped_byte_is_never_scored(tmp_path, dali):
    """Evaluation, DRCDown's feature pass and diagnostics read through the loader: a member whose bytes
    changed stops them with the sample named, or is left out and counted under on_error=skip."""
    shard_set = _tiny_shard_set(tmp_path)
    key = shard_set.keys()[3]
    entry = shard_set.by_key[key]
    offset, size = entry.members[entry.image_extension]
    path = shard_set.root / entry.shard
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"sample {key}: member .* fails its checksum"):
        predict(_tiny_model(), shard_set, _data(), PassOptions(device="cpu", dali=dali))
    with pytest.raises(ValueError, match=f"sample {key}: member .* fails its checksum"):
        embed(_tiny_model(), shard_set, _data(), shard_set.keys(), PassOptions(device="cpu", dali=dali))
    skipped = predict(_tiny_model(), shard_set, _data(on_error="skip"), PassOptions(device="cpu", dali=dali))
    assert key not in skipped.keys.tolist() and len(skipped) == len(shard_set) - 1


def _written_before_pixel_digests(root: Path, monkeypatch) -> ShardSet:
    """A set as the sharding step wrote it before it applied orientation and recorded pixel digests: JPEG and
    PNG files byte for byte (the phone photo sideways, with its tag), no digest in the index or the sidecars,
    and a columns file without the two digest arrays."""
    from dist_syndr.imaging.decode import DecodedImage
    from tests.test_imaging import phone_photos

    phone_photos(root / "photos")
    items = [
        writer.WorkItem(key=f"old/{name}", source_path=str(root / "photos" / f"{name}.jpg"), score=float(score))
        for name, score in (("phone", 3), ("plain", 7))
    ]
    with monkeypatch.context() as patched:
        patched.setattr(DecodedImage, "is_stored_upright", property(lambda decoded: decoded.header.is_plain))
        writer.write_shard_set(items, root / "set", writer.WriteOptions(num_workers=1), {"test": "old"})
    for sidecar in (root / "set").glob("shard-*.json"):
        record = json.loads(sidecar.read_text())
        for sample in record["samples"]:
            del sample["pixel_digest"]
        sidecar.write_text(json.dumps(record, sort_keys=True))
    header = json.loads((root / "set" / "index.json").read_text())
    for name in ("pixel_digests", "has_pixel_digests"):
        del header["columns"]["arrays"][name]
    (root / "set" / "index.json").write_text(json.dumps(header, indent=1, sort_keys=True))
    return ShardSet(root / "set")


@pytest.mark.timeout(180)
def test_a_set_written_before_pixel_digests_evaluates_as_written_with_warnings_until_reindexed(
    tmp_path, monkeypatch, caplog
):
    """Such a set loads and evaluates: its evaluation crops are drawn from each image member's xxh3-64 (the
    recorded checksum), with one warning recommending --reindex, and one where a member carries an orientation
    tag the loaders leave unapplied. ``--reindex`` then records the digests of the pixels as the loaders read
    them: the untagged photo gets the prediction score.py gives it; the tagged one stays sideways (warned)."""
    import logging

    from dist_syndr import imaging
    from dist_syndr.loader.members import MemberReader, SampleTable
    from dist_syndr.scoring.scorer import Scorer
    from dist_syndr.sharding.reindex import reindex
    from dist_syndr.sharding.shard_set import member_checksum

    old = _written_before_pixel_digests(tmp_path, monkeypatch)
    assert not old.has_pixel_digests and old.by_key["old/phone"].image_extension == "jpg"
    model, data = _tiny_model(), _data()
    with caplog.at_level(logging.WARNING):
        predicted = predict(model, old, data, PassOptions(device="cpu", dali="off", seed=0))
        again = predict(model, old, data, PassOptions(device="cpu", dali="off", seed=0))
    assert sum("written before pixel digests" in message for message in caplog.messages) == 1
    np.testing.assert_array_equal(predicted.predictions, again.predictions)
    with torch.no_grad():
        for key, value in zip(predicted.keys, predicted.predictions, strict=True):
            stored = old.read_image_bytes(key)
            pixels = imaging.decode(stored, is_oriented=False)  # as written: the phone photo sideways
            anchors = imaging.evaluation_anchors(
                member_checksum(stored), 96, 64, 32, seed=0, num_crops=3, mode="random"
            )
            crops = np.stack([normalise(cut(pixels, anchor, 32)) for anchor in anchors])
            assert float(model(torch.from_numpy(crops)).mean()) == pytest.approx(float(value), abs=1e-5), key
    caplog.clear()
    reader = MemberReader(SampleTable.from_shard_set(old))
    with caplog.at_level(logging.WARNING):
        for row in range(len(old)):
            reader.read_checked(row, 32)
            reader.read_checked(row, 32)
    assert sum("orientation tag (6 here) are read as stored" in message for message in caplog.messages) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert reindex(old.root) == (True, 0, 2)
    assert sum("carry an EXIF orientation the loaders do not apply" in message for message in caplog.messages) == 1
    current = ShardSet(old.root)
    assert current.has_pixel_digests and reindex(old.root) == (False, 0, 0)
    reindexed = predict(model, current, data, PassOptions(device="cpu", dali="off", seed=0))
    by_key = dict(zip(reindexed.keys.tolist(), reindexed.predictions.tolist(), strict=True))
    run_dir = _run_dir(tmp_path, model)
    scores = Scorer.load(run_dir, "cpu").score([tmp_path / "photos" / "plain.jpg", tmp_path / "photos" / "phone.jpg"])
    assert by_key["old/plain"] == pytest.approx(scores[0], abs=1e-5)
    assert by_key["old/phone"] != pytest.approx(scores[1], abs=1e-3)  # still sideways: reshard it


@pytest.mark.timeout(120)
def test_embed_gives_centre_crop_features_in_the_order_asked(tiny_set):
    model = _tiny_model().train()  # embed switches to eval and back
    keys = tiny_set.keys()[::-2]
    features = embed(model, tiny_set, _data(), keys, PassOptions(device="cpu", dali="off"))
    assert features.shape == (len(keys), 192) and features.dtype == np.float32 and model.training
    model.eval()
    with torch.no_grad():
        manual = torch.cat(
            [model.features(_manual_crops(tiny_set, key, num_crops=1, mode="centre")) for key in keys]
        ).numpy()
    np.testing.assert_allclose(features, manual, atol=1e-5)


@pytest.mark.timeout(120)
def test_drcdown_features_run_without_tf32_and_evaluation_keeps_the_callers_switches(tiny_set, tf32_on, monkeypatch):
    """DRCDown's fp32 feature pass runs with TF32 off (the decisions must not depend on the GPU); asked for the
    run's bf16, and for predictions, the caller's switches (training's speed) stay as they are."""
    model, keys = _tiny_model(), tiny_set.keys()[:4]
    seen: list[tuple[str, dict]] = []
    features, forward = model.features, model.forward
    monkeypatch.setattr(
        model, "features", lambda images: seen.append(("features", tf32_switches())) or features(images)
    )
    monkeypatch.setattr(model, "forward", lambda images: seen.append(("predict", tf32_switches())) or forward(images))
    embed(model, tiny_set, _data(), keys, PassOptions(device="cpu", dali="off"))
    fp32 = [switches for name, switches in seen if name == "features"]
    assert fp32 and all(s["matmul"] == s["conv"] == "ieee" and s["legacy_cudnn"] is False for s in fp32)
    assert tf32_switches() == tf32_on
    seen.clear()
    embed(model, tiny_set, _data(), keys, PassOptions(device="cpu", dali="off", precision="bf16"))
    predict(model, tiny_set, _data(), PassOptions(device="cpu", dali="off"))
    assert {name for name, _ in seen} == {"features", "predict"}
    assert all(switches == tf32_on for _, switches in seen)


@pytest.mark.timeout(120)
def test_the_precision_policy_and_a_kept_loader_are_honoured(tiny_set):
    """fp32 features by default; bf16 autocast only when asked for; a loader the caller keeps open serves
    every call (the trainer keeps one per shard set for the whole run) and gives the same rows."""
    from dist_syndr.evaluate.predict import feature_data_config
    from dist_syndr.loader import make_loader

    model, keys = _tiny_model(), tiny_set.keys()
    fp32 = embed(model, tiny_set, _data(), keys, PassOptions(device="cpu", dali="off"))
    bf16 = embed(model, tiny_set, _data(), keys, PassOptions(device="cpu", dali="off", precision="bf16"))
    assert not np.array_equal(fp32, bf16) and np.allclose(fp32, bf16, atol=0.1)
    with make_loader(tiny_set, feature_data_config(_data()), is_training=False, dali="off") as loader:
        for _ in range(2):
            again = embed(model, tiny_set, _data(), keys, PassOptions(device="cpu", dali="off"), loader=loader)
            np.testing.assert_array_equal(again, fp32)
    data = _data(eval_crop_mode="centre")
    with make_loader(tiny_set, data, is_training=False, dali="off") as loader:
        kept = predict(model, tiny_set, data, PassOptions(device="cpu", dali="off"), loader=loader)
    fresh = predict(model, tiny_set, data, PassOptions(device="cpu", dali="off"))
    np.testing.assert_array_equal(kept.predictions, fresh.predictions)


@pytest.mark.timeout(120)
def test_evaluate_targets_names_metrics_by_target(tiny_set):
    data = _data(eval_crop_mode="centre")
    results, predictions = evaluate_targets(
        _tiny_model(), {"tiny": tiny_set}, data, PassOptions(device="cpu", dali="off")
    )
    assert list(results) == [f"tiny/{key}" for key in metrics.METRIC_KEYS]
    p = predictions["tiny"]
    assert results["tiny/rmse"] == pytest.approx(
        float(np.sqrt(np.mean((p.predictions.astype(np.float64) - p.scores) ** 2)))
    )


def _dist_worker(root: str, out: str) -> None:
    """One rank of the two-process test: predictions and features of the tiny set, saved per rank."""
    from dist_syndr import runtime
    from dist_syndr.config import RuntimeConfig

    runtime.init(RuntimeConfig(device="cpu", dali="off"), timeout_s=60)
    rank, world_size = runtime.rank_world()
    assert world_size == 2 and runtime.is_distributed()
    shard_set = ShardSet(root)
    result = predict(_tiny_model(), shard_set, _data(), PassOptions(device="cpu", dali="off", seed=5))
    features = embed(_tiny_model(), shard_set, _data(), shard_set.keys()[::-1], PassOptions(device="cpu", dali="off"))
    np.savez(Path(out) / f"rank{rank}.npz", keys=result.keys, predictions=result.predictions, features=features)
    runtime.shutdown()


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_ranks_give_the_single_process_answer_without_padded_repeats(tiny_set, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        env["PYTHONPATH"] = str(PROJECT_ROOT)
        command = [sys.executable, "-m", "tests.test_evaluation", str(tiny_set.root), str(tmp_path)]
        processes.append(
            subprocess.Popen(
                command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [process.communicate(timeout=200)[0] for process in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    single = predict(_tiny_model(), tiny_set, _data(), PassOptions(device="cpu", dali="off", seed=5))
    single_features = embed(
        _tiny_model(), tiny_set, _data(), tiny_set.keys()[::-1], PassOptions(device="cpu", dali="off")
    )
    for rank in range(2):
        saved = np.load(tmp_path / f"rank{rank}.npz")
        assert saved["keys"].tolist() == tiny_set.keys()  # 7 keys: the padded repeat is gone
        np.testing.assert_allclose(saved["predictions"], single.predictions, atol=1e-5)
        np.testing.assert_allclose(saved["features"], single_features, atol=1e-5)


# ---------------------------------------------------------------------------
# checkpoints -> model


def _run_dir(root: Path, model, *, with_export: bool = True) -> Path:
    run_dir = root / "runs" / "tiny"
    config.dump(config.load(None, ["run_name=tiny", *TINY_MODEL, *TINY_DATA]), run_dir / "config.yaml")
    if with_export:
        weights.save_state_dict(model.state_dict(), run_dir / "export" / "model_fp32.pt")
    return run_dir


def _fake_stage0_tag(checkpoints: Path, tag: str, model) -> None:
    """The layout a ZeRO-0 fp32 DeepSpeed save leaves (module state + buffer names), written without DeepSpeed."""
    (checkpoints / tag).mkdir(parents=True)
    torch.save(
        {"module": model.state_dict(), "buffer_names": [], "optimizer": None},
        checkpoints / tag / consolidate.STAGE0_MODEL_STATES,
    )
    (checkpoints / "latest").write_text(tag)


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.timeout(120)
def test_load_model_from_export_run_dir_and_tags(tmp_path):
    trained, older = _tiny_model(1), _tiny_model(2)
    run_dir = _run_dir(tmp_path, trained)
    cfg, loaded = load_model(run_dir)  # prefers export/model_fp32.pt
    assert cfg.run_name == "tiny" and _same_weights(loaded, trained) and not loaded.training
    _, from_file = load_model(run_dir / "export" / "model_fp32.pt", overrides=["data.batch_size=5"])
    assert _same_weights(from_file, trained)
    # no export yet: the latest DeepSpeed checkpoint; a tag folder names its own tag
    checkpoints = tmp_path / "runs" / "tiny" / "checkpoints"
    _fake_stage0_tag(checkpoints, "epoch0000", older)
    _fake_stage0_tag(checkpoints, "epoch0001", trained)
    (run_dir / "export" / "model_fp32.pt").unlink()
    assert _same_weights(load_model(run_dir)[1], trained)
    assert _same_weights(load_model(checkpoints)[1], trained)
    assert _same_weights(load_model(checkpoints / "epoch0000")[1], older)


@pytest.mark.timeout(120)
def test_load_model_errors_name_the_problem(tmp_path):
    model = _tiny_model()
    with pytest.raises(ValueError, match="checkpoint does not exist"):
        load_model(tmp_path / "nowhere")
    loose = weights.save_state_dict(model.state_dict(), tmp_path / "deep" / "a" / "b" / "c" / "d" / "model.pt")
    with pytest.raises(ValueError, match=r"no config.yaml .* pass the run's config with --config"):
        load_model(loose)
    run_dir = _run_dir(tmp_path, model)
    cfg, _ = load_model(loose, run_dir / "config.yaml")
    assert cfg.model.image_size == 32
    with pytest.raises(ValueError, match="do not fit model.backbone=resnet18"):
        load_model(loose, run_dir / "config.yaml", ["model.backbone=resnet18"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_model(tmp_path / "empty")


# ---------------------------------------------------------------------------
# targets and files


def _csv_dataset(root: Path) -> Path:
    images = _write_images(root / "photos", count=5, seed=3)
    labels = root / "labels.csv"
    labels.write_text("path,score\n" + "".join(f"photos/{path.name},{score * 10:.3f}\n" for path, score in images))
    return labels


@pytest.mark.timeout(120)
def test_target_shard_set_shards_a_raw_dataset_once(tmp_path, tiny_set):
    assert target_shard_set("tiny", str(tiny_set.root), tmp_path / "cache").root == tiny_set.root
    labels = _csv_dataset(tmp_path / "mine")
    shard_set = target_shard_set("mine", f"csv:{labels}", tmp_path / "cache", num_workers=1)
    assert shard_set.root == tmp_path / "cache" / "mine" and len(shard_set) == 5
    assert shard_set.keys() == [f"labels/photos/img{i:02d}" for i in range(5)]
    assert np.all((shard_set.scores() >= 0) & (shard_set.scores() <= 10))
    index_time = (shard_set.root / "index.json").stat().st_mtime_ns
    again = target_shard_set("mine", f"csv:{labels}", tmp_path / "cache", num_workers=1)
    assert (again.root / "index.json").stat().st_mtime_ns == index_time  # reused, not rewritten
    assert parse_target("koniq", "/data/k") == ("koniq10k", Path("/data/k"))
    assert parse_target("x", "bid:/data/b") == ("bid", Path("/data/b"))
    with pytest.raises(ValueError, match=r"names no dataset reader; write it as other=KIND:"):
        target_shard_set("other", str(tmp_path / "mine"), tmp_path / "cache")
    with pytest.raises(ValueError, match="does not exist"):
        target_shard_set("livec", str(tmp_path / "absent"), tmp_path / "cache")


@pytest.mark.timeout(30)
def test_predictions_csv_rows(tmp_path):
    predictions = Predictions(np.array(["a/1", "b/2"]), np.array([0.5, 1.25], np.float32), np.array([3.0, np.nan]))
    path = write_predictions_csv(tmp_path / "out" / "t_predictions.csv", predictions)
    assert path.read_text() == "key,prediction,score\na/1,0.5,3.0\nb/2,1.25,\n"
    assert [p.name for p in path.parent.iterdir()] == ["t_predictions.csv"]


@pytest.mark.timeout(30)
def test_metrics_use_labelled_images_and_flag_diverged_predictions():
    keys = np.array(["a", "b", "c", "d"])
    scores = np.array([1.0, np.nan, 5.0, 9.0])
    result = target_metrics(Predictions(keys, np.array([2.0, 100.0, 4.0, 8.0], np.float32), scores))
    assert result["srcc"] == pytest.approx(1.0) and result["rmse"] == pytest.approx(
        1.0
    )  # the unlabelled 100 is left out
    assert tuple(result) == metrics.METRIC_KEYS and np.isnan(result["plcc_logistic"])  # 3 images: too few to fit
    diverged = target_metrics(Predictions(keys, np.array([2.0, 1.0, np.nan, 8.0], np.float32), scores))
    assert set(diverged) == set(result) and all(np.isnan(v) for v in diverged.values())
    assert target_metrics(Predictions(keys, np.zeros(4, np.float32), np.full(4, np.nan))) == {}


# ---------------------------------------------------------------------------
# the launcher


def _launch(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MLFLOW_TRACKING_URI")}
    command = [sys.executable, str(PROJECT_ROOT / "launchers" / "evaluate.py"), *arguments]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_launcher_scores_shard_set_and_raw_targets_and_tracks(tmp_path, tiny_set):
    import mlflow

    from dist_syndr.tracking.tracker import tracking_uri

    run_dir = _run_dir(tmp_path, _tiny_model(3))
    labels = _csv_dataset(tmp_path / "mine")
    targets = ["--target", f"tiny={tiny_set.root}", "--target", f"mine=csv:{labels}"]
    completed = _launch(tmp_path, "--checkpoint", str(run_dir), *targets, "--out", "eval", "shard.num_workers=1")
    assert completed.returncode == 0, completed.stderr[-3000:]
    table = completed.stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("target"))
    assert table[header].split() == [
        "target",
        "images",
        "SRCC",
        "PLCC",
        "KRCC",
        "RMSE",
        "PLCC-logistic",
        "RMSE-logistic",
    ]
    assert table[header + 2].split()[:2] == ["tiny", "7"] and table[header + 3].split()[:2] == ["mine", "5"]
    rows = list(csv.DictReader((tmp_path / "eval" / "tiny_predictions.csv").open()))
    assert [r["key"] for r in rows] == tiny_set.keys()
    assert [float(r["score"]) for r in rows] == tiny_set.scores().tolist()
    recorded = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert recorded["num_images"] == {"tiny": 7, "mine": 5} and set(recorded["metrics"]) >= {
        "tiny/srcc",
        "mine/plcc_logistic",
        "mine/rmse_logistic",
    }
    assert float(table[header + 2].split()[2]) == pytest.approx(recorded["metrics"]["tiny/srcc"], abs=1e-4)
    # MLflow: a new run evaluate-<run_name> with eval/<target>/<metric> and the files
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(tmp_path / "mlruns"))
    (run,) = client.search_runs([client.get_experiment_by_name("dist_syndr").experiment_id])
    assert run.info.run_name == "evaluate-tiny" and run.info.status == "FINISHED"
    assert run.data.metrics["eval/tiny/srcc"] == pytest.approx(recorded["metrics"]["tiny/srcc"])
    assert {a.path for a in client.list_artifacts(run.info.run_id, "eval")} >= {
        "eval/tiny_predictions.csv",
        "eval/metrics.json",
    }
    # into an existing run (as for a training run), reusing the sharded raw target
    index_time = (tmp_path / "shards" / "targets" / "mine" / "index.json").stat().st_mtime_ns
    again = _launch(
        tmp_path,
        "--checkpoint",
        str(run_dir),
        "--target",
        f"mine=csv:{labels}",
        "--run-id",
        run.info.run_id,
        "--step",
        "4",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "shards" / "targets" / "mine" / "index.json").stat().st_mtime_ns == index_time
    history = client.get_metric_history(run.info.run_id, "eval/mine/srcc")
    assert sorted(m.step for m in history) == [0, 4] and len(client.search_runs([run.info.experiment_id])) == 1
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.timeout(120)
def test_launcher_missing_checkpoint_or_target_exits_2(tmp_path):
    completed = _launch(tmp_path, "--checkpoint", str(tmp_path / "nothing"), "--target", "x=/y")
    assert (
        completed.returncode == 2 and "error: " in completed.stderr and "checkpoint does not exist" in completed.stderr
    )
    assert "Traceback" not in completed.stderr
    run_dir = _run_dir(tmp_path, _tiny_model())
    completed = _launch(
        tmp_path, "--checkpoint", str(run_dir), "--target", f"livec={tmp_path / 'absent'}", "--no-tracking"
    )
    assert completed.returncode == 2 and "target livec:" in completed.stderr and "does not exist" in completed.stderr


if __name__ == "__main__":
    _dist_worker(sys.argv[1], sys.argv[2])

"""runs/: the run folder's pointers, exports and lock, and checkpoints read without running anyone's code."""

from __future__ import annotations

import fractions
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_syndr import config, files
from dist_syndr.config import ModelConfig
from dist_syndr.evaluate.diagnostics.report import check_out_dir
from dist_syndr.features.model import build_model
from dist_syndr.runs import consolidate, folder, model_states, weights
from dist_syndr.runs.checkpoints import load_model, resolve_checkpoint
from dist_syndr.runs.folder import ExportProvenance, RunFolder
from dist_syndr.scoring.scorer import Scorer
from tests.conftest import PROJECT_ROOT

TINY = ["run_name=tiny", "model.backbone=vit_tiny_patch16_224", "model.is_random_init=true", "model.image_size=32"]
TINY += ["data.crop=32", "data.batch_size=3", "data.num_workers=1", "data.eval_crops=2", "runtime.device=cpu"]


class _TouchesMarker:
    """Unpickling it runs a shell command that writes a marker file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tiny_model(seed: int):
    torch.manual_seed(seed)
    return build_model(ModelConfig(backbone="vit_tiny_patch16_224", is_random_init=True, image_size=32)).eval()


def _run_folder(root: Path) -> RunFolder:
    run = RunFolder(root / "runs" / "tiny")
    config.dump(config.load(None, TINY), run.config_path)
    return run


def _stage0_tag(run: RunFolder, tag: str, model, *, extra: dict | None = None, complete: bool = True) -> Path:
    """A ZeRO-0 fp32 DeepSpeed tag as DeepSpeed lays it out (module, buffer names, client state)."""
    path = run.checkpoints / tag / consolidate.STAGE0_MODEL_STATES
    path.parent.mkdir(parents=True)
    saved = {"module": model.state_dict(), "buffer_names": [], "optimizer": None}
    saved["train_state"] = {"kept_positions": np.arange(4), "rng": {"numpy": np.random.get_state()}}
    torch.save(saved | (extra or {}), path)
    (run.checkpoints / "latest").write_text(tag)
    if complete:
        run.mark_complete(tag)
    return path


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def _launcher(name: str, *arguments, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    command = [sys.executable, str(PROJECT_ROOT / "launchers" / f"{name}.py"), *map(str, arguments)]
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _photo(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------
# a received run folder never runs its sender's code


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_hostile_model_states_file_is_refused_by_every_consumer_and_never_executed(tmp_path):
    marker = tmp_path / "marker"
    run = _run_folder(tmp_path)
    hostile = _stage0_tag(run, "epoch0000", _tiny_model(0), extra={"payload": _TouchesMarker(marker)})
    from dist_syndr.sharding.photos import photo_shard_set

    shard_set = photo_shard_set(tmp_path / "sets" / "s", ("astronaut",), (1,), size=48, seed=0, num_workers=1)
    image = _photo(tmp_path / "photo.png")
    commands = {
        "score": ["--checkpoint", run.root, "--out", tmp_path / "scores.csv", image],
        "evaluate": ["--checkpoint", run.root, "--target", f"s={shard_set.root}", "--no-tracking"],
        "export": ["--checkpoint", run.root, "--format", "safetensors", "--out", tmp_path / "m.safetensors"],
        "diagnose": ["--shard-set", shard_set.root, "--checkpoint", run.root, "--out", tmp_path / "diag"],
    }
    for name, arguments in commands.items():
        completed = _launcher(name, *arguments, cwd=tmp_path)
        lines = completed.stderr.strip().splitlines()
        assert completed.returncode == 2, (name, completed.stderr[-2000:])
        assert lines[-1].startswith(f"error: {hostile}: refused to unpickle: it asks for posix.system"), name
        assert "Traceback" not in completed.stderr and not marker.exists(), name
    with pytest.raises(model_states.UntrustedCheckpointError, match="--trust-checkpoint"):
        Scorer.load(run.root, "cpu")
    assert not marker.exists()


def test_a_foreign_but_harmless_type_loads_only_when_the_checkpoint_is_trusted(tmp_path):
    model = _tiny_model(3)
    run = _run_folder(tmp_path)
    path = _stage0_tag(run, "epoch0000", model, extra={"ratio": fractions.Fraction(1, 3)})
    with pytest.raises(model_states.UntrustedCheckpointError, match=rf"{path}: .* asks for fractions.Fraction"):
        load_model(run.root)
    _, loaded = load_model(run.root, is_trusted=True)
    assert _same_weights(loaded, model)
    completed = _launcher(
        "score", "--checkpoint", run.root, "--out", tmp_path / "s.csv", "--trust-checkpoint",
        _photo(tmp_path / "p.png"), cwd=tmp_path,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_this_trainers_own_checkpoint_types_load_without_trust(tmp_path):
    """numpy arrays and RNG states in the train state are on the allow-list: nothing to trust for our own runs."""
    model = _tiny_model(4)
    run = _run_folder(tmp_path)
    _stage0_tag(run, "epoch0000", model)
    assert _same_weights(load_model(run.root)[1], model)


# ---------------------------------------------------------------------------
# one rule for "the last checkpoint"


def test_consumers_follow_complete_not_latest_and_name_the_complete_tag_for_a_broken_one(tmp_path):
    good, partial = _tiny_model(1), _tiny_model(2)
    run = _run_folder(tmp_path)
    _stage0_tag(run, "epoch0000", good)
    broken = _stage0_tag(run, "epoch0000-step000004", partial, complete=False)  # `latest` names it now
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # a rank killed while writing
    assert (run.checkpoints / "latest").read_text() == "epoch0000-step000004"
    source = resolve_checkpoint(run.root)
    assert source.tag == "epoch0000" and _same_weights(load_model(run.root)[1], good)
    assert _same_weights(load_model(run.checkpoints)[1], good)
    expected = rf"{broken}: not a readable checkpoint file .*the last tag every rank finished is epoch0000"
    with pytest.raises(ValueError, match=expected):
        load_model(run.checkpoints / "epoch0000-step000004")


def _scores(csv_path: Path) -> dict[str, float]:
    import csv

    with csv_path.open() as handle:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(handle)}


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_two_rank_zero2_run_killed_with_latest_on_a_partial_tag_is_read_from_its_complete_tag(
    tmp_path, zero2_bf16_two_rank_run
):
    """A kill after rank 0 wrote `latest` but before rank 1 finished its partition: every consumer reads the tag
    `complete` names, with that tag's weights; the half-written tag itself is one line naming the file."""
    import shutil

    run = RunFolder(tmp_path / "run")
    shutil.copytree(zero2_bf16_two_rank_run, run.root)
    shards = zero2_bf16_two_rank_run.parents[1] / "shards" / "smoke-test"
    complete = run.complete_tag()
    assert run.export_provenance().tag == complete  # the training's own consolidation of that tag
    reference = tmp_path / "reference.pt"
    shutil.copy(run.weights_path, reference)
    shutil.copy(weights.checksum_path(run.weights_path), weights.checksum_path(reference))
    shutil.rmtree(run.export_dir)  # killed before the hand-over: no export
    partial = run.checkpoints / "epoch0002-step000003"
    shutil.copytree(run.checkpoints / complete, partial)
    half = next(partial.glob("*rank_1_*optim_states.pt"))
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    (run.checkpoints / folder.LATEST_NAME).write_text(partial.name)

    expected = weights.load_state_dict(reference)
    loaded = load_model(run.root)[1].state_dict()
    assert list(loaded) == list(expected) and all(torch.equal(loaded[k], expected[k]) for k in expected)
    image = _photo(tmp_path / "photo.png")
    by_run = _launcher("score", "--checkpoint", run.root, "--out", tmp_path / "run.csv", image, cwd=tmp_path)
    options = ["--config", run.config_path, "--out", tmp_path / "ref.csv", image]
    by_reference = _launcher("score", "--checkpoint", reference, *options, cwd=tmp_path)
    assert by_run.returncode == by_reference.returncode == 0, by_run.stderr[-2000:] + by_reference.stderr[-2000:]
    assert _scores(tmp_path / "run.csv") == pytest.approx(_scores(tmp_path / "ref.csv"), abs=1e-6)
    evaluated = _launcher(
        "evaluate", "--checkpoint", run.root, "--target", f"t={shards}", "--no-tracking", "--out", tmp_path / "ev",
        cwd=tmp_path,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    exported = _launcher(
        "export", "--checkpoint", run.root, "--format", "safetensors", "--out", tmp_path / "m.safetensors",
        cwd=tmp_path,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-2000:]
    saved = weights.load_state_dict(tmp_path / "m.safetensors")
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
    pointed = _launcher("score", "--checkpoint", partial, "--out", tmp_path / "p.csv", image, cwd=tmp_path)
    last = pointed.stderr.strip().splitlines()[-1]
    assert pointed.returncode == 2 and "Traceback" not in pointed.stderr
    assert last.startswith(f"error: {half}: not a readable checkpoint file")
    assert last.endswith(f"the last tag every rank finished is {complete} ({run.checkpoints / complete})")


def test_a_plain_deepspeed_folder_without_complete_follows_latest_with_a_warning(tmp_path, caplog):
    model = _tiny_model(5)
    run = _run_folder(tmp_path)
    _stage0_tag(run, "epoch0003", model, complete=False)
    with caplog.at_level("WARNING"):
        assert _same_weights(load_model(run.checkpoints)[1], model)
    assert "following DeepSpeed's 'latest' (epoch0003)" in caplog.text


def test_an_export_is_taken_only_while_complete_names_its_tag(tmp_path, caplog):
    exported, newer = _tiny_model(6), _tiny_model(7)
    run = _run_folder(tmp_path)
    _stage0_tag(run, "epoch0001", exported)
    path = weights.save_state_dict(exported.state_dict(), run.weights_path)
    run.record_export(ExportProvenance(tag="epoch0001", global_step=12, sha256=files.sha256_file(path)))
    assert resolve_checkpoint(run.root).state_dict_file == run.weights_path
    _stage0_tag(run, "epoch0002", newer)  # training went on after the export
    with caplog.at_level("WARNING"):
        source = resolve_checkpoint(run.root)
    assert source.state_dict_file is None and source.tag == "epoch0002"
    assert "came from checkpoint epoch0001, but checkpoints/complete names the newer epoch0002" in caplog.text
    assert _same_weights(load_model(run.root)[1], newer) and not run.is_finished()


def test_pruning_keeps_the_newest_tags_in_training_order_and_leaves_other_folders(tmp_path):
    run = RunFolder(tmp_path / "run")
    for tag in ("epoch0000", "epoch0001-step000010", "epoch0001", "epoch0002-step000005", "epochs-notes"):
        (run.checkpoints / tag).mkdir(parents=True)
    assert folder.checkpoint_tags(run.checkpoints) == [
        "epoch0000", "epoch0001-step000010", "epoch0001", "epoch0002-step000005",
    ]  # fmt: skip
    run.prune(keep=2, current="epoch0002-step000005")
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["epoch0001", "epoch0002-step000005", "epochs-notes"]


# ---------------------------------------------------------------------------
# names, fresh starts, locks


@pytest.mark.parametrize("name", ["..", "../elsewhere", "a/b", ".hidden", ""])
def test_run_name_must_be_a_plain_folder_name(name):
    with pytest.raises(ValueError, match="run_name: must be a plain folder name"):
        config.load(None, [f"run_name={name!r}" if name else "run_name=''"])


def _hold_lock(path, is_holding, may_release) -> None:
    with files.exclusive_lock(path, "held"):
        is_holding.set()
        may_release.wait(120)


@pytest.mark.timeout(300)
def test_a_second_training_on_one_run_folder_and_a_fresh_start_on_a_used_one_end_in_one_line(tmp_path):
    run = _run_folder(tmp_path)
    _stage0_tag(run, "epoch0000", _tiny_model(0))
    before = sorted(str(p) for p in run.root.rglob("*"))
    arguments = ["--config", run.config_path, f"train.output_dir={run.root.parent}", "train.is_smoke_data=true"]
    arguments += [f"train.shard_set={tmp_path / 'sets' / 'train'}", "train.epochs=1"]
    completed = _launcher("train", *arguments, "train.resume=never", cwd=tmp_path)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert (
        completed.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: train.resume=never: {run.root} already holds checkpoints or an export of an earlier run")
    )
    context = multiprocessing.get_context("spawn")
    is_holding, may_release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(run.lock_path, is_holding, may_release))
    holder.start()
    try:
        assert is_holding.wait(60)
        completed = _launcher("train", *arguments, cwd=tmp_path)
    finally:
        may_release.set()
        holder.join(60)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: run folder {run.root} is in use by another job (pid {holder.pid} on ")
    assert sorted(str(p) for p in run.root.rglob("*") if p.name != folder.LOCK_NAME) == before


def test_diagnostics_refuse_to_write_into_a_training_run_folder(tmp_path):
    run = _run_folder(tmp_path)
    run.checkpoints.mkdir(parents=True)
    with pytest.raises(ValueError, match="is a training run's folder; diagnostics would replace its tracking"):
        check_out_dir(run.root)
    check_out_dir(run.root / "diagnostics")


def test_an_unreadable_pointer_or_provenance_is_one_line(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    (run.checkpoints / folder.POINTER_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable checkpoint pointer"):
        run.complete_tag()
    run.mark_complete("epoch0009")
    with pytest.raises(ValueError, match="names checkpoint epoch0009, which is missing"):
        run.complete_tag()
    (run.export_dir).mkdir()
    (run.export_dir / folder.PROVENANCE_NAME).write_text(json.dumps({"tag": "x"}))
    with pytest.raises(ValueError, match="unreadable export provenance"):
        run.export_provenance()

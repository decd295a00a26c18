"""The training launcher on the CPU: one process and two under the deepspeed launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dist_syndr.tracking.tracker import tracking_uri
from tests.conftest import PROJECT_ROOT, mlflow_tracking_at
from tests.training_runs import (
    PRESET,
    deepspeed_command,
    final_weights,
    metric_history,
    overrides,
    run_env,
    two_rank_run,
)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_single_process_trains_reshapes_evaluates_checkpoints_and_resumes(tmp_path):
    command = [
        sys.executable,
        str(PROJECT_ROOT / "launchers" / "train.py"),
        "--config",
        str(PRESET),
        *overrides(tmp_path),
    ]
    subprocess.run(command, cwd=tmp_path, env=run_env(), check=True, timeout=400, capture_output=True)
    run_dir = tmp_path / "runs" / "cpu-smoke"
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} >= {"epoch0000", "epoch0001", "latest"}
    assert (run_dir / "config.yaml").is_file() and '"stage": 0' in (
        run_dir / "deepspeed.json"
    ).read_text()  # the preset's
    assert len(metric_history(tmp_path, "loss")) == 2
    kept = metric_history(tmp_path, "kept")
    assert len(kept) == 2 and all(0 < k < 60 for k in kept)  # DRCDown thinned the 60 samples every epoch
    assert len(metric_history(tmp_path, "smoke-test/srcc")) == 2
    _check_model_card_and_mlflow_model(tmp_path, run_dir, kept[-1])
    from dist_syndr.runs.folder import RunFolder

    run = RunFolder(run_dir)
    assert run.export_provenance().tag == run.complete_tag() == "epoch0001" and run.is_finished()
    # resume=auto: a third epoch continues the same run from the latest checkpoint, and its end replaces the
    # export that training made stale
    subprocess.run(
        [*command, "train.epochs=3"], cwd=tmp_path, env=run_env(), check=True, timeout=400, capture_output=True
    )
    assert len(metric_history(tmp_path, "loss")) == 3
    assert (run_dir / "checkpoints" / "epoch0002").is_dir()
    assert run.export_provenance().tag == run.complete_tag() == "epoch0002" and run.current_export() is not None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_single_process_trainings_run_at_once_on_one_host(tmp_path):
    """One process makes its group without a rendezvous: no fixed MASTER_PORT (its TCPStore listened on every
    interface, so a second run on the host failed), nothing bound. Two runs started together both finish."""
    runs = []
    for name in ("first", "second"):
        root = tmp_path / name
        root.mkdir()
        command = [sys.executable, str(PROJECT_ROOT / "launchers" / "train.py"), "--config", str(PRESET)]
        command += [*overrides(root), "train.epochs=1"]
        runs.append(
            subprocess.Popen(command, cwd=root, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    try:
        outputs = [run.communicate(timeout=500)[0].decode(errors="replace") for run in runs]
    finally:
        for run in runs:
            run.kill()
    for name, run, output in zip(("first", "second"), runs, outputs, strict=True):
        assert run.returncode == 0, f"{name} run failed:\n{output[-3000:]}"
        assert (tmp_path / name / "runs" / "cpu-smoke" / "checkpoints" / "epoch0000").is_dir()


def _check_model_card_and_mlflow_model(root, run_dir, kept):
    """The card beside the export holds LAST and BEST labelled as such; the run's MLflow model scores images."""
    import mlflow
    import pandas as pd
    from PIL import Image

    from dist_syndr.scoring.scorer import Scorer

    card = json.loads((run_dir / "export" / "model_card.json").read_text())
    assert card["metrics"]["last"]["smoke-test/srcc"] == pytest.approx(metric_history(root, "smoke-test/srcc")[-1])
    assert (
        card["metrics"]["best"]["smoke-test"]["epoch"] in (0, 1)
        and "chosen on that test set" in card["metrics"]["note"]
    )
    assert card["training_set"]["samples"] >= 60 and card["training_set"]["kept_last_epoch"] == kept
    assert "LAST SRCC" in (run_dir / "export" / "model_card.md").read_text()
    images = []
    for index in range(2):
        images.append(root / f"photo{index}.png")
        pixels = np.random.default_rng(index).integers(0, 256, (64, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images[-1])
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    with mlflow_tracking_at(tracking_uri(root / "mlruns")):
        loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/mlflow_model")
    predicted = loaded.predict(pd.DataFrame({"path": [str(p) for p in images]}))["score"].to_numpy(dtype=float)
    np.testing.assert_allclose(predicted, Scorer.load(run_dir, "cpu").score(images), atol=1e-6)


def test_bad_config_stops_before_any_process_group(tmp_path):
    command = [
        sys.executable,
        str(PROJECT_ROOT / "launchers" / "train.py"),
        "--config",
        str(PRESET),
        "train.is_smoke_data=false",
        *overrides(tmp_path),
    ]
    completed = subprocess.run(command, cwd=tmp_path, env=run_env(), timeout=120, capture_output=True, text=True)
    assert (
        completed.returncode == 2 and "error: " in completed.stderr and "not a finished shard set" in completed.stderr
    )
    assert "Traceback" not in completed.stderr
    missing_weights = [
        *command[:4],
        *overrides(tmp_path),
        "model.is_random_init=false",
        "model.weights=/nonexistent.pth",
    ]
    completed = subprocess.run(
        missing_weights, cwd=tmp_path, env=run_env(), timeout=120, capture_output=True, text=True
    )
    assert completed.returncode == 2 and "model.weights: /nonexistent.pth does not exist" in completed.stderr
    uneven = {**os.environ, **run_env(), "WORLD_SIZE": "3"}
    completed = subprocess.run(
        [*command[:4], *overrides(tmp_path), "train.global_batch_size=20"],
        cwd=tmp_path,
        env=uneven,
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert (
        completed.returncode == 2
        and "train.global_batch_size=20 does not match data.batch_size=8 x world size 3" in completed.stderr
    )


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, precision):
    """`deepspeed --num_gpus 2` on the CPU (gloo), ZeRO-1, fp32 and bf16 (autocast over fp32 weights): a straight
    run, and one killed with SIGKILL in epoch 1 after a mid-epoch checkpoint, then resumed: both end with
    bit-identical weights and metrics."""
    common = {
        "train.checkpoint_every_steps": 1,
        "train.log_every_steps": 1,
        "data.batch_size": 4,
        "train.zero_stage": 1,
        "train.precision": precision,
    }
    port = 29571 if precision == "fp32" else 29581
    straight = deepspeed_command(tmp_path, port, **common, **{"train.output_dir": tmp_path / "straight"})
    completed = subprocess.run(straight, cwd=tmp_path, env=run_env(), timeout=400, capture_output=True, text=True)
    assert completed.returncode == 0 and "exits successfully" in completed.stdout + completed.stderr, completed.stderr[
        -3000:
    ]
    assert (
        len(metric_history(tmp_path, "loss", "straight")) == 2
        and len(metric_history(tmp_path, "kept", "straight")) == 2
    )

    killed = deepspeed_command(tmp_path, port + 1, **common, **{"train.output_dir": tmp_path / "killed"})
    pointer = tmp_path / "killed" / "cpu-smoke" / "checkpoints" / "complete"
    process = subprocess.Popen(
        killed,
        cwd=tmp_path,
        env=run_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (pointer.is_file() and json.loads(pointer.read_text())["tag"].startswith("epoch0001-step")):
            assert process.poll() is None and time.monotonic() < deadline, (
                "run ended before a mid-epoch checkpoint of epoch 1"
            )
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (tmp_path / "killed" / "cpu-smoke" / "checkpoints" / "epoch0001").exists(), (
        "killed too late: epoch 1 had finished"
    )
    resumed = deepspeed_command(tmp_path, port + 2, **common, **{"train.output_dir": tmp_path / "killed"})
    completed = subprocess.run(resumed, cwd=tmp_path, env=run_env(), timeout=400, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "resumed from epoch0001-step" in completed.stdout + completed.stderr

    import torch

    (tag_a, weights_a), (tag_b, weights_b) = (
        final_weights(tmp_path / "straight" / "cpu-smoke"),
        final_weights(tmp_path / "killed" / "cpu-smoke"),
    )
    assert tag_a == tag_b == "epoch0001" and weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    for name in ("loss", "kept", "smoke-test/srcc", "smoke-test/plcc", "best/smoke-test/srcc"):
        assert metric_history(tmp_path, name, "straight")[-1] == metric_history(tmp_path, name, "killed")[-1], name
    for root in ("straight", "killed"):  # every rank recorded the same keep-list and step count in every epoch
        records = [
            [
                json.loads(line)
                for line in (tmp_path / root / "cpu-smoke" / "ranks" / f"rank-{r:04d}.jsonl").read_text().splitlines()
            ]
            for r in (0, 1)
        ]
        assert records[0] == records[1] and {r["epoch"] for r in records[0]} == {0, 1}


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stage_trains_checkpoints_and_resumes(tmp_path, stage):
    """ZeRO-1 runs in the tests above; stages 2 and 3 train an epoch, checkpoint, and resume from it."""
    command = [
        sys.executable,
        str(PROJECT_ROOT / "launchers" / "train.py"),
        "--config",
        str(PRESET),
        *overrides(tmp_path),
        f"train.zero_stage={stage}",
        "train.log_every_steps=2",
    ]
    subprocess.run(
        [*command, "train.epochs=1"], cwd=tmp_path, env=run_env(), check=True, timeout=400, capture_output=True
    )
    checkpoint = tmp_path / "runs" / "cpu-smoke" / "checkpoints" / "epoch0000"
    assert (
        any(checkpoint.glob("*optim_states.pt"))
        and f'"stage": {stage}' in (tmp_path / "runs" / "cpu-smoke" / "deepspeed.json").read_text()
    )
    completed = subprocess.run(
        [*command, "train.epochs=2"], cwd=tmp_path, env=run_env(), timeout=400, capture_output=True, text=True
    )
    assert completed.returncode == 0 and "resumed from epoch0000" in completed.stdout + completed.stderr, (
        completed.stderr[-3000:]
    )
    assert len(metric_history(tmp_path, "loss")) == 2 and len(metric_history(tmp_path, "train/loss")) >= 2


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("backbone", "stage"), [("vit_tiny_patch16_224", 2), ("resnet18", 0)])
def test_bf16_trains_evaluates_and_exports_on_two_ranks(request, tmp_path, backbone, stage):
    """What every GPU run uses, on the CPU: bf16 autocast over fp32 weights through the DRCDown feature pass
    (BatchNorm included), training, evaluation and the fp32 export, under `deepspeed --num_gpus 2`."""
    import torch

    if stage == 2:  # the shared run (tests/conftest.py), which tests/test_runs.py also reads
        tmp_path = request.getfixturevalue("zero2_bf16_two_rank_run").parents[1]
    else:
        extra = {"train.precision": "bf16", "model.backbone": backbone, "train.zero_stage": stage}
        two_rank_run(tmp_path, 29591 + stage, **extra)
    run_dir = tmp_path / "runs" / "cpu-smoke"
    generated = json.loads((run_dir / "deepspeed.json").read_text())
    autocast = {"enabled": True, "dtype": "bf16", "lower_precision_safe_modules": []}  # gradients reduced in fp32
    assert generated["torch_autocast"] == autocast and not generated["bf16"]["enabled"]
    assert len(metric_history(tmp_path, "loss")) == 2 and len(metric_history(tmp_path, "smoke-test/srcc")) == 2
    exported = torch.load(run_dir / "export" / "model_fp32.pt", map_location="cpu")
    _, final = final_weights(run_dir) if stage == 0 else (None, None)
    assert all(t.dtype in (torch.float32, torch.int64) for t in exported.values())
    if final is not None:  # stage 0: the module in the checkpoint is the fp32 master itself
        assert all(torch.equal(exported[k], final[k]) for k in final)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """One uninterrupted single-process smoke run: the weights every faulted run must end with."""
    root = tmp_path_factory.mktemp("straight")
    command = [
        sys.executable,
        str(PROJECT_ROOT / "launchers" / "train.py"),
        "--config",
        str(PRESET),
        *overrides(root),
    ]
    subprocess.run(command, cwd=root, env=run_env(), check=True, timeout=400, capture_output=True)
    return final_weights(root / "runs" / "cpu-smoke")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "where",
    [
        "epoch0001/mp_rank",  # DeepSpeed's checkpoint of epoch 1
        "keep_lists/.epoch0001",  # the keep-list of epoch 1
        "export/.model_fp32",  # the consolidated export at the end
    ],
)
def test_a_full_disk_names_the_path_and_a_rerun_ends_as_an_uninterrupted_run(tmp_path, straight_run, where):
    """ENOSPC injected at one write (tests/faults/sitecustomize.py): the run stops with one line naming the
    path, the last complete checkpoint stays the resume point, and the rerun ends with the straight run's weights."""
    import torch

    command = [
        sys.executable,
        str(PROJECT_ROOT / "launchers" / "train.py"),
        "--config",
        str(PRESET),
        *overrides(tmp_path),
    ]
    faulted = run_env() | {
        "PYTHONPATH": f"{PROJECT_ROOT / 'tests' / 'faults'}:{PROJECT_ROOT}",
        "DIST_SYNDR_FAIL_WRITE": where,
    }
    completed = subprocess.run(command, cwd=tmp_path, env=faulted, timeout=400, capture_output=True, text=True)
    last_line = completed.stderr.strip().splitlines()[-1]
    assert (
        completed.returncode == 1 and last_line.startswith("error: No space left on device: ") and where in last_line
    )
    run_dir = tmp_path / "runs" / "cpu-smoke"
    pointer = json.loads((run_dir / "checkpoints" / "complete").read_text())["tag"]
    assert pointer == ("epoch0001" if where.startswith("export") else "epoch0000")
    assert not list(run_dir.rglob(".*.tmp-*"))  # no temporary file left behind
    rerun = subprocess.run(command, cwd=tmp_path, env=run_env(), timeout=400, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    tag, weights = final_weights(run_dir)
    straight_tag, straight_weights = straight_run
    assert tag == straight_tag == "epoch0001" and weights.keys() == straight_weights.keys()
    assert all(torch.equal(weights[k], straight_weights[k]) for k in weights)
    assert (run_dir / "export" / "model_fp32.pt").is_file()


@pytest.mark.gpu
@pytest.mark.dali
@pytest.mark.timeout(900)
def test_one_gpu_bf16_zero2_with_dali_mixed_decoder(tmp_path):
    """The GPU path of the trainer: NCCL, bf16, ZeRO-2, DALI decoding on the device, FAISS on the GPU for DRCDown."""
    extra = [
        "runtime.device=cuda",
        "runtime.dali=gpu",
        "train.precision=bf16",
        "train.zero_stage=2",
        "train.epochs=2",
        "train.log_every_steps=2",
    ]
    command = [
        sys.executable,
        str(PROJECT_ROOT / "launchers" / "train.py"),
        "--config",
        str(PRESET),
        *overrides(tmp_path),
        *extra,
    ]
    completed = subprocess.run(command, cwd=tmp_path, env=run_env(), timeout=800, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "DALI loader on gpu" in completed.stdout + completed.stderr
    assert (
        len(metric_history(tmp_path, "loss")) == 2
        and (tmp_path / "runs" / "cpu-smoke" / "export" / "model_fp32.pt").is_file()
    )

"""The training launcher on the CPU: one process and two under the deepspeed launcher."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dist_syndr import tracking
from tests.conftest import PROJECT_ROOT

PRESET = PROJECT_ROOT / "configs" / "train" / "cpu-smoke.yaml"


def _overrides(root, **extra):
    values = {
        "train.shard_set": root / "shards" / "smoke-train",
        "train.targets": f"[smoke-test={root / 'shards' / 'smoke-test'}]",
        "train.output_dir": root / "runs",
    } | extra
    return [f"{key}={value}" for key, value in values.items()]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MLFLOW_TRACKING_URI")}
    env["TORCH_EXTENSIONS_DIR"] = str(PROJECT_ROOT / ".cache" / "torch_extensions")
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    return env


def _metric_history(root, name):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(root / "mlruns"))
    run_id = (root / "runs" / "cpu-smoke" / "mlflow_run_id").read_text().strip()
    return [m.value for m in client.get_metric_history(run_id, name)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_single_process_trains_reshapes_evaluates_checkpoints_and_resumes(tmp_path):
    command = [sys.executable, str(PROJECT_ROOT / "launchers" / "train.py"), "--config", str(PRESET), *_overrides(tmp_path)]
    subprocess.run(command, cwd=tmp_path, env=_env(), check=True, timeout=400, capture_output=True)
    run_dir = tmp_path / "runs" / "cpu-smoke"
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} >= {"epoch0000", "epoch0001", "latest"}
    assert (run_dir / "config.yaml").is_file() and '"stage": 1' in (run_dir / "deepspeed.json").read_text()
    assert len(_metric_history(tmp_path, "loss")) == 2
    kept = _metric_history(tmp_path, "kept")
    assert len(kept) == 2 and all(0 < k < 60 for k in kept)  # DRCDown thinned the 60 samples every epoch
    assert len(_metric_history(tmp_path, "smoke-test/srcc")) == 2
    # resume=auto: a third epoch continues the same run from the latest checkpoint
    subprocess.run([*command, "train.epochs=3"], cwd=tmp_path, env=_env(), check=True, timeout=400, capture_output=True)
    assert len(_metric_history(tmp_path, "loss")) == 3
    assert (run_dir / "checkpoints" / "epoch0002").is_dir()


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_deepspeed_launcher_with_two_cpu_processes(tmp_path):
    deepspeed = PROJECT_ROOT / ".venv" / "bin" / "deepspeed"
    if not deepspeed.is_file():
        pytest.skip(f"{deepspeed} not found (run through make test)")
    command = [str(deepspeed), "--num_gpus", "2", "--master_port", "29561", str(PROJECT_ROOT / "launchers" / "train.py"), "--config", str(PRESET), *_overrides(tmp_path)]
    completed = subprocess.run(command, cwd=tmp_path, env=_env(), timeout=500, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "exits successfully" in completed.stdout + completed.stderr
    assert len(_metric_history(tmp_path, "loss")) == 2 and len(_metric_history(tmp_path, "kept")) == 2


def test_bad_config_stops_before_any_process_group(tmp_path):
    command = [sys.executable, str(PROJECT_ROOT / "launchers" / "train.py"), "--config", str(PRESET), "train.is_smoke_data=false", *_overrides(tmp_path)]
    completed = subprocess.run(command, cwd=tmp_path, env=_env(), timeout=120, capture_output=True, text=True)
    assert completed.returncode == 2 and "error: " in completed.stderr and "not a finished shard set" in completed.stderr
    assert "Traceback" not in completed.stderr
    missing_weights = [*command[:4], *_overrides(tmp_path), "model.is_random_init=false", "model.weights=/nonexistent.pth"]
    completed = subprocess.run(missing_weights, cwd=tmp_path, env=_env(), timeout=120, capture_output=True, text=True)
    assert completed.returncode == 2 and "model.weights: /nonexistent.pth does not exist" in completed.stderr

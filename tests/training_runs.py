"""Smoke trainings the tests share: the preset, its overrides and environment, and the commands that run it."""

from __future__ import annotations

import json
import os

import pytest

from dist_syndr.tracking.tracker import tracking_uri
from tests.conftest import PROJECT_ROOT, TORCH_EXTENSIONS_DIR, VENV_BIN

PRESET = PROJECT_ROOT / "configs" / "train" / "cpu-smoke.yaml"


def overrides(root, **extra):
    values = {
        "train.shard_set": root / "shards" / "smoke-train",
        "train.targets": f"[smoke-test={root / 'shards' / 'smoke-test'}]",
        "train.output_dir": root / "runs",
    } | extra
    return [f"{key}={value}" for key, value in values.items()]


def run_env():
    dropped = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MLFLOW_TRACKING_URI")
    values = {k: v for k, v in os.environ.items() if k not in dropped}
    return values | {"TORCH_EXTENSIONS_DIR": TORCH_EXTENSIONS_DIR, "PYTHONPATH": str(PROJECT_ROOT)}


def metric_history(root, name, runs="runs"):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri(root / "mlruns"))
    run_id = (root / runs / "cpu-smoke" / "mlflow_run_id").read_text().strip()
    return [m.value for m in sorted(client.get_metric_history(run_id, name), key=lambda m: (m.step, m.timestamp))]


def deepspeed_command(root, port, **extra):
    deepspeed = VENV_BIN / "deepspeed"
    if not deepspeed.is_file():
        pytest.skip(f"{deepspeed} not found (run through make test)")
    launcher = [
        str(deepspeed),
        "--num_gpus",
        "2",
        "--master_port",
        str(port),
        str(PROJECT_ROOT / "launchers" / "train.py"),
    ]
    return [*launcher, "--config", str(PRESET), *overrides(root, **extra)]


def final_weights(run_dir):
    import torch

    tag = json.loads((run_dir / "checkpoints" / "complete").read_text())["tag"]
    return tag, torch.load(
        run_dir / "checkpoints" / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
    )["module"]


def two_rank_run(root, port, **extra):
    """``deepspeed --num_gpus 2`` on the CPU (gloo) trains the smoke preset with ``extra`` overrides under ``root``;
    returns the run folder."""
    import subprocess

    completed = subprocess.run(
        deepspeed_command(root, port, **extra), cwd=root, env=run_env(), timeout=500, capture_output=True, text=True
    )
    assert completed.returncode == 0 and "exits successfully" in completed.stdout + completed.stderr, completed.stderr[
        -3000:
    ]
    return root / "runs" / "cpu-smoke"

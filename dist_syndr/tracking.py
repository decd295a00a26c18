"""Experiment tracking: MLflow on rank 0, a null tracker on every other rank.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else a local SQLite store
``sqlite:///<root>/mlflow.db`` with artifacts beside it. Parameters are the
flattened resolved config; tags name the git commit, world size and backends.

Shapes: none.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from dist_syndr import config as config_module

log = logging.getLogger(__name__)

_MLFLOW_PARAM_LIMIT = 6000  # characters MLflow stores per parameter value


class NullTracker:
    """Accepts every call and records nothing (ranks other than 0)."""

    run_id: str | None = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Ignored."""

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Ignored."""

    def close(self, status: str = "FINISHED") -> None:
        """Ignored."""


class MlflowTracker:
    """One MLflow run: params from the config, metrics by step, artifacts, tags."""

    def __init__(self, cfg: config_module.Config, *, experiment: str, root: Path, tags: dict[str, str], run_id: str | None = None):
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri(root))
        experiment_id = self._experiment_id(experiment, root)
        if run_id is None:
            run = self.client.create_run(experiment_id, run_name=cfg.run_name, tags=tags)
            self.run_id = run.info.run_id
            self._log_params(config_module.flatten(cfg))
        else:
            self.run_id = run_id  # a resumed run continues its own record
        log.info("MLflow run %s at %s", self.run_id, tracking_uri(root))

    def _experiment_id(self, name: str, root: Path) -> str:
        existing = self.client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        return self.client.create_experiment(name, artifact_location=(root / "artifacts").resolve().as_uri())

    def _log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        entries = [Param(key, str(value)[:_MLFLOW_PARAM_LIMIT]) for key, value in sorted(params.items())]
        for start in range(0, len(entries), 100):
            self.client.log_batch(self.run_id, params=entries[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record numeric metrics at ``step`` (NaN values are kept: they mean undefined)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, step) for key, value in sorted(metrics.items())]
        self.client.log_batch(self.run_id, metrics=entries)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Copy a file into the run's artifacts."""
        self.client.log_artifact(self.run_id, str(path), folder)

    def close(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED)."""
        self.client.set_terminated(self.run_id, status)


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` or the local SQLite store under ``root``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def git_commit(folder: Path) -> str:
    """The checkout's commit hash, or ``unknown`` outside git."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def make_tracker(cfg: config_module.Config, *, rank: int, experiment: str, root: Path, tags: dict[str, str], run_id: str | None = None):
    """An :class:`MlflowTracker` on rank 0, a :class:`NullTracker` elsewhere."""
    if rank != 0:
        return NullTracker()
    return MlflowTracker(cfg, experiment=experiment, root=root, tags=tags, run_id=run_id)

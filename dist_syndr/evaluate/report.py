"""What ``launchers/evaluate.py`` writes and logs: a metrics table, per-image CSVs, ``metrics.json``,
and the ``eval/<target>/<metric>`` records in MLflow (into the training run or a new one).

Shapes: none.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

from dist_syndr import files, runtime, source
from dist_syndr.config import Config
from dist_syndr.evaluate import metrics
from dist_syndr.evaluate.predict import Predictions, write_predictions_csv
from dist_syndr.tracking.tracker import LOCAL_DIR_NAME, make_tracker, tracking_uri

log = logging.getLogger(__name__)

MLFLOW_ROOT = Path("mlruns")
_TITLES = {
    "srcc": "SRCC",
    "plcc": "PLCC",
    "krcc": "KRCC",
    "rmse": "RMSE",
    "plcc_logistic": "PLCC-logistic",
    "rmse_logistic": "RMSE-logistic",
}
COLUMNS = tuple((key, _TITLES[key]) for key in metrics.METRIC_KEYS)  # a key without a title fails at import


def write_results(
    out: Path, checkpoint: Path, results: dict[str, float], predictions: dict[str, Predictions]
) -> list[Path]:
    """``<out>/<target>_predictions.csv`` per target and ``<out>/metrics.json``; returns their paths."""
    written = [write_predictions_csv(out / f"{name}_predictions.csv", p) for name, p in predictions.items()]
    written.append(_write_metrics_json(out / "metrics.json", checkpoint, results, predictions))
    return written


def format_table(results: dict[str, float], predictions: dict[str, Predictions]) -> str:
    """One row per target: images, then every ``COLUMNS`` metric (``-`` without labels)."""
    width = max([len("target"), *(len(name) for name in predictions)])
    header = f"{'target':<{width}}  {'images':>7}" + "".join(f"  {title:>13}" for _, title in COLUMNS)
    lines = [header, "-" * len(header)]
    for name, p in predictions.items():
        cells = [_cell(results.get(f"{name}/{key}")) for key, _ in COLUMNS]
        lines.append(f"{name:<{width}}  {len(p):>7}" + "".join(f"  {cell:>13}" for cell in cells))
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return "nan" if math.isnan(value) else f"{value:.4f}"


def _write_metrics_json(path: Path, checkpoint: Path, results: dict[str, float], predictions: dict) -> Path:
    record = {
        "checkpoint": str(checkpoint),
        "metrics": {key: (None if math.isnan(value) else value) for key, value in sorted(results.items())},
        "num_images": {name: len(p) for name, p in predictions.items()},
    }
    return files.write_text(path, json.dumps(record, indent=2))


def existing_run_status(run_id: str) -> str:
    """The status of the existing run ``run_id`` (checked before any work is done)."""
    import mlflow

    uri = tracking_uri(MLFLOW_ROOT)
    try:
        return mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).info.status
    except mlflow.exceptions.MlflowException:
        raise ValueError(f"--run-id {run_id}: no such MLflow run at {uri}") from None


@dataclasses.dataclass(frozen=True)
class TrackingTarget:
    """Where evaluation results go in MLflow: into ``run_id`` (whose status ``run_status`` is kept), or a new run."""

    run_id: str | None = None
    run_status: str | None = None
    experiment: str | None = None  # a new run's experiment (default: train.experiment)
    step: int = 0


def log_evaluation(
    cfg: Config,
    target: TrackingTarget,
    results: dict[str, float],
    written: list[Path],
    *,
    checkpoint: Path,
    out: Path,
    device: str,
) -> str | None:
    """Log ``eval/<target>/<metric>`` and the written files; returns the MLflow run id (None before delivery)."""
    _, world_size = runtime.rank_world()
    tags = {
        "git_commit": source.git_commit(),
        "world_size": str(world_size),
        "device": device,
        "checkpoint": str(checkpoint.resolve()),
    }
    # The journal stays beside the results: records a dead server could not take are pushed later
    # with compare.py --sync.
    journal = out / f"{LOCAL_DIR_NAME}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    named = cfg if target.run_id else dataclasses.replace(cfg, run_name=f"evaluate-{cfg.run_name}")
    experiment = target.experiment or cfg.train.experiment
    tracker = make_tracker(
        named, rank=0, experiment=experiment, root=MLFLOW_ROOT, tags=tags, run_id=target.run_id, local_dir=journal
    )
    tracker.log_metrics({f"eval/{key}": value for key, value in results.items()}, step=target.step)
    for path in written:
        tracker.log_artifact(path, "eval")
    # Closing delivers everything; an existing run gets back the status it had (a run left RUNNING
    # by a crashed or live training is marked FINISHED, which its own close would do anyway).
    status = target.run_status
    if status not in (None, "FINISHED", "FAILED", "KILLED"):
        log.warning("MLflow run %s was %s; marking it FINISHED", target.run_id, status)
    tracker.close(status if status in ("FAILED", "KILLED") else "FINISHED")
    return tracker.run_id

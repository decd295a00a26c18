"""Running a study's trainings: each as ``python -m dist_syndr.train``, finished ones reused, several at once.

A run is reused when its folder holds exported weights, an MLflow run id and a
``config.yaml`` equal to the config the study would give it now; any other run
is (re)started, and ``train.resume=auto`` continues it from its last complete
checkpoint, so a killed study resumes. With ``parallel > 1`` runs start side by
side, each with its own rendezvous port and a share of the CPU threads. Each
run's output goes to ``<study folder>/logs/<run name>.log``.

Shapes: none.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dist_syndr import config, runtime, source
from dist_syndr.features.model import resolved_config
from dist_syndr.runs.folder import RunFolder
from dist_syndr.study.plan import StudyRun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    """A finished run of the study: its MLflow id, and whether it was trained now or reused."""

    run: StudyRun
    run_id: str
    run_dir: Path
    was_reused: bool
    seconds: float


def _is_finished(folder: Path, expected_config: str) -> bool:
    """True when ``folder`` holds a finished run whose ``config.yaml`` is ``expected_config``."""
    run = RunFolder(folder)
    return run.is_finished() and run.config_path.read_text() == expected_config


def run_all(preset: Path, runs: list[StudyRun], logs: Path, *, parallel: int = 1) -> list[RunOutcome]:
    """Train every run not finished yet (``parallel`` at a time); outcomes in ``runs`` order. RuntimeError naming
    the run and its log when a training fails."""
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    threads = max(1, (os.cpu_count() or 1) // parallel)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(_one, preset, run, logs, threads if parallel > 1 else None) for run in runs]
        return [future.result() for future in futures]


def _one(preset: Path, run: StudyRun, logs: Path, threads: int | None) -> RunOutcome:
    cfg = config.load(preset, list(run.overrides))
    recorded = dataclasses.replace(cfg, model=resolved_config(cfg.model))  # what training writes to config.yaml
    folder, expected = Path(cfg.train.output_dir) / cfg.run_name, config.dump(recorded)
    started = time.perf_counter()
    reused = _is_finished(folder, expected)
    if not reused:
        log.info("training %s", run.run_name)
        _train(preset, run, logs / f"{run.run_name}.log", threads)
        if not _is_finished(folder, expected):
            raise RuntimeError(f"{run.run_name}: training ended without its export; see {logs / run.run_name}.log")
    run_id = RunFolder(folder).run_id_path.read_text().strip()
    return RunOutcome(run, run_id, folder, reused, time.perf_counter() - started)


def _train(preset: Path, run: StudyRun, log_path: Path, threads: int | None) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["MASTER_PORT"] = str(runtime.free_port())
    env.setdefault("PYTHONPATH", str(source.PROJECT_ROOT))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "dist_syndr.train", "--config", str(preset), *run.overrides]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as output:
        completed = subprocess.run(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-12:])
        raise RuntimeError(f"{run.run_name}: training failed (exit {completed.returncode}); log {log_path}:\n{tail}")

"""Score a checkpoint on target sets: SRCC, PLCC, KRCC, RMSE and logistic PLCC per target.

    python launchers/evaluate.py --checkpoint runs/vit-b --target livec=/data/ChallengeDB_release \\
        --target koniq=/data/koniq10k --target mine=csv:/data/mine/labels.csv [key=value ...]
    torchrun --nproc_per_node 8 launchers/evaluate.py --checkpoint runs/vit-b/checkpoints/epoch0023 ...

--checkpoint: a run folder (its export/model_fp32.pt, else its latest DeepSpeed
checkpoint), a DeepSpeed checkpoint folder or one tag of it, or a .pt /
.safetensors state dict. The run's config.yaml is found beside it (or give
--config). A target is NAME=DIR: a shard set (with index.json), or a dataset
folder read by the reader NAME names (livec, koniq, bid, kadid, tid2013, ...)
or KIND:DIR; raw datasets are sharded once into --cache-dir/NAME. Without
--target the config's train.targets are used. Writes <out>/<target>_predictions.csv
and <out>/metrics.json and logs them to MLflow: into --run-id as eval/<target>/<metric>,
else into a new run evaluate-<run_name> of --experiment.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

from dist_syndr import cli, files, runtime
from dist_syndr.evaluate import predict
from dist_syndr.evaluate.checkpoints import load_model
from dist_syndr.evaluate.targets import parse_target, target_shard_set
from dist_syndr.tracking import tracker as tracking

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MLFLOW_ROOT = Path("mlruns")
COLUMNS = (("srcc", "SRCC"), ("plcc", "PLCC"), ("krcc", "KRCC"), ("rmse", "RMSE"), ("plcc_logistic", "PLCC-logistic"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument(
        "--target", action="append", default=[], metavar="NAME=DIR", help="repeatable; NAME=DIR or NAME=KIND:DIR"
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="the run's config (default: config.yaml beside the checkpoint)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: evaluation/<run_name>)")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="shard sets of raw targets (default: <shard.output_root>/targets)"
    )
    tracked = parser.add_mutually_exclusive_group()
    tracked.add_argument(
        "--run-id", default=None, help="log into this MLflow run (e.g. the training run) as eval/<target>/<metric>"
    )
    tracked.add_argument("--experiment", default=None, help="new run's MLflow experiment (default: train.experiment)")
    tracked.add_argument("--no-tracking", action="store_true", help="write files only, log nothing to MLflow")
    parser.add_argument("--step", type=int, default=0, help="MLflow step of the metrics")
    parser.add_argument(
        "--local_rank", type=int, default=None, help=argparse.SUPPRESS
    )  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides of the run's config")
    args = parser.parse_args(argv)

    # ---- checkpoint, config and targets, checked before any process-group work
    cfg, model = load_model(args.checkpoint, args.config, args.overrides)
    targets = _targets(args.target or cfg.train.targets)
    rank, _, _ = runtime.env_rank_world()
    run_status = _run_status(args.run_id) if args.run_id and rank == 0 and not args.no_tracking else None

    # ---- backends, model on its device, target shard sets
    backends = runtime.init(cfg.runtime)
    model = model.to(backends.device)
    cache_dir = args.cache_dir or Path(cfg.shard.output_root) / "targets"
    shard_sets = {
        name: target_shard_set(name, spec, cache_dir, num_workers=cfg.shard.num_workers, seed=cfg.seed)
        for name, spec in targets.items()
    }

    # ---- predictions and metrics (every rank takes part)
    results, predictions = predict.evaluate_targets(
        model, shard_sets, cfg.data, device=backends.device, dali=cfg.runtime.dali, seed=cfg.seed
    )

    # ---- files, table, tracking (rank 0)
    if backends.rank == 0:
        out = args.out or Path("evaluation") / cfg.run_name
        files = [predict.write_predictions_csv(out / f"{name}_predictions.csv", p) for name, p in predictions.items()]
        files.append(_write_metrics_json(out / "metrics.json", args.checkpoint, results, predictions))
        print(format_table(results, predictions), flush=True)
        if not args.no_tracking:
            _track(cfg, args, results, files, backends, run_status, out)
    runtime.shutdown()
    return 0


def _targets(entries: list[str]) -> dict[str, str]:
    if not entries:
        raise ValueError("no targets: give --target NAME=DIR (or set train.targets in the config)")
    targets: dict[str, str] = {}
    for entry in entries:
        name, separator, spec = entry.partition("=")
        if not separator or not name or not spec:
            raise ValueError(f"--target {entry!r}: expected NAME=DIR or NAME=KIND:DIR")
        if name in targets:
            raise ValueError(f"--target {name}: given twice")
        _, root = parse_target(name, spec)  # checks the name
        if not root.exists():
            raise ValueError(f"target {name}: {root} does not exist")
        targets[name] = spec
    return targets


def _run_status(run_id: str) -> str:
    """The status of the existing run ``run_id`` (checked before any work is done)."""
    import mlflow

    uri = tracking.tracking_uri(MLFLOW_ROOT)
    try:
        return mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).info.status
    except mlflow.exceptions.MlflowException:
        raise ValueError(f"--run-id {run_id}: no such MLflow run at {uri}") from None


def format_table(results: dict[str, float], predictions: dict[str, predict.Predictions]) -> str:
    """One row per target: images, then SRCC, PLCC, KRCC, RMSE and logistic PLCC (``-`` without labels)."""
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


def _track(
    cfg,
    args,
    results: dict[str, float],
    files: list[Path],
    backends: runtime.Backends,
    run_status: str | None,
    out: Path,
) -> None:
    tags = {
        "git_commit": tracking.git_commit(PROJECT_ROOT),
        "world_size": str(backends.world_size),
        "device": backends.device,
        "checkpoint": str(args.checkpoint.resolve()),
    }
    # The journal stays beside the results: records a dead server could not take are pushed later with compare.py --sync.
    journal = out / f"{tracking.LOCAL_DIR_NAME}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    if args.run_id:
        tracker = tracking.make_tracker(
            cfg,
            rank=0,
            experiment=cfg.train.experiment,
            root=MLFLOW_ROOT,
            tags=tags,
            run_id=args.run_id,
            local_dir=journal,
        )
    else:
        named = dataclasses.replace(cfg, run_name=f"evaluate-{cfg.run_name}")
        tracker = tracking.make_tracker(
            named,
            rank=0,
            experiment=args.experiment or cfg.train.experiment,
            root=MLFLOW_ROOT,
            tags=tags,
            local_dir=journal,
        )
    tracker.log_metrics({f"eval/{key}": value for key, value in results.items()}, step=args.step)
    for path in files:
        tracker.log_artifact(path, "eval")
    # Closing delivers everything; an existing run gets back the status it had (a run left RUNNING
    # by a crashed or live training is marked FINISHED, which its own close would do anyway).
    if run_status not in (None, "FINISHED", "FAILED", "KILLED"):
        print(f"MLflow run {args.run_id} was {run_status}; marking it FINISHED", flush=True)
    tracker.close(run_status if run_status in ("FAILED", "KILLED") else "FINISHED")
    print(f"MLflow run {tracker.run_id}", flush=True)


if __name__ == "__main__":
    cli.run(main)

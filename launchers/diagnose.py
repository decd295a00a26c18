"""Clustering diagnostics of a model on a shard set, before and after DRCDown.

    python launchers/diagnose.py --shard-set shards/<set> --checkpoint runs/<run>/checkpoints [--config CFG]
    python launchers/diagnose.py --shard-set shards/<set> --random-init [--config CFG] [key=value ...]
    ... [--out DIR] [--method pca|tsne] [--run-id ID | --experiment NAME] [--epoch N]

The original (non-upsampled) samples are embedded with the model, DRCDown runs
with ``reshape.drcdown`` (always, even where a config disables it for training;
its seed comes from ``seed`` and ``--epoch``), and the silhouettes and k-NN label
consistencies by reference and by distortion type are measured on all samples
and on the kept ones. Written to ``--out``: ``diagnostics.json``,
``clusters_hist.png``, ``embedding_before.png``, ``embedding_after.png``; logged
to MLflow as ``diag/<measure>/before|after`` at step ``--epoch``, into
``--run-id`` (e.g. the training run, left open) or a new run of ``--experiment``,
through the tracking journal ``--out``/tracking: records a down server did not
take are pushed later with ``python launchers/compare.py --sync <out>/tracking``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
from pathlib import Path

import torch

from dist_syndr import cli, config, runtime
from dist_syndr.evaluate.checkpoints import load_model
from dist_syndr.evaluate.diagnostics.clusters import format_table
from dist_syndr.evaluate.diagnostics.report import Diagnosis, diagnose
from dist_syndr.features.model import build_model
from dist_syndr.sharding.shard_set import ShardSet
from dist_syndr.tracking.journal import Journal
from dist_syndr.tracking.tracker import LOCAL_DIR_NAME, git_commit, make_tracker

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "train" / "cpu-smoke.yaml"
log = logging.getLogger("dist_syndr.diagnose")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    # ---- configuration, backends, model
    if runtime.env_rank_world()[1] > 1:
        raise ValueError("launchers/diagnose.py runs as one process; start it without a distributed launcher")
    shard_set = ShardSet(args.shard_set)
    if args.checkpoint is not None:
        cfg, model = load_model(args.checkpoint, args.config, args.overrides)
    else:
        cfg = config.load(
            args.config or DEFAULT_CONFIG, [*args.overrides, "model.is_random_init=true", "model.weights="]
        )
        torch.manual_seed(cfg.seed)  # the same random model, hence the same measures, on every run
        model = build_model(cfg.model)
    backends = runtime.init(cfg.runtime)
    out_dir = args.out or Path(cfg.train.output_dir) / "diagnostics" / shard_set.root.name

    # ---- features, DRCDown, measures, plots
    model_name = str(args.checkpoint) if args.checkpoint is not None else "random-init"
    diagnosis = diagnose(
        model.to(backends.device),
        shard_set,
        cfg,
        out_dir,
        device=backends.device,
        model_name=model_name,
        epoch=args.epoch,
        method=args.method,
        max_points=args.max_points,
    )

    # ---- report and tracking
    print(format_table(diagnosis.report["measures"]))
    print(diagnosis.summary())
    _track(cfg, args, out_dir, diagnosis)
    print(f"written: {out_dir}", flush=True)
    runtime.shutdown()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard-set", type=Path, required=True, help="a written shard set (folder with index.json)")
    model_source = parser.add_mutually_exclusive_group(required=True)
    model_source.add_argument(
        "--checkpoint", type=Path, help="a training checkpoint (see dist_syndr.evaluate.checkpoints)"
    )
    model_source.add_argument(
        "--random-init", action="store_true", help="a randomly initialised model (model.is_random_init=true)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help=f"training config (default with --random-init: {DEFAULT_CONFIG.relative_to(PROJECT_ROOT)})",
    )
    parser.add_argument(
        "--out", type=Path, help="output folder (default: <train.output_dir>/diagnostics/<shard set name>)"
    )
    parser.add_argument("--method", choices=("pca", "tsne"), default="pca", help="2-D embedding of the plots")
    parser.add_argument("--max-points", type=int, default=3000, help="points drawn per embedding plot")
    parser.add_argument("--epoch", type=int, default=0, help="DRCDown epoch seed and MLflow step")
    tracking_target = parser.add_mutually_exclusive_group()
    tracking_target.add_argument("--run-id", help="log into this existing MLflow run (e.g. the training run)")
    tracking_target.add_argument(
        "--experiment", help="log a new run into this MLflow experiment (default: train.experiment)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    return parser


def _track(cfg: config.Config, args: argparse.Namespace, out_dir: Path, diagnosis: Diagnosis) -> None:
    cfg = dataclasses.replace(cfg, run_name=f"{cfg.run_name}-diagnose-{out_dir.name}")
    tags = {"git_commit": git_commit(PROJECT_ROOT), "dist_syndr.kind": "diagnostics", "shard_set": str(args.shard_set)}
    journal_dir = out_dir / LOCAL_DIR_NAME
    if Journal.exists(journal_dir) and Journal(journal_dir).num_pending() == 0:
        shutil.rmtree(journal_dir)  # delivered in full: this invocation is a run (or a visit to --run-id) of its own
    experiment = args.experiment or cfg.train.experiment
    tracker = make_tracker(
        cfg, rank=0, experiment=experiment, root=Path("mlruns"), tags=tags, run_id=args.run_id, local_dir=journal_dir
    )
    tracker.log_metrics(diagnosis.metrics, step=args.epoch)
    for path in diagnosis.files:
        tracker.log_artifact(path, "diagnostics")
    if args.run_id is None:
        tracker.close()
        log.info("diagnostics logged as MLflow run %s", tracker.run_id)
    elif not tracker.flush(timeout_s=60.0):
        # The run belongs to someone else (a training run): it is left open, not ended.
        log.warning(
            "diagnostics not yet delivered to run %s; push them with `python launchers/compare.py --sync %s`",
            args.run_id,
            tracker.local_dir,
        )


if __name__ == "__main__":
    cli.run(main)

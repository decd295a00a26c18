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
from pathlib import Path

import torch

from dist_syndr import cli, config, runtime, source
from dist_syndr.evaluate.diagnostics.clusters import format_table
from dist_syndr.evaluate.diagnostics.report import diagnose, log_diagnosis
from dist_syndr.features.model import build_model
from dist_syndr.runs.checkpoints import load_model
from dist_syndr.sharding.shard_set import ShardSet

DEFAULT_CONFIG = source.PROJECT_ROOT / "configs" / "train" / "cpu-smoke.yaml"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    # ---- configuration, backends, model
    if runtime.env_rank_world()[1] > 1:
        raise ValueError("launchers/diagnose.py runs as one process; start it without a distributed launcher")
    shard_set = ShardSet(args.shard_set)
    if args.checkpoint is not None:
        cfg, model = load_model(args.checkpoint, args.config, args.overrides, is_trusted=args.trust_checkpoint)
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
    options = {"epoch": args.epoch, "method": args.method, "max_points": args.max_points}
    diagnosis = diagnose(
        model.to(backends.device), shard_set, cfg, out_dir, device=backends.device, model_name=model_name, **options
    )

    # ---- report and tracking
    print(format_table(diagnosis.report["measures"]))
    print(diagnosis.summary())
    log_diagnosis(cfg, diagnosis, out_dir, run_id=args.run_id, experiment=args.experiment, step=args.epoch)
    print(f"written: {out_dir}", flush=True)
    runtime.shutdown()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--shard-set", type=Path, required=True, help="a written shard set (folder with index.json)")
    model_source = parser.add_mutually_exclusive_group(required=True)
    model_source.add_argument(
        "--checkpoint", type=Path, help="a training checkpoint (a run folder, DeepSpeed folder or file)"
    )
    model_source.add_argument("--random-init", action="store_true", help="a randomly initialised model")
    add(
        "--config",
        type=Path,
        help=f"training config (default with --random-init: {DEFAULT_CONFIG.relative_to(source.PROJECT_ROOT)})",
    )
    add("--out", type=Path, help="output folder (default: <train.output_dir>/diagnostics/<shard set name>)")
    add("--method", choices=("pca", "tsne"), default="pca", help="2-D embedding of the plots")
    add("--max-points", type=int, default=3000, help="points drawn per embedding plot")
    add("--epoch", type=int, default=0, help="DRCDown epoch seed and MLflow step")
    cli.add_trust_checkpoint(parser)
    tracking_target = parser.add_mutually_exclusive_group()
    tracking_target.add_argument("--run-id", help="log into this existing MLflow run (e.g. the training run)")
    tracking_target.add_argument(
        "--experiment", help="log a new run into this MLflow experiment (default: train.experiment)"
    )
    add("overrides", nargs="*", help="dotted key=value overrides")
    return parser


if __name__ == "__main__":
    cli.run(main)

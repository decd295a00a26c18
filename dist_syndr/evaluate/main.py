"""Score a checkpoint on target sets: SRCC, PLCC, KRCC, RMSE, and PLCC and RMSE after the logistic fit, per target.

    python launchers/evaluate.py --checkpoint runs/vit-b --target livec=/data/ChallengeDB_release \\
        --target koniq=/data/koniq10k --target mine=csv:/data/mine/labels.csv [key=value ...]
    torchrun --nproc_per_node 8 launchers/evaluate.py --checkpoint runs/vit-b/checkpoints/epoch0023 ...

--checkpoint: a run folder (its export/model_fp32.pt while it holds the last
complete checkpoint, else that checkpoint), a DeepSpeed checkpoint folder or one
tag of it, or a .pt / .safetensors state dict; DeepSpeed's files are read
weights-only unless --trust-checkpoint. The run's config.yaml is found beside it (or give
--config). A target is NAME=DIR: a shard set (with index.json), or a dataset
folder read by the reader NAME names (livec, koniq, bid, kadid, tid2013, ...)
or KIND:DIR; raw datasets are sharded once into --cache-dir/NAME. Without
--target the config's train.targets are used. Writes <out>/<target>_predictions.csv
and <out>/metrics.json and logs them to MLflow: into --run-id as eval/<target>/<metric>,
else into a new run evaluate-<run_name> of --experiment.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dist_syndr import cli, runtime
from dist_syndr.evaluate import report
from dist_syndr.evaluate.predict import evaluate_targets
from dist_syndr.evaluate.targets import parse_targets, target_shard_set
from dist_syndr.features import precision as precision_policy
from dist_syndr.features.passes import PassOptions
from dist_syndr.loader.checks import verify_shards_once
from dist_syndr.runs.checkpoints import load_model


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    # ---- checkpoint, config and targets, checked before any process-group work
    cfg, model = load_model(args.checkpoint, args.config, args.overrides, is_trusted=args.trust_checkpoint)
    targets = parse_targets(args.target or cfg.train.targets)
    rank, _, _ = runtime.env_rank_world()
    is_tracked = rank == 0 and not args.no_tracking
    run_status = report.existing_run_status(args.run_id) if args.run_id and is_tracked else None

    # ---- backends, model on its device, target shard sets
    backends = runtime.init(cfg.runtime)
    model = model.to(backends.device)
    cache_dir = args.cache_dir or Path(cfg.shard.output_root) / "targets"
    shard = cfg.shard
    sharding = {"num_workers": shard.num_workers, "on_error": shard.on_error, "max_pixels": shard.max_pixels}
    shard_sets = {
        name: target_shard_set(name, spec, cache_dir, seed=cfg.seed, **sharding) for name, spec in targets.items()
    }

    for shard_set in shard_sets.values():
        verify_shards_once(shard_set, cfg.data)  # data.verify_checksums=shards

    # ---- predictions and metrics (every rank takes part)
    precision = precision_policy.resolve(cfg.train.precision, backends.device)  # the run's own (bf16 on GPUs)
    options = PassOptions(device=backends.device, precision=precision, dali=cfg.runtime.dali, seed=cfg.seed)
    results, predictions = evaluate_targets(model, shard_sets, cfg.data, options)

    # ---- files, table, tracking (rank 0)
    if backends.rank == 0:
        out = args.out or Path("evaluation") / cfg.run_name
        written = report.write_results(out, args.checkpoint, results, predictions)
        print(report.format_table(results, predictions), flush=True)
        if is_tracked:
            target = report.TrackingTarget(args.run_id, run_status, args.experiment, args.step)
            options = {"checkpoint": args.checkpoint, "out": out, "device": backends.device}
            run_id = report.log_evaluation(cfg, target, results, written, **options)
            print(f"MLflow run {run_id}", flush=True)
    runtime.shutdown()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--checkpoint", type=Path, required=True)
    add("--target", action="append", default=[], metavar="NAME=DIR", help="repeatable; NAME=DIR or NAME=KIND:DIR")
    add("--config", type=Path, default=None, help="the run's config (default: config.yaml beside the checkpoint)")
    add("--out", type=Path, default=None, help="output folder (default: evaluation/<run_name>)")
    add(
        "--cache-dir", type=Path, default=None, help="shard sets of raw targets (default: <shard.output_root>/targets)"
    )
    tracked = parser.add_mutually_exclusive_group()
    tracked.add_argument("--run-id", default=None, help="log into this MLflow run as eval/<target>/<metric>")
    tracked.add_argument("--experiment", default=None, help="new run's MLflow experiment (default: train.experiment)")
    tracked.add_argument("--no-tracking", action="store_true", help="write files only, log nothing to MLflow")
    add("--step", type=int, default=0, help="MLflow step of the metrics")
    cli.add_trust_checkpoint(parser)
    add("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    add("overrides", nargs="*", help="dotted key=value overrides of the run's config")
    return parser

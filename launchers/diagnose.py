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
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from dist_syndr import atomic_files, cli, config, diagnostics, evaluation, runtime, tracking
from dist_syndr.loader import upsampled_keys
from dist_syndr.model import build_model
from dist_syndr.reshape import drcdown
from dist_syndr.shardset import ShardSet
from dist_syndr.tracking_journal import Journal

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "train" / "cpu-smoke.yaml"
log = logging.getLogger("dist_syndr.diagnose")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard-set", type=Path, required=True, help="a written shard set (folder with index.json)")
    model_source = parser.add_mutually_exclusive_group(required=True)
    model_source.add_argument("--checkpoint", type=Path, help="a training checkpoint (see dist_syndr.evaluation.load_model)")
    model_source.add_argument("--random-init", action="store_true", help="a randomly initialised model (model.is_random_init=true)")
    parser.add_argument("--config", type=Path, help=f"training config (default with --random-init: {DEFAULT_CONFIG.relative_to(PROJECT_ROOT)})")
    parser.add_argument("--out", type=Path, help="output folder (default: <train.output_dir>/diagnostics/<shard set name>)")
    parser.add_argument("--method", choices=("pca", "tsne"), default="pca", help="2-D embedding of the plots")
    parser.add_argument("--max-points", type=int, default=3000, help="points drawn per embedding plot")
    parser.add_argument("--epoch", type=int, default=0, help="DRCDown epoch seed and MLflow step")
    tracking_target = parser.add_mutually_exclusive_group()
    tracking_target.add_argument("--run-id", help="log into this existing MLflow run (e.g. the training run)")
    tracking_target.add_argument("--experiment", help="log a new run into this MLflow experiment (default: train.experiment)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)

    # ---- configuration, backends, model
    if runtime.env_rank_world()[1] > 1:
        raise ValueError("launchers/diagnose.py runs as one process; start it without a distributed launcher")
    shard_set = ShardSet(args.shard_set)
    if args.checkpoint is not None:
        cfg, model = evaluation.load_model(args.checkpoint, args.config, args.overrides)
    else:
        cfg = config.load(args.config or DEFAULT_CONFIG, [*args.overrides, "model.is_random_init=true", "model.weights="])
        torch.manual_seed(cfg.seed)  # the same random model, hence the same measures, on every run
        model = build_model(cfg.model)
    backends = runtime.init(cfg.runtime)
    model = model.to(backends.device)
    out_dir = args.out or Path(cfg.train.output_dir) / "diagnostics" / shard_set.root.name
    out_dir.mkdir(parents=True, exist_ok=True)

    # ---- features and labels of the original samples
    upsampled = set(upsampled_keys(shard_set))
    entries = [entry for entry in shard_set.samples if entry.key not in upsampled]
    if len(entries) < 3:
        raise ValueError(f"{shard_set.root}: {len(entries)} original samples; diagnostics need at least 3")
    keys = [entry.key for entry in entries]
    unscored = [entry.key for entry in entries if entry.score is None]
    if unscored:
        raise ValueError(f"{shard_set.root}: {len(unscored)} original sample(s) have no score (e.g. {unscored[0]}); DRCDown needs labels")
    scores = np.array([entry.score for entry in entries], dtype=np.float64)
    refs = np.array([entry.ref for entry in entries], dtype=object)
    types = np.array([entry.distortion_type for entry in entries], dtype=object)
    features = evaluation.embed(model, shard_set, cfg.data, keys, device=backends.device, dali=cfg.runtime.dali)

    # ---- DRCDown, measures, plots
    drcdown_cfg = dataclasses.replace(cfg.reshape.drcdown, enabled=True)
    kept, result = drcdown.kept_keys(keys, features, scores, config=drcdown_cfg, run_seed=cfg.seed, epoch=args.epoch, search=cfg.reshape.neighbors)
    position = {key: i for i, key in enumerate(keys)}
    kept_index = np.array(sorted(position[key] for key in kept), dtype=np.int64)
    measures = diagnostics.before_after(features, refs, types, scores, kept_index, seed=cfg.seed)
    histograms = {
        "before": diagnostics.cluster_size_histogram(result.clusters, len(keys)),
        "after": diagnostics.cluster_size_histogram(diagnostics.restrict_clusters(result.clusters, kept_index), kept_index.size),
    }
    name = shard_set.root.name
    plots = [
        diagnostics.histogram_plot(histograms, out_dir / "clusters_hist.png", title=f"{name}: DRCDown cluster sizes"),
        diagnostics.embedding_plot(
            features, scores, types, out_dir / "embedding_before.png", method=args.method, max_points=args.max_points, seed=cfg.seed,
            title=f"{name}: all {len(keys)} original samples",
        ),
        diagnostics.embedding_plot(
            features[kept_index], scores[kept_index], types[kept_index], out_dir / "embedding_after.png", method=args.method,
            max_points=args.max_points, seed=cfg.seed, title=f"{name}: {kept_index.size} samples kept by DRCDown",
        ),
    ]
    report = {
        "shard_set": str(shard_set.root),
        "model": str(args.checkpoint) if args.checkpoint is not None else "random-init",
        "backbone": cfg.model.backbone,
        "epoch": args.epoch,
        "feature_dim": int(features.shape[1]),
        "drcdown": dataclasses.asdict(drcdown_cfg),
        "measures": measures,
        "clusters": histograms,
    }
    report_path = _write_json(report, out_dir / "diagnostics.json")

    # ---- report and tracking
    print(diagnostics.format_table(measures))
    print(f"DRCDown: {len(result.clusters)} redundant clusters (largest {result.largest_cluster}); kept {kept_index.size} of {len(keys)}")
    _track(cfg, args, out_dir, measures, histograms, [report_path, *plots])
    print(f"written: {out_dir}", flush=True)
    runtime.shutdown()
    return 0


def _track(cfg: config.Config, args: argparse.Namespace, out_dir: Path, measures: dict, histograms: dict, files: list[Path]) -> None:
    metrics = diagnostics.flat_metrics(measures)
    for side, histogram in histograms.items():
        metrics[f"diag/num_clusters/{side}"] = float(histogram["num_clusters"])
        metrics[f"diag/largest_cluster/{side}"] = float(histogram["largest"])
    cfg = dataclasses.replace(cfg, run_name=f"{cfg.run_name}-diagnose-{out_dir.name}")
    tags = {"git_commit": tracking.git_commit(PROJECT_ROOT), "dist_syndr.kind": "diagnostics", "shard_set": str(args.shard_set)}
    journal_dir = out_dir / tracking.LOCAL_DIR_NAME
    if Journal.exists(journal_dir) and Journal(journal_dir).num_pending() == 0:
        shutil.rmtree(journal_dir)  # delivered in full: this invocation is a run (or a visit to --run-id) of its own
    tracker = tracking.make_tracker(
        cfg, rank=0, experiment=args.experiment or cfg.train.experiment, root=Path("mlruns"), tags=tags, run_id=args.run_id, local_dir=journal_dir
    )
    tracker.log_metrics(metrics, step=args.epoch)
    for path in files:
        tracker.log_artifact(path, "diagnostics")
    if args.run_id is None:
        tracker.close()
        log.info("diagnostics logged as MLflow run %s", tracker.run_id)
    elif not tracker.flush(timeout_s=60.0):
        # The run belongs to someone else (a training run): it is left open, not ended.
        log.warning("diagnostics not yet delivered to run %s; push them with `python launchers/compare.py --sync %s`", args.run_id, tracker.local_dir)


def _write_json(data: dict, path: Path) -> Path:
    return atomic_files.write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


if __name__ == "__main__":
    cli.run(main)

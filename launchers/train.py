"""The main job: training with DRCDown every epoch under DeepSpeed.

deepspeed --hostfile hosts launchers/train.py --config configs/train/<preset>.yaml [key=value ...]
python launchers/train.py --config configs/train/cpu-smoke.yaml      # one process
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path

from dist_syndr import cli, config, runtime
from dist_syndr.evaluate import export
from dist_syndr.features.model import build_model
from dist_syndr.sharding.shard_set import INDEX_NAME, ShardSet
from dist_syndr.tracking import tracker as tracking
from dist_syndr.train import deepspeed_engine, loop
from dist_syndr.train import state as train_state

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SMOKE_TRAIN = (("astronaut", "coffee", "chelsea", "rocket"), (1, 11, 16))
SMOKE_TEST = (("immunohistochemistry", "hubble_deep_field"), (3, 10, 17))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument(
        "--local_rank", type=int, default=None, help=argparse.SUPPRESS
    )  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)

    # ---- configuration, checked before any process-group work
    cfg = config.load(args.config, args.overrides)
    targets = dict(entry.split("=", 1) for entry in cfg.train.targets)
    _check_inputs(cfg, targets)
    _check_batch(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    for name, default in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29533"),
    ):
        os.environ.setdefault(name, default)  # one process without a launcher: DeepSpeed would look for MPI
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(PROJECT_ROOT / ".cache" / "torch_extensions"))

    # ---- backends, run folder, data
    backends = runtime.init(cfg.runtime)
    run_dir = Path(cfg.train.output_dir) / cfg.run_name
    if cfg.train.is_smoke_data:
        _build_smoke_sets(cfg, targets, backends.rank)
    train_set = ShardSet(cfg.train.shard_set)
    target_sets = {name: ShardSet(folder) for name, folder in targets.items()}

    # ---- model and DeepSpeed engine
    import torch

    torch.manual_seed(cfg.seed)  # random-init weights (and any torch RNG use) are the same in every run of this config
    model = build_model(cfg.model)
    model_engine, ds_config = deepspeed_engine.initialize(
        model, cfg.train, cfg.data, world_size=backends.world_size, device=backends.device
    )
    gc.freeze()  # the loaders' per-epoch gc.collect() then skips the long-lived torch/DeepSpeed objects (about 1 s per epoch here)

    # ---- resume, tracking
    checkpoints = run_dir / "checkpoints"
    resumed = train_state.resume(model_engine, checkpoints) if cfg.train.resume == "auto" else None
    state, progress = resumed if resumed is not None else (None, None)
    tags = {
        "git_commit": tracking.git_commit(PROJECT_ROOT),
        "world_size": str(backends.world_size),
        "device": backends.device,
        "dali": backends.dali,
    }
    journal = (
        run_dir / tracking.LOCAL_DIR_NAME
    )  # every record is journalled here first: a tracking outage loses nothing
    if backends.rank == 0 and resumed is None and journal.exists():
        journal.rename(
            run_dir / f"{tracking.LOCAL_DIR_NAME}-before-{time.strftime('%Y%m%d-%H%M%S')}"
        )  # a fresh run gets a fresh record
    tracker = tracking.make_tracker(
        cfg, rank=backends.rank, experiment=cfg.train.experiment, root=Path("mlruns"), tags=tags, local_dir=journal
    )
    if backends.rank == 0:
        config.dump(cfg, run_dir / "config.yaml")
        deepspeed_engine.save_deepspeed_config(ds_config, run_dir / "deepspeed.json")
        tracker.log_artifact(run_dir / "config.yaml")
        tracker.log_artifact(run_dir / "deepspeed.json")

    # ---- the loop
    run = loop.Run(
        model_engine, train_set, target_sets, tracker, checkpoints, backends.rank, backends.world_size, run_dir
    )
    try:
        results, state = loop.fit(cfg, run, state, progress)

        # ---- consolidated fp32 weights (any ZeRO stage), once every rank's checkpoint is on disk
        runtime.barrier()
        if backends.rank == 0:
            weights = export.export_checkpoint(
                checkpoints, run_dir / "export" / "model_fp32.pt", tag=train_state.completed_tag(checkpoints)
            )
            tracker.log_artifact(weights, "model")
            print(loop.summary(results, state), flush=True)
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close()
    if backends.rank == 0 and (run_id := tracking.journal_run_id(journal)) is not None:
        (run_dir / "mlflow_run_id").write_text(run_id)
    runtime.shutdown()
    return 0


def _check_inputs(cfg: config.Config, targets: dict[str, str]) -> None:
    if not cfg.train.shard_set:
        raise ValueError("train.shard_set: no training shard set given (write one with launchers/shard.py)")
    if not cfg.train.is_smoke_data:
        for folder in (cfg.train.shard_set, *targets.values()):
            if not (Path(folder) / INDEX_NAME).is_file():
                raise ValueError(f"{folder}: not a finished shard set (no {INDEX_NAME}); run launchers/shard.py first")
    if cfg.model.weights and not Path(cfg.model.weights).is_file():
        raise ValueError(f"model.weights: {cfg.model.weights} does not exist")
    if not cfg.model.weights and not cfg.model.is_random_init:
        raise ValueError("model.weights: no pretrained weights file given (or set model.is_random_init=true)")


def _check_batch(cfg: config.Config, world_size: int) -> None:
    per_step = cfg.data.batch_size * world_size
    if cfg.train.global_batch_size and cfg.train.global_batch_size != per_step * cfg.train.gradient_accumulation_steps:
        accumulation, remainder = divmod(cfg.train.global_batch_size, per_step)
        hint = (
            f"set train.gradient_accumulation_steps={accumulation}"
            if not remainder and cfg.train.gradient_accumulation_steps == 1
            else f"it must be a multiple of data.batch_size x world size = {cfg.data.batch_size} x {world_size}"
        )
        raise ValueError(
            f"train.global_batch_size={cfg.train.global_batch_size} does not match data.batch_size={cfg.data.batch_size} "
            f"x world size {world_size} x train.gradient_accumulation_steps={cfg.train.gradient_accumulation_steps}: {hint}"
        )


def _build_smoke_sets(cfg: config.Config, targets: dict[str, str], rank: int) -> None:
    from dist_syndr.sharding.photos import photo_shard_set

    if rank == 0:
        photo_shard_set(Path(cfg.train.shard_set), *SMOKE_TRAIN, size=64, seed=cfg.seed, num_workers=1)
        for folder in targets.values():
            photo_shard_set(Path(folder), *SMOKE_TEST, size=64, seed=cfg.seed + 1, num_workers=1)
    runtime.barrier()


if __name__ == "__main__":
    cli.run(main)

"""The main job: training with DRCDown every epoch under DeepSpeed.

    deepspeed --hostfile hosts launchers/train.py --config configs/train/<preset>.yaml [key=value ...]
    python launchers/train.py --config configs/train/cpu-smoke.yaml      # one process
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dist_syndr import cli, config, engine, runtime, tracking, trainer
from dist_syndr.model import build_model
from dist_syndr.shardset import INDEX_NAME, ShardSet

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SMOKE_TRAIN = (("astronaut", "coffee", "chelsea", "rocket"), (1, 11, 16))
SMOKE_TEST = (("immunohistochemistry", "hubble_deep_field"), (3, 10, 17))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)

    # ---- configuration, checked before any process-group work
    cfg = config.load(args.config, args.overrides)
    targets = dict(entry.split("=", 1) for entry in cfg.train.targets)
    _check_inputs(cfg, targets)
    for name, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533")):
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
    import deepspeed

    model = build_model(cfg.model)
    ds_config = engine.deepspeed_config(cfg.train, cfg.data, world_size=backends.world_size, device=backends.device)
    model_engine, *_ = deepspeed.initialize(model=model, optimizer=engine.build_optimizer(model, cfg.train), config=ds_config)

    # ---- resume, tracking
    checkpoints = run_dir / "checkpoints"
    start_epoch, run_id = 0, None
    if cfg.train.resume == "auto" and (checkpoints / "latest").is_file():
        _, client_state = model_engine.load_checkpoint(str(checkpoints))
        start_epoch = int(client_state["epoch"]) + 1
        run_id = (run_dir / "mlflow_run_id").read_text().strip() if (run_dir / "mlflow_run_id").is_file() else None
    tags = {"git_commit": tracking.git_commit(PROJECT_ROOT), "world_size": str(backends.world_size), "device": backends.device, "dali": backends.dali}
    tracker = tracking.make_tracker(cfg, rank=backends.rank, experiment=cfg.train.experiment, root=Path("mlruns"), tags=tags, run_id=run_id)
    if backends.rank == 0:
        config.dump(cfg, run_dir / "config.yaml")
        engine.save_deepspeed_config(ds_config, run_dir / "deepspeed.json")
        (run_dir / "mlflow_run_id").write_text(str(tracker.run_id))

    # ---- the loop
    run = trainer.Run(model_engine, train_set, target_sets, tracker, checkpoints, backends.rank, backends.world_size)
    results = trainer.fit(cfg, run, start_epoch)
    if backends.rank == 0:
        tracker.log_artifact(run_dir / "config.yaml")
        tracker.log_artifact(run_dir / "deepspeed.json")
        print({key: round(value, 4) for key, value in results.items()}, flush=True)
    tracker.close()
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


def _build_smoke_sets(cfg: config.Config, targets: dict[str, str], rank: int) -> None:
    from dist_syndr.photo_pools import photo_shard_set

    if rank == 0:
        photo_shard_set(Path(cfg.train.shard_set), *SMOKE_TRAIN, size=64, seed=cfg.seed, num_workers=1)
        for folder in targets.values():
            photo_shard_set(Path(folder), *SMOKE_TEST, size=64, seed=cfg.seed + 1, num_workers=1)
    if runtime.is_distributed():
        import torch.distributed as dist

        dist.barrier()


if __name__ == "__main__":
    cli.run(main)

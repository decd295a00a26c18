"""The main job: training with DRCDown every epoch under DeepSpeed.

deepspeed --hostfile hosts launchers/train.py --config configs/train/<preset>.yaml [key=value ...]
python launchers/train.py --config configs/train/cpu-smoke.yaml      # one process
"""

from __future__ import annotations

import argparse
import gc
import os
from pathlib import Path

from dist_syndr import collectives, config, runtime
from dist_syndr.export import cards
from dist_syndr.features.model import build_model
from dist_syndr.runs.folder import RunFolder
from dist_syndr.sharding.shard_set import ShardSet
from dist_syndr.train import deepspeed_engine, loop, setup
from dist_syndr.train import state as train_state


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
    setup.check_before_start(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    cfg = setup.with_resolved_weights(cfg)  # where the weights come from, their sha256 and input statistics
    setup.set_single_process_defaults()

    # ---- backends, the run folder (locked for the whole job), data
    backends = runtime.init(cfg.runtime, is_group_required=True)  # DeepSpeed needs a group, one process too
    runtime.set_deterministic(cfg.train.is_deterministic)
    run = RunFolder.of(cfg.train.output_dir, cfg.run_name)
    with setup.claimed(run, cfg.train.resume, backends.rank):
        if cfg.train.is_smoke_data:
            setup.build_smoke_sets(cfg, backends.rank)
        train_set = ShardSet(cfg.train.shard_set)
        target_sets = {name: ShardSet(folder) for name, folder in setup.targets_of(cfg).items()}

        # ---- model and DeepSpeed engine
        import torch

        torch.manual_seed(cfg.seed)  # random-init weights (and any torch RNG use) are the same in every run
        model = build_model(cfg.model)
        world_size, device = backends.world_size, backends.device
        model_engine, ds_config = deepspeed_engine.initialize(
            model, cfg.train, cfg.data, world_size=world_size, device=device
        )
        gc.freeze()  # the loaders' per-epoch gc.collect() then skips the long-lived torch/DeepSpeed objects

        # ---- resume, tracking
        resumed = train_state.resume(model_engine, run) if cfg.train.resume == "auto" else None
        state, progress = resumed if resumed is not None else (None, None)
        tracker = setup.open_tracker(cfg, run, backends, is_resumed=resumed is not None)
        if backends.rank == 0:
            setup.save_run_files(cfg, ds_config, run, tracker)

        # ---- the loop, then the hand-over once every rank's checkpoint is on disk
        loop_run = loop.Run(model_engine, train_set, target_sets, tracker, run, backends.rank, world_size)
        try:
            results, state = loop.fit(cfg, loop_run, state, progress)
            collectives.barrier()
            if backends.rank == 0:
                card = cards.training_card(cfg, run.root, last=results, best=state.best, train_set=train_set,
                                           kept=results.get("kept"))  # fmt: skip
                setup.export_weights(run, tracker, card, global_step=state.global_step)
                print(loop.summary(results, state), flush=True)
        except BaseException:
            tracker.close("FAILED")
            raise
        tracker.close()
        if backends.rank == 0:
            setup.record_run_id(run)
    runtime.shutdown()
    return 0

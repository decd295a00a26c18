"""What ``launchers/train.py`` does around the epoch loop: checks made before any process group,
the smoke-test shard sets, the run folder with its tracker, and the consolidated fp32 export.

A run folder ``<train.output_dir>/<run_name>`` holds ``config.yaml``, ``deepspeed.json``,
``checkpoints/``, ``keep_lists/``, ``ranks/``, ``tracking/`` (the journal every record goes
to first), ``export/model_fp32.pt`` and, once MLflow has the run, ``mlflow_run_id``.

Shapes: none.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dist_syndr import collectives, config, files, runtime
from dist_syndr.evaluate import export
from dist_syndr.sharding.shard_set import INDEX_NAME
from dist_syndr.tracking.tracker import LOCAL_DIR_NAME, NullTracker, git_commit, journal_run_id, make_tracker
from dist_syndr.train import deepspeed_engine
from dist_syndr.train import state as train_state

SMOKE_TRAIN = (("astronaut", "coffee", "chelsea", "rocket"), (1, 11, 16))
SMOKE_TEST = (("immunohistochemistry", "hubble_deep_field"), (3, 10, 17))
EXPORT_NAME = Path("export") / "model_fp32.pt"
SINGLE_PROCESS_ENV = {
    "RANK": "0",
    "WORLD_SIZE": "1",
    "LOCAL_RANK": "0",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29533",
}


def targets_of(cfg: config.Config) -> dict[str, str]:
    """``train.targets`` as ``{name: folder}``."""
    return dict(entry.split("=", 1) for entry in cfg.train.targets)


def check_before_start(cfg: config.Config, world_size: int) -> None:
    """Shard sets, weights and the global batch, checked before any process-group work (ValueError)."""
    if not cfg.train.shard_set:
        raise ValueError("train.shard_set: no training shard set given (write one with launchers/shard.py)")
    if not cfg.train.is_smoke_data:
        for folder in (cfg.train.shard_set, *targets_of(cfg).values()):
            if not (Path(folder) / INDEX_NAME).is_file():
                raise ValueError(f"{folder}: not a finished shard set (no {INDEX_NAME}); run launchers/shard.py first")
    if cfg.model.weights and not Path(cfg.model.weights).is_file():
        raise ValueError(f"model.weights: {cfg.model.weights} does not exist")
    if not cfg.model.weights and not cfg.model.is_random_init:
        raise ValueError("model.weights: no pretrained weights file given (or set model.is_random_init=true)")
    _check_global_batch(cfg, world_size)


def _check_global_batch(cfg: config.Config, world_size: int) -> None:
    per_step = cfg.data.batch_size * world_size
    accumulation = cfg.train.gradient_accumulation_steps
    wanted = cfg.train.global_batch_size
    if not wanted or wanted == per_step * accumulation:
        return
    steps, remainder = divmod(wanted, per_step)
    hint = (
        f"set train.gradient_accumulation_steps={steps}"
        if not remainder and accumulation == 1
        else f"it must be a multiple of data.batch_size x world size = {cfg.data.batch_size} x {world_size}"
    )
    raise ValueError(
        f"train.global_batch_size={wanted} does not match data.batch_size={cfg.data.batch_size} "
        f"x world size {world_size} x train.gradient_accumulation_steps={accumulation}: {hint}"
    )


def set_single_process_defaults(project_root: Path) -> None:
    """One process without a launcher: the rank variables DeepSpeed would otherwise look for in MPI."""
    for name, default in SINGLE_PROCESS_ENV.items():
        os.environ.setdefault(name, default)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(project_root / ".cache" / "torch_extensions"))


def build_smoke_sets(cfg: config.Config, rank: int) -> None:
    """``train.is_smoke_data``: tiny photo shard sets at ``train.shard_set`` and every target, built once by rank 0
    (by each node's first rank for ``data.shard_storage: node-local``)."""
    from dist_syndr.sharding.photos import photo_shard_set

    is_builder = runtime.env_rank_world()[2] == 0 if cfg.data.shard_storage == "node-local" else rank == 0
    refusal = None  # a set another job holds the lock of: every rank stops with the builder's one line
    if is_builder:  # the sets are deterministic, so every node-local copy is the same
        try:
            photo_shard_set(Path(cfg.train.shard_set), *SMOKE_TRAIN, size=64, seed=cfg.seed, num_workers=1)
            for folder in targets_of(cfg).values():
                photo_shard_set(Path(folder), *SMOKE_TEST, size=64, seed=cfg.seed + 1, num_workers=1)
        except files.LockedError as error:
            refusal = str(error)
    collectives.refuse_if_any(refusal, error_type=files.LockedError)  # also the barrier after the builders


def open_tracker(
    cfg: config.Config, run_dir: Path, backends: runtime.Backends, *, is_resumed: bool, project_root: Path
):
    """The run's tracker, journalled in ``<run_dir>/tracking`` (a fresh run moves an old journal aside)."""
    journal = run_dir / LOCAL_DIR_NAME
    if backends.rank == 0 and not is_resumed and journal.exists():
        journal.rename(run_dir / f"{LOCAL_DIR_NAME}-before-{time.strftime('%Y%m%d-%H%M%S')}")
    tags = {
        "git_commit": git_commit(project_root),
        "world_size": str(backends.world_size),
        "device": backends.device,
        "dali": backends.dali,
    }
    return make_tracker(
        cfg, rank=backends.rank, experiment=cfg.train.experiment, root=Path("mlruns"), tags=tags, local_dir=journal
    )


def save_run_files(cfg: config.Config, ds_config: dict, run_dir: Path, tracker) -> None:
    """``config.yaml`` (the resolved config) and ``deepspeed.json`` (the generated one), also as artifacts."""
    config.dump(cfg, run_dir / "config.yaml")
    deepspeed_engine.save_deepspeed_config(ds_config, run_dir / "deepspeed.json")
    tracker.log_artifact(run_dir / "config.yaml")
    tracker.log_artifact(run_dir / "deepspeed.json")


def export_weights(run_dir: Path, tracker, card: dict | None = None) -> Path:
    """The last complete checkpoint as consolidated fp32 weights (any ZeRO stage), logged as the run's model;
    with ``card`` (:func:`dist_syndr.scoring.model_card.training_card`) also the model card beside them and,
    when the run is tracked, the MLflow model (``export/mlflow_model``, logged as ``mlflow_model``)."""
    checkpoints = run_dir / "checkpoints"
    weights = export.export_checkpoint(checkpoints, run_dir / EXPORT_NAME, tag=train_state.completed_tag(checkpoints))
    tracker.log_artifact(weights, "model")
    if card is None:
        return weights
    from dist_syndr.scoring import model_card

    card_json, card_markdown = model_card.write(card, weights.parent / model_card.CARD_NAME)
    tracker.log_artifact(card_json, "model")
    tracker.log_artifact(card_markdown, "model")
    if not isinstance(tracker, NullTracker):
        from dist_syndr.scoring import mlflow_model

        folder = mlflow_model.save(
            weights, run_dir / "config.yaml", card_json, weights.parent / mlflow_model.MODEL_DIR_NAME
        )
        tracker.log_artifact(folder)
    return weights


def record_run_id(run_dir: Path) -> None:
    """``<run_dir>/mlflow_run_id`` once the tracking store knows the run."""
    run_id = journal_run_id(run_dir / LOCAL_DIR_NAME)
    if run_id is not None:
        files.write_text(run_dir / "mlflow_run_id", run_id)

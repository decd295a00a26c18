"""What ``launchers/train.py`` does around the epoch loop: checks made before any process group,
the smoke-test shard sets, the run folder claimed (locked, fresh or resumable) with its tracker,
and the hand-over at the end.

The run folder's layout is :mod:`dist_syndr.runs.folder`'s; the export is
:mod:`dist_syndr.export.run_export`'s.

Shapes: none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

from dist_syndr import collectives, config, files, runtime, source
from dist_syndr.export import run_export
from dist_syndr.features.model import resolved_config
from dist_syndr.features.weights import check_backbone
from dist_syndr.runs import folder as run_folder
from dist_syndr.runs.folder import RunFolder
from dist_syndr.sharding.shard_set import INDEX_NAME
from dist_syndr.tracking.tracker import NullTracker, journal_run_id, make_tracker
from dist_syndr.train import deepspeed_engine

SMOKE_TRAIN = (("astronaut", "coffee", "chelsea", "rocket"), (1, 11, 16))
SMOKE_TEST = (("immunohistochemistry", "hubble_deep_field"), (3, 10, 17))
# No MASTER_ADDR / MASTER_PORT: one process makes its group without a rendezvous (runtime.init), so two runs on
# one host never meet on a port. DeepSpeed checks LOCAL_RANK even then.
SINGLE_PROCESS_ENV = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}


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
    check_backbone(cfg.model.backbone, "model.backbone")
    if not cfg.model.weights and not cfg.model.is_random_init:
        raise ValueError(
            "model.weights: no pretrained weights given (a local file, 'timm' or 'hf-hub:<org>/<repo>'; "
            "or set model.is_random_init=true)"
        )
    _check_global_batch(cfg, world_size)


def with_resolved_weights(cfg: config.Config) -> config.Config:
    """``cfg`` with the model's weights resolved (source, sha256, input statistics; downloaded into the Hugging
    Face cache where needed): the run's ``config.yaml``, card and MLflow params record them."""
    return dataclasses.replace(cfg, model=resolved_config(cfg.model))


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


def set_single_process_defaults() -> None:
    """One process without a launcher: the rank variables DeepSpeed would otherwise look for in MPI (its process
    group comes from ``runtime.init(..., is_group_required=True)``, without a port)."""
    for name, default in SINGLE_PROCESS_ENV.items():
        os.environ.setdefault(name, default)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(source.PROJECT_ROOT / ".cache" / "torch_extensions"))


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


def open_tracker(cfg: config.Config, run: RunFolder, backends: runtime.Backends, *, is_resumed: bool):
    """The run's tracker, journalled in ``<run>/tracking`` (a fresh run moves an old journal aside)."""
    journal = run.journal_dir
    if backends.rank == 0 and not is_resumed and journal.exists():
        journal.rename(run.root / f"{journal.name}-before-{time.strftime('%Y%m%d-%H%M%S')}")
    tags = {
        "git_commit": source.git_commit(),
        "world_size": str(backends.world_size),
        "device": backends.device,
        "dali": backends.dali,
    }
    return make_tracker(
        cfg, rank=backends.rank, experiment=cfg.train.experiment, root=Path("mlruns"), tags=tags, local_dir=journal
    )


def save_run_files(cfg: config.Config, ds_config: dict, run: RunFolder, tracker) -> None:
    """``config.yaml`` (the resolved config) and ``deepspeed.json`` (the generated one), also as artifacts."""
    config.dump(cfg, run.config_path)
    deepspeed_engine.save_deepspeed_config(ds_config, run.root / "deepspeed.json")
    tracker.log_artifact(run.config_path)
    tracker.log_artifact(run.root / "deepspeed.json")


@contextlib.contextmanager
def claimed(run: RunFolder, resume: str, rank: int) -> Iterator[None]:
    """Hold ``run``'s lock for the block (rank 0 holds it; every rank of a second job stops with one line naming
    the holder); ``train.resume=never`` also refuses a folder an earlier training wrote."""
    with collectives.exclusive_lock(run.lock_path if rank == 0 else None, f"run folder {run.root}"):
        problem = None
        if rank == 0 and resume == "never":
            try:
                run_folder.check_fresh_start(run)
            except ValueError as error:
                problem = str(error)
        collectives.refuse_if_any(problem)
        yield


def export_weights(run: RunFolder, tracker, card: dict | None, *, global_step: int) -> Path:
    """The last complete checkpoint handed over (:func:`dist_syndr.export.run_export.export_run`); rank 0 only."""
    return run_export.export_run(
        run, tracker, card, global_step=global_step, is_tracked=not isinstance(tracker, NullTracker)
    )


def record_run_id(run: RunFolder) -> None:
    """``<run>/mlflow_run_id`` once the tracking store knows the run."""
    run_id = journal_run_id(run.journal_dir)
    if run_id is not None:
        files.write_text(run.run_id_path, run_id)

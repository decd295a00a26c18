"""The epoch loop: features -> DRCDown -> train -> evaluate -> checkpoint -> track.

Every rank runs the same loop. The feature pass is split across ranks and
gathered; DRCDown's neighbour search is split across ranks too, and rank 0's
keep-list is broadcast, so all ranks train on one plan with the same number of
steps (both are checked, and recorded per rank in ``<run_dir>/ranks/``).
Checkpoints carry a :class:`~dist_syndr.train.state.TrainState`, also every
``train.checkpoint_every_steps`` steps, so a killed run resumes mid-epoch with
the same keep-list, loader position, loss sums and RNG state.

Shapes: ``N`` original samples, ``D`` pooled feature dimension.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
from collections.abc import Iterator

import numpy as np

from dist_syndr import collectives, files
from dist_syndr.config import Config
from dist_syndr.evaluate.diagnostics.measures import cheap_measures
from dist_syndr.evaluate.predict import embed, evaluate_targets, feature_data_config
from dist_syndr.features.passes import PassOptions
from dist_syndr.features.precision import resolve
from dist_syndr.loader import make_loader, plan_epoch, upsampled_keys
from dist_syndr.loader.checks import verify_shards_once
from dist_syndr.reshape import drcdown
from dist_syndr.runs.folder import RunFolder
from dist_syndr.sharding.shard_set import ShardSet
from dist_syndr.train import deepspeed_engine, shard_digests
from dist_syndr.train import state as train_state
from dist_syndr.train.state import RankProgress, TrainState
from dist_syndr.train.step_meter import StepMeter

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
    """What the loop needs besides the config."""

    model_engine: object  # deepspeed.DeepSpeedEngine
    train_set: ShardSet
    targets: dict[str, ShardSet]
    tracker: object
    folder: RunFolder  # checkpoints, keep-lists and per-rank records
    rank: int
    world_size: int


def fit(
    cfg: Config, run: Run, state: TrainState | None = None, progress: RankProgress | None = None
) -> tuple[dict[str, float], TrainState]:
    """Train until ``cfg.train.epochs``, from ``state`` (a resumed checkpoint) or the start.

    Returns the last epoch's metrics and the final state (``state.best`` holds each target's best epoch).
    """
    state, progress = state or TrainState(), progress or RankProgress()
    upsampled = sorted(upsampled_keys(run.train_set))
    excluded = set(upsampled)
    original = [key for key in run.train_set.keys() if key not in excluded]
    if not cfg.reshape.ddcup.enabled:  # a baseline run: the set's DDCUp samples stay out of training
        upsampled = []
    results: dict[str, float] = {}
    shard_digests.check_index_digests(
        run.folder.root, {"train": run.train_set} | {f"target {n}": s for n, s in run.targets.items()}
    )
    for shard_set in (run.train_set, *run.targets.values()):
        verify_shards_once(shard_set, cfg.data)  # data.verify_checksums=shards; members are checked on every read
    with open_loaders(cfg, run) as loaders:
        while state.epoch < cfg.train.epochs:
            epoch = state.epoch
            if not state.is_mid_epoch:
                state.kept_positions, state.reshape_stats = _drcdown(cfg, run, original, epoch, loaders.features)
            kept = [original[i] for i in state.kept_positions.tolist()]
            options = {"state": state, "progress": progress, "loader": loaders.train}
            train_stats = train_epoch(cfg, run, kept, upsampled, epoch, **options)
            evaluation = _evaluate(cfg, run, loaders.targets)
            best = state.update_best(evaluation, list(run.targets), epoch)
            results = {**state.reshape_stats, **train_stats, **evaluation}
            run.tracker.log_metrics(
                {**results, **best}, step=epoch
            )  # before the checkpoint: a kill in between repeats, never loses
            state.finish_epoch()
            progress = RankProgress()
            train_state.save(run.model_engine, run.folder, state, progress, keep=cfg.train.keep_checkpoints)
            log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in results.items()})
    return results, state


@dataclasses.dataclass(frozen=True)
class RunLoaders:
    """One loader per shard set for the whole run: DALI keeps its pipeline and workers from epoch to epoch."""

    train: object  # training crops of the training set
    features: object | None  # centre crops of the training set for DRCDown's feature pass (None without DRCDown)
    targets: dict[str, object]  # evaluation crops of each target


@contextlib.contextmanager
def open_loaders(cfg: Config, run: Run) -> Iterator[RunLoaders]:
    """The run's loaders, open until the block ends."""
    with contextlib.ExitStack() as stack:

        def opened(shard_set: ShardSet, data, *, is_training: bool):
            return stack.enter_context(make_loader(shard_set, data, is_training=is_training, dali=cfg.runtime.dali))

        train = opened(run.train_set, cfg.data, is_training=True)
        is_drcdown = cfg.reshape.drcdown.enabled
        features = opened(run.train_set, feature_data_config(cfg.data), is_training=False) if is_drcdown else None
        targets = {name: opened(shard_set, cfg.data, is_training=False) for name, shard_set in run.targets.items()}
        yield RunLoaders(train, features, targets)


def _drcdown(
    cfg: Config, run: Run, original: list[str], epoch: int, loader=None
) -> tuple[np.ndarray, dict[str, float]]:
    """Positions (into ``original``) of the samples kept this epoch, identical on every rank, and statistics."""
    if not cfg.reshape.drcdown.enabled:
        positions, stats = np.arange(len(original), dtype=np.int64), {}
    else:
        module = deepspeed_engine.bare_module(run.model_engine)
        device = run.model_engine.device
        # fp32 on every device unless reshape.drcdown.feature_precision: train asks for the run's precision
        requested = cfg.train.precision if cfg.reshape.drcdown.feature_precision == "train" else "fp32"
        precision = resolve(requested, device)
        options = PassOptions(device=device, precision=precision, dali=cfg.runtime.dali)
        features = embed(module, run.train_set, cfg.data, original, options, loader=loader)
        columns = run.train_set.columns  # read as columns: a record per key would cost seconds at a million
        rows = columns.rows_of(original)
        labels = np.array(columns.scores[rows], dtype=np.float64)
        # Every rank takes part: the neighbour search is split across ranks and its edges gathered.
        keys, result = drcdown.kept_keys(
            original,
            features,
            labels,
            config=cfg.reshape.drcdown,
            run_seed=cfg.seed,
            epoch=epoch,
            search=cfg.reshape.neighbors,
        )
        position_of = {key: i for i, key in enumerate(original)}
        positions = np.array([position_of[k] for k in keys], dtype=np.int64)
        stats = {"clusters": float(len(result.clusters)), "largest_cluster": float(result.largest_cluster)}
        if run.rank == 0:  # how tightly features cluster by content and by distortion (sampled: well under a second)
            refs = columns.refs.tolist()
            ref_of = [None if code < 0 else refs[code] for code in columns.ref_codes[rows].tolist()]
            type_of = [None if value < 0 else value for value in columns.distortion_types[rows].tolist()]
            measures = cheap_measures(features, ref_of, type_of, seed=epoch)
            stats |= {f"diag/{name}": value for name, value in measures.items()}
        # Rank 0's list is the one every rank trains on, whatever floating-point noise might do.
        positions = collectives.broadcast_array(positions if run.rank == 0 else None)
    _check_same_on_all_ranks(run, epoch, "keep_list_sha256", hashlib.sha256(positions.tobytes()).hexdigest())
    if run.rank == 0:
        _write_keep_list(run, epoch, [original[i] for i in positions.tolist()])
    return positions, {**stats, "kept": float(positions.size)}


def _check_same_on_all_ranks(run: Run, epoch: int, name: str, value: object) -> None:
    """Record ``value`` in this rank's file and stop the run if any rank disagrees."""
    folder = run.folder.root / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"rank-{run.rank:04d}.jsonl", "a") as record:
        record.write(json.dumps({"epoch": epoch, name: value}) + "\n")
    values = collectives.all_gather_objects(value)
    if len(set(map(str, values))) != 1:
        raise RuntimeError(f"epoch {epoch}: ranks disagree on {name}: {values}")


def _write_keep_list(run: Run, epoch: int, keys: list[str]) -> None:
    path = run.folder.root / "keep_lists" / f"epoch{epoch:04d}.txt.gz"
    files.write_bytes(path, gzip.compress(("\n".join(keys) + "\n").encode(), mtime=0))
    run.tracker.log_artifact(path, "keep_lists")


def train_epoch(
    cfg: Config,
    run: Run,
    kept: list[str],
    always: list[str],
    epoch: int,
    *,
    state: TrainState | None = None,
    progress: RankProgress | None = None,
    loader,
) -> dict[str, float]:
    """One epoch (or its remainder after ``state.batches_done`` batches) on ``kept`` + ``always`` samples.

    ``loader`` is the run's training loader (:func:`fit` keeps one for all epochs).

    Logs step metrics every ``train.log_every_steps`` steps and checkpoints every
    ``train.checkpoint_every_steps``; returns the epoch's loss, images/s per process,
    data-wait share and steps.
    """
    state = state if state is not None else TrainState(epoch=epoch, kept_positions=np.zeros(0, np.int64))
    progress = progress if progress is not None else RankProgress()
    start = state.batches_done * cfg.data.batch_size * run.world_size
    plan = plan_epoch(
        run.train_set.keys(),
        cfg.data,
        seed=cfg.seed,
        epoch=epoch,
        world_size=run.world_size,
        kept_keys=kept,
        always_kept_keys=always,
        start=start,
    )
    rank_plan = plan.for_rank(run.rank)
    last_batch = state.batches_done + rank_plan.num_batches
    meter, model, device = StepMeter(), run.model_engine, run.model_engine.device
    for batch in meter.batches(loader.batches(rank_plan)):
        loss = deepspeed_engine.l1_loss(model(batch.images.to(device)).float(), batch.scores.to(device))
        model.backward(loss)
        model.step()
        meter.step_done(loss, len(batch))  # read later, all at once: no device sync per step
        progress.images += len(batch)
        state.batches_done += 1
        state.global_step += 1
        if state.global_step % cfg.train.log_every_steps == 0:
            _settle_losses(meter, progress)
            step_metrics = {f"train/{k}": v for k, v in meter.report().items()} | {
                "train/lr": float(model.get_lr()[0])
            }
            run.tracker.log_metrics(step_metrics, step=state.global_step)
        every = cfg.train.checkpoint_every_steps
        if every and state.batches_done % every == 0 and state.batches_done < last_batch:
            _settle_losses(meter, progress)
            with meter.pause():
                train_state.save(model, run.folder, state, progress, keep=cfg.train.keep_checkpoints)
    _settle_losses(meter, progress)
    _check_same_on_all_ranks(run, epoch, "steps", state.batches_done)
    collectives.broadcast_buffers(
        deepspeed_engine.bare_module(model)
    )  # evaluation, features and the checkpoint all see rank 0's BatchNorm statistics
    loss_sums = [p[0] for p in collectives.all_gather_objects((progress.loss_sum, progress.images))]
    mean_loss = sum(loss_sums) / (state.batches_done * run.world_size) if state.batches_done else float("nan")
    return {"loss": mean_loss, **meter.epoch_rates(), "steps": float(state.batches_done)}


def _settle_losses(meter: StepMeter, progress: RankProgress) -> None:
    # Added one by one in step order, so the sums (saved in checkpoints) do not depend on when they are read.
    for value in meter.settle():
        progress.loss_sum += value


def _evaluate(cfg: Config, run: Run, loaders: dict | None = None) -> dict[str, float]:
    device = run.model_engine.device
    precision = resolve(cfg.train.precision, device)  # as the training forward pass
    options = PassOptions(device=device, precision=precision, dali=cfg.runtime.dali, seed=cfg.seed)
    module = deepspeed_engine.bare_module(run.model_engine)
    results, _ = evaluate_targets(module, run.targets, cfg.data, options, loaders=loaders)
    return results


def summary(results: dict[str, float], state: TrainState) -> str:
    """The last epoch's metrics and each target's best epoch, labelled as such (the paper reports the best)."""
    lines = [f"last epoch ({state.epoch - 1}): " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(results.items()))]
    for target, values in sorted(state.best.items()):
        chosen = ", ".join(f"{k}={v:.4f}" for k, v in sorted(values.items()) if k != "epoch")
        lines.append(f"best epoch for {target} ({int(values['epoch'])}, chosen on the test set by SRCC): {chosen}")
    return "\n".join(lines)

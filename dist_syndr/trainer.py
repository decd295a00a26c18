"""The epoch loop: features -> DRCDown -> train -> evaluate -> checkpoint -> track.

Every rank runs the same loop. DRCDown runs on rank 0 over the gathered
features of the original (non-upsampled) samples and its keep-list is
broadcast, so all ranks train on one plan with the same number of steps.

Shapes: ``N`` original samples, ``D`` pooled feature dimension.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from dist_syndr import engine, metrics, runtime
from dist_syndr.config import Config
from dist_syndr.loader import make_loader, plan_epoch, upsampled_keys
from dist_syndr.reshape import drcdown
from dist_syndr.shardset import ShardSet

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
    """What the loop needs besides the config."""

    model_engine: object  # deepspeed.DeepSpeedEngine
    train_set: ShardSet
    targets: dict[str, ShardSet]
    tracker: object
    checkpoint_dir: object  # pathlib.Path
    rank: int
    world_size: int


def fit(cfg: Config, run: Run, start_epoch: int) -> dict[str, float]:
    """Train from ``start_epoch`` to ``cfg.train.epochs``; returns the last epoch's metrics."""
    upsampled = set(upsampled_keys(run.train_set))
    original = [key for key in run.train_set.keys() if key not in upsampled]
    results: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        kept, reshape_stats = _drcdown(cfg, run, original, epoch)
        train_stats = train_epoch(cfg, run, kept, sorted(upsampled), epoch)
        results = {**reshape_stats, **train_stats, **_evaluate(cfg, run)}
        run.model_engine.save_checkpoint(str(run.checkpoint_dir), tag=f"epoch{epoch:04d}", client_state={"epoch": epoch})
        run.tracker.log_metrics(results, step=epoch)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in results.items()})
    return results


def _drcdown(cfg: Config, run: Run, original: list[str], epoch: int) -> tuple[list[str], dict[str, float]]:
    if not cfg.reshape.drcdown.enabled:
        return original, {"kept": float(len(original))}
    features, positions = _features(cfg, run, original)
    order = np.argsort(positions)
    assert np.array_equal(positions[order], np.arange(len(original))), "feature pass must cover each sample once"
    row_of = {key: i for i, key in enumerate(run.train_set.keys())}
    labels = run.train_set.scores()[[row_of[k] for k in original]]
    # Every rank takes part: the neighbour search is split across ranks and its edges gathered.
    keys, result = drcdown.kept_keys(
        original, features[order], labels, config=cfg.reshape.drcdown, run_seed=cfg.seed, epoch=epoch, search=cfg.reshape.neighbors
    )
    position_of = {key: i for i, key in enumerate(original)}
    positions_kept = np.array([position_of[k] for k in keys], dtype=np.int64)
    stats = {"clusters": float(len(result.clusters)), "largest_cluster": float(result.largest_cluster)}
    # Rank 0's list is the one every rank trains on, whatever floating-point noise might do.
    positions_kept = runtime.broadcast_array(positions_kept if run.rank == 0 else None)
    return [original[i] for i in positions_kept.tolist()], {**stats, "kept": float(positions_kept.size)}


def _features(cfg: Config, run: Run, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of ``keys`` (centre crops, eval mode) gathered from all ranks, with their positions."""
    data = dataclasses.replace(cfg.data, eval_crop_mode="centre", eval_crops=1)
    plan = plan_epoch(keys, data, seed=cfg.seed, epoch=0, world_size=run.world_size, is_training=False)
    position = {key: i for i, key in enumerate(keys)}
    module = run.model_engine.module
    module.eval()
    rows, positions = [], []
    with make_loader(run.train_set, data, is_training=False, dali=cfg.runtime.dali) as loader, torch.no_grad():
        for batch in loader.batches(plan.for_rank(run.rank)):
            rows.append(module.features(batch.images.to(run.model_engine.device)).float().cpu().numpy())
            positions.extend(position[key] for key in batch.keys)
    module.train()
    local = np.concatenate(rows) if rows else np.zeros((0, module.backbone.num_features), np.float32)
    gathered = np.concatenate(runtime.all_gather_array(local))
    return gathered, np.concatenate(runtime.all_gather_array(np.array(positions, dtype=np.int64)))


def train_epoch(cfg: Config, run: Run, kept: list[str], always: list[str], epoch: int) -> dict[str, float]:
    plan = plan_epoch(
        run.train_set.keys(), cfg.data, seed=cfg.seed, epoch=epoch, world_size=run.world_size, kept_keys=kept, always_kept_keys=always
    )
    losses, images, started = [], 0, time.perf_counter()
    with make_loader(run.train_set, cfg.data, is_training=True, dali=cfg.runtime.dali) as loader:
        for batch in loader.batches(plan.for_rank(run.rank)):
            device = run.model_engine.device
            loss = engine.l1_loss(run.model_engine(batch.images.to(device)).float(), batch.scores.to(device))
            run.model_engine.backward(loss)
            run.model_engine.step()
            losses.append(float(loss))
            images += len(batch)
    seconds = time.perf_counter() - started
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "images_per_second": images / max(seconds, 1e-9), "steps": float(len(losses))}


def _evaluate(cfg: Config, run: Run) -> dict[str, float]:
    results = {}
    module = run.model_engine.module
    module.eval()
    for name, shard_set in run.targets.items():
        plan = plan_epoch(shard_set.keys(), cfg.data, seed=cfg.seed, epoch=0, world_size=run.world_size, is_training=False)
        predictions, scores = [], []
        with make_loader(shard_set, cfg.data, is_training=False, dali=cfg.runtime.dali) as loader, torch.no_grad():
            for batch in loader.batches(plan.for_rank(run.rank)):
                crops = module(batch.images.to(run.model_engine.device)).float().cpu()
                predictions.append(batch.mean_over_crops(crops).numpy())
                scores.append(batch.scores.numpy())
        local_predictions = np.concatenate(predictions) if predictions else np.zeros(0, np.float32)
        local_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        all_predictions = np.concatenate(runtime.all_gather_array(local_predictions))
        all_scores = np.concatenate(runtime.all_gather_array(local_scores))
        results |= {f"{name}/{k}": v for k, v in metrics.iqa_metrics(all_predictions, all_scores).items()}
    module.train()
    return results

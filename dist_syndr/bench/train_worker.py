"""One rank of ``bench.py train``: ``python -m dist_syndr.bench.train_worker CASE_JSON``.

Started by :func:`dist_syndr.bench.train.launch` with ``RANK`` / ``WORLD_SIZE``
/ ``MASTER_ADDR`` / ``MASTER_PORT`` set. Decodes the epochs' batches through
the loader (untimed, also timing the loader alone), then measures the
cases of :mod:`dist_syndr.bench.train` on them and rank 0 writes the JSON
report (to a temporary name, then renamed).

Shapes: batches ``(B, 3, C, C)`` float32 crops and ``(B,)`` scores.
"""

from __future__ import annotations

import copy
import functools
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dist_syndr import collectives, files, runtime
from dist_syndr.bench.train import BASELINE, TRAINER, TrainPlan, step_case
from dist_syndr.config import Config, DataConfig, ModelConfig, RuntimeConfig, TrainConfig
from dist_syndr.features import precision as precision_policy
from dist_syndr.features.model import build_model
from dist_syndr.loader import make_loader, plan_epoch, upsampled_keys
from dist_syndr.runs.folder import RunFolder
from dist_syndr.sharding.shard_set import ShardSet
from dist_syndr.tracking.tracker import NullTracker
from dist_syndr.train import deepspeed_engine, loop

log = logging.getLogger(__name__)

Batches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Clock:
    """Images, seconds and data-wait seconds summed over timed epochs.

    ``loop_seconds``: the part the trainer's own meter saw (its batch loop, without
    building and closing the loader), where it reports ``images_per_second``.
    """

    images: int = 0
    seconds: float = 0.0
    wait_seconds: float | None = None
    loop_seconds: float | None = None

    @property
    def images_per_second(self) -> float:
        """Images per second over the timed epochs."""
        return self.images / max(self.seconds, 1e-9)


def bench_config(plan: TrainPlan, model: str, shard_root: str, zero_stage: int) -> Config:
    """The run configuration every case shares, at ``zero_stage``: precision auto (bf16 on GPUs, fp32 on the CPU)."""
    return Config(
        seed=0,
        run_name="bench-train",
        runtime=RuntimeConfig(faiss="cpu"),
        model=ModelConfig(backbone=model, is_random_init=True, image_size=plan.crop),
        data=DataConfig(
            batch_size=plan.batch_size, num_workers=plan.num_workers, crop=plan.crop, verify_checksums="off"
        ),
        train=TrainConfig(zero_stage=zero_stage, learning_rate=1e-4, shard_set=shard_root, resume="never"),
    )


@dataclass
class Setup:
    """What every case of one rank shares."""

    plan: TrainPlan
    cfg: Config
    backends: runtime.Backends
    device: torch.device
    threads: int


@dataclass
class Epochs:
    """The trainer's epoch plans on this rank, decoded once for the baseline and the bare engine steps."""

    train_set: ShardSet
    kept: list[str]
    always: list[str]
    decoded: dict[int, Batches]
    warmup: list[int]
    timed: list[int]
    loader_clock: Clock


def main(case: dict) -> None:
    setup = _start(case)
    epochs = _decode_epochs(setup)
    cases, train_loader, flops_per_image = _build_cases(setup, case, epochs)
    best = _measure(cases, setup, epochs)
    train_loader.close()
    _report(case, setup, epochs, best, flops_per_image)
    runtime.shutdown()


def _start(case: dict) -> Setup:
    plan = TrainPlan.from_dict(case["plan"])
    cfg = bench_config(plan, case["model"], case["shard_root"], plan.trainer_zero_stage)
    # One rank (a single GPU) still gets a process group: DDP needs one.
    backends = runtime.init(cfg.runtime, timeout_s=plan.timeout_s, is_group_required=True)
    threads = plan.threads_per_rank or max(1, len(os.sched_getaffinity(0)) // backends.world_size)
    if backends.device == "cpu":
        torch.set_num_threads(threads)
    return Setup(
        plan, cfg, backends, runtime.torch_device() if backends.device == "cuda" else torch.device("cpu"), threads
    )


def _decode_epochs(setup: Setup) -> Epochs:
    cfg, plan, rank, world_size = setup.cfg, setup.plan, setup.backends.rank, setup.backends.world_size
    train_set = ShardSet(cfg.train.shard_set)
    upsampled = set(upsampled_keys(train_set))
    kept = [key for key in train_set.keys() if key not in upsampled]
    always = sorted(upsampled)
    every = list(range(plan.warmup_epochs + plan.epochs))
    timed = every[plan.warmup_epochs :]
    decoded, loader_clock = {}, Clock()
    for epoch in every:
        decoded[epoch], seconds = _decode_epoch(cfg, train_set, kept, always, epoch, rank, world_size, setup.device)
        if epoch in timed:
            loader_clock.images += sum(len(scores) for _, scores in decoded[epoch])
            loader_clock.seconds += seconds
    if not decoded[every[0]]:
        raise ValueError(
            f"{cfg.train.shard_set}: too few samples for one batch of {plan.batch_size} on each of {world_size} ranks"
        )
    return Epochs(train_set, kept, always, decoded, every[: plan.warmup_epochs], timed, loader_clock)


def _build_cases(setup: Setup, case: dict, epochs: Epochs):
    """The cases by name, the trainer's loader (kept across epochs, as ``loop.fit`` does) and the model's FLOPs."""
    cfg, plan, device = setup.cfg, setup.plan, setup.device
    rank, world_size = setup.backends.rank, setup.backends.world_size
    # One initial state for the baseline and every engine.
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    baseline_model = copy.deepcopy(model).to(device)
    decoded = epochs.decoded
    flops_per_image = _flops_per_image(baseline_model, decoded[min(decoded)][0][0])
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel(baseline_model, device_ids=device_ids)
    optimizer = deepspeed_engine.build_optimizer(baseline_model, cfg.train)
    precision = precision_policy.resolve(cfg.train.precision, setup.backends.device)
    # The trainer's own policy (bf16 autocast over fp32 weights on GPUs): like for like with DeepSpeed's forward.
    autocast = functools.partial(precision_policy.autocast, device, precision)
    engines = {
        stage: _engine(plan, case, model, stage, world_size, setup.backends.device) for stage in plan.engine_stages
    }
    gc.freeze()  # as launchers/train.py does
    trainer = engines[plan.trainer_zero_stage]
    run = loop.Run(trainer, epochs.train_set, {}, NullTracker(), RunFolder(Path(case["run_dir"])), rank, world_size)
    train_loader = make_loader(epochs.train_set, cfg.data, is_training=True, dali=cfg.runtime.dali)
    cases: dict[str, Callable[[int], dict]] = {
        BASELINE: lambda epoch: _ddp_epoch(ddp, optimizer, autocast, decoded[epoch])
    }
    for stage in plan.step_stages:
        cases[step_case(stage)] = lambda epoch, stage=stage: _engine_epoch(engines[stage], decoded[epoch])
    cases[TRAINER] = lambda epoch: loop.train_epoch(cfg, run, epochs.kept, epochs.always, epoch, loader=train_loader)
    return cases, train_loader, flops_per_image


def _measure(cases: dict[str, Callable[[int], dict]], setup: Setup, epochs: Epochs) -> dict[str, Clock]:
    """Each case's best clock over ``plan.repeats`` rounds, after the warm-up epochs."""
    plan, names = setup.plan, setup.plan.cases
    for name in names:
        for epoch in epochs.warmup:
            cases[name](epoch)
    best: dict[str, Clock] = {}
    for repeat in range(plan.repeats):
        # Alternating the order spreads slow moments of a shared machine over all cases.
        for name in names if repeat % 2 == 0 else reversed(names):
            clock = _timed(cases[name], epochs.timed, plan.batch_size, setup.device)
            log.info(
                "rank %d, %s, repeat %d: %.1f images/s", setup.backends.rank, name, repeat, clock.images_per_second
            )
            if name not in best or clock.images_per_second > best[name].images_per_second:
                best[name] = clock
    return best


def _report(case: dict, setup: Setup, epochs: Epochs, best: dict[str, Clock], flops_per_image: float) -> None:
    """Per-process rates from every rank, written by rank 0."""
    names, backends, cfg = setup.plan.cases, setup.backends, setup.cfg
    trainer_clock = best[TRAINER]
    in_loop = trainer_clock.images / trainer_clock.loop_seconds if trainer_clock.loop_seconds else float("nan")
    loader_rate = epochs.loader_clock.images_per_second
    rates = np.array([best[name].images_per_second for name in names] + [loader_rate, in_loop])
    per_rank = np.concatenate(collectives.all_gather_array(rates[None, :]))  # (ranks, cases + loader + trainer loop)
    if backends.rank != 0:
        return
    report = {
        "model": cfg.model.backbone,
        "cases": {name: _case_report(best[name], per_rank[:, i]) for i, name in enumerate(names)},
        "flops_per_image": flops_per_image,
        "loader_images_per_second": float(per_rank[:, len(names)].mean()),
        "trainer_loop_images_per_second": float(per_rank[:, len(names) + 1].mean()),
        "steps_per_epoch": len(epochs.decoded[min(epochs.decoded)]),
        "world_size": backends.world_size,
        "device": backends.device,
        "dist_backend": backends.dist_backend,
        "gpu_name": runtime.device_name(setup.device),
        "loader": f"DALI {backends.dali}"
        if cfg.data.loader != "torch" and backends.dali != "off"
        else "torch DataLoader",
        "threads": setup.threads,
        "trainer_zero_stage": setup.plan.trainer_zero_stage,
    }
    files.write_text(case["result"], json.dumps(report, indent=2))


def _case_report(clock: Clock, per_rank: np.ndarray) -> dict:
    wait_share = None if clock.wait_seconds is None else clock.wait_seconds / clock.seconds
    return {"images_per_second": float(per_rank.mean()), "per_rank": per_rank.tolist(), "data_wait_share": wait_share}


def _engine(plan: TrainPlan, case: dict, model: torch.nn.Module, stage: int, world_size: int, device: str):
    """A DeepSpeed engine at ZeRO ``stage`` over a copy of ``model``, configured as the trainer would be."""
    cfg = bench_config(plan, case["model"], case["shard_root"], stage)
    model_engine, _ = deepspeed_engine.initialize(
        copy.deepcopy(model), cfg.train, cfg.data, world_size=world_size, device=device
    )
    return model_engine


def _decode_epoch(
    cfg: Config,
    train_set: ShardSet,
    kept: list[str],
    always: list[str],
    epoch: int,
    rank: int,
    world_size: int,
    device: torch.device,
) -> tuple[Batches, float]:
    """The batches ``train_epoch`` reads in ``epoch`` on this rank, on ``device``, and the seconds the loader took."""
    plan = plan_epoch(
        train_set.keys(),
        cfg.data,
        seed=cfg.seed,
        epoch=epoch,
        world_size=world_size,
        kept_keys=kept,
        always_kept_keys=always,
    )
    batches = []
    started = time.perf_counter()
    with make_loader(train_set, cfg.data, is_training=True, dali=cfg.runtime.dali) as loader:
        for batch in loader.batches(plan.for_rank(rank)):
            # Copies: a loader may hand out buffers it reuses.
            batches.append((batch.images.to(device).clone(), batch.scores.to(device).clone()))
    runtime.synchronize(device)
    return batches, time.perf_counter() - started


def _flops_per_image(model: torch.nn.Module, images: torch.Tensor) -> float:
    """Model FLOPs of one forward + backward per image (counted on two images; the count is linear in the batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    sample = images[:2]
    counter = FlopCounterMode(display=False)
    with counter:
        model(sample).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / sample.shape[0]


def _ddp_epoch(ddp, optimizer, autocast, batches: Batches) -> dict:
    for images, scores in batches:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            predictions = ddp(images)
        loss = deepspeed_engine.l1_loss(predictions.float(), scores)
        loss.backward()
        optimizer.step()
    return {"steps": float(len(batches))}


def _engine_epoch(model_engine, batches: Batches) -> dict:
    # The trainer's step, without the loader.
    for images, scores in batches:
        loss = deepspeed_engine.l1_loss(model_engine(images).float(), scores)
        model_engine.backward(loss)
        model_engine.step()
    return {"steps": float(len(batches))}


def _timed(epoch_fn: Callable[[int], dict], epochs: list[int], batch_size: int, device: torch.device) -> Clock:
    clock = Clock()
    for epoch in epochs:
        collectives.barrier()
        started = time.perf_counter()
        stats = epoch_fn(epoch)
        runtime.synchronize(device)
        seconds = time.perf_counter() - started
        clock.images += int(stats["steps"]) * batch_size
        clock.seconds += seconds
        if "data_wait_share" in stats:
            clock.wait_seconds = (clock.wait_seconds or 0.0) + float(stats["data_wait_share"]) * seconds
        if stats.get("images_per_second"):
            clock.loop_seconds = (clock.loop_seconds or 0.0) + int(stats["steps"]) * batch_size / float(
                stats["images_per_second"]
            )
    return clock


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))

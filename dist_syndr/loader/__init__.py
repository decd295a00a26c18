"""The input pipeline: per-epoch plans over a shard set, fed through DALI or a torch fallback.

::

    shard_set = ShardSet(root)
    excluded = verify_shard_set(shard_set, config)            # once, before the first epoch
    loader = make_loader(shard_set, config, is_training=True, dali=runtime_config.dali)
    plan = plan_epoch(shard_set.keys(), config, seed=seed, epoch=epoch, world_size=world_size,
                      kept_keys=drcdown_kept, always_kept_keys=upsampled_keys(shard_set),
                      excluded_keys=excluded, start=resume_offset)
    for batch in loader.batches(plan.for_rank(rank)):          # Batch: images, scores, keys
        ...

Shapes: see :mod:`dist_syndr.loader.batch`.
"""

from __future__ import annotations

import logging

from dist_syndr import runtime
from dist_syndr.config import DataConfig
from dist_syndr.imaging.headers import image_size
from dist_syndr.loader.batch import Batch
from dist_syndr.loader.checks import verify_shard_set
from dist_syndr.loader.crops import CropSpec, crop_anchors
from dist_syndr.loader.plan import EpochPlan, RankPlan, plan_epoch, upsampled_keys
from dist_syndr.sharding.shard_set import ShardSet

log = logging.getLogger(__name__)

__all__ = [
    "Batch",
    "CropSpec",
    "EpochPlan",
    "RankPlan",
    "crop_anchors",
    "image_size",
    "make_loader",
    "plan_epoch",
    "upsampled_keys",
    "verify_shard_set",
]


def make_loader(shard_set: ShardSet, config: DataConfig, *, is_training: bool, dali: str = "auto"):
    """A :class:`~dist_syndr.loader.dali_pipeline.DaliLoader` or
    :class:`~dist_syndr.loader.torch_loader.TorchLoader` as ``config.loader`` and the machine allow.

    ``dali`` is ``runtime.dali`` (auto | gpu | cpu | off); ``runtime.dali_mode`` decides whether
    DALI decodes on the GPU or the CPU, or is unavailable.
    """
    if config.loader == "torch":
        return _torch_loader(shard_set, config, is_training)
    mode = runtime.dali_mode(dali)
    if mode == "off":
        if config.loader == "dali":
            raise ValueError(
                f"data.loader=dali but DALI is unavailable (runtime.dali={dali});"
                " install nvidia-dali-cuda130 or set data.loader=torch"
            )
        log.info("DALI unavailable: using the torch DataLoader fallback")
        return _torch_loader(shard_set, config, is_training)
    from dist_syndr.loader.dali_pipeline import DaliLoader

    device_id = _current_cuda_device() if mode == "gpu" else None
    log.info("DALI loader on %s%s", mode, f" (device {device_id})" if device_id is not None else "")
    return DaliLoader(shard_set, config, is_training=is_training, device=mode, device_id=device_id)


def _torch_loader(shard_set: ShardSet, config: DataConfig, is_training: bool):
    from dist_syndr.loader.torch_loader import TorchLoader

    return TorchLoader(shard_set, config, is_training=is_training, pin_memory=runtime.has_cuda())


def _current_cuda_device() -> int:
    return runtime.torch_device().index

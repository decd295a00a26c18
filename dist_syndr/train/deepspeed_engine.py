"""DeepSpeed from our config: the JSON is generated here, one source of truth, and saved with the run.

:func:`deepspeed_config` turns the ``train`` and ``data`` sections into DeepSpeed's
config dict (ZeRO stage, precision, micro batch and accumulation, clipping,
optimizer offload). :func:`build_optimizer` makes Adam over the model's
parameter groups with the head at ``head_lr_multiplier`` times the backbone
rate and L2 weight decay, as the reference (docs/METHOD.md section 5); a ``torch.optim``
optimizer also avoids DeepSpeed's compiled CPU Adam. :func:`l1_loss` is the
training loss.

Throughput choices (measured with ``launchers/bench.py train``, README):

- ``gradient_clipping`` is always written: DeepSpeed's own default is 1.0, so
  leaving it out would clip when our config says off.
- Without clipping, ZeRO 1/2 skip the global gradient norm (``compute_grad_norm``),
  a pass over every gradient and an all-reduce per step that nothing reads.
- On the CPU, ZeRO 1/2 keep gradients where autograd put them
  (``contiguous_gradients: false``): the contiguous buffer avoids GPU memory
  fragmentation and only costs a copy of every gradient on the CPU.
- Adam is torch's fused kernel (one pass over each tensor, on CPU and CUDA).
- Gradients are reduced across ranks in fp32 at every ZeRO stage, as in the DDP baseline: DeepSpeed's
  ``torch_autocast`` would otherwise tag every Linear and Conv parameter with ``comm_dtype`` bf16/fp16
  (``lower_precision_safe_modules``, default ``[Linear, Conv1d, Conv2d, Conv3d]``) and ZeRO 1-3 would reduce
  their gradients in that dtype; the generated config names no module.
- ZeRO-0 fp32 on the CPU (gloo): DeepSpeed would all-reduce the gradients after
  the backward pass (a device without streams has nothing to overlap with);
  :func:`initialize` hands DeepSpeed the model inside torch's
  ``DistributedDataParallel`` instead, whose reducer all-reduces gradient buckets
  on a side thread while the backward pass goes on, and turns DeepSpeed's own
  all-reduce off. Checkpoints keep the model's own state-dict keys.

Shapes: scores ``(B,)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dist_syndr import files
from dist_syndr.config import DataConfig, TrainConfig
from dist_syndr.features.precision import resolve


def deepspeed_config(train: TrainConfig, data: DataConfig, *, world_size: int, device: str) -> dict:
    """DeepSpeed's config dict for this run (micro batch = ``data.batch_size`` per rank)."""
    precision = resolve(train.precision, device)
    zero: dict = {"stage": train.zero_stage}
    if train.zero_stage in (1, 2):
        zero.update(_zero_1_2_options(train, precision, device))
    if train.zero_stage == 3:
        # Export needs whole weights: gather the 16-bit shards on save.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if train.is_optimizer_offloaded:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device == "cuda"}
    config = {
        "train_micro_batch_size_per_gpu": data.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train_batch_size": data.batch_size * train.gradient_accumulation_steps * world_size,
        "zero_optimization": zero,
        # Mixed precision is torch autocast over fp32 weights (dist_syndr.features.precision): the
        # weights are their own fp32 masters, and inputs and BatchNorm statistics need no casts.
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "torch_autocast": {
            "enabled": precision != "fp32",
            "dtype": precision if precision != "fp32" else "bf16",
            "lower_precision_safe_modules": [],  # gradients reduced in fp32 (module docstring)
        },
        "steps_per_print": 10**9,  # our own logging and tracking report progress
        "wall_clock_breakdown": False,
        "gradient_clipping": train.gradient_clipping,  # 0 = off; DeepSpeed's default would be 1.0
    }
    if train.is_optimizer_offloaded:
        # Offloaded state is stepped by our fused torch Adam on the host (same update as everywhere);
        # DeepSpeed otherwise insists on its own compiled CPU Adam.
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def _zero_1_2_options(train: TrainConfig, precision: str, device: str) -> dict:
    """ZeRO 1/2 switches that only cost time here (see the module docstring)."""
    options: dict = {}
    if device == "cpu":
        options["contiguous_gradients"] = False
    # DeepSpeed needs the norm for clipping, optimizer offload and the fp16 loss scaler's overflow check.
    is_norm_needed = train.gradient_clipping > 0 or train.is_optimizer_offloaded or precision == "fp16"
    if not is_norm_needed:
        options["compute_grad_norm"] = False
    return options


def initialize(model, train: TrainConfig, data: DataConfig, *, world_size: int, device: str):
    """``deepspeed.initialize`` on ``model`` with the generated config and :func:`build_optimizer`;
    ``(engine, config)``.
    """
    import deepspeed

    ds_config = deepspeed_config(train, data, world_size=world_size, device=device)
    optimizer = build_optimizer(model, train)
    if not is_reducer_overlapped(train, world_size=world_size, device=device):
        model_engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        return model_engine, ds_config
    model_engine, *_ = deepspeed.initialize(
        model=_OverlappedReducer(model, broadcast_buffers=False), optimizer=optimizer, config=ds_config
    )
    model_engine.enable_backward_allreduce = False  # the reducer has averaged the gradients already
    return model_engine, ds_config


def is_reducer_overlapped(train: TrainConfig, *, world_size: int, device: str) -> bool:
    """True where :func:`initialize` lets torch DDP's reducer all-reduce the gradients (module docstring)."""
    precision = resolve(train.precision, device)
    return (
        device == "cpu"
        and world_size > 1
        and train.zero_stage == 0
        and precision == "fp32"
        and train.gradient_accumulation_steps == 1
    )


def bare_module(model_engine):
    """The model inside ``model_engine`` (without the reducer wrapper of :func:`initialize`)."""
    module = model_engine.module
    return module.module if isinstance(module, _OverlappedReducer) else module


class _OverlappedReducer(torch.nn.parallel.DistributedDataParallel):
    """DDP whose state dict is the wrapped model's: DeepSpeed checkpoints keep the model's keys."""

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)


def save_deepspeed_config(config: dict, path: Path) -> None:
    """Write the generated JSON beside the run, atomically."""
    files.write_text(path, json.dumps(config, indent=2, sort_keys=True))


def build_optimizer(model, train: TrainConfig):
    """Fused Adam over the backbone and head groups (head at ``head_lr_multiplier`` x the backbone rate)."""
    groups = model.parameter_groups(train.learning_rate, train.head_lr_multiplier)
    return torch.optim.Adam(groups, lr=train.learning_rate, weight_decay=train.weight_decay, fused=True)


def l1_loss(predictions, targets):
    """Mean absolute error, the training loss of the method."""
    return torch.nn.functional.l1_loss(predictions, targets)

"""The one mixed-precision policy: weights stay fp32, ``torch.autocast`` runs the forward pass in bf16 or fp16.

Training (DeepSpeed's ``torch_autocast`` mode), evaluation, scoring and the
benchmark's baseline all use it, so inputs, BatchNorm statistics and losses
need no casts of their own: autocast runs matrix products and convolutions in
the low precision and keeps normalisation and reductions in fp32, and the fp32
parameters are the master weights. ``fp32`` (the CPU default) runs without
autocast. Reshaping features (DDCUp's references, DRCDown's samples) are fp32
on every device unless a config asks otherwise, and run without TF32
(:func:`dist_syndr.runtime.exact_fp32_math`): the method's decisions must not
depend on the device. :func:`resolve` is the one resolver of ``auto``.

Shapes: none.
"""

from __future__ import annotations

import contextlib
from typing import Literal

Precision = Literal["fp32", "bf16", "fp16"]
TORCH_DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16"}


def resolve(requested: str, device) -> Precision:
    """The one precision resolver: ``fp32``, ``bf16`` or ``fp16`` for ``device`` (a ``torch.device`` or its type,
    as runtime chose it): ``auto`` is bf16 on CUDA and fp32 on the CPU.

    Every forward pass resolves through it: training and its DeepSpeed config (``train.precision``), evaluation,
    scoring, the benchmarks, and the reshaping feature passes, which ask for ``fp32`` unless
    ``reshape.drcdown.feature_precision: train``.
    """
    device = getattr(device, "type", None) or str(device).split(":")[0]
    if requested == "auto":
        return "bf16" if device == "cuda" else "fp32"
    if requested == "fp16" and device != "cuda":
        raise ValueError("train.precision=fp16 needs a CUDA device (use fp32 or bf16 on the CPU)")
    if requested not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision: expected auto, fp32, bf16 or fp16, got {requested!r}")
    return requested  # type: ignore[return-value]


def autocast(device, precision: Precision) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` (a ``torch.device`` or its type) for bf16 / fp16; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    device_type = getattr(device, "type", None) or str(device).split(":")[0]
    return torch.autocast(device_type, dtype=getattr(torch, TORCH_DTYPE_NAMES[precision]))

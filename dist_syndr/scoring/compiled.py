"""The scorer's forward pass compiled by ``torch.compile`` (inductor, frozen weights), for long scoring jobs.

Inference only: the weights are frozen into the graph (inductor's ``freezing``:
constants folded, bf16 copies made once, matrix weights pre-packed for oneDNN on
a CPU), and the ImageNet normalisation runs inside the graph on the uint8
windows, fused with the first layer. Every batch has the same shape (the last
one is padded with zero windows whose outputs are dropped), so the graph
compiles once. Compiling costs seconds to a minute up front (a C++ compiler on
a CPU, Triton on a GPU); ``bench.py score`` measures both that cost and the
speed it buys. Results match the eager forward pass to float rounding, not bit
for bit: inductor orders and fuses the arithmetic its own way.

Shapes: windows ``(B, C, C, 3)`` uint8 in, ``(B,)`` float32 out.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from dist_syndr.features.precision import Precision, autocast
from dist_syndr.features.preprocess import IMAGENET_MEAN_255, IMAGENET_STD_255

log = logging.getLogger(__name__)

CompileMode = Literal["auto", "on", "off"]
COMPILE_MODES: tuple[str, ...] = ("auto", "on", "off")
COMPILE_MIN_IMAGES = 5000  # ``auto`` compiles for jobs of at least this many images (bench.py score: break-even)


class NormalisedModel(torch.nn.Module):
    """``model`` fed ``(B, C, C, 3)`` uint8 windows, normalised in the graph as :func:`normalise` does."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        mean = torch.tensor(IMAGENET_MEAN_255, dtype=torch.float32).view(1, 3, 1, 1)
        inverse_std = 1.0 / torch.tensor(IMAGENET_STD_255, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("inverse_std", inverse_std, persistent=False)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        pixels = windows.permute(0, 3, 1, 2).to(torch.float32)
        return self.model((pixels - self.mean) * self.inverse_std).reshape(-1).float()


class CompiledForward:
    """``(B,)`` float32 outputs of uint8 windows through ``model`` compiled once for batches of ``batch_size``."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: Precision, batch_size: int, *,
                 eager: Callable[[np.ndarray], np.ndarray] | None = None):  # fmt: skip
        self.device, self.precision, self.batch_size = device, precision, batch_size
        self.module = NormalisedModel(model).to(device).eval()
        self.compiled = torch.compile(self.module, dynamic=False)
        self.compile_seconds: float | None = None  # set by the first batch
        self.eager = eager  # what scores instead if compiling fails (None: the error propagates)
        self.has_failed = False

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """Outputs of ``(B, C, C, 3)`` uint8 windows, ``B <= batch_size``."""
        if self.has_failed:
            return self.eager(windows)
        try:
            return self._compiled_outputs(windows)
        except Exception as error:  # inductor's failures have no common type (compiler, Triton, lowering)
            if self.eager is None or self.compile_seconds is not None:
                raise
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            log.warning("torch.compile failed, scoring without it: %s", first_line)
            self.has_failed = True
            return self.eager(windows)

    def _compiled_outputs(self, windows: np.ndarray) -> np.ndarray:
        count = len(windows)
        if count < self.batch_size:  # only the last batch: full ones go as they are, without a copy
            windows = np.concatenate([windows, np.zeros((self.batch_size - count, *windows.shape[1:]), np.uint8)])
        batch = torch.from_numpy(np.ascontiguousarray(windows)).to(self.device, non_blocking=True)
        started = time.perf_counter()
        with torch.no_grad(), torch._inductor.config.patch(freezing=True), autocast(self.device, self.precision):
            outputs = self.compiled(batch)
        if self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - started
            log.info("model compiled for batches of %d in %.1f s", self.batch_size, self.compile_seconds)
        return outputs[:count].cpu().numpy()


def should_compile(mode: str, num_images: int, device: torch.device) -> bool:
    """Whether a job of ``num_images`` compiles: ``on``/``off`` as said; ``auto`` from :data:`COMPILE_MIN_IMAGES`
    images where inductor has its compiler (a C++ compiler on a CPU; Triton ships with CUDA torch)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "on"
    has_compiler = device.type == "cuda" or any(shutil.which(name) for name in ("g++", "c++", "clang++"))
    return num_images >= COMPILE_MIN_IMAGES and has_compiler

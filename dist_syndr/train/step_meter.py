"""Throughput and data-wait share of a training loop, over the epoch and since the last report.

Wrap the batch iterator with :meth:`StepMeter.batches`: the time spent inside
the iterator's ``next()`` is data wait, everything else (forward, backward,
optimizer step, logging) is compute. :meth:`StepMeter.pause` keeps work that is
neither (a checkpoint) out of both.

Losses may be device tensors: they are kept as they are and read in one go by
:meth:`StepMeter.settle` (at a log step, a checkpoint, the epoch's end), so a
GPU step does not wait for its loss before the next one is queued.

Shapes: none.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class _Window:
    seconds: float = 0.0
    wait_seconds: float = 0.0
    images: int = 0
    steps: int = 0
    loss_sum: float = 0.0

    def rates(self) -> dict[str, float]:
        return {
            "images_per_second": self.images / self.seconds if self.seconds > 0 else 0.0,
            "data_wait_share": self.wait_seconds / self.seconds if self.seconds > 0 else 0.0,
        }


class StepMeter:
    """Counts images, steps and loss; splits wall time into data wait and compute."""

    def __init__(self) -> None:
        self.epoch = _Window()
        self.window = _Window()
        self._last = time.perf_counter()
        self._pending_losses: list = []  # floats or 0-d tensors, in step order

    def batches(self, iterable: Iterable) -> Iterator:
        """Yield from ``iterable``, charging the time ``next()`` takes to data wait."""
        iterator = iter(iterable)
        while True:
            started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                self._charge(time.perf_counter() - started, wait=True)
                return
            self._charge(time.perf_counter() - started, wait=True)
            yield batch

    def step_done(self, loss, images: int) -> None:
        """Record one optimizer step over ``images`` images with loss ``loss`` (a float or a 0-d tensor)."""
        self._charge(0.0, wait=False)
        self._pending_losses.append(loss.detach() if hasattr(loss, "detach") else loss)
        for window in (self.epoch, self.window):
            window.images += images
            window.steps += 1

    def settle(self) -> list[float]:
        """The losses recorded since the last call, as floats in step order (one device sync for all)."""
        if not self._pending_losses:
            return []
        if hasattr(self._pending_losses[0], "detach"):
            import torch

            values = torch.stack(self._pending_losses).tolist()
        else:
            values = [float(loss) for loss in self._pending_losses]
        self._pending_losses = []
        for value in values:
            self.epoch.loss_sum += value
            self.window.loss_sum += value
        return values

    def report(self) -> dict[str, float]:
        """Mean loss, images/s and data-wait share since the previous report (then starts a new window).

        Call :meth:`settle` first when the caller needs the losses itself; unsettled ones are settled here.
        """
        self.settle()
        window, self.window = self.window, _Window()
        return {"loss": window.loss_sum / max(window.steps, 1), **window.rates()}

    def epoch_rates(self) -> dict[str, float]:
        """Images/s and data-wait share over the whole epoch."""
        return self.epoch.rates()

    @contextmanager
    def pause(self):
        """Leave the enclosed time out of the meter."""
        self._charge(0.0, wait=False)
        yield
        self._last = time.perf_counter()

    def _charge(self, wait_seconds: float, *, wait: bool) -> None:
        now = time.perf_counter()
        elapsed = now - self._last
        self._last = now
        for window in (self.epoch, self.window):
            window.seconds += elapsed
            if wait:
                window.wait_seconds += min(wait_seconds, elapsed)

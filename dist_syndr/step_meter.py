"""Throughput and data-wait share of a training loop, over the epoch and since the last report.

Wrap the batch iterator with :meth:`StepMeter.batches`: the time spent inside
the iterator's ``next()`` is data wait, everything else (forward, backward,
optimizer step, logging) is compute. :meth:`StepMeter.pause` keeps work that is
neither (a checkpoint) out of both.

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

    def step_done(self, loss: float, images: int) -> None:
        """Record one optimizer step over ``images`` images with loss ``loss``."""
        self._charge(0.0, wait=False)
        for window in (self.epoch, self.window):
            window.images += images
            window.steps += 1
            window.loss_sum += loss

    def report(self) -> dict[str, float]:
        """Mean loss, images/s and data-wait share since the previous report (then starts a new window)."""
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

"""The training loop's meter: data wait against compute, and losses read in one go."""

from __future__ import annotations

import time

import pytest
import torch

from dist_syndr.train.step_meter import StepMeter


def _slow_batches(count: int, wait_s: float):
    for index in range(count):
        time.sleep(wait_s)
        yield index


@pytest.mark.timeout(30)
def test_losses_stay_tensors_until_settled_then_come_back_in_step_order():
    meter = StepMeter()
    losses = [torch.tensor(value) for value in (0.5, 0.25, 2.0)]
    for loss in losses:
        meter.step_done(loss, images=4)
    assert meter.epoch.loss_sum == 0.0  # nothing read yet: no device sync per step
    assert meter.settle() == [0.5, 0.25, 2.0] and meter.settle() == []
    report = meter.report()
    assert report["loss"] == pytest.approx(2.75 / 3)
    meter.step_done(1.5, images=4)  # plain floats work too; report() settles what is left
    assert meter.report()["loss"] == 1.5 and meter.epoch.loss_sum == pytest.approx(4.25)


@pytest.mark.timeout(30)
def test_wait_inside_the_iterator_is_data_wait_and_pauses_count_as_neither():
    meter = StepMeter()
    for _ in meter.batches(_slow_batches(3, 0.05)):
        time.sleep(0.05)  # "compute"
        meter.step_done(torch.tensor(1.0), images=2)
        with meter.pause():
            time.sleep(0.1)  # a checkpoint: neither wait nor compute
    rates = meter.epoch_rates()
    assert rates["data_wait_share"] == pytest.approx(0.5, abs=0.15)
    assert rates["images_per_second"] == pytest.approx(6 / 0.3, rel=0.3)

"""Learning-rate factors against the formulas worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from components.config import ScheduleConfig
from components.schedules import build_scheduler, lr_factor


def factors(schedule: ScheduleConfig, max_epochs: int, base_lr: float = 1.0) -> list[float]:
    return [lr_factor(e, schedule, max_epochs, base_lr) for e in range(max_epochs)]


def test_constant_is_one() -> None:
    assert factors(ScheduleConfig(kind="constant"), 4) == [1.0, 1.0, 1.0, 1.0]


def test_step_halves_every_two_epochs() -> None:
    schedule = ScheduleConfig(kind="step", step_size=2, gamma=0.5)
    assert factors(schedule, 5) == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_exponential() -> None:
    schedule = ScheduleConfig(kind="exponential", gamma=0.9)
    assert factors(schedule, 4) == pytest.approx([1.0, 0.9, 0.81, 0.729])


def test_inverse_time() -> None:
    schedule = ScheduleConfig(kind="inverse_time", decay=0.5)
    assert factors(schedule, 4) == pytest.approx([1.0, 1 / 1.5, 1 / 2.0, 1 / 2.5])


def test_cosine_spans_max_epochs_by_default() -> None:
    # t_max = 4: cos(pi * e / 4) = 1, sqrt(2)/2, 0, -sqrt(2)/2
    half = math.sqrt(2) / 2
    expected = [1.0, (1 + half) / 2, 0.5, (1 - half) / 2]
    assert factors(ScheduleConfig(kind="cosine"), 4) == pytest.approx(expected)


def test_cosine_floor_is_an_absolute_lr() -> None:
    schedule = ScheduleConfig(kind="cosine", t_max=2, min_lr=0.01)
    lrs = [0.1 * f for f in factors(schedule, 4, base_lr=0.1)]
    # lr = 0.01 + 0.09 * (1 + cos(pi * e / 2)) / 2, held at the floor after t_max
    assert lrs == pytest.approx([0.1, 0.055, 0.01, 0.01])


def test_warmup_ramps_then_decay_starts_from_full_rate() -> None:
    schedule = ScheduleConfig(kind="step", step_size=1, gamma=0.5, warmup_epochs=3)
    # warmup: (e + 1) / 4; then the step decay counts epochs from the end of warmup
    assert factors(schedule, 6) == [0.25, 0.5, 0.75, 1.0, 0.5, 0.25]


def test_cosine_with_warmup_spans_the_epochs_left() -> None:
    schedule = ScheduleConfig(kind="cosine", warmup_epochs=1)
    # max_epochs 5 -> cosine over t_max = 4 epochs after 1 warmup epoch
    half = math.sqrt(2) / 2
    expected = [0.5, 1.0, (1 + half) / 2, 0.5, (1 - half) / 2]
    assert factors(schedule, 5) == pytest.approx(expected)


def test_negative_epoch_is_refused() -> None:
    with pytest.raises(ValueError, match="epoch"):
        lr_factor(-1, ScheduleConfig(), 3)


def test_scheduler_sets_the_optimizer_lr_each_epoch() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=0.2)
    schedule = ScheduleConfig(kind="exponential", gamma=0.5, warmup_epochs=1)
    scheduler = build_scheduler(optimizer, schedule, max_epochs=4)
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.1, 0.2, 0.1, 0.05])


def test_scheduler_keeps_each_group_base_lr() -> None:
    backbone, head = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [backbone], "lr": 0.01}, {"params": [head], "lr": 0.1}])
    scheduler = build_scheduler(optimizer, ScheduleConfig(kind="cosine", min_lr=0.005), max_epochs=2)
    optimizer.step()
    scheduler.step()
    # epoch 1 of 2: cos(pi / 2) = 0, so each group sits halfway between its base and the floor
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0075, 0.0525])

"""Learning-rate schedules, stepped once per epoch, as multipliers of the base learning rate.

The formulas are those of :class:`components.config.ScheduleConfig`. Two choices are ours:

- **Warmup comes first, then the decay.** During the `warmup_epochs` the factor ramps linearly,
  ``(epoch + 1) / (warmup_epochs + 1)``, and the decay schedules count their epochs from the
  end of warmup (``e = epoch - warmup_epochs``), so the first epoch after warmup runs at the
  full base rate instead of an already decayed one.
- **Cosine spans the epochs left after warmup** (``t_max`` defaults to
  ``max_epochs - warmup_epochs``) and stays at `min_lr` past ``t_max`` rather than rising again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from components.config import ScheduleConfig


def _decay_factor(e: int, schedule: ScheduleConfig, max_epochs: int, base_lr: float) -> float:
    """The decay schedule's factor `e` epochs after warmup."""
    if schedule.kind == "step":
        return schedule.gamma ** (e // schedule.step_size)
    if schedule.kind == "exponential":
        return schedule.gamma**e
    if schedule.kind == "inverse_time":
        return 1.0 / (1.0 + schedule.decay * e)
    if schedule.kind == "cosine":
        t_max = schedule.t_max or max(1, max_epochs - schedule.warmup_epochs)
        cosine = (1.0 + math.cos(math.pi * min(e, t_max) / t_max)) / 2.0
        # The floor is an absolute lr, so it becomes a factor only relative to the base lr.
        floor = schedule.min_lr / base_lr
        return floor + (1.0 - floor) * cosine
    return 1.0  # constant


def lr_factor(epoch: int, schedule: ScheduleConfig, max_epochs: int, base_lr: float = 1.0) -> float:
    """Multiplier of the base learning rate during `epoch` (0-based).

    Args:
        epoch: The epoch, counted from 0.
        schedule: The schedule's kind and parameters.
        max_epochs: Training length; the default cosine period is derived from it.
        base_lr: The optimizer's base lr. Only cosine with ``min_lr > 0`` depends on it,
            because `min_lr` is an absolute rate: ``base_lr * factor == min_lr`` at the end.

    Returns:
        The factor; ``base_lr * factor`` is the learning rate of that epoch.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if base_lr <= 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")
    warmup = schedule.warmup_epochs
    decay = _decay_factor(max(0, epoch - warmup), schedule, max_epochs, base_lr)
    if epoch < warmup:
        return decay * (epoch + 1) / (warmup + 1)
    return decay


def build_scheduler(optimizer: Optimizer, schedule: ScheduleConfig, max_epochs: int) -> LambdaLR:
    """A `LambdaLR` applying :func:`lr_factor`; call its `step()` once per epoch.

    Each parameter group keeps its own base lr (a lower lr for a pretrained backbone stays
    lower), and its cosine floor is computed against that base.

    Args:
        optimizer: The optimizer whose groups' current lr is taken as the base lr.
        schedule: The schedule's kind and parameters.
        max_epochs: Training length (sets the default cosine period).
    """
    lambdas: list[Callable[[int], float]] = [
        partial(lr_factor, schedule=schedule, max_epochs=max_epochs, base_lr=group["lr"])
        for group in optimizer.param_groups
    ]
    return LambdaLR(optimizer, lr_lambda=lambdas)

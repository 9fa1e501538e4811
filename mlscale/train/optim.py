"""Optimizer and learning-rate schedule from the train config, as plain functions of plain data.

The schedule is a function of the global step, so a run resumed from a checkpoint at step s continues with exactly
the learning rate an uninterrupted run would use at step s.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from mlscale.config import OptimizerConfig, ScheduleConfig
from mlscale.direction import gain


def build_optimizer(parameters: Iterable[torch.nn.Parameter], settings: OptimizerConfig) -> torch.optim.Optimizer:
    name, lr, decay = settings.name, settings.lr, settings.weight_decay
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, weight_decay=decay, momentum=settings.momentum, nesterov=True)
    raise ValueError(f"optimizer.name {name!r} is unknown; known: adamw, adam, sgd")


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, settings: ScheduleConfig) -> float:
    """Multiplier of the peak lr at a global step: linear warmup, then constant, cosine or step decay."""
    warmup = int(settings.warmup_fraction * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    name = settings.name
    if name == "constant":
        return 1.0
    if name == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        floor = settings.min_lr_ratio
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if name == "step":
        return settings.gamma ** (step // (settings.step_every_epochs * max(1, steps_per_epoch)))
    raise ValueError(f"schedule.name {name!r} is unknown; known: constant, cosine, step")


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
                    settings: ScheduleConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, steps_per_epoch, settings)
    )


class EarlyStopping:
    """Counts evaluations without an improvement of at least min_delta; stop after `patience` of them."""

    def __init__(self, mode: str, patience: int, min_delta: float = 0.0, enabled: bool = True,
                 best: float | None = None, bad_evaluations: int = 0) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be max or min, got {mode!r}")
        self.mode, self.patience, self.min_delta, self.enabled = mode, patience, min_delta, enabled
        self.best, self.bad_evaluations = best, bad_evaluations

    def improved(self, value: float) -> bool:
        if self.best is None or math.isnan(self.best):
            return not math.isnan(value)
        return gain(value, self.best, self.mode) > self.min_delta

    def update(self, value: float) -> bool:
        """Record one evaluation; True when training should stop."""
        if self.improved(value):
            self.best, self.bad_evaluations = value, 0
        else:
            self.bad_evaluations += 1
        return self.enabled and self.bad_evaluations > self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evaluations": self.bad_evaluations}

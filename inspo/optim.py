"""AdamW with linear warm-up and a cosine (or linear, or constant) decay to a floor, configured from YAML.

The schedule's length (the run's optimizer steps) is set when training starts, not in ``configure_optimizers``:
reading ``trainer.estimated_stepping_batches`` there builds the train dataloader before a checkpoint is restored,
and Lightning then drops the dataloader's saved position (a resumed run would restart the epoch's data). The length
is part of the scheduler's state, so a resumed run keeps the schedule it started with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from inspo.errors import ConfigError


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule.

    Attributes:
        lr: peak learning rate (the InSPO paper's 8B recipes use 5e-7; small models train with ~1e-6 to 1e-5).
        weight_decay: AdamW weight decay, applied to matrices only (not to norms or biases).
        betas: AdamW betas (the paper's recipes: 0.9, 0.95).
        eps: AdamW epsilon.
        warmup_ratio: fraction of the optimizer steps spent warming up linearly from 0 to ``lr``.
        schedule: decay after warm-up: cosine, linear or constant.
        min_lr_ratio: the decay's floor as a fraction of ``lr``.
    """

    lr: float = 5e-7
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_ratio: float = 0.03
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"model.optim.lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"model.optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"model.optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"model.optim.schedule must be cosine, linear or constant, got {self.schedule!r}")


def lr_factor(step: int, total_steps: int, config: OptimConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` of ``total_steps``."""
    warmup = int(config.warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if config.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1 - progress
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * decay


class LRSchedule:
    """The ``LambdaLR`` multiplier: :func:`lr_factor` over ``total_steps`` steps (None until training starts).

    An object rather than a closure, so ``LambdaLR.state_dict()`` saves ``total_steps`` with the scheduler (its
    attributes are plain values: checkpoints load with ``weights_only``).
    """

    def __init__(self, config: OptimConfig, total_steps: int | None = None) -> None:
        self.warmup_ratio = config.warmup_ratio
        self.schedule = config.schedule
        self.min_lr_ratio = config.min_lr_ratio
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        config = OptimConfig(lr=1.0, warmup_ratio=self.warmup_ratio, schedule=self.schedule,
                             min_lr_ratio=self.min_lr_ratio)
        return lr_factor(step, self.total_steps or 1, config)


def start_schedules(schedulers: list[torch.optim.lr_scheduler.LRScheduler], total_steps: int) -> None:
    """Give every :class:`LRSchedule` without a length ``total_steps`` and set the current learning rates.

    A schedule restored from a checkpoint keeps its length; its rates are recomputed, which changes nothing.
    """
    for scheduler in schedulers:
        schedules = getattr(scheduler, "lr_lambdas", [])
        if not any(isinstance(s, LRSchedule) for s in schedules):
            continue
        for schedule in schedules:
            if isinstance(schedule, LRSchedule) and schedule.total_steps is None:
                schedule.total_steps = total_steps
        for group, base, schedule in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, schedules):
            group["lr"] = base * schedule(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def make_optimizer(model: nn.Module, config: OptimConfig, total_steps: int | None = None) -> dict:
    """Lightning's ``configure_optimizers`` answer for the trainable parameters of ``model``.

    ``total_steps`` None: the schedule's length is set later with :func:`start_schedules`.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(config, total_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

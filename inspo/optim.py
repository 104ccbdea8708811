"""AdamW with linear warm-up and a cosine (or linear, or constant) decay to a floor, configured from YAML."""

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


def make_optimizer(model: nn.Module, config: OptimConfig, total_steps: int) -> dict:
    """Lightning's ``configure_optimizers`` answer for the trainable parameters of ``model``."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, config))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

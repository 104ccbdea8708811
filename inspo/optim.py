"""AdamW with linear warm-up and a cosine (or linear, or constant) decay to a floor, configured from YAML.

Precision: the optimizer only ever updates fp32 weights, and its state is fp32. bf16 keeps 8 significant bits, so
an AdamW step smaller than ~0.4% of a weight rounds to nothing when added to a bf16 weight; at the 5e-7 learning
rates of preference optimisation that is almost every step (measured: 20 steps of SmolLM2 with bf16 weights change
0.26% of them, with fp32 weights 100%). bf16 *compute* is kept by ``trainer.precision: bf16-mixed`` with
``model.dtype: fp32``: Lightning runs forward and backward under bf16 autocast on fp32 weights (one device, DDP,
FSDP2), and under FSDP1 :class:`inspo.distributed.DecoderFSDPStrategy` all-gathers bf16 copies of fp32 shards.
This is "fp32 master weights with bf16 compute" with nothing of our own in the optimizer, so checkpoints, resume
and sharded optimizer state stay Lightning's and torch's. Memory at 8B under FSDP (8 GPUs): fp32 weights 32 GB,
gradients 32 GB, AdamW state 64 GB, sharded: 16 GB per GPU (plus the frozen reference, 4 GB per GPU in fp32);
an fp32-master wrapper around bf16 weights (DeepSpeed's way) would hold bf16 weights and gradients besides fp32
masters and states, the same 128 GB in total, and would need its own checkpoint format. :func:`check_precision`
(at ``setup``) and :func:`make_optimizer` refuse, in one line, every setting that would update bf16 / fp16
weights in place. A bf16 base under LoRA is fine: it is frozen, and peft keeps the adapters in fp32.

The schedule's length (the run's optimizer steps) is set when training starts, not in ``configure_optimizers``:
reading ``trainer.estimated_stepping_batches`` there builds the train dataloader before a checkpoint is restored,
and Lightning then drops the dataloader's saved position (a resumed run would restart the epoch's data). The length
is part of the scheduler's state, so a resumed run keeps the schedule it started with, unless the run's length changed
(``--trainer.max_steps`` raised to train on): then the schedule is stretched to the new length, with one log line
(kept, a schedule that had decayed to its end would train every further step at ``min_lr_ratio``, by default 0).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from inspo.errors import ConfigError

log = logging.getLogger("inspo")

HALF_DTYPES = {torch.bfloat16: 8, torch.float16: 11}
"""Low-precision dtypes -> significant bits: an update below ~2**-bits of a weight is lost when added to it."""
HALF_PRECISIONS = ("bf16-true", "16-true")
"""Lightning precisions that cast the whole module, trained weights included, to bf16 / fp16."""
MIXED = "trainer.precision bf16-mixed with model.dtype fp32 (bf16 compute, fp32 master weights and optimizer state)"


def _name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype).removeprefix("torch."))


def _lost_steps(dtype: torch.dtype) -> str:
    bits = HALF_DTYPES[dtype]
    return (f"{_name(dtype)} keeps {bits} significant bits, so an optimizer step smaller than "
            f"~{100 * 2.0**-bits:.2g}% of a weight rounds to nothing (at lr 5e-7 almost every step)")


def keeps_fp32_master(strategy: object) -> bool:
    """Whether a Lightning strategy keeps fp32 master weights of bf16 / fp16 parameters itself (DeepSpeed's bf16
    and fp16 optimizers do); then bf16 parameters are its business, not a mistake."""
    return any(cls.__name__ == "DeepSpeedStrategy" for cls in type(strategy).__mro__)


def check_precision(precision: str | None, dtype: torch.dtype, lora: bool) -> None:
    """Refuse a training setup whose optimizer would update bf16 / fp16 weights in place (one-line ConfigError).

    Args:
        precision: the trainer's precision (``trainer.precision``), e.g. ``bf16-mixed``, ``bf16-true``.
        dtype: the parameter dtype the model is loaded in (``model.dtype``).
        lora: whether only LoRA adapters train (then a bf16 / fp16 base is frozen and allowed).
    """
    if precision in HALF_PRECISIONS:
        half = torch.bfloat16 if precision.startswith("bf16") else torch.float16
        raise ConfigError(f"trainer.precision {precision} casts the trained weights to {_name(half)} and the "
                          f"optimizer updates them in place: {_lost_steps(half)}; use {MIXED}")
    if dtype in HALF_DTYPES and not lora:
        name = _name(dtype)
        raise ConfigError(f"model.dtype {name} trains {name} weights in place: {_lost_steps(dtype)}; use {MIXED}, "
                          f"or LoRA (model.lora: the base stays frozen in {name}, the adapters train in fp32)")


def check_trainable_dtypes(model: nn.Module) -> None:
    """Refuse trainable bf16 / fp16 parameters, whatever put them there (the last guard before the optimizer)."""
    half = [(name, p.dtype) for name, p in model.named_parameters() if p.requires_grad and p.dtype in HALF_DTYPES]
    if half:
        name, dtype = half[0]
        raise ConfigError(f"{len(half)} trainable parameters are {_name(dtype)} (first: {name}) "
                          f"and the optimizer would update them in place: {_lost_steps(dtype)}; use {MIXED}")


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
        # torch.optim.AdamW checks these only when the optimizer is built (a traceback after the model has loaded),
        # and not a weight decay < 0 at all (it would push every matrix away from zero).
        if self.weight_decay < 0:
            raise ConfigError(f"model.optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ConfigError(f"model.optim.betas must both be in [0, 1), got {list(self.betas)}")
        if self.eps < 0:
            raise ConfigError(f"model.optim.eps must be >= 0, got {self.eps}")
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


def start_schedules(schedulers: list[torch.optim.lr_scheduler.LRScheduler], total_steps: int,
                    announce: bool = True) -> None:
    """Give every :class:`LRSchedule` the length ``total_steps`` and set the current learning rates.

    A schedule restored from a checkpoint of a run of the same length is unchanged (its rates are recomputed, which
    changes nothing); one of another length is stretched to ``total_steps``, and (``announce``) one log line says so.
    """
    for scheduler in schedulers:
        schedules = getattr(scheduler, "lr_lambdas", [])
        if not any(isinstance(s, LRSchedule) for s in schedules):
            continue
        for schedule in schedules:
            if isinstance(schedule, LRSchedule) and schedule.total_steps != total_steps:
                if schedule.total_steps is not None and announce:
                    log.warning("inspo: resume: the checkpoint's learning-rate schedule spans %d optimizer steps, "
                                "this run %d: the schedule is stretched to %d steps (from step %d on)",
                                schedule.total_steps, total_steps, total_steps, scheduler.last_epoch)
                    announce = False
                schedule.total_steps = total_steps
        for group, base, schedule in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, schedules):
            group["lr"] = base * schedule(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def fused_adamw_applies(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW (one kernel per step: on one CPU thread 0.07 s instead of 0.47 s for 135M fp32
    parameters) takes ``params``: plain tensors, all on CPU or all on CUDA. Sharded DTensor parameters (FSDP2) and
    optimizers a strategy wraps (DeepSpeed) keep torch's default implementation."""
    if not params or len({p.device.type for p in params}) != 1 or params[0].device.type not in ("cpu", "cuda"):
        return False
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor

        return not any(isinstance(p, DTensor) for p in params)
    return True


def make_optimizer(
    model: nn.Module, config: OptimConfig, total_steps: int | None = None, fp32_master: bool = False
) -> dict:
    """Lightning's ``configure_optimizers`` answer for the trainable parameters of ``model``.

    ``total_steps`` None: the schedule's length is set later with :func:`start_schedules`. Trainable bf16 / fp16
    parameters are refused (:func:`check_trainable_dtypes`) unless ``fp32_master``: the strategy wraps the
    optimizer in one that keeps fp32 master weights itself (DeepSpeed, see :func:`keeps_fp32_master`).
    """
    if not fp32_master:
        check_trainable_dtypes(model)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    fused = not fp32_master and fused_adamw_applies(params)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(config, total_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

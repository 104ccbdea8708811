"""inspo.optim's learning-rate schedule: warm-up and decay values at given steps, derived by hand, and
``start_schedules`` giving a length to new schedules while a restored one keeps its own (unless the run's length changed).

Arithmetic of the schedule (``lr_factor``): warmup = int(warmup_ratio * total); a step s < warmup gets
(s + 1) / (warmup + 1); after it, progress p = min(1, (s - warmup) / (total - warmup)) and the factor is
min + (1 - min) * decay(p), with decay(p) = (1 + cos(pi p)) / 2 (cosine), 1 - p (linear) or 1 (constant).
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from inspo.optim import LRSchedule, OptimConfig, lr_factor, make_optimizer, start_schedules

COSINE = OptimConfig(lr=1.0, warmup_ratio=0.2, schedule="cosine", min_lr_ratio=0.1)


@pytest.mark.parametrize(("step", "want"), [
    (0, 1 / 3),  # warmup = int(0.2 * 10) = 2 steps: (0 + 1) / (2 + 1)
    (1, 2 / 3),  # (1 + 1) / 3
    (2, 1.0),  # p = 0: 0.1 + 0.9 * (1 + cos 0) / 2 = 1
    (4, 0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2),  # p = 2/8 = 1/4, cos(pi/4) = sqrt(1/2): 0.868198
    (6, 0.55),  # p = 4/8 = 1/2, cos(pi/2) = 0: 0.1 + 0.9 / 2
    (10, 0.1),  # p = 1, cos(pi) = -1: the floor
    (13, 0.1),  # past the end: p stays 1
])
def test_cosine_with_warmup_and_floor(step, want):
    assert lr_factor(step, 10, COSINE) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize(("schedule", "step", "want"), [
    ("linear", 0, 1.0),  # warmup = int(0.1 * 8) = 0: no warm-up, p = 0
    ("linear", 2, 0.75),  # p = 2/8: 1 - 1/4
    ("linear", 6, 0.25),  # p = 6/8
    ("linear", 8, 0.0),  # min_lr_ratio 0: down to 0
    ("constant", 0, 1.0),
    ("constant", 7, 1.0),
])
def test_linear_and_constant_without_warmup(schedule, step, want):
    """configs/tiny.yaml's 8 steps at warmup_ratio 0.1: int(0.8) = 0 warm-up steps, the first step at the peak."""
    config = OptimConfig(lr=1.0, warmup_ratio=0.1, schedule=schedule)
    assert lr_factor(step, 8, config) == pytest.approx(want, abs=1e-12)


def test_lr_schedule_is_lr_factor_whatever_the_peak():
    """The LambdaLR multiplier multiplies the peak: it must not depend on ``lr`` (config 5e-7, factor as at lr 1)."""
    config = OptimConfig(lr=5e-7, warmup_ratio=0.2, min_lr_ratio=0.1)
    schedule = LRSchedule(config, total_steps=10)
    assert [schedule(s) for s in range(12)] == [lr_factor(s, 10, COSINE) for s in range(12)]


def make(total_steps: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """AdamW over a Linear(3, 2) (weight: decayed group, bias: undecayed group) at peak lr 1e-3, COSINE shape."""
    torch.manual_seed(0)
    config = OptimConfig(lr=1e-3, weight_decay=0.01, warmup_ratio=0.2, min_lr_ratio=0.1)
    return make_optimizer(nn.Linear(3, 2), config, total_steps)["lr_scheduler"]["scheduler"]


def lrs(scheduler: torch.optim.lr_scheduler.LRScheduler) -> list[float]:
    return [group["lr"] for group in scheduler.optimizer.param_groups]


def advance(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> None:
    for _ in range(steps):
        scheduler.optimizer.step()
        scheduler.step()


def test_start_schedules_sets_the_length_and_the_current_rates():
    """Before training starts the length is unknown (None: the factor is computed as if over 1 step, 1.0 at step
    0); ``start_schedules`` gives it 10 steps, and the rates become 1e-3 * 1/3 at once, in both groups."""
    scheduler = make()
    groups = scheduler.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0] and [len(g["params"]) for g in groups] == [1, 1]
    assert scheduler.lr_lambdas[0].total_steps is None and lrs(scheduler) == pytest.approx([1e-3, 1e-3])
    start_schedules([scheduler], 10)
    assert [s.total_steps for s in scheduler.lr_lambdas] == [10, 10]
    assert lrs(scheduler) == pytest.approx([1e-3 / 3] * 2, abs=1e-15)
    assert scheduler.get_last_lr() == lrs(scheduler)
    advance(scheduler, 6)
    assert lrs(scheduler) == pytest.approx([0.55e-3] * 2, abs=1e-15)  # step 6: 0.55 (see the cosine test)


def test_a_restored_schedule_keeps_its_length_unless_the_run_got_longer(caplog):
    """Resume: the length is saved with the scheduler; ``start_schedules`` with the same count changes nothing: at
    step 4 of 10 the factor stays 0.1 + 0.9 (1 + sqrt(1/2)) / 2. A run made longer on resume (``--trainer.max_steps``
    raised, as the nothing-left-to-train error says) kept the old length, so every step past it trained at the
    floor (by default lr 0) without a word; now the schedule is stretched to the new length, with one log line:
    step 4 of 20 ends its warm-up (int(0.2 * 20) = 4 steps): the factor is 1."""
    first = make()
    start_schedules([first], 10)
    advance(first, 4)
    state = first.state_dict()
    assert [entry["total_steps"] for entry in state["lr_lambdas"]] == [10, 10]
    resumed = make()
    resumed.load_state_dict(state)
    start_schedules([resumed], 10)
    assert [s.total_steps for s in resumed.lr_lambdas] == [10, 10]
    assert lrs(resumed) == pytest.approx([1e-3 * (0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2)] * 2, abs=1e-15)
    assert "schedule" not in caplog.text
    longer = make()
    longer.load_state_dict(state)
    caplog.set_level(logging.INFO, logger="inspo")
    start_schedules([longer], 20)
    assert [s.total_steps for s in longer.lr_lambdas] == [20, 20]
    assert lrs(longer) == pytest.approx([1e-3] * 2, abs=1e-15)
    assert caplog.messages == [("inspo: resume: the checkpoint's learning-rate schedule spans 10 optimizer steps, "
                                "this run 20: the schedule is stretched to 20 steps (from step 4 on)")]


def test_start_schedules_leaves_other_schedulers_alone():
    """A scheduler without an LRSchedule (a user's own LambdaLR) keeps its rates and its function."""
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.5)
    other = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    start_schedules([other, make()], 10)
    assert lrs(other) == [0.25] and other.lr_lambdas[0](3) == 0.5

"""Run-time guards: a non-finite training loss stops the run with where to resume from, or is skipped and counted.

A NaN or inf loss means the update would poison the weights (every later loss is NaN too). With
``model.on_nonfinite: error`` (default) the run stops with the step, the batch's data rows (to find the culprit
pairs) and the newest checkpoint saved by a ``ModelCheckpoint`` callback. With ``skip`` the batch's training step
returns None, which Lightning treats as "no backward, no update"; the number of skipped batches is logged as
``train/nonfinite_skipped``. Skipping is single-process only: under DDP every rank would have to skip the same
step, or the gradient all-reduce would wait forever, so there a non-finite loss always stops the run.
"""

from __future__ import annotations

import os
from typing import Literal

from lightning.pytorch import Trainer
from torch import Tensor

from inspo.errors import ConfigError, InspoError

OnNonFinite = Literal["error", "skip"]


class NonFiniteLossError(InspoError):
    """A training step produced a NaN or infinite loss."""


def check_on_nonfinite(value: str) -> None:
    """Validate ``model.on_nonfinite``.

    Raises:
        ConfigError: anything but ``error`` or ``skip``.
    """
    if value not in ("error", "skip"):
        raise ConfigError(f"model.on_nonfinite must be 'error' or 'skip', got {value!r}")


def last_checkpoint(trainer: Trainer | None) -> str | None:
    """The newest checkpoint file written by the trainer's ``ModelCheckpoint`` callbacks, or None."""
    if trainer is None:
        return None
    paths = set()
    for callback in trainer.checkpoint_callbacks:
        for path in (getattr(callback, "_last_checkpoint_saved", ""), callback.last_model_path,
                     callback.best_model_path):
            if path and os.path.isfile(path):
                paths.add(path)
    return max(paths, key=os.path.getmtime) if paths else None


def nonfinite_message(loss: Tensor, step: int, rows: list[int], trainer: Trainer | None) -> str:
    """``non-finite training loss (nan) at step 12 (data rows [3, 8]); last good checkpoint: ...``."""
    checkpoint = last_checkpoint(trainer)
    resume = f"last good checkpoint: {checkpoint}" if checkpoint else "no checkpoint saved yet"
    epoch = f", epoch {trainer.current_epoch}" if trainer is not None else ""
    return (f"non-finite training loss ({loss.item()}) at step {step}{epoch} on data rows {rows}; {resume} "
            f"(check those rows, lower model.optim.lr, or set model.on_nonfinite=skip to skip such batches)")


def skip_allowed(trainer: Trainer | None) -> bool:
    """Whether a batch may be skipped: only when one process trains (see the module docstring)."""
    return trainer is None or trainer.world_size == 1

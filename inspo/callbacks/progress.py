"""The progress bar: loss, reward accuracy, margin, learning rate and tokens/s under short names.

On a terminal it is a tqdm bar; when stdout is not a terminal (Slurm logs, ``| tee``, CI) it prints one plain line
every ``log_every_n_steps`` instead of carriage-return bar updates that a log file cannot show.

Lightning API used: the public hooks of ``TQDMProgressBar`` (``get_metrics``, ``init_*_tqdm``) and its ``Tqdm``
class, imported from ``lightning.pytorch.callbacks.progress.tqdm_progress`` (not re-exported by Lightning).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from typing_extensions import override

SHORT_NAMES = {
    "train/loss_step": "loss",
    "train/reward_accuracy_step": "acc",
    "train/reward_margin_step": "margin",
    "train/lr": "lr",
    "train/tokens_per_sec": "tok/s",
    "val/loss": "val_loss",
    "val/reward_accuracy": "val_acc",
    "val/reward_margin": "val_margin",
    "val/plain_loss": "plain_val_loss",
    "val/plain_reward_accuracy": "plain_val_acc",
    "val/plain_reward_margin": "plain_val_margin",
}
"""Progress-bar metric -> the short name shown; metrics not listed here are not shown."""
VIEWS = (("conditioned (x, y_alt)", "val/"), ("plain (x)", "val/plain_"))
"""Under InSPO validation logs two views: log pi(y|x, y_alt) (what the loss trains) and log pi(y|x) (what a user
samples from), the second under ``val/plain_*``; with standard conditioning there is one view, ``val/*``."""


def full_sanity_check(trainer: Trainer) -> bool:
    """Whether the sanity check just run saw the whole validation set (``num_sanity_val_steps: -1``, or at least
    as many batches as validation has): its metrics are then a real validation before the first step."""
    sanity, full = list(trainer.num_sanity_val_batches), list(trainer.num_val_batches)
    return (trainer.state.fn == "fit" and trainer.global_step == 0 and bool(full) and len(sanity) == len(full)
            and all(s >= f for s, f in zip(sanity, full)))


def format_metric(name: str, value: float) -> str:
    """A metric as the progress line shows it: lr in scientific notation, tok/s whole, the rest 4 digits."""
    if name == "lr":
        return f"{value:.2e}"
    if name == "tok/s":
        return f"{value:.0f}"
    return f"{value:.4g}"


class InspoProgressBar(TQDMProgressBar):
    """A tqdm bar with loss, acc(uracy), margin, lr and tok/s; plain log lines when stdout is not a terminal.

    Args:
        refresh_rate: update the bar every this many batches.
        plain: print plain lines instead of a bar; None decides by whether stdout is a terminal.
        plain_every_n_steps: plain mode: a line every this many optimizer steps; None uses the trainer's
            ``log_every_n_steps``.
    """

    def __init__(
        self, refresh_rate: int = 1, plain: bool | None = None, plain_every_n_steps: int | None = None
    ) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.plain = (not sys.stdout.isatty()) if plain is None else plain
        self.plain_every_n_steps = plain_every_n_steps
        self._last_printed = -1
        self._start = time.monotonic()

    @override
    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metrics = dict(super().get_metrics(trainer, pl_module))
        for name, value in trainer.callback_metrics.items():  # validation views logged without prog_bar too
            if name.startswith("val/"):
                metrics.setdefault(name, value)
        return {short: metrics[name] for name, short in SHORT_NAMES.items() if name in metrics}

    def _bar(self, make: Any) -> Tqdm:
        return Tqdm(disable=True) if self.plain else make()

    @override
    def init_sanity_tqdm(self) -> Tqdm:
        return self._bar(super().init_sanity_tqdm)

    @override
    def init_train_tqdm(self) -> Tqdm:
        return self._bar(super().init_train_tqdm)

    @override
    def init_validation_tqdm(self) -> Tqdm:
        return self._bar(super().init_validation_tqdm)

    @override
    def init_test_tqdm(self) -> Tqdm:
        return self._bar(super().init_test_tqdm)

    @override
    def init_predict_tqdm(self) -> Tqdm:
        return self._bar(super().init_predict_tqdm)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._start = time.monotonic()  # before the step-0 validation

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        every = self.plain_every_n_steps or trainer.log_every_n_steps or 1
        step = trainer.global_step
        total = int(trainer.estimated_stepping_batches)
        if self.plain and step != self._last_printed and (step % every == 0 or step in (1, total)):
            self._last_printed = step
            self._print(trainer, pl_module, f"step {step}/{total}",
                        keep=lambda name: not name.startswith(("val_", "plain_val_")))

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.plain and not trainer.sanity_checking and trainer.state.fn == "fit":
            self._print_validation(trainer, pl_module)

    @override
    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_sanity_check_end(trainer, pl_module)
        if self.plain and full_sanity_check(trainer):  # the step-0 validation (see TrainingMonitor)
            self._print_validation(trainer, pl_module)

    def _print_validation(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """``validation at step N | val_loss .. val_acc .. val_margin ..``; under InSPO both views, labelled."""
        metrics = self.get_metrics(trainer, pl_module)
        groups = [(label, [k for k in metrics if k.startswith("val_" if prefix == "val/" else "plain_val_")])
                  for label, prefix in VIEWS]
        groups = [(label, keys) for label, keys in groups if keys]
        if len(groups) == 1:
            self._print(trainer, pl_module, f"validation at step {trainer.global_step}", keep=groups[0][1])
            return
        parts = [f"{label}: " + " ".join(f"{k.removeprefix('plain_')} {format_metric(k, float(metrics[k]))}"
                                         for k in keys) for label, keys in groups]
        self._print(trainer, pl_module, f"validation at step {trainer.global_step}", text=" | ".join(parts))

    def _print(self, trainer: Trainer, pl_module: LightningModule, head: str, keep: Any = None,
               text: str | None = None) -> None:
        if not trainer.is_global_zero:
            return
        if text is None:
            keep = keep if callable(keep) else (lambda name, names=tuple(keep or ()): name in names)
            metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if keep(k)}
            text = " ".join(f"{k} {format_metric(k, float(v))}" for k, v in metrics.items())
        elapsed = time.monotonic() - self._start
        print(f"epoch {trainer.current_epoch} {head} | {text} | {elapsed:.0f}s", flush=True)

"""Training-time callbacks: the progress bar, throughput and learning-rate logging, and the run statistics file.

- :class:`InspoProgressBar` shows loss, reward accuracy, margin, learning rate and tokens/s under short names. On a
  terminal it is a tqdm bar; when stdout is not a terminal (Slurm logs, ``| tee``, CI) it prints one plain line
  every ``log_every_n_steps`` instead of carriage-return bar updates that a log file cannot show.
- :class:`TrainingMonitor` logs ``train/lr`` and ``train/tokens_per_sec`` every step and writes ``run_stats.json``
  (data counts, parameter counts, throughput, peak memory) into the run folder at the end of training; the
  report (``inspo report``) reads it.
- Checkpoints (:class:`inspo.checkpoints.ResumableCheckpoint`) and signals (:class:`inspo.signals.GracefulStop`)
  have their own modules; their names are importable from here too.

Tokens are *pair tokens*: |x| + |y_w| + |y_l| per pair, the same count whatever the conditioning or layout, so
runs compare fairly (InSPO's packed row is |x| + 2|y_w| + 2|y_l| tokens of compute).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from typing_extensions import override

from inspo.checkpoints import (  # noqa: F401 - importable from here, where they used to live
    PARTIAL,
    ResumableCheckpoint,
    atomic_save,
    check_free_space,
    check_writable,
    link_last,
)
from inspo.errors import ConfigError
from inspo.signals import GracefulStop, requeue, slurm_job_id  # noqa: F401 - importable from here too

log = logging.getLogger("inspo")

RUN_STATS = "run_stats.json"
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
LOGGER_PACKAGES = {"WandbLogger": "wandb", "TensorBoardLogger": "tensorboard", "MLFlowLogger": "mlflow",
                   "CometLogger": "comet_ml", "NeptuneLogger": "neptune"}


def run_dir(trainer: Trainer) -> Path:
    """The run folder (the logger's version folder), without the collective that ``trainer.log_dir`` is under DDP."""
    logger = trainer.logger
    folder = (getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)) if logger is not None else None
    return Path(folder or trainer.default_root_dir)


def pair_tokens(batch: Any) -> int:
    """|x| + |y_w| + |y_l| summed over the pairs of a batch."""
    return sum(len(x) + len(yw) + len(yl) for x, yw, yl in zip(batch.prompt, batch.chosen, batch.rejected))


def full_sanity_check(trainer: Trainer) -> bool:
    """Whether the sanity check just run saw the whole validation set (``num_sanity_val_steps: -1``, or at least
    as many batches as validation has): its metrics are then a real validation before the first step."""
    sanity, full = list(trainer.num_sanity_val_batches), list(trainer.num_val_batches)
    return (trainer.state.fn == "fit" and trainer.global_step == 0 and bool(full) and len(sanity) == len(full)
            and all(s >= f for s, f in zip(sanity, full)))


def format_metric(name: str, value: float) -> str:
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


class TrainingMonitor(Callback):
    """Logs ``train/lr`` and ``train/tokens_per_sec`` every step; writes ``run_stats.json`` at the end of training.

    When the sanity check before training covered the whole validation set (``trainer.num_sanity_val_steps: -1``,
    or as many batches as validation has), its metrics are logged as the validation *before* step 1, so that a
    run's plots show a before and an after (Lightning discards sanity-check metrics).
    """

    RECENT = 10
    """Training steps averaged for the end-of-fit summary (one batch's accuracy is 0, .25, .5, .75 or 1)."""

    def __init__(self) -> None:
        super().__init__()
        self._tokens = 0
        self._pairs = 0
        self._seconds = 0.0
        self._batches = 0
        self._t0 = 0.0
        self._lr = 0.0
        self._started = time.monotonic()
        self.start_step = 0
        self.recent: dict[str, list[float]] = {}

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.monotonic()
        self.start_step = trainer.global_step  # > 0 when resumed
        if trainer.is_global_zero:
            from inspo.summary import model_line

            log.info(model_line(trainer, pl_module))

    @override
    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not full_sanity_check(trainer):
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        for logger in trainer.loggers:
            # Lightning logs validation after k optimizer steps as step k - 1 (metrics.csv counts from 0): -1 here.
            logger.log_metrics({**values, "epoch": 0}, step=-1)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()
        self._lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else 0.0

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        seconds = time.perf_counter() - self._t0
        tokens = pair_tokens(batch) * trainer.world_size  # every rank runs a batch of about this size
        self._tokens += tokens
        self._pairs += len(batch) * trainer.world_size
        self._seconds += seconds
        self._batches += 1
        size = len(batch)
        for name in ("loss", "reward_accuracy", "reward_margin"):
            value = trainer.callback_metrics.get(f"train/{name}_step")
            if value is not None:
                self.recent[name] = [*self.recent.get(name, [])[1 - self.RECENT:], float(value)]
        pl_module.log("train/tokens_per_sec", tokens / max(seconds, 1e-9), on_step=True, on_epoch=False,
                      prog_bar=True, batch_size=size)
        pl_module.log("train/lr", self._lr, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = run_dir(trainer)  # not trainer.log_dir: that is a collective under DDP
        if not trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RUN_STATS).write_text(json.dumps(self.stats(trainer, pl_module), indent=2) + "\n")

    def stats(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """Data counts, parameter counts, throughput and peak memory of the run so far."""
        from inspo.lora import count_parameters

        datamodule = getattr(trainer, "datamodule", None)
        policy = getattr(pl_module, "policy", None)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return {
            "data": dict(getattr(datamodule, "stats", None) or {}),
            "parameters": {"policy": count_parameters(policy),
                           "policy_and_reference": count_parameters(policy, getattr(pl_module, "reference", None))},
            "reference_mode": getattr(getattr(pl_module, "reference_mode", None), "name", None),
            "train": {"optimizer_steps": trainer.global_step, "batches": self._batches, "pairs": self._pairs,
                      "pair_tokens": self._tokens, "seconds": round(self._seconds, 3),
                      "wall_seconds": round(time.monotonic() - self._started, 3),
                      "pairs_per_sec": round(self._pairs / self._seconds, 3) if self._seconds else None,
                      "pair_tokens_per_sec": round(self._tokens / self._seconds, 2) if self._seconds else None},
            "memory": {"peak_rss_mib": round(peak_rss, 1),
                       "cuda_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)
                       if torch.cuda.is_available() else None},
            "world_size": trainer.world_size,
        }


def check_logger_packages(logger: Any) -> None:
    """Raise one clear :class:`ConfigError` if a configured logger's package is not installed.

    ``logger`` is the parsed ``trainer.logger`` value: a bool, None, a ``class_path`` namespace or a list of them.
    """
    for item in logger if isinstance(logger, list) else [logger]:
        class_path = item.get("class_path") if hasattr(item, "get") else None
        if not class_path:
            continue
        name = str(class_path).rsplit(".", 1)[-1]
        package = LOGGER_PACKAGES.get(name)
        if package == "tensorboard" and importlib.util.find_spec("tensorboardX") is not None:
            continue
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"trainer.logger {name} needs the {package!r} package, which is not installed: "
                              f"pip install {package} (or use the default CSV logger, which needs no account)")

"""Training-time callbacks: the progress bar, throughput and learning-rate logging, and the run statistics file.

- :class:`InspoProgressBar` shows loss, reward accuracy, margin, learning rate and tokens/s under short names. On a
  terminal it is a tqdm bar; when stdout is not a terminal (Slurm logs, ``| tee``, CI) it prints one plain line
  every ``log_every_n_steps`` instead of carriage-return bar updates that a log file cannot show.
- :class:`TrainingMonitor` logs ``train/lr`` and ``train/tokens_per_sec`` every step and writes ``run_stats.json``
  (data counts, parameter counts, throughput, peak memory) into the run folder at the end of training; the
  report (``inspo report``) reads it.
- :class:`ResumableCheckpoint` (``--checkpoint.*``) writes every checkpoint under a temporary name and renames it,
  then points ``last.ckpt`` (a symlink, replaced atomically) at it: a crash mid-write never leaves a corrupt
  checkpoint that ``--ckpt_path last`` would pick. ``last`` is searched in all versions of the run, and the
  checkpoint folder is checked (writable, room for a checkpoint) before the first training step.
- :class:`SlurmRequeue`: under Slurm (Lightning's SLURMEnvironment with ``auto_requeue``), the requeue signal
  (SIGUSR1, ``#SBATCH --signal=SIGUSR1@90``) makes the run save at the next optimizer-step boundary, call
  ``scontrol requeue JOB_ID`` and stop; the requeued job resumes from that checkpoint (see ``inspo.cli``).

Tokens are *pair tokens*: |x| + |y_w| + |y_l| per pair, the same count whatever the conditioning or layout, so
runs compare fairly (InSPO's packed row is |x| + 2|y_w| + 2|y_l| tokens of compute).
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from typing_extensions import override

from inspo.errors import ConfigError

log = logging.getLogger("inspo")

RUN_STATS = "run_stats.json"
PARTIAL = ".partial."
"""Prefix of checkpoints being written (never matched by ``last*.ckpt`` or Lightning's ``hpc_ckpt_N`` search)."""
SHORT_NAMES = {
    "train/loss_step": "loss",
    "train/reward_accuracy_step": "acc",
    "train/reward_margin_step": "margin",
    "train/lr": "lr",
    "train/tokens_per_sec": "tok/s",
    "val/loss": "val_loss",
    "val/reward_accuracy": "val_acc",
    "val/reward_margin": "val_margin",
}
"""Progress-bar metric -> the short name shown; metrics not listed here are not shown."""
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
        metrics = super().get_metrics(trainer, pl_module)
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
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start = time.monotonic()

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        every = self.plain_every_n_steps or trainer.log_every_n_steps or 1
        step = trainer.global_step
        if self.plain and step != self._last_printed and (step % every == 0 or step == 1):
            self._last_printed = step
            self._print(trainer, pl_module, f"step {step}/{int(trainer.estimated_stepping_batches)}",
                        keep=lambda name: not name.startswith("val_"))

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.plain and not trainer.sanity_checking and trainer.state.fn == "fit":
            self._print(trainer, pl_module, f"validation at step {trainer.global_step}",
                        keep=lambda name: name.startswith("val_"))

    def _print(self, trainer: Trainer, pl_module: LightningModule, head: str, keep: Any) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if keep(k)}
        values = " ".join(f"{k} {format_metric(k, float(v))}" for k, v in metrics.items())
        elapsed = time.monotonic() - self._start
        print(f"epoch {trainer.current_epoch} {head} | {values} | {elapsed:.0f}s", flush=True)


class TrainingMonitor(Callback):
    """Logs ``train/lr`` and ``train/tokens_per_sec`` every step; writes ``run_stats.json`` at the end of training."""

    def __init__(self) -> None:
        super().__init__()
        self._tokens = 0
        self._seconds = 0.0
        self._batches = 0
        self._t0 = 0.0
        self._lr = 0.0

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
        self._seconds += seconds
        self._batches += 1
        size = len(batch)
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
            "reference_mode": getattr(pl_module, "reference_mode", None),
            "train": {"optimizer_steps": trainer.global_step, "batches": self._batches, "pair_tokens": self._tokens,
                      "seconds": round(self._seconds, 3),
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


# ---------------------------------------------------------------- checkpoints
def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed to its name (no ``ckpt_`` in it: see :data:`PARTIAL`)."""
    return path.with_name(PARTIAL + path.name.replace("ckpt_", "ckpt-") + ".tmp")


def atomic_save(trainer: Trainer, path: str | Path, weights_only: bool = False) -> None:
    """``trainer.save_checkpoint`` to a temporary name, then rename: ``path`` is complete or absent, never partial.

    A sharded strategy writes a folder from every rank; rank 0 renames it once all ranks are done.
    """
    path = Path(path)
    tmp = partial_path(path)
    if trainer.is_global_zero:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)  # left over from a crash
    trainer.strategy.barrier("inspo_atomic_save_start")
    trainer.save_checkpoint(tmp, weights_only)
    trainer.strategy.barrier("inspo_atomic_save_written")
    if trainer.is_global_zero:
        if tmp.is_dir() and path.exists():
            _remove(path)  # a folder cannot replace a folder in one rename; `last` still points to the previous one
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    trainer.strategy.barrier("inspo_atomic_save_done")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def link_last(target: Path, link: Path) -> None:
    """Point the symlink ``link`` at ``target`` (relative) by an atomic rename over the old link (or a copy)."""
    tmp = partial_path(link)
    _remove(tmp)
    try:
        os.symlink(os.path.relpath(target, link.parent), tmp)
    except OSError:  # a file system without symlinks: an atomically renamed copy instead
        _remove(tmp)
        (shutil.copytree if target.is_dir() else shutil.copy2)(target, tmp)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


class ResumableCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with atomic writes, an atomically replaced ``last.ckpt`` link and early checks.

    Same arguments as ``ModelCheckpoint`` (``every_n_train_steps``, ``save_top_k``, ``dirpath``, ...);
    ``save_last`` defaults to True. ``last.ckpt`` is a symlink to the newest checkpoint; the checkpoint it replaces
    is deleted only after the link points to the new one. With no ``dirpath`` the checkpoints go to
    ``<run version>/checkpoints`` and ``--ckpt_path last`` takes the newest ``last.ckpt`` of all versions of the
    run (a resumed run writes a new version).
    """

    def __init__(self, *args: Any, save_last: bool | None = True, **kwargs: Any) -> None:
        super().__init__(*args, save_last=save_last, **kwargs)
        self._dirpath_given = self.dirpath is not None
        self._pending_removal: list[str] = []
        self._last_only: str | None = None  # a checkpoint saved only for last.ckpt (not a top-k one)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            check_writable(Path(self.dirpath), trainer.global_rank)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        check_free_space(Path(self.dirpath), pl_module)

    @override
    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        atomic_save(trainer, filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)

    @override
    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self.save_last:
            link = Path(self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST))
            if not (self._last_checkpoint_saved and self._last_global_step_saved == trainer.global_step
                    and Path(self._last_checkpoint_saved) != link):
                path = self.format_checkpoint_name(monitor_candidates)
                self._save_checkpoint(trainer, path)
                if self._last_only and self._last_only != path:
                    self._pending_removal.append(self._last_only)
                self._last_only = path
            if trainer.is_global_zero:
                link_last(Path(self._last_checkpoint_saved), link)
            trainer.strategy.barrier("inspo_link_last")
            self.last_model_path = str(link)
        for path in self._pending_removal:
            if path != self._last_checkpoint_saved:
                super()._remove_checkpoint(trainer, path)
        self._pending_removal = []

    def save_now(self, trainer: Trainer) -> str:
        """Save a checkpoint of the current step and point ``last.ckpt`` at it (Slurm requeue); returns its path.

        Needs ``save_last`` (the default): a requeued job resumes from ``last``.
        """
        if not self.save_last:
            path = self.format_checkpoint_name(self._monitor_candidates(trainer))
            self._save_checkpoint(trainer, path)
            return path
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return str(self._last_checkpoint_saved)

    @override
    def _remove_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        if self.save_last:
            self._pending_removal.append(filepath)  # deleted once last.ckpt points past it
        else:
            super()._remove_checkpoint(trainer, filepath)

    @override
    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        found = super()._find_last_checkpoints(trainer)
        if not self._dirpath_given and trainer.loggers:
            logger = trainer.loggers[0]
            root = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name or "")
            found |= {os.path.normpath(p) for p in root.glob("*/checkpoints/last.ckpt") if p.exists()}
        return found


def check_writable(folder: Path, rank: int = 0) -> None:
    """Raise a :class:`ConfigError` unless ``folder`` can be created and written (a probe file is written)."""
    probe = folder / f"{PARTIAL}probe-{rank}-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"\0" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as err:
        with_reason = "is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "is not writable"
        raise ConfigError(f"checkpoint directory {folder} {with_reason} ({err.strerror or err}); set "
                          "--checkpoint.dirpath to a writable folder with free space (or "
                          "--trainer.enable_checkpointing false)") from None


def checkpoint_bytes(pl_module: LightningModule) -> int:
    """About the size of one checkpoint: the saved weights plus AdamW's two moments of every trained weight."""
    policy = getattr(pl_module, "policy", None) or pl_module
    total = 0
    for p in policy.parameters():
        size = p.numel() * p.element_size()
        total += 3 * size if p.requires_grad else 0
    return total


def check_free_space(folder: Path, pl_module: LightningModule) -> None:
    """Raise a :class:`ConfigError` if ``folder``'s file system has no room for one more checkpoint."""
    needed = checkpoint_bytes(pl_module)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ConfigError(f"checkpoint directory {folder} is full: {free / 2**20:.1f} MiB free, a checkpoint of this "
                          f"model needs about {needed / 2**20:.1f} MiB (weights and optimizer state); free space or "
                          "set --checkpoint.dirpath elsewhere")


# ---------------------------------------------------------------- Slurm
class SlurmRequeue(Callback):
    """Slurm preemption: on the requeue signal, save at the next optimizer-step boundary, requeue the job, stop.

    Active when Lightning runs under its SLURMEnvironment with ``auto_requeue`` (its default under ``srun``). The
    signal handler only sets a flag; the save happens between two optimizer steps (all ranks agree on the step),
    through :class:`ResumableCheckpoint` when there is one (so ``last.ckpt`` is the preemption checkpoint), else to
    Lightning's ``hpc_ckpt_N.ckpt`` in the root folder, which Lightning resumes by itself. This handler replaces
    Lightning's own, which saves inside the signal handler, in the middle of a step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.requeued = False
        self._signalled = False
        self._signum: int | None = None
        self._previous: Any = None
        self._step_at_start = -1

    def _environment(self, trainer: Trainer) -> SLURMEnvironment | None:
        environment = trainer._accelerator_connector.cluster_environment
        return environment if isinstance(environment, SLURMEnvironment) and environment.auto_requeue else None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        environment = self._environment(trainer)
        if stage != "fit" or environment is None or sys.platform == "win32":
            return
        self._signum = int(environment.requeue_signal or signal.SIGUSR1)
        # Installed before Lightning registers its handlers: Lightning then leaves this signal to us.
        self._previous = signal.signal(self._signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signalled = True

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._signum is not None:
            signal.signal(self._signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._signum = None

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_at_start = trainer.global_step

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._signum is None or self.requeued or trainer.global_step == self._step_at_start:
            return  # not under Slurm, already done, or inside a gradient-accumulation window
        signalled = self._signalled
        if trainer.world_size > 1:
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if not signalled:
            return
        log.info("inspo: Slurm requeue signal: saving at step %d", trainer.global_step)
        checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ResumableCheckpoint)]
        if checkpoints:
            path = checkpoints[0].save_now(trainer)
        else:
            path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
            atomic_save(trainer, path)
        if trainer.is_global_zero:
            requeue(path)
        self.requeued = True
        trainer.should_stop = True


def slurm_job_id() -> str:
    """The id ``scontrol requeue`` takes: ``ARRAYJOB_TASK`` for an array task, else ``SLURM_JOB_ID``."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job):
        raise ConfigError(f"SLURM_JOB_ID {job!r} is not a Slurm job id")
    return job


def requeue(checkpoint: str) -> None:
    """``scontrol requeue JOB_ID``; logs the outcome (a failed requeue leaves the checkpoint for a manual restart)."""
    job = slurm_job_id()
    try:
        code = subprocess.call(["scontrol", "requeue", job])
    except OSError as err:
        code = f"{err}"
    if code == 0:
        log.info("inspo: saved %s and requeued Slurm job %s", checkpoint, job)
    else:
        log.warning("inspo: saved %s but `scontrol requeue %s` failed (%s): resubmit with --ckpt_path last",
                    checkpoint, job, code)

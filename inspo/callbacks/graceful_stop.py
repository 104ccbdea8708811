"""Stopping on a signal without losing work: save at the next optimizer-step boundary, exit 128 + signal number.

========  =====================================================================================================
signal    what ``inspo fit`` does
========  =====================================================================================================
SIGTERM   (Kubernetes, most schedulers, ``kill``, Slurm at preemption) saves a checkpoint after the current
          optimizer step, does not export, exits with 143. Under Slurm it also runs ``scontrol requeue``.
SIGINT    (Ctrl+C) the same, exit status 130, never requeued. A second Ctrl+C stops at once, saving nothing.
SIGUSR1   the same, exit status 138. Under Slurm (``#SBATCH --signal=SIGUSR1@90``, Lightning's requeue signal)
          also ``scontrol requeue``: the requeued job resumes from that checkpoint by itself (``inspo.cli``).
SIGKILL   cannot be caught: the newest complete checkpoint stays (see ``inspo.checkpoints``).
========  =====================================================================================================

The handler only records the signal; the save happens between two optimizer steps (or right after a validation),
where every rank is at the same step: the ranks agree with one small all-reduce of the signal number, so a signal
that reached one process stops all of them at the same step. The checkpoint goes through
:class:`inspo.callbacks.ResumableCheckpoint` when there is one (``last.ckpt`` then points at it), else to
Lightning's ``hpc_ckpt_N.ckpt`` in ``trainer.default_root_dir``. A non-zero status matters: ``inspo fit ... &&
inspo eval ...`` must not go on to evaluate a model that was never written, and the scheduler must not record the
job as succeeded.

Lightning API used: ``trainer._accelerator_connector.cluster_environment`` (whether Slurm auto-requeue is on, and its
signal) and ``trainer._checkpoint_connector.hpc_save_path`` (the ``hpc_ckpt_N.ckpt`` name Lightning resumes from
under Slurm) are private; ``pyproject.toml`` pins ``lightning>=2.5,<2.7`` for them (tested with 2.6.6;
``tests/test_signals.py`` and ``tests/test_resume.py`` are what to run when raising the bound).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from inspo.callbacks.checkpoint import ResumableCheckpoint
from inspo.checkpoints import atomic_save
from inspo.signals import requeue

log = logging.getLogger("inspo")


class StoppedBySignal(SystemExit):
    """Raised on every rank once the checkpoint is saved; the process exits with ``128 + signum``.

    A ``SystemExit``, so Lightning runs its interrupt path (``on_exception`` hooks, loggers finalised) and nothing
    prints a traceback.
    """

    def __init__(self, signum: int, checkpoint: str | None) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.checkpoint = checkpoint


class GracefulStop(Callback):
    """Saves and stops on SIGTERM, SIGINT and (under Slurm) the requeue signal; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.requeue_signal: int | None = None
        self.stopped_by: int | None = None
        self._received = 0  # the signal number, 0 while none arrived
        self._previous: dict[int, Any] = {}
        self._step_at_start = -1

    # ---------------------------------------------------------------- handlers
    def _signals(self) -> list[int]:
        if sys.platform == "win32":
            return []
        return list(dict.fromkeys([signal.SIGTERM, signal.SIGINT, self.requeue_signal or signal.SIGUSR1]))

    def _install(self) -> None:
        """Take the signals over (again: Lightning registers its own SIGTERM handler after ``setup``)."""
        for signum in self._signals():
            current = signal.getsignal(signum)
            if current != self._on_signal:
                self._previous.setdefault(signum, current)
                signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._received:  # a second signal: stop at once, as if inspo had no handler
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self._received = signum
        name = signal.Signals(signum).name
        # os.write, not logging: this runs between two bytecodes of whatever the main thread was doing
        os.write(2, f"inspo: {name} received: saving a checkpoint after the current optimizer step "
                    f"(send {name} again to stop at once, without saving)\n".encode())

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    # ---------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            # Installed before Lightning registers its handlers: Lightning then leaves this signal to us.
            self.requeue_signal = int(environment.requeue_signal or signal.SIGUSR1)
        self._install()

    @override
    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install()

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore()  # Lightning then restores the handlers it found, which may be ours: see restored_signals

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_at_start = trainer.global_step

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step != self._step_at_start:  # not inside a gradient-accumulation window
            self._maybe_stop(trainer)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._maybe_stop(trainer)

    # ---------------------------------------------------------------- the stop
    def agreed_signal(self, trainer: Trainer) -> int:
        """The signal any rank received (the largest number if several), the same on every rank; 0 for none."""
        if trainer.world_size == 1:
            return self._received
        mine = torch.tensor([float(self._received)], device=trainer.strategy.root_device)
        return int(trainer.strategy.reduce(mine, reduce_op="max").item())

    def _maybe_stop(self, trainer: Trainer) -> None:
        signum = self.agreed_signal(trainer)
        if not signum:
            return
        self.stopped_by = signum
        name = signal.Signals(signum).name
        checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ResumableCheckpoint)]
        if checkpoints:
            path = checkpoints[0].save_now(trainer)
        else:  # --trainer.enable_checkpointing false: Lightning's own preemption file, which it resumes under Slurm
            path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
            atomic_save(trainer, path)
        if trainer.is_global_zero:
            log.warning("inspo: stopped by %s at step %d; saved %s (not exported); resume: the same command with "
                        "--ckpt_path last (or --ckpt_path %s)", name, trainer.global_step, path, path)
            if signum == self.requeue_signal or (signum == signal.SIGTERM and self.requeue_signal):
                requeue(path)
        raise StoppedBySignal(signum, path)

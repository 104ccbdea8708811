"""Atomic checkpoints: Lightning's ModelCheckpoint that never leaves a partial file under a checkpoint name.

:class:`ResumableCheckpoint` (``--checkpoint.*``) writes every checkpoint under a temporary name and renames it
(:func:`inspo.checkpoints.atomic_save`), then points ``last.ckpt`` (a symlink, replaced atomically) at it. ``last`` is
searched in all versions of the run, and the checkpoint folder is checked (writable, room for a checkpoint) before
the first training step. Which checkpoint a resume trusts is :mod:`inspo.checkpoints`'s business.

Lightning API used: this class overrides *private* methods of ``ModelCheckpoint`` (``_save_checkpoint``,
``_save_last_checkpoint``, ``_remove_checkpoint``, ``_find_last_checkpoints``) and reads its private state
(``_last_global_step_saved``, ``_last_checkpoint_saved``, ``_monitor_candidates``) and calls
``_get_metric_interpolated_filepath_name`` (a free ``-vN`` name): they are where the write, the ``last`` link and the
deletion of replaced checkpoints happen, and no public hook reaches them. Private methods change without notice
between minor releases, so ``pyproject.toml`` pins ``lightning>=2.5,<2.7`` (tested with 2.6.6;
``tests/test_resume.py`` and ``tests/test_checkpoints.py`` are what to run when raising the bound).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from inspo.checkpoints import atomic_save, check_free_space, check_writable, link_last
from inspo.errors import ConfigError
from inspo.run_folder import CHECKPOINTS, LAST, versions_dir


class ResumableCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with atomic writes, an atomically replaced ``last.ckpt`` link and early checks.

    Same arguments as ``ModelCheckpoint`` (``every_n_train_steps``, ``save_top_k``, ``dirpath``, ...);
    ``save_last`` defaults to True. ``last.ckpt`` is a symlink to the newest checkpoint; the checkpoint it replaces
    is deleted only after the link points to the new one. With no ``dirpath`` the checkpoints go to
    ``<run version>/checkpoints`` and ``--ckpt_path last`` takes the newest ``last.ckpt`` of all versions of the
    run (a resumed run writes a new version).
    """

    def __init__(self, *args: Any, save_last: bool | None = True, **kwargs: Any) -> None:
        try:
            super().__init__(*args, save_last=save_last, **kwargs)
        except MisconfigurationException as err:  # ModelCheckpoint's checks of its arguments (a traceback)
            raise ConfigError(f"checkpoint: {err}") from None
        self.dirpath_given = self.dirpath is not None
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
                # ``-v1``, ``-v2``, ... as for top-k checkpoints: never over another run's checkpoint in a shared dirpath
                path = self._get_metric_interpolated_filepath_name(monitor_candidates, trainer)
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
        if not self.dirpath_given and trainer.loggers:
            found |= {os.path.normpath(p) for p in versions_dir(trainer).glob(f"*/{CHECKPOINTS}/{LAST}") if p.exists()}
        return found

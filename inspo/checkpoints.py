"""Checkpoints: atomic writes, the ``last.ckpt`` link, early checks of the folder, and which checkpoint a resume trusts.

- :func:`atomic_save` writes a checkpoint under a temporary name and renames it, :func:`link_last` points
  ``last.ckpt`` (a symlink, replaced atomically) at it: a crash mid-write never leaves a corrupt checkpoint under a
  checkpoint name. :func:`check_writable` and :func:`check_free_space` check the checkpoint folder before the first
  training step. The callback that does all this is :class:`inspo.callbacks.ResumableCheckpoint`.
- :func:`checkpoint_problem` says why a checkpoint cannot be resumed from (missing, a dangling link, truncated,
  not a checkpoint of ``inspo fit``) without reading its weights: a ``.ckpt`` file is memory-mapped, a sharded
  folder's shard files are checked against its metadata.
- :func:`resolve_last` turns ``--ckpt_path last`` into a file: the newest *usable* checkpoint of the run. When the
  newest one is unusable it says so in one log line and takes the one before; with none usable it stops with one
  line. A resume that was asked for never silently starts from step 0 (Lightning's own ``last`` does, with a
  warning, when the link dangles).
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from inspo.errors import ConfigError
from inspo.hparams import plain
from inspo.run_folder import CHECKPOINTS, versions_dir

log = logging.getLogger("inspo")

PARTIAL = ".partial."
"""Prefix of checkpoints being written (never matched by ``last*.ckpt`` or Lightning's ``hpc_ckpt_N`` search)."""
KEYWORDS = ("last", "best", "hpc")
"""``--ckpt_path`` values that name no file: Lightning (``best``, ``hpc``) or :func:`resolve_last` pick one."""
READ_ERRORS = (RuntimeError, OSError, EOFError, ValueError, KeyError, AttributeError, TypeError, ImportError,
               pickle.UnpicklingError)
"""What torch raises for a file that is truncated, not a zip, or not a checkpoint."""
META = "meta.pt"
"""Everything but the tensors of a sharded (distributed-checkpoint) folder, written by rank 0."""


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

    A write that fails (disk full, read-only) removes the temporary file and raises a one-line :class:`ConfigError`.

    A sharded strategy writes a folder from every rank; rank 0 renames it once all ranks are done.
    """
    path = Path(path)
    tmp = partial_path(path)
    if trainer.is_global_zero:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)  # left over from a crash
    trainer.strategy.barrier("inspo_atomic_save_start")
    try:
        trainer.save_checkpoint(tmp, weights_only)
    except OSError as err:  # the disk filled up (or went read-only) during the run
        _remove(tmp)  # a partial checkpoint can be as big as the space that is missing
        raise ConfigError(f"cannot write checkpoint {path}: {err.strerror or err}; it was not saved (the partial file "
                          "is removed), the checkpoints saved before it are intact: free space (or set "
                          "--checkpoint.dirpath elsewhere) and resume with --ckpt_path last") from None
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


# ---------------------------------------------------------------- what a resume may trust
def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint without reading its weights: a ``.ckpt`` file memory-mapped, or a sharded folder's ``meta.pt``.

    Raises:
        Exception: whatever torch raises for an unreadable file (truncated zip, not a checkpoint, ...).
    """
    if path.is_dir():
        return torch.load(path / META, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be resumed from (one phrase), or None when it is complete and readable."""
    path = Path(path)
    if not path.exists():
        return f"it is a link to {os.readlink(path)}, which does not exist" if path.is_symlink() else "not found"
    if path.is_dir() and not (path / META).is_file():
        return f"a folder but not a sharded checkpoint of `inspo fit` (no {META} in it)"
    if path.is_file() and path.stat().st_size == 0:
        return "it is empty (0 bytes; a save that never finished?)"
    if path.is_file() and not _starts_as_zip(path):
        return "not a checkpoint (not a zip archive, the format torch.save and Lightning write)"
    try:
        meta = read_meta(path)
    except READ_ERRORS as err:  # any failure to read means "not usable"; the reason is shown, not a traceback
        return f"it cannot be read, it is truncated or not a checkpoint ({_first_line(err)})"
    if not isinstance(meta, dict) or "global_step" not in meta:
        return "not a Lightning checkpoint (no global_step in it)"
    if path.is_dir():
        return _missing_shards(path)
    if "state_dict" not in meta:
        return "it holds no weights (no state_dict)"
    return None


def _starts_as_zip(path: Path) -> bool:
    """Whether a file starts as a zip archive does (an unreadable one is left for torch.load to report)."""
    try:
        with path.open("rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return True


def _first_line(err: BaseException) -> str:
    """The first sentence of an error message (torch appends a paragraph of advice to its zip errors)."""
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(err).__name__


def _missing_shards(folder: Path) -> str | None:
    """Why a distributed-checkpoint folder is incomplete (a shard file missing or shorter than its metadata says)."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        storage = FileSystemReader(str(folder)).read_metadata().storage_data
    except READ_ERRORS as err:  # a missing or unreadable .metadata
        return f"its shard metadata cannot be read ({_first_line(err)})"
    for info in storage.values():
        shard = folder / info.relative_path
        if not shard.is_file() or shard.stat().st_size < info.offset + info.length:
            return f"shard {info.relative_path} is missing or truncated"
    return None


def checkpoint_folders(trainer: Trainer) -> list[Path]:
    """Where the run's checkpoints may be: each :class:`ResumableCheckpoint`'s folder (all versions of the run when
    it has no ``dirpath``) and ``default_root_dir`` (Lightning's ``hpc_ckpt_N.ckpt`` of a preempted run)."""
    from inspo.callbacks.checkpoint import ResumableCheckpoint  # here: that module imports this one

    folders: list[Path] = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ResumableCheckpoint) and callback.dirpath_given:
            folders.append(Path(callback.dirpath))
        elif isinstance(callback, ModelCheckpoint) and trainer.loggers:
            folders += sorted(versions_dir(trainer).glob(f"*/{CHECKPOINTS}"))
    folders.append(Path(trainer.default_root_dir))
    return list(dict.fromkeys(folders))


def checkpoint_candidates(folders: list[Path]) -> list[Path]:
    """Every ``*.ckpt`` file, link or sharded folder in ``folders`` (not ones being written), newest first.

    A link counts by its own time (it is replaced after its target is complete); a dangling one is kept, so that a
    resume can say what was wrong with it.
    """
    found: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            found += [p for p in folder.iterdir() if p.name.endswith(".ckpt") and not p.name.startswith(PARTIAL)]

    def when(path: Path) -> float:
        try:
            return path.lstat().st_mtime if path.is_symlink() else path.stat().st_mtime
        except OSError:
            return 0.0

    return sorted(dict.fromkeys(found), key=when, reverse=True)


def resolve_last(folders: list[Path], required: bool = True, announce: bool = True) -> str | None:
    """The newest usable checkpoint in ``folders`` for ``--ckpt_path last``.

    Args:
        folders: where to look (:func:`checkpoint_folders`).
        required: the user asked to resume: no checkpoint at all is an error. False (a requeued Slurm job resuming
            by itself): no checkpoint at all starts from scratch, with one log line.
        announce: log the fallback (rank 0 only, so that it is said once).

    Raises:
        ConfigError: every checkpoint found is unusable, or (``required``) there is none.
    """
    candidates = checkpoint_candidates(folders)
    where = ", ".join(str(f) for f in folders)
    problems: list[tuple[Path, str]] = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            if problems and announce:
                bad, why = problems[0]
                log.warning("inspo: resume: %s is unusable (%s); resuming from %s, the newest usable checkpoint",
                            bad, why, path)
            return str(path)
        problems.append((path, problem))
    if problems:
        bad, why = problems[0]
        raise ConfigError(f"cannot resume: no usable checkpoint in {where} (newest: {bad}: {why}); pass "
                          "--ckpt_path FILE, or start a new run without --ckpt_path")
    if required:
        raise ConfigError(f"--ckpt_path last: no checkpoint in {where}; check --trainer.default_root_dir (or "
                          "--checkpoint.dirpath), or start a new run without --ckpt_path")
    if announce:
        log.info("inspo: resume: no checkpoint in %s yet: starting from step 0", where)
    return None


def slurm_restart() -> int:
    """How many times Slurm has requeued this job (0 outside Slurm)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) if "SLURM_JOB_ID" in os.environ else 0
    except ValueError:
        return 0


def check_left_to_train(meta: dict[str, Any], trainer: Trainer, source: str) -> None:
    """Refuse to resume a fit from a checkpoint (its :func:`read_meta`) that already reached ``trainer.max_steps``
    or ``trainer.max_epochs``: Lightning would end at once and export the same weights again, as if it had trained.

    A Slurm requeue of a finished job is not an error: it logs one line and ends.
    """
    step = int(meta.get("global_step", 0))
    progress = meta.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    epochs = int(progress.get("processed", 0))  # counted before the end-of-epoch checkpoint is saved
    if trainer.max_steps not in (None, -1) and step >= trainer.max_steps:
        reached = f"trainer.max_steps={trainer.max_steps} (step {step})"
    elif trainer.max_epochs not in (None, -1) and epochs >= trainer.max_epochs:
        reached = f"trainer.max_epochs={trainer.max_epochs} ({epochs} epoch(s) done, step {step})"
    else:
        return
    message = (f"--ckpt_path {source}: that run already reached {reached}, so nothing is left to train; "
               "raise --trainer.max_epochs or --trainer.max_steps to train on")
    if slurm_restart() > 0:
        log.info("inspo: %s", message.split(", so")[0])
        return
    raise ConfigError(message)


def check_training_state(meta: dict[str, Any], source: str) -> None:
    """Refuse to resume a fit from a ``.ckpt`` file (its :func:`read_meta`) without optimizer and scheduler state
    (``--checkpoint.save_weights_only true``): Lightning stops on it with a KeyError traceback."""
    if "optimizer_states" not in meta and not Path(source).is_dir():
        raise ConfigError(f"--ckpt_path {source}: it holds the weights only (saved with "
                          "--checkpoint.save_weights_only true: no optimizer or scheduler state), so a fit cannot "
                          f"resume from it; `inspo export --ckpt {source} --out DIR` and start a new run from DIR")


DATA_UNCHECKED = ("loader.eval_batch_size", "loader.num_workers", "read.on_invalid", "read.min_valid_fraction")
"""Data settings that do not change which training pairs an epoch serves, or in which order."""


def check_same_data(meta: dict[str, Any], data_hparams: dict[str, Any], source: str) -> None:
    """Refuse to resume mid-epoch from a checkpoint (its :func:`read_meta`) whose data settings differ from this run's.

    The saved loader position is a count of batches: with another file, split, length limit, batch size or order
    the rest of the epoch would skip pairs never trained on and repeat others. At an epoch boundary nothing is
    skipped, and the data may change.
    """
    saved, position = meta.get("datamodule_hyper_parameters"), _mid_epoch(meta)
    if not saved or position is None:
        return
    def flat(hparams: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name, value in plain(dict(hparams)).items():
            out.update({f"{name}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {name: value})
        return out

    before, now = flat(saved), flat(data_hparams)
    for key, got in now.items():
        if key in before and key not in DATA_UNCHECKED and before[key] != got:
            raise ConfigError(f"cannot resume from {source}: it stopped mid-epoch (epoch {position.get('epoch')}, after "
                              f"{position['batches']} batches) with data.{key}={before[key]!r}, this run has "
                              f"data.{key}={got!r}, so the rest of the epoch would skip or repeat pairs; resume with "
                              "the data settings it was trained with, or start a new run without --ckpt_path")


def check_same_pairs(meta: dict[str, Any], saved: str | None, fingerprint: Callable[[], str], source: str) -> None:
    """Refuse to resume mid-epoch when the training pairs differ from those the checkpoint trained on, with the same
    settings: the data file was edited since (or the code that reads or splits it changed). ``saved``: the
    checkpoint's fingerprint (None in checkpoints that predate it: not checked); ``fingerprint``: this run's, read
    only when needed."""
    position = _mid_epoch(meta)
    if position is None or saved is None or fingerprint() == saved:
        return
    raise ConfigError(f"cannot resume from {source}: it stopped mid-epoch (epoch {position.get('epoch')}, after "
                      f"{position['batches']} batches), and the training pairs are not the ones it was trained on "
                      "(the data file changed since, or how it is read or split), so the rest of the epoch would skip "
                      "or repeat pairs; restore the data it was trained with, or start a new run without --ckpt_path")


def _mid_epoch(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The saved training-loader position (epoch, batches) of a checkpoint that stopped mid-epoch, else None."""
    states = meta.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or [{}]
    position = states[0] if isinstance(states[0], dict) else {}
    return position if position.get("batches") else None

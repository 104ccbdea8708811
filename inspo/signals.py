"""Slurm requeue and signal-handler helpers of :class:`inspo.callbacks.GracefulStop` (which says what each signal
does): the job id ``scontrol requeue`` takes, the requeue itself, and putting back the handlers an in-process
command found.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator

from inspo.errors import ConfigError

log = logging.getLogger("inspo")


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
        log.info("inspo: requeued Slurm job %s; it resumes from %s", job, checkpoint)
    else:
        log.warning("inspo: `scontrol requeue %s` failed (%s); the checkpoint %s stays: resubmit with --ckpt_path "
                    "last", job, code, checkpoint)


@contextlib.contextmanager
def restored_signals() -> Iterator[None]:
    """Put back, after the block, the SIGTERM, SIGINT and SIGUSR1 handlers found before it.

    :class:`inspo.callbacks.GracefulStop` restores them at teardown, but after an exception Lightning re-installs the
    handlers it found when it registered its own, and those can be GracefulStop's: an ``inspo`` command run
    in-process (tests, notebooks) must not leave Ctrl+C saving checkpoints of a finished run.
    """
    names = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])
    main = threading.current_thread() is threading.main_thread()
    saved = {signum: signal.getsignal(signum) for signum in names} if main else {}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

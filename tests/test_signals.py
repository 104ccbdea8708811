"""Signals from outside, sent with a real ``kill``: SIGTERM and SIGINT save at the next optimizer-step boundary,
do not export, exit with 128 + the signal number, and SIGTERM requeues under Slurm; under DDP and FSDP2 (2 processes
on CPU, gloo) a signal sent to the main process stops every rank at the same step.

The runs are ``configs/tiny.yaml`` in subprocesses (``tests.fit_runs.run_fit``); :class:`PauseAt` holds rank 0
after a given step until the test has sent the signal, so the step it stops at is known.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from lightning.pytorch import Callback

from inspo.checkpoints import checkpoint_problem
from tests.fit_runs import fit_command, last_target, losses, run_fit, slurm_env, tail
from tests.helpers import ROOT

HERE = "tests.test_signals"
STRATEGY = ROOT / "configs" / "strategy"


class PauseAt(Callback):
    """After optimizer step ``step`` (rank 0 only) writes ``<folder>/paused`` with its pid and waits, up to a
    minute, for the test to write ``<folder>/sent`` (after it has sent a signal with a real ``kill``)."""

    def __init__(self, step: int, folder: str) -> None:
        self.step, self.folder = step, Path(folder)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        (self.folder / f"pid-{trainer.global_rank}").write_text(str(os.getpid()))
        if trainer.global_step != self.step or trainer.global_rank != 0:
            return
        (self.folder / "paused").write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while not (self.folder / "sent").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def fit_and_kill(root: Path, signum: int, step: int, *args: str, env: dict[str, str] | None = None,
                 devices: int = 1) -> subprocess.CompletedProcess:
    """Start a fit, and once rank 0 has finished optimizer step ``step``, ``kill -SIGNUM`` its process (the main
    one: under DDP the other ranks only learn of it from the ranks' agreement)."""
    pause = {"class_path": f"{HERE}.PauseAt", "init_args": {"step": step, "folder": str(root)}}
    command, full_env = fit_command(root, *args, callbacks=[pause], env=env, devices=devices)
    with subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        deadline = time.monotonic() + 600
        while not (root / "paused").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if process.poll() is None:
            subprocess.run(["kill", f"-{signal.Signals(signum).name.removeprefix('SIG')}", str(process.pid)],
                           check=True)
            (root / "sent").write_text("")
        out, err = process.communicate(timeout=600)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_sigterm_saves_exits_143_requeues_under_slurm_and_resumes(tmp_path):
    """``kill -TERM`` after step 3, as Kubernetes or Slurm sends it: the run saves at that step boundary, does not
    export, exits 143 and (under Slurm) requeues; it used to exit 0 having saved nothing. ``--ckpt_path last`` then
    trains steps 4-8. (That such a save resumes exactly is shown for SIGUSR1 in tests/test_resume.py: the same
    save.)"""
    slurm, calls = slurm_env(tmp_path)
    root = tmp_path / "run"
    stopped = fit_and_kill(root, signal.SIGTERM, 3, "--model.export_dir", "auto", env=slurm)
    assert stopped.returncode == 128 + signal.SIGTERM, tail(stopped)
    assert sorted(losses(root)) == [1, 2, 3]
    assert last_target(root).name == "epoch=0-step=3.ckpt"
    assert not list(root.glob("inspo/version_0/hf_model"))
    assert calls.read_text().split() == ["requeue", "4242"]
    assert "inspo: stopped by SIGTERM at step 3; saved " in stopped.stderr and "Traceback" not in stopped.stderr
    for path in root.glob("losses-*.jsonl"):
        path.unlink()
    resumed = run_fit(root, "--ckpt_path", "last")
    assert resumed.returncode == 0, tail(resumed)
    assert sorted(losses(root)) == [4, 5, 6, 7, 8]
    assert "inspo: fit done: 8 optimizer steps (resumed at step 3: 5 steps, " in resumed.stdout


def test_sigint_saves_and_exits_130_without_requeue(tmp_path):
    """Ctrl+C (a real SIGINT) saves at the step boundary and exits 130; even under Slurm it never requeues."""
    slurm, calls = slurm_env(tmp_path)
    root = tmp_path / "run"
    stopped = fit_and_kill(root, signal.SIGINT, 2, env=slurm)
    assert stopped.returncode == 128 + signal.SIGINT, tail(stopped)
    assert sorted(losses(root)) == [1, 2] and last_target(root).name == "epoch=0-step=2.ckpt"
    assert not calls.exists()
    assert "KeyboardInterrupt" not in stopped.stderr and "Traceback" not in stopped.stderr


def _gone(pid: int, seconds: float = 60) -> bool:
    """Whether process ``pid`` has exited (or is a zombie waiting to be reaped) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("strategy", ["ddp.yaml", "fsdp2.yaml"])
def test_sigterm_to_the_main_process_stops_every_rank_at_the_same_step(tmp_path, strategy):
    """Two processes; only the main one (rank 0) is killed. Both ranks save the step-2 checkpoint together (one
    shard per rank under FSDP2), stop after step 2, and exit: rank 1 learns of the signal from the ranks'
    agreement, not from a signal of its own."""
    root = tmp_path / "run"
    stopped = fit_and_kill(root, signal.SIGTERM, 2, "--config", str(STRATEGY / strategy),
                           "--data.loader.batch_size", "2", devices=2)
    assert stopped.returncode == 128 + signal.SIGTERM, tail(stopped)
    for rank in (0, 1):
        steps = [int(line.split('"step": ')[1].split(",")[0])
                 for line in (root / f"losses-{rank}.jsonl").read_text().splitlines()]
        assert steps == [1, 2], (rank, steps)
    assert _gone(int((root / "pid-1").read_text()))
    target = last_target(root)
    assert target.name == "epoch=0-step=2.ckpt" and checkpoint_problem(target) is None
    if strategy == "fsdp2.yaml":
        assert target.is_dir() and len(list(target.glob("*.distcp"))) == 2

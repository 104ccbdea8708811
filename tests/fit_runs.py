"""``inspo fit`` of configs/tiny.yaml in subprocesses, losses recorded per step: the runs of tests/test_resume.py,
tests/test_signals.py and tests/test_distributed.py (Lightning is imported here, not in tests/helpers.py)."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import yaml
from lightning.pytorch import Callback

from tests.helpers import ROOT, TINY_YAML


class RecordLosses(Callback):
    """Appends ``{"step", "rank", "loss"}`` (the loss at full float precision) to ``<folder>/losses-<rank>.jsonl``.

    Loaded into the ``inspo fit`` subprocesses by class path (``tests.fit_runs.RecordLosses``, PYTHONPATH=ROOT)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        line = {"step": trainer.global_step, "rank": trainer.global_rank, "loss": float(outputs["loss"])}
        with open(self.folder / f"losses-{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")


QUICK = ["--samples.every_n_steps", "0", "--trainer.limit_val_batches", "0", "--model.export_dir", "null",
         "--data.loader.batch_size", "2", "--trainer.enable_progress_bar", "false"]
"""Options of the subprocess fits: 1 process, batch 2, 8 steps, no validation, no samples, no export."""
DISTRIBUTED_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "GROUP_RANK", "RANK", "WORLD_SIZE",
                         "LOCAL_WORLD_SIZE")


def fit_command(root: Path, *args: str, callbacks: list[dict] | None = None, env: dict[str, str] | None = None,
                devices: int = 1) -> tuple[list[str], dict[str, str]]:
    """``python -m inspo fit`` of configs/tiny.yaml writing under ``root`` (losses recorded in ``root``)."""
    root.mkdir(parents=True, exist_ok=True)
    extra = root / f"callbacks-{len(list(root.glob('callbacks-*.yaml')))}.yaml"
    record = {"class_path": f"{__name__}.RecordLosses", "init_args": {"folder": str(root)}}
    extra.write_text(yaml.safe_dump({"trainer": {"callbacks": [record, *(callbacks or [])]}}))
    command = [sys.executable, "-m", "inspo", "fit", "--config", str(TINY_YAML), "--config", str(extra),
               "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
               "--trainer.devices", str(devices), *QUICK, *args]
    # No launcher variables: inherited, LOCAL_RANK would make rank 0 wait for ranks it was told someone else starts.
    inherited = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARIABLES}
    return command, {**inherited, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}


def run_fit(root: Path, *args: str, callbacks: list[dict] | None = None, env: dict[str, str] | None = None,
            devices: int = 1) -> subprocess.CompletedProcess:
    """Run :func:`fit_command` to its end (at most 10 minutes)."""
    command, full_env = fit_command(root, *args, callbacks=callbacks, env=env, devices=devices)
    return subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600, check=False)


def run_predict(root: Path, *args: str) -> list[dict]:
    """``python -m inspo predict`` of configs/tiny.yaml writing under ``root``: the lines of the ``pair_scores*.jsonl``
    it wrote (one file, or one per rank), after checking that it succeeded and said where they went."""
    command = [sys.executable, "-m", "inspo", "predict", "--config", str(TINY_YAML), "--trainer.default_root_dir",
               str(root), "--trainer.logger.init_args.save_dir", str(root), "--trainer.enable_progress_bar", "false",
               *args]
    before = set(root.rglob("pair_scores*.jsonl"))
    result = subprocess.run(command, cwd=ROOT, env=fit_command(root)[1], capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    paths = sorted(set(root.rglob("pair_scores*.jsonl")) - before)
    assert paths and all(f"to {path}" in result.stderr for path in paths), result.stderr[-3000:]
    assert "dirpath has changed" not in result.stderr  # Lightning's warning on a checkpoint of another run folder
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


def run_validate(root: Path, *args: str, devices: int = 1) -> dict[str, float]:
    """``python -m inspo validate`` of configs/tiny.yaml on its whole validation split, writing under ``root``: the
    ``val/*`` values of the ``metrics.csv`` it wrote."""
    command, env = fit_command(root, "--trainer.limit_val_batches", "1.0", *args, devices=devices)
    command[command.index("fit")] = "validate"
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, tail(result)
    (path,) = root.glob("inspo/version_*/metrics.csv")
    (row,) = [row for row in csv.DictReader(path.open()) if row.get("val/loss")]
    return {key: float(value) for key, value in row.items() if key.startswith("val/") and value}


def slurm_env(tmp_path: Path, job: str = "4242") -> tuple[dict[str, str], Path]:
    """SLURM_* of a one-task job and a stub ``scontrol`` on PATH that records its arguments (in the returned file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "scontrol-calls.txt"
    stub = bin_dir / "scontrol"
    stub.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return {"SLURM_JOB_ID": job, "SLURM_JOB_NAME": "inspo-test", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
            "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
            "SLURM_NODELIST": "localhost", "PATH": f"{bin_dir}:{os.environ['PATH']}"}, calls


def losses(root: Path) -> dict[int, float]:
    """Step (1-based optimizer step that the loss led to) -> global-batch loss (mean over ranks); later lines win."""
    per_step: dict[int, dict[int, float]] = {}
    for path in root.glob("losses-*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            per_step.setdefault(row["step"], {})[row["rank"]] = row["loss"]
    return {step: sum(ranks.values()) / len(ranks) for step, ranks in sorted(per_step.items())}


def tail(result: subprocess.CompletedProcess) -> str:
    """The last 3000 characters a subprocess printed (for assertion messages)."""
    return (result.stdout + result.stderr)[-3000:]


def last_target(root: Path) -> Path:
    """The checkpoint that the run's ``last.ckpt`` link points at."""
    (link,) = root.glob("inspo/version_*/checkpoints/last.ckpt")
    return link.resolve()

"""Faults and resumes: SIGKILL mid-epoch (even mid-write) and ``--ckpt_path last`` or ``--ckpt_path FILE`` reproduce
the uninterrupted run's later losses exactly; a simulated Slurm job saves and requeues on SIGUSR1 and its next
allocation resumes on its own; a dangling ``last.ckpt`` falls back to the newest usable checkpoint with one log line;
a truncated one, a missing one, a changed model or loss config on resume and an unusable checkpoint folder stop with
one clear line (and write nothing). Signals sent from outside: tests/test_signals.py.

The runs are ``configs/tiny.yaml`` (1 process, batch 2, 8 steps, no validation, no samples, no export) in
subprocesses; helper callbacks defined here are loaded into them by class path."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback

from inspo.cli import main
from inspo.data.datamodule import bundled_dataset
from inspo.errors import ConfigError
from tests.fit_runs import QUICK, last_target, losses, run_fit, slurm_env, tail
from tests.helpers import TINY_YAML

HERE = "tests.test_resume"  # the subprocesses import the helper callbacks from here (PYTHONPATH=repo root)


# ---------------------------------------------------------------- callbacks run inside the subprocesses
class SignalAt(Callback):
    """Sends ``signum`` to this process after optimizer step ``step``."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class CrashWhileSaving(Callback):
    """At step ``step`` the checkpoint writer puts half a file where it was asked to write, then SIGKILLs itself."""

    def __init__(self, step: int) -> None:
        self.step = step

    def fail(self, filepath: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def setup(self, trainer, pl_module, stage) -> None:
        strategy = trainer.strategy
        save = strategy.save_checkpoint

        def faulty_save(checkpoint: dict, filepath: Any, *args: Any, **kwargs: Any) -> None:
            if trainer.global_step == self.step:
                Path(filepath).write_bytes(b"PK\x03\x04" + b"\0" * 1000)  # the start of a zip, then the fault
                self.fail(filepath)
            save(checkpoint, filepath, *args, **kwargs)

        strategy.save_checkpoint = faulty_save


class DiskFullAt(CrashWhileSaving):
    """At step ``step`` the checkpoint writer has written the start of a file when the disk fills up (ENOSPC)."""

    def fail(self, filepath: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict[int, float]:
    """The uninterrupted run: 8 steps, checkpoints every 2."""
    root = tmp_path_factory.mktemp("baseline")
    result = run_fit(root, "--checkpoint.every_n_train_steps", "2")
    assert result.returncode == 0, tail(result)
    out = losses(root)
    assert sorted(out) == list(range(1, 9)) and len(set(out.values())) == 8
    return out


@pytest.fixture(scope="module")
def crashed(tmp_path_factory) -> Path:
    """A run SIGKILLed while writing its step-6 checkpoint (after the step-4 one)."""
    root = tmp_path_factory.mktemp("crashed")
    crash = {"class_path": f"{HERE}.CrashWhileSaving", "init_args": {"step": 6}}
    result = run_fit(root, "--checkpoint.every_n_train_steps", "2", callbacks=[crash])
    assert result.returncode == -signal.SIGKILL, tail(result)
    return root


# ---------------------------------------------------------------- tests
def test_sigkill_mid_write_leaves_a_good_last_and_resume_is_exact(crashed, baseline):
    """The crash left no corrupt checkpoint under a checkpoint name; ``last`` is step 4; ``--ckpt_path last``
    continues at the same batch with the same optimizer, scheduler and RNG state: steps 5-8 equal the baseline."""
    assert sorted(losses(crashed)) == list(range(1, 7))
    target = last_target(crashed)
    assert target.name == "epoch=0-step=4.ckpt"
    for path in crashed.glob("inspo/version_0/checkpoints/*.ckpt"):  # every file under a checkpoint name loads
        assert torch.load(path, map_location="cpu", weights_only=False)["global_step"] in (2, 4)
    assert list(crashed.glob("inspo/version_0/checkpoints/.partial.*"))  # the half-written file kept its temp name
    for path in crashed.glob("losses-*.jsonl"):
        path.unlink()
    result = run_fit(crashed, "--checkpoint.every_n_train_steps", "2", "--ckpt_path", "last")
    assert result.returncode == 0, tail(result)
    resumed = losses(crashed)
    assert sorted(resumed) == [5, 6, 7, 8]
    assert resumed == {step: baseline[step] for step in (5, 6, 7, 8)}  # exactly, not within a tolerance


def test_slurm_sigusr1_saves_requeues_and_the_next_allocation_resumes(tmp_path, baseline):
    """Simulated Slurm job 4242 (SLURM_* set, a stub ``scontrol`` on PATH): SIGUSR1 after step 3 saves at the step
    boundary, calls ``scontrol requeue 4242`` and exits 138 (128 + SIGUSR1: not a success); the requeued job
    (SLURM_RESTART_COUNT=1) resumes by itself."""
    slurm, calls = slurm_env(tmp_path)
    root = tmp_path / "run"
    signal_at = {"class_path": f"{HERE}.SignalAt", "init_args": {"step": 3, "signum": int(signal.SIGUSR1)}}
    first = run_fit(root, callbacks=[signal_at], env=slurm)
    assert first.returncode == 128 + signal.SIGUSR1, tail(first)
    assert calls.read_text().split() == ["requeue", "4242"]
    assert sorted(losses(root)) == [1, 2, 3]  # stopped right after saving
    assert last_target(root).name == "epoch=0-step=3.ckpt"
    assert not list(root.glob("inspo/version_0/hf_model"))  # a preempted run does not export
    for path in root.glob("losses-*.jsonl"):
        path.unlink()
    second = run_fit(root, env={**slurm, "SLURM_RESTART_COUNT": "1"})
    assert second.returncode == 0, tail(second)
    assert losses(root) == {step: baseline[step] for step in range(4, 9)}
    assert calls.read_text().split() == ["requeue", "4242"]  # no second requeue


def _fit_in_process(root: Path, *args: str) -> None:
    main(["fit", "--config", str(TINY_YAML), "--trainer.default_root_dir", str(root),
          "--trainer.logger.init_args.save_dir", str(root), *QUICK, *args])


SMALLER = json.dumps({"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                      "num_key_value_heads": 2})


@pytest.mark.parametrize(("option", "value", "key"), [("--model.loss", "ipo", "model.loss"),
                                                      ("--model.random_init", SMALLER, "model.random_init"),
                                                      ("--model.optim.lr", "0.01", "model.optim.lr")])
def test_resume_with_a_changed_model_or_loss_stops(crashed, capsys, option, value, key):
    """Also a changed optimizer setting: the resume restored the checkpoint's learning rates, betas and schedule,
    so ``--model.optim.lr 0.01`` was silently ignored."""
    with pytest.raises(SystemExit) as exit_info:
        _fit_in_process(crashed, "--ckpt_path", "last", option, value)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(err) == 1 and err[0].startswith("inspo: error: cannot resume from ") and f"{key}=" in err[0], err


def _no_training_step(root: Path) -> bool:
    """No metrics file holds a training loss."""
    import csv

    for path in root.glob("inspo/version_*/metrics.csv"):
        with open(path, newline="") as handle:
            if any(row.get("train/loss_step") for row in csv.DictReader(handle)):
                return False
    return True


def test_unwritable_checkpoint_dir_fails_before_training(tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only file system
        folder = Path("/sys/inspo-checkpoints")
    else:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
    with pytest.raises(SystemExit) as exit_info:
        _fit_in_process(tmp_path, "--checkpoint.dirpath", str(folder))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"inspo: error: checkpoint directory {folder} is not writable"), err
    assert _no_training_step(tmp_path)


def test_full_checkpoint_dir_fails_before_training(tmp_path, capsys, monkeypatch):
    import inspo.checkpoints

    class Usage:
        free = 1024 * 1024  # 1 MiB: the tiny model's checkpoint needs ~38 MiB

    monkeypatch.setattr(inspo.checkpoints.shutil, "disk_usage", lambda path: Usage())
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    with pytest.raises(SystemExit) as exit_info:
        _fit_in_process(tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert "is full: 1.0 MiB free, a checkpoint of this model needs about" in err[0], err
    assert _no_training_step(tmp_path)
    # A run stopped by an error (Lightning then re-installs the handlers it found: inspo's) leaves Ctrl+C as it was.
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers


def test_disk_full_while_saving_is_one_line_and_removes_the_partial_file(tmp_path):
    """A disk that fills up during the run: the step-4 save failed with a traceback and left its partial file (as
    big as a checkpoint) behind. Now one line, status 2, the partial file removed, ``last`` still the step-2 one."""
    full = {"class_path": f"{HERE}.DiskFullAt", "init_args": {"step": 4}}
    result = run_fit(tmp_path, "--checkpoint.every_n_train_steps", "2", callbacks=[full])
    assert result.returncode == 2, tail(result)
    target = tmp_path / "inspo/version_0/checkpoints/epoch=0-step=4.ckpt"
    assert result.stderr.strip().splitlines()[-1] == (
        f"inspo: error: cannot write checkpoint {target}: No space left on device; it was not saved (the partial "
        "file is removed), the checkpoints saved before it are intact: free space (or set --checkpoint.dirpath "
        "elsewhere) and resume with --ckpt_path last")
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("inspo/version_0/checkpoints/.partial.*"))
    assert last_target(tmp_path).name == "epoch=0-step=2.ckpt"


def test_a_second_run_into_the_same_dirpath_keeps_the_first_runs_checkpoint(tmp_path):
    """Two runs sharing ``--checkpoint.dirpath``, each stopped by SIGTERM after step 2: the second run's save went
    to the first one's ``epoch=0-step=2.ckpt`` and replaced it without a word. Now it takes ``-v1`` (as Lightning
    names top-k checkpoints) and ``last`` points at it."""
    shared = tmp_path / "checkpoints"
    stop = {"class_path": f"{HERE}.SignalAt", "init_args": {"step": 2, "signum": int(signal.SIGTERM)}}
    for run, lr in (("first", "1e-3"), ("second", "2e-3")):
        result = run_fit(tmp_path / run, "--checkpoint.dirpath", str(shared), "--model.optim.lr", lr, callbacks=[stop])
        assert result.returncode == 128 + signal.SIGTERM, tail(result)
    saved = {p.name: torch.load(p, map_location="cpu", weights_only=False)["hyper_parameters"]["optim"]["lr"]
             for p in shared.glob("epoch=*.ckpt")}
    assert saved == {"epoch=0-step=2.ckpt": 1e-3, "epoch=0-step=2-v1.ckpt": 2e-3}
    assert (shared / "last.ckpt").resolve().name == "epoch=0-step=2-v1.ckpt"


def test_loader_state_round_trip_serves_the_rest_of_the_epoch():
    """The loader's state (epoch, batches taken) restores the same epoch's remaining batches, in order."""
    from torch.utils.data import DistributedSampler

    from inspo.data.sampler import LengthBucketBatchSampler, ResumableDataLoader

    data = list(range(37))

    def loader() -> ResumableDataLoader:
        sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
        batches = LengthBucketBatchSampler(sampler, 4, lengths=[i % 7 for i in data], bucket_batches=2, seed=3)
        return ResumableDataLoader(data, batch_sampler=batches, collate_fn=list)

    first = loader()
    first.batch_sampler.set_epoch(2)
    full = list(first)
    iterator = iter(first)
    taken = [next(iterator) for _ in range(3)]
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": 3} and taken == full[:3]
    second = loader()
    second.load_state_dict(state)
    assert list(second) == full[3:]
    assert list(second) == full  # the skip applies once; the next pass is the whole epoch again


# ---------------------------------------------------------------- --ckpt_path FILE and an unusable last.ckpt
STEP4 = "inspo/version_0/checkpoints/epoch=0-step=4.ckpt"


def copy_crashed(crashed: Path, root: Path) -> None:
    """The crashed run as it was left (version_0 only: the SIGKILL test resumes it in place, as version_1)."""
    shutil.copytree(crashed / "inspo" / "version_0", root / "inspo" / "version_0", symlinks=True)
    for partial in root.glob("inspo/version_0/checkpoints/.partial.*"):
        partial.unlink()


def test_ckpt_path_file_resumes_exactly(crashed, baseline, tmp_path):
    """Any checkpoint file, not only the keyword ``last`` (it failed with "unknown option
    'model.loss.init_args.class'")."""
    root = tmp_path / "copy"
    copy_crashed(crashed, root)
    result = run_fit(root, "--ckpt_path", str(root / STEP4))
    assert result.returncode == 0, tail(result)
    assert losses(root) == {step: baseline[step] for step in (5, 6, 7, 8)}


def test_dangling_last_falls_back_to_the_newest_usable_checkpoint(crashed, baseline, tmp_path):
    """``last.ckpt`` pointing at a file that is gone: one log line says so, and the run resumes from step 4 (it
    used to start again from step 0 with exit status 0)."""
    root = tmp_path / "copy"
    copy_crashed(crashed, root)
    link = root / "inspo/version_0/checkpoints/last.ckpt"
    link.unlink()
    link.symlink_to("epoch=0-step=6.ckpt")
    result = run_fit(root, "--ckpt_path", "last")
    assert result.returncode == 0, tail(result)
    said = [line for line in result.stderr.splitlines() if line.startswith("inspo: resume:")]
    expected = (f"inspo: resume: {link} is unusable (it is a link to epoch=0-step=6.ckpt, which does not exist); "
                f"resuming from {link.parent / 'epoch=0-step=4.ckpt'}, the newest usable checkpoint")
    assert said == [expected]
    assert losses(root) == {step: baseline[step] for step in (5, 6, 7, 8)}


def _one_error_line(capsys, root: Path, *args: str) -> str:
    """Run a fit expected to stop with one error line before writing anything; return the error."""
    before = sorted(root.rglob("*")) if root.exists() else []
    with pytest.raises(SystemExit) as exit_info:
        _fit_in_process(root, *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("inspo: error: "), err
    assert (sorted(root.rglob("*")) if root.exists() else []) == before  # nothing written
    return err[0].removeprefix("inspo: error: ")


def test_truncated_checkpoint_is_one_line_never_a_fresh_start(crashed, tmp_path, capsys, monkeypatch):
    """The only checkpoint truncated (a torch zip traceback before): ``--ckpt_path FILE``, ``--ckpt_path last`` and
    a requeued Slurm job resuming by itself all stop with one line instead of training from step 0."""
    root = tmp_path / "copy"
    copy_crashed(crashed, root)
    target = last_target(root)
    target.write_bytes(target.read_bytes()[:100_000])
    error = _one_error_line(capsys, root, "--ckpt_path", str(target))
    assert error == (f"--ckpt_path {target}: it cannot be read, it is truncated or not a checkpoint (PytorchStreamReader"
                     " failed reading zip archive: failed finding central directory)")
    error = _one_error_line(capsys, root, "--ckpt_path", "last")
    assert error.startswith("cannot resume: no usable checkpoint in ") and ".ckpt: it cannot be read" in error
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert _one_error_line(capsys, root).startswith("cannot resume: no usable checkpoint in ")


def test_ckpt_path_last_with_no_checkpoint_stops_unless_slurm_resumes_by_itself(tmp_path, capsys, caplog,
                                                                                 monkeypatch):
    error = _one_error_line(capsys, tmp_path, "--ckpt_path", "last")
    assert error == (f"--ckpt_path last: no checkpoint in {tmp_path}; check --trainer.default_root_dir (or "
                     "--checkpoint.dirpath), or start a new run without --ckpt_path")
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # a first allocation requeued before it saved anything: start over
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    caplog.set_level(logging.INFO, logger="inspo")
    _fit_in_process(tmp_path, "--trainer.max_steps", "1")
    assert f"inspo: resume: no checkpoint in {tmp_path} yet: starting from step 0" in caplog.text
    assert not _no_training_step(tmp_path)


def test_resume_with_nothing_left_to_train_stops_instead_of_exporting_the_same_weights(crashed, tmp_path, capsys):
    """Resuming the step-4 checkpoint with ``max_steps`` 4 trained 0 steps and reported the run as done (a finished
    1-epoch run resumed with a larger ``max_steps`` alike: ``max_epochs`` still ended it at once). Now one line,
    nothing written; with a higher limit it trains on."""
    root = tmp_path / "copy"
    copy_crashed(crashed, root)
    target = root / STEP4
    error = _one_error_line(capsys, root, "--ckpt_path", str(target), "--trainer.max_steps", "4")
    assert error == (f"--ckpt_path {target}: that run already reached trainer.max_steps=4 (step 4), so nothing is "
                     "left to train; raise --trainer.max_epochs or --trainer.max_steps to train on")


def test_resume_mid_epoch_with_changed_data_settings_stops(crashed, tmp_path, capsys):
    """The saved loader position is a count of batches: resumed with batch size 4 instead of 2 (or fewer pairs),
    the step-4 checkpoint silently skipped 8 pairs of its epoch and trained others twice. Now one line, nothing
    written; a setting that leaves the order alone (num_workers) still resumes."""
    root = tmp_path / "copy"
    copy_crashed(crashed, root)
    target = root / STEP4
    error = _one_error_line(capsys, root, "--ckpt_path", str(target), "--data.loader.batch_size", "4")
    assert error == (f"cannot resume from {target}: it stopped mid-epoch (epoch 0, after 4 batches) with "
                     "data.loader.batch_size=2, this run has data.loader.batch_size=4, so the rest of the epoch would "
                     "skip or repeat pairs; resume with the data settings it was trained with, or start a new run "
                     "without --ckpt_path")
    error = _one_error_line(capsys, root, "--ckpt_path", str(target), "--data.read.max_pairs", "32")
    assert "data.read.max_pairs=64, this run has data.read.max_pairs=32" in error
    _fit_in_process(root, "--ckpt_path", str(target), "--data.loader.num_workers", "0", "--trainer.max_steps", "5")
    assert not _no_training_step(root)


def test_resume_mid_epoch_from_an_edited_data_file_stops(crashed, tmp_path, capsys):
    """Same settings, same path, but the file was edited after the checkpoint: the loader's saved position would have
    served the rest of the epoch from other pairs, silently. The checkpoint's fingerprint of the training pairs
    (``PreferenceDataModule.state_dict``) stops it with one line; the unedited file still resumes."""
    root = tmp_path / "copy"
    copy_crashed(crashed, root)
    pairs = tmp_path / "pairs.jsonl"
    shutil.copy(bundled_dataset("prefs"), pairs)
    checkpoint = torch.load(root / STEP4, map_location="cpu", weights_only=False)
    assert len(checkpoint["PreferenceDataModule"]["train_pairs_sha256"]) == 64
    checkpoint["datamodule_hyper_parameters"]["source"]["path"] = str(pairs)  # as if trained on this file
    target = root / "inspo/version_0/checkpoints/moved.ckpt"
    torch.save(checkpoint, target)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    edited = [dict(row, chosen=row["chosen"] + " Indeed.") if n < 10 else row for n, row in enumerate(rows)]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in edited))
    error = _one_error_line(capsys, root, "--ckpt_path", str(target), "--data.source.path", str(pairs))
    assert error == (f"cannot resume from {target}: it stopped mid-epoch (epoch 0, after 4 batches), and the training "
                     "pairs are not the ones it was trained on (the data file changed since, or how it is read or "
                     "split), so the rest of the epoch would skip or repeat pairs; restore the data it was trained "
                     "with, or start a new run without --ckpt_path")
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    _fit_in_process(root, "--ckpt_path", str(target), "--data.source.path", str(pairs), "--trainer.max_steps", "5")
    assert not _no_training_step(root)


def test_resume_from_a_weights_only_checkpoint_is_one_line(crashed, tmp_path, capsys):
    """A checkpoint saved with ``--checkpoint.save_weights_only true`` has no optimizer or scheduler state: the
    resume ended in Lightning's KeyError traceback after the model was built."""
    checkpoint = torch.load(crashed / STEP4, map_location="cpu", weights_only=False)
    del checkpoint["optimizer_states"], checkpoint["lr_schedulers"]
    weights_only = tmp_path / "weights-only.ckpt"
    torch.save(checkpoint, weights_only)
    error = _one_error_line(capsys, tmp_path / "run", "--ckpt_path", str(weights_only))
    assert error == (f"--ckpt_path {weights_only}: it holds the weights only (saved with --checkpoint.save_weights_only "
                     "true: no optimizer or scheduler state), so a fit cannot resume from it; `inspo export --ckpt "
                     f"{weights_only} --out DIR` and start a new run from DIR")


def test_left_to_train_counts_finished_epochs_and_lets_a_requeued_finished_job_end(monkeypatch, caplog):
    """The epoch check reads the checkpoint's processed epochs (Lightning counts the epoch before its end-of-epoch
    checkpoint is saved); a Slurm requeue of a finished job logs the reason and ends without an error."""
    from types import SimpleNamespace

    from inspo.checkpoints import check_left_to_train

    def meta(step: int, epochs: int) -> dict:
        return {"global_step": step, "loops": {"fit_loop": {"epoch_progress": {"current": {"processed": epochs}}}}}

    trainer = SimpleNamespace(max_steps=-1, max_epochs=1)
    check_left_to_train(meta(5, 0), trainer, "mid.ckpt")  # mid-epoch: trains on
    check_left_to_train(meta(8, 1), SimpleNamespace(max_steps=-1, max_epochs=2), "end.ckpt")
    check_left_to_train(meta(8, 1), SimpleNamespace(max_steps=20, max_epochs=-1), "end.ckpt")
    with pytest.raises(ConfigError, match=r"^--ckpt_path end.ckpt: that run already reached trainer.max_epochs=1 "
                                          r"\(1 epoch\(s\) done, step 8\), so nothing"):
        check_left_to_train(meta(8, 1), SimpleNamespace(max_steps=20, max_epochs=1), "end.ckpt")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    caplog.set_level(logging.INFO, logger="inspo")
    check_left_to_train(meta(8, 1), trainer, "end.ckpt")
    assert "inspo: --ckpt_path end.ckpt: that run already reached trainer.max_epochs=1" in caplog.text


def test_validate_and_test_take_a_checkpoint_file_and_refuse_another_runs(crashed, tmp_path, capsys):
    """``inspo validate --ckpt_path FILE`` works; a checkpoint of another loss, beta or conditioning is refused with
    one line before any data or weights are read (the saved hyperparameters no longer overwrite the command line,
    which made the check compare the checkpoint with itself)."""
    ckpt = str(crashed / STEP4)
    args = ["--config", str(TINY_YAML), "--trainer.default_root_dir", str(tmp_path), *QUICK, "--ckpt_path", ckpt]
    main(["validate", *args, "--trainer.limit_val_batches", "1"])
    for option, value in (("--model.loss", "ipo"), ("--model.loss.beta", "0.2"),
                          ("--model.conditioning", "standard")):
        with pytest.raises(SystemExit) as exit_info:
            main(["test", *args, option, value])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1, err
        assert err[0].startswith(f"inspo: error: cannot resume from {ckpt}: it was trained with model."), err

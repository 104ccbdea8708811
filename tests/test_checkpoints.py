"""Which checkpoint a resume trusts (:mod:`inspo.checkpoints`), on small hand-made files: no training here.

A "checkpoint" below is ``{"global_step": N, "state_dict": {...}}`` saved with ``torch.save`` (what
:func:`~inspo.checkpoints.checkpoint_problem` reads: a readable zip with those keys), and a sharded one is a
distributed-checkpoint folder written in this process (``no_dist``) plus its ``meta.pt``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemWriter, save

from inspo.checkpoints import checkpoint_problem, resolve_last
from inspo.errors import ConfigError


def fake(path: Path, step: int, when: float) -> Path:
    torch.save({"global_step": step, "state_dict": {"policy.w": torch.ones(64)}}, path)
    os.utime(path, (when, when))
    return path


def link(path: Path, target: str, when: float) -> Path:
    path.symlink_to(target)
    os.utime(path, (when, when), follow_symlinks=False)
    return path


def sharded(folder: Path) -> Path:
    save({"state_dict": {"policy.w": torch.arange(1000.0)}}, storage_writer=FileSystemWriter(str(folder)),
         no_dist=True)
    torch.save({"global_step": 6}, folder / "meta.pt")
    return folder


def test_problems_are_named(tmp_path):
    good = fake(tmp_path / "good.ckpt", 2, 100)
    assert checkpoint_problem(good) is None
    assert checkpoint_problem(tmp_path / "gone.ckpt") == "not found"
    assert checkpoint_problem(link(tmp_path / "last.ckpt", "step=9.ckpt", 200)) == (
        "it is a link to step=9.ckpt, which does not exist")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:200])
    assert checkpoint_problem(cut) == ("it cannot be read, it is truncated or not a checkpoint (PytorchStreamReader "
                                       "failed reading zip archive: failed finding central directory)")
    (tmp_path / "empty.ckpt").touch()
    assert checkpoint_problem(tmp_path / "empty.ckpt") == "it is empty (0 bytes; a save that never finished?)"
    (tmp_path / "text.ckpt").write_text('{"prompt": "not a checkpoint"}')
    assert checkpoint_problem(tmp_path / "text.ckpt") == (
        "not a checkpoint (not a zip archive, the format torch.save and Lightning write)")
    torch.save({"state_dict": {}}, tmp_path / "no_step.ckpt")
    assert checkpoint_problem(tmp_path / "no_step.ckpt") == "not a Lightning checkpoint (no global_step in it)"
    (tmp_path / "folder.ckpt").mkdir()
    assert checkpoint_problem(tmp_path / "folder.ckpt") == (
        "a folder but not a sharded checkpoint of `inspo fit` (no meta.pt in it)")


def test_sharded_folder_is_checked_against_its_metadata(tmp_path):
    folder = sharded(tmp_path / "step=6.ckpt")
    assert checkpoint_problem(folder) is None
    (shard,) = folder.glob("*.distcp")
    shard.write_bytes(shard.read_bytes()[:100])  # the 4000-byte tensor no longer fits
    assert checkpoint_problem(folder) == f"shard {shard.name} is missing or truncated"
    shard.unlink()
    assert checkpoint_problem(folder) == f"shard {shard.name} is missing or truncated"


def test_last_is_the_newest_usable_one(tmp_path, caplog):
    """Newest first by modification time (a link by its own): a dangling ``last.ckpt`` and a truncated newer file
    are skipped, with one log line naming the newest unusable one."""
    fake(tmp_path / "step=2.ckpt", 2, 100)
    fake(tmp_path / "step=4.ckpt", 4, 200)
    (tmp_path / "step=6.ckpt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    os.utime(tmp_path / "step=6.ckpt", (300, 300))
    link(tmp_path / "last.ckpt", "step=8.ckpt", 400)
    (tmp_path / ".partial.step=8.ckpt.tmp").write_bytes(b"")  # being written: never a candidate
    caplog.set_level("INFO", logger="inspo")
    assert resolve_last([tmp_path]) == str(tmp_path / "step=4.ckpt")
    assert [r.getMessage() for r in caplog.records] == [
        (f"inspo: resume: {tmp_path / 'last.ckpt'} is unusable (it is a link to step=8.ckpt, which does not exist); "
        f"resuming from {tmp_path / 'step=4.ckpt'}, the newest usable checkpoint")]
    link(tmp_path / "last2.ckpt", "step=4.ckpt", 500)
    assert resolve_last([tmp_path]) == str(tmp_path / "last2.ckpt")  # a good newest link is taken as it is


def test_last_with_nothing_usable(tmp_path, caplog):
    link(tmp_path / "last.ckpt", "step=8.ckpt", 400)
    with pytest.raises(ConfigError, match=r"^cannot resume: no usable checkpoint in .*last.ckpt: it is a link"):
        resolve_last([tmp_path], required=False)  # a requeued job must not start over either
    (tmp_path / "last.ckpt").unlink()
    with pytest.raises(ConfigError, match=r"^--ckpt_path last: no checkpoint in "):
        resolve_last([tmp_path, tmp_path / "missing"])
    caplog.set_level("INFO", logger="inspo")
    assert resolve_last([tmp_path], required=False) is None  # nothing was ever saved: start from step 0
    assert "starting from step 0" in caplog.text


def test_lightning_pin_covers_the_installed_version_and_the_private_api_used():
    """``pyproject.toml`` caps Lightning below the next minor release because the checkpoint and stop callbacks
    use private Lightning API: the installed version is inside the pin, the callbacks' docstrings state the same
    range, and the private ``ModelCheckpoint`` methods they override still exist."""
    import re

    import lightning
    from lightning.pytorch.callbacks import ModelCheckpoint
    from packaging.requirements import Requirement

    from inspo.callbacks import checkpoint, graceful_stop

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    (text,) = re.findall(r'^ *"(lightning[^"]*)",', pyproject, flags=re.MULTILINE)
    pin = Requirement(text)
    assert pin.specifier.contains(lightning.__version__), (str(pin), lightning.__version__)
    assert any(s.operator == "<" for s in pin.specifier), "no upper bound on lightning"
    for module in (checkpoint, graceful_stop):
        assert f"``{text}``" in module.__doc__, module.__name__
    for name in ("_save_checkpoint", "_save_last_checkpoint", "_remove_checkpoint", "_find_last_checkpoints",
                 "_monitor_candidates", "_get_metric_interpolated_filepath_name"):
        assert callable(getattr(ModelCheckpoint, name, None)), name


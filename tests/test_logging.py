"""Loggers chosen in YAML (CSV default, TensorBoard, W&B), with a clear message when a logger's package is missing.

Nothing here touches the network: W&B is only parsed, or stopped before it starts for want of its package."""

from __future__ import annotations

import importlib.util

import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from inspo.callbacks import InspoProgressBar, TrainingMonitor, check_logger_packages
from inspo.cli import InspoCLI, main
from inspo.data.datamodule import PreferenceDataModule
from inspo.errors import ConfigError
from inspo.module import PreferenceModule
from inspo.samples import SampleGenerations, log_table
from tests.test_cli import CONFIGS

LOGGERS = CONFIGS / "logger"


def build(tmp_path, *configs: str) -> InspoCLI:
    args = ["--config", str(CONFIGS / "tiny.yaml"), *[a for c in configs for a in ("--config", str(LOGGERS / c))]]
    return InspoCLI(PreferenceModule, PreferenceDataModule, run=False,
                    args=[*args, "--trainer.default_root_dir", str(tmp_path)])


def test_csv_is_the_default_and_the_callbacks_are_on(tmp_path):
    trainer = build(tmp_path).trainer
    assert isinstance(trainer.logger, CSVLogger)
    kinds = {type(c) for c in trainer.callbacks}
    assert {InspoProgressBar, TrainingMonitor, SampleGenerations} <= kinds


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_from_yaml_logs_a_samples_table(tmp_path):
    cli = InspoCLI(PreferenceModule, PreferenceDataModule, run=False, args=[
        "--config", str(CONFIGS / "tiny.yaml"), "--config", str(LOGGERS / "tensorboard.yaml"),
        "--trainer.logger.init_args.save_dir", str(tmp_path)])
    logger = cli.trainer.logger
    assert isinstance(logger, TensorBoardLogger)
    log_table(logger, [{"step": 1, "prompt": "p|q", "policy": "a", "reference": "b", "policy_tokens": 1,
                        "reference_tokens": 1}], step=1)
    logger.experiment.flush()
    assert list(tmp_path.rglob("events.out.tfevents.*"))


def test_csv_and_tensorboard_together(tmp_path):
    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        pytest.skip("tensorboard is not installed")
    loggers = build(tmp_path, "csv_and_tensorboard.yaml").trainer.loggers
    assert [type(x) for x in loggers] == [CSVLogger, TensorBoardLogger]


def test_wandb_from_yaml_parses(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--config", str(LOGGERS / "wandb.yaml"),
              "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path: lightning.pytorch.loggers.WandbLogger" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="checks the message shown without wandb")
def test_wandb_missing_is_one_clear_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "tiny.yaml"), "--config", str(LOGGERS / "wandb.yaml"),
              "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "WandbLogger needs the 'wandb' package" in err and "pip install wandb" in err
    assert "Traceback" not in err


def test_check_logger_packages_reads_lists_and_plain_values(monkeypatch):
    from inspo import callbacks

    check_logger_packages(None)
    check_logger_packages(True)
    check_logger_packages([{"class_path": "lightning.pytorch.loggers.CSVLogger"}])
    monkeypatch.setitem(callbacks.LOGGER_PACKAGES, "MyLogger", "nonexistent_pkg_xyz")
    with pytest.raises(ConfigError, match="'nonexistent_pkg_xyz' package"):
        check_logger_packages([{"class_path": "lightning.pytorch.loggers.CSVLogger"}, {"class_path": "my.MyLogger"}])

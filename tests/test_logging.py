"""Loggers chosen in YAML (CSV default, TensorBoard, W&B), with a clear message when a logger's package is missing;
what a run prints: library noise filtered for the run only, a validation before step 1, InSPO's two validation
views labelled in the progress lines, the end-of-fit summary and the report.

Nothing here touches the network: W&B is only parsed, or stopped before it starts for want of its package."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import pytest
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from inspo.callbacks import InspoProgressBar, SampleGenerations, TrainingMonitor, log_table
from inspo.cli import InspoCLI, main
from inspo.data.datamodule import PreferenceDataModule
from inspo.errors import ConfigError
from inspo.module import PreferenceModule
from inspo.preflight import check_logger_packages
from tests.helpers import CONFIGS

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
    from inspo import preflight

    check_logger_packages(None)
    check_logger_packages(True)
    check_logger_packages([{"class_path": "lightning.pytorch.loggers.CSVLogger"}])
    monkeypatch.setitem(preflight.LOGGER_PACKAGES, "MyLogger", "nonexistent_pkg_xyz")
    with pytest.raises(ConfigError, match="'nonexistent_pkg_xyz' package"):
        check_logger_packages([{"class_path": "lightning.pytorch.loggers.CSVLogger"}, {"class_path": "my.MyLogger"}])


# ---------------------------------------------------------------- a quiet run with a verdict (issue 12)
PLAIN = {"loss": 5.0, "reward_accuracy": 0.25, "reward_margin": -1.0}


class PlainViews(Callback):
    """Logs InSPO's plain (x) validation view under the module's keys (``val/plain_*``), with made-up constant
    values (:data:`PLAIN`) that the conditioned view never has, so the test can tell the two apart."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        for name, value in PLAIN.items():
            pl_module.log(f"val/plain_{name}", value, on_epoch=True, batch_size=len(batch))


@pytest.fixture(scope="module")
def two_views(tmp_path_factory) -> tuple[Path, str]:
    """A 2-step fit with the plain view logged and plain progress lines; (run folder, stdout)."""
    root = tmp_path_factory.mktemp("views")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["fit", "--config", str(CONFIGS / "tiny.yaml"), "--trainer.default_root_dir", str(root),
              "--trainer.limit_train_batches", "2", "--samples.every_n_steps", "0", "--model.export_dir", "null",
              "--progress_bar.plain", "true", "--trainer.callbacks+=tests.test_logging.PlainViews"])
    (run,) = root.glob("inspo/version_*")
    return run, out.getvalue()


def test_validation_lines_and_summary_show_both_views(two_views):
    """Validated before step 1 (the sanity check covered the whole validation set) and after step 2; every
    validation line and the end-of-fit summary label the conditioned and the plain view."""
    run, out = two_views
    lines = out.splitlines()
    validation = [line for line in lines if " validation at step " in line]
    assert [line.split(" | ")[0] for line in validation] == ["epoch 0 validation at step 0",
                                                             "epoch 0 validation at step 2"]
    for line in validation:
        conditioned, plain = line.split(" | ")[1:3]
        assert conditioned.startswith("conditioned (x, y_alt): val_loss ") and plain.startswith("plain (x): val_loss ")
        assert plain.split()[2:] == ["val_loss", "5", "val_acc", "0.25", "val_margin", "-1"]
        assert float(conditioned.split()[4]) < 1  # the tiny model's loss, near log 2
    steps = [line for line in lines if line.startswith("epoch 0 step ")]
    assert [line.split()[3] for line in steps] == ["1/2", "2/2"] and not any("val_" in line for line in steps)
    summary = lines[lines.index(next(x for x in lines if x.startswith("inspo: fit done: 2 optimizer steps"))):]
    assert summary[1].startswith("  train, mean of the last 2 steps:  loss ")
    assert summary[2].startswith("  validation, conditioned (x, y_alt):  loss ")
    assert summary[3].startswith("  validation, plain (x):  loss ")
    assert summary[4] == f"  next: inspo report {run}    (plots and report.md)"
    assert "trained policy" not in out  # export_dir null: nothing to point at
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[1].startswith("0,-1,")  # the step-0 validation, logged as Lightning numbers steps (k - 1)


def test_report_draws_and_tabulates_both_views(two_views, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from inspo.run_report import write_report

    run, _ = two_views
    labels: list[str] = []
    plot = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: labels.append(k.get("label")) or plot(self, *a, **k))
    write_report(run, tmp_path)
    assert "val accuracy, conditioned (x, y_alt)" in labels and "val accuracy, plain (x)" in labels
    report = (tmp_path / "report.md").read_text()
    assert ("| metric | train (mean of last 10 steps) | last validation, conditioned (x, y_alt) | last validation, "
            "plain (x) |") in report


def test_quiet_run_filters_only_inside(monkeypatch):
    """Lightning's advertisement and a library deprecation are dropped inside the block; outside, nothing changed."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    from inspo.quiet import quiet_run

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    lightning_log = logging.getLogger("lightning.pytorch")
    handler = Keep()
    lightning_log.addHandler(handler)
    filters, bars = list(warnings.filters), hf_logging.is_progress_bar_enabled()
    try:
        with quiet_run():
            lightning_log.warning("💡 Tip: For seamless cloud logging, try installing [litlogger]")
            lightning_log.warning("GPU available: False, used: False")
            with warnings.catch_warnings(record=True) as caught:
                warnings.warn_explicit("old API", FutureWarning, "x.py", 1, module="lightning.pytorch.x")
                warnings.warn_explicit("yours", FutureWarning, "mine.py", 1, module="my_plugin")
            assert [str(w.message) for w in caught] == ["yours"]
            assert not hf_logging.is_progress_bar_enabled()
        lightning_log.warning("💡 Tip: again")
        monkeypatch.setenv("INSPO_VERBOSE", "1")
        with quiet_run():
            lightning_log.warning("💡 Tip: verbose")
    finally:
        lightning_log.removeHandler(handler)
    assert records == ["GPU available: False, used: False", "💡 Tip: again", "💡 Tip: verbose"]
    assert warnings.filters == filters and hf_logging.is_progress_bar_enabled() == bars

"""The ``inspo`` command: LightningCLI over PreferenceModule and PreferenceDataModule.

``inspo fit --config configs/quickstart.yaml`` trains; ``validate``, ``test`` and ``predict`` work the same way.
Configs combine left to right: ``--config configs/quickstart.yaml --config configs/loss/simpo.yaml``.
Errors a user can cause (bad data, bad config, missing files) print one line and exit with status 2; set
``INSPO_DEBUG=1`` for the full traceback.

Two subcommands are not Lightning's and take plain arguments: ``inspo export --ckpt PATH --out DIR`` (a
checkpoint to a plain HF folder) and ``inspo report RUN_DIR`` (plots and a markdown summary of a run).
``INSPO_PLUGINS=my_losses,my_conditionings`` imports modules first, so their registered short names work.

Checkpoints (``--checkpoint.*``, :class:`inspo.callbacks.ResumableCheckpoint`) are written atomically with a
``last.ckpt`` link; ``inspo fit ... --ckpt_path last`` resumes mid-epoch at the same batch. Under Slurm the requeue
signal saves and requeues (:class:`inspo.callbacks.SlurmRequeue`), and a requeued job (``SLURM_RESTART_COUNT`` > 0)
resumes from ``last`` without being told.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from inspo.callbacks import (
    InspoProgressBar,
    ResumableCheckpoint,
    SlurmRequeue,
    TrainingMonitor,
    check_logger_packages,
)
from inspo.data.datamodule import PreferenceDataModule
from inspo.errors import ConfigError, InspoError
from inspo.module import PreferenceModule
from inspo.parser import InspoArgumentParser
from inspo.samples import SampleGenerations

log = logging.getLogger("inspo")

COMMANDS = {"export": "inspo.export", "report": "inspo.report", "eval": "inspo.eval.evaluate"}
"""Subcommands outside LightningCLI (name -> module with a ``main(argv)``), imported only when used."""
DESCRIPTION = ("Preference optimisation (InSPO and the DPO family). Lightning subcommands: fit, validate, test, "
               "predict (--config X.yaml, see `inspo fit --help`). Other subcommands: `inspo export --ckpt PATH "
               "--out DIR` writes a checkpoint as a plain Hugging Face folder; `inspo report RUN_DIR` writes plots "
               "and a markdown summary of a run; `inspo eval --model DIR` reports the gold-reward win rate on held-out "
               "verifiable prompts.")


class InspoCLI(LightningCLI):
    """LightningCLI with the tokenizer linked to the model: ``--model.model X`` sets ``--data.tokenizer X``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model", "data.tokenizer")
        # Always-on callbacks with their own options: --progress_bar.plain, --samples.every_n_steps, ...
        # (The monitor logs lr and tokens/s before the bar reads them, so it comes first.)
        parser.add_lightning_class_args(TrainingMonitor, "monitor")
        parser.add_lightning_class_args(SampleGenerations, "samples")
        parser.add_lightning_class_args(InspoProgressBar, "progress_bar")
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")  # only fit saves; resume checks: fit

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_logger_packages(config.get("trainer", {}).get("logger"))
        if self.subcommand == "fit" and config.get("ckpt_path") is None and slurm_restart() > 0:
            log.info("inspo: Slurm restart %d of job %s: resuming from the last checkpoint", slurm_restart(),
                     os.environ.get("SLURM_JOB_ID"))
            config["ckpt_path"] = "last"

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator is {trainer['accelerator']!r} but no GPU is visible here (e.g. "
                              "configs/strategy/fsdp.yaml is GPU only); on a CPU use configs/strategy/fsdp2.yaml or "
                              "ddp.yaml with --trainer.accelerator cpu")
        keys = self._parser(self.subcommand).callback_keys
        if trainer.get("enable_progress_bar") is False:  # the user turned the bar off: ours goes too
            keys = [key for key in keys if key != "progress_bar"]
        if trainer.get("enable_checkpointing") is False:  # no checkpoints: no checkpoint callback either
            keys = [key for key in keys if key != "checkpoint"]
        callbacks = [self._get(self.config_init, key) for key in keys]
        return self._instantiate_trainer(trainer, [*callbacks, SlurmRequeue()])


def slurm_restart() -> int:
    """How many times Slurm has requeued this job (0 outside Slurm)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) if "SLURM_JOB_ID" in os.environ else 0
    except ValueError:
        return 0


def main(args: list[str] | None = None) -> None:
    """Run the CLI on ``args`` (default: ``sys.argv[1:]``)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if args is None else args
    try:
        for name in filter(None, os.environ.get("INSPO_PLUGINS", "").split(",")):
            _import_plugin(name.strip())
        if argv and argv[0] in COMMANDS:
            importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
            return
        InspoCLI(
            PreferenceModule,
            PreferenceDataModule,
            seed_everything_default=42,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": DESCRIPTION},
            parser_class=InspoArgumentParser,  # one-line errors for unknown options, with a suggestion
            args=args,
        )
    except InspoError as err:
        if os.environ.get("INSPO_DEBUG"):
            raise
        print(f"inspo: error: {err}", file=sys.stderr)
        sys.exit(2)


def _import_plugin(name: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError as err:
        raise ConfigError(f"INSPO_PLUGINS: cannot import {name!r}: {err}") from err


if __name__ == "__main__":
    main()

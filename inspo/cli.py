"""The ``inspo`` command: LightningCLI over PreferenceModule and PreferenceDataModule.

``inspo fit --config configs/quickstart.yaml`` trains; ``validate``, ``test`` and ``predict`` work the same way
(``predict`` writes every pair's loss, rewards and log-probs to ``pair_scores.jsonl``: inspo.callbacks.PairScoreWriter).
Configs combine left to right: ``--config configs/quickstart.yaml --config configs/loss/simpo.yaml``.
Errors a user can cause (bad data, bad config, missing files) print one line and exit with status 2; set
``INSPO_DEBUG=1`` for the full traceback.

Two subcommands are not Lightning's and take plain arguments: ``inspo export --ckpt PATH --out DIR`` (a
checkpoint to a plain HF folder) and ``inspo report RUN_DIR`` (plots and a markdown summary of a run).
``INSPO_PLUGINS=my_losses,my_conditionings`` imports modules first, so their registered short names work.

Checkpoints (``--checkpoint.*``, :class:`inspo.callbacks.ResumableCheckpoint`) are written atomically with a
``last.ckpt`` link; ``inspo fit ... --ckpt_path last`` resumes mid-epoch at the same batch from the newest usable
checkpoint (:mod:`inspo.checkpoints`), and ``--ckpt_path FILE`` from that file (checked before anything is built,
and refused with one line if it was trained with another model or loss). SIGTERM and SIGINT save at the next step boundary and exit with 128 + the signal
(:class:`inspo.callbacks.GracefulStop`); under Slurm the requeue signal saves and requeues, and a requeued job
(``SLURM_RESTART_COUNT`` > 0) resumes from ``last`` without being told.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from inspo.callbacks import (
    GracefulStop,
    InspoProgressBar,
    PairScoreWriter,
    ResumableCheckpoint,
    SampleGenerations,
    TrainingMonitor,
)
from inspo.checkpoints import (
    KEYWORDS,
    check_left_to_train,
    check_same_data,
    check_same_pairs,
    check_training_state,
    checkpoint_folders,
    checkpoint_problem,
    read_meta,
    resolve_last,
    slurm_restart,
)
from inspo.data.datamodule import TRAIN_FINGERPRINT, PreferenceDataModule
from inspo.errors import ConfigError, InspoError
from inspo.module import PreferenceModule
from inspo.parser import InspoArgumentParser, expand_short_names
from inspo.preflight import (
    check_config_files,
    check_data_paths,
    check_logger_packages,
    check_output_folders,
    check_strategy,
    check_trainer_counts,
    user_error_in,
)
from inspo.quiet import quiet_run
from inspo.signals import restored_signals
from inspo.summary import fit_summary

log = logging.getLogger("inspo")

COMMANDS = {"export": "inspo.export", "report": "inspo.run_report", "eval": "inspo.eval.evaluate"}
"""Subcommands outside LightningCLI (name -> module with a ``main(argv)``), imported only when used."""
DESCRIPTION = ("Preference optimisation (InSPO and the DPO family). Lightning subcommands: fit, validate, test, "
               "predict (--config X.yaml, see `inspo fit --help`; predict writes every pair's loss, rewards and "
               "log-probs to pair_scores.jsonl in the run folder). Other subcommands: `inspo export --ckpt PATH "
               "--out DIR` writes a checkpoint as a plain Hugging Face folder; `inspo report RUN_DIR` writes plots "
               "and a markdown summary of a run; `inspo eval --model DIR` reports the gold-reward win rate on held-out "
               "verifiable prompts.")


class InspoCLI(LightningCLI):
    """LightningCLI with the tokenizer linked to the model (``--model.model X`` sets ``--data.tokenizer X``), loss
    short names that take init arguments, checks before anything is built, and checkpoints it can trust."""

    _auto_resume = False  # a requeued Slurm job resuming by itself (no checkpoint yet is then not an error)

    def __init__(self, *args: Any, parser_class: type = InspoArgumentParser, **kwargs: Any) -> None:
        argv = kwargs.get("args")
        argv = sys.argv[1:] if argv is None else argv
        names = self.subcommands()
        self._requested = next((a for a in argv if a in names), None) if isinstance(argv, (list, tuple)) else None
        if isinstance(argv, (list, tuple)):
            check_config_files(list(argv))
        super().__init__(*args, parser_class=parser_class, **kwargs)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        """The full parser of the subcommand being run only; the others are listed (``inspo --help``) but not built.

        Each full parser introspects every model, data, trainer and callback option (~0.6 s on a laptop core), and
        LightningCLI builds all four (fit, validate, test, predict) on every start. Without a subcommand on the
        command line (``inspo --help``, args given as a dict) every parser is built as before.
        """
        if self._requested is not None and subcommand != self._requested:
            return self.init_parser(**kwargs)
        return super()._prepare_subcommand_parser(klass, subcommand, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model", "data.tokenizer")
        expand_short_names(parser)  # `loss: dpo` then `--model.loss.beta 0.2`; layouts and conditionings alike
        # Always-on callbacks with their own options: --progress_bar.plain, --samples.every_n_steps, ...
        # (The monitor logs lr and tokens/s before the bar reads them, so it comes first.)
        parser.add_lightning_class_args(TrainingMonitor, "monitor")
        parser.add_lightning_class_args(SampleGenerations, "samples")
        parser.add_lightning_class_args(InspoProgressBar, "progress_bar")
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")  # only fit saves; resume checks: fit

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path FILE`` (exists, readable, complete) before anything is built; keep the command line.

        Replaces LightningCLI's own step, which loaded the whole file (a traceback for a missing or truncated one)
        and parsed its saved hyperparameters *over* the command line, so that a run with another loss or model
        would have silently become the checkpoint's run. Here the config stays what the user asked for and
        :meth:`_prepare_checkpoint` compares it with the checkpoint.
        """
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt and ckpt not in KEYWORDS and not str(ckpt).startswith("registry"):
            problem = checkpoint_problem(ckpt)
            if problem is not None:
                raise ConfigError(f"--ckpt_path {ckpt}: {problem}")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # Checked right after parsing, before the seed is set or anything is built (nothing printed, nothing written).
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        trainer = config.get("trainer", {})
        check_logger_packages(trainer.get("logger"))
        check_strategy(trainer.get("strategy"))
        check_trainer_counts(trainer)
        check_output_folders(trainer, config.get("model"), config.get("checkpoint"))
        check_data_paths(config.get("data"))

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "fit" and config.get("ckpt_path") is None and slurm_restart() > 0:
            log.info("inspo: Slurm restart %d of job %s: resuming from the last checkpoint", slurm_restart(),
                     os.environ.get("SLURM_JOB_ID"))
            config["ckpt_path"] = "last"
            self._auto_resume = True

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:  # jsonargparse wraps a ConfigError raised by a class it builds
            cause = user_error_in(err)
            if cause is None:
                raise
            raise cause from None

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
        callbacks = [self._get(self.config_init, key) for key in keys] + [GracefulStop()]
        if self.subcommand == "predict":
            callbacks.append(PairScoreWriter())
        try:
            return self._instantiate_trainer(trainer, callbacks)
        except (ValueError, MisconfigurationException) as err:  # Trainer's own checks of its arguments
            raise ConfigError(f"trainer: {str(err).strip().splitlines()[0]}") from None

    def _prepare_checkpoint(self) -> None:
        """Turn ``--ckpt_path last`` into the newest usable checkpoint, and refuse one of another model or loss
        before any data or weights are read."""
        config = self.config_init[self.subcommand]
        ckpt = config.get("ckpt_path")
        if ckpt == "last":
            ckpt = resolve_last(checkpoint_folders(self.trainer), required=not self._auto_resume,
                                announce=rank_zero_only.rank == 0)
            config["ckpt_path"] = ckpt
        if ckpt and ckpt not in KEYWORDS and not str(ckpt).startswith("registry"):
            meta = read_meta(Path(ckpt))
            self.model.check_resumable(meta, source=ckpt)
            if self.subcommand == "fit":
                check_left_to_train(meta, self.trainer, ckpt)
                check_training_state(meta, ckpt)
                if self.datamodule is not None:
                    check_same_data(meta, dict(self.datamodule.hparams), ckpt)
                if isinstance(self.datamodule, PreferenceDataModule):
                    saved = meta.get(type(self.datamodule).__qualname__) or {}
                    check_same_pairs(meta, saved.get(TRAIN_FINGERPRINT), self.datamodule.train_fingerprint, ckpt)

    def before_fit(self) -> None:
        self._prepare_checkpoint()

    def before_validate(self) -> None:
        self._prepare_checkpoint()

    def before_test(self) -> None:
        self._prepare_checkpoint()

    def before_predict(self) -> None:
        self._prepare_checkpoint()

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print(fit_summary(self.trainer, self.model), flush=True)


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
        with quiet_run(), restored_signals():  # library noise filtered, signal handlers put back: this command only
            InspoCLI(
                PreferenceModule,
                PreferenceDataModule,
                seed_everything_default=42,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={"description": DESCRIPTION},
                trainer_defaults={"enable_model_summary": False},  # its FLOPs column is 0; one line at train start
                args=args,
            )
    except InspoError as err:
        if os.environ.get("INSPO_DEBUG"):
            raise
        print(f"inspo: error: {err}", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException:  # Lightning's own SIGTERM stop outside fit (validate, test): a SystemExit with status 0
        print("inspo: stopped by SIGTERM", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)


def _import_plugin(name: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError as err:
        raise ConfigError(f"INSPO_PLUGINS: cannot import {name!r}: {err}") from err


if __name__ == "__main__":
    main()

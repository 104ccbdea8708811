"""The files of a run folder, named once: what ``inspo fit`` writes and ``inspo report`` / ``inspo export`` read.

A run folder is the logger's version folder, e.g. ``runs/quickstart/inspo/version_0``::

    version_0/
        config.yaml             CONFIG       the full parsed config (LightningCLI's SaveConfigCallback)
        hparams.yaml            HPARAMS      the module's hyperparameters (the CSV logger; read when no config.yaml)
        metrics.csv             METRICS      per-step and per-validation metrics (the CSV logger)
        run_stats.json          RUN_STATS    data counts, parameters, throughput, memory (inspo.callbacks.TrainingMonitor)
        samples.jsonl           SAMPLES      sample generations (inspo.callbacks.SampleGenerations)
        pair_scores.jsonl       PAIR_SCORES  per-pair loss, rewards, log-probs (``inspo predict``, PairScoreWriter)
        checkpoints/            CHECKPOINTS  Lightning's ModelCheckpoint folder (inspo.callbacks.ResumableCheckpoint)
            last.ckpt           LAST         a link to the newest checkpoint
        hf_model/               HF_MODEL     the trained policy as a plain HF folder (module.export_dir ``auto``)
            inspo_export.json   EXPORT_INFO  where it came from (inspo.export)
        report/                 REPORT       ``inspo report``'s plots and REPORT_MD (report.md)

The names of files Lightning writes (``config.yaml``, ``hparams.yaml``, ``metrics.csv``, ``checkpoints``,
``last.ckpt``) are Lightning's defaults; they are repeated here so that inspo's own code reads them from one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

CONFIG = "config.yaml"
HPARAMS = "hparams.yaml"
METRICS = "metrics.csv"
RUN_STATS = "run_stats.json"
SAMPLES = "samples.jsonl"
PAIR_SCORES = "pair_scores.jsonl"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
HF_MODEL = "hf_model"
EXPORT_INFO = "inspo_export.json"
REPORT = "report"
REPORT_MD = "report.md"


def run_dir(trainer: Trainer) -> Path:
    """The run folder (the logger's version folder), without the collective that ``trainer.log_dir`` is under DDP."""
    logger = trainer.logger
    folder = (getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)) if logger is not None else None
    return Path(folder or trainer.default_root_dir)


def versions_dir(trainer: Trainer) -> Path:
    """The folder holding every version of the run (``save_dir/name`` of the first logger): a resumed run writes a
    new ``version_N`` there, and ``--ckpt_path last`` looks in all of them."""
    logger = trainer.loggers[0]
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name or "")

"""Training-time callbacks, one per file; every name is importable from ``inspo.callbacks`` (and YAML
``class_path: inspo.callbacks.X`` works).

- ``progress.py``: :class:`InspoProgressBar`, loss, acc, margin, lr and tok/s; plain lines when not a terminal.
- ``monitor.py``: :class:`TrainingMonitor`, ``train/lr`` and ``train/tokens_per_sec``; ``run_stats.json``.
- ``checkpoint.py``: :class:`ResumableCheckpoint`, atomic checkpoints and an atomically replaced ``last.ckpt``.
- ``graceful_stop.py``: :class:`GracefulStop`, save and stop on SIGTERM, SIGINT and the Slurm requeue signal, and
  requeue the Slurm job.
- ``samples.py``: :class:`SampleGenerations`, policy and reference answers to fixed prompts (``samples.jsonl``).
- ``pair_scores.py``: :class:`PairScoreWriter`, ``inspo predict``'s per-pair loss, rewards and log-probs
  (``pair_scores.jsonl``).

``inspo fit`` adds all five (``--progress_bar.*``, ``--checkpoint.*`` and ``--samples.*`` set their options). The export of the trained policy at the end of fit is not a callback: it
is ``PreferenceModule.on_fit_end``, driven by ``model.export_dir`` (see ``inspo.export``). The files these
callbacks write are named in :mod:`inspo.run_folder`.
"""

from inspo.callbacks.checkpoint import ResumableCheckpoint
from inspo.callbacks.graceful_stop import GracefulStop, StoppedBySignal
from inspo.callbacks.monitor import TrainingMonitor, pair_tokens
from inspo.callbacks.pair_scores import PairScoreWriter
from inspo.callbacks.progress import SHORT_NAMES, VIEWS, InspoProgressBar, format_metric, full_sanity_check
from inspo.callbacks.samples import SampleGenerations, log_table, markdown_table
from inspo.run_folder import run_dir

__all__ = [
    "SHORT_NAMES",
    "VIEWS",
    "GracefulStop",
    "InspoProgressBar",
    "PairScoreWriter",
    "ResumableCheckpoint",
    "SampleGenerations",
    "StoppedBySignal",
    "TrainingMonitor",
    "format_metric",
    "full_sanity_check",
    "log_table",
    "markdown_table",
    "pair_tokens",
    "run_dir",
]

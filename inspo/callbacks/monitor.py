"""Throughput and learning-rate logging, and the run statistics file.

:class:`TrainingMonitor` logs ``train/lr`` and ``train/tokens_per_sec`` every step and writes ``run_stats.json``
(data counts, parameter counts, throughput, peak memory) into the run folder at the end of training; the report
(``inspo report``) and the end-of-fit summary (``inspo.summary``) read it.

Tokens are *pair tokens*: |x| + |y_w| + |y_l| per pair, the same count whatever the conditioning or layout, so
runs compare fairly (InSPO's packed row is |x| + 2|y_w| + 2|y_l| tokens of compute).
"""

from __future__ import annotations

import json
import logging
import resource
import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from inspo.callbacks.progress import full_sanity_check
from inspo.run_folder import RUN_STATS, run_dir

log = logging.getLogger("inspo")


def pair_tokens(batch: Any) -> int:
    """|x| + |y_w| + |y_l| summed over the pairs of a batch."""
    return sum(len(x) + len(yw) + len(yl) for x, yw, yl in zip(batch.prompt, batch.chosen, batch.rejected))


class TrainingMonitor(Callback):
    """Logs ``train/lr`` and ``train/tokens_per_sec`` every step; writes ``run_stats.json`` at the end of training.

    When the sanity check before training covered the whole validation set (``trainer.num_sanity_val_steps: -1``,
    or as many batches as validation has), its metrics are logged as the validation *before* step 1, so that a
    run's plots show a before and an after (Lightning discards sanity-check metrics).
    """

    RECENT = 10
    """Training steps averaged for the end-of-fit summary (one batch's accuracy is 0, .25, .5, .75 or 1)."""

    def __init__(self) -> None:
        super().__init__()
        self._tokens = 0
        self._pairs = 0
        self._seconds = 0.0
        self._batches = 0
        self._t0 = 0.0
        self._lr = 0.0
        self._started = time.monotonic()
        self.start_step = 0
        self.recent: dict[str, list[float]] = {}

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.monotonic()
        self.start_step = trainer.global_step  # > 0 when resumed
        if trainer.is_global_zero:
            from inspo.summary import model_line

            log.info(model_line(trainer, pl_module))

    @override
    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not full_sanity_check(trainer):
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        for logger in trainer.loggers:
            # Lightning logs validation after k optimizer steps as step k - 1 (metrics.csv counts from 0): -1 here.
            logger.log_metrics({**values, "epoch": 0}, step=-1)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()
        self._lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else 0.0

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        seconds = time.perf_counter() - self._t0
        tokens = pair_tokens(batch) * trainer.world_size  # every rank runs a batch of about this size
        self._tokens += tokens
        self._pairs += len(batch) * trainer.world_size
        self._seconds += seconds
        self._batches += 1
        size = len(batch)
        for name in ("loss", "reward_accuracy", "reward_margin"):
            value = trainer.callback_metrics.get(f"train/{name}_step")
            if value is not None:
                self.recent[name] = [*self.recent.get(name, [])[1 - self.RECENT:], float(value)]
        pl_module.log("train/tokens_per_sec", tokens / max(seconds, 1e-9), on_step=True, on_epoch=False,
                      prog_bar=True, batch_size=size)
        pl_module.log("train/lr", self._lr, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = run_dir(trainer)  # not trainer.log_dir: that is a collective under DDP
        if not trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RUN_STATS).write_text(json.dumps(self.stats(trainer, pl_module), indent=2) + "\n")

    def stats(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """Data counts, parameter counts, throughput and peak memory of the run so far."""
        from inspo.lora import count_parameters

        datamodule = getattr(trainer, "datamodule", None)
        policy = getattr(pl_module, "policy", None)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return {
            "data": dict(getattr(datamodule, "stats", None) or {}),
            "parameters": {"policy": count_parameters(policy),
                           "policy_and_reference": count_parameters(policy, getattr(pl_module, "reference", None))},
            "reference_mode": getattr(getattr(pl_module, "reference_mode", None), "name", None),
            "train": {"optimizer_steps": trainer.global_step, "batches": self._batches, "pairs": self._pairs,
                      "pair_tokens": self._tokens, "seconds": round(self._seconds, 3),
                      "wall_seconds": round(time.monotonic() - self._started, 3),
                      "pairs_per_sec": round(self._pairs / self._seconds, 3) if self._seconds else None,
                      "pair_tokens_per_sec": round(self._tokens / self._seconds, 2) if self._seconds else None},
            "memory": {"peak_rss_mib": round(peak_rss, 1),
                       "cuda_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)
                       if torch.cuda.is_available() else None},
            "world_size": trainer.world_size,
        }

"""``inspo predict``: one JSON line per pair with its loss, rewards and log-probs, in ``pair_scores.jsonl``.

What :meth:`inspo.module.PreferenceModule.predict_step` returns, per pair: ``split`` (``train`` / ``val``: which
loader of :meth:`inspo.data.PreferenceDataModule.predict_dataloader` it came from) and ``row`` (its 1-based row in
that split's source file), then ``loss``, ``chosen_reward``, ``rejected_reward``, ``chosen_logp``, ``rejected_logp``
under the run's conditioning, ``ref_chosen_logp`` / ``ref_rejected_logp`` when the loss has a reference, and under
InSPO the same with a ``plain_`` prefix, scored on log pi(y|x) (what sampling uses). Lines are written as batches
finish, so an interrupted run keeps what it scored. Under several processes each rank writes its own file
(``pair_scores.rank1.jsonl``, ...), since each scores its own share of the pairs; an existing file is never
overwritten (``pair_scores-2.jsonl``, ... when the run folder is reused, as without a logger).
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import IO, Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from typing_extensions import override

from inspo.data.datamodule import PREDICT_SPLITS
from inspo.run_folder import PAIR_SCORES, run_dir

log = logging.getLogger("inspo")

class PairScoreWriter(BasePredictionWriter):
    """Write each predicted batch to the run folder's ``pair_scores.jsonl`` (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__("batch")
        self._file: IO[str] | None = None
        self._path = Path()
        self._lines = 0

    @staticmethod
    def _new_path(trainer: Trainer) -> Path:
        """``pair_scores[.rankN].jsonl`` in the run folder, or ``pair_scores-2...``, ``-3...`` if that exists (a run
        folder without a logger is reused: an earlier prediction is never overwritten)."""
        stem = Path(PAIR_SCORES).stem
        rank = "" if trainer.world_size == 1 else f".rank{trainer.global_rank}"
        folder = run_dir(trainer)
        for number in itertools.count(1):
            path = folder / f"{stem}{'' if number == 1 else f'-{number}'}{rank}.jsonl"
            if not path.exists():
                return path
        raise AssertionError("unreachable")

    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._path = self._new_path(trainer)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._file, self._lines = self._path.open("w", encoding="utf-8"), 0

    @override
    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: dict[str, Any],
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        assert self._file is not None
        values = {name: value.tolist() for name, value in prediction.items()}
        for i in range(len(values["row"])):
            line = {"split": PREDICT_SPLITS[dataloader_idx], **{name: column[i] for name, column in values.items()}}
            self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        self._lines += len(values["row"])

    @override
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        log.info("inspo: scores of %d pairs written to %s", self._lines, self._path)

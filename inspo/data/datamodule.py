"""PreferenceDataModule: preference pairs from a file or HF dataset, tokenised once, served as PairBatch.

Rows are read, validated (:mod:`inspo.data.formats`), tokenised and truncated (:mod:`inspo.data.tokenize`) once in
:meth:`PreferenceDataModule.setup`; batches carry plain token-id lists, and the layout (``inspo.layout``) turns
them into model rows. Rows are validated before any model is loaded (:mod:`inspo.data.validate`): by default any
bad row stops setup with a :class:`~inspo.errors.DataError` naming file, rows, field and reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, DistributedSampler
from transformers import PreTrainedTokenizerBase
from typing_extensions import override

import inspo
from inspo.data.formats import read_rows
from inspo.data.sampler import LengthBucketBatchSampler, ResumableDataLoader
from inspo.data.tokenize import TokenizedPair, check_lengths, has_chat_template
from inspo.data.validate import DataReport, Duplicates, OnInvalid, ReadOptions, read_pairs
from inspo.errors import ConfigError, DataError
from inspo.models import BUNDLED_SMOLLM2, load_tokenizer, resolve_model

log = logging.getLogger("inspo")


BUNDLED_DATA = {"prefs": "prefs.jsonl", "verifiable": "verifiable/train.jsonl"}
"""``data.path: bundled:NAME``: the preference files shipped in ``inspo/assets`` (readable from any folder)."""


def bundled_dataset(name: str = "prefs") -> Path:
    """The offline preference data shipped with the package: the hand-written pairs or the verifiable set."""
    if name not in BUNDLED_DATA:
        raise ConfigError(f"data.path: unknown bundled dataset 'bundled:{name}'; choose from "
                          + ", ".join(f"bundled:{key}" for key in BUNDLED_DATA))
    return Path(inspo.__file__).parent / "assets" / BUNDLED_DATA[name]


@dataclass
class PairBatch:
    """A batch of B tokenised preference pairs (unpadded; the layout pads and packs).

    Attributes:
        prompt: B lists of prompt ids.
        chosen: B lists of chosen-response ids, each ending with its EOS / end-of-turn token unless truncated.
        rejected: B lists of rejected-response ids.
        rows: B 1-based source row numbers (for logs and per-example outputs).
    """

    prompt: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    rows: list[int]

    def __len__(self) -> int:
        return len(self.rows)


def collate_pairs(pairs: list[TokenizedPair]) -> PairBatch:
    """Collate tokenised pairs into a :class:`PairBatch` (module level, so DataLoader workers can pickle it)."""
    return PairBatch(
        prompt=[pair.prompt for pair in pairs],
        chosen=[pair.chosen for pair in pairs],
        rejected=[pair.rejected for pair in pairs],
        rows=[pair.row for pair in pairs],
    )


class PreferenceDataModule(LightningDataModule):
    """Preference pairs for training and validation."""

    def __init__(
        self,
        path: str | None = None,
        dataset: str | None = None,
        dataset_config: str | None = None,
        split: str = "train",
        tokenizer: str = BUNDLED_SMOLLM2,
        prompt_field: str = "prompt",
        chosen_field: str = "chosen",
        rejected_field: str = "rejected",
        chat_template: bool = True,
        max_length: int = 512,
        max_prompt_length: int = 256,
        val_fraction: float = 0.1,
        val_path: str | None = None,
        max_pairs: int | None = None,
        on_invalid: OnInvalid = "error",
        min_valid_fraction: float = 0.9,
        duplicates: Duplicates = "keep",
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        order_seed: int | None = None,
        bucket_batches: int = 16,
        shuffle: bool = True,
    ) -> None:
        """Configure the data; nothing is read until :meth:`setup`.

        Args:
            path: a local .jsonl, .json or .parquet file, or ``bundled:prefs`` (the hand-written pairs in
                ``inspo/assets/prefs.jsonl``, the default when neither path nor dataset is given) or
                ``bundled:verifiable`` (the on-policy verifiable pairs, ``inspo/assets/verifiable``).
            dataset: a Hugging Face ``datasets`` name or a local dataset folder, loaded with
                ``datasets.load_dataset(dataset, dataset_config, split=split)``.
            dataset_config: the dataset configuration name, if it has several.
            split: the dataset split to read.
            tokenizer: the tokenizer's model name (the CLI links ``model.model`` here).
            prompt_field: the field holding the prompt: a string or a list of chat messages.
            chosen_field: the field holding the preferred response: a string or a list of messages.
            rejected_field: the field holding the dispreferred response: a string or a list of messages.
            chat_template: render prompts with the tokenizer's chat template (if it has one).
            max_length: token budget of the longest conditioned sequence, prompt + both responses.
            max_prompt_length: the prompt is cut from the left, but never below this many tokens.
            val_fraction: fraction of the pairs held out for validation (ignored when val_path is given).
            val_path: an explicit validation file instead of a split of the training data.
            max_pairs: use only the first N valid pairs of each source (quick runs).
            on_invalid: ``error`` stops at setup if any row is invalid, naming file, rows, field and reason;
                ``skip`` drops invalid rows and logs the counts (:mod:`inspo.data.validate`).
            min_valid_fraction: with ``on_invalid: skip``, stop anyway if fewer than this fraction of rows is valid.
            duplicates: ``keep`` or ``drop`` rows repeating an earlier (prompt, chosen, rejected); counted either way.
            batch_size: pairs per training batch (per device).
            eval_batch_size: pairs per validation/test/predict batch; defaults to batch_size.
            num_workers: DataLoader worker processes.
            seed: seed of the validation split and (unless order_seed is set) of the training order.
            order_seed: seed of the training order only: runs that differ in it train on the same split in
                another order (seeds of an experiment); default: ``seed``.
            bucket_batches: training batches per length bucket: the shuffled order is cut into windows of this
                many batches, each sorted by pair length (``inspo.data.sampler``), so a batch pads and packs
                little; 1 keeps plain shuffled batches.
            shuffle: false trains on the pairs in the dataset's order, every epoch (no shuffling and no length
                bucketing: ``bucket_batches`` is ignored), e.g. to follow another trainer step by step. The
                validation pairs are still held out by ``seed``; ``val_fraction: 0`` or ``val_path`` keeps every
                row for training. Under DDP rank r takes pairs r, r + R, ...: a global batch is consecutive pairs.
        """
        super().__init__()
        if path is not None and dataset is not None:
            raise ConfigError("give either data.path or data.dataset, not both")
        check_lengths(max_length, max_prompt_length)
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if max_pairs is not None and max_pairs < 1:
            raise ConfigError(f"data.max_pairs must be at least 1, got {max_pairs}")
        if not 0.0 <= min_valid_fraction <= 1.0:
            raise ConfigError(f"data.min_valid_fraction must be in [0, 1], got {min_valid_fraction}")
        if bucket_batches < 1:
            raise ConfigError(f"data.bucket_batches must be at least 1, got {bucket_batches}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ConfigError("data.batch_size and data.eval_batch_size must be at least 1")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.train_pairs: list[TokenizedPair] | None = None
        self.val_pairs: list[TokenizedPair] | None = None
        self.stats: dict[str, int] = {}
        self.reports: list[DataReport] = []
        self._tokenizer: PreTrainedTokenizerBase | None = None

    def get_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer named by ``tokenizer``, loaded once (kept out of the state dict)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.hparams.tokenizer)
        return self._tokenizer

    @override
    def prepare_data(self) -> None:
        # Runs once per node before setup: convert a GGUF tokenizer and download a hub dataset into the caches.
        resolve_model(self.hparams.tokenizer)
        if self.hparams.dataset is not None:
            self._load_hf_dataset()

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_pairs is not None:
            return
        hp = self.hparams
        tokenizer = self.get_tokenizer()
        if hp.chat_template and not has_chat_template(tokenizer):
            log.info("tokenizer %s has no chat template: prompts are used as plain text", hp.tokenizer)
        options = ReadOptions.from_hparams(hp)
        source, rows = self._main_rows()
        pairs, report = read_pairs(source, rows, tokenizer, options)
        self.reports = [report]
        if hp.val_path is not None:
            val_pairs, val_report = read_pairs(hp.val_path, read_rows(hp.val_path, keep_going=True), tokenizer, options)
            self.reports.append(val_report)
            train_pairs = pairs
        else:
            train_pairs, val_pairs = split_pairs(pairs, hp.val_fraction, hp.seed)
        self.train_pairs, self.val_pairs = train_pairs, val_pairs
        stats = Counter[str]()
        for one in self.reports:
            stats.update(one.stats())
        self.stats = {**stats, "train": len(train_pairs), "val": len(val_pairs)}
        log.info("data: train=%d val=%d (source %s)", len(train_pairs), len(val_pairs), source)

    def _main_rows(self) -> tuple[str, Iterable[tuple[int, Any]]]:
        hp = self.hparams
        if hp.dataset is not None:
            return hp.dataset, enumerate(self._load_hf_dataset(), start=1)
        path = hp.path if hp.path is not None else "bundled:prefs"
        if path.startswith("bundled:"):
            path = str(bundled_dataset(path.removeprefix("bundled:")))
        return path, read_rows(path, keep_going=True)  # unreadable lines are counted, not fatal, under skip

    def _load_hf_dataset(self) -> Iterable[Any]:
        import datasets

        hp = self.hparams
        try:
            return datasets.load_dataset(hp.dataset, hp.dataset_config, split=hp.split)
        except (OSError, ValueError, ConnectionError) as err:  # DatasetNotFoundError is a FileNotFoundError
            raise DataError(f"cannot load dataset {hp.dataset!r} (config {hp.dataset_config!r}, split "
                            f"{hp.split!r}): {err}") from None

    @override
    def train_dataloader(self) -> DataLoader:
        """Shuffled, length-bucketed batches (``inspo.data.sampler``) from a loader that checkpoints its position.

        With ``shuffle: false`` the batches follow the dataset's order instead.

        One process shuffles with a one-replica DistributedSampler; under DDP/FSDP Lightning puts in one per rank
        with the same seed, so the pairs of a global batch do not depend on the number of processes.
        """
        hp, pairs = self.hparams, self._pairs("train")
        seed = hp.seed if hp.order_seed is None else hp.order_seed
        if not hp.shuffle:
            log.info("data.shuffle is false: training batches follow the dataset's order (no length bucketing)")
        sampler = DistributedSampler(pairs, num_replicas=1, rank=0, shuffle=hp.shuffle, seed=seed)
        batches = LengthBucketBatchSampler(sampler, hp.batch_size, lengths=[pair.longest for pair in pairs],
                                           bucket_batches=hp.bucket_batches, seed=seed, shuffle=hp.shuffle)
        workers = self.hparams.num_workers
        return ResumableDataLoader(pairs, batch_sampler=batches, collate_fn=collate_pairs, num_workers=workers,
                                   persistent_workers=workers > 0, position=self._train_position)

    def _train_position(self) -> tuple[int, bool]:
        """(training batches taken in the current epoch, whether the epoch is finished), from the trainer."""
        trainer = self.trainer
        if trainer is None:
            return 0, False
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return done, done >= trainer.num_training_batches

    @override
    def val_dataloader(self) -> DataLoader:
        batch_size = self.hparams.eval_batch_size or self.hparams.batch_size
        return self._loader(self._pairs("val"), batch_size, shuffle=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    @override
    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def _pairs(self, split: str) -> list[TokenizedPair]:
        pairs = self.train_pairs if split == "train" else self.val_pairs
        if pairs is None:
            raise RuntimeError("PreferenceDataModule.setup() must run before its dataloaders are requested")
        return pairs

    def _loader(self, pairs: list[TokenizedPair], batch_size: int, **kwargs: Any) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(pairs, batch_size=batch_size, collate_fn=collate_pairs, num_workers=workers,
                          persistent_workers=workers > 0, **kwargs)


def split_pairs(
    pairs: list[TokenizedPair], val_fraction: float, seed: int
) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """Hold out ``round(n * val_fraction)`` pairs (at least one, and never all) chosen by a seeded permutation.

    Both parts keep the source order; the same seed always gives the same split, whatever the worker count.
    """
    n = len(pairs)
    n_val = 0 if val_fraction <= 0 or n < 2 else min(max(round(n * val_fraction), 1), n - 1)
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = set(permutation[:n_val])
    train = [pair for index, pair in enumerate(pairs) if index not in held_out]
    val = [pair for index, pair in enumerate(pairs) if index in held_out]
    return train, val


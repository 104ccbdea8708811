"""PreferenceDataModule: preference pairs from a file or HF dataset, tokenised once, served as PairBatch.

Rows are read, validated (:mod:`inspo.data.formats`), tokenised and truncated (:mod:`inspo.data.tokenize`) once in
:meth:`PreferenceDataModule.setup`; batches carry plain token-id lists, and the layout (``inspo.layout``) turns
them into model rows. Rows are validated before any model is loaded (:mod:`inspo.data.validate`): by default any
bad row stops setup with a :class:`~inspo.errors.DataError` naming file, rows, field and reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from transformers import PreTrainedTokenizerBase
from typing_extensions import override

import inspo
from inspo.data.formats import read_rows
from inspo.data.options import DataSource, LoaderOptions, ReadOptions
from inspo.data.sampler import EvenShards, LengthBucketBatchSampler, ResumableDataLoader
from inspo.data.tokenize import TokenizedPair, has_chat_template
from inspo.data.validate import DataReport, read_pairs
from inspo.errors import ConfigError, DataError
from inspo.models import BUNDLED_SMOLLM2, load_tokenizer, resolve_model

log = logging.getLogger("inspo")

PREDICT_SPLITS = ("train", "val")
"""The splits ``predict_dataloader`` serves, one loader each, in this order."""
TRAIN_FINGERPRINT = "train_pairs_sha256"
"""The key of :meth:`PreferenceDataModule.state_dict` (Lightning saves it under the datamodule's class name)."""


BUNDLED_DATA = {"prefs": "prefs.jsonl", "verifiable": "verifiable/train.jsonl"}
"""``data.source.path: bundled:NAME``: the preference files shipped in ``inspo/assets`` (readable from any folder)."""


def bundled_dataset(name: str = "prefs") -> Path:
    """The offline preference data shipped with the package: the hand-written pairs or the verifiable set."""
    if name not in BUNDLED_DATA:
        raise ConfigError(f"data.source.path: unknown bundled dataset 'bundled:{name}'; choose from "
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
        repeats: None, or per pair whether it only fills up a rank's evaluation shard (:class:`EvenShards`):
            scored like the others, so the ranks stay in step, but left out of metrics and predictions.
    """

    prompt: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    rows: list[int]
    repeats: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def counted(self) -> list[bool] | None:
        """Per pair whether it counts in metrics and predictions; None when all do."""
        return None if self.repeats is None or not any(self.repeats) else [not r for r in self.repeats]


def collate_pairs(pairs: list[TokenizedPair]) -> PairBatch:
    """Collate tokenised pairs into a :class:`PairBatch` (module level, so DataLoader workers can pickle it)."""
    return PairBatch(
        prompt=[pair.prompt for pair in pairs],
        chosen=[pair.chosen for pair in pairs],
        rejected=[pair.rejected for pair in pairs],
        rows=[pair.row for pair in pairs],
    )


class EvalPairs(Dataset):
    """The pairs of an evaluation split as ``(pair, repeat)``: index i < N is pair i; the indices N and above that
    :class:`EvenShards` hands out to even the ranks' shards serve pair i - N again, marked as a repeat."""

    def __init__(self, pairs: list[TokenizedPair]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[TokenizedPair, bool]:
        return self.pairs[index % len(self.pairs)], index >= len(self.pairs)


def collate_eval_pairs(items: list[tuple[TokenizedPair, bool]]) -> PairBatch:
    """Collate :class:`EvalPairs` items into a :class:`PairBatch` that knows its repeats."""
    batch = collate_pairs([pair for pair, _ in items])
    batch.repeats = [repeat for _, repeat in items]
    return batch


class PreferenceDataModule(LightningDataModule):
    """Preference pairs for training and validation.

    Its options come in three groups (:mod:`inspo.data.options`): ``data.source`` (where the pairs come from and
    which are held out), ``data.read`` (how rows become pairs) and ``data.loader`` (how batches are served).
    """

    def __init__(
        self,
        tokenizer: str = BUNDLED_SMOLLM2,
        # Frozen dataclasses, so a shared default instance is safe; jsonargparse lists their fields in --help.
        source: DataSource = DataSource(),  # noqa: B008
        read: ReadOptions = ReadOptions(),  # noqa: B008
        loader: LoaderOptions = LoaderOptions(),  # noqa: B008
    ) -> None:
        """Configure the data; nothing is read until :meth:`setup`.

        Args:
            tokenizer: the tokenizer's model name (the CLI links ``model.model`` here).
            source: data.source: where the pairs come from (a file, a bundled set or a HF dataset) and which are
                held out for validation.
            read: data.read: how rows become pairs (field names, chat template, truncation, bad and duplicate rows).
            loader: data.loader: batch sizes, workers and the order of the training pairs.
        """
        super().__init__()
        # Frozen and checked in __post_init__; plain dicts in the saved hparams, so checkpoints load with
        # weights_only and name the options as the YAML does (data.read.max_length -> hparams["read"]["max_length"]).
        self.source, self.read, self.loader = source, read, loader
        self.save_hyperparameters({"tokenizer": tokenizer, "source": asdict(source), "read": asdict(read),
                                   "loader": asdict(loader)})
        self.train_pairs: list[TokenizedPair] | None = None
        self.val_pairs: list[TokenizedPair] | None = None
        self.stats: dict[str, int] = {}
        self.reports: list[DataReport] = []
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._fingerprint: str | None = None

    def token_settings(self) -> dict[str, Any]:
        """The settings that decide a pair's token ids besides its text (part of the reference cache's key)."""
        return {"tokenizer": self.hparams.tokenizer, "chat_template": self.read.chat_template,
                "max_length": self.read.max_length, "max_prompt_length": self.read.max_prompt_length}

    def get_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer named by ``tokenizer``, loaded once (kept out of the state dict)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.hparams.tokenizer)
        return self._tokenizer

    @override
    def prepare_data(self) -> None:
        # Runs once per node before setup: convert a GGUF tokenizer and download a hub dataset into the caches.
        resolve_model(self.hparams.tokenizer)
        if self.source.dataset is not None:
            self._load_hf_dataset()

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_pairs is not None:
            return
        tokenizer, options, val_path = self.get_tokenizer(), self.read, self.source.val_path
        if options.chat_template and not has_chat_template(tokenizer):
            log.info("tokenizer %s has no chat template: prompts are used as plain text", self.hparams.tokenizer)
        source, rows = self._main_rows()
        pairs, report = read_pairs(source, rows, tokenizer, options)
        self.reports = [report]
        if val_path is not None:
            val_pairs, val_report = read_pairs(val_path, read_rows(val_path, keep_going=True), tokenizer, options)
            self.reports.append(val_report)
            train_pairs = pairs
            shared = shared_prompts(train_pairs, val_pairs)
            if shared:
                log.warning("data: %d of %d validation pairs (%s) have a prompt of the training data (%s): their "
                            "validation metrics measure fit to trained prompts, not generalisation", shared,
                            len(val_pairs), val_path, source)
        else:
            train_pairs, val_pairs = split_pairs(pairs, self.source.val_fraction, self.source.seed)
        self.train_pairs, self.val_pairs = train_pairs, val_pairs
        stats = Counter[str]()
        for one in self.reports:
            stats.update(one.stats())
        self.stats = {**stats, "train": len(train_pairs), "val": len(val_pairs)}
        log.info("data: train=%d val=%d (source %s)", len(train_pairs), len(val_pairs), source)

    def train_fingerprint(self) -> str:
        """SHA-256 of the training pairs (row numbers and token ids, in split order), reading the data if needed: a
        mid-epoch resume checks it against the checkpoint's (:func:`inspo.checkpoints.check_same_pairs`), so an
        edited data file cannot silently shift the rest of the epoch."""
        self.setup("fit")
        if self._fingerprint is None:  # the pairs never change once read
            digest = hashlib.sha256()
            for pair in self._pairs("train"):
                digest.update(json.dumps([pair.row, pair.prompt, pair.chosen, pair.rejected]).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    @override
    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the fingerprint of the training pairs (nothing before the data is read)."""
        return {TRAIN_FINGERPRINT: self.train_fingerprint()} if self.train_pairs is not None else {}

    def _main_rows(self) -> tuple[str, Iterable[tuple[int, Any]]]:
        source = self.source
        if source.dataset is not None:
            return source.dataset, enumerate(self._load_hf_dataset(), start=1)
        path = source.path if source.path is not None else "bundled:prefs"
        if path.startswith("bundled:"):
            path = str(bundled_dataset(path.removeprefix("bundled:")))
        return path, read_rows(path, keep_going=True)  # unreadable lines are counted, not fatal, under skip

    def _load_hf_dataset(self) -> Iterable[Any]:
        import datasets

        source = self.source
        try:
            return datasets.load_dataset(source.dataset, source.dataset_config, split=source.split)
        except (OSError, ValueError, ConnectionError) as err:  # DatasetNotFoundError is a FileNotFoundError
            raise DataError(f"cannot load dataset {source.dataset!r} (config {source.dataset_config!r}, split "
                            f"{source.split!r}): {err}") from None

    @override
    def train_dataloader(self) -> DataLoader:
        """Shuffled, length-bucketed batches (``inspo.data.sampler``) from a loader that checkpoints its position.

        With ``data.loader.shuffle: false`` the batches follow the dataset's order instead.

        One process shuffles with a one-replica DistributedSampler; under DDP/FSDP Lightning puts in one per rank
        with the same seed, so the pairs of a global batch do not depend on the number of processes.
        """
        loader, pairs = self.loader, self._pairs("train")
        seed = self.source.seed if loader.order_seed is None else loader.order_seed
        if not loader.shuffle:
            log.info("data.loader.shuffle is false: training batches follow the dataset's order (no length bucketing)")
        sampler = DistributedSampler(pairs, num_replicas=1, rank=0, shuffle=loader.shuffle, seed=seed)
        batches = LengthBucketBatchSampler(sampler, loader.batch_size, lengths=[pair.longest for pair in pairs],
                                           bucket_batches=loader.bucket_batches, seed=seed, shuffle=loader.shuffle)
        workers = loader.num_workers
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
        return self._eval_loader("val")

    @override
    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    @override
    def predict_dataloader(self) -> list[DataLoader]:
        """Every pair, in source order: one loader per split of :data:`PREDICT_SPLITS` (``inspo predict`` names each
        line by it; ``--data.source.val_fraction 0`` scores a whole file as ``train``)."""
        return [self._eval_loader(split) for split in PREDICT_SPLITS]

    def _eval_loader(self, split: str) -> DataLoader:
        """The pairs of ``split`` in source order (both splits keep it), in evaluation batches; under several
        processes each rank scores its :class:`EvenShards` shard, so every pair counts exactly once."""
        pairs = EvalPairs(self._pairs(split))
        shards = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        workers = self.loader.num_workers
        return DataLoader(pairs, batch_size=self.loader.eval_batch_size or self.loader.batch_size,
                          sampler=EvenShards(pairs, **(shards or {})), collate_fn=collate_eval_pairs,
                          num_workers=workers, persistent_workers=workers > 0)

    def _pairs(self, split: str) -> list[TokenizedPair]:
        pairs = self.train_pairs if split == "train" else self.val_pairs
        if pairs is None:
            raise RuntimeError("PreferenceDataModule.setup() must run before its dataloaders are requested")
        return pairs


def split_pairs(
    pairs: list[TokenizedPair], val_fraction: float, seed: int
) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """Hold out about ``round(n * val_fraction)`` pairs (at least one, never all), whole prompts at a time.

    Every pair of a prompt lands in the same split, so validation never scores a prompt that was trained on.
    Prompts, in the order they first appear, are taken in a seeded permutation until that many pairs are held out
    (at most one prompt's pairs more; the last prompt of the permutation always trains): with one pair per prompt,
    exactly that many. Both parts keep the source order; the same seed always gives the same split.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, pair in enumerate(pairs):
        groups.setdefault(tuple(pair.prompt), []).append(index)
    members, n = list(groups.values()), len(pairs)
    n_val = 0 if val_fraction <= 0 or len(members) < 2 else min(max(round(n * val_fraction), 1), n - 1)
    permutation = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out: set[int] = set()
    for group in permutation[:-1]:
        if len(held_out) >= n_val:
            break
        held_out.update(members[group])
    train = [pair for index, pair in enumerate(pairs) if index not in held_out]
    val = [pair for index, pair in enumerate(pairs) if index in held_out]
    return train, val


def shared_prompts(train: list[TokenizedPair], val: list[TokenizedPair]) -> int:
    """How many validation pairs have a prompt that some training pair has too."""
    trained = {tuple(pair.prompt) for pair in train}
    return sum(tuple(pair.prompt) in trained for pair in val)

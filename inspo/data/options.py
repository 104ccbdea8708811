"""The data options, in three groups: where the pairs come from, how rows become pairs, how batches are served.

Each group is a frozen dataclass checked in ``__post_init__`` (one :class:`~inspo.errors.ConfigError` line naming the
option), and an init argument of :class:`~inspo.data.datamodule.PreferenceDataModule`. On the command line and in
YAML each field sits under its group (jsonargparse shows the ``Attributes`` lines below in ``inspo fit --help``)::

    data:
      tokenizer: ...          # linked from model.model by the CLI
      source: {path: bundled:verifiable, val_fraction: 0.1, seed: 42}
      read: {max_length: 384, max_prompt_length: 192, max_pairs: 213}
      loader: {batch_size: 4}

    inspo fit --config configs/tiny.yaml --data.source.path my.jsonl --data.read.max_length 1024 \\
        --data.loader.batch_size 8

:class:`ReadOptions` is exactly what :func:`~inspo.data.validate.read_pairs` needs, so scripts and tests that read
rows without a datamodule use the same object and the same defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from inspo.data.tokenize import check_lengths
from inspo.errors import ConfigError

OnInvalid = Literal["error", "skip"]
Duplicates = Literal["keep", "drop"]


@dataclass(frozen=True)
class DataSource:
    """Where the pairs come from, and which of them are held out for validation.

    Attributes:
        path: a local .jsonl, .json or .parquet file, or ``bundled:prefs`` (the hand-written pairs in
            ``inspo/assets/prefs.jsonl``, the default when neither path nor dataset is given) or
            ``bundled:verifiable`` (the on-policy verifiable pairs, ``inspo/assets/verifiable``).
        dataset: a Hugging Face ``datasets`` name or a local dataset folder, loaded with
            ``datasets.load_dataset(dataset, dataset_config, split=split)``.
        dataset_config: the dataset configuration name, if it has several.
        split: the dataset split to read.
        val_path: an explicit validation file instead of a split of the training data (a warning names how many of
            its pairs have a prompt that training has too).
        val_fraction: fraction of the pairs held out for validation, whole prompts at a time: the pairs of a prompt
            are all trained on or all held out (ignored when val_path is given).
        seed: seed of the validation split and (unless ``data.loader.order_seed`` is set) of the training order.
    """

    path: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    val_path: str | None = None
    val_fraction: float = 0.1
    seed: int = 42

    def __post_init__(self) -> None:
        if self.path is not None and self.dataset is not None:
            raise ConfigError("give either data.source.path or data.source.dataset, not both")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.source.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class ReadOptions:
    """How rows become pairs: fields, chat template, truncation and the policy for bad rows (``inspo.data.validate``).

    Attributes:
        prompt_field: the field holding the prompt: a string or a list of chat messages.
        chosen_field: the field holding the preferred response: a string or a list of messages.
        rejected_field: the field holding the dispreferred response: a string or a list of messages.
        chat_template: render prompts with the tokenizer's chat template (if it has one).
        max_length: token budget of the longest conditioned sequence, prompt + both responses.
        max_prompt_length: the prompt is cut from the left, but never below this many tokens.
        max_pairs: use only the first N valid pairs of each source (quick runs).
        on_invalid: ``error`` stops at setup if any row is invalid, naming file, rows, field and reason;
            ``skip`` drops invalid rows and logs the counts.
        min_valid_fraction: with ``on_invalid: skip``, stop anyway if fewer than this fraction of rows is valid.
        duplicates: ``keep`` or ``drop`` rows repeating an earlier (prompt, chosen, rejected); counted either way.
    """

    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    chat_template: bool = True
    max_length: int = 512
    max_prompt_length: int = 256
    max_pairs: int | None = None
    on_invalid: OnInvalid = "error"
    min_valid_fraction: float = 0.9
    duplicates: Duplicates = "keep"

    def __post_init__(self) -> None:
        check_lengths(self.max_length, self.max_prompt_length)
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ConfigError(f"data.read.max_pairs must be at least 1, got {self.max_pairs}")
        if not 0.0 <= self.min_valid_fraction <= 1.0:
            raise ConfigError(f"data.read.min_valid_fraction must be in [0, 1], got {self.min_valid_fraction}")
        # jsonargparse checks these Literals on the command line; a Python caller gets the same one line.
        for name, kind in (("on_invalid", OnInvalid), ("duplicates", Duplicates)):
            if getattr(self, name) not in get_args(kind):
                raise ConfigError(f"data.read.{name}: invalid value {getattr(self, name)!r}; choose one of: "
                                  + ", ".join(get_args(kind)))


@dataclass(frozen=True)
class LoaderOptions:
    """How the pairs are served: batch sizes, workers, and the order of the training pairs (``inspo.data.sampler``).

    Attributes:
        batch_size: pairs per training batch (per device).
        eval_batch_size: pairs per validation/test/predict batch; defaults to batch_size.
        num_workers: DataLoader worker processes.
        shuffle: false trains on the pairs in the dataset's order, every epoch (no shuffling and no length
            bucketing: ``bucket_batches`` is ignored), e.g. to follow another trainer step by step. The validation
            pairs are still held out by ``data.source.seed``; ``val_fraction: 0`` or ``val_path`` keeps every row for
            training. Under DDP rank r takes pairs r, r + R, ...: a global batch is consecutive pairs.
        bucket_batches: training batches per length bucket: the shuffled order is cut into windows of this many
            batches, each sorted by pair length, so a batch pads and packs little; 1 keeps plain shuffled batches.
        order_seed: seed of the training order only: runs that differ in it train on the same split in another
            order (seeds of an experiment); default: ``data.source.seed``.
    """

    batch_size: int = 4
    eval_batch_size: int | None = None
    num_workers: int = 0
    shuffle: bool = True
    bucket_batches: int = 16
    order_seed: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"data.loader.batch_size must be at least 1, got {self.batch_size}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ConfigError(f"data.loader.eval_batch_size must be at least 1, got {self.eval_batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"data.loader.num_workers must be >= 0, got {self.num_workers}")
        if self.bucket_batches < 1:
            raise ConfigError(f"data.loader.bucket_batches must be at least 1, got {self.bucket_batches}")

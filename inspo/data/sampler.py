"""Length-bucketed training batches: pairs of similar length share a batch, so rows need little padding.

The order of the pairs still comes from an ordinary sampler (on one device a one-replica ``DistributedSampler``; under
DDP/FSDP Lightning swaps in a ``DistributedSampler`` per rank, which shards a permutation of the same seed and epoch, so
with ``bucket_batches=1`` the union of the ranks' batches at step t is the one-process batch of the same global size):
that stream is cut into windows of
``bucket_batches * batch_size`` pairs, each window is sorted by length and cut into batches, and the batches of a
window are served in a shuffled order. This is the "mega-batch" grouping of Megatron and HF's
``group_by_length``: batches stay random across windows, padding within a batch is small, and the order is a pure
function of the seed and the epoch (resumes and reruns see the same batches).

Resuming mid-epoch: :class:`ResumableDataLoader` is a DataLoader with ``state_dict()``/``load_state_dict()`` (Lightning
saves them in every checkpoint): the epoch and how many of its batches the training loop has taken. A restored
loader serves the same epoch's batches from the next one on, so a resumed run sees exactly the pairs that the
interrupted run would have seen.

Validation, test and predict under several processes: :class:`EvenShards` gives each rank every R-th pair and
fills the short shards up with repeats that the module does not count (see its docstring).

``shuffle=False`` serves the pairs in the dataset's order: the inner sampler does not permute (also the
``DistributedSampler`` Lightning puts in under DDP, which it always creates shuffling, so the ranks take every
R-th pair and a global batch is R consecutive pairs), and no window is sorted or reordered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler


class LengthBucketBatchSampler(BatchSampler):
    """Batches of indices from ``sampler``, grouped by ``lengths`` within windows of ``bucket_batches`` batches.

    Args:
        sampler: yields dataset indices in training order (shuffled, and sharded under DDP).
        batch_size: indices per batch.
        drop_last: drop the last, smaller batch of the epoch.
        lengths: the length of every dataset item (e.g. P + W + L tokens of a pair).
        bucket_batches: batches per sorted window; 1 keeps the sampler's batches unchanged.
        seed: seed of the shuffled batch order inside each window (combined with the epoch); a DistributedSampler
            given as ``sampler`` (Lightning injects one per rank) takes this seed too, so the pair order does not
            depend on the global seed or the number of processes.
        shuffle: False keeps the dataset's order: a DistributedSampler given as ``sampler`` stops shuffling and
            ``bucket_batches`` is taken as 1 (sorting a window by length would reorder it).
    """

    def __init__(
        self,
        sampler: Sampler[int] | Sequence[int],
        batch_size: int,
        drop_last: bool = False,
        lengths: Sequence[int] = (),
        bucket_batches: int = 16,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        if bucket_batches < 1:
            raise ValueError(f"bucket_batches must be >= 1, got {bucket_batches}")
        self.lengths = list(lengths)
        self.bucket_batches = bucket_batches if shuffle else 1
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, batches): resume point of a restored loader
        if isinstance(sampler, DistributedSampler):
            sampler.seed = seed
            if not shuffle:  # Lightning's per-rank replacement is always created with shuffle=True for training
                sampler.shuffle = False

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at every epoch; forwarded to the inner sampler (a DistributedSampler needs it)."""
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def resume_at(self, epoch: int, batches: int) -> None:
        """The next iteration serves epoch ``epoch`` without its first ``batches`` batches (once)."""
        self.set_epoch(epoch)
        self._skip = (epoch, batches)

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, None
        batches = self._epoch_batches()
        if skip is not None and skip[0] == self.epoch:
            for _ in range(skip[1]):
                if next(batches, None) is None:
                    return
        yield from batches

    def _epoch_batches(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        window: list[int] = []
        for index in self.sampler:
            window.append(index)
            if len(window) == self.batch_size * self.bucket_batches:
                yield from self._window_batches(window, generator)
                window = []
        if window:
            yield from self._window_batches(window, generator)

    def _window_batches(self, window: list[int], generator: torch.Generator) -> Iterator[list[int]]:
        if self.bucket_batches > 1:
            window = sorted(window, key=lambda i: self.lengths[i])  # stable: ties keep the sampler's order
        batches = [window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size)]
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        order = torch.randperm(len(batches), generator=generator).tolist() if self.bucket_batches > 1 else None
        yield from (batches[b] for b in order) if order is not None else batches


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`LengthBucketBatchSampler` whose position Lightning saves and restores.

    Args:
        *args: DataLoader arguments; ``batch_sampler`` must be a :class:`LengthBucketBatchSampler`.
        position: returns (batches of the current epoch the training loop has taken, whether that epoch is
            finished); the datamodule reads the trainer's progress, so batches the loader prefetched but training
            has not used are not counted. None counts the batches this loader has yielded.
        **kwargs: DataLoader keyword arguments.
    """

    def __init__(self, *args: Any, position: Callable[[], tuple[int, bool]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position
        self._yielded = 0

    def __iter__(self) -> Iterator[Any]:
        sampler = self.batch_sampler
        self._yielded = sampler._skip[1] if isinstance(sampler, LengthBucketBatchSampler) and sampler._skip else 0
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": E, "batches": B}``: B batches of epoch E have been trained on (a finished epoch: E + 1, 0)."""
        sampler = self.batch_sampler
        epoch = sampler.epoch if isinstance(sampler, LengthBucketBatchSampler) else 0
        done, finished = self.position() if self.position is not None else (self._yielded, False)
        return {"epoch": epoch + 1, "batches": 0} if finished else {"epoch": epoch, "batches": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue epoch ``state["epoch"]`` after its first ``state["batches"]`` batches."""
        sampler = self.batch_sampler
        if not isinstance(sampler, LengthBucketBatchSampler):
            raise TypeError("ResumableDataLoader.load_state_dict needs a LengthBucketBatchSampler as batch_sampler")
        sampler.resume_at(int(state["epoch"]), int(state["batches"]))


class EvenShards(DistributedSampler):
    """Evaluation shards that score every pair exactly once and keep the ranks in step.

    Lightning's own choices fail one way each when the pairs do not divide by the number of ranks R: its validation
    sampler repeats pairs to even the shards, and the repeats then count twice in the validation metrics; its predict
    sampler does not repeat, so the ranks run different numbers of batches, and under FSDP the ranks that finished
    first leave the others waiting forever in a parameter all-gather. Here rank r takes positions r, r + R, ... of
    ``range(R * ceil(N / R))`` in order: positions below N are the pairs, in source order, and the few at N and
    above (the last one of some shards) are repeats that :class:`inspo.data.datamodule.EvalPairs` marks, so the
    ranks run the same batches and the module weighs the repeats 0. A ``DistributedSampler``, so Lightning keeps it.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

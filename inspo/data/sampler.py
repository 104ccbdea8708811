"""Length-bucketed training batches: pairs of similar length share a batch, so rows need little padding.

The order of the pairs still comes from an ordinary sampler (a seeded ``RandomSampler`` on one device; under DDP
Lightning swaps in a ``DistributedSampler``, which shards by rank): that stream is cut into windows of
``bucket_batches * batch_size`` pairs, each window is sorted by length and cut into batches, and the batches of a
window are served in a shuffled order. This is the "mega-batch" grouping of Megatron and HF's
``group_by_length``: batches stay random across windows, padding within a batch is small, and the order is a pure
function of the seed and the epoch (resumes and reruns see the same batches).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, Sampler


class LengthBucketBatchSampler(BatchSampler):
    """Batches of indices from ``sampler``, grouped by ``lengths`` within windows of ``bucket_batches`` batches.

    Args:
        sampler: yields dataset indices in training order (shuffled, and sharded under DDP).
        batch_size: indices per batch.
        drop_last: drop the last, smaller batch of the epoch.
        lengths: the length of every dataset item (e.g. P + W + L tokens of a pair).
        bucket_batches: batches per sorted window; 1 keeps the sampler's batches unchanged.
        seed: seed of the shuffled batch order inside each window (combined with the epoch).
    """

    def __init__(
        self,
        sampler: Sampler[int] | Sequence[int],
        batch_size: int,
        drop_last: bool = False,
        lengths: Sequence[int] = (),
        bucket_batches: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        if bucket_batches < 1:
            raise ValueError(f"bucket_batches must be >= 1, got {bucket_batches}")
        self.lengths = list(lengths)
        self.bucket_batches = bucket_batches
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at every epoch; forwarded to the inner sampler (a DistributedSampler needs it)."""
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
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

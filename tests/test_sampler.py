"""Length-bucketed training batches: every pair once, similar lengths together, determinism, DDP re-sharding."""

from __future__ import annotations

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

from inspo.data.sampler import LengthBucketBatchSampler

LENGTHS = torch.randint(1, 500, (103,), generator=torch.Generator().manual_seed(0)).tolist()


def batches(seed: int = 0, epoch: int = 0, bucket_batches: int = 4, drop_last: bool = False) -> list[list[int]]:
    sampler = RandomSampler(range(len(LENGTHS)), generator=torch.Generator().manual_seed(seed))
    out = LengthBucketBatchSampler(sampler, 5, drop_last, lengths=LENGTHS, bucket_batches=bucket_batches, seed=seed)
    out.set_epoch(epoch)
    return list(out)


def padding(bs: list[list[int]]) -> int:
    return sum(max(LENGTHS[i] for i in b) * len(b) - sum(LENGTHS[i] for i in b) for b in bs)


def test_every_pair_once_and_batch_sizes():
    bs = batches()
    assert sorted(i for b in bs for i in b) == list(range(len(LENGTHS)))
    assert [len(b) for b in bs].count(5) == len(LENGTHS) // 5 and len(bs) == 21
    dropped = batches(drop_last=True)
    assert len(dropped) == 20 and all(len(b) == 5 for b in dropped)


def test_buckets_cut_padding_and_keep_batches_random():
    plain = batches(bucket_batches=1)
    bucketed = batches(bucket_batches=8)
    assert padding(bucketed) < 0.5 * padding(plain)
    firsts = [LENGTHS[b[0]] for b in bucketed[:8]]
    assert firsts != sorted(firsts)  # batches of a window are served shuffled, not short to long


def test_bucket_batches_1_is_the_plain_shuffled_batching():
    sampler = RandomSampler(range(len(LENGTHS)), generator=torch.Generator().manual_seed(0))
    assert batches(bucket_batches=1) == list(BatchSampler(sampler, 5, False))


def test_order_is_a_function_of_seed_and_epoch():
    assert batches(seed=1) == batches(seed=1)
    assert batches(seed=1) != batches(seed=2)
    assert batches(seed=1, epoch=0) != batches(seed=1, epoch=1)


def test_lightning_ddp_replaces_the_inner_sampler():
    """Under DDP Lightning re-creates a custom batch sampler around a DistributedSampler: each rank gets its half."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader

    data = list(range(len(LENGTHS)))
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(0))
        loader = DataLoader(data, batch_sampler=LengthBucketBatchSampler(sampler, 5, lengths=LENGTHS))
    seen = []
    for rank in range(2):
        shard = _update_dataloader(loader, DistributedSampler(data, num_replicas=2, rank=rank, seed=0))
        assert isinstance(shard.batch_sampler, LengthBucketBatchSampler)
        seen.append([int(i) for b in shard for i in b])
    assert len(seen[0]) == len(seen[1]) == 52  # 103 pairs: DistributedSampler repeats one to even the shards
    assert set(seen[0]) | set(seen[1]) == set(data) and len(set(seen[0]) & set(seen[1])) <= 1

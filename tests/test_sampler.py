"""Length-bucketed training batches: every pair once, similar lengths together, determinism, DDP re-sharding;
``data.loader.shuffle: false`` keeps the dataset's order, on one process, under DDP and across an exact resume."""

from __future__ import annotations

import json

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

from inspo.data.datamodule import EvalPairs, PreferenceDataModule, collate_eval_pairs
from inspo.data.options import DataSource, LoaderOptions
from inspo.data.sampler import EvenShards, LengthBucketBatchSampler
from inspo.data.tokenize import TokenizedPair
from inspo.module import PreferenceModule
from tests.helpers import TINY_CONFIG

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


def lightning_ddp_shards(shuffle: bool = True) -> list[list[list[int]]]:
    """Each of 2 ranks' batches after Lightning re-creates our batch sampler around its DistributedSampler (which it
    always creates with shuffle=True for training)."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader

    data = list(range(len(LENGTHS)))
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(0))
        loader = DataLoader(data, batch_sampler=LengthBucketBatchSampler(sampler, 5, lengths=LENGTHS, shuffle=shuffle))
    shards = []
    for rank in range(2):
        shard = _update_dataloader(loader, DistributedSampler(data, num_replicas=2, rank=rank, seed=0, shuffle=True))
        assert isinstance(shard.batch_sampler, LengthBucketBatchSampler)
        shards.append([[int(i) for i in b] for b in shard])
    return shards


def test_lightning_ddp_replaces_the_inner_sampler():
    """Under DDP Lightning re-creates a custom batch sampler around a DistributedSampler: each rank gets its half."""
    data = list(range(len(LENGTHS)))
    seen = [[i for b in shard for i in b] for shard in lightning_ddp_shards()]
    assert len(seen[0]) == len(seen[1]) == 52  # 103 pairs: DistributedSampler repeats one to even the shards
    assert set(seen[0]) | set(seen[1]) == set(data) and len(set(seen[0]) & set(seen[1])) <= 1


# ---------------------------------------------------------------- data.loader.shuffle: false


def test_shuffle_false_serves_the_dataset_order_even_from_a_shuffling_sampler():
    """The datamodule's own sampler and Lightning's DDP replacement are DistributedSamplers; shuffle=False stops
    their permutation and the window sorting (bucket_batches 4 here), every epoch."""
    data = list(range(len(LENGTHS)))
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    batches = LengthBucketBatchSampler(sampler, 5, lengths=LENGTHS, bucket_batches=4, shuffle=False)
    in_order = [data[i : i + 5] for i in range(0, len(data), 5)]
    assert list(batches) == in_order
    batches.set_epoch(3)
    assert list(batches) == in_order


def test_shuffle_false_under_ddp_makes_each_global_batch_consecutive_pairs():
    """Rank r takes pairs r, r + 2, ...: at step t the two ranks' batches are pairs 10t .. 10t + 9."""
    rank0, rank1 = lightning_ddp_shards(shuffle=False)
    assert rank0[:3] == [[0, 2, 4, 6, 8], [10, 12, 14, 16, 18], [20, 22, 24, 26, 28]]
    for step, (a, b) in enumerate(zip(rank0[:10], rank1[:10])):
        assert sorted(a + b) == list(range(10 * step, 10 * step + 10))


def write_rows(tmp_path, n: int = 30):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "x" * (17 * i % 23 + 1), "chosen": f"It is {i}.", "rejected": "No idea."} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_datamodule_shuffle_false_trains_in_file_order(tmp_path):
    """Prompt lengths vary (bucketing would reorder them); with val_fraction 0 every row trains, in file order."""
    dm = PreferenceDataModule(source=DataSource(path=write_rows(tmp_path), val_fraction=0.0),
                              loader=LoaderOptions(batch_size=4, shuffle=False))
    dm.setup("fit")
    assert [batch.rows for batch in dm.train_dataloader()] == [list(range(i, min(i + 4, 31))) for i in range(1, 31, 4)]
    shuffled = PreferenceDataModule(source=DataSource(path=write_rows(tmp_path), val_fraction=0.0),
                                    loader=LoaderOptions(batch_size=4))
    shuffled.setup("fit")
    assert [row for batch in shuffled.train_dataloader() for row in batch.rows] != list(range(1, 31))


class RecordRows(Callback):
    def __init__(self) -> None:
        self.rows: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rows.append(list(batch.rows))


def fit_rows(tmp_path, path: str, ckpt_path: str | None = None) -> list[list[int]]:
    """Rows of each training batch of a 5-step run of a tiny model (checkpoints every 2 steps in tmp_path/ckpt)."""
    record = RecordRows()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    trainer = Trainer(accelerator="cpu", max_steps=5, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
                      callbacks=[record, checkpoint])
    datamodule = PreferenceDataModule(source=DataSource(path=path, val_fraction=0.0),
                                      loader=LoaderOptions(batch_size=2, shuffle=False))
    trainer.fit(PreferenceModule(random_init=TINY_CONFIG, export_dir=None), datamodule=datamodule, ckpt_path=ckpt_path)
    return record.rows


def test_shuffle_false_resumes_exactly_in_file_order(tmp_path):
    path = write_rows(tmp_path, n=12)
    full = fit_rows(tmp_path, path)
    assert full == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]
    resumed = fit_rows(tmp_path / "again", path, ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=2.ckpt"))
    assert resumed == full[2:]


def test_even_shards_score_every_pair_once_in_equal_shards() -> None:
    """Every rank runs the same number of pairs; leaving out the repeats, the ranks' shards are the pairs, each once."""
    for n in range(9):
        for ranks in range(1, 5):
            pairs = EvalPairs([TokenizedPair([1], [2], [3], row) for row in range(1, n + 1)])
            shards = [[pairs[i] for i in EvenShards(pairs, ranks, rank)] for rank in range(ranks)]
            assert len({len(shard) for shard in shards}) == 1 and len(shards[0]) == -(-n // ranks)
            rows = sorted(pair.row for shard in shards for pair, repeat in shard if not repeat)
            assert rows == list(range(1, n + 1)), (n, ranks)
            assert all(repeat == (shard.index((pair, repeat)) == len(shard) - 1 and rank >= n % ranks > 0)
                       for rank, shard in enumerate(shards) for pair, repeat in shard)


def test_eval_batches_mark_their_repeats() -> None:
    pairs = EvalPairs([TokenizedPair([1], [2], [3], 7), TokenizedPair([4], [5], [6], 8)])
    assert isinstance(EvenShards(pairs, 2, 1), DistributedSampler)  # so Lightning does not put in its own
    batch = collate_eval_pairs([pairs[1], pairs[2]])
    assert batch.rows == [8, 7] and batch.repeats == [False, True] and batch.counted() == [True, False]
    assert collate_eval_pairs([pairs[0], pairs[1]]).counted() is None

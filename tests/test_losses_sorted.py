"""The batch-sorting AOT losses (inspo.losses.sorted_batch): gradient accumulation is refused with one line, and under
data parallelism the sort is over the global batch with the global loss's gradients (2 gloo processes, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.testing import assert_close

from inspo.errors import ConfigError
from inspo.losses import LOSSES, PairLogps

SORTING = ["aot", "aot_unpaired"]
SPLIT = (3, 4)  # pairs of rank 0 and rank 1: uneven, as a last batch can be


def test_gradient_accumulation_is_refused_in_one_line(capsys, tmp_path: Path) -> None:
    """A micro-batch would sort only its part of the batch: ``inspo fit`` stops at fit start, before any step,
    naming the option (after Lightning's start-up INFO lines). aot_unpaired shares the check (next test)."""
    from tests.helpers import run_main  # here: the spawned ranks of the last test import this file, keep that light

    code, err = run_main(capsys, tmp_path, "--model.loss", "aot", "--trainer.accumulate_grad_batches", "2")
    expected = ("inspo: error: AOTLoss sorts log-ratios across the whole batch, but with trainer.accumulate_grad_batches"
                "=2 each micro-batch sees only its part: set trainer.accumulate_grad_batches 1 (raise "
                "data.loader.batch_size instead)")
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1] == expected and "Traceback" not in err
    assert all(line.startswith("INFO") for line in lines[:-1])
    assert not list(tmp_path.rglob("*.ckpt"))


def test_other_losses_accept_gradient_accumulation() -> None:
    """The hook is the sorting losses' own: every other loss lets any trainer through."""
    trainer = type("Trainer", (), {"accumulate_grad_batches": 4})()
    for name in sorted(set(LOSSES) - set(SORTING)):
        LOSSES[name]().check_fit(trainer)
    with pytest.raises(ConfigError, match="accumulate_grad_batches=4"):
        LOSSES["aot"]().check_fit(trainer)


def global_batch() -> tuple[torch.Tensor, ...]:
    """7 pairs: policy chosen / rejected (the trained values) and reference chosen / rejected."""
    g = torch.Generator().manual_seed(3)
    return tuple(-10 * torch.rand(sum(SPLIT), generator=g) for _ in range(4))


def pair_logps(chosen: torch.Tensor, rejected: torch.Tensor) -> PairLogps:
    ones = torch.ones_like(chosen)
    return PairLogps(chosen=chosen, rejected=rejected, chosen_tokens=ones, rejected_tokens=ones)


def _rank(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        own = slice(0, SPLIT[0]) if rank == 0 else slice(SPLIT[0], None)
        results = {}
        for name in SORTING:
            chosen, rejected, ref_chosen, ref_rejected = global_batch()
            chosen.requires_grad_(), rejected.requires_grad_()
            out_ = LOSSES.resolve({"class_path": name, "init_args": {"beta": 0.5}})(
                pair_logps(chosen[own], rejected[own]), pair_logps(ref_chosen[own], ref_rejected[own]))
            out_.loss.backward()
            grads = torch.stack([chosen.grad, rejected.grad])
            dist.all_reduce(grads)  # what DDP does with the parameters' gradients: their mean over the ranks
            loss_sum = out_.losses.detach().sum().reshape(1)
            dist.all_reduce(loss_sum)
            results[name] = {"grad": grads / 2, "loss_sum": loss_sum}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def test_two_ranks_sort_the_global_batch(tmp_path: Path) -> None:
    """2 processes holding 3 and 4 of 7 pairs give, after DDP's averaging, the one-process gradient of the 7-pair
    loss, and their per-position losses sum to its sum (each position is reported by exactly one rank)."""
    mp.spawn(_rank, args=(str(tmp_path / "store"), str(tmp_path / "out.pt")), nprocs=2, join=True)
    results = torch.load(tmp_path / "out.pt")
    for name in SORTING:
        chosen, rejected, ref_chosen, ref_rejected = global_batch()
        chosen.requires_grad_(), rejected.requires_grad_()
        out = LOSSES.resolve({"class_path": name, "init_args": {"beta": 0.5}})(
            pair_logps(chosen, rejected), pair_logps(ref_chosen, ref_rejected))
        out.loss.backward()
        local = LOSSES.resolve({"class_path": name, "init_args": {"beta": 0.5}})(
            pair_logps(chosen[:3], rejected[:3]), pair_logps(ref_chosen[:3], ref_rejected[:3]))
        assert not torch.allclose(local.losses, out.losses[:3])  # a local sort would be another loss
        assert_close(results[name]["grad"], torch.stack([chosen.grad, rejected.grad]), atol=1e-7, rtol=1e-6)
        assert_close(results[name]["loss_sum"], out.losses.sum().reshape(1), atol=1e-6, rtol=1e-6)

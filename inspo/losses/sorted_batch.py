"""Losses that sort values across the batch (AOT): the batch is one object, not a set of independent pairs.

AOT compares the *distributions* of two quantities over the batch: it sorts both and pairs them rank by rank, so
the loss of one pair depends on every other pair of the batch. Two training set-ups change what "the batch" is:

- Gradient accumulation: a micro-batch sees only its part of the optimizer step's batch, and sorting the parts
  separately is another loss (the quantiles of 2 pairs are not those of 8). It cannot be made exact without holding
  every micro-batch's graph, so :meth:`check_fit` refuses ``trainer.accumulate_grad_batches > 1`` at fit start.
- Data parallelism (DDP, FSDP): :func:`gather_keeping_grad` all-gathers the values of every rank, so the sort is over
  the global batch, as on one device; gradients flow only to this rank's own pairs, and the scaling in
  :meth:`BatchSortingLoss.sorted_losses` makes the ranks' averaged gradient that of the global loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from inspo.errors import ConfigError
from inspo.losses.base import BetaLoss


def world() -> tuple[int, int]:
    """(world size, rank) of the default process group; (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_keeping_grad(values: Tensor) -> tuple[Tensor, int]:
    """``values`` [K, B] of every rank concatenated along dim 1 ([K, N], rank order), this rank's own block still
    carrying its gradient (the others are detached copies), and the offset of that block. Ranks may hold different B."""
    size, rank = world()
    if size == 1:
        return values, 0
    sizes = [torch.zeros(1, dtype=torch.long, device=values.device) for _ in range(size)]
    dist.all_gather(sizes, torch.tensor([values.shape[1]], device=values.device))
    counts = [int(s) for s in sizes]
    padded = [values.new_zeros(values.shape[0], max(counts)) for _ in range(size)]
    dist.all_gather(padded, F.pad(values.detach(), (0, max(counts) - values.shape[1])))
    parts = [p[:, :n] for p, n in zip(padded, counts)]
    parts[rank] = values
    return torch.cat(parts, dim=1), sum(counts[:rank])


class BatchSortingLoss(BetaLoss):
    """Base of the AOT losses: cDPO's loss on ``beta * (sort(a) - sort(b))``, rank by rank over the global batch.

    ``losses[j]`` is the loss at the j-th sorted position, not of pair j; only their mean is meaningful. Under data
    parallelism a rank returns the positions of its own block (their mean over the ranks is the global mean).

    Args:
        beta: inverse temperature (> 0).
        label_smoothing: conservative (cDPO) label smoothing eps, 0 <= eps < 0.5.
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, sft_weight: float = 0.0) -> None:
        super().__init__(beta, sft_weight)
        if not 0 <= label_smoothing < 0.5:
            raise ConfigError(f"{type(self).__name__}: label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def check_fit(self, trainer: Any) -> None:
        accumulate = getattr(trainer, "accumulate_grad_batches", 1)
        if accumulate > 1:
            raise ConfigError(f"{type(self).__name__} sorts log-ratios across the whole batch, but with "
                              f"trainer.accumulate_grad_batches={accumulate} each micro-batch sees only its part: set "
                              "trainer.accumulate_grad_batches 1 (raise data.loader.batch_size instead)")

    def sorted_losses(self, a: Tensor, b: Tensor) -> Tensor:
        """Per-position losses [B] of ``beta * (sort(a) - sort(b))`` over the global batch of ``a``, ``b`` [B]."""
        size, _ = world()
        both, offset = gather_keeping_grad(torch.stack([a, b]))
        delta = self.beta * (both[0].sort().values - both[1].sort().values)
        eps = self.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(delta) - eps * F.logsigmoid(-delta)
        if size == 1:
            return losses
        # Each rank's backward reaches only its own pairs, and DDP / FSDP average the ranks' gradients: size times
        # the global mean's gradient through the own block sums, over the ranks, to the global mean's gradient.
        # The value stays this rank's block of positions, whose mean over the ranks is the global mean.
        total = size * losses.mean()
        return losses[offset:offset + a.shape[0]].detach() + (total - total.detach())

"""A new reference mode in one file: the uniform distribution over the vocabulary as pi_ref.

log pi_ref(y|x) = -|y| log V for every response, so DPO against it is reference-free DPO plus a length term:
h = (a_w - a_l) + log V * (|y_w| - |y_l|). No reference model is held or run; the counts come from the batch.

Select it from YAML with ``model.reference: uniform`` once this module is imported (``INSPO_PLUGINS=...``), or
``model.reference: {class_path: tests.examples.uniform_reference.UniformReference, init_args: {vocab_size: 100}}``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from inspo.losses import PairLogps
from inspo.reference import ReferenceData, ReferenceMode, Score, register_reference


@register_reference("uniform")
class UniformReference(ReferenceMode):
    """pi_ref(token) = 1/V for every token.

    Args:
        vocab_size: V; None reads it from the policy's config.
    """

    name = "uniform"

    def __init__(self, vocab_size: int | None = None) -> None:
        self.vocab_size = vocab_size
        self.log_v: float | None = None if vocab_size is None else math.log(vocab_size)

    def prepare(self, policy: nn.Module, data: ReferenceData) -> None:
        if self.log_v is None:  # the policy is final here (adapters added); its config holds the vocabulary size
            self.log_v = math.log(policy.config.vocab_size)

    def logps(self, batch: Any, policy: nn.Module, score: Score, device: Any) -> PairLogps | None:
        counts = torch.tensor([[len(yw), len(yl)] for yw, yl in zip(batch.chosen, batch.rejected)],
                              dtype=torch.float32, device=device)
        logps = -self.log_v * counts
        return PairLogps(chosen=logps[:, 0], rejected=logps[:, 1], chosen_tokens=counts[:, 0],
                         rejected_tokens=counts[:, 1])

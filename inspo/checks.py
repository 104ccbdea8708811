"""A start-up check that inspo's log-probs are the model's own: once per model, on one pair of the first batch.

inspo never calls ``model.forward`` for log-probs: it runs the decoder body, gathers the hidden states that
predict targets and applies the output head (``inspo.logprobs``), and the packed layout relies on a 4D mask.
Both are exact for the families inspo knows, and neither can be proven for every model on the hub: a family may
transform its logits in ``forward`` (HyperCLOVAX multiplies by ``logits_scaling`` where Granite divides, Falcon-H1
multiplies by ``lm_head_multiplier``, others soft-cap or add a bias), or mix tokens in a way no config field or
class name reveals. So, for every model the first time it scores a batch (training, validation, test or the
reference cache alike), :func:`check_exactness` scores one pair of that batch, cut to a few tokens per segment,
three ways, without gradients and in eval mode:

1. inspo's output-head path on separate rows, against
2. ``model(...).logits`` on the same rows (``token_logps_full``): the definition of the model's log-probs;
3. inspo's path on the run's layout (packed rows), against 1.

A mismatch in 1-vs-2 switches that model to its own forward for good (full-vocabulary logits: more memory, but
right; stopping would leave a user with a correct model and no way to train it); a mismatch in 3-vs-1 switches
the run to the separate layout. Each is said in one log line. Tolerances are per target token, for the dtype the
model computes in; autocast is off during the check, so a bf16-mixed run on fp32 weights is checked in fp32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from inspo.conditioning import Sequences
from inspo.layout import Layout, ModelRows, PackedLayout, SeparateLayout

log = logging.getLogger("inspo")

PROBE_TOKENS = 24
"""Tokens kept per segment of the probe pair: enough for every mixer to act, small enough to be free."""
TOLERANCE = {torch.float32: 2e-4, torch.float64: 1e-6, torch.bfloat16: 0.05, torch.float16: 0.01}
"""Allowed |difference| per target token (nats) between two exact computations in this compute dtype (bf16: a
rounding flip of a large logit is 0.125)."""

Scorer = Callable[[ModelRows, bool], Tensor]
"""(rows, full_logits) -> [num_pairs, targets] summed log-probs, through inspo's path or the model's forward."""


@dataclass
class Exactness:
    """Outcome of :func:`check_exactness` (gaps: summed |difference| of the target sums per target token, nats)."""

    logits_gap: float
    packed_gap: float | None
    tolerance: float

    @property
    def logits_exact(self) -> bool:
        return self.logits_gap <= self.tolerance

    @property
    def packed_exact(self) -> bool:
        return self.packed_gap is None or self.packed_gap <= self.tolerance


def probe_segments(segments: dict[str, list[int]], tokens: int = PROBE_TOKENS) -> dict[str, list[int]]:
    """One pair's segments cut to their first ``tokens`` tokens (an empty template segment stays empty)."""
    return {name: ids[:tokens] for name, ids in segments.items()}


@contextmanager
def checking(model: nn.Module) -> Iterator[None]:
    """No gradients, no autocast, full-precision fp32 matmuls (no TF32), every submodule in eval mode; all restored.

    The check is about what is computed, not at which precision: TF32 or autocast noise would only blur it.
    """
    modes = [(m, m.training) for m in model.modules()]
    matmul = torch.get_float32_matmul_precision()
    model.eval()
    torch.set_float32_matmul_precision("highest")
    device = next(model.parameters()).device.type
    try:
        with torch.no_grad(), torch.autocast(device, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        for module, mode in modes:
            module.training = mode


def check_exactness(
    model: nn.Module, score: Scorer, segments: dict[str, list[int]], sequences: Sequences, layout: Layout,
    pad_id: int, compute_dtype: torch.dtype, device: torch.device | str = "cpu",
) -> Exactness:
    """Compare inspo's log-probs of one probe pair with the model's own and, for a packed layout, with separate rows.

    Args:
        model: the model (its modes are set for the check and restored).
        score: computes summed target log-probs of rows, by inspo's path (False) or ``model(...).logits`` (True).
        segments: one pair's named segments (cut down with :func:`probe_segments` here).
        sequences: the targets the run scores with this model.
        layout: the run's layout.
        pad_id: the pad token id.
        compute_dtype: the dtype the model computes in (sets the tolerance).
        device: where the rows go.
    """
    pair = [probe_segments(segments)]
    separate = SeparateLayout().build(pair, sequences, pad_id, device)
    tokens = max(len(separate.labels), 1)
    with checking(model):
        ours = score(separate, False).float()
        theirs = score(separate, True).float()
        shared = isinstance(layout, PackedLayout)  # the dense-mask and the prefix-attention paths alike
        packed = score(layout.build(pair, sequences, pad_id, device), False).float() if shared else None

    def gap(a: Tensor, b: Tensor) -> float:
        # Over all targets, per token: a transform or a leak moves many tokens; one rounding flip moves one.
        return ((a - b).abs().sum() / tokens).item()

    return Exactness(logits_gap=gap(ours, theirs), packed_gap=None if packed is None else gap(packed, ours),
                     tolerance=TOLERANCE.get(compute_dtype, 0.05))


def full_logits_message(model: nn.Module, result: Exactness) -> str:
    return (f"inspo: {type(model).__name__}: log-probs from inspo's output-head path differ from model(...).logits by "
            f"{result.logits_gap:.3g} nats per token on the first batch (the model transforms its logits in its own "
            "forward): using the model's forward for this model (full-vocabulary logits, more memory)")


def packed_message(result: Exactness, layout: str = "packed") -> str:
    return (f"inspo: layout {layout!r} is not exact here (packed rows differ from separate rows by {result.packed_gap:.3g}"
            " nats per token on the first batch: a token mixer ignores the 4D mask): using layout 'separate'")

"""The one pair-scoring path: named segments -> layout rows -> one model forward -> :class:`PairLogps`.

Used by the training step (``PreferenceModule.score``, policy and live reference) and by the reference cache
builder (``inspo.reference.cache.compute_reference_logps``), so a cached reference is scored exactly as a live one.
Which model runs, and how (chunked head, full logits, an FSDP2 root unit), is the caller's ``scorer``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from inspo.conditioning import Sequences
from inspo.layout import Layout, ModelRows
from inspo.losses import PairLogps

RowScorer = Callable[[ModelRows], Tensor]
"""rows -> [num_pairs, len(rows.names)] fp32 summed target log-probs (``inspo.logprobs.target_logps``)."""


def score_pairs(
    scorer: RowScorer,
    segments: list[dict[str, list[int]]],
    sequences: Sequences,
    layout: Layout,
    pad_id: int,
    device: torch.device | str,
    conditioned: bool = False,
) -> PairLogps:
    """Summed log-probs (and token counts) of the targets named by ``sequences`` for every pair.

    Args:
        scorer: runs the model on the rows (see :data:`RowScorer`).
        segments: one ``{segment name: token ids}`` per pair (``Conditioning.segments``).
        sequences: per target, the segments it is scored after; the last one is the target.
        layout: builds the model rows (separate or packed).
        pad_id: the pad token id.
        device: where the rows are built.
        conditioned: ``chosen`` / ``rejected`` of ``sequences`` see more than x (:class:`PairLogps`).
    """
    rows = layout.build(segments, sequences, pad_id, device)
    sums = scorer(rows)
    counts = torch.bincount(rows.slot, minlength=rows.num_slots).view(rows.num_pairs, -1).float()
    col = {name: i for i, name in enumerate(rows.names)}
    return PairLogps(
        chosen=sums[:, col["chosen"]],
        rejected=sums[:, col["rejected"]],
        chosen_tokens=counts[:, col["chosen"]],
        rejected_tokens=counts[:, col["rejected"]],
        chosen_plain=sums[:, col["chosen_plain"]] if "chosen_plain" in col else None,
        rejected_plain=sums[:, col["rejected_plain"]] if "rejected_plain" in col else None,
        conditioned=conditioned,
    )

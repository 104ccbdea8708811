"""The one pair-scoring path: named segments -> layout rows -> one model forward -> :class:`PairLogps`.

Used by the training step (``PreferenceModule.score``, policy and live reference) and by the reference cache
builder (``inspo.reference.cache.compute_reference_logps``), so a cached reference is scored exactly as a live one.
Which model runs, and how (chunked head, full logits, an FSDP2 root unit), is the caller's ``scorer``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from inspo.conditioning import Sequences
from inspo.layout import Layout, ModelRows
from inspo.losses import PairLogps

RowScorer = Callable[..., Tensor]
"""rows -> [num_pairs, len(rows.names)] fp32 summed target log-probs (``inspo.logprobs.target_logps``); called with
``log_sum_sq=True`` only when asked (WPO), and then returns [num_pairs, 2 * len(rows.names)] as ``target_logps``."""


def score_pairs(
    scorer: RowScorer,
    segments: list[dict[str, list[int]]],
    sequences: Sequences,
    layout: Layout,
    pad_id: int,
    device: torch.device | str,
    conditioned: bool = False,
    split_tail: bool = False,
    log_sum_sq: bool = False,
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
        split_tail: also sum every target over its tail, the tokens beyond the first min(|y_w|, |y_l|) of its pair
            (``PairLogps.tail``, LD-DPO): :func:`split_tails`, the same forward with twice the slots.
        log_sum_sq: also sum log sum_v pi(v | context)^2 over every target's tokens (``PairLogps.log_sum_sq``, WPO).
    """
    rows = layout.build(segments, sequences, pad_id, device)
    counts = torch.bincount(rows.slot, minlength=rows.num_slots).view(rows.num_pairs, -1).float()
    names = rows.names
    if split_tail:
        rows = split_tails(rows)
    out = scorer(rows, log_sum_sq=True) if log_sum_sq else scorer(rows)
    width = len(rows.names)
    sums, sq = (out[:, :width], out[:, width:]) if log_sum_sq else (out, None)
    tail = None
    if split_tail:  # columns: the first min(|y_w|, |y_l|) tokens of each target, then its tail
        k = len(names)
        tail_counts = torch.bincount(rows.slot, minlength=rows.num_slots).view(rows.num_pairs, -1)[:, k:].float()
        tail = _pair_logps(sums[:, k:], tail_counts, names, conditioned)
        sums = sums[:, :k] + sums[:, k:]
        sq = None if sq is None else sq[:, :k] + sq[:, k:]
    return _pair_logps(sums, counts, names, conditioned, tail=tail,
                       log_sum_sq=None if sq is None else _pair_logps(sq, counts, names, conditioned))


def _pair_logps(sums: Tensor, counts: Tensor, names: tuple[str, ...], conditioned: bool, **parts: PairLogps | None
                ) -> PairLogps:
    """Columns of ``sums`` / ``counts`` [num_pairs, len(names)] as the :class:`PairLogps` fields named ``names``."""
    col = {name: i for i, name in enumerate(names)}
    return PairLogps(
        chosen=sums[:, col["chosen"]],
        rejected=sums[:, col["rejected"]],
        chosen_tokens=counts[:, col["chosen"]],
        rejected_tokens=counts[:, col["rejected"]],
        chosen_plain=sums[:, col["chosen_plain"]] if "chosen_plain" in col else None,
        rejected_plain=sums[:, col["rejected_plain"]] if "rejected_plain" in col else None,
        conditioned=conditioned,
        **parts,
    )


def split_tails(rows: ModelRows) -> ModelRows:
    """``rows`` with every target's tail in a slot of its own: names ``(*names, *(name + "_tail"))``.

    LD-DPO (Liu et al. 2024, arXiv 2409.06411; TRL 1.16 ``ld_alpha``) splits each response at m = min(|y_w|,
    |y_l|) of its pair, counted over the response's own tokens only (never the prompt nor, under InSPO, the other
    response it is conditioned on): tokens 1..m are shared, tokens m+1.. are the tail. Every target of a pair is
    split at the same m (``chosen``, ``rejected``, and ``chosen_plain`` / ``rejected_plain`` when scored), so the
    shorter response has an empty tail. Reads :meth:`ModelRows.target_positions`: the layout lists each target's
    tokens in target order. The model rows are unchanged; only the summation slots are.
    """
    k = len(rows.names)
    counts = torch.bincount(rows.slot, minlength=rows.num_slots).view(rows.num_pairs, k)
    shared = torch.minimum(counts[:, rows.names.index("chosen")], counts[:, rows.names.index("rejected")])
    pair, target = rows.slot // k, rows.slot % k
    in_tail = rows.target_positions() >= shared[pair]
    slot = pair * 2 * k + target + k * in_tail.long()
    return dataclasses.replace(rows, slot=slot, names=(*rows.names, *(f"{name}_tail" for name in rows.names)))

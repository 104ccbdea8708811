"""Options that act on top of any loss: WPO weighting and LD-DPO's length desensitisation.

Both are module options (``--model.use_weighting true``, ``--model.ld_alpha 0.5``, TRL 1.16's ``use_weighting``
and ``ld_alpha``), not loss arguments: they change what the pair forward computes (tail sums, a second reduction
over the vocabulary) and wrap the loss from outside, so every registered loss, also a user's own, gets them
without a flag of its own. Off (the default), the module scores and calls the loss exactly as without them.

- **LD-DPO** (Liu et al. 2024, "Length Desensitization in Direct Preference Optimization", arXiv 2409.06411; TRL
  ``ld_alpha``): with m = min(|y_w|, |y_l|) per pair, every log-prob the preference term reads becomes
  ``log pi(y_{1..m}) + alpha * log pi(y_{m+1..})``: the longer response's tail beyond the shorter one's length is
  weighted by alpha (1: plain DPO; 0: the tail is ignored). As TRL, for the policy and for the reference alike, with
  the token counts unchanged (length-normalised losses still divide by |y|), and not for the NLL terms (SFT,
  ORPO's NLL read ``chosen_plain``, which stays the full log pi(y_w|x), as TRL's ``sft`` reads unweighted tokens).
  Under InSPO the split applies to the conditioned log-probs the loss reads, a_w = log pi(y_w|x,y_l) and a_l, over
  the response's own tokens only; the reference's log pi_ref(y|x) is split at the same m.
- **WPO** (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization", arXiv 2406.11827, eq. 2
  with TRL 1.16's normalisation): each pair's loss is multiplied by the constant (no gradient)
  ``w(y_w) * w(y_l)``, ``w(y) = exp( 1/|y| * sum_t [log pi(y_t|c_t) - log sum_v pi(v|c_t)^2] )``: the policy's
  length-normalised probability of the response relative to its own greedy-ness, so off-policy pairs count less.
  Computed from the policy's log-probs under the run's conditioning (under InSPO the conditioned contexts
  c_t = (x, y_alt, y_<t), the distributions the loss reads) before LD-DPO's weighting, as TRL does.

The logged ``chosen_logp`` / ``rejected_logp`` stay the full log-probs; rewards and loss are the options'. A loss that
sorts pairs across the batch (``aot``, ``aot_unpaired``) would misalign WPO's per-pair weights: refused here, as
in TRL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from inspo.errors import ConfigError
from inspo.losses import LossOutput, PairLogps, PreferenceLoss


@dataclass(frozen=True)
class LossOptions:
    """What the module applies around its loss (the module docstring explains both).

    Attributes:
        use_weighting: WPO: multiply each pair's loss by the policy's w(y_w) * w(y_l).
        ld_alpha: LD-DPO: weight of the log-probs beyond min(|y_w|, |y_l|) in [0, 1]; None is off.
    """

    use_weighting: bool = False
    ld_alpha: float | None = None

    def __post_init__(self) -> None:
        if self.ld_alpha is not None and not (isinstance(self.ld_alpha, (int, float)) and 0 <= self.ld_alpha <= 1):
            raise ConfigError(f"model.ld_alpha must be in [0, 1] (or null to turn LD-DPO off), got {self.ld_alpha}")

    @property
    def split_tail(self) -> bool:
        """The pair forward must sum every response's tail separately (``PairLogps.tail``)."""
        return self.ld_alpha is not None

    def check(self, reference_mode: Any, loss: PreferenceLoss) -> None:
        """Raise a :class:`ConfigError` if the reference mode cannot give what an option needs, or the loss cannot
        take it."""
        from inspo.losses.sorted_batch import BatchSortingLoss
        from inspo.reference import CachedReference

        sorting = [p for p in getattr(loss, "parts", [loss]) if isinstance(p, BatchSortingLoss)]
        if self.use_weighting and sorting:  # TRL refuses this pair too
            raise ConfigError(f"model.use_weighting weights each pair's loss, but {type(sorting[0]).__name__} sorts "
                              "the log-ratios across the batch, so its per-position losses belong to no pair: drop "
                              "one of them")

        if self.split_tail and isinstance(reference_mode, CachedReference):
            raise ConfigError("model.ld_alpha splits the reference's log-probs at min(|y_w|, |y_l|), which "
                              "model.reference cached does not store: use reference copy, path or adapter")

    def apply(self, loss: PreferenceLoss, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        """``loss(policy, reference)`` with the options on; exactly that call when they are off."""
        weights = wpo_weights(policy) if self.use_weighting else None
        if self.ld_alpha is not None:
            policy = length_desensitized(policy, self.ld_alpha)
            reference = None if reference is None else length_desensitized(reference, self.ld_alpha)
        out = loss(policy, reference)
        if weights is not None:
            out.losses = out.losses * weights
        return out


def length_desensitized(logps: PairLogps, alpha: float) -> PairLogps:
    """LD-DPO's log-probs: the first min(|y_w|, |y_l|) tokens' sum plus ``alpha`` times the tail's.

    ``chosen_plain`` / ``rejected_plain`` (the NLL terms' log pi(y|x)) keep their full sums; token counts stay |y|.
    """
    if logps.tail is None:
        raise ValueError("LD-DPO needs the tail sums (PairLogps.tail): score the pairs with split_tail=True")

    def weighted(total: Tensor, tail: Tensor) -> Tensor:
        return (total.float() - tail.float()) + alpha * tail.float()

    return PairLogps(
        chosen=weighted(logps.chosen, logps.tail.chosen),
        rejected=weighted(logps.rejected, logps.tail.rejected),
        chosen_tokens=logps.chosen_tokens,
        rejected_tokens=logps.rejected_tokens,
        chosen_plain=logps.chosen_plain,
        rejected_plain=logps.rejected_plain,
        conditioned=logps.conditioned,
    )


def wpo_weights(policy: PairLogps) -> Tensor:
    """WPO's per-pair weight w(y_w) * w(y_l) (no gradient), from the policy's log-probs and ``log_sum_sq``."""
    if policy.log_sum_sq is None:
        raise ValueError("WPO needs log sum_v pi(v|c)^2 per response (PairLogps.log_sum_sq): score with log_sum_sq")
    sq = policy.log_sum_sq
    with torch.no_grad():
        mean_w = (policy.chosen.float() - sq.chosen.float()) / policy.chosen_tokens.float().clamp_min(1)
        mean_l = (policy.rejected.float() - sq.rejected.float()) / policy.rejected_tokens.float().clamp_min(1)
        return torch.exp(mean_w) * torch.exp(mean_l)


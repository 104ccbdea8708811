"""The InSPO paper's one-sided variant: only the rejected response's log-ratio is pushed down."""

from __future__ import annotations

import torch.nn.functional as F

from inspo.losses.base import BetaLoss, LossOutput, PairLogps, register_loss


@register_loss("onesided")
class OneSidedLoss(BetaLoss):
    """One-sided preference loss (the InSPO paper's formula 22).

    Paper: "InSPO: Unlocking Intrinsic Self-Reflection for LLM Preference Optimization", Li, Lan, Qi,
    arXiv 2512.23126 (2025).

    ::

        L = -log sigma( -beta * (policy.rejected - reference.rejected) )

    Under InSPO ``policy.rejected`` is a_l = log pi(y_l | x, y_w). The loss does not depend on the chosen
    response at all (its gradient w.r.t. ``policy.chosen`` is zero); y_w only enters through the conditioning.
    ``chosen_rewards = beta * (policy.chosen - reference.chosen)`` is returned for logging only.

    Typical hyperparameters: beta 0.1. Add ``sft_weight > 0`` to also pull y_w up.

    Args:
        beta: inverse temperature of the implicit reward (> 0).
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
    """

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        losses = -F.logsigmoid(-self.beta * rejected_ratio)
        return self.output(losses, chosen_ratio, rejected_ratio)

"""SPPO (Wu et al. 2024) with hard win probabilities: each log-ratio regressed onto +-1/(2 beta)."""

from __future__ import annotations

from inspo.losses.base import BetaLoss, LossOutput, PairLogps, register_loss


@register_loss("sppo_hard")
class SPPOHardLoss(BetaLoss):
    """Self-Play Preference Optimization, hard-label version; TRL ``loss_type="sppo_hard"``.

    Paper: "Self-Play Preference Optimization for Language Model Alignment", Wu, Sun, Yuan, Ji, Yang, Gu,
    arXiv 2405.00675 (2024), eq. 4.7 of Algorithm 1 with the win probability P set to 1 for y_w and 0 for y_l
    (the paper estimates a soft P with PairRM). Matches TRL 1.16 ``trl/trainer/dpo_trainer.py``
    (``DPOTrainer._compute_loss``). With the summed log-ratios ``c = policy.chosen - reference.chosen`` and
    ``l = policy.rejected - reference.rejected``::

        L = (c - 1 / (2 * beta))^2 + (l + 1 / (2 * beta))^2

    (The paper writes eta (P - 1/2) for the targets; TRL's beta is 1/eta.) Like IPO it is a regression: it pushes
    y_w up only while ``c < 1/(2 beta)`` and y_l down only while ``l > -1/(2 beta)``, then back towards the
    targets. Rewards: ``beta * (policy - reference)`` per response.

    Typical hyperparameters: beta 0.001 (eta = 1e3) to 0.1 (TRL's default, which asks for +-5 nats per
    response).

    Args:
        beta: inverse of SPPO's eta (> 0); the targets are ``+-1 / (2 * beta)``.
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
    """

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        target = 1 / (2 * self.beta)
        losses = (chosen_ratio - target) ** 2 + (rejected_ratio + target) ** 2
        return self.output(losses, chosen_ratio, rejected_ratio)

"""SimPO (Meng et al. 2024): reference-free, length-normalised reward with a target margin."""

from __future__ import annotations

import torch.nn.functional as F

from inspo.errors import ConfigError
from inspo.losses.base import BetaLoss, LossOutput, PairLogps, register_loss


@register_loss("simpo")
class SimPOLoss(BetaLoss):
    """Simple Preference Optimization.

    Paper: "SimPO: Simple Preference Optimization with a Reference-Free Reward", Meng, Xia, Chen,
    arXiv 2405.14734 (2024).

    The reward is the average log-prob, ``r(y) = beta * logp(y) / |y|``, no reference::

        L = -log sigma( beta * policy.chosen / chosen_tokens - beta * policy.rejected / rejected_tokens - gamma )

    Under InSPO ``policy.chosen`` / ``policy.rejected`` are the cross-conditioned a_w, a_l.
    Rewards: ``beta * logp / |y|`` per response.

    Typical hyperparameters: beta 2-10, gamma 0.5-1.6 (the paper tunes gamma / beta in 0.3-0.8).

    Args:
        beta: scale of the length-normalised reward (> 0).
        gamma: target reward margin between chosen and rejected (>= 0).
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
    """

    requires_reference = False

    def __init__(self, beta: float = 2.0, gamma: float = 1.0, sft_weight: float = 0.0) -> None:
        super().__init__(beta, sft_weight)
        if not gamma >= 0:
            raise ConfigError(f"SimPOLoss: gamma (target margin) must be >= 0, got {gamma}")
        self.gamma = gamma

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_rewards = self.beta * policy.chosen.float() / policy.chosen_tokens.float()
        rejected_rewards = self.beta * policy.rejected.float() / policy.rejected_tokens.float()
        losses = -F.logsigmoid(chosen_rewards - rejected_rewards - self.gamma)
        return LossOutput(
            losses=losses, chosen_rewards=chosen_rewards.detach(), rejected_rewards=rejected_rewards.detach()
        )

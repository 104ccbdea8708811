"""R-DPO (Park et al. 2024): DPO whose implicit reward carries a length regulariser (eq. 9)."""

from __future__ import annotations

import torch.nn.functional as F

from inspo.errors import ConfigError
from inspo.losses.base import BetaLoss, LossOutput, PairLogps, register_loss


@register_loss("rdpo")
class RDPOLoss(BetaLoss):
    """Length-regularised DPO.

    Paper: "Disentangling Length from Quality in Direct Preference Optimization", Park, Rafailov, Ermon, Finn,
    arXiv 2403.19159 (2024), eq. 9 (the SimPO paper's Table 3 writes it the same way).

    With ``h = (policy.chosen - reference.chosen) - (policy.rejected - reference.rejected)``::

        L = -log sigma( beta * h + alpha * (chosen_tokens - rejected_tokens) )

    Why the length term is *added*: R-DPO maximises ``E[r(x, y) - alpha * |y|] - beta * KL``, whose optimal
    policy gives the implicit reward ``r = beta * log(pi / pi_ref) + alpha * |y|``; the Bradley-Terry loss on
    ``r_w - r_l`` is the line above. A longer chosen answer therefore needs a *smaller* log-ratio margin (its
    length already "explains" part of the preference), so the policy is not pushed toward length. On a tie
    between a 30- and a 10-token answer the optimum is ``beta * (ratio_long - ratio_short) = -20 * alpha``: the
    short answer gains ``20 * alpha / beta`` nats (2 at beta 0.1, alpha 0.01). Subtracting the term instead (as
    inspo did before) moves that optimum by the same amount toward the *long* answer, which rewards length.

    Rewards: ``beta * (policy - reference)``, DPO's rewards; the length term belongs to neither response's
    reward as logged, so the logged margin is ``beta * h`` and not the loss's logit.

    Typical hyperparameters: beta 0.1, alpha 0.005-0.05 (per token of length difference).

    Args:
        beta: inverse temperature of the implicit reward (> 0).
        alpha: weight of the length regulariser, per token of length difference (>= 0; 0 is DPO).
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
    """

    def __init__(self, beta: float = 0.1, alpha: float = 0.01, sft_weight: float = 0.0) -> None:
        super().__init__(beta, sft_weight)
        if not alpha >= 0:
            raise ConfigError(f"RDPOLoss: alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        length_gap = policy.chosen_tokens.float() - policy.rejected_tokens.float()
        losses = -F.logsigmoid(self.beta * (chosen_ratio - rejected_ratio) + self.alpha * length_gap)
        return self.output(losses, chosen_ratio, rejected_ratio)

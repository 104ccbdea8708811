"""DiscoPOP (Lu et al. 2024): the discovered log-ratio modulated loss, a blend of logistic and exponential."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from inspo.errors import ConfigError
from inspo.losses.base import BetaLoss, LossOutput, PairLogps, register_loss
from inspo.losses.divergence import Divergence


@register_loss("discopop")
class DiscoPOPLoss(BetaLoss):
    """DiscoPOP, the log-ratio modulated loss (LRML); TRL ``loss_type="discopop"``.

    Paper: "Discovering Preference Optimization Algorithms with and for Large Language Models", Lu, Holt, Fanconi,
    Chan, Foerster, van der Schaar, Lange, arXiv 2406.08414 (2024), eq. 5. Matches TRL 1.16
    ``trl/trainer/dpo_trainer.py`` (``DPOTrainer._compute_loss``). With ``z = beta * h``,
    ``h = (policy.chosen - reference.chosen) - (policy.rejected - reference.rejected)`` and ``m = sigma(z / tau)``::

        L = (1 - m) * (-log sigma(z)) + m * exp(-z)

    m * exp(-z) is computed as ``exp(log sigma(z / tau) - z)``: the same value, but finite where TRL's product is
    0 * inf = NaN (z below about -88 in fp32). The loss is not convex and not monotone in h: with tau = 0.05 it
    rises with h for about -0.115 < z < 0.07, so near a zero gap raising y_w raises the loss too; elsewhere it
    pushes y_w up and y_l down. Rewards: ``beta * (policy - reference)`` per response.

    Typical hyperparameters: beta 0.05-0.1, tau 0.05 (the paper's, TRL's ``discopop_tau`` default).

    Args:
        beta: inverse temperature of the implicit reward (> 0).
        tau: temperature of the modulation between the two components (> 0).
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
        divergence: the f-divergence of the constraint (``inspo.losses.divergence``); reverse_kl is the form above.
        alpha_divergence_coef: TRL's ``f_alpha_divergence_coef`` c of ``alpha_divergence`` (c -> 1: reverse KL).
    """

    def __init__(self, beta: float = 0.1, tau: float = 0.05, sft_weight: float = 0.0,
                 divergence: Divergence = "reverse_kl", alpha_divergence_coef: float = 0.5) -> None:
        super().__init__(beta, sft_weight)
        self.set_divergence(divergence, alpha_divergence_coef)
        if not tau > 0:
            raise ConfigError(f"DiscoPOPLoss: tau must be > 0, got {tau}")
        self.tau = tau

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        chosen_score, rejected_score = self.scores(chosen_ratio, rejected_ratio)
        z = self.beta * (chosen_score - rejected_score)
        losses = -torch.sigmoid(-z / self.tau) * F.logsigmoid(z) + torch.exp(F.logsigmoid(z / self.tau) - z)
        return self.output(losses, chosen_ratio, rejected_ratio)

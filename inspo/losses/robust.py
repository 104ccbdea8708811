"""Robust DPO (Chowdhury et al. 2024): an unbiased loss under label noise of known rate."""

from __future__ import annotations

import torch.nn.functional as F

from inspo.errors import ConfigError
from inspo.losses.base import BetaLoss, LossOutput, PairLogps, register_loss
from inspo.losses.divergence import Divergence


@register_loss("robust")
class RobustDPOLoss(BetaLoss):
    """Provably robust DPO (rDPO).

    Paper: "Provably Robust DPO: Aligning Language Models with Noisy Feedback", Chowdhury, Kini, Natarajan,
    arXiv 2403.00409 (2024).

    With ``h = (policy.chosen - reference.chosen) - (policy.rejected - reference.rejected)`` and flip rate eps::

        L = [ -(1 - eps) * log sigma(beta * h) + eps * log sigma(-beta * h) ] / (1 - 2 * eps)

    Its expectation over noisy labels equals the clean DPO loss. Unlike cDPO the gradient always pushes h up
    (``dL/dh = -beta * [(1 - eps) sigma(-beta h) + eps sigma(beta h)] / (1 - 2 eps) < 0``), and the loss is
    unbounded below (about ``-eps * beta * h / (1 - 2 eps)`` for large h). Rewards: ``beta * (policy - reference)``.

    Typical hyperparameters: beta 0.1, label_smoothing 0.1-0.4 (the estimated flip rate).

    Args:
        beta: inverse temperature of the implicit reward (> 0).
        label_smoothing: assumed label flip rate eps (0 <= eps < 0.5; eps = 0 is DPO).
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
        divergence: the f-divergence of the constraint (``inspo.losses.divergence``); reverse_kl is the form above.
        alpha_divergence_coef: TRL's ``f_alpha_divergence_coef`` c of ``alpha_divergence`` (c -> 1: reverse KL).
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.1, sft_weight: float = 0.0,
                 divergence: Divergence = "reverse_kl", alpha_divergence_coef: float = 0.5) -> None:
        super().__init__(beta, sft_weight)
        self.set_divergence(divergence, alpha_divergence_coef)
        if not 0 <= label_smoothing < 0.5:
            raise ConfigError(f"RobustDPOLoss: label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        chosen_score, rejected_score = self.scores(chosen_ratio, rejected_ratio)
        logits = self.beta * (chosen_score - rejected_score)
        eps = self.label_smoothing
        losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
        return self.output(losses, chosen_ratio, rejected_ratio)

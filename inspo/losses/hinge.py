"""SLiC-HF hinge loss (Zhao et al. 2023) in the reference-ratio form used by DPO-family libraries."""

from __future__ import annotations

import torch.nn.functional as F

from inspo.losses.base import BetaLoss, LossOutput, PairLogps, register_loss
from inspo.losses.divergence import Divergence


@register_loss("hinge")
class HingeLoss(BetaLoss):
    """Hinge (SLiC) loss on the DPO log-ratio gap.

    Paper: "SLiC-HF: Sequence Likelihood Calibration with Human Feedback", Zhao, Joshi, Liu, Khalman, Saleh,
    Liu, arXiv 2305.10425 (2023). SLiC's calibration loss is ``max(0, delta - log pi(y_w) + log pi(y_l))``;
    like TRL's ``hinge`` we use the reference ratios and write ``delta = 1 / beta``, scaled by beta.

    With ``h = (policy.chosen - reference.chosen) - (policy.rejected - reference.rejected)``::

        L = relu(1 - beta * h)

    The loss and its gradient are exactly zero once ``beta * h >= 1``. Rewards: ``beta * (policy - reference)``.

    Typical hyperparameters: beta 0.1 (margin of 10 nats) to 1.

    Args:
        beta: inverse margin (> 0); pairs stop contributing once h >= 1 / beta.
        sft_weight: weight of the chosen-response NLL term (SLiC-HF's regulariser; see :class:`PreferenceLoss`).
        divergence: the f-divergence of the constraint (``inspo.losses.divergence``); reverse_kl is the form above.
        alpha_divergence_coef: TRL's ``f_alpha_divergence_coef`` c of ``alpha_divergence`` (c -> 1: reverse KL).
    """

    def __init__(self, beta: float = 0.1, sft_weight: float = 0.0,
                 divergence: Divergence = "reverse_kl", alpha_divergence_coef: float = 0.5) -> None:
        super().__init__(beta, sft_weight)
        self.set_divergence(divergence, alpha_divergence_coef)

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        chosen_score, rejected_score = self.scores(chosen_ratio, rejected_ratio)
        losses = F.relu(1 - self.beta * (chosen_score - rejected_score))
        return self.output(losses, chosen_ratio, rejected_ratio)

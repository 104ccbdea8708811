"""EXO (Ji et al. 2024), pairwise: the reverse KL from the policy's preference to a smoothed label."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from inspo.errors import ConfigError
from inspo.losses.base import BetaLoss, LossOutput, PairLogps, register_loss
from inspo.losses.divergence import Divergence


@register_loss("exo_pair")
class EXOPairLoss(BetaLoss):
    """Efficient Exact Optimization, preference form with K=2; TRL ``loss_type="exo_pair"``.

    Paper: "Towards Efficient Exact Optimization of Language Model Alignment", Ji, Lu, Niu, Ke, Wang, Dong, Chen,
    Huang, arXiv 2402.00856 (2024), eq. 16. Matches TRL 1.16 ``trl/trainer/dpo_trainer.py``
    (``DPOTrainer._compute_loss``). With ``h = (policy.chosen - reference.chosen) - (policy.rejected -
    reference.rejected)``, ``q = sigma(beta * h)`` the policy's preference for y_w and the label smoothed to
    ``(1 - eps, eps)``::

        L = KL(q || p) = q * (log q - log(1 - eps)) + (1 - q) * (log(1 - q) - log eps)

    Where DPO's forward KL is minimised only at infinity, this mode-seeking form is minimised at
    ``beta * h = log((1 - eps) / eps)`` (6.9 nats at eps = 1e-3); below it y_w goes up and y_l down. eps = 0 would
    make the loss infinite, hence eps > 0. Rewards: ``beta * (policy - reference)`` per response.

    Typical hyperparameters: beta 0.1, label_smoothing eps 1e-3 (the paper's).

    Args:
        beta: inverse temperature of the implicit reward (> 0).
        label_smoothing: probability eps of the smoothed label on y_l (0 < eps < 0.5).
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
        divergence: the f-divergence of the constraint (``inspo.losses.divergence``); reverse_kl is the form above.
        alpha_divergence_coef: TRL's ``f_alpha_divergence_coef`` c of ``alpha_divergence`` (c -> 1: reverse KL).
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 1e-3, sft_weight: float = 0.0,
                 divergence: Divergence = "reverse_kl", alpha_divergence_coef: float = 0.5) -> None:
        super().__init__(beta, sft_weight)
        self.set_divergence(divergence, alpha_divergence_coef)
        if not 0 < label_smoothing < 0.5:
            raise ConfigError(f"EXOPairLoss: label_smoothing must be in (0, 0.5), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        chosen_score, rejected_score = self.scores(chosen_ratio, rejected_ratio)
        logits = self.beta * (chosen_score - rejected_score)
        eps = self.label_smoothing
        # q log q via logsigmoid: finite at any gap (q -> 0 gives 0 * (large negative), never 0 * -inf)
        losses = (torch.sigmoid(logits) * (F.logsigmoid(logits) - math.log1p(-eps))
                  + torch.sigmoid(-logits) * (F.logsigmoid(-logits) - math.log(eps)))
        return self.output(losses, chosen_ratio, rejected_ratio)

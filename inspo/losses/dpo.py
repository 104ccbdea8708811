"""DPO (Rafailov et al. 2023) with optional conservative label smoothing (cDPO, Mitchell 2023)."""

from __future__ import annotations

import torch.nn.functional as F

from inspo.errors import ConfigError
from inspo.losses.base import BetaLoss, LossOutput, PairLogps, register_loss
from inspo.losses.divergence import Divergence


@register_loss("dpo", aliases=("sigmoid",))
class DPOLoss(BetaLoss):
    """Direct Preference Optimization, optionally conservative (cDPO).

    Also registered as ``sigmoid``, TRL's ``DPOTrainer`` name (``loss_type="sigmoid"``).

    Paper: "Direct Preference Optimization: Your Language Model is Secretly a Reward Model", Rafailov, Sharma,
    Mitchell, Ermon, Manning, Finn, arXiv 2305.18290 (2023). Label smoothing is conservative DPO from Mitchell,
    "A note on DPO with noisy preferences & relationship to IPO" (2023): the label is assumed flipped with
    probability ``eps``.

    With ``h = (policy.chosen - reference.chosen) - (policy.rejected - reference.rejected)``::

        L = -(1 - eps) * log sigma(beta * h) - eps * log sigma(-beta * h)

    Under InSPO ``policy.chosen`` / ``policy.rejected`` are a_w, a_l. Rewards: ``beta * (policy - reference)``.

    Typical hyperparameters: beta 0.01-0.5 (0.1 in the InSPO paper), label_smoothing 0 (DPO) or 0.1-0.3 (cDPO).
    With eps > 0 the loss is minimised at ``beta * h = log((1 - eps) / eps)``, not at infinity.

    Args:
        beta: inverse temperature of the implicit reward (> 0).
        label_smoothing: assumed probability eps that a preference label is flipped (0 <= eps < 0.5).
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
        divergence: the f-divergence of the constraint (``inspo.losses.divergence``); reverse_kl is the form above.
        alpha_divergence_coef: TRL's ``f_alpha_divergence_coef`` c of ``alpha_divergence`` (c -> 1: reverse KL).
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, sft_weight: float = 0.0,
                 divergence: Divergence = "reverse_kl", alpha_divergence_coef: float = 0.5) -> None:
        super().__init__(beta, sft_weight)
        self.set_divergence(divergence, alpha_divergence_coef)
        if not 0 <= label_smoothing < 0.5:
            raise ConfigError(f"DPOLoss: label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        chosen_score, rejected_score = self.scores(chosen_ratio, rejected_ratio)
        logits = self.beta * (chosen_score - rejected_score)
        eps = self.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
        return self.output(losses, chosen_ratio, rejected_ratio)

"""APO-zero (D'Oosterlinck et al. 2024): an anchored preference loss, y_w up and y_l down against the reference."""

from __future__ import annotations

import torch

from inspo.losses.base import BetaLoss, LossOutput, PairLogps, register_loss


@register_loss("apo_zero")
class APOZeroLoss(BetaLoss):
    """Anchored Preference Optimization, APO-zero; TRL ``loss_type="apo_zero"``.

    Paper: "Anchored Preference Optimization and Contrastive Revisions: Addressing Underspecification in
    Alignment", D'Oosterlinck, Xu, Develder, Demeester, Singh, Potts, Kiela, Mehri, arXiv 2408.06266 (2024), eq. 7.
    Matches TRL 1.16 ``trl/trainer/dpo_trainer.py`` (``DPOTrainer._compute_loss``). With
    ``c = policy.chosen - reference.chosen`` and ``l = policy.rejected - reference.rejected``::

        L = 1 - sigma(beta * c) + sigma(beta * l)

    For chosen answers better than the model's own: raises y_w and lowers y_l (monotone in both), each against
    the reference as anchor; the loss lies in [0, 2]. Rewards: ``beta * (policy - reference)`` per response.

    Typical hyperparameters: beta 0.1 (the paper's and TRL's default).

    Args:
        beta: inverse temperature of the implicit reward (> 0).
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
    """

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        chosen, rejected = self.beta * chosen_ratio, self.beta * rejected_ratio
        return self.output(self.anchored(chosen, rejected), chosen_ratio, rejected_ratio)

    @staticmethod
    def anchored(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
        """The per-pair loss from the rewards u_w, u_l."""
        return 1 - torch.sigmoid(chosen) + torch.sigmoid(rejected)


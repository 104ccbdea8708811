"""APO-down (D'Oosterlinck et al. 2024): the anchored loss for chosen answers worse than the model's own."""

from __future__ import annotations

import torch

from inspo.losses.apo_zero import APOZeroLoss
from inspo.losses.base import register_loss


@register_loss("apo_down")
class APODownLoss(APOZeroLoss):
    """Anchored Preference Optimization, APO-down; TRL ``loss_type="apo_down"``.

    Paper: "Anchored Preference Optimization and Contrastive Revisions: Addressing Underspecification in
    Alignment", D'Oosterlinck et al., arXiv 2408.06266 (2024), eq. 8. Matches TRL 1.16
    ``trl/trainer/dpo_trainer.py`` (``DPOTrainer._compute_loss``). With ``u_w = beta * (policy.chosen -
    reference.chosen)``, ``u_l = beta * (policy.rejected - reference.rejected)``::

        L = sigma(u_w) + 1 - sigma(u_w - u_l)

    For chosen answers WORSE than the model's own: it lowers both responses, y_l more than y_w. The loss always
    falls as y_l falls, but it rises with y_w wherever ``sigma'(u_w) > sigma'(u_w - u_l)`` (e.g. near the
    reference, where |u_w| < |u_w - u_l|): that is the intended push down of y_w, and the contract test expects it.
    Rewards: ``u_w``, ``u_l``.

    Typical hyperparameters: beta 0.1 (the paper's and TRL's default).

    Args:
        beta: inverse temperature of the implicit reward (> 0).
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
    """

    @staticmethod
    def anchored(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
        """The per-pair loss from the rewards u_w, u_l."""
        return torch.sigmoid(chosen) + 1 - torch.sigmoid(chosen - rejected)

"""BCO (Jung et al. 2024), pairwise form: a binary classifier with chosen as positive and rejected as negative."""

from __future__ import annotations

import torch.nn.functional as F

from inspo.losses.base import BetaLoss, LossOutput, PairLogps, register_loss


@register_loss("bco_pair")
class BCOPairLoss(BetaLoss):
    """Binary Classifier Optimization on pairs; TRL ``loss_type="bco_pair"``.

    Paper: "Binary Classifier Optimization for Large Language Model Alignment", Jung, Han, Kim, Lee, Park, Ryu,
    arXiv 2404.04656 (2024). Matches TRL 1.16 ``trl/trainer/dpo_trainer.py`` (``DPOTrainer._compute_loss``),
    which, like this class, leaves out the paper's reward shift delta (a running mean of the rewards)::

        L = -log sigma(beta * (policy.chosen - reference.chosen))
            - log sigma(-beta * (policy.rejected - reference.rejected))

    Each response is classified on its own log-ratio, so the loss lowers whenever y_w rises or y_l falls (it is
    monotone in both, unlike the gap-only DPO). Rewards: ``beta * (policy - reference)`` per response.

    Typical hyperparameters: beta 0.01-0.1, as for DPO (0.1 is TRL's default).

    Args:
        beta: inverse temperature of the implicit reward (> 0).
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
    """

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        chosen, rejected = self.beta * chosen_ratio, self.beta * rejected_ratio
        losses = -F.logsigmoid(chosen) - F.logsigmoid(-rejected)
        return self.output(losses, chosen_ratio, rejected_ratio)

"""NCA (Chen et al. 2024): noise-contrastive alignment, pairwise form; each response's log-ratio on its own."""

from __future__ import annotations

import torch.nn.functional as F

from inspo.losses.base import BetaLoss, LossOutput, PairLogps, register_loss


@register_loss("nca_pair")
class NCAPairLoss(BetaLoss):
    """Noise Contrastive Alignment, the pairwise (K=2) preference form; TRL ``loss_type="nca_pair"``.

    Paper: "Noise Contrastive Alignment of Language Models with Explicit Rewards", Chen, Yang, Lin, Zhang, Zhu,
    arXiv 2402.05369 (2024). Matches TRL 1.16 ``trl/trainer/dpo_trainer.py`` (``DPOTrainer._compute_loss``).

    With the rewards ``u_w = beta * (policy.chosen - reference.chosen)``, ``u_l = beta * (policy.rejected -
    reference.rejected)``::

        L = -log sigma(u_w) - 0.5 * log sigma(-u_w) - 0.5 * log sigma(-u_l)

    Unlike DPO it scores each response's absolute reward rather than only the gap, so it keeps the chosen
    likelihood from falling with the rejected one. It raises y_w only while ``u_w < log 2`` (there
    ``dL/du_w = -sigma(-u_w) + sigma(u_w) / 2`` changes sign) and always lowers y_l. Rewards: ``u_w``, ``u_l``.

    Typical hyperparameters: beta 0.01-0.1, as for DPO (0.1 is TRL's default).

    Args:
        beta: inverse temperature of the implicit reward (> 0).
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
    """

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        chosen, rejected = self.beta * chosen_ratio, self.beta * rejected_ratio
        losses = -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)
        return self.output(losses, chosen_ratio, rejected_ratio)

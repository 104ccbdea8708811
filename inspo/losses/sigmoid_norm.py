"""Length-normalised DPO: the DPO loss on per-token log-ratios (TRL's ``sigmoid_norm``, Tulu 3's DPO)."""

from __future__ import annotations

import torch.nn.functional as F

from inspo.losses.base import BetaLoss, LossOutput, PairLogps, register_loss
from inspo.losses.divergence import Divergence


@register_loss("sigmoid_norm")
class SigmoidNormLoss(BetaLoss):
    """Length-normalised DPO; TRL ``loss_type="sigmoid_norm"``.

    Papers: DPO (Rafailov et al., arXiv 2305.18290) with each log-ratio averaged over its response's tokens, as in
    "Tulu 3: Pushing Frontiers in Open Language Model Post-Training", Lambert et al., arXiv 2411.15124 (2024),
    which trains with it. Matches TRL 1.16 ``trl/trainer/dpo_trainer.py`` (``DPOTrainer._compute_loss``)::

        L = -log sigma(beta * ((policy.chosen - reference.chosen) / chosen_tokens
                               - (policy.rejected - reference.rejected) / rejected_tokens))

    Averaging removes DPO's pull towards long answers (a summed log-ratio grows with length); since a per-token
    gap is about |y| times smaller than a summed one, beta must be about |y| times larger for the same strength.
    Monotone like DPO. Rewards follow the optimised form: ``beta * (policy - reference) / tokens`` per response.

    Typical hyperparameters: beta 1-10 (Tulu 3 uses 5), i.e. DPO's beta times a typical response length.

    Args:
        beta: inverse temperature of the per-token implicit reward (> 0).
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
        divergence: the f-divergence of the constraint (``inspo.losses.divergence``); reverse_kl is the form above.
        alpha_divergence_coef: TRL's ``f_alpha_divergence_coef`` c of ``alpha_divergence`` (c -> 1: reverse KL).
    """

    def __init__(self, beta: float = 5.0, sft_weight: float = 0.0,
                 divergence: Divergence = "reverse_kl", alpha_divergence_coef: float = 0.5) -> None:
        super().__init__(beta, sft_weight)
        self.set_divergence(divergence, alpha_divergence_coef)

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        chosen_score, rejected_score = self.scores(chosen_ratio, rejected_ratio)
        # token counts are >= 1: data validation never keeps an empty response
        chosen_tokens, rejected_tokens = policy.chosen_tokens.float(), policy.rejected_tokens.float()
        chosen, rejected = self.beta * chosen_ratio / chosen_tokens, self.beta * rejected_ratio / rejected_tokens
        losses = -F.logsigmoid(self.beta * (chosen_score / chosen_tokens - rejected_score / rejected_tokens))
        return LossOutput(losses=losses, chosen_rewards=chosen.detach(), rejected_rewards=rejected.detach())

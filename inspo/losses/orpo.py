"""ORPO (Hong et al. 2024): SFT plus an odds-ratio preference term, no reference model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from inspo.errors import ConfigError
from inspo.losses.base import LossOutput, PairLogps, PreferenceLoss, register_loss, sft_nll

# Largest average log-prob fed to the log-odds: at m == 0 (p ~ 1, or rounding) 1 - exp(m) == 0 and the log-odds and
# its gradient are inf/NaN; at -1e-6 they are capped near 13.8 and 1e6, finite in fp32.
MAX_MEAN_LOGP = -1e-6


def log_odds(mean_logp: Tensor) -> Tensor:
    """log(p / (1 - p)) for p = exp(mean_logp), computed as m - log(-expm1(m)) (no cancellation near p = 1)."""
    m = mean_logp.clamp(max=MAX_MEAN_LOGP)
    return m - torch.log(-torch.expm1(m))


@register_loss("orpo")
class ORPOLoss(PreferenceLoss):
    """Odds Ratio Preference Optimization.

    Paper: "ORPO: Monolithic Preference Optimization without Reference Model", Hong, Lee, Thorne, arXiv 2403.07691.

    With average log-probs ``m_w = policy.chosen / chosen_tokens`` and ``m_l = policy.rejected / rejected_tokens``
    and ``logodds(m) = m - log(1 - exp(m))``::

        L = -policy.chosen_plain / chosen_tokens + lam * ( -log sigma( logodds(m_w) - logodds(m_l) ) )

    The NLL term (:func:`sft_nll`) always uses the unconditioned log pi(y_w | x), also under InSPO: the model must
    learn to generate y_w from x alone; the odds-ratio term uses the run's conditioning (a_w, a_l under InSPO).
    Rewards (logged): ``lam * m``, the scaled average log-prob, as in TRL. Typical hyperparameters: lam 0.1 (the
    paper's 0.1-0.25 range; larger lam pushes rejected down harder).

    Args:
        lam: weight of the odds-ratio term (>= 0; 0 is plain SFT on y_w).
        sft_weight: weight of an *extra* chosen-response NLL term on top of ORPO's own (usually 0).
    """

    requires_reference = False
    reads_plain_logps = True  # the NLL term is on log pi(y_w|x)

    def __init__(self, lam: float = 0.1, sft_weight: float = 0.0) -> None:
        super().__init__(sft_weight=sft_weight)
        if not lam >= 0:
            raise ConfigError(f"ORPOLoss: lam must be >= 0, got {lam}")
        self.lam = lam

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_mean = policy.chosen.float() / policy.chosen_tokens.float()
        rejected_mean = policy.rejected.float() / policy.rejected_tokens.float()
        odds_ratio_loss = -F.logsigmoid(log_odds(chosen_mean) - log_odds(rejected_mean))
        return LossOutput(losses=sft_nll(policy) + self.lam * odds_ratio_loss,
                          chosen_rewards=(self.lam * chosen_mean).detach(),
                          rejected_rewards=(self.lam * rejected_mean).detach())

"""IPO (Azar et al. 2023): a squared loss that regresses the log-ratio gap onto a fixed target."""

from __future__ import annotations

from inspo.losses.base import BetaLoss, LossOutput, PairLogps, register_loss
from inspo.losses.divergence import Divergence


@register_loss("ipo")
class IPOLoss(BetaLoss):
    """Identity Preference Optimisation.

    Paper: "A General Theoretical Paradigm to Understand Learning from Human Preferences", Azar, Rowland, Piot,
    Guo, Calandriello, Valko, Munos, arXiv 2310.12036 (2023), eq. 17.

    By default (``average_log_ratios=True``) each log-ratio is divided by its response's token count, as TRL's
    ``loss_type="ipo"`` does and as the IPO authors confirmed their results were computed::

        h = (policy.chosen - reference.chosen) / chosen_tokens
            - (policy.rejected - reference.rejected) / rejected_tokens
        L = (h - 1 / (2 * beta))^2

    With ``average_log_ratios=False`` the log-ratios are summed over the response instead (the InSPO authors' form):
    ``h = (policy.chosen - reference.chosen) - (policy.rejected - reference.rejected)``; it needs a far smaller beta.

    The loss pushes h towards ``1/(2 beta)`` from either side, so it lowers y_w's log-ratio again once a pair
    overshoots the target; the chosen-up / rejected-down direction holds for ``h < 1/(2 beta)``.

    Rewards follow the form that is optimised: ``beta * (policy - reference) / tokens`` per response by default
    (``beta * (policy - reference)`` when summed), so the logged margin is ``beta * h`` and reward accuracy is the
    fraction of pairs with ``h > 0`` (TRL 1.16 logs the summed ``beta * log-ratio``).

    Typical hyperparameters: beta (tau) 0.01-1.0; 0.1 (TRL's default) asks for a gap of 5 nats per token (or,
    summed, for the whole answer). Another ``divergence`` regresses the gap of f'(pi/pi_ref) scores instead.

    Args:
        beta: IPO's regularisation tau (> 0); the target gap of h is ``1 / (2 * beta)``.
        average_log_ratios: divide each response's log-ratio by its token count (default, as TRL); False sums it.
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
        divergence: the f-divergence of the constraint (``inspo.losses.divergence``); reverse_kl is the form above.
        alpha_divergence_coef: TRL's ``f_alpha_divergence_coef`` c of ``alpha_divergence`` (c -> 1: reverse KL).
    """

    def __init__(self, beta: float = 0.1, average_log_ratios: bool = True, sft_weight: float = 0.0,
                 divergence: Divergence = "reverse_kl", alpha_divergence_coef: float = 0.5) -> None:
        super().__init__(beta, sft_weight)
        self.set_divergence(divergence, alpha_divergence_coef)
        self.average_log_ratios = average_log_ratios

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        chosen_score, rejected_score = self.scores(chosen_ratio, rejected_ratio)
        if self.average_log_ratios:  # token counts are >= 1: data validation never keeps an empty response
            chosen_tokens, rejected_tokens = policy.chosen_tokens.float(), policy.rejected_tokens.float()
            chosen_ratio, rejected_ratio = chosen_ratio / chosen_tokens, rejected_ratio / rejected_tokens
            chosen_score, rejected_score = chosen_score / chosen_tokens, rejected_score / rejected_tokens
        losses = (chosen_score - rejected_score - 1 / (2 * self.beta)) ** 2
        return self.output(losses, chosen_ratio, rejected_ratio)

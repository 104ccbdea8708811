"""IPO (Azar et al. 2023): a squared loss that regresses the log-ratio gap onto a fixed target."""

from __future__ import annotations

from inspo.errors import ConfigError
from inspo.losses.base import LossOutput, PairLogps, PreferenceLoss, logratios, register_loss


@register_loss("ipo")
class IPOLoss(PreferenceLoss):
    """Identity Preference Optimisation.

    Paper: "A General Theoretical Paradigm to Understand Learning from Human Preferences", Azar, Rowland, Piot,
    Guo, Calandriello, Valko, Munos, arXiv 2310.12036 (2023).

    With ``h = (policy.chosen - reference.chosen) - (policy.rejected - reference.rejected)``::

        L = (h - 1 / (2 * beta))^2

    ``beta`` is IPO's tau. As in the InSPO paper, h is built from *summed* log-probs (some libraries average
    over tokens instead, which changes the scale of a good beta). The loss pushes h towards ``1/(2 beta)`` from
    either side, so it lowers y_w's log-ratio again once a pair overshoots the target; the chosen-up /
    rejected-down direction holds for ``h < 1/(2 beta)``. Rewards: ``beta * (policy - reference)``.

    Typical hyperparameters: beta (tau) 0.01-1.0; 0.1 gives a target gap of 5 nats.

    Args:
        beta: IPO's regularisation tau (> 0); the target log-ratio gap is ``1 / (2 * beta)``.
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
    """

    uses_plain_logps = False

    def __init__(self, beta: float = 0.1, sft_weight: float = 0.0) -> None:
        super().__init__(sft_weight=sft_weight)
        if not beta > 0:
            raise ConfigError(f"IPOLoss: beta must be > 0, got {beta}")
        self.beta = beta

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        assert reference is not None  # checked by PreferenceLoss.forward
        chosen_ratio, rejected_ratio = logratios(policy, reference)
        losses = (chosen_ratio - rejected_ratio - 1 / (2 * self.beta)) ** 2
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * chosen_ratio).detach(),
            rejected_rewards=(self.beta * rejected_ratio).detach(),
        )

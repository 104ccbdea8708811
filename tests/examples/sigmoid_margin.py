"""Worked example: a new DPO variant in one file, registered under a short name (README, "Extending").

Select it from YAML by class path, ``model.loss: {class_path: tests.examples.sigmoid_margin.SigmoidMarginLoss,
init_args: {margin: 1.0}}``, or by short name, ``model.loss: sigmoid_margin``, once the module is imported
(``INSPO_PLUGINS=tests.examples.sigmoid_margin inspo fit ...``). It runs under both conditionings and every layout,
because a loss only ever sees :class:`~inspo.losses.PairLogps`. Exercised by ``tests/test_examples.py``.
"""

from __future__ import annotations

import torch.nn.functional as F

from inspo.losses import BetaLoss, LossOutput, PairLogps, register_loss


@register_loss("sigmoid_margin")
class SigmoidMarginLoss(BetaLoss):
    """DPO with a fixed margin: L = -log sigma(beta * h - margin), h = (a_w - r_w) - (a_l - r_l).

    With margin 0 this is DPO. A margin > 0 keeps pushing pairs whose implicit reward gap is already positive but
    small (typical: beta 0.1, margin 0.1 - 1).

    Args:
        beta: inverse temperature of the implicit reward beta * log(pi / pi_ref).
        margin: required reward gap, in reward units.
        sft_weight: weight of the chosen-response NLL term.
    """

    requires_reference = True

    def __init__(self, beta: float = 0.1, margin: float = 0.5, sft_weight: float = 0.0) -> None:
        super().__init__(beta, sft_weight)  # BetaLoss checks beta > 0
        self.margin = margin

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen, rejected = self.log_ratios(policy, reference)  # log pi(y) - log pi_ref(y|x), fp32
        losses = -F.logsigmoid(self.beta * (chosen - rejected) - self.margin)
        return self.output(losses, chosen, rejected)  # adds the rewards beta * log-ratio for the metrics

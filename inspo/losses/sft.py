"""SFT as a loss of its own: the negative log-likelihood of the chosen response (TRL's ``loss_type="sft"``)."""

from __future__ import annotations

from typing import Literal

from inspo.errors import ConfigError
from inspo.losses.base import LossOutput, PairLogps, PreferenceLoss, register_loss, sft_nll


@register_loss("sft")
class SFTLoss(PreferenceLoss):
    """Supervised fine-tuning on y_w, no reference; TRL 1.16 ``loss_type="sft"`` (``trl/trainer/dpo_trainer.py``,
    ``DPOTrainer._compute_loss``). With p_w = log pi(y_w|x) summed over y_w's tokens::

        normalize="tokens":   L = -sum_i p_w,i / sum_i |y_w,i|     (the batch's per-token NLL: TRL's, SFTTrainer's)
        normalize="sequence": L = mean_i (-p_w,i / |y_w,i|)       (per sequence first, like the RPO paper's NLL)

    Per pair, ``tokens`` reports ``-p_w,i / mean_j |y_w,j|``, whose mean is the batch's per-token NLL (like TRL's,
    it depends on the micro-batch: each micro-batch and data-parallel rank divides by its own token count).
    ``sequence`` is exactly the ``sft_weight`` term of every loss (:func:`~inspo.losses.base.sft_nll`). The two agree
    when every y_w has the same length; otherwise ``tokens`` weighs long answers more.

    InSPO version: always the unconditioned log pi(y_w|x) (``chosen_plain``), never log pi(y_w|x, y_l). SFT has no
    pair to compare, so InSPO's cross-conditioning has nothing to act on; what the term is for (keeping y_w likely,
    RPO's reason, or imitating it) is about generating from x alone, as the deployed model does. The conditioned
    form would train a skill (continuing after a shown alternative) that sampling never uses. So ``sft`` trains the
    same objective under both conditionings, as ORPO's NLL term and ``sft_weight`` do. No reference: ``reference:
    auto`` resolves to none. Rewards (logging only): the average log-prob log pi(y|x)/|y| of each response.

    Typical use: a baseline, the SFT step before preference training, and mostly a part of a weighted sum: RPO
    (Pang et al. 2024, arXiv 2404.19733) is ``loss: [dpo, sft]`` with ``loss_weights: [1.0, 1.0]``
    (:class:`~inspo.losses.weighted.WeightedLoss`, ``configs/loss/rpo.yaml``). No hyperparameter of its own.

    Args:
        normalize: ``tokens`` (TRL's) or ``sequence`` (see above).
        sft_weight: weight of an *extra* per-sequence NLL term (see :class:`PreferenceLoss`; usually 0).
    """

    requires_reference = False
    reads_plain_logps = True  # the whole loss is on log pi(y_w|x)

    def __init__(self, normalize: Literal["tokens", "sequence"] = "tokens", sft_weight: float = 0.0) -> None:
        super().__init__(sft_weight=sft_weight)
        if normalize not in ("tokens", "sequence"):
            raise ConfigError(f"SFTLoss: normalize must be 'tokens' or 'sequence', got {normalize!r}")
        self.normalize = normalize

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        if self.normalize == "tokens":  # -p_w / mean |y_w|: the mean over pairs is sum(-p_w) / sum |y_w|
            losses = -policy.chosen_plain.float() / policy.chosen_tokens.float().mean()
        else:
            losses = sft_nll(policy)  # -p_w / |y_w|
        return LossOutput(losses=losses,
                          chosen_rewards=(policy.chosen_plain.float() / policy.chosen_tokens.float()).detach(),
                          rejected_rewards=(policy.rejected_plain.float() / policy.rejected_tokens.float()).detach())

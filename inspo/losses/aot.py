"""AOT (Melnyk et al. 2024), paired: DPO on sorted log-ratio margins, a distributional preference constraint."""

from __future__ import annotations

from inspo.losses.base import LossOutput, PairLogps, register_loss
from inspo.losses.sorted_batch import BatchSortingLoss


@register_loss("aot")
class AOTLoss(BatchSortingLoss):
    """Alignment via Optimal Transport, paired form; TRL ``loss_type="aot"``.

    Paper: "Distributional Preference Alignment of LLMs via Optimal Transport", Melnyk, Mroueh, Belgodere et al.,
    arXiv 2406.05882 (2024), the paired AOT objective (first-order stochastic dominance of the policy's margins over
    the reference's, via sorting). Matches TRL 1.16
    ``trl/trainer/dpo_trainer.py`` (``DPOTrainer._compute_loss``). With the per-pair margins
    ``m = policy.chosen - policy.rejected`` and ``m_ref = reference.chosen - reference.rejected``, each sorted over
    the batch (the 1-D optimal transport map pairs their quantiles)::

        L_j = -(1 - eps) * log sigma(beta * d_j) - eps * log sigma(-beta * d_j),  d = sort(m) - sort(m_ref)

    ``L_j`` belongs to the j-th sorted position, not to pair j (only the mean is meaningful). Under InSPO the policy
    margins are a_w - a_l. Rewards: ``beta * (policy - reference)`` per pair, unsorted (as TRL logs them).

    The batch matters (``inspo.losses.sorted_batch``): ``trainer.accumulate_grad_batches > 1`` is refused at fit
    start; under DDP / FSDP the margins of all ranks are gathered, so the sort is over the global batch, and the
    gradients are those of the global loss.

    Typical hyperparameters: beta 0.01-0.1 as for DPO (TRL's default 0.1), label_smoothing 0; the sort compares
    quantiles of the batch, so it wants global batches of many pairs.

    Args:
        beta: inverse temperature (> 0).
        label_smoothing: conservative label smoothing eps (0 <= eps < 0.5).
        sft_weight: weight of the chosen-response NLL term (see :class:`PreferenceLoss`).
    """

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        assert reference is not None
        margin = policy.chosen.float() - policy.rejected.float()
        reference_margin = reference.chosen.float() - reference.rejected.float()
        losses = self.sorted_losses(margin, reference_margin)
        return self.output(losses, chosen_ratio, rejected_ratio)

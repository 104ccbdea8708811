"""AOT (Melnyk et al. 2024), unpaired: the sorted chosen log-ratios against the sorted rejected ones."""

from __future__ import annotations

from inspo.losses.base import LossOutput, PairLogps, register_loss
from inspo.losses.sorted_batch import BatchSortingLoss


@register_loss("aot_unpaired")
class AOTUnpairedLoss(BatchSortingLoss):
    """Alignment via Optimal Transport, unpaired form; TRL ``loss_type="aot_unpaired"``.

    Paper: "Distributional Preference Alignment of LLMs via Optimal Transport", Melnyk, Mroueh, Belgodere et al.,
    arXiv 2406.05882 (2024), the unpaired AOT objective: the distribution of chosen rewards should dominate that of
    rejected rewards, whichever pair they came from. Matches TRL 1.16 ``trl/trainer/dpo_trainer.py``
    (``DPOTrainer._compute_loss``). With ``c = policy.chosen - reference.chosen`` and
    ``l = policy.rejected - reference.rejected``, each sorted over the batch::

        L_j = -(1 - eps) * log sigma(beta * d_j) - eps * log sigma(-beta * d_j),  d = sort(c) - sort(l)

    ``L_j`` belongs to the j-th sorted position, not to pair j (only the mean is meaningful); the pairing of the data
    is not used, so it also fits unpaired data (here it still reads both responses of every pair). Rewards:
    ``beta * (policy - reference)`` per pair, unsorted (as TRL logs them).

    The batch, typical hyperparameters and arguments are as for :class:`~inspo.losses.aot.AOTLoss`:
    ``trainer.accumulate_grad_batches > 1`` is refused, under DDP / FSDP the sort is over the global batch; beta
    0.01-0.1, label_smoothing 0 (``label_smoothing`` eps, 0 <= eps < 0.5), ``sft_weight`` as in every loss.
    """

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        losses = self.sorted_losses(chosen_ratio, rejected_ratio)
        return self.output(losses, chosen_ratio, rejected_ratio)

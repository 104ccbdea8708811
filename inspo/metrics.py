"""What :class:`inspo.module.PreferenceModule` logs, per stage (``train``, ``val``, ``test``), and what it means.

Every key is ``<stage>/<name>``; training logs per step (``_step``) and per epoch (``_epoch``), validation and
test per epoch. With r = the loss's implicit reward (e.g. beta * (log pi - log pi_ref) for DPO):

- ``loss``: the run's loss; ``reward_accuracy``: the fraction of pairs with r_w > r_l; ``reward_margin``:
  r_w - r_l; ``chosen_reward`` / ``rejected_reward``: r_w, r_l; ``chosen_logp`` / ``rejected_logp``: the
  policy's summed log-probs of y_w, y_l.

These describe the policy **under the run's conditioning**. Under standard conditioning that is log pi(y|x).
Under InSPO it is the cross-conditioned model, log pi(y_w|x,y_l) and log pi(y_l|x,y_w) (against the
unconditioned reference log pi_ref(y|x)): what InSPO trains, not what a user deploys, which answers from x alone.
So under InSPO, validation and test also log the **unconditioned view**, the run's loss applied to log pi(y|x)
against log pi_ref(y|x), i.e. exactly what a standard-conditioning evaluation of the same weights reports:

- ``val/plain_loss``, ``val/plain_reward_accuracy``, ``val/plain_reward_margin``, ``val/plain_chosen_reward``,
  ``val/plain_rejected_reward`` (and ``test/plain_*``).

Under standard conditioning the ``plain_*`` keys are not logged: they would equal the others. In training they are
not logged either (the training step computes log pi(y|x) only when the loss reads it: ``reads_plain_logps``).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchmetrics import MeanMetric

from inspo.losses import LossOutput, PairLogps

METRICS = ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "chosen_logp",
           "rejected_logp")
PLAIN_METRICS = ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")
"""The unconditioned view under InSPO, logged as ``<stage>/plain_<name>`` in validation and test."""
PLAIN_STAGES = ("val", "test")
PROGRESS_BAR = ("loss", "reward_accuracy", "reward_margin")


def make_metrics() -> nn.ModuleDict:
    """One running mean per logged key (``train/loss``, ..., ``val/plain_loss``, ...)."""
    keys = [f"{stage}/{name}" for stage in ("train", "val", "test") for name in METRICS]
    keys += [f"{stage}/plain_{name}" for stage in PLAIN_STAGES for name in PLAIN_METRICS]
    return nn.ModuleDict({key: MeanMetric() for key in keys})


def pair_metrics(out: LossOutput, policy: PairLogps | None = None) -> dict[str, Tensor]:
    """Per-pair values of every metric of one batch (``chosen_logp`` / ``rejected_logp`` only with ``policy``)."""
    values = {
        "loss": out.losses.detach(),
        "reward_accuracy": (out.chosen_rewards > out.rejected_rewards).float(),
        "reward_margin": out.chosen_rewards - out.rejected_rewards,
        "chosen_reward": out.chosen_rewards,
        "rejected_reward": out.rejected_rewards,
    }
    if policy is not None:
        values.update(chosen_logp=policy.chosen.detach(), rejected_logp=policy.rejected.detach())
    return values


def plain_view(policy: PairLogps | None) -> PairLogps | None:
    """The policy's unconditioned log-probs log pi(y|x) as a standard-conditioning :class:`PairLogps`, or None
    when ``policy`` is not conditioned (it already is that view) or they were not computed."""
    if policy is None or not policy.conditioned or policy.chosen_plain is None or policy.rejected_plain is None:
        return None
    parts = {name: plain_view(getattr(policy, name)) for name in ("tail", "log_sum_sq")}  # the options' inputs
    return PairLogps(chosen=policy.chosen_plain, rejected=policy.rejected_plain, chosen_tokens=policy.chosen_tokens,
                     rejected_tokens=policy.rejected_tokens, **parts)

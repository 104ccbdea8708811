"""The loss strategy contract: what every DPO-family loss sees and returns.

A loss never sees token ids. It receives per-pair sums of log-probabilities (and token counts) computed by the
module under the run's conditioning, plus the unconditioned reference log-probs, and returns per-example losses
and implicit rewards. Standard DPO uses p = log pi(y|x); InSPO swaps in the cross-conditioned
a_w = log pi(y_w|x,y_l) and a_l = log pi(y_l|x,y_w). The reference is always log pi_ref(y|x).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from torch import Tensor, nn

from inspo.errors import ConfigError


@dataclass
class PairLogps:
    """Summed log-probabilities for a batch of B preference pairs, each of shape [B].

    Attributes:
        chosen: log-prob sum of y_w under the run's conditioning (p_w for standard, a_w for InSPO).
        rejected: log-prob sum of y_l under the run's conditioning (p_l or a_l).
        chosen_tokens: |y_w| as float.
        rejected_tokens: |y_l| as float.
        chosen_plain: log pi(y_w|x) when the conditioning is not the standard one and the loss reads it (ORPO,
            SFT terms; see :attr:`PreferenceLoss.needs_plain_logps`), else None.
        rejected_plain: log pi(y_l|x), likewise.
        conditioned: chosen / rejected are conditioned on more than x (InSPO): then the plain log-probs are not
            chosen / rejected, and reading them when they were not computed is an error.
    """

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    chosen_plain: Tensor | None = None
    rejected_plain: Tensor | None = None
    conditioned: bool = False

    @property
    def plain_chosen(self) -> Tensor:
        """log pi(y_w|x): the unconditioned chosen log-prob whatever the conditioning."""
        return self._plain(self.chosen, self.chosen_plain)

    @property
    def plain_rejected(self) -> Tensor:
        """log pi(y_l|x): the unconditioned rejected log-prob whatever the conditioning."""
        return self._plain(self.rejected, self.rejected_plain)

    def _plain(self, value: Tensor, plain: Tensor | None) -> Tensor:
        if plain is not None:
            return plain
        if self.conditioned:
            raise ValueError("log pi(y|x) was not computed for this conditioned batch: a loss that reads "
                             "plain_chosen / plain_rejected must set uses_plain_logps = True")
        return value


@dataclass
class LossOutput:
    """Per-example results of a loss, each of shape [B].

    Attributes:
        losses: the per-pair loss; the training objective is its mean.
        chosen_rewards: the implicit reward of y_w (e.g. beta * (log pi - log pi_ref)); detached.
        rejected_rewards: the implicit reward of y_l; detached.
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor

    @property
    def loss(self) -> Tensor:
        return self.losses.mean()


class PreferenceLoss(nn.Module):
    """Base class of every pairwise preference loss.

    Subclasses implement :meth:`pair_loss`. :meth:`forward` checks the reference and adds the optional SFT term
    ``sft_weight * (-log pi(y_w|x) / |y_w|)`` (the per-token NLL of the chosen response, always unconditioned).
    A loss that never reads ``plain_chosen`` / ``plain_rejected`` sets ``uses_plain_logps = False``: under InSPO
    the module then skips those targets (their output projection and log-softmax, about 8% of an InSPO step).

    Args:
        sft_weight: weight of the chosen-response NLL term added to the loss (0 disables it).
    """

    requires_reference: ClassVar[bool] = True
    uses_plain_logps: ClassVar[bool] = True

    def __init__(self, sft_weight: float = 0.0) -> None:
        super().__init__()
        if not sft_weight >= 0:  # also NaN
            raise ConfigError(f"{type(self).__name__}: sft_weight must be >= 0, got {sft_weight}")
        self.sft_weight = sft_weight

    @property
    def needs_plain_logps(self) -> bool:
        """Whether this loss reads log pi(y|x) besides the conditioned log-probs (its own term or the SFT term)."""
        return self.uses_plain_logps or self.sft_weight > 0

    def forward(self, policy: PairLogps, reference: PairLogps | None = None) -> LossOutput:
        if self.requires_reference and reference is None:
            raise ValueError(f"{type(self).__name__} requires reference log-probs, got reference=None")
        out = self.pair_loss(policy, reference)
        if self.sft_weight:
            out.losses = out.losses + self.sft_weight * sft_nll(policy)
        return out

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        raise NotImplementedError


def sft_nll(policy: PairLogps) -> Tensor:
    """Per-token negative log-likelihood of the chosen response, unconditioned: -log pi(y_w|x) / |y_w|, in fp32."""
    return -policy.plain_chosen.float() / policy.chosen_tokens.float()


def logratios(policy: PairLogps, reference: PairLogps) -> tuple[Tensor, Tensor]:
    """(log pi(y_w) - log pi_ref(y_w|x), log pi(y_l) - log pi_ref(y_l|x)) under the run's conditioning, in fp32."""
    return policy.chosen.float() - reference.chosen.float(), policy.rejected.float() - reference.rejected.float()


LOSSES: dict[str, type[PreferenceLoss]] = {}

L = TypeVar("L", bound=type[PreferenceLoss])


def register_loss(name: str) -> Callable[[L], L]:
    """Class decorator adding a loss to :data:`LOSSES` under a short name (used by ``--model.loss NAME``)."""

    def decorator(cls: L) -> L:
        if name in LOSSES and LOSSES[name] is not cls:
            raise ValueError(f"loss name {name!r} is already registered to {LOSSES[name].__qualname__}")
        LOSSES[name] = cls
        return cls

    return decorator

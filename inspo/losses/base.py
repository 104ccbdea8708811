"""The loss strategy contract: what every DPO-family loss sees and returns.

A loss never sees token ids. It receives per-pair sums of log-probabilities (and token counts) computed by the
module under the run's conditioning, plus the unconditioned reference log-probs, and returns per-example losses
and implicit rewards. Standard DPO uses p = log pi(y|x); InSPO swaps in the cross-conditioned
a_w = log pi(y_w|x,y_l) and a_l = log pi(y_l|x,y_w). The reference is always log pi_ref(y|x).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from torch import Tensor, nn

from inspo.errors import ConfigError
from inspo.losses.divergence import check_divergence, f_score
from inspo.registry import Registry


@dataclass
class PairLogps:
    """Summed log-probabilities for a batch of B preference pairs, each of shape [B].

    Attributes:
        chosen: log-prob sum of y_w under the run's conditioning (p_w for standard, a_w for InSPO).
        rejected: log-prob sum of y_l under the run's conditioning (p_l or a_l).
        chosen_tokens: |y_w| as float.
        rejected_tokens: |y_l| as float.
        chosen_plain: log pi(y_w|x), the unconditioned log-prob, whatever the conditioning: ``chosen`` itself when
            not ``conditioned``; under InSPO computed only for a loss that reads it (ORPO, SFT terms; see
            :attr:`PreferenceLoss.reads_plain_logps`) and for validation, else None.
        rejected_plain: log pi(y_l|x), likewise.
        conditioned: chosen / rejected are conditioned on more than x (InSPO), so they are not the plain log-probs.
        tail: the same sums over each response's tail only, its tokens beyond the first min(|y_w|, |y_l|) (LD-DPO,
            ``inspo.loss_options``; ``tail.chosen_tokens`` counts them); None unless asked for.
        log_sum_sq: per response, the sum over its tokens of log sum_v pi(v | context)^2, in the same contexts as
            the log-probs (WPO's normaliser, ``inspo.loss_options``); None unless asked for.
    """

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    chosen_plain: Tensor | None = None
    rejected_plain: Tensor | None = None
    conditioned: bool = False
    tail: PairLogps | None = None
    log_sum_sq: PairLogps | None = None

    def __post_init__(self) -> None:
        if not self.conditioned:  # the standard view: log pi(y|x) is what was scored
            self.chosen_plain = self.chosen if self.chosen_plain is None else self.chosen_plain
            self.rejected_plain = self.rejected if self.rejected_plain is None else self.rejected_plain


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
    A loss whose own term reads ``policy.chosen_plain`` / ``policy.rejected_plain`` (log pi(y|x) under InSPO, e.g.
    ORPO's NLL) sets ``reads_plain_logps = True``; by default a loss does not, and under InSPO the training step
    then skips those targets (their output projection and log-softmax, about 8% of an InSPO step).

    ``sft_weight: a`` is the older form of RPO: it equals the weighted sum ``[this loss, {class_path: sft,
    init_args: {normalize: sequence}}]`` with weights ``[1, a]`` exactly; ``model.loss: [dpo, sft]`` (TRL's form,
    :class:`~inspo.losses.weighted.WeightedLoss`) averages the NLL over the batch's tokens instead.

    Args:
        sft_weight: weight of the chosen-response NLL term added to the loss (0 disables it).
    """

    requires_reference: ClassVar[bool] = True
    reads_plain_logps: bool = False
    """Set on the class when the loss's own term reads log pi(y|x); an instance with ``sft_weight > 0`` reads it too."""
    divergence: str = "reverse_kl"
    """The f-divergence of the constraint (:mod:`inspo.losses.divergence`). A loss that admits another one takes
    ``divergence`` and ``alpha_divergence_coef`` init arguments, calls :meth:`set_divergence` and reads
    :meth:`scores`; the others keep reverse KL and have no such argument."""
    alpha_divergence_coef: float = 0.5

    def __init__(self, sft_weight: float = 0.0) -> None:
        super().__init__()
        if not sft_weight >= 0:  # also NaN
            raise ConfigError(f"{type(self).__name__}: sft_weight must be >= 0, got {sft_weight}")
        self.sft_weight = sft_weight
        self.reads_plain_logps = type(self).reads_plain_logps or sft_weight > 0

    def forward(self, policy: PairLogps, reference: PairLogps | None = None) -> LossOutput:
        if self.requires_reference and reference is None:
            raise ValueError(f"{type(self).__name__} requires reference log-probs, got reference=None")
        try:
            out = self.pair_loss(policy, reference)
        except (AttributeError, TypeError) as err:  # None.float(): the plain log-probs were never computed
            if policy.chosen_plain is None or policy.rejected_plain is None:
                raise ValueError(f"{type(self).__name__} failed ({err}); if it reads log pi(y|x) (chosen_plain / "
                                 "rejected_plain), which was not computed for this conditioned batch, set "
                                 "reads_plain_logps = True on the class") from err
            raise
        if self.sft_weight:
            out.losses = out.losses + self.sft_weight * sft_nll(policy)
        return out

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        raise NotImplementedError

    def check_fit(self, trainer: Any) -> None:
        """Refuse, in one ConfigError line, a trainer setting this loss cannot honour; called at fit start (the
        batch-sorting AOT losses refuse gradient accumulation). Default: every setting is fine."""

    def set_divergence(self, divergence: str, alpha_divergence_coef: float) -> None:
        """Check and keep the f-divergence options (:mod:`inspo.losses.divergence`)."""
        check_divergence(type(self).__name__, divergence, alpha_divergence_coef)
        self.divergence, self.alpha_divergence_coef = divergence, alpha_divergence_coef

    def scores(self, chosen_ratio: Tensor, rejected_ratio: Tensor) -> tuple[Tensor, Tensor]:
        """Each response's f'(pi/pi_ref) under :attr:`divergence`: the log-ratios themselves for reverse KL (DPO)."""
        coef = self.alpha_divergence_coef
        return f_score(chosen_ratio, self.divergence, coef), f_score(rejected_ratio, self.divergence, coef)

    def log_ratios(self, policy: PairLogps, reference: PairLogps | None) -> tuple[Tensor, Tensor]:
        """:func:`logratios` of a loss that requires a reference (``forward`` has checked it is given)."""
        assert reference is not None, f"{type(self).__name__} requires reference log-probs"
        return logratios(policy, reference)


class BetaLoss(PreferenceLoss):
    """A loss on the implicit rewards ``beta * (log pi(y) - log pi_ref(y|x))`` of the two responses.

    Holds ``beta`` (checked > 0) and :meth:`output`, which attaches those rewards (detached: the metrics' chosen
    and rejected rewards) to the per-pair losses. A subclass with more hyperparameters calls
    ``super().__init__(beta, sft_weight)``.
    """

    def __init__(self, beta: float = 0.1, sft_weight: float = 0.0) -> None:
        super().__init__(sft_weight=sft_weight)
        if not beta > 0:  # also NaN
            raise ConfigError(f"{type(self).__name__}: beta must be > 0, got {beta}")
        self.beta = beta

    def output(self, losses: Tensor, chosen_ratio: Tensor, rejected_ratio: Tensor) -> LossOutput:
        """``losses`` with the rewards ``beta * chosen_ratio`` and ``beta * rejected_ratio``."""
        return LossOutput(losses, (self.beta * chosen_ratio).detach(), (self.beta * rejected_ratio).detach())


def sft_nll(policy: PairLogps) -> Tensor:
    """Per-token negative log-likelihood of the chosen response, unconditioned: -log pi(y_w|x) / |y_w|, in fp32."""
    if policy.chosen_plain is None:
        raise ValueError("the SFT term reads log pi(y_w|x), which was not computed for this conditioned batch")
    return -policy.chosen_plain.float() / policy.chosen_tokens.float()


def logratios(policy: PairLogps, reference: PairLogps) -> tuple[Tensor, Tensor]:
    """(log pi(y_w) - log pi_ref(y_w|x), log pi(y_l) - log pi_ref(y_l|x)) under the run's conditioning, in fp32."""
    return policy.chosen.float() - reference.chosen.float(), policy.rejected.float() - reference.rejected.float()


L = TypeVar("L", bound=type)

LOSSES: Registry[PreferenceLoss] = Registry("loss", PreferenceLoss)
"""Short name -> loss class (``--model.loss NAME``); ``register_loss("name")`` adds one."""


def register_loss(name: str, aliases: tuple[str, ...] = ()) -> Callable[[L], L]:
    """Class decorator adding a loss to :data:`LOSSES` under a short name (used by ``--model.loss NAME``) and
    optional aliases (another library's name for the same loss, e.g. TRL's ``sigmoid`` for ``dpo``)."""
    return LOSSES.register(name, aliases)

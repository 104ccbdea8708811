"""What each response is conditioned on: the standard view log pi(y|x) or InSPO's cross-conditioned view.

A conditioning names, for every log-prob the loss needs, the sequence of segments that is fed to the model; the
last segment of each sequence is the scored target. Segments are named, so a layout can share common prefixes
(``x`` is computed once per pair in the packed layout) without knowing which conditioning produced them:

- ``x``: the prompt (chat template applied), ``y_w`` / ``y_l``: chosen / rejected response,
- ``before`` / ``after``: the reflection template's text around the alternative response (InSPO only).

InSPO (Li, Lan, Qi 2025, arXiv 2512.23126) scores each response while seeing the other one:
a_w = log pi(y_w | x, y_l) and a_l = log pi(y_l | x, y_w); the reference stays log pi_ref(y | x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from transformers import PreTrainedTokenizerBase

from inspo.errors import ConfigError
from inspo.registry import Registry

Sequences = dict[str, tuple[str, ...]]
"""Target name -> segment names; the last segment is the target."""

REFERENCE_SEQUENCES: Sequences = {"chosen": ("x", "y_w"), "rejected": ("x", "y_l")}
"""The reference model always scores responses unconditioned, log pi_ref(y | x), whatever the conditioning."""

PLAIN_SEQUENCES: Sequences = {"chosen_plain": ("x", "y_w"), "rejected_plain": ("x", "y_l")}
"""The policy's unconditioned log pi(y | x) under a conditioned view (ORPO/SFT terms, ``plain_*`` metrics)."""


@dataclass(frozen=True)
class ReflectionTemplate:
    """Text placed around the alternative response: ``[x][before][y_alt][after][y_target]``.

    The default (both empty) is the paper's raw concatenation ``[x][y_alt][y_target]``. A chat-style framing,
    e.g. ``after_alternative="<|im_start|>user\\nGive a better answer.<|im_end|>\\n<|im_start|>assistant\\n"``,
    shows the alternative as an earlier answer; which framing works best is an open research question.

    Attributes:
        before_alternative: text between the prompt and the alternative response.
        after_alternative: text between the alternative response and the scored target.
    """

    before_alternative: str = ""
    after_alternative: str = ""


class Conditioning:
    """Base class: maps a pair to named segments and says which sequences the policy scores.

    Subclass, override :meth:`segments` and/or :attr:`policy_sequences`, and register it with
    ``@CONDITIONINGS.register("name")`` to try a new way of showing context to the policy; select it with
    ``model.conditioning: name`` or by ``class_path`` (with ``init_args`` for the subclass's own arguments).

    Attributes:
        policy_sequences: the segments ``chosen`` and ``rejected`` are scored after (the last one is the target).
        conditioned: capability flag: chosen / rejected see more than x, so log pi(y|x) (``chosen_plain``,
            ``rejected_plain``) are other targets, scored only when asked (:meth:`sequences`). Default True, the
            safe choice: a conditioning that scores log pi(y|x) itself (:class:`StandardConditioning`) says False.
    """

    policy_sequences: ClassVar[Sequences]
    conditioned: ClassVar[bool] = True
    weight: float = 1.0
    """Weight w of this view in the loss, ``w * L(this view) + (1 - w) * L(log pi(y|x))`` (1: this view alone)."""

    def __init__(self) -> None:
        self.extra_segments: dict[str, list[int]] = {"before": [], "after": []}

    @property
    def name(self) -> str:
        """The registered short name, or the class name of an unregistered conditioning."""
        return CONDITIONINGS.name_of(type(self)) or type(self).__name__

    def setup(self, tokenizer: PreTrainedTokenizerBase, template: ReflectionTemplate | None = None) -> Conditioning:
        """Tokenise the reflection template once the tokenizer is known (``configure_model``); returns self."""
        template = template or ReflectionTemplate()
        # Template text is tokenised once, on its own, with no special tokens: it never merges with a response.
        self.extra_segments = {
            "before": tokenizer(template.before_alternative, add_special_tokens=False).input_ids,
            "after": tokenizer(template.after_alternative, add_special_tokens=False).input_ids,
        }
        return self

    def segments(self, prompt: list[int], chosen: list[int], rejected: list[int]) -> dict[str, list[int]]:
        """Token ids of every named segment of one pair."""
        return {"x": prompt, "y_w": chosen, "y_l": rejected, **self.extra_segments}

    def sequences(self, plain: bool = False) -> Sequences:
        """The policy's targets: ``chosen`` and ``rejected``, and with ``plain`` under a conditioned view also
        log pi(y|x), ``chosen_plain`` and ``rejected_plain`` (named as the :class:`~inspo.losses.PairLogps` fields)."""
        return {**self.policy_sequences, **(PLAIN_SEQUENCES if plain and self.conditioned else {})}


CONDITIONINGS: Registry[Conditioning] = Registry("conditioning", Conditioning)
"""Short name -> conditioning class (``model.conditioning: NAME``)."""


@CONDITIONINGS.register("standard")
class StandardConditioning(Conditioning):
    """DPO's view: p_w = log pi(y_w | x), p_l = log pi(y_l | x)."""

    policy_sequences = REFERENCE_SEQUENCES
    conditioned = False


@CONDITIONINGS.register("inspo")
class InSPOConditioning(Conditioning):
    """InSPO's view: a_w = log pi(y_w | x, y_l), a_l = log pi(y_l | x, y_w); the plain log pi(y | x) on request.

    The plain log-probs feed ORPO/SFT-type terms and the ``plain_*`` validation metrics; with the raw template they
    come from the same rows at no extra tokens ([x, y_w] is a prefix of [x, y_w, y_l]).
    """

    policy_sequences: ClassVar[Sequences] = {
        "chosen": ("x", "before", "y_l", "after", "y_w"),
        "rejected": ("x", "before", "y_w", "after", "y_l"),
    }

    def __init__(self, weight: float = 1.0) -> None:
        """Args:
            weight: w in ``L = w * L(InSPO view) + (1 - w) * L(standard view)``, in [0, 1]: 1 is InSPO, 0 the standard
                loss (the knob the paper's invariance argument invites; ``--model.conditioning.weight 0.5``). Below 1
                the standard view's log pi(y|x) comes from the same packed row, with no extra forward.
        """
        super().__init__()
        if not 0 <= weight <= 1:  # also NaN
            raise ConfigError(f"conditioning inspo: weight must be in [0, 1], got {weight}")
        self.weight = weight


def make_conditioning(
    conditioning: Conditioning | str | dict, tokenizer: PreTrainedTokenizerBase, template: ReflectionTemplate | None = None
) -> Conditioning:
    """A conditioning (instance, short name or class_path) set up for ``tokenizer``."""
    return CONDITIONINGS.resolve(conditioning).setup(tokenizer, template)

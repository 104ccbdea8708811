"""Worked example: a new conditioning by overriding one hook, :meth:`Conditioning.segments` (README, "Extending").

"Peek" InSPO lets the policy see only the first ``peek_tokens`` tokens of the alternative response:
a_w = log pi(y_w | x, y_l[:K]), a_l = log pi(y_l | x, y_w[:K]); the reference stays log pi_ref(y | x). It
interpolates between DPO (K = 0) and InSPO (K = |y|): how much of the alternative does the policy need?

``segments`` adds two named segments, ``policy_sequences`` says which sequence scores which target; the layouts
(separate and packed) build rows from names alone, so nothing else changes. It is ``conditioned`` (the base's
default), so log pi(y|x) is scored as separate targets when a loss or a validation metric reads it. Select it with
``model.conditioning: peek`` once the module is imported (``INSPO_PLUGINS=tests.examples.peek inspo fit ...``),
then ``--model.conditioning.peek_tokens 8``; or by ``class_path: tests.examples.peek.PeekConditioning``.
"""

from __future__ import annotations

from typing import ClassVar

from inspo.conditioning import CONDITIONINGS, Conditioning, Sequences


@CONDITIONINGS.register("peek")
class PeekConditioning(Conditioning):
    """InSPO with a truncated alternative: y_w is scored after the first K tokens of y_l, and vice versa.

    Args:
        peek_tokens: K, how many tokens of the alternative response the policy sees.
    """

    policy_sequences: ClassVar[Sequences] = {
        "chosen": ("x", "before", "peek_l", "after", "y_w"),
        "rejected": ("x", "before", "peek_w", "after", "y_l"),
    }

    def __init__(self, peek_tokens: int = 4) -> None:
        super().__init__()
        self.peek_tokens = peek_tokens

    def segments(self, prompt: list[int], chosen: list[int], rejected: list[int]) -> dict[str, list[int]]:
        k = self.peek_tokens
        return {**super().segments(prompt, chosen, rejected), "peek_w": chosen[:k], "peek_l": rejected[:k]}

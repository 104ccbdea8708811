"""Worked example: a new conditioning by overriding one hook, :meth:`Conditioning.segments` (README, "Extending").

"Peek" InSPO lets the policy see only the first ``PEEK_TOKENS`` tokens of the alternative response:
a_w = log pi(y_w | x, y_l[:K]), a_l = log pi(y_l | x, y_w[:K]); the reference stays log pi_ref(y | x). It
interpolates between DPO (K = 0) and InSPO (K = |y|): how much of the alternative does the policy need?

``segments`` adds two named segments, ``policy_sequences`` says which sequence scores which target; the layouts
(separate and packed) build rows from names alone, so nothing else changes. Select it with
``model.conditioning: peek`` once the module is imported (``INSPO_PLUGINS=tests.examples.peek inspo fit ...``).
"""

from __future__ import annotations

from typing import ClassVar

from inspo.conditioning import CONDITIONINGS, Conditioning, Sequences

PEEK_TOKENS = 4


class PeekConditioning(Conditioning):
    """InSPO with a truncated alternative: y_w is scored after the first K tokens of y_l, and vice versa."""

    name = "peek"
    policy_sequences: ClassVar[Sequences] = {
        "chosen": ("x", "before", "peek_l", "after", "y_w"),
        "rejected": ("x", "before", "peek_w", "after", "y_l"),
        "chosen_plain": ("x", "y_w"),  # log pi(y|x) for ORPO / SFT terms, as under InSPO
        "rejected_plain": ("x", "y_l"),
    }

    def segments(self, prompt: list[int], chosen: list[int], rejected: list[int]) -> dict[str, list[int]]:
        return {**super().segments(prompt, chosen, rejected),
                "peek_w": chosen[:PEEK_TOKENS], "peek_l": rejected[:PEEK_TOKENS]}


CONDITIONINGS[PeekConditioning.name] = PeekConditioning

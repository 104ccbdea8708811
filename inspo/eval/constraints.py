"""Verifiable instruction-following constraints (in the spirit of IFEval) and the gold reward built on them.

A :class:`Constraint` is a family name plus parameters. It renders the instruction sentence that goes into the
prompt and checks a response with a pure function ``(response: str) -> bool`` (no model, no randomness), so the
gold reward is a judge nobody can argue with.

Gold reward of a response to a prompt carrying constraints c_1..c_k (:func:`gold_reward`)::

    reward = (number of c_i satisfied) / k                      in {0, 1/k, ..., 1}
    reward = 0                   if the response is empty or whitespace only (tie-break 1)
    reward = max(0, reward - RUNAWAY_PENALTY)  if the response never ended (tie-break 2)

Tie-break 1: several checkers are vacuously true on an empty string (forbidden word, no commas, all lowercase),
so an empty answer would otherwise beat a real one. Tie-break 2: a response that ran into the generation length
cap without an end-of-turn token ("runaway") loses :data:`RUNAWAY_PENALTY`, which is smaller than any gap between
two constraint counts (1/3 at most three constraints), so it only separates answers that satisfy the same number
of constraints.

Words are maximal runs of letters, digits and apostrophes (``\\w`` plus ``'``), so "don't" is one word and "-" is
none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

RUNAWAY_PENALTY = 0.1
"""Subtracted from the gold reward of a response that hit the length cap without ending (see module docstring)."""

_WORD = re.compile(r"[\w']+")
_BULLET = re.compile(r"^\s*[-*\u2022]\s+\S", re.MULTILINE)
_TRAILING = " \t\r\n\"'*_)]}`"
_LEADING = " \t\r\n\"'*_([{`#>-\u2022"


def words(text: str) -> list[str]:
    """The words of ``text`` (runs of letters, digits, underscores and apostrophes)."""
    return _WORD.findall(text)


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w']){re.escape(word)}(?![\w'])", text, flags=re.IGNORECASE) is not None


# --- checkers: pure functions (response, **params) -> bool -------------------------------------------------------

def check_max_words(response: str, n: int) -> bool:
    """At most ``n`` words."""
    return len(words(response)) <= n


def check_min_words(response: str, n: int) -> bool:
    """At least ``n`` words."""
    return len(words(response)) >= n


def check_include_keyword(response: str, word: str) -> bool:
    """``word`` appears as a whole word, any case."""
    return _has_word(response, word)


def check_forbidden_word(response: str, word: str) -> bool:
    """``word`` does not appear as a whole word, in any case."""
    return not _has_word(response, word)


def check_bullet_count(response: str, n: int) -> bool:
    """Exactly ``n`` lines are markdown bullet items (``-``, ``*`` or ``\u2022``, a space, then text)."""
    return len(_BULLET.findall(response)) == n


def check_lowercase(response: str) -> bool:
    """Has letters and none of them is upper case."""
    return any(ch.isalpha() for ch in response) and response == response.lower()


def check_ends_with_question(response: str) -> bool:
    """The last character, ignoring closing quotes, brackets and markdown emphasis, is a question mark."""
    return response.rstrip(_TRAILING).endswith("?")


def check_json_keys(response: str, keys: Sequence[str]) -> bool:
    """The whole response (optionally inside one ```json fence) is a JSON object holding every key in ``keys``."""
    text = response.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.DOTALL | re.IGNORECASE)
    if fenced:
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and all(key in value for key in keys)


def check_starts_with(response: str, word: str) -> bool:
    """The first word, after leading quotes, markdown and list markers, is ``word`` (any case)."""
    first = words(response.lstrip(_LEADING))
    return bool(first) and first[0].lower() == word.lower()


def check_paragraph_count(response: str, n: int) -> bool:
    """Exactly ``n`` non-empty paragraphs, separated by blank lines."""
    return len([part for part in re.split(r"\n\s*\n", response) if part.strip()]) == n


def check_no_commas(response: str) -> bool:
    """No comma anywhere."""
    return "," not in response


def check_ends_with_phrase(response: str, phrase: str) -> bool:
    """The response ends with ``phrase`` (any case; trailing whitespace, quotes and markdown ignored)."""
    return response.rstrip(_TRAILING).lower().endswith(phrase.rstrip(_TRAILING).lower())


def check_title(response: str) -> bool:
    """Contains a title in double angular brackets, e.g. ``<<A day at sea>>``."""
    return re.search(r"<<[^<>\n]*\w[^<>\n]*>>", response) is not None


# --- families -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """A constraint family: how to render it, how to check it, and which families it cannot be combined with.

    Attributes:
        name: short identifier stored in data files.
        check: ``(response, **params) -> bool``.
        render: ``params -> instruction sentence``.
        conflicts: families that cannot share a prompt with this one (contradictory or ill-defined together).
    """

    name: str
    check: Callable[..., bool]
    render: Callable[..., str]
    conflicts: frozenset[str] = field(default_factory=frozenset)


FAMILIES: dict[str, Family] = {}
"""All constraint families by name."""


def _family(name: str, check: Callable[..., bool], render: Callable[..., str], *conflicts: str) -> None:
    FAMILIES[name] = Family(name, check, render, frozenset(conflicts))


_family("max_words", check_max_words, lambda n: f"Answer in at most {n} words.", "min_words")
_family("min_words", check_min_words, lambda n: f"Answer with at least {n} words.", "max_words")
_family("include_keyword", check_include_keyword, lambda word: f'Include the word "{word}" in your answer.')
_family("forbidden_word", check_forbidden_word, lambda word: f'Do not use the word "{word}" anywhere.')
_family("bullet_count", check_bullet_count,
        lambda n: f"Format your answer as exactly {n} bullet points, each on its own line starting with \"- \".",
        "paragraph_count", "json_keys")
_family("lowercase", check_lowercase, lambda: "Write your entire answer in lowercase letters only; no capitals.",
        "starts_with")
_family("ends_with_question", check_ends_with_question, lambda: "End your answer with a question.",
        "ends_with_phrase", "json_keys")
_family("json_keys", check_json_keys,
        lambda keys: "Answer only with a valid JSON object that has the keys "
        + " and ".join(f'"{key}"' for key in keys) + ".",
        "bullet_count", "paragraph_count", "ends_with_question", "ends_with_phrase", "starts_with", "no_commas",
        "title")
_family("starts_with", check_starts_with, lambda word: f'Start your answer with the word "{word}".',
        "lowercase", "json_keys")
_family("paragraph_count", check_paragraph_count,
        lambda n: f"Write exactly {n} paragraphs, separated by a blank line.", "bullet_count", "json_keys")
_family("no_commas", check_no_commas, lambda: "Do not use any commas.", "json_keys")
_family("ends_with_phrase", check_ends_with_phrase, lambda phrase: f'End your answer with the exact phrase "{phrase}"',
        "ends_with_question", "json_keys")
_family("title", check_title, lambda: "Give your answer a title wrapped in double angular brackets, like <<title>>.",
        "json_keys")
# Conflicts are declared on both sides; keep them symmetric when adding a family.
assert all(name in FAMILIES[other].conflicts for name, fam in FAMILIES.items() for other in fam.conflicts)


@dataclass(frozen=True)
class Constraint:
    """One constraint of a prompt: a family and its parameters.

    Attributes:
        family: a key of :data:`FAMILIES`.
        params: the family's keyword parameters (JSON-serialisable: ints, strings, lists of strings).
    """

    family: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown constraint family {self.family!r}; known: {', '.join(sorted(FAMILIES))}")

    @property
    def instruction(self) -> str:
        """The sentence that asks for this constraint in the prompt."""
        return FAMILIES[self.family].render(**self.params)

    @property
    def checker(self) -> Callable[[str], bool]:
        """The pure function ``(response) -> bool`` that tells whether a response satisfies the constraint."""
        return partial(FAMILIES[self.family].check, **self.params)

    def check(self, response: str) -> bool:
        """Whether ``response`` satisfies this constraint."""
        return self.checker(response)

    def key(self) -> tuple[str, str]:
        """A hashable identity (family, canonical JSON of the parameters), for disjointness checks."""
        return self.family, json.dumps(dict(self.params), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        """``{"family": ..., "params": {...}}`` as stored in data files."""
        return {"family": self.family, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Constraint:
        """Inverse of :meth:`to_dict`; raises ValueError or TypeError on a malformed mapping."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("family"), str):
            raise TypeError("a constraint must be an object with a string 'family'")
        params = raw.get("params", {})
        if not isinstance(params, Mapping):
            raise TypeError("a constraint's 'params' must be an object")
        constraint = cls(raw["family"], dict(params))
        constraint.instruction  # noqa: B018 - wrong or missing parameters raise TypeError here, not at scoring time
        return constraint


def compatible(constraints: Sequence[Constraint]) -> bool:
    """Whether the constraints can share one prompt: distinct families and no declared conflict between them."""
    names = [c.family for c in constraints]
    if len(set(names)) != len(names):
        return False
    return not any(other in FAMILIES[name].conflicts for name in names for other in names)


def satisfied(response: str, constraints: Sequence[Constraint]) -> list[bool]:
    """One boolean per constraint: whether ``response`` satisfies it (empty responses satisfy nothing)."""
    if not response.strip():
        return [False] * len(constraints)
    return [c.check(response) for c in constraints]


def gold_reward(response: str, constraints: Sequence[Constraint], truncated: bool = False) -> float:
    """Fraction of ``constraints`` satisfied, with the tie-breaks of the module docstring.

    Args:
        response: the generated answer (special tokens removed).
        constraints: the prompt's constraints (at least one).
        truncated: the response hit the generation cap without an end-of-turn token.
    """
    if not constraints:
        raise ValueError("gold_reward needs at least one constraint")
    reward = sum(satisfied(response, constraints)) / len(constraints)
    if truncated:
        reward = max(0.0, reward - RUNAWAY_PENALTY)
    return reward

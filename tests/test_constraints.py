"""Checkers of the verifiable constraints on hand-written responses, the gold reward's tie-breaks, and the prompts."""

from __future__ import annotations

import json

import pytest

from inspo.eval.constraints import FAMILIES, RUNAWAY_PENALTY, Constraint, compatible, gold_reward, satisfied, words
from inspo.eval.prompts import make_prompts, split_topics

# family, params, responses that satisfy it, responses that do not.
CASES = [
    ("max_words", {"n": 5}, ["One two three four five.", "Short answer."], ["One two three four five six."]),
    ("min_words", {"n": 4}, ["Bees make honey daily.", "Don't stop, keep going now."], ["Too short here.", "- - - -"]),
    ("include_keyword", {"word": "garden"},
     ["My Garden is green.", "I love the garden."], ["Gardening is fun.", "No such word here."]),
    ("forbidden_word", {"word": "water"}, ["Drink plenty of fluids.", "Waterfalls are pretty."],
     ["Drink Water daily.", "water"]),
    ("bullet_count", {"n": 3}, ["- a\n- b\n- c", "Intro:\n* one\n* two\n\u2022 three\nDone."],
     ["- a\n- b", "- a\n- b\n- c\n- d", "1. a\n2. b\n3. c", "**Bold** start\n- a\n- b"]),
    ("lowercase", {}, ["all lowercase here.", "numbers 1 2 3 are fine!"], ["Not lowercase.", "123 !!!", "ok OK"]),
    ("ends_with_question", {}, ["Is that clear?", 'She asked "why?"', "Do you agree?**  \n"],
     ["This is a statement.", "Why? Because."]),
    ("json_keys", {"keys": ["title", "summary"]},
     ['{"title": "A", "summary": "B"}', '```json\n{"title": 1, "summary": 2, "extra": 3}\n```'],
     ['{"title": "A"}', "title: A, summary: B", '["title", "summary"]', 'Here: {"title": "A", "summary": "B"}']),
    ("starts_with", {"word": "Sure"}, ["Sure, here it is.", "**Sure!** Let me help.", "- sure thing"],
     ["Surely not.", "Of course, sure.", ""]),
    ("paragraph_count", {"n": 2}, ["First part.\n\nSecond part.", "One.\n   \nTwo.\n\n\n"],
     ["Only one paragraph.\nStill the same one.", "A.\n\nB.\n\nC."]),
    ("no_commas", {}, ["No commas at all.", "Semicolons; fine."], ["Yes, a comma.", "1,000 apples"]),
    ("ends_with_phrase", {"phrase": "Hope this helps."}, ["Drink water. Hope this helps.", "hope this helps.\n"],
     ["Hope this helps. Bye.", "Hope this helps!"]),
    ("title", {}, ["<<My Day>>\nIt was good.", "Text then <<a title>>."], ["<My Day>", "<<>> empty", "no title"]),
]


def test_every_family_has_cases() -> None:
    assert sorted(FAMILIES) == sorted(case[0] for case in CASES)
    assert len(FAMILIES) >= 8


@pytest.mark.parametrize(("family", "params", "good", "bad"), CASES, ids=[case[0] for case in CASES])
def test_checker(family: str, params: dict, good: list[str], bad: list[str]) -> None:
    constraint = Constraint(family, params)
    for response in good:
        assert constraint.checker(response) is True, (family, response)
    for response in bad:
        assert constraint.checker(response) is False, (family, response)


def test_instructions_render_their_parameters() -> None:
    assert Constraint("max_words", {"n": 30}).instruction == "Answer in at most 30 words."
    assert '"title" and "summary"' in Constraint("json_keys", {"keys": ["title", "summary"]}).instruction
    assert '"Sure"' in Constraint("starts_with", {"word": "Sure"}).instruction


def test_words_counts_contractions_as_one() -> None:
    assert words("Don't stop - it's fine.") == ["Don't", "stop", "it's", "fine"]


def test_gold_reward_fraction_and_tie_breaks() -> None:
    """Two constraints, lowercase + no_commas.

    "all good here" satisfies both -> 1.0; "All good, here" neither -> 0.0; "all good, here" one -> 0.5;
    the same truncated -> 0.5 - 0.1 = 0.4; an empty answer satisfies nothing (although no_commas and a
    vacuous lowercase would say yes) -> 0.0, and truncation never goes below 0.
    """
    cons = [Constraint("lowercase"), Constraint("no_commas")]
    assert gold_reward("all good here", cons) == 1.0
    assert gold_reward("All good, here", cons) == 0.0
    assert gold_reward("all good, here", cons) == 0.5
    assert gold_reward("all good, here", cons, truncated=True) == pytest.approx(0.5 - RUNAWAY_PENALTY)
    assert gold_reward("   ", [Constraint("no_commas")]) == 0.0
    assert gold_reward("All, wrong", cons, truncated=True) == 0.0
    assert satisfied("", cons) == [False, False]
    with pytest.raises(ValueError):
        gold_reward("x", [])


def test_runaway_penalty_is_smaller_than_one_constraint() -> None:
    # With at most three constraints a single extra satisfied constraint must outweigh the runaway penalty.
    assert RUNAWAY_PENALTY < 1 / 3


def test_compatibility() -> None:
    assert compatible([Constraint("lowercase"), Constraint("no_commas")])
    assert not compatible([Constraint("lowercase"), Constraint("starts_with", {"word": "The"})])
    assert not compatible([Constraint("json_keys", {"keys": ["a"]}), Constraint("bullet_count", {"n": 2})])
    assert not compatible([Constraint("max_words", {"n": 5}), Constraint("max_words", {"n": 9})])
    for name, family in FAMILIES.items():
        for other in family.conflicts:
            assert name in FAMILIES[other].conflicts


def test_constraint_round_trip_and_bad_input() -> None:
    constraint = Constraint("json_keys", {"keys": ["a", "b"]})
    assert Constraint.from_dict(json.loads(json.dumps(constraint.to_dict()))) == constraint
    with pytest.raises(ValueError, match="unknown constraint family"):
        Constraint("shout")
    with pytest.raises(TypeError):
        Constraint.from_dict({"family": "max_words", "params": {}})  # missing n
    with pytest.raises(TypeError, match="string 'family'"):
        Constraint.from_dict({"params": {}})
    with pytest.raises(TypeError, match="'params' must be an object"):
        Constraint.from_dict({"family": "no_commas", "params": [1]})


def test_prompts_are_seeded_compatible_and_disjoint() -> None:
    heldout = make_prompts(60, "heldout", seed=3)
    train = make_prompts(300, "train", seed=3, exclude=heldout)
    assert [p.text for p in make_prompts(60, "heldout", seed=3)] == [p.text for p in heldout]
    assert [p.text for p in make_prompts(100, "train", seed=3, exclude=heldout)] == [p.text for p in train[:100]]
    train_topics, heldout_topics = split_topics(seed=3)
    assert not {t.name for t in train_topics} & {t.name for t in heldout_topics}
    assert not {p.topic for p in train} & {p.topic for p in heldout}
    assert not {p.text for p in train} & {p.text for p in heldout}
    assert not {p.combination() for p in train} & {p.combination() for p in heldout}
    assert len({p.text for p in train}) == len(train)
    for prompt in train + heldout:
        assert 1 <= len(prompt.constraints) <= 3 and compatible(prompt.constraints)
        words_used = [c.params["word"] for c in prompt.constraints if c.family in ("include_keyword", "forbidden_word")]
        assert len(set(words_used)) == len(words_used)

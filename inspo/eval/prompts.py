"""Seeded prompts for the verifiable preference benchmark: a task about a topic plus 1-3 compatible constraints.

Topics are split once into a training half and a held-out half (:func:`split_topics`), so held-out prompts never
share a topic with training prompts; :func:`make_prompts` also refuses any held-out prompt whose constraint
combination (families and parameters) or text occurs in training. Each topic carries three related words, used
by the keyword and forbidden-word constraints (forbidding the most natural word makes a constraint worth
learning).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from inspo.eval.constraints import FAMILIES, Constraint, compatible

# "topic | three related words": 120 everyday topics a 135M-parameter assistant can say something about.
TOPIC_LINES = """\
drinking enough water|thirst|bottle|health
morning routines|breakfast|alarm|coffee
learning a new language|vocabulary|grammar|practice
saving money|budget|savings|spending
growing tomatoes|soil|garden|sunlight
recycling at home|plastic|bins|waste
riding a bicycle|helmet|pedal|road
taking care of a cat|litter|fur|food
walking a dog|leash|park|exercise
baking bread|flour|yeast|oven
planning a birthday party|cake|guests|balloons
studying for an exam|notes|review|sleep
writing a cover letter|job|skills|employer
keeping a journal|pen|thoughts|daily
the water cycle|rain|evaporation|clouds
volcanoes|lava|eruption|magma
the moon|orbit|craters|tides
honey bees|hive|pollen|honey
rainforests|trees|species|rain
deserts|sand|heat|cactus
the human heart|blood|pump|beat
sleep hygiene|bedtime|screens|rest
public libraries|books|borrow|quiet
camping in the woods|tent|fire|trail
making a cup of tea|kettle|leaves|cup
time management|schedule|tasks|deadline
first aid for a small cut|bandage|wound|clean
fire safety at home|smoke|alarm|exit
composting kitchen scraps|compost|worms|scraps
the solar system|planets|sun|orbit
electric cars|battery|charging|range
solar panels|sunlight|energy|roof
writing a thank-you note|gratitude|card|friend
choosing a good book|story|author|genre
learning to swim|pool|breathing|float
playing chess|board|pawn|king
staying safe online|password|privacy|scam
the importance of breakfast|energy|cereal|morning
visiting a museum|exhibits|history|art
building a snowman|snow|carrot|winter
cleaning your room|dust|closet|tidy
the life of a butterfly|caterpillar|wings|flowers
how rainbows form|light|colors|rain
brushing your teeth|toothbrush|teeth|dentist
working from home|desk|meetings|focus
starting a small business|customers|profit|plan
cooking pasta|water|sauce|boil
the ocean tides|moon|waves|shore
penguins|ice|feathers|swim
elephants|trunk|herd|ivory
the history of the bicycle|wheels|inventor|frame
writing a poem|rhyme|lines|verse
learning to play guitar|strings|chords|practice
watering house plants|pots|leaves|soil
preparing for a job interview|questions|resume|confidence
staying calm under stress|breathing|stress|calm
the benefits of walking|steps|heart|outdoors
making new friends|kindness|conversation|trust
packing for a trip|suitcase|clothes|travel
using public transport|bus|ticket|train
the four seasons|summer|winter|spring
thunderstorms|lightning|thunder|clouds
the invention of the printing press|books|ink|press
teaching a child to read|letters|stories|patience
keeping a fish tank|aquarium|filter|fish
a rainy afternoon|umbrella|window|puddles
writing clear emails|subject|reader|reply
the role of bees in farming|crops|pollination|flowers
making a paper airplane|paper|fold|wings
visiting the beach|sand|sunscreen|waves
healthy snacks|fruit|nuts|hunger
learning to code|programs|bugs|computer
the importance of teamwork|team|goals|trust
caring for a newborn puppy|puppy|milk|warmth
owls|night|feathers|hunting
the night sky|stars|moon|constellations
hiking in the mountains|boots|trail|summit
a visit to the dentist|teeth|checkup|cavity
writing a short story|characters|plot|ending
the benefits of reading|books|imagination|knowledge
setting goals for the new year|goals|habits|progress
planting a tree|roots|shade|seedling
grocery shopping on a budget|list|prices|store
traffic lights|red|green|drivers
earthquakes|shaking|plates|buildings
the wind|breeze|air|storm
making a smoothie|fruit|blender|yogurt
keeping chickens|eggs|coop|feed
the postal service|letters|stamps|mail
learning to draw|pencil|sketch|shapes
volunteering in your community|help|neighbors|time
saving electricity at home|lights|energy|bills
the importance of handwashing|soap|germs|hands
a picnic in the park|blanket|sandwiches|basket
caring for your eyes|screen|glasses|light
frogs|pond|tadpole|jump
the history of chocolate|cocoa|sweet|beans
dealing with a cold|tissues|fever|rest
organizing a bookshelf|shelves|books|order
coral reefs|coral|fish|ocean
making pancakes|batter|syrup|pan
wind turbines|blades|electricity|wind
the first day at a new school|classmates|teacher|nervous
learning from mistakes|failure|lessons|growth
a trip to the zoo|animals|cages|keeper
the importance of stretching|muscles|flexibility|warm
writing a grocery list|items|list|shopping
phone etiquette|calls|messages|polite
squirrels|nuts|tree|tail
the benefits of music|songs|mood|rhythm
bird watching|binoculars|birds|nest
making soup|vegetables|broth|pot
the dangers of sugar|sugar|teeth|sweets
fixing a flat tire|tire|pump|patch
learning to cook|recipes|kitchen|ingredients
a visit to a farm|cows|barn|farmer
mindful breathing|breath|calm|focus
taking photographs|camera|light|photo
the role of a librarian|books|readers|catalog"""

TASKS = (
    "Write a short paragraph about {topic}.",
    "Explain {topic} to a ten-year-old.",
    "Give some practical advice about {topic}.",
    "Describe {topic} in a few sentences.",
    "Tell me what matters most about {topic}.",
    "Share a few interesting facts about {topic}.",
    "Write a short note to a friend about {topic}.",
    "Summarize what a beginner should know about {topic}.",
)
START_WORDS = ("Sure", "Yes", "Well", "Today", "Imagine", "Honestly", "First", "Here")
END_PHRASES = ("Hope this helps.", "That is all.", "Thank you for reading.", "Have a great day.")
JSON_KEYS = (("title", "summary"), ("topic", "tip"), ("answer", "reason"), ("name", "description"))
FAMILY_NAMES = tuple(FAMILIES)
N_CONSTRAINTS_WEIGHTS = (0.3, 0.4, 0.3)
"""Probability of 1, 2 and 3 constraints per prompt."""


@dataclass(frozen=True)
class Topic:
    """A task topic and three words related to it."""

    name: str
    words: tuple[str, ...]


@dataclass
class VerifiablePrompt:
    """One prompt of the benchmark.

    Attributes:
        id: stable identifier (split and index), e.g. ``train-00042``.
        topic: the topic name.
        task: the task sentence (without constraints).
        constraints: the constraints the response is judged on.
    """

    id: str
    topic: str
    task: str
    constraints: list[Constraint] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The user message: the task, then one instruction sentence per constraint."""
        return " ".join([self.task, *(c.instruction for c in self.constraints)])

    def combination(self) -> tuple[tuple[str, str], ...]:
        """The constraint combination (families and parameters), order-free."""
        return tuple(sorted(c.key() for c in self.constraints))

    def to_dict(self) -> dict[str, Any]:
        """The JSONL row: ``prompt`` (the text), ``id``, ``topic``, ``task`` and ``constraints``."""
        return {"id": self.id, "prompt": self.text, "topic": self.topic, "task": self.task,
                "constraints": [c.to_dict() for c in self.constraints]}


def topics() -> list[Topic]:
    """All topics, in file order."""
    out = []
    for line in TOPIC_LINES.splitlines():
        name, *related = line.split("|")
        out.append(Topic(name, tuple(related)))
    return out


def split_topics(heldout_fraction: float = 0.25, seed: int = 0) -> tuple[list[Topic], list[Topic]]:
    """(train topics, held-out topics): a seeded, disjoint split."""
    shuffled = topics()
    random.Random(seed).shuffle(shuffled)
    n_heldout = max(1, round(len(shuffled) * heldout_fraction))
    return shuffled[n_heldout:], shuffled[:n_heldout]


def sample_params(family: str, topic: Topic, rng: random.Random, used_words: set[str]) -> dict[str, Any]:
    """Parameters of one constraint of ``family`` for a prompt about ``topic``; topic words are not reused."""
    if family == "max_words":
        return {"n": rng.choice((20, 30, 40, 50))}
    if family == "min_words":
        return {"n": rng.choice((15, 20, 25, 30))}
    if family in ("include_keyword", "forbidden_word"):
        word = rng.choice([w for w in topic.words if w not in used_words])
        used_words.add(word)
        return {"word": word}
    if family == "bullet_count":
        return {"n": rng.choice((2, 3, 4))}
    if family == "paragraph_count":
        return {"n": rng.choice((2, 3))}
    if family == "json_keys":
        return {"keys": list(rng.choice(JSON_KEYS))}
    if family == "starts_with":
        return {"word": rng.choice(START_WORDS)}
    if family == "ends_with_phrase":
        return {"phrase": rng.choice(END_PHRASES)}
    return {}  # lowercase, ends_with_question, no_commas, title


def sample_constraints(topic: Topic, rng: random.Random) -> list[Constraint]:
    """1-3 compatible constraints for a prompt about ``topic``."""
    k = rng.choices((1, 2, 3), weights=N_CONSTRAINTS_WEIGHTS)[0]
    chosen: list[Constraint] = []
    used_words: set[str] = set()
    for family in rng.sample(FAMILY_NAMES, len(FAMILY_NAMES)):
        if len(chosen) == k:
            break
        candidate = Constraint(family, {})
        if compatible([*chosen, candidate]):
            chosen.append(Constraint(family, sample_params(family, topic, rng, used_words)))
    return chosen


def make_prompts(
    n: int, split: str, seed: int = 0, exclude: Iterable[VerifiablePrompt] = (), heldout_fraction: float = 0.25,
) -> list[VerifiablePrompt]:
    """``n`` distinct prompts of ``split`` (``train`` or ``heldout``), reproducible from ``seed``.

    Args:
        n: number of prompts.
        split: ``train`` draws from the training topics, ``heldout`` from the held-out topics.
        seed: seed of the topic split (shared by both splits) and of the prompt draws.
        exclude: prompts of the other split: no prompt text or constraint combination of theirs is produced.
        heldout_fraction: fraction of topics reserved for held-out prompts.

    Raises:
        ValueError: an unknown split, or fewer than ``n`` distinct prompts could be drawn.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    train_topics, heldout_topics = split_topics(heldout_fraction, seed)
    pool = train_topics if split == "train" else heldout_topics
    excluded = list(exclude)
    seen_text = {p.text for p in excluded}
    seen_combo = {p.combination() for p in excluded}
    rng = random.Random(f"{seed}-{split}")
    prompts: list[VerifiablePrompt] = []
    for _ in range(n * 50):
        if len(prompts) == n:
            break
        topic = rng.choice(pool)
        prompt = VerifiablePrompt(f"{split}-{len(prompts):05d}", topic.name,
                                  rng.choice(TASKS).format(topic=topic.name), sample_constraints(topic, rng))
        if prompt.text in seen_text or prompt.combination() in seen_combo:
            continue
        seen_text.add(prompt.text)
        prompts.append(prompt)
    if len(prompts) < n:
        raise ValueError(f"could only draw {len(prompts)} distinct {split} prompts of the {n} asked for")
    return prompts


def training_prompts(seed: int = 0, n_train: int = 1800, n_heldout: int = 250) -> list[VerifiablePrompt]:
    """The training prompts of the bundled verifiable benchmark, as ``scripts/make_verifiable_prefs.py`` drew them
    (``n_heldout`` held-out prompts first, then ``n_train`` training prompts that avoid them)."""
    return make_prompts(n_train, "train", seed=seed, exclude=make_prompts(n_heldout, "heldout", seed=seed))


def evaluation_prompts(n: int = 1000, seed: int = 0) -> list[VerifiablePrompt]:
    """``n`` held-out prompts for the evidence evaluation: held-out topics only, and no prompt text or constraint
    combination of any training prompt of the bundled benchmark (:func:`training_prompts`).

    The first 250 are not the bundled ``heldout_prompts.jsonl`` (the exclusion changes the draws); both sets are
    disjoint from training.
    """
    prompts = make_prompts(n, "heldout", seed=seed, exclude=training_prompts(seed))
    for i, prompt in enumerate(prompts):
        prompt.id = f"eval-{i:05d}"
    return prompts

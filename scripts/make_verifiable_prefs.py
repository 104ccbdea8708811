"""Build the verifiable preference benchmark: on-policy pairs from SmolLM2-135M-Instruct, judged by the gold reward.

Steps (all seeded):
1. Write ``--n-heldout`` held-out prompts, then ``--n-train`` training prompts (``inspo.eval.prompts``): disjoint
   topics, and no training prompt repeats a held-out prompt's text or constraint combination.
2. For each training prompt, sample ``--samples`` responses from the model (batched, left padding, temperature
   ``--temperature``), score them with ``inspo.eval.constraints.gold_reward`` and keep (best, worst) when their
   gold gap is at least ``--min-gap`` (ties for best / worst broken by a seeded draw).
3. Append as it goes: ``train.jsonl`` (kept pairs) and ``generation_log.jsonl`` (every processed prompt: rewards
   and lengths of all its samples, no texts). A rerun with the same arguments skips prompts already in the log,
   so a killed run loses at most one batch; raising ``--n-train`` extends a finished run with new prompts.

Example (the command that built ``inspo/assets/verifiable``)::

    python scripts/make_verifiable_prefs.py --out inspo/assets/verifiable --n-train 1800 --n-heldout 250

``python scripts/make_verifiable_prefs.py --stats --out DIR`` prints the counts and reward statistics of a
(possibly unfinished) output folder, for the data card.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from inspo.eval.constraints import Constraint, gold_reward, satisfied
from inspo.eval.generate import generate, require_chat_template
from inspo.eval.prompts import VerifiablePrompt, make_prompts
from inspo.models import BUNDLED_SMOLLM2, load_causal_lm, load_tokenizer

TRAIN, HELDOUT, LOG = "train.jsonl", "heldout_prompts.jsonl", "generation_log.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--model", default=BUNDLED_SMOLLM2, help="the model that answers (on-policy data)")
    parser.add_argument("--dtype", default="bf16", help="sampling precision: bf16 (2x faster on CPUs with "
                        "avx512_bf16) or fp32")
    parser.add_argument("--n-train", type=int, default=1800, help="training prompts to process")
    parser.add_argument("--first", type=int, default=0,
                        help="skip training prompts before this index (run slices in parallel, then concatenate)")
    parser.add_argument("--n-heldout", type=int, default=250, help="held-out prompts to write")
    parser.add_argument("--samples", type=int, default=4, help="responses sampled per training prompt")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="length cap of each response")
    parser.add_argument("--batch-prompts", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--min-gap", type=float, default=0.2, help="minimum gold-reward gap of a kept pair")
    parser.add_argument("--seed", type=int, default=0, help="seed of prompts, sampling and tie-breaks")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared CPU)")
    parser.add_argument("--stats", action="store_true", help="only print statistics of an existing --out folder")
    return parser.parse_args(argv)


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a half-written last line (killed run) is ignored."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def write_heldout(out: Path, prompts: list[VerifiablePrompt]) -> None:
    with (out / HELDOUT).open("w") as f:
        for prompt in prompts:
            f.write(json.dumps(prompt.to_dict()) + "\n")


def pick_pair(rewards: list[float], rng: random.Random) -> tuple[int, int]:
    """Indices of (a best, a worst) sample; ties broken by ``rng``."""
    best, worst = max(rewards), min(rewards)
    return (rng.choice([i for i, r in enumerate(rewards) if r == best]),
            rng.choice([i for i, r in enumerate(rewards) if r == worst]))


def process(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    heldout = make_prompts(args.n_heldout, "heldout", seed=args.seed)
    write_heldout(args.out, heldout)
    train = make_prompts(args.n_train, "train", seed=args.seed, exclude=heldout)
    done = {row["id"] for row in read_jsonl(args.out / LOG)}
    todo = [p for p in train[args.first:] if p.id not in done]
    print(f"held-out prompts: {len(heldout)}; train prompts {args.first}..{len(train)} ({len(done)} done, {len(todo)} to go)",
          flush=True)
    if not todo:
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    require_chat_template(tokenizer, args.model)
    model = load_causal_lm(args.model, dtype=args.dtype)
    kept = len(read_jsonl(args.out / TRAIN))
    start, processed = time.time(), 0
    with (args.out / TRAIN).open("a") as pairs_file, (args.out / LOG).open("a") as log_file:
        for first in range(0, len(todo), args.batch_prompts):
            batch = todo[first:first + args.batch_prompts]
            # Per-batch seeds keyed by prompt id: a resumed run samples exactly what an uninterrupted one would.
            torch.manual_seed(hash_seed(args.seed, batch[0].id))
            answers = generate(model, tokenizer, [p.text for p in batch], max_new_tokens=args.max_new_tokens,
                               num_samples=args.samples, temperature=args.temperature, top_p=args.top_p,
                               batch_size=len(batch))
            for prompt, samples in zip(batch, answers, strict=True):
                rewards = [gold_reward(s.text, prompt.constraints, s.truncated) for s in samples]
                rng = random.Random(hash_seed(args.seed, prompt.id))
                best, worst = pick_pair(rewards, rng)
                gap = rewards[best] - rewards[worst]
                keep = gap >= args.min_gap - 1e-9 and samples[best].text.strip() != samples[worst].text.strip()
                families = [c.family for c in prompt.constraints]
                log_file.write(json.dumps({"id": prompt.id, "families": families, "rewards": rewards,
                                           "tokens": [s.tokens for s in samples],
                                           "truncated": [s.truncated for s in samples], "kept": keep}) + "\n")
                if keep:
                    kept += 1
                    row = {**prompt.to_dict(), "chosen": samples[best].text, "rejected": samples[worst].text,
                           "chosen_reward": rewards[best], "rejected_reward": rewards[worst],
                           "chosen_tokens": samples[best].tokens, "rejected_tokens": samples[worst].tokens}
                    pairs_file.write(json.dumps(row) + "\n")
            pairs_file.flush()
            log_file.flush()
            processed += len(batch)
            elapsed = time.time() - start
            rate = processed / elapsed
            print(f"[{time.strftime('%H:%M:%S')}] {len(done) + processed}/{len(train) - args.first} prompts, {kept} pairs kept, "
                  f"{rate * args.samples:.2f} responses/s, eta {(len(todo) - processed) / rate / 60:.1f} min",
                  flush=True)
    print(f"done: {kept} pairs in {args.out / TRAIN}; {time.time() - start:.0f} s this run", flush=True)


def hash_seed(seed: int, key: str) -> int:
    """A stable 31-bit seed from the run seed and a prompt id (Python's hash() is salted per process)."""
    return int.from_bytes(f"{seed}:{key}".encode(), "little") % (2**31 - 1)


def stats(out: Path) -> dict:
    """Counts and reward statistics of an output folder (what the data card reports)."""
    log_rows, pairs = read_jsonl(out / LOG), read_jsonl(out / TRAIN)
    all_rewards = [r for row in log_rows for r in row["rewards"]]
    tokens = [t for row in log_rows for t in row["tokens"]]
    family_rate: dict[str, list[float]] = {}
    for row in log_rows:
        for family in row["families"]:
            family_rate.setdefault(family, []).extend(row["rewards"])
    return {
        "prompts_processed": len(log_rows), "pairs": len(pairs),
        "heldout_prompts": len(read_jsonl(out / HELDOUT)),
        "responses": len(all_rewards),
        "reward_mean": statistics.fmean(all_rewards) if all_rewards else None,
        "reward_histogram": dict(sorted(Counter(round(r, 2) for r in all_rewards).items())),
        "truncated_fraction": statistics.fmean([t for row in log_rows for t in row["truncated"]]) if log_rows else None,
        "response_tokens_mean": statistics.fmean(tokens) if tokens else None,
        "chosen_reward_mean": statistics.fmean(p["chosen_reward"] for p in pairs) if pairs else None,
        "rejected_reward_mean": statistics.fmean(p["rejected_reward"] for p in pairs) if pairs else None,
        "chosen_tokens_mean": statistics.fmean(p["chosen_tokens"] for p in pairs) if pairs else None,
        "rejected_tokens_mean": statistics.fmean(p["rejected_tokens"] for p in pairs) if pairs else None,
        "chosen_longer_fraction": statistics.fmean(p["chosen_tokens"] > p["rejected_tokens"] for p in pairs)
        if pairs else None,
        "families_per_pair": dict(Counter(f for p in pairs for f in (c["family"] for c in p["constraints"]))),
        "constraints_per_pair": dict(Counter(len(p["constraints"]) for p in pairs)),
        "mean_sample_reward_of_prompts_with_family": {f: round(statistics.fmean(v), 3)
                                                      for f, v in sorted(family_rate.items())},
        "chosen_satisfied_by_family": _satisfied_by_family(pairs, "chosen"),
        "rejected_satisfied_by_family": _satisfied_by_family(pairs, "rejected"),
    }


def _satisfied_by_family(pairs: list[dict], field: str) -> dict[str, float]:
    """Share of the pairs' ``field`` responses that satisfy each constraint family (over pairs carrying it)."""
    hits: dict[str, list[bool]] = {}
    for pair in pairs:
        constraints = [Constraint.from_dict(c) for c in pair["constraints"]]
        for constraint, ok in zip(constraints, satisfied(pair[field], constraints), strict=True):
            hits.setdefault(constraint.family, []).append(ok)
    return {family: round(statistics.fmean(v), 3) for family, v in sorted(hits.items())}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.stats:
        json.dump(stats(args.out), sys.stdout, indent=2)
        print()
        return
    process(args)


if __name__ == "__main__":
    main()

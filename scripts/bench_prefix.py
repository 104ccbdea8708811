"""CPU benchmark of the prefix-attention path against dense-mask packed rows and separate rows (issue 15).

One training step as ``scripts/gpu_check.py`` takes it (layout build, policy forward + backward, reference forward,
DPO loss; no optimizer step) on a random-init SmolLM2-135M-shaped Llama in fp32, one thread. The variants of a case
run in turn within each step round, the order rotating every round, so drift on a shared machine lands on all of
them alike; the median of the timed rounds is reported. Time is the process's CPU time (one thread): on a shared
machine wall time mostly measures the other jobs; wall time is reported too. Prints JSON.

    python scripts/bench_prefix.py                      # P=W=L=128 (InSPO, standard) and T=2048 (InSPO), ~15 min
    python scripts/bench_prefix.py --cases 128          # the short case only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SMOLLM2_135M = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                "intermediate_size": 1536, "vocab_size": 49152}
CASES = {  # name -> (P, W, L, conditionings, pairs per step, warm-up rounds, timed rounds)
    "128": (128, 128, 128, ("inspo", "standard"), 2, 1, 3),
    "2048": (1024, 512, 512, ("inspo",), 1, 1, 2),
}
PATHS = ("separate_sdpa", "packed_sdpa", "packed_prefix")


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", HERE / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, help="warm-up rounds (default: the case's)")
    parser.add_argument("--rounds", type=int, help="timed rounds (default: the case's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gc = load_gpu_check()
    gc.SIZES["135m"] = SMOLLM2_135M
    policy = gc.build_model("135m", "cpu").train()
    reference = gc.build_model("135m", "cpu").requires_grad_(False)
    pad_id = SMOLLM2_135M["vocab_size"] - 1
    result = {"model": "SmolLM2-135M-shaped random Llama, fp32", "threads": args.threads, "cases": {}}
    for case in args.cases:
        p, w, ln, conditionings, batch, warmup, rounds = CASES[case]
        warmup = warmup if args.warmup is None else args.warmup
        rounds = rounds if args.rounds is None else args.rounds
        pairs = gc.random_pairs([(p, w, ln)] * batch, SMOLLM2_135M["vocab_size"], False, seed=0)
        variants = [(c, path) for c in conditionings for path in PATHS]
        times: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
        cpu_times: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
        tokens: dict[tuple[str, str], tuple[int, int]] = {}
        for r in range(warmup + rounds):
            for c, path in variants[r % len(variants):] + variants[: r % len(variants)]:
                start, cpu_start = time.perf_counter(), time.process_time()
                tokens[(c, path)] = gc.ours_step(policy, reference, path, c, pairs, "cpu", pad_id)
                if r >= warmup:
                    times[(c, path)].append(time.perf_counter() - start)
                    cpu_times[(c, path)].append(time.process_time() - cpu_start)
            print(f"case {case} round {r} done", file=sys.stderr, flush=True)
        out = result["cases"][case] = {"P": p, "W": w, "L": ln, "pairs_per_step": batch, "warmup": warmup,
                                       "rounds": rounds}
        for c, path in variants:
            s, cpu = statistics.median(times[(c, path)]), statistics.median(cpu_times[(c, path)])
            policy_tokens, ref_tokens = tokens[(c, path)]
            out[f"{c}:{path}"] = {"cpu_s_per_step": cpu, "wall_s_per_step": s, "cpu_s_per_pair": cpu / batch,
                                  "cpu_steps_s": cpu_times[(c, path)], "wall_steps_s": times[(c, path)],
                                  "policy_tokens": policy_tokens, "reference_tokens": ref_tokens,
                                  "model_tokens_per_cpu_s": (policy_tokens + ref_tokens) / cpu}
        for c in conditionings:
            sep = out[f"{c}:separate_sdpa"]["cpu_s_per_step"]
            out[f"{c}:speedup_vs_separate"] = {path: sep / out[f"{c}:{path}"]["cpu_s_per_step"] for path in PATHS[1:]}
        print(json.dumps(out), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

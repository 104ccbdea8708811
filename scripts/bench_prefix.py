"""CPU benchmark of the prefix-attention path against dense-mask packed rows and separate rows (issue 15).

One training step as ``scripts/gpu_check.py`` takes it (layout build, policy forward + backward, reference forward,
DPO loss; no optimizer step) on a random-init SmolLM2-135M-shaped Llama in fp32, one thread. The variants of a case
run in turn within each step round, the order rotating every round, so drift on a shared machine lands on all of
them alike; the median of the timed rounds is reported. Time is the process's CPU time (one thread): on a shared
machine wall time mostly measures the other jobs; wall time is reported too. Prints JSON.

    python scripts/bench_prefix.py                      # P=W=L=128 (InSPO, standard) and T=2048 (InSPO), ~15 min
    python scripts/bench_prefix.py --cases 128          # the short case only
    python scripts/bench_prefix.py --scaling 256 512 1024 2048 4096 --layers 5 --vocab 8192 --cached

``--scaling T ...``: InSPO, one pair of T tokens per step (P = T/2, W = L = T/4), separate vs prefix rows.
``--layers`` / ``--vocab`` shrink the model (every layer is the same, so per-layer ratios hold; 5 layers with an
8,192 vocabulary keep SmolLM2-135M's ratio of output-head to decoder FLOPs per token, 30 x 3.5M : 576 x 49,152).
``--cached``: no reference forward (a cached reference), the setting of the README's scaling table.
The policy uses lean layers (``inspo.lean``) as training does; ``--plain`` keeps the model's own norms and MLPs.
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

from inspo.lean import use_lean_layers

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


def cached_step(gc, policy, path: str, conditioning: str, pairs: list[dict], pad_id: int) -> tuple[int, int]:
    """``gc.ours_step`` with a cached reference: policy forward + backward only (the reference log-probs are 0)."""
    from inspo.logprobs import target_logps

    make, impl = gc.paths("cpu")[path]
    gc.use_attention(policy, impl)
    rows = make(None).build(pairs, gc.sequences_for(conditioning, train=True), pad_id, "cpu")
    logps = target_logps(policy, rows)
    gc.dpo_loss(logps, torch.zeros_like(logps)).backward()
    policy.zero_grad(set_to_none=True)
    return int((rows.input_ids != pad_id).sum()), 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--scaling", type=int, nargs="+", help="tokens per pair T: scaling cases instead")
    parser.add_argument("--layers", type=int, help="decoder layers (default SmolLM2-135M's 30)")
    parser.add_argument("--vocab", type=int, help="vocabulary size (default SmolLM2's 49,152)")
    parser.add_argument("--cached", action="store_true", help="no reference forward (cached reference)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plain", action="store_true", help="without lean layers (inspo.lean), as before them")
    parser.add_argument("--warmup", type=int, help="warm-up rounds (default: the case's)")
    parser.add_argument("--rounds", type=int, help="timed rounds (default: the case's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gc = load_gpu_check()
    size = {**SMOLLM2_135M, **({"num_hidden_layers": args.layers} if args.layers else {}),
            **({"vocab_size": args.vocab} if args.vocab else {})}
    gc.SIZES["135m"] = size
    policy = gc.build_model("135m", "cpu").train()
    lean = [] if args.plain else use_lean_layers(policy)
    reference = None if args.cached else gc.build_model("135m", "cpu").requires_grad_(False)
    pad_id = size["vocab_size"] - 1
    cases = {**CASES, **{f"T{t}": (t // 2, t // 4, t // 4, ("inspo",), 1, 1, 2) for t in args.scaling or []}}
    result = {"model": "SmolLM2-135M-shaped random Llama, fp32", "size": size, "threads": args.threads,
              "reference": "cached (not run)" if args.cached else "live", "clock": "process CPU time",
              "lean_layers": lean,
              "command": " ".join(["python", "scripts/bench_prefix.py", *sys.argv[1:]]), "cases": {}}
    paths = tuple(args.paths)
    for case in [f"T{t}" for t in args.scaling] if args.scaling else args.cases:
        p, w, ln, conditionings, batch, warmup, rounds = cases[case]
        warmup = warmup if args.warmup is None else args.warmup
        rounds = rounds if args.rounds is None else args.rounds
        pairs = gc.random_pairs([(p, w, ln)] * batch, size["vocab_size"], False, seed=0)
        variants = [(c, path) for c in conditionings for path in paths]
        times: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
        cpu_times: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
        tokens: dict[tuple[str, str], tuple[int, int]] = {}
        for r in range(warmup + rounds):
            for c, path in variants[r % len(variants):] + variants[: r % len(variants)]:
                start, cpu_start = time.perf_counter(), time.process_time()
                tokens[(c, path)] = (cached_step(gc, policy, path, c, pairs, pad_id) if args.cached else
                                     gc.ours_step(policy, reference, path, c, pairs, "cpu", pad_id))
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
            out[f"{c}:speedup_vs_separate"] = {path: sep / out[f"{c}:{path}"]["cpu_s_per_step"] for path in paths[1:]}
            out[f"{c}:model_tokens_per_s_vs_separate"] = {
                path: out[f"{c}:{path}"]["model_tokens_per_cpu_s"] / out[f"{c}:separate_sdpa"]["model_tokens_per_cpu_s"]
                for path in paths[1:]}
        print(json.dumps(out), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

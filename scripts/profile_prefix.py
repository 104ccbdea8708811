"""Where a training step's CPU time goes, per attention path: a torch.profiler breakdown by kind of op (issue 15).

The step is ``scripts/bench_prefix.py``'s (layout build, policy forward + backward, reference forward, DPO loss) on
a random-init SmolLM2-135M-shaped Llama (fewer layers with ``--layers``: every layer is the same, so the shares
hardly move), fp32, one thread. Self CPU time of every op is summed into kinds: attention kernels, linear layers
(matmuls), the output projection + log-softmax of the target tokens, the prefix path's gathers and scatters
(index_select / index_copy / index_add and the zero-filled gradients they need), masks, everything else. Prints JSON.

    python scripts/profile_prefix.py --tokens 384 --layers 6        # P=W=L=128
    python scripts/profile_prefix.py --tokens 2048 --layers 4 --shape quarter   # P=T/2, W=L=T/4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

_spec = importlib.util.spec_from_file_location("bench_prefix", Path(__file__).resolve().parent / "bench_prefix.py")
bench_prefix = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_prefix)
PATHS, SMOLLM2_135M = bench_prefix.PATHS, bench_prefix.SMOLLM2_135M

KINDS = {  # first match wins; op names as torch.profiler reports them
    "attention": ("scaled_dot_product", "flash_attention", "_softmax", "softmax_backward", "baddbmm", "bmm"),
    "gather_scatter": ("index_select", "index_copy", "index_add", "index_put", "repeat_interleave", "scatter",
                       "gather", "embedding_dense_backward"),
    "linear": ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul"),
    "mask": ("causal", "tril", "triu", "eq", "logical", "aten::le", "aten::gt", "aten::ge", "aten::lt"),
    "copy_fill": ("aten::copy_", "aten::zero_", "aten::fill_", "aten::clone", "aten::contiguous", "aten::cat"),
}


def kind_of(name: str) -> str:
    for kind, words in KINDS.items():
        if any(w in name for w in words):
            return kind
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=384, help="tokens per pair T")
    parser.add_argument("--shape", choices=("thirds", "quarter"), default="thirds",
                        help="thirds: P=W=L=T/3; quarter: P=T/2, W=L=T/4")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=SMOLLM2_135M["vocab_size"])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--conditioning", default="inspo", choices=("inspo", "standard"))
    parser.add_argument("--paths", nargs="+", default=["separate_sdpa", "packed_prefix"], choices=PATHS)
    parser.add_argument("--top", type=int, default=12, help="ops listed per path")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t = args.tokens
    p, w = (t // 3, t // 3) if args.shape == "thirds" else (t // 2, t // 4)
    gc = bench_prefix.load_gpu_check()
    gc.SIZES["135m"] = {**SMOLLM2_135M, "num_hidden_layers": args.layers, "vocab_size": args.vocab}
    policy = gc.build_model("135m", "cpu").train()
    reference = gc.build_model("135m", "cpu").requires_grad_(False)
    pad_id = args.vocab - 1
    pairs = gc.random_pairs([(p, w, t - p - w)] * args.pairs, args.vocab, False, seed=0)
    result = {"command": " ".join(["python", "scripts/profile_prefix.py", *__import__("sys").argv[1:]]),
              "clock": "profiler self time per op (wall, so shares, not seconds, are what to read)",
              "tokens_per_pair": t, "vocab": args.vocab, "P": p, "W": w, "L": t - p - w, "layers": args.layers, "pairs": args.pairs,
              "conditioning": args.conditioning, "paths": {}}
    for path in args.paths:
        gc.ours_step(policy, reference, path, args.conditioning, pairs, "cpu", pad_id)  # warm-up
        start = time.process_time()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            tokens = gc.ours_step(policy, reference, path, args.conditioning, pairs, "cpu", pad_id)
        cpu_s = time.process_time() - start
        by_kind: dict[str, float] = defaultdict(float)
        ops = []
        for event in prof.key_averages():
            by_kind[kind_of(event.key)] += event.self_cpu_time_total / 1e6
            ops.append((event.self_cpu_time_total / 1e6, event.key, event.count))
        total = sum(by_kind.values())
        result["paths"][path] = {
            "cpu_s_profiled": cpu_s, "model_tokens": sum(tokens),
            "self_s_by_kind": {k: round(v, 4) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "share_by_kind": {k: round(v / total, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": name, "self_s": round(s, 4), "calls": n} for s, name, n in sorted(ops)[::-1][:args.top]],
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Optimizer-step benchmark: InSPO and DPO, separate vs packed rows, live vs cached reference, and TRL's DPOTrainer.

Every variant trains the same model on the same pairs (random token ids of exactly P prompt, W chosen and L
rejected tokens) with the same batch size, AdamW and grad-norm clipping at 1.0, fp32 on CPU (bf16 with --bf16 on
GPU). Each variant lives in its own process (so its peak memory, RSS on CPU or max allocated on CUDA, is its own)
and is stepped on demand: within a group of variants alive at once the parent runs one optimizer step of each in
turn, rotating the order every step, so machine drift (other jobs on a shared machine) lands on every variant
alike; the two variants of each speed ratio share a group (default 2 alive at once: ~6 GB each for SmolLM2).
Seconds per pair are the median over the
timed steps after warm-up. The cached-reference variants read one cache built before the first group (its build
time is reported, not timed) in a temporary cache folder.

TRL runs ``DPOTrainer`` (sigmoid loss, its own reference copy, no precomputed reference log-probs, fp32, no
gradient checkpointing) on the same token ids: ``_prepare_dataset`` is bypassed because the pairs are already
tokenised; everything else (collator, fused log-prob head, forward, optimizer) is TRL's own.

    python scripts/bench_step.py --json --threads 1          # P=W=L=128 on SmolLM2-135M-Instruct
    python scripts/bench_step.py --json --prompt 256 --chosen 64 --rejected 64
    python scripts/bench_step.py --quick                     # small case, < 3 min on 2 CPU cores
    python scripts/bench_step.py --json --variants inspo_packed_cached_selective trl_dpo   # peak memory with
                                                             # selective activation checkpointing (ours only)
    python scripts/bench_step.py --json --threads 1 --clock cpu --flops --groups inspo_packed_cached,trl_dpo \
        inspo_separate_live,inspo_packed_live     # explicit groups (comma-separated, alive at once), FLOPs counted
    python scripts/bench_step.py --scaling --json            # s/pair at 256..2048 tokens per pair per layout
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES: dict[str, dict[str, int]] = {  # Llama-style configs (SmolLM2's vocabulary), randomly initialised
    "tiny": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_key_value_heads": 2},
    "135m": {"num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
             "num_key_value_heads": 3},
    "360m": {"num_hidden_layers": 32, "hidden_size": 960, "intermediate_size": 2560, "num_attention_heads": 15,
             "num_key_value_heads": 5},
    "1b": {"num_hidden_layers": 16, "hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
           "num_key_value_heads": 8},
}
OURS = [f"{c}_{layout}_{ref}" for c in ("standard", "inspo") for layout in ("separate", "packed")
        for ref in ("live", "cached")]
SELECTIVE = [f"{v}_selective" for v in OURS]  # the same, with selective activation checkpointing (exact)
PLAIN = [f"{v}_plain" for v in OURS]  # the same without lean layers (inspo.lean): the model's own norms and MLPs
MODEL = "bundled:SmolLM2-135M-Instruct"


def make_pairs(n: int, p: int, w: int, ln: int, seed: int = 0) -> list[tuple[list[int], list[int], list[int]]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randint(100, 49000, (k,), generator=g).tolist() for k in (p, w, ln)) for _ in range(n)]


def load_model(args: argparse.Namespace) -> Any:
    from inspo.models import load_causal_lm

    random_init = SIZES[args.model_size] if args.model_size else None
    return load_causal_lm(MODEL, dtype="bf16" if args.bf16 else "fp32", attn_implementation="sdpa",
                          random_init=random_init, seed=0)


def peak_memory(device: str) -> int:
    import resource

    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def counted_flops(step: Any) -> int:
    """FLOPs of ``step()`` (one forward + backward) as dispatched, by torch's FlopCounterMode: matrix products and
    attention (on CPU the flash kernel counts only the (query, key) pairs its causal mask keeps, see
    :func:`_register_more_flops`). Optimizer and element-wise work are not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def _register_more_flops() -> None:
    import torch
    from torch.utils.flop_counter import (
        addmm_flop,
        flop_registry,
        register_flop_formula,
        sdpa_backward_flop_count,
        sdpa_flop_count,
    )

    def kept(q: tuple[int, ...], k: tuple[int, ...], causal: bool) -> float:  # share of (query, key) pairs computed
        sq, sk = q[-2], k[-2]
        return sum(min(i + 1, sk) for i in range(sq)) / (sq * sk) if causal else 1.0

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in flop_registry:
        return

    @register_flop_formula(aten.addmm_)  # in place (TRL's chunked log-prob head): torch counts only addmm
    def _addmm_(self_shape, a, b, *_, **__):
        return addmm_flop(self_shape, a, b)

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _fwd(q, k, v, dropout_p=0.0, is_causal=False, *_, **__):
        return int(sdpa_flop_count(q, k, v) * kept(q, k, is_causal))

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _bwd(grad_out, q, k, v, out, lse, dropout_p=0.0, is_causal=False, *_, **__):
        return int(sdpa_backward_flop_count(grad_out, q, k, v) * kept(q, k, is_causal))


def wait_for_step() -> bool:
    """Block until the parent says ``step`` (True) or ``done`` (False): the parent interleaves the variants."""
    return sys.stdin.readline().strip() == "step"


def report(kind: str, payload: Any) -> None:
    print(f"{kind} {json.dumps(payload)}", flush=True)


def serve_ours(args: argparse.Namespace, variant: str) -> None:
    import torch

    from inspo.conditioning import REFERENCE_SEQUENCES
    from inspo.data.datamodule import PairBatch
    from inspo.module import PreferenceModule
    from inspo.optim import fused_adamw_applies

    conditioning, layout, ref, *extra = variant.split("_")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from inspo.layout import PackedLayout

    rows = PackedLayout(args.max_tokens_per_row) if layout == "packed" else layout
    module = PreferenceModule(model=MODEL, loss="dpo", conditioning=conditioning, layout=rows,
                              reference="copy" if ref == "live" else "cached", dtype="bf16" if args.bf16 else "fp32",
                              random_init=SIZES[args.model_size] if args.model_size else None,
                              gradient_checkpointing="selective" if "selective" in extra else False,
                              lean_layers="plain" not in extra)
    pairs = make_pairs(args.batch_size * (args.warmup + args.steps), args.prompt, args.chosen, args.rejected)
    if ref != "live":  # the pairs the cached mode computes once (no datamodule here)
        module.reference_mode.pairs = [SimpleNamespace(prompt=p, chosen=c, rejected=r) for p, c, r in pairs]
    start = time.perf_counter()
    module.configure_model()  # cached: builds the reference cache, or finds it on disk
    setup_seconds = time.perf_counter() - start
    if args.build_only:
        return report("RESULT", {"setup_seconds": setup_seconds})
    module.to(device)
    module.policy.train()
    params = list(module.policy.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-6, fused=fused_adamw_applies(params) or None)  # as inspo.optim
    batches = [PairBatch(*map(list, zip(*pairs[i : i + args.batch_size])), rows=list(range(args.batch_size)))
               for i in range(0, len(pairs), args.batch_size)]
    pad_id = module.tokenizer.pad_token_id
    segments = [module.conditioning.segments(*p) for p in pairs[: args.batch_size]]
    row_tokens = module.layout.build(segments, module.conditioning.policy_sequences, pad_id).input_ids.numel()
    if ref == "live":
        row_tokens += module.layout.build(segments, REFERENCE_SEQUENCES, pad_id).input_ids.numel()
    report("READY", {"setup_seconds": setup_seconds})
    for batch in batches:
        if not wait_for_step():
            break
        sync(device)
        start = CLOCK[0]()
        loss = module.loss(*module.pair_logps(batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        report("TIME", CLOCK[0]() - start)
    wait_for_step()
    peak = peak_memory(device)
    flops = counted_flops(lambda: module.loss(*module.pair_logps(batches[0])).loss.backward()) if args.flops else None
    report("RESULT", {"peak_memory_bytes": peak, "row_tokens_per_step": row_tokens, "flops_per_step": flops})


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def serve_trl(args: argparse.Namespace) -> None:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from inspo.models import load_tokenizer

    class PretokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # the pairs are token ids already
            return dataset

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            wait_for_step()
            sync(device)
            self.start = CLOCK[0]()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            sync(device)
            report("TIME", CLOCK[0]() - self.start)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pairs = make_pairs(args.batch_size * (args.warmup + args.steps), args.prompt, args.chosen, args.rejected)
    data = Dataset.from_list([{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in pairs])
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size,
        max_steps=len(pairs) // args.batch_size, learning_rate=1e-6, lr_scheduler_type="constant", beta=0.1,
        loss_type=["sigmoid"], max_length=None, precompute_ref_log_probs=False, use_cpu=device == "cpu",
        bf16=args.bf16, report_to="none", save_strategy="no", logging_steps=10_000, dataloader_num_workers=0,
        gradient_checkpointing=False, max_grad_norm=1.0, optim="adamw_torch", weight_decay=0.0, seed=0,
        disable_dropout=True,
    )
    # the reference is passed: left to TRL, it would load the checkpoint named in the config (not a random init)
    trainer = PretokenizedDPOTrainer(model=load_model(args), ref_model=load_model(args), args=config,
                                     train_dataset=data, processing_class=load_tokenizer(MODEL), callbacks=[StepTimer()])
    report("READY", {})
    trainer.train()
    wait_for_step()
    row_tokens = 2 * 2 * args.batch_size * (args.prompt + max(args.chosen, args.rejected))  # policy + reference
    peak = peak_memory(device)
    flops = None
    if args.flops:  # one more forward + backward of TRL's own training_step on a batch of its own collator
        inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        trainer.current_gradient_accumulation_steps = 1  # set by train()'s loop
        flops = counted_flops(lambda: trainer.training_step(trainer.model, inputs))
    report("RESULT", {"peak_memory_bytes": peak, "row_tokens_per_step": row_tokens, "flops_per_step": flops})


CLOCK = [time.perf_counter]
"""How a worker times a step: wall time, or with ``--clock cpu`` its own CPU time (one thread on a shared machine:
wall time mostly measures the other jobs)."""


def worker(args: argparse.Namespace) -> None:
    import torch

    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.flops:
        _register_more_flops()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    serve_trl(args) if args.worker == "trl_dpo" else serve_ours(args, args.worker)


class Worker:
    """One variant in its own process (its peak memory is its own), stepped on demand by the parent."""

    def __init__(self, variant: str, extra: list[str]) -> None:
        self.variant = variant
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", variant, *extra], text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        env={**os.environ, "PYTHONWARNINGS": "ignore"})

    def read(self, kind: str) -> Any:
        for line in self.process.stdout:
            if line.startswith(kind + " "):
                return json.loads(line[len(kind) + 1 :])
        raise RuntimeError(f"variant {self.variant} exited (code {self.process.wait()}) before {kind}")

    def step(self) -> float:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        return self.read("TIME")

    def finish(self) -> dict[str, Any]:
        self.process.stdin.write("done\n")
        self.process.stdin.flush()
        result = self.read("RESULT")
        self.process.wait()
        return result


def summarise(args: argparse.Namespace, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pair_tokens = args.prompt + args.chosen + args.rejected
    variants = {}
    for name, run in runs.items():
        step = statistics.median(run["step_seconds"])
        variants[name] = {
            "seconds_per_pair": step / args.batch_size,
            "pair_tokens_per_s": args.batch_size * pair_tokens / step,
            "model_tokens_per_s": run["row_tokens_per_step"] / step,
            "peak_memory_mib": run["peak_memory_bytes"] / 2**20,
            "flops_per_pair": run["flops_per_step"] / args.batch_size if run.get("flops_per_step") else None,
            "step_seconds": run["step_seconds"],
            "group": run["group"],
        }

    def ratio(a: str, b: str, key: str = "seconds_per_pair") -> float | None:
        """a / b; a speed ratio only when a and b alternated in one group (across groups drift would enter it)."""
        if a not in variants or b not in variants:
            return None
        if key == "seconds_per_pair" and variants[a]["group"] != variants[b]["group"] and args.group_size != 1:
            return None
        return variants[a][key] / variants[b][key] if variants[a][key] and variants[b][key] else None

    return {
        "variants": variants,
        "ratios": {
            "inspo_packed_cached_over_trl_dpo": ratio("inspo_packed_cached", "trl_dpo"),
            "inspo_packed_over_inspo_separate": ratio("inspo_separate_live", "inspo_packed_live"),
            "inspo_packed_over_inspo_separate_cached": ratio("inspo_separate_cached", "inspo_packed_cached"),
            "standard_packed_cached_over_trl_dpo": ratio("standard_packed_cached", "trl_dpo"),
            "inspo_packed_model_tokens_per_s_over_separate": ratio("inspo_packed_live", "inspo_separate_live",
                                                                   "model_tokens_per_s"),
            "inspo_packed_cached_model_tokens_per_s_over_separate_cached": ratio(
                "inspo_packed_cached", "inspo_separate_cached", "model_tokens_per_s"),
            "peak_mem_inspo_packed_over_trl_dpo": ratio("inspo_packed_live", "trl_dpo", "peak_memory_mib"),
            "peak_mem_inspo_packed_cached_over_trl_dpo": ratio("inspo_packed_cached", "trl_dpo", "peak_memory_mib"),
            "peak_mem_inspo_packed_selective_over_trl_dpo": ratio("inspo_packed_live_selective", "trl_dpo",
                                                                  "peak_memory_mib"),
            "peak_mem_inspo_packed_cached_selective_over_trl_dpo": ratio("inspo_packed_cached_selective", "trl_dpo",
                                                                         "peak_memory_mib"),
            "inspo_packed_cached_selective_over_trl_dpo": ratio("inspo_packed_cached_selective", "trl_dpo"),
            "flops_inspo_packed_cached_over_trl_dpo": ratio("inspo_packed_cached", "trl_dpo", "flops_per_pair"),
            "flops_standard_packed_cached_over_trl_dpo": ratio("standard_packed_cached", "trl_dpo", "flops_per_pair"),
            **{f"{key}{name}_over_plain": ratio(name, f"{name}_plain", value)  # lean layers (inspo.lean) vs not
               for name in OURS for key, value in (("", "seconds_per_pair"), ("peak_mem_", "peak_memory_mib"))
               if f"{name}_plain" in variants},
        },
    }


def groups_of(variants: list[str], size: int) -> list[list[str]]:
    """Groups of at most ``size`` variants; each ratio's two variants come first and share a group (size >= 2)."""
    pairs = ("inspo_packed_cached", "trl_dpo", "inspo_separate_live", "inspo_packed_live", "inspo_separate_cached")
    ordered = [v for v in pairs if v in variants] + [v for v in variants if v not in pairs]
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def benchmark(args: argparse.Namespace, variants: list[str]) -> dict[str, Any]:
    extra = ["--prompt", str(args.prompt), "--chosen", str(args.chosen), "--rejected", str(args.rejected),
             "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    extra += ["--model-size", args.model_size] if args.model_size else []
    extra += ["--bf16"] if args.bf16 else []
    extra += ["--threads", str(args.threads)] if args.threads else []
    extra += ["--clock", args.clock]
    extra += ["--flops"] if args.flops else []
    extra += ["--max-tokens-per-row", str(args.max_tokens_per_row)] if args.max_tokens_per_row else []
    cached = [v for v in variants if v.endswith("_cached")]
    build = None  # the key holds no layout or conditioning: one cache serves every cached variant (not timed)
    if len(cached) > 1:  # a single cached variant builds it in its own (untimed) setup
        builder = Worker(cached[0], [*extra, "--build-only"])
        build = builder.read("RESULT")["setup_seconds"]
        builder.process.wait()
    runs: dict[str, dict[str, Any]] = {}
    groups = [g.split(",") for g in args.groups] if args.groups else groups_of(variants, args.group_size)
    for g, group in enumerate(groups):
        workers = []
        for variant in group:  # started one after the other: setups do not compete
            workers.append(Worker(variant, extra))
            workers[-1].read("READY")
        times: dict[str, list[float]] = {v: [] for v in group}
        for step in range(args.warmup + args.steps):
            order = workers[step % len(workers) :] + workers[: step % len(workers)]  # rotate: no variant always first
            for w in order:
                seconds = w.step()
                if step >= args.warmup:
                    times[w.variant].append(seconds)
            log(f"group {g} step {step}: " + ", ".join(f"{v} {t[-1]:.2f}s" for v, t in times.items() if t))
        for w in workers:
            runs[w.variant] = {**w.finish(), "step_seconds": times[w.variant], "group": g}
    out = summarise(args, runs)
    out["reference_cache_build_seconds"] = build
    out["setup"] = {"prompt": args.prompt, "chosen": args.chosen, "rejected": args.rejected,
                    "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
                    "model": f"random-init {args.model_size}" if args.model_size else MODEL,
                    "dtype": "bf16" if args.bf16 else "fp32", "max_tokens_per_row": args.max_tokens_per_row,
                    "threads": args.threads, "clock": args.clock}
    return out


def scaling(args: argparse.Namespace) -> dict[str, Any]:
    """s/pair of InSPO (cached reference) per layout at 256..2048 tokens per pair (P = T/2, W = L = T/4)."""
    table = {}
    for total in args.scaling_tokens:
        args.prompt, args.chosen, args.rejected = total // 2, total // 4, total // 4
        result = benchmark(args, ["inspo_separate_cached", "inspo_packed_cached"])
        table[str(total)] = {v: r["seconds_per_pair"] for v, r in result["variants"].items()}
        table[str(total)]["packed_speedup"] = result["ratios"]["inspo_packed_over_inspo_separate_cached"]
        log(f"scaling {total}: {table[str(total)]}")
    return {"seconds_per_pair": table, "setup": {"batch_size": args.batch_size, "steps": args.steps,
                                                 "warmup": args.warmup, "split": "P = T/2, W = L = T/4"}}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens P")
    parser.add_argument("--chosen", type=int, default=128, help="chosen-response tokens W")
    parser.add_argument("--rejected", type=int, default=128, help="rejected-response tokens L")
    parser.add_argument("--batch-size", type=int, default=2, help="pairs per optimizer step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--group-size", type=int, default=2, help="variants alive (and alternating) at once")
    parser.add_argument("--groups", nargs="+", metavar="A,B,...", help="the groups themselves (instead of "
                        "--variants and --group-size): each a comma-separated list of variants alive at once")
    parser.add_argument("--model-size", choices=sorted(SIZES), help="random-init Llama-style model of this size "
                        "instead of the pretrained SmolLM2-135M-Instruct")
    parser.add_argument("--bf16", action="store_true", help="bf16 parameters (GPU)")
    parser.add_argument("--threads", type=int, help="torch CPU threads per worker (default: torch's choice)")
    parser.add_argument("--max-tokens-per-row", type=int, help="packed layout: several pairs per row up to this")
    parser.add_argument("--variants", nargs="+", choices=[*OURS, *SELECTIVE, *PLAIN, "trl_dpo"], metavar="VARIANT",
                        help=f"subset of {[*OURS, 'trl_dpo']}, or one of ours with _selective (selective "
                        "activation checkpointing) or _plain (without lean layers; default: all but those)")
    parser.add_argument("--quick", action="store_true", help="a small case: P=W=L=32, the variants of the three "
                        "ratios only, 1 round (< 3 min on 2 CPU cores)")
    parser.add_argument("--scaling", action="store_true", help="scaling run instead of the variant comparison")
    parser.add_argument("--scaling-tokens", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="step time: wall clock, or each worker's own CPU time (with --threads 1 on a shared machine)")
    parser.add_argument("--flops", action="store_true", help="also count each variant's FLOPs per pair (one more "
                        "forward + backward after the timed steps, under torch's FlopCounterMode)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.groups:
        args.variants = [v for g in args.groups for v in g.split(",")]
        args.group_size = max(len(g.split(",")) for g in args.groups)
        unknown = sorted(set(args.variants) - {*OURS, *SELECTIVE, *PLAIN, "trl_dpo"})
        if unknown:
            parser.error(f"--groups: unknown variants {unknown}")
    try:
        import trl  # noqa: F401

        has_trl = True
    except ImportError:
        has_trl = False
        log("trl is not installed (pip install -e .[bench]): TRL's DPOTrainer is left out")
    if args.quick:
        args.prompt = args.chosen = args.rejected = 32
        args.steps, args.warmup, args.threads = 1, 1, args.threads or 1
        args.variants = args.variants or ["inspo_separate_live", "inspo_packed_live", "inspo_packed_cached",
                                          *(["trl_dpo"] if has_trl else [])]
    from inspo.models import cache_dir

    models = cache_dir() / "models"
    os.environ["INSPO_CACHE"] = tempfile.mkdtemp(prefix="inspo-bench-")  # reference caches: built here, once
    if models.is_dir():
        (Path(os.environ["INSPO_CACHE"]) / "models").symlink_to(models)  # converted models: reused
    variants = args.variants or [*OURS, *(["trl_dpo"] if has_trl else [])]
    result = scaling(args) if args.scaling else benchmark(args, variants)
    result["command"] = " ".join(["python", "scripts/bench_step.py", *sys.argv[1:]])
    result["trl"] = __import__("trl").__version__ if has_trl else None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, row in result.get("variants", {}).items():
            print(f"{name:24s} {row['seconds_per_pair']:8.3f} s/pair {row['pair_tokens_per_s']:8.1f} tok/s "
                  f"{row['peak_memory_mib']:8.0f} MiB")
        print(json.dumps(result.get("ratios", result.get("seconds_per_pair")), indent=2))


if __name__ == "__main__":
    main()

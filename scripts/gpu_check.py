"""GPU check for packed preference pairs (issue 15): exactness of every attention path, then step timings.

    python scripts/gpu_check.py --out gpu_check.json        # CUDA: random-init ~1B Llama-style model, < 6 min
    python scripts/gpu_check.py --device cpu --tiny         # seconds: the smoke run of tests/test_gpu_check.py

1. Exactness. Target log-probs of random pairs (several pairs per packed row, padding, uneven lengths) under each
   attention path, against separate causal rows under sdpa in the same dtype (fp32 and bf16): packed rows with the
   dense 4D mask under sdpa and eager, under flex_attention with ``inspo.layout.to_block_mask`` (CUDA only: a CPU
   compile takes minutes), and the prefix path of ``inspo.prefix_attention`` (the packed layout's default)
   standing in for sdpa, for eager and, with flash-attn installed on CUDA, for flash_attention_2. Conditionings:
   standard, InSPO, InSPO with a reflection template. In fp32 it also compares one weight gradient (backward).
2. Timing. One training step as ``PreferenceModule`` takes it (layout build, policy forward with grad, reference
   forward without, DPO loss, backward; no optimizer step, the same for every variant) for InSPO and standard
   conditioning x {separate, packed sdpa, packed flex, packed prefix}, and TRL's ``DPOTrainer.compute_loss`` (its
   collator's batch, fused log-prob head, reference forward, sigmoid loss) + backward on the same pairs, at 512 and
   2,048 tokens per pair (P=T/2, W=L=T/4), bf16 parameters, fp32 log-softmax.

FLOPs are "model FLOPs": 6*N per trained token and 2*N per reference token, N = parameters without the input
embedding, tokens = real (non-pad) tokens of the model rows; attention's own FLOPs are not counted. MFU divides by
``--peak-tflops`` (989: H200 SXM dense bf16, spec sheet). The JSON is rewritten after every measurement, so a
timeout loses nothing; every variant runs in try/except and records its error; variants that would start past
``--budget-s`` are recorded as skipped (flex variants come last: compiling them is the slow part).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inspo.conditioning import REFERENCE_SEQUENCES, InSPOConditioning, StandardConditioning
from inspo.layout import PackedLayout, SeparateLayout
from inspo.logprobs import target_logps, token_logps

try:  # the prefix-attention path (issue 15), when this checkout has it
    from inspo import prefix_attention
except ImportError:  # pragma: no cover - older checkouts
    prefix_attention = None

SIZES: dict[str, dict[str, int]] = {
    "1b": {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 8192, "vocab_size": 32000},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128, "vocab_size": 512},
}
TOLERANCE = {"fp32": 1e-5, "fp32_cuda": 2e-4}
"""Max abs token log-prob difference accepted in fp32 (CUDA kernels reduce in other orders than CPU ones). In bf16
a path passes within max(4 x the bf16 noise floor, 0.05): the floor is separate rows under eager vs sdpa."""


def sequences_for(conditioning: str, train: bool = False) -> dict[str, tuple[str, ...]]:
    seqs = (StandardConditioning() if conditioning == "standard" else InSPOConditioning()).sequences(plain=True)
    if train:  # the module drops plain log pi(y|x) targets the DPO loss never reads
        seqs = {k: v for k, v in seqs.items() if not k.endswith("_plain")}
    return dict(seqs)


def paths(device: str) -> dict[str, tuple[Any, str]]:
    """Attention path name -> (layout factory taking max_tokens_per_row, attn_implementation)."""
    out = {"separate_sdpa": (lambda m: SeparateLayout(), "sdpa"), "separate_eager": (lambda m: SeparateLayout(), "eager"),
           "packed_sdpa": (PackedLayout, "sdpa"), "packed_eager": (PackedLayout, "eager")}
    if device == "cuda":
        out["packed_flex"] = (PackedLayout, "flex_attention")
    if prefix_attention is not None:  # the packed layout's default wherever exact: standing in for sdpa or eager
        out["packed_prefix"] = (prefix_attention.PrefixLayout, prefix_attention.register("sdpa"))
        if hasattr(prefix_attention, "BASES"):
            out["packed_prefix_eager"] = (prefix_attention.PrefixLayout, prefix_attention.register("eager"))
        if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
            out["packed_prefix_fa2"] = (prefix_attention.PrefixLayout, prefix_attention.register("flash_attention_2"))
    return out


def build_model(size: str, device: str, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SIZES[size], max_position_embeddings=16384, tie_word_embeddings=False,
                         attn_implementation="sdpa")
    torch.manual_seed(seed)
    with torch.device(device):
        return LlamaForCausalLM(config).float().eval()


def use_attention(model: torch.nn.Module, impl: str) -> None:
    model.config._attn_implementation = impl  # every attention layer reads the shared config at call time


def random_pairs(lengths: list[tuple[int, int, int]], vocab: int, template: bool, seed: int) -> list[dict]:
    """Segments of random pairs; token ids avoid ``vocab - 1``, the pad id, so non-pad tokens can be counted."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(0, vocab - 1, (n,), generator=g).tolist()
    out = []
    for p, w, ln in lengths:
        before, after = (ids(3), ids(5)) if template else ([], [])
        out.append({"x": ids(p), "y_w": ids(w), "y_l": ids(ln), "before": before, "after": after})
    return out


def write_json(path: str | None, result: dict) -> None:
    if path:
        tmp = f"{path}.tmp"
        Path(tmp).write_text(json.dumps(result, indent=1, default=str))
        os.replace(tmp, path)


def error_record(exc: BaseException) -> dict[str, str]:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return {"error": f"{type(exc).__name__}: {exc}"[:800], "traceback": "".join(tb)[-2500:]}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- 1. exactness
def exactness_case(model: torch.nn.Module, pairs: list[dict], case: str, device: str, mtpr: int, pad_id: int,
                   dtype: str, record: dict, save: Any) -> None:
    seqs = sequences_for(case.split("_")[0])
    grad_param = model.model.layers[0].self_attn.q_proj.weight

    def run(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        make, impl = paths(device)[path]
        use_attention(model, impl)
        rows = make(mtpr).build(pairs, seqs, pad_id, device)
        if dtype != "fp32":
            with torch.no_grad():
                return token_logps(model, rows).float(), None
        logps = token_logps(model, rows)  # fp32: also the gradient of a fixed weighting of the log-probs
        weights = torch.linspace(-1, 1, logps.numel(), device=logps.device)
        (grad,) = torch.autograd.grad((logps * weights).sum(), grad_param)
        return logps.detach(), grad

    want, want_grad = run("separate_sdpa")
    for path in paths(device):
        if path == "separate_sdpa":
            continue
        try:
            got, grad = run(path)
            entry = {"max_abs_diff_token_logp": (got - want).abs().max().item(), "tokens": got.numel()}
            if grad is not None:
                entry["grad_rel_diff"] = ((grad - want_grad).norm() / want_grad.norm().clamp_min(1e-30)).item()
        except Exception as exc:  # noqa: BLE001 - one failing path must not stop the others
            entry = error_record(exc)
        record.setdefault(path, {})[case] = entry
        print(json.dumps({"exactness": [dtype, case, path], **entry})[:400], flush=True)
        save()
    use_attention(model, "sdpa")


def exactness(model: torch.nn.Module, args: argparse.Namespace, result: dict, save: Any) -> None:
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    hi = (24, 12) if args.tiny else (300, 200)
    lengths = [(int(torch.randint(1, hi[0], (1,), generator=g)), *torch.randint(1, hi[1], (2,), generator=g).tolist())
               for _ in range(6)]
    mtpr = 3 * (hi[0] + 2 * hi[1])  # several pairs share a row, and rows end in padding
    out = result["exactness"] = {"pairs": lengths, "max_tokens_per_row": mtpr, "reference": "separate_sdpa"}
    for dtype in ("fp32", "bf16"):
        model.to(torch.float32 if dtype == "fp32" else torch.bfloat16)
        record = out[dtype] = {}
        for case in ("standard", "inspo", "inspo_template"):
            pairs = random_pairs(lengths, vocab, case.endswith("template"), seed=2)
            try:
                exactness_case(model, pairs, case, args.device, mtpr, vocab - 1, dtype, record, save)
            except Exception as exc:  # noqa: BLE001 - recorded in the JSON; the run goes on
                record.setdefault("errors", []).append({case: error_record(exc)})
    floor = max((v.get("max_abs_diff_token_logp", 0.0) for v in out["bf16"].get("separate_eager", {}).values()),
                default=0.0)
    tol = {"fp32": TOLERANCE["fp32_cuda" if args.device == "cuda" else "fp32"], "bf16": max(4 * floor, 0.05)}
    out["tolerance"] = tol
    out["all_ok"] = True
    for dtype in ("fp32", "bf16"):
        out["all_ok"] &= "errors" not in out[dtype]
        for path, cases in out[dtype].items():
            for case in cases.values() if path != "errors" else []:
                case["ok"] = case.get("max_abs_diff_token_logp", math.inf) <= tol[dtype]
                out["all_ok"] &= case["ok"]
    save()


# ---------------------------------------------------------------- 2. timing
def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    margin = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])  # columns: chosen, rejected
    return -F.logsigmoid(beta * margin).mean()


def ours_step(policy, reference, path: str, conditioning: str, pairs: list[dict], device: str, pad_id: int):
    make, impl = paths(device)[path]
    use_attention(policy, impl)
    use_attention(reference, impl)
    layout = make(None)
    seqs = sequences_for(conditioning, train=True)
    rows = layout.build(pairs, seqs, pad_id, device)
    ref_rows = layout.build(pairs, REFERENCE_SEQUENCES, pad_id, device)
    logps = target_logps(policy, rows)
    with torch.no_grad():
        ref = target_logps(reference, ref_rows)
    dpo_loss(logps, ref).backward()
    policy.zero_grad(set_to_none=True)
    return int((rows.input_ids != pad_id).sum()), int((ref_rows.input_ids != pad_id).sum())


def make_trl_step(policy, reference, pairs: list[dict], device: str, pad_id: int):
    """TRL's DPOTrainer on copies of our models (it patches their forward); returns a step function."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # already token ids
            return dataset

    vocab = {f"t{i}": i for i in range(pad_id + 1)}  # an in-memory word-level tokenizer: TRL only needs the pad id
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                        pad_token=f"t{pad_id}", eos_token=f"t{pad_id}")
    examples = [{"prompt_ids": p["x"], "chosen_ids": p["y_w"], "rejected_ids": p["y_l"]} for p in pairs]
    config = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=len(pairs), beta=0.1,
                       loss_type=["sigmoid"], max_length=None, precompute_ref_log_probs=False, report_to="none",
                       use_cpu=device == "cpu", bf16=next(policy.parameters()).dtype == torch.bfloat16,
                       gradient_checkpointing=False, disable_dropout=True, save_strategy="no")
    use_attention(policy, "sdpa")
    use_attention(reference, "sdpa")
    trainer = PretokenizedDPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=config,
                                     train_dataset=Dataset.from_list(examples), processing_class=tokenizer)
    model = trainer.model.train()

    def step() -> tuple[int, int]:
        batch = {k: v.to(device) for k, v in trainer.data_collator(examples).items()}
        trainer.compute_loss(model, batch).backward()
        model.zero_grad(set_to_none=True)
        tokens = int(batch["attention_mask"].sum())
        return tokens, tokens

    return step, trainer


def time_variant(step: Any, args: argparse.Namespace, n_params: int, pairs: int) -> dict[str, Any]:
    device = args.device
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    sync(device)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        tokens, ref_tokens = step()
        sync(device)
        times.append(time.perf_counter() - start)
    s = sorted(times)[len(times) // 2]  # median
    flops = 6 * n_params * tokens + 2 * n_params * ref_tokens
    out = {"s_per_step": s, "steps_s": times, "pairs_per_step": pairs, "s_per_pair": s / pairs,
           "policy_tokens": tokens, "reference_tokens": ref_tokens, "tokens_per_s": (tokens + ref_tokens) / s,
           "model_tflops_per_s": flops / s / 1e12,
           "mfu": flops / s / (args.peak_tflops * 1e12) if args.peak_tflops else None}
    if device == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def timing(policy: torch.nn.Module, args: argparse.Namespace, result: dict, save: Any, start: float) -> None:
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    policy.train()
    pad_id = policy.config.vocab_size - 1
    n_params = sum(p.numel() for p in policy.parameters()) - policy.get_input_embeddings().weight.numel()
    out = result["timing"]
    out["n_params_no_embedding"] = n_params
    available = paths(args.device)
    plan = []  # (length, variant); flex last: compiling it is the slow part
    for flex in (False, True):
        for length in args.lengths:
            for conditioning in ("inspo", "standard"):
                for path in ("separate_sdpa", "packed_sdpa", "packed_prefix", "packed_flex"):
                    wanted = args.timing_paths is None or path in args.timing_paths
                    if path in available and wanted and (path == "packed_flex") == flex:
                        plan.append((length, f"{conditioning}:{path}"))
            if not flex and (args.timing_paths is None or "trl_dpo" in args.timing_paths):
                plan.append((length, "standard:trl_dpo"))
    for length, variant in plan:
        record = out.setdefault(f"T{length}", {})
        batch = args.batch_per_length.get(length, 2)
        p = length // 2
        record.setdefault("shape", {"P": p, "W": length // 4, "L": length // 4, "pairs_per_step": batch})
        reserve = 60 if variant.endswith(":packed_flex") else 0  # a first flex step compiles its kernels
        if time.monotonic() - start > args.budget_s - reserve:
            record[variant] = {"skipped": f"time budget of {args.budget_s} s (less {reserve} s for compiling) spent"}
            save()
            continue
        pairs = random_pairs([(p, length // 4, length // 4)] * batch, policy.config.vocab_size, False, seed=length)
        conditioning, path = variant.split(":")
        trainer = None
        try:
            if path == "trl_dpo":
                step, trainer = make_trl_step(policy, reference, pairs, args.device, pad_id)
            else:
                step = lambda: ours_step(policy, reference, path, conditioning, pairs, args.device, pad_id)  # noqa: B023
            record[variant] = time_variant(step, args, n_params, batch)
        except ImportError as exc:
            record[variant] = {"skipped": f"not importable here: {exc}"}
        except Exception as exc:  # noqa: BLE001 - recorded in the JSON; the run goes on
            record[variant] = error_record(exc)
        finally:
            del trainer
            policy.zero_grad(set_to_none=True)
            if args.device == "cuda":
                torch.cuda.empty_cache()
        record[variant]["elapsed_s"] = time.monotonic() - start
        print(json.dumps({variant: record[variant], "T": length}, default=str)[:600], flush=True)
        save()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="2-layer model, short pairs: a smoke run in seconds")
    parser.add_argument("--out", help="write the JSON here too (rewritten after every measurement)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="start no timed variant after this many s")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak (default 989 on CUDA)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-exactness", action="store_true")
    parser.add_argument("--lengths", type=lambda v: [int(x) for x in v.split(",")], default=None,
                        help="tokens per pair to time, e.g. 256,1024,4096 (default 512,2048; --tiny 32,64)")
    parser.add_argument("--pair-tokens", type=int, default=16384,
                        help="with --lengths: pairs per step = pair-tokens // length (at least 1)")
    parser.add_argument("--timing-paths", type=lambda v: v.split(","), default=None,
                        help="comma-separated subset of separate_sdpa,packed_sdpa,packed_prefix,packed_flex,trl_dpo")
    args = parser.parse_args(argv)
    if args.lengths:
        args.batch_per_length = {n: max(1, args.pair_tokens // n) for n in args.lengths}
    else:
        args.lengths = [32, 64] if args.tiny else [512, 2048]
        args.batch_per_length = {32: 2, 64: 2} if args.tiny else {512: 32, 2048: 8}
    args.steps = args.steps or (1 if args.tiny else 3)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.tiny else 1)
    if args.peak_tflops is None and args.device == "cuda":
        args.peak_tflops = 989.0
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    start = time.monotonic()
    try:  # flex_attention recompiles per dtype, shape and grad mode: more than dynamo's default 8 entries
        torch._dynamo.config.recompile_limit = 64
    except AttributeError:  # pragma: no cover - older torch
        torch._dynamo.config.cache_size_limit = 64
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 exactness must not run on TF32 tensor cores
    versions = {"torch": torch.__version__}
    for name in ("transformers", "trl"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    result: dict[str, Any] = {
        "meta": {"device": args.device, "model": "tiny" if args.tiny else "1b", "config": SIZES["tiny" if args.tiny
                 else "1b"], "versions": versions, "peak_tflops_assumed": args.peak_tflops, "steps": args.steps,
                 "warmup": args.warmup, "budget_s": args.budget_s, "paths": list(paths(args.device)),
                 "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None},
        "exactness": {}, "timing": {}}
    save = lambda: write_json(args.out, result)
    save()
    model = build_model("tiny" if args.tiny else "1b", args.device)
    try:
        if not args.skip_exactness:
            exactness(model, args, result, save)
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON; the run goes on
        result["exactness"]["error"] = error_record(exc)
    print(json.dumps({"exactness_all_ok": result["exactness"].get("all_ok")}), flush=True)
    if not args.skip_timing:
        model.to(torch.bfloat16 if args.device == "cuda" else torch.float32)
        timing(model, args, result, save, start)
    result["meta"]["total_s"] = time.monotonic() - start
    save()
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main()

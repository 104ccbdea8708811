"""``inspo eval``: generate from pi(y|x) on held-out verifiable prompts, judge with the gold reward, report win rates.

::

    inspo eval --model runs/quickstart/inspo/version_0/hf_model --out runs/eval
    inspo eval --model dpo=runs/a/hf_model --model inspo_dpo=runs/b/hf_model --limit 100 --out runs/eval

Every ``--model`` (a trained HF folder, ``NAME=PATH`` to name it) and the ``--baseline`` (default: the untrained
bundled SmolLM2-135M-Instruct) answer every prompt of ``--prompts`` (default: the bundled held-out prompts)
greedily, batched with left padding, from the prompt alone: no alternative response, as at deployment. Each
answer gets its gold reward (``inspo.eval.constraints``); each model is compared with the baseline
(``inspo.eval.winrate``). ``--out DIR`` receives ``winrate.json``, ``winrate.md``, ``winrate.png``,
``reward_vs_length.png`` and ``generations/NAME.jsonl``. Generations are reused when the same model, prompts
and decoding settings were already answered in that folder, so comparing several runs against one baseline
generates the baseline once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import inspo
from inspo.data.formats import read_rows
from inspo.errors import DataError, ModelSourceError
from inspo.eval.constraints import Constraint, gold_reward, satisfied
from inspo.eval.generate import generate, require_chat_template
from inspo.eval.winrate import compare
from inspo.eval.winrate_report import write_markdown, write_plots
from inspo.models import BUNDLED_SMOLLM2, load_causal_lm, load_tokenizer
from inspo.preflight import check_output_folder

log = logging.getLogger("inspo")
BASELINE = "baseline"


def heldout_prompts_file() -> Path:
    """The bundled held-out prompts of the verifiable benchmark."""
    return Path(inspo.__file__).parent / "assets" / "verifiable" / "heldout_prompts.jsonl"


def read_prompts(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Prompt rows ``{"id", "prompt", "constraints"}``; every malformed row is reported in one DataError."""
    problems: list[str] = []
    prompts: list[dict[str, Any]] = []
    for number, raw in read_rows(path, keep_going=True):
        if isinstance(raw, Exception):
            problems.append(str(raw))
            continue
        where = f"{path}: line {number}"
        try:
            prompts.append(_prompt_row(raw, number))
        except (ValueError, TypeError) as err:
            problems.append(f"{where}: {err}")
    if problems:
        more = f" (and {len(problems) - 1} more malformed rows)" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]}{more}; each row needs a string 'prompt' and a non-empty list 'constraints' "
                        "of {\"family\": ..., \"params\": {...}}")
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts[:limit] if limit else prompts


def _prompt_row(raw: Any, number: int) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise TypeError(f"expected an object, got {type(raw).__name__}")
    if not isinstance(raw.get("prompt"), str) or not raw["prompt"].strip():
        raise ValueError("missing or empty string field 'prompt'")
    items = raw.get("constraints")
    if not isinstance(items, list) or not items:
        raise ValueError("missing or empty list field 'constraints'")
    constraints = []
    for index, item in enumerate(items):
        try:
            constraints.append(Constraint.from_dict(item))
        except (ValueError, TypeError) as err:
            raise ValueError(f"constraint {index}: {err}") from None
    return {"id": str(raw.get("id", number)), "prompt": raw["prompt"], "constraints": constraints}


def check_model_source(name: str) -> None:
    """Fail early and clearly on a model path that does not exist (hub ids ``org/name`` pass through)."""
    if name.startswith("bundled:") or Path(name).expanduser().exists():
        return
    if name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") != 1:
        raise ModelSourceError(f"model folder not found: {name}")


def parse_model(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after the folder, or its parent for ``.../hf_model``)."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        return name, path
    path = Path(spec.rstrip("/"))
    name = path.parent.name if path.name == "hf_model" and path.parent.name else path.name
    return name or spec, spec


def answer(name: str, source: str, prompts: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> list[dict]:
    """Generations of one model for every prompt, scored; reused from ``out/generations`` when settings match."""
    settings = {"model": str(Path(source).resolve()) if Path(source).exists() else source,
                "prompts": hashlib.sha256(json.dumps([p["prompt"] for p in prompts]).encode()).hexdigest()[:16],
                "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed}
    path = out / "generations" / f"{name}.jsonl"
    meta = path.with_suffix(".meta.json")
    if path.is_file() and meta.is_file():
        saved = json.loads(meta.read_text())
        if {key: saved.get(key) for key in settings} == settings:
            log.info("eval: %s: reusing %s", name, path)
            return [json.loads(line) for line in path.read_text().splitlines()]
    tokenizer = load_tokenizer(source)
    model = load_causal_lm(source, dtype=args.dtype)
    torch.manual_seed(args.seed)
    start = time.time()
    outputs = generate(model, tokenizer, [p["prompt"] for p in prompts], max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, batch_size=args.batch_size)
    seconds = time.time() - start
    log.info("eval: %s: %d answers in %.0f s", name, len(prompts), seconds)
    rows = []
    for prompt, (gen,) in zip(prompts, outputs):
        rows.append({"id": prompt["id"], "response": gen.text, "tokens": gen.tokens, "truncated": gen.truncated,
                     "reward": gold_reward(gen.text, prompt["constraints"], gen.truncated),
                     "satisfied": satisfied(gen.text, prompt["constraints"]),
                     "families": [c.family for c in prompt["constraints"]]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    meta.write_text(json.dumps({**settings, "generation_seconds": round(seconds, 1)}))
    return rows


def summarize(rows: list[dict]) -> dict[str, Any]:
    """Mean gold reward, response lengths and per-family satisfaction of one model's answers."""
    tokens = [row["tokens"] for row in rows]
    families: dict[str, list[bool]] = {}
    for row in rows:
        for family, ok in zip(row["families"], row["satisfied"]):
            families.setdefault(family, []).append(ok)
    return {"mean_reward": statistics.fmean(row["reward"] for row in rows), "mean_tokens": statistics.fmean(tokens),
            "median_tokens": statistics.median(tokens),
            "truncated_fraction": statistics.fmean(row["truncated"] for row in rows),
            "all_satisfied_fraction": statistics.fmean(all(row["satisfied"]) for row in rows),
            "satisfied_by_family": {f: statistics.fmean(v) for f, v in sorted(families.items())}}


def family_win_rates(rows: list[dict], baseline: list[dict]) -> dict[str, dict[str, float]]:
    """Win rate against the baseline restricted to the prompts carrying each constraint family."""
    out = {}
    for family in sorted({f for row in rows for f in row["families"]}):
        index = [i for i, row in enumerate(rows) if family in row["families"]]
        result = compare([rows[i]["reward"] for i in index], [baseline[i]["reward"] for i in index],
                         [rows[i]["tokens"] for i in index], [baseline[i]["tokens"] for i in index])
        out[family] = {"n": result.n, "win_rate": result.win_rate, "win_rate_se": result.win_rate_se}
    return out


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole evaluation (see the module docstring) and write its outputs; returns ``winrate.json``."""
    check_output_folder("--out", args.out)  # before hours of generation, not when the first answers are saved
    out = Path(args.out)
    models = [parse_model(spec) for spec in args.model]
    names = [name for name, _ in models]
    if len(set(names)) != len(names) or BASELINE in names:
        raise ModelSourceError(f"model names must be distinct and not {BASELINE!r}: {names} (use NAME=PATH)")
    prompts = read_prompts(args.prompts, args.limit)
    for _, source in [*models, (BASELINE, args.baseline)]:  # fail before any model is loaded
        check_model_source(source)
        require_chat_template(load_tokenizer(source), source)
    if args.threads:
        torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    baseline = answer(BASELINE, args.baseline, prompts, args, out)
    result: dict[str, Any] = {
        "prompts": str(args.prompts), "n_prompts": len(prompts), "baseline_model": args.baseline,
        "decoding": {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature},
        "baseline": {**summarize(baseline), "generation_seconds": generation_seconds(out, BASELINE)}, "models": {},
    }
    for name, source in models:
        rows = answer(name, source, prompts, args, out)
        win = compare([r["reward"] for r in rows], [b["reward"] for b in baseline], [r["tokens"] for r in rows],
                      [b["tokens"] for b in baseline])
        result["models"][name] = {"source": source, **win.to_dict(), **summarize(rows),
                                  "win_rate_by_family": family_win_rates(rows, baseline),
                                  "generation_seconds": generation_seconds(out, name)}
    result["seconds"] = round(time.time() - start, 1)
    (out / "winrate.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, out / "winrate.md")
    write_plots(result, {name: answer_rows(out, name) for name in [BASELINE, *names]}, out)
    return result


def answer_rows(out: Path, name: str) -> list[dict]:
    """The scored generations of ``name`` saved under ``out/generations``."""
    return [json.loads(line) for line in (out / "generations" / f"{name}.jsonl").read_text().splitlines()]


def generation_seconds(out: Path, name: str) -> float | None:
    """Wall time of the generation that produced ``out/generations/NAME.jsonl`` (None if unknown)."""
    meta = out / "generations" / f"{name}.meta.json"
    return json.loads(meta.read_text()).get("generation_seconds") if meta.is_file() else None


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``inspo eval``."""
    parser = argparse.ArgumentParser(prog="inspo eval", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("--model", action="append", required=True, metavar="[NAME=]PATH",
                        help="a trained HF folder (repeat for several); NAME=PATH names it in the report")
    parser.add_argument("--baseline", default=BUNDLED_SMOLLM2, help="the model every --model is compared with")
    parser.add_argument("--prompts", default=str(heldout_prompts_file()),
                        help="JSONL of {prompt, constraints}; default: the bundled held-out prompts")
    parser.add_argument("--out", default="runs/eval", help="output folder")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts (quick runs)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="length cap of each answer")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy decoding")
    parser.add_argument("--dtype", default="fp32", help="fp32 (default) or bf16 (about 2x faster on CPUs with "
                        "avx512_bf16; greedy answers may differ slightly)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (with --temperature > 0)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``inspo eval``; prints the markdown table."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.limit is not None and args.limit < 1) or args.max_new_tokens < 1 or args.batch_size < 1:
        parser.error("--limit, --max-new-tokens and --batch-size must be at least 1")
    evaluate(args)
    print((Path(args.out) / "winrate.md").read_text())

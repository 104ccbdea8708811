"""The evidence grid's outputs a person reads: ``summary.json``, ``summary.md``, ``head_to_head.png``,
``vs_start.png`` and ``transfer.png``, rebuilt from the per-run results of ``scripts/run_evidence.py``.

Inputs under the results folder: ``runs/NAME.json`` (training: validation curve, lr, commit), ``runs/step0-*.json``
(validation of the untrained model), ``eval/NAME.json`` (per-prompt suite scores; ``eval/start.json`` is the
untrained start) and ``sweep.json``. Everything is recomputed from these, so a partial grid gives a partial
summary (losses without results carry ``None``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from inspo.eval.evidence import CONDITIONINGS, loss_summary, start_metrics
from inspo.eval.stats import paired_difference

LOSSES = ("dpo", "simpo", "ipo", "rdpo", "orpo")
CONTRACT = ("seeds", "head_to_head_win_rate", "head_to_head_se", "gold_reward_diff", "gold_reward_diff_se")
PER_CONDITIONING = ("ifeval_prompt_strict", "ifbench_prompt_loose")
ACC, PLAIN = "val/reward_accuracy", "val/plain_reward_accuracy"


def _read(folder: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def collect(out: Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, dict[int, Any]]], dict[str, Any],
                                dict[str, dict[float, dict[str, dict[int, Any]]]]]:
    """(start's scores, ``{loss: {conditioning: {seed: scores}}}``, training records by run name, and the
    sensitivity runs' scores ``{loss: {lr: {conditioning: {seed: scores}}}}``)."""
    evals, runs = _read(out / "eval"), _read(out / "runs")
    grid: dict[str, dict[str, dict[int, Any]]] = {}
    other: dict[str, dict[float, dict[str, dict[int, Any]]]] = {}
    for name, result in evals.items():
        match = re.fullmatch(r"(\w+)-(standard|inspo)-s(\d+)(?:-lr(.+))?", name)
        if match and match[4]:
            other.setdefault(match[1], {}).setdefault(float(match[4]), {}).setdefault(match[2], {})[
                int(match[3])] = result
        elif match:
            grid.setdefault(match[1], {}).setdefault(match[2], {})[int(match[3])] = result
    return evals.get("start"), grid, runs, other


def transfer_curves(runs: dict[str, Any], loss: str) -> dict[str, dict[str, list[list[float]]]]:
    """Per seed: validation accuracy over steps of the standard run, and the InSPO run's conditioned and plain."""
    curves: dict[str, dict[str, list[list[float]]]] = {}
    zero = {c: runs.get(f"step0-{loss}-{c}", {}).get("val", {}) for c in CONDITIONINGS}
    for record in runs.values():
        if record.get("loss") != loss or "val_curve" not in record or record.get("seed") is None:
            continue
        if record["lr"] != runs.get("_chosen", {}).get(loss, record["lr"]):  # a sweep or sensitivity run
            continue
        seed = curves.setdefault(str(record["seed"]), {})
        rows = record["val_curve"]
        if not any(row.get("step") == 0 for row in rows):  # a run without its own check before step 1
            rows = [zero[record["conditioning"]], *rows]
        for key, label in ((ACC, record["conditioning"]), (PLAIN, "inspo_plain")):
            if record["conditioning"] == "inspo" or key == ACC:
                points = [[row["step"], row[key]] for row in rows if key in row and "step" in row]
                if points:
                    seed[label] = points
    return curves


def write_summary(out: Path, args: Any = None, plots: bool = True) -> dict[str, Any] | None:
    """Rebuild the outputs (the plots only with ``plots``) from the results under ``out``; None while the start
    has not been evaluated."""
    start, grid, runs, other = collect(Path(out))
    if start is None:
        return None
    sweep = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").is_file() else {}
    runs["_chosen"] = {loss: entry["chosen_lr"] for loss, entry in sweep.items()}
    sets = start["sets"]
    summary: dict[str, Any] = {
        "pairs_per_run": getattr(args, "pairs", None) or _first(runs, "pairs"),
        "steps_per_run": getattr(args, "steps", None) or _first(runs, "steps"),
        "heldout_prompts": len(sets["own"]["ids"]) if "own" in sets else 0,
        "ifeval_prompts": len(sets["ifeval"]["ids"]) if "ifeval" in sets else 0,
        "ifbench_prompts": len(sets["ifbench"]["ids"]) if "ifbench" in sets else 0,
        "eval_settings": start["settings"], "start": start_metrics(start),
        "commits": sorted({r["commit"] for r in [*runs.values(), start] if isinstance(r, dict) and "commit" in r}),
        "cost": cost(start, grid, runs),
    }
    for loss in LOSSES:
        entry = loss_summary(grid.get(loss, {}), start)
        for key in CONTRACT:
            entry.setdefault(key, None)
        for conditioning in CONDITIONINGS:
            entry.setdefault(conditioning, {})
            for key in PER_CONDITIONING:
                entry[conditioning].setdefault(key, None)
        entry["lr"] = sweep.get(loss, {}).get("chosen_lr")
        entry["lr_bracketed"] = sweep.get(loss, {}).get("bracketed")
        entry["transfer"] = transfer_curves(runs, loss)
        entry["transfer_final_gap"] = final_gap(entry["transfer"])
        entry["sensitivity"] = sensitivity(grid.get(loss, {}), other.get(loss, {}), start, entry["lr"])
        summary[loss] = entry
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_markdown(summary, out / "summary.md")
    if plots:
        write_plots(summary, out)
    return summary


def sensitivity(chosen: dict[str, dict[int, Any]], other: dict[float, dict[str, dict[int, Any]]],
                start: dict[str, Any], lr: float | None) -> list[dict[str, Any]]:
    """The head-to-head at the chosen rate and at each other rate it was measured at (``--sensitivity``), each over
    the seeds that rate has both models of (the chosen rate: every seed of the main table)."""
    rows = []
    for rate, evals in sorted({**({lr: chosen} if other else {}), **other}.items()):
        seeds = sorted(set(evals.get("standard", {})) & set(evals.get("inspo", {})))
        if not seeds:
            continue
        entry = loss_summary({cond: {s: evals[cond][s] for s in seeds} for cond in CONDITIONINGS}, start)
        per_seed = {k: entry.get(k) for k in ("head_to_head_per_seed", "gold_reward_diff_per_seed", "length")}
        rows.append({"lr": rate, "chosen": rate == lr, **{k: entry.get(k) for k in CONTRACT}, **per_seed,
                     **{f"{cond}_{k}": entry[cond].get(k) for cond in CONDITIONINGS
                        for k in ("mean_reward", "truncated")}})
    return rows


def cost(start: dict[str, Any], grid: dict[str, Any], runs: dict[str, Any]) -> dict[str, Any]:
    """Mean training seconds per conditioning and evaluation CPU seconds per prompt and set (wall time on a shared
    machine says little; CPU seconds at one thread are what a run costs)."""
    models = [start, *(m for conds in grid.values() for seeds in conds.values() for m in seeds.values())]
    per_set: dict[str, list[float]] = {}
    for model in models:
        for name, sec in model.get("seconds", {}).items():
            if "generate_cpu" in sec and model["sets"].get(name, {}).get("ids"):
                per_set.setdefault(name, []).append(sec["generate_cpu"] / len(model["sets"][name]["ids"]))
    train: dict[str, list[float]] = {}
    for record in runs.values():
        if isinstance(record, dict) and record.get("train_seconds") is not None:  # None: partly unmeasured
            train.setdefault(record["conditioning"], []).append(record["train_seconds"])
    return {"eval_cpu_seconds_per_prompt": {k: sum(v) / len(v) for k, v in per_set.items()},
            "eval_wall_seconds_per_model": (sum(m.get("eval_seconds", 0.0) for m in models) / len(models)),
            "train_wall_seconds": {k: sum(v) / len(v) for k, v in train.items()}}


def _first(runs: dict[str, Any], key: str) -> Any:
    return next((r[key] for r in runs.values() if isinstance(r, dict) and key in r), None)


def _pm(value: float | None, se: float | None, scale: float = 100, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{scale * value:.{digits}f}" + ("" if se is None else f" ± {scale * se:.{digits}f}")


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def write_markdown(summary: dict[str, Any], path: Path) -> None:
    """``summary.md``: per loss and conditioning against the start, the head-to-head, and the transfer reading."""
    s = summary["start"]
    lines = ["# Does InSPO help? DPO family, standard vs InSPO, on the verifiable benchmark", "",
             (f"{summary['pairs_per_run']} training pairs per run ({summary['steps_per_run']} steps of 4); "
              f"evaluation: {summary['heldout_prompts']} held-out prompts of our families (gold reward), "
              f"{summary['ifeval_prompts']} IFEval-style prompts and {summary['ifbench_prompts']} IFBench prompts "
              f"(IFEval's and IFBench's own checkers), greedy, max_new_tokens "
              f"{summary['eval_settings'].get('max_new_tokens')}, {summary['eval_settings'].get('dtype')}. Rates in %, "
              "± one standard error over seeds and prompts (seed x prompt; with one seed, prompts only). Mean tokens "
              "and cut at max: the length of the answers to our prompts, and the share that reached max_new_tokens "
              "(judged as cut off; the gold reward docks a runaway answer)."), "",
             "## Against the untrained start", "",
             ("| loss | conditioning | lr | seeds | win rate | LC win rate | mean gold reward | IFEval prompt strict "
              "| IFEval instr. loose | IFBench prompt loose | mean tokens | cut at max |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             (f"| (start) | - | - | - | 50.0 | 50.0 | {_pm(s.get('mean_reward'), None, 1, 3)} | "
              f"{_pm(s.get('ifeval_prompt_strict'), None)} | {_pm(s.get('ifeval_instruction_loose'), None)} | "
              f"{_pm(s.get('ifbench_prompt_loose'), None)} | {_pm(s.get('mean_tokens'), None, 1)} | "
              f"{_pm(s.get('truncated'), None)} |")]
    for loss in LOSSES:
        for cond in CONDITIONINGS:
            m = summary[loss][cond]
            if not m.get("seeds"):
                continue
            lines.append(
                f"| {loss} | {cond} | {summary[loss]['lr']} | {m['seeds']} | {_pm(m.get('win_rate'), m.get('win_rate_se'))} "
                f"| {_pm(m.get('lc_win_rate'), m.get('lc_win_rate_se'))} | {_pm(m.get('mean_reward'), None, 1, 3)} | "
                f"{_pm(m.get('ifeval_prompt_strict'), m.get('ifeval_prompt_strict_se'))} | "
                f"{_pm(m.get('ifeval_instruction_loose'), None)} | "
                f"{_pm(m.get('ifbench_prompt_loose'), m.get('ifbench_prompt_loose_se'))} | "
                f"{_pm(m.get('mean_tokens'), None, 1)} | {_pm(m.get('truncated'), None)} |")
    lines += ["", "## InSPO vs standard, head to head (same seed, same pairs and order, same prompts)", "",
              ("Win rate of InSPO's answer over standard's by gold reward (ties half; 50 = no difference), mean "
               "gold-reward difference (points of reward x 100), and the IFEval / IFBench prompt-level differences; "
               "paired standard errors (seed x prompt). MDD: the smallest true difference this SE detects with "
               "80% power at 5%. Seeds for SE 1.5: how many seeds, at the seed scatter seen so far, would bring the "
               "win rate's / gold difference's SE to 1.5 points (issue 13's target; - with one seed)."), "",
              ("| loss | seeds | head-to-head win rate | beyond 2 SE | gold-reward diff | (unpaired SE) | beyond 2 SE | "
               "IFEval strict diff | IFBench loose diff | MDD (win rate) | seeds for SE 1.5 |"),
              "|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|"]
    for loss in LOSSES:
        e = summary[loss]
        if not e.get("seeds"):
            lines.append(f"| {loss} | 0 | not run yet | | | | | | | | |")
            continue
        ife, ifb = e.get("ifeval_prompt_strict_diff", {}), e.get("ifbench_prompt_loose_diff", {})
        lines.append(
            f"| {loss} | {e['seeds']} | {_pm(e['head_to_head_win_rate'], e['head_to_head_se'])} | "
            f"{'yes' if e.get('head_to_head_beyond_2se') else 'no'} | "
            f"{_pm(e['gold_reward_diff'], e['gold_reward_diff_se'], 100, 2)} | "
            f"{_pm(e.get('gold_reward_diff_independent_se'), None, 100, 2)} | "
            f"{'yes' if e.get('gold_reward_diff_beyond_2se') else 'no'} | {_pm(ife.get('mean'), ife.get('se'))} | "
            f"{_pm(ifb.get('mean'), ifb.get('se'))} | {_pm(e.get('head_to_head_mdd'), None)} | "
            f"{_count(e.get('head_to_head_seeds_for_target'))} / {_count(e.get('gold_reward_diff_seeds_for_target'))} |")
    rows = [(loss, row) for loss in LOSSES for row in summary[loss].get("sensitivity", [])]
    if rows:
        lines += ["", "## Sensitivity to the learning rate", "",
                  ("The sweep chose each rate by validation reward accuracy, whose standard error on the 116 validation "
                   "pairs (~4 points) exceeds the differences between rates; the first seeds are also trained at the "
                   "rate of lowest validation loss. Paired SEs over seeds and prompts (one seed: prompts only)."), "",
                  ("| loss | lr | chosen | seeds | head-to-head win rate | gold-reward diff | mean gold reward standard "
                   "/ InSPO | cut at max standard / InSPO | win rate per seed |"),
                  "|---|---:|---|---:|---:|---:|---:|---:|---|"]
        for loss, r in rows:
            lines.append(
                f"| {loss} | {r['lr']:g} | {'yes' if r['chosen'] else 'no'} | {r['seeds']} | "
                f"{_pm(r['head_to_head_win_rate'], r['head_to_head_se'])} | "
                f"{_pm(r['gold_reward_diff'], r['gold_reward_diff_se'], 100, 2)} | "
                f"{_pm(r['standard_mean_reward'], None, 1, 3)} / {_pm(r['inspo_mean_reward'], None, 1, 3)} | "
                f"{_pm(r['standard_truncated'], None)} / {_pm(r['inspo_truncated'], None)} | "
                f"{', '.join(_pm(v, None) for v in r.get('head_to_head_per_seed') or [])} |")
    lines += length_section(summary)
    lines += ["", "## Does conditioning transfer?", "", "![transfer](transfer.png)", "",
              ("Per InSPO run: the conditioned validation reward accuracy (log pi(y|x, y_alt), what InSPO trains) and "
               "the unconditioned one (log pi(y|x), what is deployed), from step 0 to the end, next to the standard "
               "run of the same seed."), ""]
    lines += transfer_reading(summary)
    lines += ["", "![head to head](head_to_head.png)", "", "![against the start](vs_start.png)", "",
              f"Code commits behind these results: {', '.join(summary['commits'])}."]
    path.write_text("\n".join(lines) + "\n")


def length_section(summary: dict[str, Any]) -> list[str]:
    """The exploratory length table (``inspo.eval.evidence.length_reading``) per loss and rate with 2+ seeds."""
    rows = []
    for loss in LOSSES:
        entries = summary[loss].get("sensitivity") or [{"lr": summary[loss].get("lr"), **summary[loss]}]
        rows += [(loss, e["lr"], e["length"]) for e in entries if e.get("length") and e.get("seeds", 0) > 1]
    if not rows:
        return []
    lines = ["", "## Answers cut at the length cap (exploratory)", "",
             ("Per seed, InSPO's share of answers cut at max_new_tokens minus standard's, and the head-to-head on the "
              "prompts where neither answer was cut (a subset chosen after the fact: whether the gap survives among "
              "finished answers, not what stopping causes); r: correlation over seeds of the cut-rate difference "
              "with the whole head-to-head."), "",
             "| loss | lr | cut-rate diff per seed | finished head-to-head per seed (prompts) | pooled ± SE over seeds | r |",
             "|---|---:|---|---|---:|---:|"]
    for loss, lr, x in rows:
        per_seed = ", ".join(f"{_pm(v, None)} ({n})" if v is not None else f"- ({n})"
                             for v, n in zip(x["finished_head_to_head_per_seed"], x["finished_prompts_per_seed"]))
        r = x.get("cut_diff_vs_head_to_head_r")
        lines.append(f"| {loss} | {lr:g} | {', '.join(_pm(v, None) for v in x['cut_rate_diff_per_seed'])} | {per_seed} "
                     f"| {_pm(x['finished_head_to_head'], x['finished_head_to_head_se'])} | "
                     f"{'-' if r is None else f'{r:.2f}'} |")
    return lines


def transfer_reading(summary: dict[str, Any]) -> list[str]:
    """One line per InSPO run: how much the conditioned and the plain accuracy moved from step 0 to the end."""
    lines, tied_start, noisy_plain = [], False, False
    for loss in LOSSES:
        for seed, curves in sorted(summary[loss]["transfer"].items()):
            if "inspo" not in curves:
                continue
            cond, plain, std = curves["inspo"], curves.get("inspo_plain"), curves.get("standard")
            text = f"- {loss} seed {seed}: conditioned {100 * cond[0][1]:.1f} -> {100 * cond[-1][1]:.1f}"
            if plain:
                text += f"; unconditioned {100 * plain[0][1]:.1f} -> {100 * plain[-1][1]:.1f}"
                rise_c, rise_p = cond[-1][1] - cond[0][1], plain[-1][1] - plain[0][1]
                if rise_c > 0.05 and rise_p <= 0.0:
                    text += " (the conditioned accuracy rises while the unconditioned one does not)"
            else:
                text += "; no unconditioned metric logged"
            if std:
                text += f"; standard {100 * std[0][1]:.1f} -> {100 * std[-1][1]:.1f}"
            lines.append(text)
            if std and std[0][1] == 0.0:
                tied_start, noisy_plain = True, noisy_plain or bool(plain) and plain[0][1] > 0.0
    for loss in LOSSES:
        if gap := summary[loss].get("transfer_final_gap"):
            lines.append(f"- {loss}: final unconditioned accuracy minus standard's, paired over {gap['n']} seed(s): "
                         f"{_pm(gap['mean'], gap['se'] if gap['n'] > 1 else None)} points (per seed: "
                         f"{', '.join(f'{100 * d:+.1f}' for d in gap['per_seed'])}).")
    if tied_start:
        lines.append("- A standard run's step-0 accuracy of 0.0 is a tie, not an error: the untrained policy is the "
                     "reference, every reward margin is exactly 0, and a margin of 0 counts as not correct (as in "
                     "TRL's rewards/accuracies)."
                     + (" The unconditioned accuracy of the same untrained weights is not 0 but rounding noise: "
                        "log pi(y|x) is computed there in another forward than the cached reference's, so each margin "
                        "is a few float roundings (mean rewards ~1e-7) and they split about evenly; it says nothing "
                        "either, and both curves' first informative point is the next validation." if noisy_plain
                        else ""))
    return lines or ["No InSPO run has finished yet."]


def final_gap(transfer: dict[str, dict[str, list[list[float]]]]) -> dict[str, Any] | None:
    """The last unconditioned accuracy of each InSPO run minus its seed's standard run's, paired over seeds (how much
    of the preference InSPO learned in the deployed form): mean, paired SE, n and per seed; None with no such pair."""
    ends = [(c["inspo_plain"][-1][1], c["standard"][-1][1])
            for _, c in sorted(transfer.items(), key=lambda item: int(item[0])) if "inspo_plain" in c and "standard" in c]
    if not ends:
        return None
    return paired_difference(*zip(*ends)).to_dict() | {"per_seed": [a - b for a, b in ends]}


def write_plots(summary: dict[str, Any], out: Path) -> None:
    """``head_to_head.png``, ``vs_start.png`` and ``transfer.png``."""
    losses = [loss for loss in LOSSES if summary[loss].get("seeds")]
    fig = Figure(figsize=(8, 3.4))
    left, right = fig.subplots(1, 2)
    for ax, key, scale, title in ((left, "head_to_head_win_rate", 100, "head-to-head win rate - 50 (points)"),
                                  (right, "gold_reward_diff", 100, "gold-reward difference (x100)")):
        values = [scale * (summary[loss][key] - (0.5 if "win" in key else 0.0)) for loss in losses]
        errors = [2 * scale * summary[loss][key.replace("win_rate", "se") if "win" in key else f"{key}_se"]
                  for loss in losses]
        ax.bar(range(len(losses)), values, yerr=errors, capsize=4, color="tab:red")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(losses)), losses)
        ax.set_title(f"InSPO - standard: {title}", fontsize=8)
    fig.suptitle("InSPO vs standard, paired (± 2 SE)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "head_to_head.png", dpi=110)

    fig = Figure(figsize=(8, 3.4))
    ax = fig.subplots()
    for offset, cond, color in ((-0.18, "standard", "tab:gray"), (0.18, "inspo", "tab:red")):
        rows = [summary[loss][cond] for loss in losses]
        ax.bar([i + offset for i in range(len(rows))], [100 * (r.get("win_rate") or 0) for r in rows], width=0.36,
               yerr=[100 * (r.get("win_rate_se") or 0) for r in rows], capsize=3, color=color, label=cond)
    ax.axhline(50, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(losses)), losses)
    ax.set_ylabel("win rate vs start (%)")
    ax.set_title("Gold-reward win rate against the untrained start (± 1 SE)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "vs_start.png", dpi=110)

    panels = [loss for loss in LOSSES if summary[loss]["transfer"]]
    fig = Figure(figsize=(3.2 * max(len(panels), 1), 3.2))
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    styles = {"standard": ("tab:gray", "-", "standard"), "inspo": ("tab:red", "-", "InSPO conditioned"),
              "inspo_plain": ("tab:red", "--", "InSPO unconditioned")}
    for ax, loss in zip(axes, panels):
        for seed, curves in sorted(summary[loss]["transfer"].items()):
            for label, points in curves.items():
                color, style, text = styles[label]
                ax.plot([p[0] for p in points], [100 * p[1] for p in points], style, color=color, marker=".",
                        alpha=0.8, label=text if seed == min(summary[loss]["transfer"]) else None)
        ax.set_title(loss, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("val reward accuracy (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "transfer.png", dpi=110)

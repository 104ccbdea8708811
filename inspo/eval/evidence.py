"""From per-prompt suite scores (``inspo.eval.suite``) to the evidence summary: each model against the untrained
start, and per loss InSPO against standard, head to head, over seeds.

Per loss and seed s, InSPO and standard were trained on the same pairs in the same order and judged on the same
prompts, so every comparison is paired by prompt:

- head-to-head win rate: h[s, i] = 1 / 1/2 / 0 as InSPO's gold reward on prompt i beats / ties / loses to
  standard's (``inspo.eval.stats.head_to_head``);
- gold-reward difference: r_inspo[s, i] - r_standard[s, i];
- IFEval / IFBench differences: per-prompt indicators (all instructions followed) of the two models;
- exploratory, on answers cut at ``max_new_tokens`` (``length``): per seed, InSPO's cut rate minus standard's, and
  the head-to-head on the prompts where neither answer was cut (a subset chosen after the fact: it shows whether
  the gap survives among finished answers, not a causal effect of stopping).

Each is a seed x prompt table whose grand mean and standard error (seed and prompt variance combined) come from
``inspo.eval.stats.crossed_mean``. Against the untrained start: the win rate and the length-controlled win rate
(``inspo.eval.winrate``), per seed, then averaged.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from inspo.eval.stats import crossed_mean, head_to_head, minimum_detectable_difference, seeds_for_se
from inspo.eval.winrate import compare

CONDITIONINGS = ("standard", "inspo")
SE_TARGET = 0.015
"""Issue 13's target for the head-to-head and gold-reward SEs of DPO and SimPO (1.5 points); the summary says how many
seeds would reach it (``*_seeds_for_target``)."""


def prompt_indicator(scores: Mapping[str, Any], mode: str) -> list[float]:
    """1.0 for each prompt whose instructions were all followed (``mode``: strict or loose), else 0.0."""
    return [float(all(v)) for v in scores[mode]]


def external_metrics(scores: Mapping[str, Any]) -> dict[str, float]:
    """IFEval's four accuracies from one set's per-prompt verdicts."""
    out = {}
    for mode in ("strict", "loose"):
        verdicts = scores[mode]
        out[f"prompt_{mode}"] = statistics.fmean(float(all(v)) for v in verdicts)
        out[f"instruction_{mode}"] = sum(sum(v) for v in verdicts) / max(sum(len(v) for v in verdicts), 1)
    return out


def _check_same_prompts(a: Mapping[str, Any], b: Mapping[str, Any], what: str) -> None:
    if a["settings"] != b["settings"] or a.get("prompts_sha") != b.get("prompts_sha"):
        raise ValueError(f"{what}: evaluated with different settings or prompts; results are not comparable")


def model_vs_start(model: Mapping[str, Any], start: Mapping[str, Any]) -> dict[str, Any]:
    """One model against the untrained start: win rates on our prompts, mean reward, external accuracies."""
    _check_same_prompts(model, start, model["model"])
    out: dict[str, Any] = {}
    own, base = model["sets"].get("own"), start["sets"].get("own")
    if own:
        win = compare(own["reward"], base["reward"], own["tokens"], base["tokens"])
        out.update(win_rate=win.win_rate, win_rate_se=win.win_rate_se, lc_win_rate=win.lc_win_rate,
                   lc_win_rate_se=win.lc_win_rate_se, **_own_metrics(own))
    for name in ("ifeval", "ifbench"):
        if name in model["sets"]:
            out.update({f"{name}_{k}": v for k, v in external_metrics(model["sets"][name]).items()})
    return out


def _own_metrics(own: Mapping[str, Any]) -> dict[str, float]:
    """Mean gold reward and answer length on our prompts, and the share of answers cut at ``max_new_tokens``."""
    out = {"mean_reward": statistics.fmean(own["reward"]), "mean_tokens": statistics.fmean(own["tokens"])}
    if "truncated" in own:
        out["truncated"] = statistics.fmean(float(t) for t in own["truncated"])
    return out


def start_metrics(start: Mapping[str, Any]) -> dict[str, Any]:
    """The untrained start's own metrics (mean reward and length, external accuracies)."""
    out: dict[str, Any] = {}
    if "own" in start["sets"]:
        out.update(_own_metrics(start["sets"]["own"]))
    for name in ("ifeval", "ifbench"):
        if name in start["sets"]:
            out.update({f"{name}_{k}": v for k, v in external_metrics(start["sets"][name]).items()})
    return out


def _mean_over_seeds(per_seed: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [row[key] for row in per_seed if key in row]
    return statistics.fmean(values) if values else None


def conditioning_summary(models: Mapping[int, Mapping[str, Any]], start: Mapping[str, Any]) -> dict[str, Any]:
    """One loss x conditioning over its seeds: means of the per-seed metrics and seed x prompt SEs."""
    seeds = sorted(models)
    per_seed = [model_vs_start(models[s], start) for s in seeds]
    keys = sorted({k for row in per_seed for k in row if not k.endswith("_se")})
    out: dict[str, Any] = {"seeds": len(seeds), **{k: _mean_over_seeds(per_seed, k) for k in keys}}
    if "own" in start["sets"]:
        base = start["sets"]["own"]["reward"]
        table = [head_to_head(models[s]["sets"]["own"]["reward"], base) for s in seeds]
        out["win_rate_se"] = crossed_mean(table).se
        # Conservative: the per-seed (prompt) variance as if fully shared between seeds, plus the seed scatter.
        lcs, lc_ses = [row["lc_win_rate"] for row in per_seed], [row["lc_win_rate_se"] for row in per_seed]
        seed_var = statistics.variance(lcs) / len(lcs) if len(lcs) > 1 else 0.0
        out["lc_win_rate_se"] = float(np.sqrt(statistics.fmean(se**2 for se in lc_ses) + seed_var))
    for name, mode in (("ifeval", "strict"), ("ifeval", "loose"), ("ifbench", "strict"), ("ifbench", "loose")):
        if name in start["sets"]:
            table = [prompt_indicator(models[s]["sets"][name], mode) for s in seeds]
            out[f"{name}_prompt_{mode}_se"] = crossed_mean(table).se
    out["per_seed"] = {str(s): row for s, row in zip(seeds, per_seed)}
    return out


def _difference(table_a: list[list[float]], table_b: list[list[float]]) -> dict[str, Any]:
    result = crossed_mean(np.asarray(table_a) - np.asarray(table_b))
    independent = float(np.hypot(crossed_mean(table_a).se, crossed_mean(table_b).se))
    return {"mean": result.mean, "se": result.se, "independent_se": independent, "per_seed": result.per_seed,
            "beyond_2se": bool(abs(result.mean) > 2 * result.se), "seeds_for_target": seeds_for_se(result, SE_TARGET)}


def length_reading(inspo: Sequence[Mapping[str, Any]], standard: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per seed (InSPO and standard models of the same seeds, in order): the cut-rate difference, the head-to-head
    on the prompts where neither answer was cut and how many those are; that head-to-head pooled over all seeds'
    finished prompts with its SE over seeds, and the correlation over seeds of the cut-rate difference with the
    whole head-to-head."""
    cut_diff, finished, counts, h2h = [], [], [], []
    for a, b in zip(inspo, standard):
        cut_a, cut_b = (np.asarray(m["sets"]["own"]["truncated"], dtype=bool) for m in (a, b))
        h = head_to_head(a["sets"]["own"]["reward"], b["sets"]["own"]["reward"])
        both = ~cut_a & ~cut_b
        cut_diff.append(float(cut_a.mean() - cut_b.mean()))
        h2h.append(float(np.mean(h)))
        counts.append(int(both.sum()))
        finished.append(float(np.mean(h[both])) if both.any() else None)
    n = np.asarray(counts, dtype=float)
    h = np.asarray([0.0 if v is None else v for v in finished])
    pooled = float((n * h).sum() / n.sum()) if n.sum() else None
    se = None  # over seeds (clusters of prompts): the ratio estimator's cluster-robust SE
    if pooled is not None and (n > 0).sum() > 1:
        k = int((n > 0).sum())
        se = float(np.sqrt(k / (k - 1) * ((n * (h - pooled)) ** 2).sum()) / n.sum())
    return {"cut_rate_diff_per_seed": cut_diff, "finished_head_to_head_per_seed": finished,
            "finished_prompts_per_seed": counts, "finished_head_to_head": pooled, "finished_head_to_head_se": se,
            "cut_diff_vs_head_to_head_r": _correlation(cut_diff, h2h)}


def _correlation(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r over 3 or more points, or None (fewer, or one side constant)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def loss_summary(evals: Mapping[str, Mapping[int, Mapping[str, Any]]], start: Mapping[str, Any]) -> dict[str, Any]:
    """Per loss: head-to-head (InSPO vs standard, same seed) and per-conditioning metrics.

    Args:
        evals: ``{conditioning: {seed: suite result}}``.
        start: the untrained start's suite result.
    """
    out: dict[str, Any] = {cond: conditioning_summary(evals[cond], start) for cond in CONDITIONINGS
                           if evals.get(cond)}
    for cond in CONDITIONINGS:  # the flat keys of the summary's contract
        if cond in out:
            for key in ("ifeval_prompt_strict", "ifbench_prompt_loose"):
                out[cond].setdefault(key, None)
    seeds = sorted(set(evals.get("standard", {})) & set(evals.get("inspo", {})))
    out["seeds"] = len(seeds)
    if not seeds:
        return out
    inspo = [evals["inspo"][s] for s in seeds]
    standard = [evals["standard"][s] for s in seeds]
    for a, b in zip(inspo, standard):
        _check_same_prompts(a, b, f"{a['model']} vs {b['model']}")
    if "own" in start["sets"]:
        h2h = crossed_mean([head_to_head(a["sets"]["own"]["reward"], b["sets"]["own"]["reward"])
                            for a, b in zip(inspo, standard)])
        out.update(head_to_head_win_rate=h2h.mean, head_to_head_se=h2h.se, head_to_head_prompt_se=h2h.prompt_se,
                   head_to_head_seed_se=h2h.seed_se, head_to_head_per_seed=h2h.per_seed,
                   head_to_head_beyond_2se=bool(abs(h2h.mean - 0.5) > 2 * h2h.se),
                   head_to_head_mdd=minimum_detectable_difference(h2h.se),
                   head_to_head_seeds_for_target=seeds_for_se(h2h, SE_TARGET))
        diff = _difference([a["sets"]["own"]["reward"] for a in inspo], [b["sets"]["own"]["reward"] for b in standard])
        out.update(gold_reward_diff=diff["mean"], gold_reward_diff_se=diff["se"],
                   gold_reward_diff_independent_se=diff["independent_se"], gold_reward_diff_per_seed=diff["per_seed"],
                   gold_reward_diff_beyond_2se=diff["beyond_2se"],
                   gold_reward_diff_mdd=minimum_detectable_difference(diff["se"]),
                   gold_reward_diff_seeds_for_target=diff["seeds_for_target"])
        if all("truncated" in m["sets"]["own"] for m in (*inspo, *standard)):
            out["length"] = length_reading(inspo, standard)
        base = start["sets"]["own"]["reward"]  # the same baseline answers for both: paired by prompt
        out["win_rate_vs_start_diff"] = _difference(
            [head_to_head(a["sets"]["own"]["reward"], base) for a in inspo],
            [head_to_head(b["sets"]["own"]["reward"], base) for b in standard])
    for name, mode in (("ifeval", "strict"), ("ifbench", "loose")):
        if name in start["sets"]:
            out[f"{name}_prompt_{mode}_diff"] = _difference(
                [prompt_indicator(a["sets"][name], mode) for a in inspo],
                [prompt_indicator(b["sets"][name], mode) for b in standard])
    return out

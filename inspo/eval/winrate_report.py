"""The outputs of ``inspo eval`` a person reads: a markdown table and two PNG plots.

- ``winrate.md``: one row per model (win rate and LC win rate with standard errors, wins/ties/losses, mean gold
  reward, mean and median length), the baseline's reward and lengths, and the per-family breakdown.
- ``winrate.png``: win rate and LC win rate per model with +-1 standard-error bars and the 50% line.
- ``reward_vs_length.png``: gold reward against response length, one colour per model (jittered points and the
  mean reward per length bin), to show whether a model wins by writing longer or shorter answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

COLORS = ("tab:gray", "tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink")


def _pct(value: float, se: float | None = None) -> str:
    return f"{100 * value:.1f}" if se is None else f"{100 * value:.1f} ± {100 * se:.1f}"


def write_markdown(result: dict[str, Any], path: Path) -> None:
    """Write the summary table of ``winrate.json``'s content to ``path``."""
    base = result["baseline"]
    lines = [
        f"# Gold-reward win rate against `{result['baseline_model']}`",
        "",
        (f"{result['n_prompts']} prompts from `{result['prompts']}`; decoding: max_new_tokens "
         f"{result['decoding']['max_new_tokens']}, temperature {result['decoding']['temperature']} "
         "(0 = greedy). Win rate counts ties as half; the LC win rate is the logistic-model win probability at "
         "zero length difference. Rates in %, ± one standard error."),
        "",
        ("| model | win rate | LC win rate | W / T / L | mean gold reward | all satisfied | mean tokens | "
         "median tokens |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        (f"| baseline | 50.0 | 50.0 | - | {base['mean_reward']:.3f} | {_pct(base['all_satisfied_fraction'])} | "
         f"{base['mean_tokens']:.1f} | {base['median_tokens']:.1f} |"),
    ]
    for name, m in result["models"].items():
        lines.append(f"| {name} | {_pct(m['win_rate'], m['win_rate_se'])} | "
                     f"{_pct(m['lc_win_rate'], m['lc_win_rate_se'])} | {m['wins']} / {m['ties']} / {m['losses']} | "
                     f"{m['mean_reward']:.3f} | {_pct(m['all_satisfied_fraction'])} | {m['mean_tokens']:.1f} | "
                     f"{m['median_tokens']:.1f} |")
    families = sorted(base["satisfied_by_family"])
    names = list(result["models"])
    lines += ["", "## By constraint family", "",
              ("Share of answers that satisfy the family's constraint (%), and each model's win rate on the "
               "prompts that carry it."), "",
              "| family | n | baseline | " + " | ".join(f"{n} satisfied | {n} win rate" for n in names) + " |",
              "|---|---:|---:|" + "---:|---:|" * len(names)]
    for family in families:
        n = next((m["win_rate_by_family"][family]["n"] for m in result["models"].values()), "")
        cells = []
        for m in result["models"].values():
            win = m["win_rate_by_family"][family]
            cells += [_pct(m["satisfied_by_family"][family]), _pct(win["win_rate"], win["win_rate_se"])]
        lines.append(f"| {family} | {n} | {_pct(base['satisfied_by_family'][family])} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def write_plots(result: dict[str, Any], rows: dict[str, list[dict]], out: Path) -> None:
    """Write ``winrate.png`` and ``reward_vs_length.png`` to ``out``.

    Args:
        result: the content of ``winrate.json``.
        rows: scored generations per model name (the baseline included).
        out: the output folder.
    """
    _winrate_plot(result, out / "winrate.png")
    _reward_length_plot(rows, out / "reward_vs_length.png")


def _winrate_plot(result: dict[str, Any], path: Path) -> None:
    names = list(result["models"])
    models = [result["models"][n] for n in names]
    fig = Figure(figsize=(max(5.5, 1.4 * len(names) + 2), 3.8))
    ax = fig.subplots()
    x = np.arange(len(names))
    width = 0.38
    for offset, key, label in ((-width / 2, "win_rate", "win rate"), (width / 2, "lc_win_rate", "LC win rate")):
        ax.bar(x + offset, [100 * m[key] for m in models], width, yerr=[100 * m[f"{key}_se"] for m in models],
               capsize=4, label=label)
    ax.axhline(50, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(x, names, rotation=20 if len(names) > 3 else 0)
    ax.set_ylabel("% vs baseline (±1 s.e.)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Gold-reward win rate vs {Path(str(result['baseline_model'])).name}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _reward_length_plot(rows: dict[str, list[dict]], path: Path) -> None:
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    longest = max((r["tokens"] for model in rows.values() for r in model), default=1)
    edges = np.linspace(0, longest + 1, 9)
    for color, (name, model) in zip(COLORS * 4, rows.items()):
        tokens = np.array([r["tokens"] for r in model], dtype=float)
        rewards = np.array([r["reward"] for r in model], dtype=float)
        ax.scatter(tokens + rng.uniform(-0.4, 0.4, tokens.size), rewards + rng.uniform(-0.02, 0.02, rewards.size),
                   s=8, alpha=0.3, color=color)
        bins = np.digitize(tokens, edges)
        centers = [tokens[bins == b].mean() for b in np.unique(bins)]
        means = [rewards[bins == b].mean() for b in np.unique(bins)]
        ax.plot(centers, means, marker="o", color=color, label=f"{name} (mean {rewards.mean():.2f})")
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("gold reward")
    ax.set_title("Gold reward vs response length (points: answers; lines: bin means)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)

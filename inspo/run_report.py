"""``inspo report RUN_DIR``: PNG plots and a markdown summary of a training run.

Reads what a run of ``inspo fit`` leaves in its folder (the CSV logger's version folder, e.g.
``runs/quickstart/inspo/version_0``): ``metrics.csv`` (per-step and per-validation metrics), ``samples.jsonl``
(sample generations), ``run_stats.json`` (data counts, throughput, memory), ``config.yaml`` and
``hf_model/inspo_export.json``. Writes ``RUN_DIR/report/``: one PNG per plot and ``report.md`` that shows them.

Per-step training values are noisy (reward accuracy of a 4-pair batch is 0, .25, .5, .75 or 1), so each plot
draws the raw values faintly and a running mean over ~1/8 of the steps on top; validation values are markers
(the one at step 0, before any update, when the run validated first: see ``inspo.callbacks.TrainingMonitor``).
Under InSPO validation has two views, conditioned (x, y_alt) and plain (x) (``val/plain_*``): both are drawn.
Steps are 1-based optimizer steps everywhere: the training loss at step k is the k-th update's batch, validation
and samples at step k come after k updates (Lightning's ``metrics.csv`` counts from 0; we add 1).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from inspo.callbacks.progress import VIEWS
from inspo.errors import ConfigError
from inspo.preflight import check_output_folder
from inspo.run_folder import CONFIG, EXPORT_INFO, HF_MODEL, HPARAMS, METRICS, REPORT, REPORT_MD, RUN_STATS, SAMPLES

Series = dict[str, list[tuple[int, float]]]
PLOTS = {
    # file name: (title, y label, [(metric stem, label)])
    "loss": ("Loss", "loss", [("loss", "loss")]),
    "reward_accuracy": ("Reward accuracy (chosen reward > rejected reward)", "accuracy", [
        ("reward_accuracy", "accuracy")]),
    "reward_margin": ("Reward margin (chosen reward - rejected reward)", "margin", [("reward_margin", "margin")]),
    "logps": ("Policy log-probs (summed over the response)", "log-prob", [
        ("chosen_logp", "chosen"), ("rejected_logp", "rejected")]),
    "rewards": ("Implicit rewards", "reward", [("chosen_reward", "chosen"), ("rejected_reward", "rejected")]),
}
COLORS = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown")


def find_run(path: Path) -> Path:
    """``path`` if it holds ``metrics.csv``, else its newest ``version_N`` (or ``*/version_N``) that does."""
    if (path / METRICS).is_file():
        return path
    if not path.is_dir():
        raise ConfigError(f"run folder not found: {path}" if not path.exists() else
                          f"{path}: not a run folder (give the folder `inspo fit` wrote, e.g. runs/NAME/inspo)")
    candidates = [p.parent for p in [*path.glob(f"version_*/{METRICS}"), *path.glob(f"*/version_*/{METRICS}")]]
    if not candidates:
        raise ConfigError(f"{path}: no metrics.csv here or in a version_N folder below it (the report reads the CSV "
                          "logger's output: run `inspo fit` with the default CSV logger)")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def read_metrics(path: Path) -> Series:
    """``metrics.csv`` as {column: [(step, value), ...]} (empty cells skipped)."""
    series: Series = defaultdict(list)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0)) + 1  # 1-based, as in the progress bar and samples.jsonl
            for name, value in row.items():
                if name in ("step", "epoch") or value in ("", None):
                    continue
                series[name].append((step, float(value)))
    return dict(series)


def running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_metric(series: Series, stem: str, lines: list[tuple[str, str]], title: str, ylabel: str, out: Path) -> bool:
    """One PNG: training values per step (raw + running mean) and validation values; False if nothing to plot."""
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    drawn = False
    for color, (metric, label) in zip(COLORS, lines):
        train = series.get(f"train/{metric}_step", [])
        if train:
            steps, values = zip(*train)
            window = max(1, round(len(values) / 8))
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
            ax.plot(steps, running_mean(list(values), window), color=color, linewidth=2,
                    label=f"train {label} (mean of {window})" if window > 1 else f"train {label}")
            drawn = True
        views = [(view, series.get(f"{prefix}{metric}", [])) for view, prefix in VIEWS]
        views = [(view, val) for view, val in views if val]
        for (view, val), (marker, style) in zip(views, (("o", "--"), ("s", ":"))):
            steps, values = zip(*val)
            name = f"val {label}, {view}" if len(views) > 1 else f"val {label}"
            ax.plot(steps, values, color=color, marker=marker, linestyle=style, label=name)
            drawn = True
    if not drawn:
        return False
    ax.set(title=title, xlabel="optimizer step", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png")
    return True


def plot_sample_lengths(samples: list[dict[str, Any]], out: Path) -> bool:
    """Response length of every sample prompt over steps (solid), next to the reference's (dashed)."""
    if not samples:
        return False
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    prompts = list(dict.fromkeys(s["prompt"] for s in samples))
    for i, prompt in enumerate(prompts):
        color = COLORS[i % len(COLORS)]
        rows = sorted((s for s in samples if s["prompt"] == prompt), key=lambda s: s["step"])
        label = prompt if len(prompt) <= 40 else prompt[:37] + "..."
        ax.plot([r["step"] for r in rows], [r["policy_tokens"] for r in rows], color=color, marker="o",
                label=f"policy: {label}")
        if rows[-1].get("reference_tokens") is not None:  # generated once, at the start of training
            ax.axhline(rows[-1]["reference_tokens"], color=color, linestyle="--", alpha=0.7)
            ax.plot([0], [rows[-1]["reference_tokens"]], color=color, marker="x", markersize=9)
    ax.plot([], [], color="gray", linestyle="--", marker="x",
            label=f"{samples[-1].get('reference_source') or 'reference'} (step 0)")
    if samples[-1].get("max_new_tokens"):  # a line at the cap says why lengths are flat there
        ax.axhline(samples[-1]["max_new_tokens"], color="black", linestyle=":", linewidth=1, label="max_new_tokens")
    ax.set(title="Sample response length (greedy, tokens up to EOS)", xlabel="optimizer step", ylabel="tokens")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sample_lengths.png")
    return True


def plot_training_speed(series: Series, out: Path) -> bool:
    """Learning rate and tokens/s over steps, two panels."""
    lr, speed = series.get("train/lr", []), series.get("train/tokens_per_sec", [])
    if not lr and not speed:
        return False
    fig = Figure(figsize=(7, 5), dpi=110)
    for i, (values, name) in enumerate(((lr, "learning rate"), (speed, "pair tokens / s"))):
        ax = fig.add_subplot(2, 1, i + 1)
        if values:
            ax.plot(*zip(*values), color=COLORS[i])
        ax.set(ylabel=name, xlabel="optimizer step" if i else "")
        ax.grid(alpha=0.3)
    fig.suptitle("Learning rate and throughput")
    fig.tight_layout()
    fig.savefig(out / "lr_throughput.png")
    return True


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _last(series: Series, name: str, k: int = 1) -> float | None:
    values = [v for _, v in series.get(name, [])[-k:]]
    return sum(values) / len(values) if values else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def summary(run: Path, series: Series, samples: list[dict[str, Any]], plots: list[str]) -> str:
    """The markdown report: config, data counts, final metrics, throughput, last samples, plots."""
    stats = _read_json(run / RUN_STATS) or {}
    config_path = run / CONFIG if (run / CONFIG).is_file() else run / HPARAMS
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    model = (config or {}).get("model", config) or {}
    lines = [f"# inspo run report: `{run}`", "", "## Config", ""]
    for key in ("model", "loss", "conditioning", "reference", "layout", "lora", "dtype", "optim"):
        if key in model:
            lines.append(f"- **{key}**: `{json.dumps(model[key], default=str)}`")
    lines.append(f"\nFull config: `{config_path.name}` in the run folder.\n")
    lines += ["## Data", ""]
    data = stats.get("data") or {}
    lines += ["| " + " | ".join(data) + " |", "|" + "---|" * len(data), "| " + " | ".join(map(str, data.values()))
              + " |"] if data else ["(no run_stats.json: data counts unknown)"]
    views = [(view, prefix) for view, prefix in VIEWS if any(k.startswith(prefix) for k in series)] or [VIEWS[0]]
    heads = [f"last validation, {view}" if len(views) > 1 else "last validation" for view, _ in views]
    lines += ["", "## Final metrics", "", f"| metric | train (mean of last 10 steps) | {' | '.join(heads)} |",
              "|---|---|" + "---|" * len(views)]
    for metric in ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "chosen_logp",
                   "rejected_logp"):
        cells = " | ".join(_fmt(_last(series, f"{prefix}{metric}")) for _, prefix in views)
        lines.append(f"| {metric} | {_fmt(_last(series, f'train/{metric}_step', 10))} | {cells} |")
    if len(views) > 1:
        lines.append("\nUnder InSPO, validation is reported twice: conditioned on the alternative response, "
                     "log pi(y | x, y_alt) (what the loss trains), and plain, log pi(y | x) (what sampling uses).")
    train = stats.get("train") or {}
    memory = stats.get("memory") or {}
    params = (stats.get("parameters") or {}).get("policy_and_reference") or {}
    cuda = memory.get("cuda_peak_mib")
    steps = train.get("optimizer_steps", max((s for s, _ in series.get("train/loss_step", [])), default=None))
    lines += ["", "## Throughput", "",
              f"- optimizer steps: {_fmt(steps)}",
              (f"- pair tokens (|x|+|y_w|+|y_l|): {_fmt(train.get('pair_tokens'))} in {_fmt(train.get('seconds'))} "
               f"s of training steps: **{_fmt(train.get('pair_tokens_per_sec'))} tokens/s**"),
              (f"- parameters in memory (policy + reference, each storage once): {_fmt(params.get('total'))}, "
               f"trainable {_fmt(params.get('trainable'))}; reference mode `{stats.get('reference_mode')}`"),
              f"- peak RSS {_fmt(memory.get('peak_rss_mib'))} MiB; CUDA peak "
              + (f"{_fmt(cuda)} MiB" if cuda is not None else "n/a (no GPU)")]
    if samples:
        last_step = samples[-1]["step"]
        lines += ["", f"## Samples at step {last_step}", ""]
        from inspo.callbacks.samples import markdown_table

        lines.append(markdown_table([s for s in samples if s["step"] == last_step], width=200))
    export = _read_json(run / HF_MODEL / EXPORT_INFO)
    if export:
        commit = (export.get("git") or {}).get("commit")
        lines += ["", "## Export", "", f"`hf_model/` ({export.get('format')}), git commit `{commit}`"]
    lines += ["", "## Plots", ""] + [f"![{name}]({name}.png)" for name in plots]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the PNGs and ``report.md`` for a run folder; return the report folder."""
    run = find_run(Path(run_dir))
    series = read_metrics(run / METRICS)
    samples = _read_jsonl(run / SAMPLES)
    folder = Path(out) if out is not None else run / REPORT
    folder.mkdir(parents=True, exist_ok=True)
    plots = [stem for stem, (title, ylabel, lines) in PLOTS.items()
             if plot_metric(series, stem, lines, title, ylabel, folder)]
    plots += ["sample_lengths"] if plot_sample_lengths(samples, folder) else []
    plots += ["lr_throughput"] if plot_training_speed(series, folder) else []
    (folder / REPORT_MD).write_text(summary(run, series, samples, plots))
    return folder


def main(argv: list[str]) -> None:
    """``inspo report RUN_DIR [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="inspo report", description="PNG plots and a markdown summary of a run "
                                     "of `inspo fit` (reads the CSV logger's metrics.csv and the run's samples).")
    parser.add_argument("run_dir", help="the run folder (e.g. runs/quickstart/inspo/version_0) or a parent of it")
    parser.add_argument("--out", default=None, help="where to write (default: RUN_DIR/report)")
    args = parser.parse_args(argv)
    check_output_folder("--out", args.out)
    folder = write_report(args.run_dir, args.out)
    print(f"inspo: report written to {folder / REPORT_MD}")

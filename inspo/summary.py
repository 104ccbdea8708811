"""The verdict printed at the end of ``inspo fit``: what ran, how fast, how well, where it went, what to run next.

Example (configs/tiny.yaml)::

    inspo: fit done: 8 optimizer steps (30 pairs) in 5 s, 7.63 pairs/s, 682 pair tokens/s; peak memory 0.8 GiB (RSS, rank 0)
      train, mean of the last 8 steps:  loss 0.6733  acc 0.6562  margin 0.04507
      validation, conditioned (x, y_alt):  loss 0.6512  acc 0.6667  margin 0.09494
      validation, plain (x):  loss ...  acc ...  margin ...
      trained policy: runs/tiny/inspo/version_0/hf_model
      next: inspo report runs/tiny/inspo/version_0    (plots and report.md)
            inspo eval --model runs/tiny/inspo/version_0/hf_model --limit 50    (gold-reward win rate)

A resumed run says so: ``8 optimizer steps (resumed at step 3: 5 steps, 20 pairs)``, pairs and speed being this
run's. The two validation lines are InSPO's two views (see :data:`inspo.callbacks.VIEWS`); with standard conditioning
there is one line, ``validation``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer

from inspo.callbacks.monitor import TrainingMonitor
from inspo.callbacks.progress import VIEWS
from inspo.run_folder import HF_MODEL, REPORT_MD, run_dir

NAMES = (("loss", "loss"), ("reward_accuracy", "acc"), ("reward_margin", "margin"))


def _values(metrics: dict[str, float]) -> str:
    return "  ".join(f"{short} {metrics[name]:.4g}" for name, short in NAMES if name in metrics)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def _memory(stats: dict[str, Any]) -> str:
    memory = stats.get("memory") or {}
    if memory.get("cuda_peak_mib"):
        return f"peak GPU memory {memory['cuda_peak_mib'] / 1024:.1f} GiB (allocated, rank 0)"
    return f"peak memory {memory.get('peak_rss_mib', 0) / 1024:.1f} GiB (RSS, rank 0)"


def validation_views(callback_metrics: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """[(label, {loss, reward_accuracy, reward_margin})] of the last validation: one view, or InSPO's two."""
    views = []
    for label, prefix in VIEWS:
        values = {name: float(callback_metrics[prefix + name]) for name, _ in NAMES if prefix + name in callback_metrics}
        if values:
            views.append((label, values))
    if len(views) == 1:
        views = [("", views[0][1])]
    return views


def fit_summary(trainer: Trainer, module: LightningModule) -> str:
    """The end-of-fit summary (see the module docstring)."""
    monitor = next((c for c in trainer.callbacks if isinstance(c, TrainingMonitor)), None)
    stats = monitor.stats(trainer, module) if monitor is not None else {}
    train = stats.get("train") or {}
    start = getattr(monitor, "start_step", 0)
    this_run = f"resumed at step {start}: {trainer.global_step - start} steps, " if start else ""
    lines = [(f"inspo: fit done: {trainer.global_step} optimizer steps ({this_run}{train.get('pairs', '?')} pairs) in "
             f"{_duration(train.get('wall_seconds') or 0)}, {train.get('pairs_per_sec') or 0:.3g} pairs/s, "
             f"{train.get('pair_tokens_per_sec') or 0:.0f} pair tokens/s; {_memory(stats)}")]
    recent = {name: sum(v) / len(v) for name, v in (monitor.recent if monitor is not None else {}).items() if v}
    if recent:
        count = len(next(iter(monitor.recent.values())))
        lines.append(f"  train, mean of the last {count} steps:  {_values(recent)}")
    for label, values in validation_views(trainer.callback_metrics):
        lines.append(f"  validation{', ' + label if label else ''}:  {_values(values)}")
    folder = run_dir(trainer)
    export = _exported(trainer, module)
    if export is not None:
        lines.append(f"  trained policy: {export}")
    lines.append(f"  next: inspo report {folder}    (plots and {REPORT_MD})")
    if export is not None:
        lines.append(f"        inspo eval --model {export} --limit 50    (gold-reward win rate)")
    return "\n".join(lines)


def _exported(trainer: Trainer, module: LightningModule) -> Path | None:
    """The HF folder written at the end of fit, if any (not ``module.export_path()``: ``trainer.log_dir`` is a
    collective under DDP, and only rank 0 prints)."""
    export_dir = getattr(module, "hparams", {}).get("export_dir")
    if export_dir is None:
        return None
    path = run_dir(trainer) / HF_MODEL if export_dir == "auto" else Path(export_dir)
    return path if path.is_dir() else None


def model_line(trainer: Trainer, module: LightningModule) -> str:
    """``inspo: training MODEL with LOSS (CONDITIONING): N parameters (T trainable), reference MODE; P pairs, S
    optimizer steps`` (instead of Lightning's model summary table, whose FLOPs column is 0)."""
    from inspo.lora import count_parameters

    hp = getattr(module, "hparams", {})
    params = count_parameters(getattr(module, "policy", None) or module)
    data = dict(getattr(getattr(trainer, "datamodule", None), "stats", None) or {})
    loss = type(getattr(module, "loss", None)).__name__
    return (f"inspo: training {hp.get('model')} with {loss} ({hp.get('conditioning')} conditioning): "
            f"{params['total'] / 1e6:.1f}M parameters ({params['trainable'] / 1e6:.1f}M trainable), reference "
            f"{getattr(module, 'reference_mode', None)}; {data.get('train', '?')} training pairs, "
            f"{int(trainer.estimated_stepping_batches)} optimizer steps")

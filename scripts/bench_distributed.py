"""Step time and peak memory of 1 against 2 processes on this machine (CPU, gloo), same global batch, DDP and FSDP2.

Every run is ``inspo fit`` of ``configs/tiny.yaml``'s pipeline with a larger random-init Llama (``--width``,
``--layers``; SmolLM2's 49k vocabulary) and no validation, samples, checkpoints or export. A timing callback (this
file, loaded by class path) records the wall time of every optimizer step after ``--warmup`` steps and the peak
RSS of each process. The global batch is ``--global-batch`` pairs: 1 process x G pairs, 2 processes x G/2.
Pairs are truncated to ``--max-length`` tokens, so nearly every row has the same length and a batch of G pads no
more than two batches of G/2 (otherwise the larger batch also pays for more padding).
Threads: the 1-process run twice, with ``--threads`` and with 1 thread; the 2-process runs with ``--threads / 2``
(at least 1) per process, so they use the same cores as the first. Every configuration runs ``--repeats`` times,
interleaved, and reports the smallest median (the machine is shared: the other jobs only ever add time).
Prints one JSON object (``--out`` also writes it to a file).

    python scripts/bench_distributed.py --out scripts/results/distributed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parent.parent


class StepTimer(Callback):
    """Writes ``<folder>/timing-<rank>.json``: seconds of every optimizer step after ``warmup`` and the peak RSS."""

    def __init__(self, folder: str, warmup: int) -> None:
        self.folder, self.warmup = Path(folder), warmup
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.warmup:
            self.times.append(time.perf_counter() - self._t0)

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        record = {"rank": trainer.global_rank, "step_seconds": self.times, "peak_rss_mib": round(peak, 1)}
        (self.folder / f"timing-{trainer.global_rank}.json").write_text(json.dumps(record))


def run(name: str, args: argparse.Namespace, devices: int, strategy: str | None, work: Path,
        threads: int) -> dict[str, Any]:
    folder = work / name
    folder.mkdir(parents=True)
    timer = {"class_path": "bench_distributed.StepTimer", "init_args": {"folder": str(folder), "warmup": args.warmup}}
    extra = folder / "callbacks.yaml"
    extra.write_text(json.dumps({"trainer": {"callbacks": [timer]}}))
    model = {"num_hidden_layers": args.layers, "hidden_size": args.width, "intermediate_size": 3 * args.width,
             "num_attention_heads": max(1, args.width // 64), "num_key_value_heads": max(1, args.width // 128)}
    per_process = args.global_batch // devices
    command = [sys.executable, "-m", "inspo", "fit", "--config", str(ROOT / "configs" / "tiny.yaml"),
               "--config", str(extra), "--trainer.devices", str(devices),
               "--trainer.max_steps", str(args.steps + args.warmup), "--trainer.max_epochs", "1000",
               "--trainer.limit_train_batches", "1.0",
               "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false",
               "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
               "--trainer.default_root_dir", str(folder), "--samples.every_n_steps", "0",
               "--model.export_dir", "null", "--model.random_init", json.dumps(model),
               "--data.loader.batch_size", str(per_process), "--data.loader.bucket_batches", "1",
               "--data.read.max_pairs", "null", "--data.read.max_length", str(args.max_length),
               "--data.read.max_prompt_length", str(args.max_length // 2)]
    if strategy is not None:
        command += ["--config", str(ROOT / "configs" / "strategy" / f"{strategy}.yaml")]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'scripts'}", "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(folder.glob("timing-*.json"))]
    steps = [max(values) for values in zip(*(r["step_seconds"] for r in ranks))]  # a step ends on its slowest rank
    return {"processes": devices, "strategy": strategy or "single", "threads_per_process": threads,
            "pairs_per_process": per_process, "global_batch": per_process * devices,
            "timed_steps": len(steps), "step_seconds_median": round(statistics.median(steps), 4),
            "step_seconds_mean": round(statistics.fmean(steps), 4),
            "peak_rss_mib_per_process": [r["peak_rss_mib"] for r in ranks],
            "wall_seconds_total": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=256, help="hidden size of the random-init Llama")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=8, help="pairs per optimizer step over all processes")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads in all")
    parser.add_argument("--max-length", type=int, default=96, help="token budget of a pair (prompt + both answers)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of every configuration (the fastest counts)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        configs = [("single", 1, None, args.threads), ("single_1thread", 1, None, 1),
                   ("ddp", 2, "ddp", max(1, args.threads // 2)), ("fsdp2", 2, "fsdp2", max(1, args.threads // 2))]
        tries: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in configs}
        for repeat in range(args.repeats):
            for name, devices, strategy, threads in configs:
                tries[name].append(run(f"{name}-{repeat}", args, devices, strategy, work, threads))
    runs = []
    for name, options in tries.items():
        best = dict(min(options, key=lambda r: r["step_seconds_median"]))
        best["name"] = name
        best["step_seconds_median_every_repeat"] = [r["step_seconds_median"] for r in options]
        runs.append(best)
    base, base_1thread = runs[0]["step_seconds_median"], runs[1]["step_seconds_median"]
    for one in runs:
        one["speedup_vs_single"] = round(base / one["step_seconds_median"], 3)
        one["speedup_vs_single_1thread"] = round(base_1thread / one["step_seconds_median"], 3)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_average_before": [round(x, 2) for x in load],
                          "load_average_after": [round(x, 2) for x in os.getloadavg()]},
              "model": {"layers": args.layers, "width": args.width, "vocab": 49152, "max_length": args.max_length},
              "note": "gloo backend; load_average_before/after show whether other jobs shared the CPU; medians of "
                      "per-step wall time, a step timed on its slowest rank",
              "runs": runs}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

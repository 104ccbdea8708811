"""Peak memory of a LoRA run (reference = adapters off) vs a full fine-tune with a copied reference.

Runs a few training steps of ``configs/quickstart.yaml`` (SmolLM2-135M-Instruct, CPU by default) once per setting,
each in a fresh process under ``/usr/bin/time -v``, and prints one JSON object: peak RSS (whole process, from
``time``), wall time, and the parameter counts the run itself recorded in ``run_stats.json``.

    python scripts/measure_memory.py --steps 4 > memory.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from inspo.run_folder import RUN_STATS

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "full_copy_reference": ["--model.reference", "copy"],
    "lora_adapter_reference": ["--model.lora.rank", "16", "--model.lora.alpha", "32", "--model.reference", "adapter",
                               "--model.optim.lr", "1e-4"],
}


def run(name: str, extra: list[str], steps: int, batch_size: int, workdir: Path) -> dict:
    """One ``inspo fit`` of ``steps`` optimizer steps; its peak RSS, wall time and run_stats.json."""
    out = workdir / name
    command = [
        "/usr/bin/time", "-v", sys.executable, "-m", "inspo", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_checkpointing", "false", "--data.loader.batch_size", str(batch_size),
        "--model.export_dir", "null",
        "--samples.every_n_steps", "0", "--progress_bar.plain", "true", *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", result.stderr).group(1)
    (stats_file,) = out.glob(f"inspo/version_*/{RUN_STATS}")
    stats = json.loads(stats_file.read_text())
    return {"peak_rss_mib": round(rss_kib / 1024, 1), "wall": wall, "reference_mode": stats["reference_mode"],
            "parameters": stats["parameters"], "train": stats["train"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per batch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        results = {name: run(name, extra, args.steps, args.batch_size, Path(workdir))
                   for name, extra in SETTINGS.items()}
    full, lora = results["full_copy_reference"], results["lora_adapter_reference"]
    results["lora_vs_full"] = {"peak_rss_saved_mib": round(full["peak_rss_mib"] - lora["peak_rss_mib"], 1),
                               "peak_rss_ratio": round(lora["peak_rss_mib"] / full["peak_rss_mib"], 3)}
    results["setup"] = {"model": "bundled:SmolLM2-135M-Instruct", "config": "configs/quickstart.yaml",
                        "steps": args.steps, "batch_size": args.batch_size, "device": "cpu (accelerator auto)"}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""scripts/bench_step.py must not rot: a tiny run of explicit groups, with FLOP counts, a selective and a plain (no lean layers) variant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("trl")


def test_bench_step_tiny_groups_flops_selective_and_plain() -> None:
    command = [sys.executable, str(ROOT / "scripts" / "bench_step.py"), "--json", "--model-size", "tiny", "--threads",
               "1", "--steps", "1", "--warmup", "1", "--prompt", "8", "--chosen", "8", "--rejected", "8", "--flops",
               "--groups", "inspo_packed_cached,trl_dpo,standard_packed_cached,standard_packed_cached_plain",
               "inspo_packed_live_selective,inspo_separate_cached"]
    proc = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    variants, ratios = result["variants"], result["ratios"]
    assert set(variants) == {"inspo_packed_cached", "trl_dpo", "standard_packed_cached", "standard_packed_cached_plain",
                             "inspo_packed_live_selective", "inspo_separate_cached"}
    assert {v["group"] for k, v in variants.items() if k not in ("inspo_packed_live_selective",
                                                                 "inspo_separate_cached")} == {0}
    for row in variants.values():
        assert row["seconds_per_pair"] > 0 and row["peak_memory_mib"] > 0 and row["flops_per_pair"] > 0
    flops = {k: v["flops_per_pair"] for k, v in variants.items()}
    # Same pairs: InSPO trains P+2W+2L tokens, standard P+W+L; the live variant adds the reference forward.
    assert flops["standard_packed_cached"] < flops["inspo_packed_cached"] < flops["inspo_packed_live_selective"]
    # TRL runs the full-vocabulary head on all 2P+W+L policy and reference tokens; ours on the 16 scored ones only.
    assert 0 < ratios["flops_inspo_packed_cached_over_trl_dpo"] < 1
    assert ratios["inspo_packed_cached_over_trl_dpo"] > 0 and ratios["standard_packed_cached_over_trl_dpo"] > 0
    assert ratios["peak_mem_inspo_packed_selective_over_trl_dpo"] > 0
    assert ratios["inspo_packed_over_inspo_separate"] is None  # not run: no ratio
    # Model tokens/s compares rates, so it needs no shared group (separate rows: 2(P+W+L) tokens, packed P+2W+2L).
    assert ratios["inspo_packed_cached_model_tokens_per_s_over_separate_cached"] > 0
    # Lean layers recompute element-wise work only: the same matrix and attention FLOPs as the model's own modules.
    assert flops["standard_packed_cached"] == flops["standard_packed_cached_plain"]
    assert ratios["standard_packed_cached_over_plain"] > 0 and ratios["peak_mem_standard_packed_cached_over_plain"] > 0

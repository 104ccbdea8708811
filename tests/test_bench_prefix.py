"""scripts/bench_prefix.py and scripts/profile_prefix.py (the README's scaling table and profiles) must not rot: tiny
runs of each, checked for the fields the README reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_bench_prefix_scaling_tiny() -> None:
    common = ("--scaling", "64", "--layers", "1", "--vocab", "256", "--cached", "--paths", "separate_sdpa",
              "packed_prefix", "--rounds", "1", "--warmup", "0")
    lean, plain = run("bench_prefix.py", *common), run("bench_prefix.py", *common, "--plain")
    assert lean["lean_layers"] == ["LlamaMLP", "LlamaRMSNorm"] and plain["lean_layers"] == []
    case = lean["cases"]["T64"]
    assert (case["P"], case["W"], case["L"]) == (32, 16, 16)
    # InSPO: separate rows hold 2(P+W+L) policy tokens, packed rows P+2W+2L; no reference forward (cached).
    assert case["inspo:separate_sdpa"]["policy_tokens"] == 128 and case["inspo:packed_prefix"]["policy_tokens"] == 96
    assert case["inspo:packed_prefix"]["reference_tokens"] == 0
    assert case["inspo:speedup_vs_separate"]["packed_prefix"] > 0


def test_profile_prefix_tiny() -> None:
    result = run("profile_prefix.py", "--tokens", "48", "--layers", "1", "--vocab", "256", "--pairs", "1", "--top", "3")
    for path in ("separate_sdpa", "packed_prefix"):
        shares = result["paths"][path]["share_by_kind"]
        assert abs(sum(shares.values()) - 1) < 0.01 and shares["linear"] > 0 and len(result["paths"][path]["top_ops"]) == 3

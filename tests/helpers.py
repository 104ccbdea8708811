"""What several test files share (tests/conftest.py keeps the fixtures): paths, the tiny random models, hand-made
batches and exact log-probs, module factories, the loss contract's pair, the CLI in-process. ``inspo fit`` runs in
subprocesses are in tests/fit_runs.py.

Names mean one thing each: ``TINY_CONFIG`` is the tiny Llama's config overrides (a dict, ``random_init=``),
``TINY_YAML`` the path of ``configs/tiny.yaml`` (the same model, as the CLI's run config).

transformers, Lightning and the module are imported inside the functions that need them: the loss tests import
this file too and take a few seconds without them, twenty with them on a busy machine.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from inspo.losses import LossOutput, PairLogps, PreferenceLoss

if TYPE_CHECKING:
    from inspo.data.datamodule import PairBatch
    from inspo.module import PreferenceModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY_YAML = CONFIGS / "tiny.yaml"
TINY_CONFIG = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
               "num_key_value_heads": 2}


# ---------------------------------------------------------------- tiny models
def tiny_model(attn_implementation: str = "sdpa", seed: int = 0, dtype: str = "fp32") -> torch.nn.Module:
    """The tiny random Llama (``TINY_CONFIG``) with SmolLM2's vocabulary, seeded, in eval mode."""
    from inspo.models import BUNDLED_SMOLLM2, load_causal_lm

    return load_causal_lm(BUNDLED_SMOLLM2, dtype=dtype, attn_implementation=attn_implementation,
                          random_init=TINY_CONFIG, seed=seed).eval()


FAMILY_BASE = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
               "num_hidden_layers": 4, "vocab_size": 49152}
MAMBA2 = {"mamba_n_heads": 4, "mamba_d_head": 32, "mamba_d_state": 16, "mamba_n_groups": 1, "mamba_chunk_size": 16}
HYBRIDS = {
    "FalconH1Config": {**MAMBA2, "mamba_d_ssm": 64, "mamba_d_head": 16, "head_dim": 16},
    "JambaConfig": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 100, "num_experts": 1,
                    "mamba_d_state": 8, "mamba_dt_rank": 8},
    "BambaConfig": {**MAMBA2, "attn_layer_indices": [1]},
    "GraniteMoeHybridConfig": {**MAMBA2, "layer_types": ["mamba", "attention", "mamba", "attention"],
                               "num_local_experts": 2, "num_experts_per_tok": 1},
    "NemotronHConfig": {"hybrid_override_pattern": "M*-*", "mamba_num_heads": 4, "mamba_head_dim": 16,
                        "ssm_state_size": 16, "n_groups": 1, "chunk_size": 16},
    "Lfm2Config": {"layer_types": ["conv", "full_attention", "conv", "full_attention"]},
    "Qwen3NextConfig": {"layer_types": ["linear_attention", "full_attention"] * 2, "num_experts": 2,
                        "num_experts_per_tok": 1, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
                        "linear_num_value_heads": 4, "linear_num_key_heads": 2, "linear_key_head_dim": 16,
                        "linear_value_head_dim": 16, "head_dim": 16},
    "MiniMaxConfig": {"layer_types": ["linear_attention", "full_attention"] * 2, "num_local_experts": 2,
                      "num_experts_per_tok": 1, "head_dim": 16},
    "Zamba2Config": {"layers_block_type": ["mamba", "hybrid", "mamba", "hybrid"], "mamba_d_state": 16,
                     "mamba_headdim": 16, "n_mamba_heads": 8, "hybrid_layer_ids": [1, 3], "num_mem_blocks": 1},
    "MambaConfig": {"state_size": 8},
}
"""Config overrides that make a tiny model of each hybrid (attention + recurrence / convolution) family."""


def tiny_family(name: str, **overrides) -> torch.nn.Module:
    """A tiny randomly initialised model of the family whose config class is ``name`` (offline, seeded)."""
    import transformers
    from transformers import AutoModelForCausalLM

    if not hasattr(transformers, name):
        pytest.skip(f"{name} is not in transformers {transformers.__version__}")
    config = getattr(transformers, name)(**{**FAMILY_BASE, **HYBRIDS.get(name, {}), **overrides})
    torch.manual_seed(0)
    try:
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    except ValueError:  # pure state-space models refuse sdpa
        return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def perturb_adapters(model: torch.nn.Module, std: float = 0.2, seed: int = 1) -> None:
    """Give every lora_B a non-zero value, so adapters on != adapters off (a fresh adapter is exactly zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name and param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


# ---------------------------------------------------------------- batches and exact log-probs
def random_pairs(n: int, lengths: list[tuple[int, int, int]] | None = None, seed: int = 0) -> list[tuple]:
    """n (prompt, chosen, rejected) token-id lists of the given (or random) lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or [tuple(torch.randint(1, 9, (3,), generator=g).tolist()) for _ in range(n)]
    return [tuple(torch.randint(0, 49152, (k,), generator=g).tolist() for k in ls) for ls in lengths[:n]]


def batch(n: int = 3, seed: int = 0) -> PairBatch:
    """A collated batch of ``n`` (at most 4) pairs of lengths (5, 3, 4), (2, 1, 6), (7, 2, 2), (3, 3, 3)."""
    from inspo.data.datamodule import PairBatch

    pairs = random_pairs(n, [(5, 3, 4), (2, 1, 6), (7, 2, 2), (3, 3, 3)], seed=seed)
    return PairBatch(*map(list, zip(*pairs)), rows=list(range(1, n + 1)))


def logp(model: torch.nn.Module, context: list[int], target: list[int]) -> float:
    """log pi(target | context) from one unpadded sequence [context, target], the plain way (fp32 log-softmax)."""
    with torch.no_grad():
        out = model(torch.tensor([context + target])).logits.float().log_softmax(-1)[0]
    return sum(out[len(context) - 1 + i, t].item() for i, t in enumerate(target))


def expected(model: torch.nn.Module, segments: dict, sequences: dict) -> list[float]:
    """Every target of ``sequences`` (name -> segment keys, the last one the target) computed separately."""
    out = []
    for keys in sequences.values():
        context = [t for k in keys[:-1] for t in segments[k]]
        out.append(logp(model, context, segments[keys[-1]]))
    return out



def assert_layout_exact(layout, model: torch.nn.Module, conditioning, segments: list[dict], pad_id: int,
                        plain: torch.nn.Module | None = None, chunk_size: int = 5) -> list:
    """Through ``layout``'s rows and ``model``, the policy targets of ``conditioning`` and the reference targets of
    every pair's ``segments`` equal each sequence computed on its own through ``plain`` (default ``model``) to 1e-5;
    returns the two row batches built."""
    from inspo.conditioning import REFERENCE_SEQUENCES
    from inspo.logprobs import target_logps

    built = []
    for sequences in (conditioning.sequences(plain=True), REFERENCE_SEQUENCES):
        rows = layout.build(segments, sequences, pad_id)
        with torch.no_grad():
            got = target_logps(model, rows, chunk_size=chunk_size)
        want = torch.tensor([expected(plain or model, s, sequences) for s in segments])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        built.append(rows)
    return built

# ---------------------------------------------------------------- module factory
def make_module(**kwargs) -> PreferenceModule:
    """A PreferenceModule on the tiny random Llama, model configured (``kwargs`` as in YAML ``model:``)."""
    from inspo.module import PreferenceModule

    module = PreferenceModule(random_init=TINY_CONFIG, **kwargs)
    module.configure_model()
    return module


# ---------------------------------------------------------------- the loss contract
STEP = 0.01  # nats added to one log-prob; large enough to move an fp32 loss by far more than its rounding


def contract_pair(inspo: bool = False, dtype: torch.dtype = torch.float32) -> tuple[PairLogps, PairLogps]:
    """A B=3 batch with realistic sums; h = [1.5, -2, 1] (per token [0.325, -0.225, 0.333]) stays below IPO's
    default target 1/(2*0.1) = 5.

    Policy log-probs are leaf tensors with requires_grad, so tests can check gradients reach them.
    """

    def t(*values: float) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype)

    def leaf(*values: float) -> torch.Tensor:
        return t(*values).requires_grad_()

    policy = PairLogps(
        chosen=leaf(-12.0, -30.0, -7.5),
        rejected=leaf(-14.0, -26.0, -9.0),
        chosen_tokens=t(4, 10, 3),
        rejected_tokens=t(5, 8, 3),
    )
    if inspo:
        policy = dataclasses.replace(
            policy, chosen_plain=leaf(-13.0, -31.5, -8.0), rejected_plain=leaf(-13.5, -27.0, -9.5)
        )
    reference = PairLogps(
        chosen=t(-12.5, -29.0, -8.0),
        rejected=t(-13.0, -27.0, -8.5),
        chosen_tokens=policy.chosen_tokens,
        rejected_tokens=policy.rejected_tokens,
    )
    return policy, reference


def run_loss(loss: PreferenceLoss, policy: PairLogps, reference: PairLogps) -> LossOutput:
    """``loss`` on the pair, given the reference only if the loss uses one."""
    return loss(policy, reference if loss.requires_reference else None)


def direction_violations(loss: PreferenceLoss, flat_in_chosen: bool = False, inspo: bool = False,
                         chosen_sign: int = -1) -> list[str]:
    """The direction checks a loss fails: raising log pi(y_w) must lower the loss, raising log pi(y_l) raise it.

    For the reference (when used) the opposite: raising log pi_ref(y_w) must raise the loss, log pi_ref(y_l) lower
    it, which catches swapped reference terms. ``flat_in_chosen`` losses must instead leave the loss unchanged
    when either chosen term moves. ``chosen_sign=+1`` is for a loss that by design lowers log pi(y_w) at the
    contract pair (APO-down): raising log pi(y_w) must then raise the loss and raising log pi_ref(y_w) lower it.
    """
    policy, reference = contract_pair(inspo)
    with torch.no_grad():
        base = run_loss(loss, policy, reference).loss.item()
        # field -> expected sign of the change of the mean loss (0: exactly flat)
        chosen_sign = 0 if flat_in_chosen else chosen_sign
        checks = {("policy", "chosen"): chosen_sign, ("policy", "rejected"): +1}
        if loss.requires_reference:
            checks |= {("reference", "chosen"): -chosen_sign, ("reference", "rejected"): -1}
        violations = []
        for (side, field), sign in checks.items():
            pair = policy if side == "policy" else reference
            moved = dataclasses.replace(pair, **{field: getattr(pair, field) + STEP})
            new = run_loss(loss, moved, reference) if side == "policy" else run_loss(loss, policy, moved)
            change = new.loss.item() - base
            if (sign < 0 and not change < 0) or (sign > 0 and not change > 0) or (sign == 0 and change != 0):
                violations.append(f"{side}.{field}: loss changed by {change:+.3g}, expected sign {sign:+d}")
    return violations


# ---------------------------------------------------------------- the CLI in-process
def run_main(capsys: pytest.CaptureFixture, tmp_path: Path, *args: str) -> tuple[int, str]:
    """``inspo fit`` of configs/tiny.yaml in-process, expected to exit: (exit status, stderr)."""
    from inspo.cli import main

    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(TINY_YAML), "--trainer.default_root_dir", str(tmp_path),
              "--trainer.logger.init_args.save_dir", str(tmp_path), *args])
    return info.value.code, capsys.readouterr().err

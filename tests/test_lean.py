"""Lean layers (``inspo.lean``): the same forward values and gradients as the model's own modules, fewer saved
activations, and the model's own forward wherever the lean one is not exact or autograd is not recording."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from inspo import lean
from inspo.lean import use_lean_layers
from tests.helpers import batch, make_module, tiny_family, tiny_model


def train_step(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train().zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    (logits.float().log_softmax(-1)[..., 0].sum()).backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, rtol: float, name: str) -> None:
    """fp rounding differences, relative to the gradient's scale (a tied embedding sums head and input grads)."""
    assert (got - want).abs().max() <= rtol * want.abs().max() + 1e-9, name


def assert_same_step(plain: nn.Module, leaned: nn.Module, rtol: float = 1e-5) -> None:
    ids = torch.randint(0, 1000, (2, 17), generator=torch.Generator().manual_seed(3))
    logits, grads = train_step(plain, ids)
    lean_logits, lean_grads = train_step(leaned, ids)
    assert torch.equal(lean_logits, logits)  # the same forward ops: bit-identical values
    assert lean_grads.keys() == grads.keys()
    for name, grad in grads.items():
        assert_close_to_scale(lean_grads[name].float(), grad.float(), rtol, name)


@pytest.mark.parametrize("family", ["llama", "Qwen2Config", "Qwen3Config", "MistralConfig", "Qwen2MoeConfig"])
def test_lean_layers_give_the_same_values_and_gradients(family):
    plain = tiny_model() if family == "llama" else tiny_family(family)
    leaned = copy.deepcopy(plain)
    swapped = use_lean_layers(leaned)
    assert any(name.endswith("RMSNorm") for name in swapped) and any(name.endswith("MLP") for name in swapped)
    assert not any(getattr(m, "_inspo_lean", False) for m in plain.modules())  # the copy's classes only
    assert_same_step(plain, leaned)


def test_lean_layers_save_a_fifth_of_the_activations():
    """What they are for: fewer bytes kept for backward by the decoder layers (the body, without the head)."""

    def saved_bytes(model: nn.Module) -> int:
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.untyped_storage().data_ptr() not in params:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.train().model(input_ids=torch.arange(100, 164).view(2, 32)).last_hidden_state.sum().backward()
        return sum(seen.values())

    plain = tiny_model()
    leaned = copy.deepcopy(plain)
    use_lean_layers(leaned)
    assert saved_bytes(leaned) < 0.8 * saved_bytes(plain)  # 0.77 here; 0.67 for SmolLM2-135M (wider MLP)


def test_the_training_step_is_the_same_with_and_without_lean_layers():
    losses, grads = {}, {}
    for on in (False, True):
        module = make_module(lean_layers=on)
        assert any(getattr(m, "_inspo_lean", False) for m in module.policy.modules()) == on
        out = module.loss(*module.pair_logps(batch()))
        out.loss.backward()
        losses[on], grads[on] = out.loss.detach(), {n: p.grad for n, p in module.policy.named_parameters()}
    assert torch.equal(losses[True], losses[False])
    for name, grad in grads[False].items():
        assert_close_to_scale(grads[True][name], grad, 1e-5, name)


def test_lora_policy_keeps_lean_layers_exact():
    """Under LoRA down_proj is a peft layer: the MLP keeps gate and up and lets down_proj run itself."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["down_proj", "q_proj"], init_lora_weights=False)
    plain = get_peft_model(tiny_model(), config)
    leaned = copy.deepcopy(plain)
    assert set(use_lean_layers(leaned)) == {"LlamaMLP", "LlamaRMSNorm"}
    assert_same_step(plain, leaned)


def test_bf16_lean_layers_match_within_bf16():
    plain = tiny_model(dtype="bf16")
    leaned = copy.deepcopy(plain)
    assert use_lean_layers(leaned)
    assert_same_step(plain, leaned, rtol=2e-2)


def test_lean_layers_under_bf16_autocast_match_within_bf16():
    """bf16-mixed: fp32 weights, the matrix products in bf16 (the lean MLP's down projection included)."""
    plain = tiny_model()
    leaned = copy.deepcopy(plain)
    use_lean_layers(leaned)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_same_step(plain, leaned, rtol=2e-2)
    assert all(p.grad.dtype == torch.float32 for p in leaned.parameters())


def test_without_autograd_recording_the_model_runs_its_own_forward(monkeypatch):
    model = tiny_model()
    use_lean_layers(model)

    def refuse(*_args):
        raise AssertionError("a lean function ran without autograd recording")

    monkeypatch.setattr(lean.RMSNormFunction, "apply", refuse)
    monkeypatch.setattr(lean.SwiGLUDownFunction, "apply", refuse)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        model(input_ids=ids)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, do_sample=False)
    with pytest.raises(AssertionError, match="without autograd"):
        model(input_ids=ids)


class OnePlusWeightRMSNorm(nn.Module):
    """Gemma's norm: ``(1 + weight)``, with Llama's attribute names; the lean norm must not stand in for it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight, self.variance_epsilon = nn.Parameter(torch.randn(width)), 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (1 + self.weight) * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


class GeluMLP(nn.Module):
    """A gated MLP with an activation called SiLU that is not one: the check catches it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(width, 8), nn.Linear(width, 8), nn.Linear(8, width)
        self.act_fn = type("SiLU", (nn.GELU,), {})()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class BrokenRMSNorm(OnePlusWeightRMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no")


def test_modules_the_lean_forward_does_not_match_keep_their_own(caplog):
    model = nn.Sequential(OnePlusWeightRMSNorm(4), GeluMLP(4), BrokenRMSNorm(4), tiny_model().model.norm)
    with caplog.at_level(logging.INFO, logger="inspo"):
        assert use_lean_layers(model) == ["LlamaRMSNorm"]
    assert "kept their own forward: BrokenRMSNorm, GeluMLP, OnePlusWeightRMSNorm" in caplog.text
    assert [type(m).__name__ for m in model] == ["OnePlusWeightRMSNorm", "GeluMLP", "BrokenRMSNorm", "LlamaRMSNorm"]
    assert [getattr(m, "_inspo_lean", False) for m in model] == [False, False, False, True]
    assert use_lean_layers(model) == []  # already lean: nothing swapped twice


def test_lean_models_copy_and_reload():
    """A lean model deep-copies (the copied reference) and its weights load into a plain model unchanged."""
    model = tiny_model()
    use_lean_layers(model)
    twin = copy.deepcopy(model)
    assert getattr(twin.model.norm, "_inspo_lean", False)
    fresh = tiny_model(seed=1)
    fresh.load_state_dict(model.state_dict())
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, model(input_ids=ids).logits)

"""The start-up exactness check (inspo.checks): inspo's log-probs equal the model's own forward, or inspo switches
to the model's forward (and packed to separate rows), saying so once per model."""

from __future__ import annotations

import logging

import pytest
import torch
import transformers
from torch.utils.data import DataLoader
from transformers import LlamaForCausalLM

import inspo.module as module_file
from inspo.conditioning import REFERENCE_SEQUENCES
from inspo.layout import SeparateLayout
from inspo.logprobs import target_logps, token_logps_full
from inspo.module import PreferenceModule
from tests.helpers import batch, logp, random_pairs, tiny_family, tiny_model


class TemperatureLlama(LlamaForCausalLM):
    """A family whose forward divides its logits by a temperature that ``_postprocess_logits`` does not know."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits / 0.25
        return out


class ShiftedMLP(torch.nn.Module):
    """An MLP that also adds the previous token's state: a token mixer no config field or class name reveals."""

    def __init__(self, mlp: torch.nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        return self.mlp(x) + torch.nn.functional.pad(x, (0, 0, 1, 0))[:, :-1]


def temperature_llama() -> LlamaForCausalLM:
    base = tiny_model()
    model = TemperatureLlama(base.config)
    model.load_state_dict(base.state_dict())
    return model


def shifted_llama() -> LlamaForCausalLM:
    model = tiny_model()
    for layer in model.model.layers:
        layer.mlp = ShiftedMLP(layer.mlp)
    return model


def forward_sums(model, rows) -> torch.Tensor:
    """Summed target log-probs from ``model(...).logits``: the model's own definition."""
    with torch.no_grad():
        return torch.zeros(rows.num_slots).index_add(0, rows.slot, token_logps_full(model, rows)).view(-1, 2)


def module_with(monkeypatch, load, **kwargs) -> PreferenceModule:
    monkeypatch.setattr(module_file, "load_causal_lm", lambda *a, **k: load())
    module = PreferenceModule(**kwargs)
    module.configure_model()
    return module.train()


def warnings_of(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_normal_model_passes_and_keeps_the_lean_packed_path(monkeypatch, caplog, dtype):
    """No false alarm, also in bf16 (its tolerance); the check leaves modes and matmul precision as it found them."""
    module = module_with(monkeypatch, lambda: tiny_model(dtype=dtype), layout="packed", conditioning="inspo")
    torch.set_float32_matmul_precision("medium")
    try:
        with caplog.at_level(logging.WARNING, logger="inspo"):
            module.pair_logps(batch())
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision("highest")
    assert not caplog.records
    assert module._checked == {id(module.policy), id(module.reference)} and not module._full_logits
    assert module.layout.name == "packed" and module.policy.training and not module.reference.training


def test_unknown_logit_transform_is_caught_once_per_model_and_the_forward_is_used(monkeypatch, caplog):
    """Without the check, inspo's path gives log pi at temperature 1 while the model's forward is at 0.25:
    different numbers, no error. With it: one line per model naming its class, then the forward's values."""
    model, b = temperature_llama(), batch()
    segments = [{"x": x, "y_w": yw, "y_l": yl} for x, yw, yl in zip(b.prompt, b.chosen, b.rejected)]
    rows = SeparateLayout().build(segments, REFERENCE_SEQUENCES, 0)
    with torch.no_grad():
        ours = target_logps(model, rows)
    assert (ours - forward_sums(model, rows)).abs().max() > 0.1  # the silent error the check exists for

    module = module_with(monkeypatch, temperature_llama, layout="packed", conditioning="inspo")
    with caplog.at_level(logging.WARNING, logger="inspo"):
        policy, reference = module.pair_logps(b)
        module.pair_logps(b)  # once per model: no second report
    lines = warnings_of(caplog, "TemperatureLlama: log-probs from inspo's output-head path differ")
    assert len(lines) == 2 and all("using the model's forward" in line for line in lines)  # policy and reference
    assert module._full_logits == {id(module.policy), id(module.reference)}
    for i, (x, yw, yl) in enumerate(zip(b.prompt, b.chosen, b.rejected)):
        assert policy.chosen[i].item() == pytest.approx(logp(module.policy, x + yl, yw), abs=1e-4)
        assert reference.chosen[i].item() == pytest.approx(logp(module.reference, x, yw), abs=1e-4)


def test_check_runs_on_the_evaluation_path_too(monkeypatch, caplog):
    """``inspo validate`` without training: the first validation batch is checked."""
    from lightning.pytorch import Trainer

    from inspo.data.datamodule import collate_pairs
    from inspo.data.tokenize import TokenizedPair

    module = PreferenceModule(loss="simpo", export_dir=None)
    monkeypatch.setattr(module_file, "load_causal_lm", lambda *a, **k: temperature_llama())
    pairs = [TokenizedPair(*p, row=i + 1) for i, p in enumerate(random_pairs(4, seed=3))]
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with caplog.at_level(logging.WARNING, logger="inspo"):
        trainer.validate(module, DataLoader(pairs, batch_size=2, collate_fn=collate_pairs), verbose=False)
    assert len(warnings_of(caplog, "TemperatureLlama: log-probs")) == 1


@pytest.mark.parametrize(("name", "field"), [("HyperCLOVAXConfig", "logits_scaling"),
                                             ("FalconH1Config", "lm_head_multiplier"),
                                             ("GraniteConfig", "logits_scaling")])
def test_known_logit_transforms_match_the_forward(name, field):
    """HyperCLOVAX multiplies by logits_scaling (Granite divides), Falcon-H1 multiplies by lm_head_multiplier:
    inspo's lean path reproduces each, so these families keep it (and pass the check)."""
    if not hasattr(transformers, name):
        pytest.skip(f"{name} is not in this transformers")

    model, b = tiny_family(name, **{field: 4.0}), batch()
    segments = [{"x": x, "y_w": yw, "y_l": yl} for x, yw, yl in zip(b.prompt, b.chosen, b.rejected)]
    rows = SeparateLayout().build(segments, REFERENCE_SEQUENCES, 0)
    with torch.no_grad():
        ours = target_logps(model, rows)
    assert model.config.to_dict()[field] == 4.0
    torch.testing.assert_close(ours, forward_sums(model, rows), atol=1e-4, rtol=0)


def test_a_hidden_token_mixer_switches_packed_to_separate(monkeypatch, caplog):
    """A mixer with an innocent name inside an attention layer passes the static inspection; the packed rows of the
    first batch then differ from separate rows, and the run goes on with separate rows (exact)."""
    from inspo.layout import packed_unsupported_reason

    assert packed_unsupported_reason(shifted_llama()) is None
    module = module_with(monkeypatch, shifted_llama, layout="packed", conditioning="inspo", loss="orpo")
    b = batch()
    with caplog.at_level(logging.WARNING, logger="inspo"):
        policy, _ = module.pair_logps(b)
    assert len(warnings_of(caplog, "layout 'packed' is not exact here (packed rows differ")) == 1
    assert module.layout.name == "separate"
    for i, (x, yw, yl) in enumerate(zip(b.prompt, b.chosen, b.rejected)):
        assert policy.chosen[i].item() == pytest.approx(logp(module.policy, x + yl, yw), abs=1e-4)
        assert policy.rejected_plain[i].item() == pytest.approx(logp(module.policy, x, yl), abs=1e-4)


def test_reference_cache_uses_the_models_forward_when_needed(caplog):
    from types import SimpleNamespace

    from inspo.reference import compute_reference_logps

    model, b = temperature_llama().eval(), batch()
    pairs = [SimpleNamespace(prompt=x, chosen=yw, rejected=yl) for x, yw, yl in zip(b.prompt, b.chosen, b.rejected)]
    with caplog.at_level(logging.WARNING, logger="inspo"):
        cache = compute_reference_logps(model, pairs, pad_id=0)
    assert len(warnings_of(caplog, "TemperatureLlama: log-probs")) == 1
    for i, p in enumerate(pairs):
        assert cache.logps[i, 0].item() == pytest.approx(logp(model, p.prompt, p.chosen), abs=1e-4)

"""Packed layout on hybrid models: every token mixer that is not masked attention is found, and the module falls
back to separate rows, whose log-probs are exact where packed ones leak one branch into the other."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from inspo.conditioning import REFERENCE_SEQUENCES, InSPOConditioning
from inspo.layout import PackedLayout, SeparateLayout, packed_unsupported_reason
from inspo.logprobs import target_logps
from tests.helpers import HYBRIDS, batch, tiny_family


def strip_layer_types(model: torch.nn.Module) -> None:
    """Replace the config by one that names no layer kinds: what is left to go on is the modules."""
    model.config = SimpleNamespace(_attn_implementation="sdpa", num_hidden_layers=model.config.num_hidden_layers)


@pytest.mark.parametrize("name", sorted(HYBRIDS))
def test_every_hybrid_is_unsupported_from_its_config_and_from_its_modules(name):
    model = tiny_family(name)
    assert packed_unsupported_reason(model) is not None
    if name != "MambaConfig":  # (a pure SSM config names no layer kinds)
        assert packed_unsupported_reason(model.config) is not None
    strip_layer_types(model)
    assert packed_unsupported_reason(model.config) is None
    reason = packed_unsupported_reason(model)
    assert reason is not None and ("mixes tokens" in reason or "convolves" in reason), reason


@pytest.mark.parametrize("name", ["LlamaConfig", "Qwen2Config", "MixtralConfig", "GPT2Config", "OPTConfig"])
def test_attention_only_models_keep_packing(name):
    """No false alarm: GPT-2's ``Conv1D`` is a linear layer, MoE experts mix no tokens, and so on."""
    extra = {"GPT2Config": {"n_layer": 2, "n_embd": 32, "n_head": 2},
             "OPTConfig": {"ffn_dim": 64, "word_embed_proj_dim": 64}}.get(name, {})
    assert packed_unsupported_reason(tiny_family(name, **extra)) is None


def test_a_layer_without_attention_is_unsupported_when_in_doubt():
    """A decoder layer whose token mixer is of an unknown kind (here a module named ``TokenShift``)."""

    class TokenShift(torch.nn.Module):
        def forward(self, hidden_states, **kwargs):
            return torch.roll(hidden_states, 1, dims=1), None

    model = tiny_family("LlamaConfig")
    model.model.layers[1].self_attn = TokenShift()
    assert packed_unsupported_reason(model) == ("decoder layer 1 (LlamaDecoderLayer) has no attention module: its "
                                                "token mixing is unknown")


def logps(model: torch.nn.Module, layout, sequences) -> torch.Tensor:
    b = batch()
    conditioning = InSPOConditioning.__new__(InSPOConditioning)
    conditioning.extra_segments = {"before": [], "after": []}
    segments = [conditioning.segments(*p) for p in zip(b.prompt, b.chosen, b.rejected)]
    with torch.no_grad():
        return target_logps(model, layout.build(segments, sequences, 0))


@pytest.mark.parametrize("name", ["BambaConfig", "NemotronHConfig", "Zamba2Config", "MiniMaxConfig"])
def test_packed_rows_leak_on_hybrids_and_the_module_falls_back_to_exact_separate_rows(name, monkeypatch, caplog):
    """Packed log-probs of a hybrid differ from separate rows (y_l reads y_w through the recurrent state, also in
    the reference row [x | y_w | y_l]); the module says so in one line and then computes the separate values."""
    import inspo.module as module_file
    from inspo.module import PreferenceModule

    model = tiny_family(name)
    for sequences in (REFERENCE_SEQUENCES, InSPOConditioning().sequences(plain=True)):
        leak = (logps(model, PackedLayout(), sequences) - logps(model, SeparateLayout(), sequences)).abs().max()
        assert leak > 1e-3, (sequences, leak)
    monkeypatch.setattr(module_file, "load_causal_lm", lambda *args, **kwargs: tiny_family(name))
    module = PreferenceModule(layout="packed", conditioning="inspo", loss="orpo")  # reads log pi(y|x) too
    with caplog.at_level(logging.WARNING, logger="inspo"):
        module.configure_model()
    lines = [r.getMessage() for r in caplog.records if "layout 'packed' is not exact" in r.getMessage()]
    assert len(lines) == 1 and "using layout 'separate'" in lines[0]
    assert module.layout.name == "separate"
    policy, _ = module.pair_logps(batch())
    want = logps(module.policy.eval(), SeparateLayout(), InSPOConditioning().sequences(plain=True)).view(len(batch()), -1)
    torch.testing.assert_close(torch.stack([policy.chosen, policy.rejected, policy.chosen_plain,
                                            policy.rejected_plain], 1), want, atol=1e-5, rtol=0)

"""Dropout: ``disable_dropout`` reaches every kind of dropout, and the reference is deterministic in every mode."""

from __future__ import annotations

import pytest
import torch

from inspo.conditioning import REFERENCE_SEQUENCES
from inspo.layout import SeparateLayout
from inspo.logprobs import target_logps
from inspo.models import disable_dropout
from inspo.module import PreferenceModule
from tests.conftest import TINY, tiny_model
from tests.test_module import batch

DROPOUT = {**TINY, "attention_dropout": 0.5}
"""A tiny Llama whose only dropout is attention dropout: a float in the config, no ``nn.Dropout`` module at all."""


def two_passes(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference-style log-probs of the same batch computed twice, with ``model`` in train mode."""
    b = batch()
    segments = [{"x": x, "y_w": yw, "y_l": yl} for x, yw, yl in zip(b.prompt, b.chosen, b.rejected)]
    rows = SeparateLayout().build(segments, REFERENCE_SEQUENCES, pad_id=0)
    model.train()
    with torch.no_grad():
        return target_logps(model, rows), target_logps(model, rows)


def dropout_model() -> torch.nn.Module:
    model = tiny_model()
    model.config.attention_dropout = 0.5
    for module in model.modules():  # attention modules copy the config's rate at init
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    return model


def test_attention_dropout_is_random_in_train_mode_without_disable_dropout():
    """The control: attention dropout 0.5 makes two train-mode passes differ (else the next test proves nothing)."""
    first, second = two_passes(dropout_model())
    assert (first - second).abs().max() > 1e-3


def test_disable_dropout_zeroes_attention_dropout():
    """After ``disable_dropout`` two train-mode passes are bit-identical: the config float and the attention modules'
    copies are 0, not only ``nn.Dropout`` modules (a Llama has none)."""
    model = dropout_model()
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    disable_dropout(model)
    first, second = two_passes(model)
    assert torch.equal(first, second)
    assert model.config.attention_dropout == 0.0


def test_disable_dropout_zeroes_every_named_rate_and_module():
    """GPT-2 style rates (resid_pdrop, embd_pdrop, attn_pdrop), LayerDrop, nn.Dropout modules, nested configs."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    model.config.layerdrop = 0.3
    disable_dropout(model)
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout", "layerdrop"):
        assert getattr(model.config, name) == 0.0, name
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    ids = torch.randint(0, 64, (2, 10))
    model.train()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)


def test_module_disable_dropout_covers_attention_dropout():
    """Through the module (``model.disable_dropout`` default true): the policy in train mode is deterministic."""
    module = PreferenceModule(random_init=DROPOUT, conditioning="standard")
    module.configure_model()
    module.train()
    b = batch()
    with torch.no_grad():
        first, second = module.score(module.policy, b, REFERENCE_SEQUENCES), module.score(module.policy, b,
                                                                                         REFERENCE_SEQUENCES)
    assert torch.equal(first.chosen, second.chosen) and torch.equal(first.rejected, second.rejected)


@pytest.mark.parametrize("value", [0.0, 0.5])
def test_random_init_sets_attention_dropout(value):
    """The fixture above really configures attention dropout (random_init overrides reach the modules)."""
    module = PreferenceModule(random_init={**TINY, "attention_dropout": value}, disable_dropout=False)
    module.configure_model()
    rates = {m.attention_dropout for m in module.policy.modules() if hasattr(m, "attention_dropout")}
    assert rates == {value}

"""Dropout: ``disable_dropout`` reaches every kind of dropout, and the reference is deterministic in every mode."""

from __future__ import annotations

import pytest
import torch

from inspo.conditioning import REFERENCE_SEQUENCES
from inspo.layout import SeparateLayout
from inspo.logprobs import target_logps
from inspo.lora import LoraSettings
from inspo.models import disable_dropout
from inspo.module import PreferenceModule
from tests.helpers import TINY_CONFIG, batch, perturb_adapters, tiny_model

DROPOUT = {**TINY_CONFIG, "attention_dropout": 0.5}
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
    module = PreferenceModule(random_init={**TINY_CONFIG, "attention_dropout": value}, disable_dropout=False)
    module.configure_model()
    rates = {m.attention_dropout for m in module.policy.modules() if hasattr(m, "attention_dropout")}
    assert rates == {value}


# ---------------------------------------------------------------- the reference is deterministic in every mode


@pytest.fixture
def dropout_folder(tmp_path, tokenizer):
    """A tiny Llama saved as an HF folder (with tokenizer) whose config has attention dropout 0.5."""
    model = dropout_model()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


@pytest.fixture
def dropout_adapter(tmp_path):
    """A saved LoRA adapter with lora_dropout 0.5 and non-zero weights (the adapter a run continues)."""
    from peft import LoraConfig, get_peft_model


    model = get_peft_model(tiny_model(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5,
                                                    target_modules=["q_proj", "v_proj"]))
    perturb_adapters(model)
    model.save_pretrained(tmp_path / "adapter")
    return str(tmp_path / "adapter")


def reference_twice(module: PreferenceModule) -> tuple:
    module.configure_model()
    module.train()  # what Lightning does before every training epoch
    b = batch()
    return module.reference_logps(b), module.reference_logps(b), b


MODES = {
    # full fine-tuning with the model's own dropout left on (model.disable_dropout false)
    "copy": lambda folder, adapter: PreferenceModule(random_init=DROPOUT, disable_dropout=False, reference="copy"),
    "path": lambda folder, adapter: PreferenceModule(model=folder, reference="path", reference_model=folder,
                                                     disable_dropout=False),
    # LoRA: adapters off; the base model keeps its attention dropout and the adapters their lora_dropout
    "adapter": lambda folder, adapter: PreferenceModule(random_init=DROPOUT, disable_dropout=False,
                                                        lora=LoraSettings(rank=4, alpha=8, dropout=0.5)),
    # continuing an adapter: the frozen reference adapter carries lora_dropout 0.5 from its saved config
    "adapter-continued": lambda folder, adapter: PreferenceModule(random_init=TINY_CONFIG,
                                                                  lora=LoraSettings(adapter=adapter)),
    "adapter-continued-dropout": lambda folder, adapter: PreferenceModule(
        random_init=DROPOUT, disable_dropout=False, lora=LoraSettings(adapter=adapter)),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_two_reference_passes_in_train_mode_are_identical(mode, dropout_folder, dropout_adapter):
    """Dropout > 0 is configured (the policy's own two passes differ: the control), yet the reference gives
    bit-identical log-probs twice on the same batch while the module is in train mode."""
    module = MODES[mode](dropout_folder, dropout_adapter)
    first, second, b = reference_twice(module)
    assert torch.equal(first.chosen, second.chosen) and torch.equal(first.rejected, second.rejected)
    with torch.no_grad():
        policy = [module.score(module.policy, b, REFERENCE_SEQUENCES).chosen for _ in range(2)]
    assert (policy[0] - policy[1]).abs().max() > 1e-4  # dropout is really on in the policy
    assert module.policy.training  # the reference pass left the policy in train mode
    if module.lora is not None:  # and every LoRA dropout module in train mode too
        assert all(m.training for n, m in module.policy.named_modules() if "lora_dropout" in n)


def test_cached_and_none_references_are_deterministic(tmp_path, monkeypatch):
    """``cached``: computed once in eval mode, so it equals the policy's eval-mode log-probs at step 0 although
    the policy has attention dropout 0.5; ``none``: no reference pass at all."""
    from inspo.reference import cache as reference_module

    monkeypatch.setattr(reference_module, "cache_dir", lambda: tmp_path)
    module = PreferenceModule(random_init=DROPOUT, disable_dropout=False, reference="cached", export_dir=None)
    b = batch()
    module.reference_mode.pairs = [type("P", (), {"prompt": x, "chosen": yw, "rejected": yl})()
                              for x, yw, yl in zip(b.prompt, b.chosen, b.rejected)]
    first, second, _ = reference_twice(module)
    assert torch.equal(first.chosen, second.chosen)
    with torch.no_grad():
        live = module.score(module.policy.eval(), b, REFERENCE_SEQUENCES)
    torch.testing.assert_close(first.chosen, live.chosen, atol=1e-5, rtol=1e-6)
    none = PreferenceModule(random_init=DROPOUT, disable_dropout=False, loss="simpo")
    assert none.reference_mode.name == "none"
    assert reference_twice(none)[0] is None

"""LoRA policies: the adapter reference is the base model exactly, holds no second copy, and adapter-on-adapter
training keeps the initial adapter frozen as the reference. Also gradient checkpointing and the model switches."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from inspo.conditioning import REFERENCE_SEQUENCES
from inspo.errors import ConfigError
from inspo.export import export_policy
from inspo.lora import LoraSettings, count_parameters
from inspo.module import PreferenceModule
from tests.helpers import TINY_CONFIG, batch, perturb_adapters, tiny_model


def lora_module(settings: LoraSettings | None = None, **kwargs) -> PreferenceModule:
    module = PreferenceModule(random_init=TINY_CONFIG, lora=settings or LoraSettings(rank=4, alpha=8), **kwargs)
    module.configure_model()
    return module


def base_reference_logps(module: PreferenceModule, reference: torch.nn.Module, b) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = module.score(reference.eval(), b, REFERENCE_SEQUENCES)
    return out.chosen, out.rejected


def plain_chosen(module: PreferenceModule, b) -> torch.Tensor:
    """log pi(y_w|x) under the policy (adapters on)."""
    with torch.no_grad():
        return module.score(module.policy, b, REFERENCE_SEQUENCES).chosen


def test_adapter_reference_equals_the_base_model_exactly():
    """Reference log-probs with adapters off are bit-identical to a separately loaded base model's."""
    module = lora_module()
    assert module.reference_mode.name == "adapter" and module.reference is None
    perturb_adapters(module.policy)
    b = batch()
    _, reference = module.pair_logps(b)
    chosen, rejected = base_reference_logps(module, tiny_model(), b)
    assert torch.equal(reference.chosen, chosen) and torch.equal(reference.rejected, rejected)
    # the adapters are on for the policy: its plain log-probs differ from the reference's
    assert (plain_chosen(module, b) - reference.chosen).abs().max() > 1e-3


def test_no_second_copy_of_the_base():
    """Policy + reference hold the base weights once (plus the adapters); a copied reference holds them twice."""
    lora = lora_module()
    full = PreferenceModule(random_init=TINY_CONFIG, reference="copy")
    full.configure_model()
    base = count_parameters(tiny_model())
    adapters = sum(p.numel() for n, p in lora.policy.named_parameters() if "lora_" in n)
    counted = count_parameters(lora.policy, lora.reference)
    assert counted["total"] == base["total"] + adapters and counted["trainable"] == adapters
    assert counted["storages"] == base["storages"] + sum(1 for n, _ in lora.policy.named_parameters() if "lora_" in n)
    assert count_parameters(full.policy, full.reference)["total"] == 2 * base["total"]


def test_training_step_moves_only_the_adapters_and_keeps_the_reference():
    module = lora_module()
    perturb_adapters(module.policy)
    b = batch()
    frozen = {n: p.detach().clone() for n, p in module.policy.named_parameters() if not p.requires_grad}
    policy, reference = module.pair_logps(b)
    module.loss(policy, reference).loss.backward()
    trainable = [p for p in module.policy.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    torch.optim.SGD(trainable, lr=1.0).step()
    policy2, reference2 = module.pair_logps(b)
    assert torch.equal(reference2.chosen, reference.chosen)
    assert (policy2.chosen - policy.chosen).abs().max() > 1e-4
    assert all(torch.equal(p, frozen[n]) for n, p in module.policy.named_parameters() if not p.requires_grad)


@pytest.fixture
def saved_adapter(tmp_path):
    model = get_peft_model(tiny_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    perturb_adapters(model)
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_adapter_on_adapter_reference_is_the_frozen_initial_adapter(saved_adapter):
    """Continuing an adapter: reference = base + initial adapter (a frozen second adapter), not the bare base."""
    module = lora_module(LoraSettings(adapter=str(saved_adapter)))
    assert set(module.policy.peft_config) == {"default", "reference"} and module.reference is None
    b = batch()
    policy, reference = module.pair_logps(b)
    chosen, rejected = base_reference_logps(module, PeftModel.from_pretrained(tiny_model(), saved_adapter), b)
    assert torch.equal(reference.chosen, chosen) and torch.equal(reference.rejected, rejected)
    bare, _ = base_reference_logps(module, tiny_model(), b)
    assert (reference.chosen - bare).abs().max() > 1e-3  # the adapter matters: not the base model
    torch.testing.assert_close(plain_chosen(module, b), reference.chosen, atol=1e-5, rtol=0)  # step 0: policy == ref
    module.loss(policy, reference).loss.backward()
    trainable = [p for p in module.policy.parameters() if p.requires_grad]
    assert len(trainable) == sum(1 for n, _ in module.policy.named_parameters() if ".default." in n)
    torch.optim.SGD(trainable, lr=1.0).step()
    _, reference2 = module.pair_logps(b)
    assert torch.equal(reference2.chosen, reference.chosen)
    assert (plain_chosen(module, b) - reference.chosen).abs().max() > 1e-4
    base = count_parameters(tiny_model())["total"]
    assert count_parameters(module.policy)["total"] < 1.01 * base  # one base, two small adapters


def test_checkpoint_holds_the_adapters_only():
    module = lora_module()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and all("lora_" in k for k in checkpoint["state_dict"])


def test_export_merged_and_adapter_load_with_plain_transformers(tmp_path, tokenizer):
    base = tmp_path / "base"
    tiny_model().save_pretrained(base)
    tokenizer.save_pretrained(base)
    module = PreferenceModule(model=str(base), lora=LoraSettings(rank=4, alpha=8))
    module.configure_model()
    perturb_adapters(module.policy)
    x = torch.tensor([[1, 200, 300, 400, 2]])
    with torch.no_grad():
        expected = module.policy.eval()(input_ids=x).logits
        for merge in (True, False):
            out = export_policy(module.policy, module.tokenizer, tmp_path / f"merge_{merge}", merge=merge)
            loaded = AutoModelForCausalLM.from_pretrained(out)
            assert merge != any("lora_" in key for key in loaded.state_dict())  # merged: a plain model
            torch.testing.assert_close(loaded(input_ids=x).logits, expected, atol=1e-4, rtol=0)
    assert (tmp_path / "merge_False" / "adapter_config.json").is_file()
    assert not (tmp_path / "merge_True" / "adapter_config.json").is_file()
    assert module.policy.peft_config  # the live policy keeps its adapters after a merged export


@pytest.mark.parametrize("layout", ["packed", "separate"])
def test_gradient_checkpointing_gives_the_same_gradients(layout):
    grads = {}
    for checkpointing in (False, True, "selective"):
        module = PreferenceModule(random_init=TINY_CONFIG, gradient_checkpointing=checkpointing, layout=layout)
        module.configure_model()
        layers = [m for m in module.policy.modules() if hasattr(m, "gradient_checkpointing")]
        assert any(m.gradient_checkpointing for m in layers) == bool(checkpointing)
        module.loss(*module.pair_logps(batch())).loss.backward()
        grads[checkpointing] = {n: p.grad for n, p in module.policy.named_parameters()}
    for checkpointing in (True, "selective"):
        for name, grad in grads[False].items():
            torch.testing.assert_close(grads[checkpointing][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_selective_checkpointing_keeps_products_and_recomputes_the_rest():
    """The policy keeps what costs FLOPs to recompute and nothing else (else it saves no memory)."""
    from torch.utils.checkpoint import CheckpointPolicy

    from inspo.models import _keep_products

    aten = torch.ops.aten
    kept = [aten.mm.default, aten.addmm.default, aten.bmm.default, aten._scaled_dot_product_flash_attention_for_cpu,
            aten._scaled_dot_product_efficient_attention.default]
    recomputed = [aten.mul.Tensor, aten.silu.default, aten.rsqrt.default, aten.add.Tensor, aten.pow.Tensor_Scalar,
                  aten.cat.default, aten.neg.default, aten.mean.dim]
    assert all(_keep_products(None, op) == CheckpointPolicy.MUST_SAVE for op in kept)
    assert all(_keep_products(None, op) == CheckpointPolicy.PREFER_RECOMPUTE for op in recomputed)
    with pytest.raises(ConfigError, match="gradient_checkpointing: 'selectiv' is not one of false, true, selective"):
        PreferenceModule(gradient_checkpointing="selectiv")


def test_config_errors():
    with pytest.raises(ConfigError, match="set model.lora"):
        PreferenceModule(reference="adapter")
    with pytest.raises(ConfigError, match="use model.reference adapter"):
        PreferenceModule(lora=LoraSettings(adapter="x"), reference="copy")
    with pytest.raises(ConfigError, match="rank must be >= 1"):
        LoraSettings(rank=0)
    assert PreferenceModule(lora=LoraSettings(), loss="simpo").reference_mode.name == "none"
    assert PreferenceModule().hparams.trust_remote_code is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is present")
def test_qlora_without_gpu_is_a_clear_error():
    module = PreferenceModule(random_init=TINY_CONFIG, lora=LoraSettings(load_in_4bit=True))
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        module.configure_model()

"""Precision: the paper's settings train every weight at lr 5e-7; settings that update bf16 weights are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from inspo.data.datamodule import collate_pairs
from inspo.data.tokenize import TokenizedPair
from inspo.errors import ConfigError
from inspo.lora import LoraSettings
from inspo.module import PreferenceModule
from inspo.optim import OptimConfig, make_optimizer
from tests.helpers import TINY_CONFIG, random_pairs, run_main

PAPER = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/paper/llama3-8b-inspo-dpo.yaml").read_text())


def fit(module: PreferenceModule, precision: str, steps: int = 3) -> Trainer:
    pairs = [TokenizedPair(*p, row=i + 1) for i, p in enumerate(random_pairs(2 * steps, seed=3))]
    trainer = Trainer(accelerator="cpu", precision=precision, max_steps=steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                      limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader(pairs, batch_size=2, collate_fn=collate_pairs))
    return trainer


def changed_fraction(module: PreferenceModule, before: dict[str, torch.Tensor]) -> float:
    params = dict(module.policy.named_parameters())
    changed = sum((params[name].detach().float() != value).sum().item() for name, value in before.items())
    return changed / sum(value.numel() for value in before.values())


def test_paper_precision_settings_train_every_weight_at_lr_5e_7():
    """The paper recipe's trainer.precision and model.dtype (configs/paper), its lr 5e-7 and betas, on a tiny Llama
    on CPU: 3 AdamW steps change > 90% of the weights (measured: 99.9%; SmolLM2's tied embeddings give every
    vocabulary row a gradient). With bf16 weights (the old recipe: bf16-true, model.dtype bf16) 0.8% change: a step
    of ~5e-7 is below half a bf16 ulp of a weight of ~0.02 (ulp 2**-13)."""
    optim = PAPER["model"]["optim"]
    module = PreferenceModule(random_init=TINY_CONFIG, dtype=PAPER["model"]["dtype"], export_dir=None,
                              optim=OptimConfig(lr=optim["lr"], betas=tuple(optim["betas"]), warmup_ratio=0.0))
    module.configure_model()
    before = {name: p.detach().float().clone() for name, p in module.policy.named_parameters()}
    fit(module, PAPER["trainer"]["precision"])
    assert optim["lr"] == 5e-7
    assert changed_fraction(module, before) > 0.9


REFUSED = [
    ("bf16-true", "fp32", None, "trainer.precision bf16-true casts the trained weights to bf16"),
    ("16-true", "fp32", None, "trainer.precision 16-true casts the trained weights to fp16"),
    ("bf16-mixed", "bf16", None, "model.dtype bf16 trains bf16 weights in place"),
    ("32-true", "fp16", None, "model.dtype fp16 trains fp16 weights in place"),
    ("bf16-true", "bf16", LoraSettings(rank=4, alpha=8), "trainer.precision bf16-true casts the trained weights"),
]


@pytest.mark.parametrize(("precision", "dtype", "lora", "message"), REFUSED, ids=[f"{p}-{d}-{'lora' if lo else 'full'}"
                                                                                  for p, d, lo, _ in REFUSED])
def test_bf16_weights_updated_in_place_are_refused_before_the_first_step(precision, dtype, lora, message):
    """One ConfigError line naming the setting and the fix, raised at setup: no step is taken."""
    module = PreferenceModule(random_init=TINY_CONFIG, dtype=dtype, lora=lora, export_dir=None)
    with pytest.raises(ConfigError) as info:
        fit(module, precision)
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text
    assert "use trainer.precision bf16-mixed with model.dtype fp32" in text
    assert module.policy is None  # stopped before the model was even loaded


def test_lora_on_a_bf16_base_trains_fp32_adapters():
    """LoRA with model.dtype bf16 under bf16-mixed: the base is frozen bf16, the adapters are fp32 and move."""
    module = PreferenceModule(random_init=TINY_CONFIG, dtype="bf16", lora=LoraSettings(rank=4, alpha=8),
                              export_dir=None, optim=OptimConfig(lr=5e-7, warmup_ratio=0.0))
    module.configure_model()
    trainable = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    fit(module, "bf16-mixed", steps=2)
    params = dict(module.policy.named_parameters())
    assert all(not torch.equal(params[n], p) for n, p in trainable.items() if "lora_A" in n)


def test_make_optimizer_refuses_trainable_bf16_parameters():
    """The last guard, whatever put bf16 weights there (here: a policy cast after loading)."""
    module = PreferenceModule(random_init=TINY_CONFIG)
    module.configure_model()
    module.policy.to(torch.bfloat16)
    with pytest.raises(ConfigError, match=r"^\d+ trainable parameters are bf16 \(first: model.embed_tokens.weight\)"):
        make_optimizer(module.policy, OptimConfig())


def test_fsdp1_bf16_mixed_keeps_fp32_shards_reduction_and_buffers():
    """DecoderFSDPStrategy under bf16-mixed: bf16 compute copies, fp32 gradient reduction and fp32 buffers (RoPE's
    inv_freq), instead of Lightning's all-bf16 default."""
    from lightning.pytorch.plugins.precision import FSDPPrecision

    from inspo.distributed import DecoderFSDPStrategy

    config = DecoderFSDPStrategy(precision_plugin=FSDPPrecision("bf16-mixed")).mixed_precision_config
    assert (config.param_dtype, config.reduce_dtype, config.buffer_dtype) == (torch.bfloat16, torch.float32,
                                                                              torch.float32)


def test_cli_refuses_bf16_true_in_one_line(capsys, tmp_path):

    code, err = run_main(capsys, tmp_path, "--trainer.precision", "bf16-true")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("inspo: error: trainer.precision bf16-true casts the trained "
                                                   "weights to bf16 and the optimizer updates them in place")


def test_deepspeed_keeps_its_own_fp32_masters():
    """DeepSpeed's bf16 optimizer holds fp32 master weights of bf16 parameters: not refused there (only there)."""
    from lightning.pytorch.strategies import DDPStrategy

    from inspo.optim import keeps_fp32_master

    deepspeed_like = type("DeepSpeedStrategy", (), {})()  # named like Lightning's (deepspeed is not installed here)
    assert keeps_fp32_master(deepspeed_like) and not keeps_fp32_master(DDPStrategy())
    policy = PreferenceModule(random_init=TINY_CONFIG)
    policy.configure_model()
    make_optimizer(policy.policy.to(torch.bfloat16), OptimConfig(), fp32_master=True)

"""Logged metrics under InSPO: the conditioned view under the usual keys, the unconditioned view log pi(y|x) under
``val/plain_*`` and ``test/plain_*``, equal to a standard-conditioning evaluation of the same weights."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from inspo.data.datamodule import collate_pairs
from inspo.data.tokenize import TokenizedPair
from inspo.losses import DPOLoss
from inspo.module import PreferenceModule
from tests.helpers import TINY_CONFIG, random_pairs

PLAIN_METRICS = ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")
"""Pinned here, not imported: other code (progress line, summary, report) reads these exact key names."""
PLAIN_KEYS = [f"plain_{name}" for name in PLAIN_METRICS]


def loader() -> DataLoader:
    pairs = [TokenizedPair(*p, row=i + 1) for i, p in enumerate(random_pairs(6, seed=5))]
    return DataLoader(pairs, batch_size=2, collate_fn=collate_pairs)


def trainer() -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


def module(conditioning: str, loss, layout: str = "packed", source: PreferenceModule | None = None):
    """A configured module; a policy that differs from its reference (or ``source``'s weights, policy and reference)."""
    out = PreferenceModule(random_init=TINY_CONFIG, conditioning=conditioning, loss=loss, layout=layout,
                           export_dir=None)
    out.configure_model()
    if source is None:
        with torch.no_grad():
            for param in out.policy.parameters():
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())) * 0.02)
    else:
        out.policy.load_state_dict(source.policy.state_dict())
        if source.reference is not None:
            out.reference.load_state_dict(source.reference.state_dict())
    return out


@pytest.mark.parametrize(("loss", "layout"), [("dpo", "packed"), ("dpo", "separate"), ("simpo", "packed"),
                                              (DPOLoss(sft_weight=0.5), "packed")])
@pytest.mark.parametrize("stage", ["val", "test"])
def test_inspo_logs_the_plain_view_equal_to_a_standard_evaluation(loss, layout, stage):
    """DPO does not read log pi(y|x) (it is computed for the metrics only), SimPO has no reference, DPO + SFT reads
    it; in every case ``<stage>/plain_*`` of the InSPO run equals ``<stage>/*`` of a standard run on the same
    weights, and the conditioned keys keep describing the conditioned model (they differ)."""
    inspo = module("inspo", loss, layout)
    standard = module("standard", loss, layout, source=inspo)
    run = trainer().validate if stage == "val" else trainer().test
    got, want = run(inspo, loader(), verbose=False)[0], run(standard, loader(), verbose=False)[0]
    for name in PLAIN_METRICS:
        assert got[f"{stage}/plain_{name}"] == pytest.approx(want[f"{stage}/{name}"], abs=1e-5), name
    assert got[f"{stage}/chosen_reward"] != pytest.approx(got[f"{stage}/plain_chosen_reward"], abs=1e-3)
    assert not any("plain" in key for key in want)  # standard conditioning: no plain_* keys


def test_training_logs_no_plain_view():
    """Training computes log pi(y|x) only when the loss reads it: no train/plain_* keys."""
    inspo = module("inspo", "dpo")
    fit = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False,
                  enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                  num_sanity_val_steps=0)
    fit.fit(inspo, train_dataloaders=loader(), val_dataloaders=loader())
    keys = set(fit.callback_metrics)
    assert {f"val/{key}" for key in PLAIN_KEYS} <= keys
    assert not any(key.startswith("train/plain") for key in keys)

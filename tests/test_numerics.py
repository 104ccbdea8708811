"""Numerics through the whole module, and what a non-finite loss does to a run (inspo.guards).

Covered elsewhere, not repeated here: every registered loss finite (values and gradients) for +-1e4 gaps, a
log-prob of exactly 0 and 1-token responses on hand-made log-probs (``tests/test_losses.py``,
``test_finite_for_extreme_gaps_and_one_token_responses``); bf16 vs fp32 log-probs on the tiny model within the
documented tolerance, 0.5 nats absolute + 2% relative per sequence sum (``tests/test_layout.py``,
``test_bf16_logps_are_fp32_and_close_to_fp32_model``).
"""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from inspo.data.datamodule import PairBatch, collate_pairs
from inspo.data.tokenize import TokenizedPair
from inspo.guards import NonFiniteLossError
from inspo.losses import DPOLoss, LossOutput, PairLogps
from inspo.module import PreferenceModule
from tests.helpers import TINY_CONFIG, make_module, random_pairs


def batch(lengths: list[tuple[int, int, int]], vocab: int = 49152) -> PairBatch:
    pairs = [[[t % vocab for t in ids] for ids in pair] for pair in random_pairs(len(lengths), lengths, seed=1)]
    return PairBatch(*map(list, zip(*pairs)), rows=list(range(1, len(lengths) + 1)))


def loss_and_grads(module: PreferenceModule, b: PairBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    loss = module.loss(*module.pair_logps(b)).loss
    loss.backward()
    return loss, [p.grad for p in module.policy.parameters() if p.grad is not None]


def assert_finite(loss: torch.Tensor, grads: list[torch.Tensor]) -> None:
    assert torch.isfinite(loss), loss
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(("layout", "loss"), [("separate", "dpo"), ("packed", "simpo")])
def test_one_token_and_very_long_responses_are_finite(layout, loss):
    """|y| = 1 (the length-normalised losses divide by it) next to 400-512-token responses, in one batch.

    The vocabulary is cut to 1024 ids so the [tokens x vocab] logits of ~2000 targets stay small on a CPU.
    """
    module = PreferenceModule(random_init={**TINY_CONFIG, "vocab_size": 1024}, layout=layout, loss=loss)
    module.configure_model()
    loss_value, grads = loss_and_grads(module.train(), batch([(3, 1, 1), (2, 1, 512), (4, 512, 400)], 1024))
    assert_finite(loss_value, grads)


def test_extreme_log_prob_gaps_from_the_model_are_finite():
    """A policy 1e4x sharper than its reference: per-sequence log-prob gaps above 1e4 nats. The fp32
    log-softmax keeps them finite and DPO's sigmoid saturates instead of overflowing."""
    module = make_module(loss="dpo").train()
    with torch.no_grad():
        module.policy.lm_head.weight.mul_(1e4)
    b = batch([(3, 4, 5), (2, 6, 1)])
    policy, reference = module.pair_logps(b)
    gap = (policy.chosen - reference.chosen).abs().max()
    assert gap > 1e4
    loss, grads = loss_and_grads(module, b)
    assert_finite(loss, grads)


def test_bf16_policy_trains_with_fp32_loss_and_finite_gradients():
    module = make_module(dtype="bf16", loss="dpo").train()
    assert next(module.policy.parameters()).dtype == torch.bfloat16
    policy, reference = module.pair_logps(batch([(3, 1, 2), (5, 40, 30)]))
    assert policy.chosen.dtype == reference.chosen.dtype == torch.float32
    out = module.loss(policy, reference)
    out.loss.backward()
    assert_finite(out.loss, [p.grad for p in module.policy.parameters() if p.grad is not None])


# ---------------------------------------------------------------- a non-finite loss in a run


class NaNAtCalls(DPOLoss):
    """DPO whose loss is NaN on the given (0-based) calls: a stand-in for a diverging run."""

    def __init__(self, bad_calls: tuple[int, ...]) -> None:
        super().__init__()
        self.bad_calls, self.calls = bad_calls, 0

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        out = super().pair_loss(policy, reference)
        if self.calls in self.bad_calls:
            out.losses = out.losses * math.nan
        self.calls += 1
        return out


class RowsSeen(Callback):
    def __init__(self) -> None:
        self.rows: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rows.append(list(batch.rows))


def fit(tmp_path, module: PreferenceModule, steps: int, callbacks: list) -> Trainer:
    pairs = [TokenizedPair(*p, row=i + 1) for i, p in enumerate(random_pairs(2 * steps, seed=3))]
    trainer = Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                      default_root_dir=tmp_path, callbacks=callbacks)
    trainer.fit(module, train_dataloaders=DataLoader(pairs, batch_size=2, collate_fn=collate_pairs))
    return trainer


def test_nonfinite_loss_stops_with_step_rows_and_last_checkpoint(tmp_path):
    module = PreferenceModule(random_init=TINY_CONFIG, loss=NaNAtCalls(bad_calls=(3,)), export_dir=None)
    rows = RowsSeen()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    with pytest.raises(NonFiniteLossError) as info:
        fit(tmp_path, module, steps=4, callbacks=[rows, checkpoints])
    assert str(info.value).startswith(
        f"non-finite training loss (nan) at step 3, epoch 0 on data rows {rows.rows[3]}; "
        f"last good checkpoint: {tmp_path / 'ckpt' / 'epoch=0-step=2.ckpt'} (check those rows, "
    )
    assert (tmp_path / "ckpt" / "epoch=0-step=2.ckpt").is_file()


def test_nonfinite_loss_before_any_checkpoint_says_so():
    module = make_module(loss=NaNAtCalls(bad_calls=(0,))).train()
    with pytest.raises(NonFiniteLossError, match=r"at step 0 on data rows \[1, 2\]; no checkpoint saved yet"):
        module.training_step(batch([(3, 2, 2), (2, 2, 3)]), 0)


def test_nonfinite_loss_skipped_and_counted_when_configured(tmp_path):
    module = PreferenceModule(random_init=TINY_CONFIG, loss=NaNAtCalls(bad_calls=(1, 3)), on_nonfinite="skip",
                              export_dir=None)
    trainer = fit(tmp_path, module, steps=5, callbacks=[])
    assert trainer.global_step == 5 and module.nonfinite_skipped == 2
    assert trainer.logged_metrics["train/nonfinite_skipped"] == 2.0
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())
    assert math.isfinite(trainer.logged_metrics["train/loss_epoch"])  # the skipped batches are not averaged in

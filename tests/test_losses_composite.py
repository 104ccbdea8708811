"""``sft`` as a loss of its own and the weighted sum of losses (``model.loss: [dpo, sft]``, RPO), issue 16.

Golden values on the batch of tests/test_losses.py (``golden_pair``): policy.chosen = [-4, -9], |y_w| = [2, 3],
policy.rejected = [-6, -8], |y_l| = [3, 2]; under InSPO chosen_plain = [-3, -12], rejected_plain = [-7, -6]. DPO at
beta = 0.1 gives [sp(-0.15), sp(0.15)] = [0.620957, 0.770957] with rewards [0.1, -0.1], [-0.05, 0.05]. TRL parity of
both: tests/test_trl_parity.py. Checkpoints, resume and the CLI: the end of this file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from torch.testing import assert_close

from inspo.errors import ConfigError
from inspo.hparams import loss_hparams, resume_mismatch
from inspo.losses import LOSSES, DPOLoss, LossOutput, PreferenceLoss, SFTLoss, SimPOLoss, WeightedLoss
from inspo.module import resolve_loss
from inspo.reference import resolve_reference
from tests.helpers import CONFIGS, TINY_YAML, contract_pair
from tests.test_losses import CONDITIONINGS, check_golden, golden_pair, sp

RPO_YAML = CONFIGS / "loss" / "rpo.yaml"


# ---------------------------------------------------------------- sft
@CONDITIONINGS
def test_sft_golden_token_mean(inspo: bool) -> None:
    """normalize = tokens (TRL's): L_i = -p_w,i / mean |y_w| with mean |y_w| = (2 + 3)/2 = 2.5.

    standard, p_w = chosen = [-4, -9]:  [4/2.5, 9/2.5]  = [1.6, 3.6], mean 2.6 = (4 + 9)/(2 + 3)
    InSPO, p_w = chosen_plain = [-3, -12]: [3/2.5, 12/2.5] = [1.2, 4.8], mean 3.0 = (3 + 12)/(2 + 3)
    rewards, log pi(y|x)/|y|: standard [-4/2, -9/3] = [-2, -3] and [-6/3, -8/2] = [-2, -4];
                               InSPO [-3/2, -12/3] = [-1.5, -4] and [-7/3, -6/2] = [-2.333333, -3].
    """
    if inspo:
        check_golden(SFTLoss(), True, [1.2, 4.8], [-1.5, -4.0], [-7 / 3, -3.0])
    else:
        check_golden(SFTLoss(), False, [1.6, 3.6], [-2.0, -3.0], [-2.0, -4.0])


@CONDITIONINGS
def test_sft_golden_sequence_mean_is_the_sft_weight_term(inspo: bool) -> None:
    """normalize = sequence: L_i = -p_w,i / |y_w,i|: standard [4/2, 9/3] = [2, 3] (mean 2.5, not 2.6);
    InSPO [3/2, 12/3] = [1.5, 4] (mean 2.75, not 3.0). Exactly what sft_weight = 1 adds to DPO (DPO's golden
    [0.620957, 0.770957] + these)."""
    nll = [1.5, 4.0] if inspo else [2.0, 3.0]
    rewards = ([-1.5, -4.0], [-7 / 3, -3.0]) if inspo else ([-2.0, -3.0], [-2.0, -4.0])
    check_golden(SFTLoss(normalize="sequence"), inspo, nll, *rewards)
    policy, reference = golden_pair(inspo)
    with_term = DPOLoss(beta=0.1, sft_weight=1.0)(policy, reference).losses
    assert_close(with_term, torch.tensor([sp(-0.15) + nll[0], sp(0.15) + nll[1]]), atol=1e-5, rtol=0)


@CONDITIONINGS
def test_sft_moves_only_with_log_pi_of_chosen_given_x(inspo: bool) -> None:
    """Raising log pi(y_w|x) (chosen_plain under InSPO, chosen under standard) lowers the loss; the conditioned a_w
    (InSPO), y_l's log-probs and the reference leave it exactly unchanged."""
    policy, reference = contract_pair(inspo)
    loss = SFTLoss()

    def moved(*fields: str) -> torch.Tensor:  # the loss with each field raised by 0.01 (standard: the plain alias too)
        return loss(dataclasses.replace(policy, **{f: getattr(policy, fields[0]) + 0.01 for f in fields}), None).loss

    with torch.no_grad():
        base = loss(policy, None).loss.item()
        assert moved("chosen_plain") < base if inspo else moved("chosen", "chosen_plain") < base
        flat = [("rejected",), ("rejected_plain",), ("chosen",)] if inspo else [("rejected", "rejected_plain")]
        for fields in flat:
            assert moved(*fields) == base, fields
        assert loss(policy, dataclasses.replace(reference, chosen=reference.chosen + 1)).loss.item() == base


def test_sft_needs_no_reference_and_reads_the_plain_log_probs() -> None:
    """``reference: auto`` is none for sft (copy for DPO); under InSPO the module computes log pi(y|x) for it."""
    assert not SFTLoss.requires_reference and SFTLoss().reads_plain_logps
    assert resolve_reference("auto", SFTLoss().requires_reference, lora=False).name == "none"
    assert resolve_reference("auto", SFTLoss().requires_reference, lora=True).name == "none"
    assert resolve_reference("auto", DPOLoss().requires_reference, lora=False).name == "copy"
    with pytest.raises(ConfigError, match="normalize"):
        SFTLoss(normalize="batch")


# ---------------------------------------------------------------- the weighted sum
@CONDITIONINGS
def test_weighted_dpo_plus_sft_golden(inspo: bool) -> None:
    """[dpo (beta 0.1), sft] with weights [1, 0.5]: DPO + 0.5 * sft (token mean, golden above).

    standard: [0.620957 + 0.5*1.6, 0.770957 + 0.5*3.6] = [1.420957, 2.570957]
    InSPO:    [0.620957 + 0.5*1.2, 0.770957 + 0.5*4.8] = [1.220957, 3.170957]  (DPO on a_w, a_l; sft on p_w)
    rewards: the first part's, DPO's: [0.1, -0.1] and [-0.05, 0.05].
    """
    sft = [1.2, 4.8] if inspo else [1.6, 3.6]
    expected = [sp(-0.15) + 0.5 * sft[0], sp(0.15) + 0.5 * sft[1]]
    assert_close(torch.tensor(expected), torch.tensor([1.220957, 3.170957] if inspo else [1.420957, 2.570957]),
                 atol=1e-6, rtol=0)
    check_golden(resolve_loss(["dpo", "sft"], [1.0, 0.5]), inspo, expected, [0.1, -0.1], [-0.05, 0.05])


@CONDITIONINGS
def test_sft_weight_is_the_sum_with_per_sequence_sft_bit_for_bit(inspo: bool) -> None:
    """``dpo`` with sft_weight a = [dpo, sft(normalize: sequence)] with weights [1, a]: the same tensors exactly."""
    policy, reference = golden_pair(inspo)
    old = DPOLoss(beta=0.1, sft_weight=0.5)(policy, reference)
    new = resolve_loss(["dpo", {"class_path": "sft", "init_args": {"normalize": "sequence"}}], [1.0, 0.5])
    out = new(policy, reference)
    assert torch.equal(out.losses, old.losses) and torch.equal(out.chosen_rewards, old.chosen_rewards)


def test_weights_default_to_one_and_flags_are_the_or_of_the_parts() -> None:
    assert resolve_loss(["dpo", "sft"]).weights == [1.0, 1.0]
    cases = {("simpo", "sft"): (False, True), ("dpo", "sft"): (True, True), ("simpo",): (False, False),
             ("dpo", "ipo"): (True, False), ("orpo", "simpo"): (False, True)}
    for names, (reference, plain) in cases.items():
        loss = resolve_loss(list(names))
        assert (loss.requires_reference, loss.reads_plain_logps) == (reference, plain), names
        policy, ref = golden_pair(inspo=True)
        assert torch.isfinite(loss(policy, ref if reference else None).losses).all()
    assert resolve_reference("auto", resolve_loss(["simpo", "sft"]).requires_reference, lora=False).name == "none"
    with pytest.raises(ValueError, match="requires reference"):
        resolve_loss(["simpo", "dpo"])(*golden_pair(False)[:1], None)


class _Counting(PreferenceLoss):
    requires_reference = False

    def pair_loss(self, policy, reference) -> LossOutput:
        return LossOutput(policy.chosen.float() * 0 + 7.0, policy.chosen.detach(), policy.rejected.detach())


def test_parts_can_be_instances_and_zero_weight_parts_add_nothing() -> None:
    loss = WeightedLoss([_Counting(), SimPOLoss(beta=2.0, gamma=1.0)], weights=[0.0, 2.0])
    policy, _ = golden_pair(False)
    assert_close(loss(policy).losses, torch.tensor([2 * sp(1.0), 2 * sp(-1.0)]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("loss", "weights", "message"), [
    (["dpo", "dpp"], None, "model.loss[1]: unknown loss 'dpp'; choose one of: "),
    (["dpo", {"class_path": "dpo", "init_args": {"beta": -1}}], None, "model.loss[1]: DPOLoss: beta must be > 0"),
    (["dpo", {"beta": 0.2}], None, "model.loss[1]: {'beta': 0.2} names no loss"),
    ([], None, "model.loss: a list of losses needs at least one name"),
    (["dpo", "sft"], [1.0], "model.loss_weights: 1 weights for the 2 losses of model.loss"),
    (["dpo", "sft"], [1.0, 1.0, 1.0], "model.loss_weights: 3 weights for the 2 losses"),
    (["dpo", "sft"], [1.0, -0.5], "model.loss_weights: every weight must be a finite number >= 0"),
    (["dpo", "sft"], [1.0, float("nan")], "model.loss_weights: every weight must be a finite number >= 0"),
    ("dpo", [1.0], "model.loss_weights is only read when model.loss is a list of losses"),
])
def test_bad_lists_are_one_config_error_line(loss, weights, message) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_loss(loss, weights)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_saved_form_round_trips_and_resume_compares_the_parts() -> None:
    """The checkpoint's ``loss`` is the weighted sum's class_path with every part's own; it builds the same loss, and
    a changed weight or part argument is a resume mismatch on model.loss (key order does not matter)."""
    loss = resolve_loss(["dpo", "sft"], [1.0, 0.5])
    saved = loss_hparams(loss)
    assert saved["class_path"] == "inspo.losses.weighted.WeightedLoss"
    assert saved["init_args"]["weights"] == [1.0, 0.5]
    assert [p["class_path"] for p in saved["init_args"]["losses"]] == ["inspo.losses.dpo.DPOLoss",
                                                                        "inspo.losses.sft.SFTLoss"]
    again = LOSSES.resolve(saved)
    assert loss_hparams(again) == saved
    policy, reference = golden_pair(True)
    assert torch.equal(again(policy, reference).losses, loss(policy, reference).losses)

    def reverse(value):  # every dict's keys in reverse order, as another writer might store them
        if isinstance(value, dict):
            return {k: reverse(value[k]) for k in reversed(value)}
        return [reverse(v) for v in value] if isinstance(value, list) else value

    reordered = reverse(saved)
    assert list(reordered["init_args"]["losses"][0]["init_args"]) != list(saved["init_args"]["losses"][0]["init_args"])
    assert resume_mismatch({"loss": reordered}, {"loss": saved}) is None
    for other in (resolve_loss(["dpo", "sft"], [1.0, 1.0]), resolve_loss([{"class_path": "dpo", "init_args": {
            "beta": 0.2}}, "sft"], [1.0, 0.5]), resolve_loss(["sft", "dpo"], [0.5, 1.0])):
        assert resume_mismatch({"loss": saved}, {"loss": loss_hparams(other)})[0] == "loss"


def test_rpo_config_is_dpo_plus_sft_with_weight_one() -> None:
    """configs/loss/rpo.yaml: RPO's alpha = 1 (the paper; TRL's former rpo_alpha default recommendation)."""
    model = yaml.safe_load(RPO_YAML.read_text())["model"]
    loss = resolve_loss(model["loss"], model["loss_weights"])
    assert [type(p) for p in loss.parts] == [DPOLoss, SFTLoss] and loss.weights == [1.0, 1.0]
    assert loss.parts[0].beta == 0.1 and loss.parts[1].normalize == "tokens"


# ---------------------------------------------------------------- training, checkpoints and the CLI
@CONDITIONINGS
def test_weighted_sum_trains_in_process(tmp_path: Path, inspo: bool) -> None:
    """Two optimizer steps of [dpo, sft] with weights [1, 0.5] on the tiny model: the step's loss is the weighted
    sum of the parts on the module's own log-probs (under InSPO: DPO on a_w, a_l; sft on log pi(y_w|x)), every
    trainable weight the loss reaches moves, and the loss is finite."""
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from inspo.data.datamodule import TokenizedPair, collate_pairs
    from tests.helpers import batch, make_module, random_pairs

    module = make_module(loss=["dpo", "sft"], loss_weights=[1.0, 0.5], conditioning="inspo" if inspo else "standard",
                         export_dir=None)
    assert module.reference is not None and module.hparams["loss"] == loss_hparams(module.loss)
    with torch.no_grad():
        policy, reference = module.pair_logps(batch(3))
        assert (policy.chosen_plain is not None) and (policy.conditioned == inspo)
        if inspo:
            assert not torch.allclose(policy.chosen, policy.chosen_plain)
        parts = [DPOLoss()(policy, reference).loss, SFTLoss()(policy, None).loss]
        assert_close(module.loss(policy, reference).loss, parts[0] + 0.5 * parts[1], atol=1e-6, rtol=0)
    before = {k: v.detach().clone() for k, v in module.policy.named_parameters() if v.requires_grad}
    pairs = [TokenizedPair(*p, row=i + 1) for i, p in enumerate(random_pairs(4, seed=3))]
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                      limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=DataLoader(pairs, batch_size=2, collate_fn=collate_pairs))
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss_step"])
    moved = [k for k, v in module.policy.named_parameters() if v.requires_grad and not torch.equal(v, before[k])]
    assert len(moved) > 0.9 * len(before)


def _fit(root: Path, *args: str) -> None:
    from inspo.cli import main
    from tests.fit_runs import QUICK

    main(["fit", "--config", str(TINY_YAML), "--trainer.default_root_dir", str(root),
          "--trainer.logger.init_args.save_dir", str(root), *QUICK, *args])


def test_weighted_sum_checkpoint_resume_and_load(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``inspo fit --model.loss '[dpo, sft]' --model.loss_weights '[1, 0.5]'`` (InSPO, tiny.yaml) for 2 steps;
    ``--ckpt_path last`` with the same list resumes to step 3; other weights are refused in one line naming
    model.loss; ``PreferenceModule.load_from_checkpoint`` rebuilds the same weighted sum."""
    from inspo.module import PreferenceModule

    loss_args = ["--model.loss", "[dpo, sft]", "--model.loss_weights", "[1, 0.5]", "--checkpoint.every_n_train_steps",
                 "1"]
    _fit(tmp_path, *loss_args, "--trainer.max_steps", "2")
    _fit(tmp_path, *loss_args, "--trainer.max_steps", "3", "--ckpt_path", "last")
    target = (tmp_path / "inspo" / "version_1" / "checkpoints" / "last.ckpt").resolve()
    assert torch.load(target, weights_only=True, map_location="cpu")["global_step"] == 3
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        _fit(tmp_path, "--model.loss", "[dpo, sft]", "--model.loss_weights", "[1, 1]", "--trainer.max_steps", "4",
             "--ckpt_path", "last")
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith("inspo: error: cannot resume from ")
    assert "model.loss=" in err[0] and "weights=[1.0, 0.5]" in err[0]
    loaded = PreferenceModule.load_from_checkpoint(target)
    assert type(loaded.loss) is WeightedLoss and loaded.loss.weights == [1.0, 0.5]
    assert [type(p) for p in loaded.loss.parts] == [DPOLoss, SFTLoss]


def test_print_config_of_a_list_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--print_config`` of ``[dpo, sft]`` parses back to the same config, and that config builds the same loss."""
    from inspo.cli import main

    printed = []
    for config in (RPO_YAML, tmp_path / "printed.yaml"):
        with pytest.raises(SystemExit):
            main(["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--config", str(config), "--print_config"])
        printed.append(capsys.readouterr().out)
        (tmp_path / "printed.yaml").write_text(printed[-1])
    assert printed[0] == printed[1]
    model = yaml.safe_load(printed[0])["model"]
    assert model["loss_weights"] == [1.0, 1.0]
    assert loss_hparams(resolve_loss(model["loss"], model["loss_weights"])) == loss_hparams(resolve_loss(["dpo", "sft"]))

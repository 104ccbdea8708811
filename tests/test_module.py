"""PreferenceModule: the pair forward, the frozen reference, step-0 values, configuration errors."""

from __future__ import annotations

import math

import pytest
import torch

from inspo.conditioning import REFERENCE_SEQUENCES
from inspo.errors import ConfigError
from inspo.losses import LOSSES, DPOLoss, LossOutput, PreferenceLoss, SimPOLoss
from inspo.module import PreferenceModule
from tests.helpers import batch, logp, make_module


@pytest.mark.parametrize("layout", ["separate", "packed"])
def test_inspo_logps_equal_separately_built_sequences(layout):
    """a_w = log pi(y_w|x,y_l), a_l = log pi(y_l|x,y_w) from [x,y_l,y_w] / [x,y_w,y_l]; reference from [x,y]."""
    module = make_module(conditioning="inspo", layout=layout, loss=DPOLoss(sft_weight=0.1))  # SFT: reads log pi(y|x)
    with torch.no_grad():
        module.policy.lm_head.weight.add_(0.01)  # policy != reference, so a mix-up would show
    b = batch()
    policy, reference = module.pair_logps(b)
    for i, (x, yw, yl) in enumerate(zip(b.prompt, b.chosen, b.rejected)):
        assert policy.chosen[i].item() == pytest.approx(logp(module.policy, x + yl, yw), abs=1e-5)
        assert policy.rejected[i].item() == pytest.approx(logp(module.policy, x + yw, yl), abs=1e-5)
        assert policy.chosen_plain[i].item() == pytest.approx(logp(module.policy, x, yw), abs=1e-5)
        assert policy.rejected_plain[i].item() == pytest.approx(logp(module.policy, x, yl), abs=1e-5)
        # The reference is unconditioned (the authors' code conditioned it: that is a bug we must not repeat).
        assert reference.chosen[i].item() == pytest.approx(logp(module.reference, x, yw), abs=1e-5)
        assert reference.rejected[i].item() == pytest.approx(logp(module.reference, x, yl), abs=1e-5)
        assert policy.chosen_tokens[i].item() == len(yw) and policy.rejected_tokens[i].item() == len(yl)


@pytest.mark.parametrize("layout", ["separate", "packed"])
def test_inspo_skips_the_plain_targets_a_loss_never_reads(layout):
    """Plain DPO under InSPO reads a_w, a_l only: log pi(y|x) is not computed, a_w / a_l are unchanged, and a loss
    that reads the plain log-probs without declaring it gets an error instead of the conditioned values."""
    with_plain = make_module(conditioning="inspo", layout=layout, loss=DPOLoss(sft_weight=0.1))
    without = make_module(conditioning="inspo", layout=layout, loss="dpo")
    without.policy.load_state_dict(with_plain.policy.state_dict())
    b = batch()
    full, _ = with_plain.pair_logps(b)
    policy, _ = without.pair_logps(b)
    assert policy.chosen_plain is None and policy.rejected_plain is None
    torch.testing.assert_close(policy.chosen, full.chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(policy.rejected, full.rejected, atol=1e-5, rtol=0)

    class ReadsPlain(DPOLoss):  # reads log pi(y|x) without setting reads_plain_logps
        def pair_loss(self, policy, reference):
            return LossOutput(-policy.chosen_plain.float(), policy.chosen, policy.rejected)

    with pytest.raises(ValueError, match="set reads_plain_logps = True"):
        ReadsPlain()(policy, _)
    assert make_module(conditioning="inspo", loss="orpo").pair_logps(b)[0].chosen_plain is not None


def test_a_new_loss_does_not_pay_for_plain_logps_unless_it_says_so():
    """A loss subclass that declares nothing reads a_w, a_l only: under InSPO the training step scores no
    log pi(y|x) targets for it (they were computed for every new loss before); validation still does."""

    class NewLoss(PreferenceLoss):
        def pair_loss(self, policy, reference):
            return LossOutput(-(policy.chosen - policy.rejected), policy.chosen, policy.rejected)

    class NewPlainLoss(NewLoss):
        reads_plain_logps = True

    b = batch()
    module = make_module(conditioning="inspo", loss=NewLoss())
    assert module.pair_logps(b)[0].chosen_plain is None
    assert module.pair_logps(b, plain=True)[0].chosen_plain is not None  # validation: the plain_* metrics
    assert make_module(conditioning="inspo", loss=NewPlainLoss()).pair_logps(b)[0].chosen_plain is not None


def test_standard_logps_are_unconditioned():
    module = make_module(conditioning="standard")
    b = batch()
    policy, _ = module.pair_logps(b)
    assert policy.chosen_plain is policy.chosen and not policy.conditioned  # log pi(y|x) is what was scored
    for i, (x, yw, yl) in enumerate(zip(b.prompt, b.chosen, b.rejected)):
        assert policy.chosen[i].item() == pytest.approx(logp(module.policy, x, yw), abs=1e-5)
        assert policy.rejected[i].item() == pytest.approx(logp(module.policy, x, yl), abs=1e-5)


def test_dpo_loss_is_ln2_at_step_zero_standard():
    """Policy == reference: every log-ratio is 0, so L = -log sigma(0) = ln 2 = 0.693147."""
    module = make_module(conditioning="standard", loss="dpo")
    out = module.loss(*module.pair_logps(batch()))
    torch.testing.assert_close(out.loss, torch.tensor(math.log(2)), atol=1e-6, rtol=0)


def test_dpo_loss_is_ln2_at_step_zero_inspo_when_context_carries_nothing():
    """Under InSPO the policy is conditioned (a_w = log pi(y_w|x,y_l)) and the reference is not (log pi_ref(y_w|x)).

    With policy == reference the log-ratios are a_w - r_w = log pi(y_w|x,y_l) - log pi(y_w|x): zero exactly when
    seeing the alternative changes nothing. We make the model context-blind (attention output projections set to
    0: each position then depends on its own token only) and end prompt and responses with the same token (as the
    chat template does: "assistant\n" and "<|im_end|>\n"), so the first response token is predicted from the same
    token either way. Then InSPO's step-0 loss is ln 2 too.
    """
    module = make_module(conditioning="inspo", loss="dpo")
    for model in (module.policy, module.reference):
        for layer in model.model.layers:
            torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
    b = batch()
    for seq in (*b.prompt, *b.chosen, *b.rejected):
        seq[-1] = 198
    out = module.loss(*module.pair_logps(b))
    torch.testing.assert_close(out.loss, torch.tensor(math.log(2)), atol=1e-6, rtol=0)


def test_inspo_reference_is_unconditioned_so_step_zero_is_not_ln2_in_general():
    """With a context-sensitive model the InSPO ratios at step 0 are log pi(y|x,y_alt) - log pi(y|x) != 0.

    The authors' released code conditioned the reference as well, which would make this exactly ln 2.
    """
    module = make_module(conditioning="inspo", loss="dpo")
    policy, reference = module.pair_logps(batch())
    out = module.loss(policy, reference)
    h = (policy.chosen - reference.chosen) - (policy.rejected - reference.rejected)
    torch.testing.assert_close(out.loss, -torch.nn.functional.logsigmoid(0.1 * h).mean(), atol=1e-6, rtol=0)
    assert h.abs().max() > 1e-3
    assert abs(out.loss.item() - math.log(2)) > 1e-6
    # the plain (unconditioned) policy terms do equal the reference at step 0
    plain = module.score(module.policy, batch(), REFERENCE_SEQUENCES)
    torch.testing.assert_close(plain.chosen, reference.chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.rejected, reference.rejected, atol=1e-5, rtol=0)


def test_reference_is_frozen_and_stays_in_eval_mode():
    module = make_module()
    module.train()
    assert not module.reference.training and module.policy.training
    assert not any(p.requires_grad for p in module.reference.parameters())
    loss = module.loss(*module.pair_logps(batch())).loss
    loss.backward()
    assert all(p.grad is None for p in module.reference.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.policy.parameters())


def test_reference_is_not_saved_in_checkpoints():
    module = make_module()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and not any(k.startswith("reference.") for k in checkpoint["state_dict"])


def test_reference_auto_follows_the_loss():
    assert make_module(loss="simpo").reference is None
    assert make_module(loss="dpo").reference is not None
    assert isinstance(PreferenceModule(loss=SimPOLoss(beta=2.0)).loss, SimPOLoss)


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="unknown loss 'dpoo'; choose one of: " + ", ".join(sorted(LOSSES))):
        PreferenceModule(loss="dpoo")
    with pytest.raises(ConfigError, match="needs a reference model"):
        PreferenceModule(loss=DPOLoss(), reference="none")
    with pytest.raises(ConfigError, match="needs its model: --model.reference path --model.reference.model NAME"):
        PreferenceModule(reference="path")
    with pytest.raises(ConfigError, match="choose one of: inspo, standard"):
        make_module(conditioning="insp")

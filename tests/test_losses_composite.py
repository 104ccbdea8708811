"""``sft`` as a loss of its own, issue 16.

Golden values on the batch of tests/test_losses.py (``golden_pair``): policy.chosen = [-4, -9], |y_w| = [2, 3],
policy.rejected = [-6, -8], |y_l| = [3, 2]; under InSPO chosen_plain = [-3, -12], rejected_plain = [-7, -6]. DPO at
beta = 0.1 gives [sp(-0.15), sp(0.15)] = [0.620957, 0.770957] with rewards [0.1, -0.1], [-0.05, 0.05]. TRL parity:
tests/test_trl_parity.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.testing import assert_close

from inspo.errors import ConfigError
from inspo.losses import DPOLoss, SFTLoss
from inspo.reference import resolve_reference
from tests.helpers import contract_pair
from tests.test_losses import CONDITIONINGS, check_golden, golden_pair, sp


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

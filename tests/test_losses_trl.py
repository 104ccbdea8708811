"""Hand-derived golden values of TRL's pairwise loss types (issue 16), on the batch of tests/test_losses.py.

golden_pair: chosen ratio c = [1, -1], rejected ratio l = [-0.5, 0.5], h = c - l = [1.5, -1.5], |y_w| = [2, 3],
|y_l| = [3, 2]; with beta = 1 the rewards are u_w = c, u_l = l. Every loss here is also checked against TRL's own
code in tests/test_trl_parity.py, and by the contract over every registered loss in tests/test_losses.py.
sp(x) = log(1 + e^x), so -log sigma(z) = sp(-z).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from inspo.losses import (
    LOSSES,
    AOTLoss,
    AOTUnpairedLoss,
    APODownLoss,
    APOZeroLoss,
    BCOPairLoss,
    DiscoPOPLoss,
    DPOLoss,
    EXOPairLoss,
    NCAPairLoss,
    PairLogps,
    PreferenceLoss,
    SigmoidNormLoss,
    SPPOHardLoss,
)
from tests.test_losses import CONDITIONINGS, check_golden, sp, t


@CONDITIONINGS
def test_nca_pair_golden(inspo: bool) -> None:
    """beta = 1: u_w = [1, -1], u_l = [-0.5, 0.5]; L = sp(-u_w) + 0.5*sp(u_w) + 0.5*sp(u_l).

    sp(1) = 1.313262, sp(-1) = 0.313262, sp(0.5) = 0.974077, sp(-0.5) = 0.474077
    row 1: sp(-1) + 0.5*sp(1) + 0.5*sp(-0.5) = 0.313262 + 0.656631 + 0.237038 = 1.206931
    row 2: sp(1) + 0.5*sp(-1) + 0.5*sp(0.5)  = 1.313262 + 0.156631 + 0.487038 = 1.956931
    """
    expected = [sp(-1) + 0.5 * sp(1) + 0.5 * sp(-0.5), sp(1) + 0.5 * sp(-1) + 0.5 * sp(0.5)]
    assert_close(torch.tensor(expected), torch.tensor([1.206931, 1.956931]), atol=1e-6, rtol=0)
    check_golden(NCAPairLoss(beta=1.0), inspo, expected, [1.0, -1.0], [-0.5, 0.5])


@CONDITIONINGS
def test_bco_pair_golden(inspo: bool) -> None:
    """beta = 1: L = -log sigma(u_w) - log sigma(-u_l) = sp(-u_w) + sp(u_l).

    row 1: sp(-1) + sp(-0.5) = 0.313262 + 0.474077 = 0.787339
    row 2: sp(1) + sp(0.5)   = 1.313262 + 0.974077 = 2.287339
    """
    expected = [sp(-1) + sp(-0.5), sp(1) + sp(0.5)]
    assert_close(torch.tensor(expected), torch.tensor([0.787339, 2.287339]), atol=1e-6, rtol=0)
    check_golden(BCOPairLoss(beta=1.0), inspo, expected, [1.0, -1.0], [-0.5, 0.5])


@CONDITIONINGS
def test_sppo_hard_golden(inspo: bool) -> None:
    """beta = 0.5: targets +-1/(2*0.5) = +-1. L = (c - 1)^2 + (l + 1)^2 with c = [1, -1], l = [-0.5, 0.5]:

    row 1: (1 - 1)^2 + (-0.5 + 1)^2 = 0 + 0.25 = 0.25
    row 2: (-1 - 1)^2 + (0.5 + 1)^2 = 4 + 2.25 = 6.25
    rewards: 0.5*[1, -1] = [0.5, -0.5] and 0.5*[-0.5, 0.5] = [-0.25, 0.25].
    """
    check_golden(SPPOHardLoss(beta=0.5), inspo, [0.25, 6.25], [0.5, -0.5], [-0.25, 0.25])


@CONDITIONINGS
def test_apo_zero_golden(inspo: bool) -> None:
    """beta = 1: L = 1 - sigma(u_w) + sigma(u_l); sigma(1) = 0.731059, sigma(-0.5) = 0.377541.

    row 1: 1 - sigma(1) + sigma(-0.5) = 1 - 0.731059 + 0.377541 = 0.646482
    row 2: 1 - sigma(-1) + sigma(0.5) = 1 - 0.268941 + 0.622459 = 1.353518
    """
    check_golden(APOZeroLoss(beta=1.0), inspo, [0.646482, 1.353518], [1.0, -1.0], [-0.5, 0.5])


@CONDITIONINGS
def test_apo_down_golden(inspo: bool) -> None:
    """beta = 1: L = sigma(u_w) + 1 - sigma(u_w - u_l), u_w - u_l = beta*h = [1.5, -1.5]; sigma(1.5) = 0.817574.

    row 1: sigma(1) + 1 - sigma(1.5)   = 0.731059 + 1 - 0.817574 = 0.913484 (0.7310586 - 0.8175745 + 1)
    row 2: sigma(-1) + 1 - sigma(-1.5) = 0.268941 + 1 - 0.182426 = 1.086516
    """
    check_golden(APODownLoss(beta=1.0), inspo, [0.913484, 1.086516], [1.0, -1.0], [-0.5, 0.5])


@CONDITIONINGS
def test_exo_pair_golden(inspo: bool) -> None:
    """beta = 1, eps = 0.1: z = beta*h = [1.5, -1.5], q = sigma(z); L = q (log q - log 0.9) + (1 - q) (log(1 - q)
    - log 0.1).

    log sigma(1.5) = -0.201413, log sigma(-1.5) = -1.701413, log 0.9 = -0.105361, log 0.1 = -2.302585
    row 1: 0.817574*(-0.201413 + 0.105361) + 0.182426*(-1.701413 + 2.302585) = -0.078530 + 0.109669 = 0.031139
    row 2: 0.182426*(-1.701413 + 0.105361) + 0.817574*(-0.201413 + 2.302585) = -0.291161 + 1.717864 = 1.426704
    (row 1 sits below the optimum z* = log(0.9/0.1) = 2.197225, where the loss is 0.)
    """
    s1, s2 = 1 / (1 + math.exp(-1.5)), 1 / (1 + math.exp(1.5))
    expected = [s1 * (math.log(s1) - math.log(0.9)) + s2 * (math.log(s2) - math.log(0.1)),
                s2 * (math.log(s2) - math.log(0.9)) + s1 * (math.log(s1) - math.log(0.1))]
    assert_close(torch.tensor(expected), torch.tensor([0.031139, 1.426704]), atol=1e-6, rtol=0)
    check_golden(EXOPairLoss(beta=1.0, label_smoothing=0.1), inspo, expected, [1.0, -1.0], [-0.5, 0.5])


@CONDITIONINGS
def test_discopop_golden(inspo: bool) -> None:
    """beta = 1, tau = 1 (so both parts show): z = [1.5, -1.5], m = sigma(z); L = (1 - m) sp(-z) + m exp(-z).

    row 1: m = 0.817574: 0.182426*sp(-1.5) + 0.817574*exp(-1.5) = 0.182426*0.201413 + 0.817574*0.223130
           = 0.036743 + 0.182426 = 0.219168   (m exp(-z) = sigma(z) e^-z = sigma(-z) here)
    row 2: m = 0.182426: 0.817574*sp(1.5) + 0.182426*exp(1.5) = 0.817574*1.701413 + 0.182426*4.481689
           = 1.391032 + 0.817574 = 2.208607
    """
    m = 1 / (1 + math.exp(-1.5))
    expected = [(1 - m) * sp(-1.5) + m * math.exp(-1.5), m * sp(1.5) + (1 - m) * math.exp(1.5)]
    assert_close(torch.tensor(expected), torch.tensor([0.219168, 2.208607]), atol=1e-6, rtol=0)
    check_golden(DiscoPOPLoss(beta=1.0, tau=1.0), inspo, expected, [1.0, -1.0], [-0.5, 0.5])


def test_discopop_is_finite_where_the_plain_product_is_nan() -> None:
    """z = beta*h = -100: m = sigma(-100/0.05) underflows to 0 and exp(100) overflows in fp32, so TRL 1.16's
    m * exp(-z) is 0 * inf = NaN. The true value: (1 - m) sp(100) + exp(log sigma(-2000) + 100) = 100 + ~0."""
    policy = PairLogps(chosen=t(-1000.0, requires_grad=True), rejected=t(0.0), chosen_tokens=t(1), rejected_tokens=t(1))
    reference = PairLogps(chosen=t(0.0), rejected=t(0.0), chosen_tokens=t(1), rejected_tokens=t(1))
    out = DiscoPOPLoss(beta=0.1, tau=0.05)(policy, reference)
    z = torch.tensor(-100.0)
    assert torch.isnan(torch.sigmoid(z / 0.05) * torch.exp(-z))  # the plain product
    assert_close(out.losses, torch.tensor([100.0]), atol=1e-4, rtol=0)
    out.loss.backward()
    assert_close(policy.chosen.grad, torch.tensor([-0.1]), atol=1e-6, rtol=0)  # d sp(-z)/d chosen = -beta*sigma(-z)


def test_discopop_rises_with_the_gap_near_zero() -> None:
    """LRML is not monotone (as its docstring says): at tau = 0.05, dL/dz > 0 for about -0.115 < z < 0.07.

    At z = 0: m = 1/2, dm/dz = 1/(4 tau) = 5, so dL/dz = -5 log 2 - 0.5*0.5 + 5*1 - 0.5*1 = 0.784264 > 0; at
    z = 0.15 (the contract pair's row 1): -0.625203 < 0.
    """
    z = torch.tensor([0.0, 0.15], requires_grad=True)
    zero = torch.zeros(2)
    policy = PairLogps(chosen=z, rejected=zero, chosen_tokens=torch.ones(2), rejected_tokens=torch.ones(2))
    reference = PairLogps(chosen=zero, rejected=zero, chosen_tokens=torch.ones(2), rejected_tokens=torch.ones(2))
    DiscoPOPLoss(beta=1.0, tau=0.05)(policy, reference).losses.sum().backward()
    assert_close(z.grad, torch.tensor([5 - 5 * math.log(2) - 0.75, -0.625203]), atol=1e-5, rtol=0)


@CONDITIONINGS
def test_sigmoid_norm_golden(inspo: bool) -> None:
    """beta = 1, per-token log-ratios: c/|y_w| = [1/2, -1/3], l/|y_l| = [-0.5/3, 0.5/2] = [-1/6, 1/4].

    gap = [1/2 + 1/6, -1/3 - 1/4] = [2/3, -7/12]; L = [sp(-2/3), sp(7/12)] = [0.414370, 1.026759]
    rewards, per token: [0.5, -1/3] and [-1/6, 0.25]. (Summed log-ratios would give h = [1.5, -1.5].)
    """
    expected = [sp(-2 / 3), sp(7 / 12)]
    assert_close(torch.tensor(expected), torch.tensor([0.414370, 1.026759]), atol=1e-6, rtol=0)
    check_golden(SigmoidNormLoss(beta=1.0), inspo, expected, [0.5, -1 / 3], [-1 / 6, 0.25])


@CONDITIONINGS
def test_aot_golden(inspo: bool) -> None:
    """beta = 1: margins m = policy.chosen - policy.rejected = [-4+6, -9+8] = [2, -1], m_ref = [-5+5.5, -8+8.5]
    = [0.5, 0.5]; sorted: [-1, 2] and [0.5, 0.5], d = [-1.5, 1.5]; L = [sp(1.5), sp(-1.5)] = [1.701413, 0.201413].

    (DPO pairs them by row instead: h = [1.5, -1.5] gives [sp(-1.5), sp(1.5)]; the mean is the same here only because
    m_ref is constant.) Rewards, unsorted: [1, -1] and [-0.5, 0.5]. With eps = 0.2: L_j = 0.8 sp(-d_j) + 0.2 sp(d_j):
    0.8*1.701413 + 0.2*0.201413 = 1.401413 and 0.8*0.201413 + 0.2*1.701413 = 0.501413.
    """
    assert_close(torch.tensor([sp(1.5), sp(-1.5)]), torch.tensor([1.701413, 0.201413]), atol=1e-6, rtol=0)
    check_golden(AOTLoss(beta=1.0), inspo, [sp(1.5), sp(-1.5)], [1.0, -1.0], [-0.5, 0.5])
    check_golden(AOTLoss(beta=1.0, label_smoothing=0.2), inspo, [1.401413, 0.501413], [1.0, -1.0], [-0.5, 0.5])


@CONDITIONINGS
def test_aot_unpaired_golden(inspo: bool) -> None:
    """beta = 1: c = [1, -1] sorted [-1, 1]; l = [-0.5, 0.5] sorted [-0.5, 0.5]; d = [-0.5, 0.5];
    L = [sp(0.5), sp(-0.5)] = [0.974077, 0.474077]. Rewards, unsorted: [1, -1] and [-0.5, 0.5].
    """
    assert_close(torch.tensor([sp(0.5), sp(-0.5)]), torch.tensor([0.974077, 0.474077]), atol=1e-6, rtol=0)
    check_golden(AOTUnpairedLoss(beta=1.0), inspo, [sp(0.5), sp(-0.5)], [1.0, -1.0], [-0.5, 0.5])


def test_aot_unpaired_gradient_follows_the_sort() -> None:
    """Each pair's gradient comes from the sorted position its value lands in, not from its row.

    beta = 1, mean over 2 positions: pair 1's c = 1 sits at position 2 (d = 0.5), pair 2's c = -1 at position 1
    (d = -0.5); dL/dc = -(1/2) sigma(-d): pair 1: -0.5 sigma(-0.5) = -0.188771, pair 2: -0.5 sigma(0.5) = -0.311230.
    For l: l = -0.5 (pair 1) at position 1 (d = -0.5): +0.5 sigma(0.5) = 0.311230; pair 2 at position 2: 0.188771.
    """
    policy = PairLogps(chosen=torch.tensor([-4.0, -9.0], requires_grad=True),
                       rejected=torch.tensor([-6.0, -8.0], requires_grad=True),
                       chosen_tokens=torch.tensor([2.0, 3.0]), rejected_tokens=torch.tensor([3.0, 2.0]))
    reference = PairLogps(chosen=torch.tensor([-5.0, -8.0]), rejected=torch.tensor([-5.5, -8.5]),
                          chosen_tokens=torch.tensor([2.0, 3.0]), rejected_tokens=torch.tensor([3.0, 2.0]))
    AOTUnpairedLoss(beta=1.0)(policy, reference).loss.backward()
    assert_close(policy.chosen.grad, torch.tensor([-0.188771, -0.311230]), atol=1e-6, rtol=0)
    assert_close(policy.rejected.grad, torch.tensor([0.311230, 0.188771]), atol=1e-6, rtol=0)


def test_trl_name_sigmoid_is_dpo() -> None:
    """TRL's ``loss_type="sigmoid"`` resolves to DPO (an alias, not a second registered loss)."""
    assert type(LOSSES.resolve("sigmoid")) is DPOLoss and "sigmoid" not in LOSSES


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (NCAPairLoss, {"beta": 0.0}, "beta"),
        (BCOPairLoss, {"beta": -1.0}, "beta"),
        (SPPOHardLoss, {"beta": 0.0}, "beta"),
        (APOZeroLoss, {"beta": 0.0}, "beta"),
        (APODownLoss, {"beta": float("nan")}, "beta"),
        (EXOPairLoss, {"label_smoothing": 0.0}, "label_smoothing"),
        (EXOPairLoss, {"label_smoothing": 0.5}, "label_smoothing"),
        (DiscoPOPLoss, {"tau": 0.0}, "tau"),
        (SigmoidNormLoss, {"beta": 0.0}, "beta"),
        (AOTLoss, {"beta": 0.0}, "beta"),
        (AOTUnpairedLoss, {"label_smoothing": 0.5}, "label_smoothing"),
    ],
)
def test_bad_hyperparameters_raise(cls: type[PreferenceLoss], kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)

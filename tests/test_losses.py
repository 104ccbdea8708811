"""Tests of inspo.losses: hand-derived golden values, a contract every registered loss meets, the authors' bugs.

Notation in the docstrings: sp(x) = log(1 + e^x) = -log sigma(-x), so -log sigma(z) = sp(-z).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from inspo.errors import ConfigError
from inspo.losses import (
    LOSSES,
    DPOLoss,
    HingeLoss,
    IPOLoss,
    LossOutput,
    OneSidedLoss,
    ORPOLoss,
    PairLogps,
    PreferenceLoss,
    RDPOLoss,
    RobustDPOLoss,
    SimPOLoss,
    logratios,
    register_loss,
)
from inspo.losses.orpo import log_odds
from tests.helpers import contract_pair, direction_violations
from tests.helpers import run_loss as run

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "loss"
LOSS_NAMES = sorted(LOSSES)
# Losses that by design ignore y_w's log-ratio (documented in the class): the contract expects them to be exactly
# flat in policy.chosen and reference.chosen instead of decreasing / increasing.
FLAT_IN_CHOSEN = {"onesided"}
# Losses that by design lower log pi(y_w) at the contract pair (documented in the class): APO-down is for chosen
# answers worse than the model's own; it lowers both responses, y_l more. The contract expects the opposite sign in
# policy.chosen / reference.chosen for them (rejected as for every loss).
LOWERS_CHOSEN = {"apo_down"}
# Losses with no pair term (documented in the class): only log pi(y_w|x) (policy.chosen_plain; policy.chosen under
# standard conditioning) moves them. The contract checks that field instead; tests/test_losses_composite.py checks
# their directions.
CHOSEN_NLL_ONLY = {"sft"}
CONDITIONINGS = pytest.mark.parametrize("inspo", [False, True], ids=["standard", "inspo"])


def sp(x: float) -> float:
    """softplus, in plain python: log(1 + e^x)."""
    return math.log1p(math.exp(x))


def t(*values: float, requires_grad: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, requires_grad=requires_grad)


# ---------------------------------------------------------------------------------------------------------------
# Golden values
# ---------------------------------------------------------------------------------------------------------------


def golden_pair(inspo: bool) -> tuple[PairLogps, PairLogps]:
    """The hand-made batch (B=2) of every golden test.

    policy.chosen    = [-4, -9]   chosen_tokens   = [2, 3]   reference.chosen   = [-5, -8]
    policy.rejected  = [-6, -8]   rejected_tokens = [3, 2]   reference.rejected = [-5.5, -8.5]
    chosen ratio   = [-4+5, -9+8]     = [1, -1]
    rejected ratio = [-6+5.5, -8+8.5] = [-0.5, 0.5]
    h = chosen ratio - rejected ratio = [1.5, -1.5]
    (reference.chosen != reference.rejected, so swapping the two reference terms changes h: [2.5, -0.5])
    average log-probs: chosen [-4/2, -9/3] = [-2, -3], rejected [-6/3, -8/2] = [-2, -4]
    InSPO: chosen/rejected are the conditioned a_w, a_l (same numbers), and chosen_plain = [-3, -12],
    rejected_plain = [-7, -6] are the unconditioned ones; only ORPO's NLL and the SFT term may read them.
    """
    policy = PairLogps(chosen=t(-4.0, -9.0), rejected=t(-6.0, -8.0), chosen_tokens=t(2, 3), rejected_tokens=t(3, 2))
    if inspo:
        policy = dataclasses.replace(policy, chosen_plain=t(-3.0, -12.0), rejected_plain=t(-7.0, -6.0))
    reference = PairLogps(chosen=t(-5.0, -8.0), rejected=t(-5.5, -8.5), chosen_tokens=t(2, 3), rejected_tokens=t(3, 2))
    return policy, reference


def check_golden(
    loss: PreferenceLoss,
    inspo: bool,
    losses: list[float],
    chosen_rewards: list[float],
    rejected_rewards: list[float],
) -> None:
    policy, reference = golden_pair(inspo)
    out = loss(policy, reference if loss.requires_reference else None)
    assert_close(out.losses, torch.tensor(losses), atol=1e-4, rtol=0)
    assert_close(out.loss, torch.tensor(sum(losses) / len(losses)), atol=1e-4, rtol=0)
    assert_close(out.chosen_rewards, torch.tensor(chosen_rewards), atol=1e-4, rtol=0)
    assert_close(out.rejected_rewards, torch.tensor(rejected_rewards), atol=1e-4, rtol=0)


@CONDITIONINGS
def test_dpo_golden(inspo: bool) -> None:
    """beta = 0.1: beta*h = [0.15, -0.15].

    L = -log sigma(beta*h) = [sp(-0.15), sp(0.15)] = [log(1 + 0.860708), log(1 + 1.161834)] = [0.620957, 0.770957]
    rewards: chosen 0.1*[1, -1] = [0.1, -0.1], rejected 0.1*[-0.5, 0.5] = [-0.05, 0.05]. Same under InSPO.
    """
    check_golden(DPOLoss(beta=0.1), inspo, [sp(-0.15), sp(0.15)], [0.1, -0.1], [-0.05, 0.05])


@CONDITIONINGS
def test_cdpo_golden(inspo: bool) -> None:
    """beta = 0.1, eps = 0.1: L = 0.9*sp(-beta*h) + 0.1*sp(beta*h).

    row 1: 0.9*sp(-0.15) + 0.1*sp(0.15) = 0.9*0.620957 + 0.1*0.770957 = 0.558861 + 0.077096 = 0.635957
    row 2: 0.9*sp(0.15) + 0.1*sp(-0.15) = 0.9*0.770957 + 0.1*0.620957 = 0.693861 + 0.062096 = 0.755957
    """
    expected = [0.9 * sp(-0.15) + 0.1 * sp(0.15), 0.9 * sp(0.15) + 0.1 * sp(-0.15)]
    check_golden(DPOLoss(beta=0.1, label_smoothing=0.1), inspo, expected, [0.1, -0.1], [-0.05, 0.05])


@CONDITIONINGS
def test_dpo_sft_term_golden(inspo: bool) -> None:
    """beta = 0.1, sft_weight = 0.5: DPO losses [0.620957, 0.770957] + 0.5 * (-plain_chosen / chosen_tokens).

    standard: plain_chosen = chosen = [-4, -9]: NLL [4/2, 9/3] = [2, 3], + 0.5*[2, 3] -> [1.620957, 2.270957]
    InSPO:    plain_chosen = [-3, -12]:         NLL [3/2, 12/3] = [1.5, 4], + 0.5*[1.5, 4] -> [1.370957, 2.770957]
    """
    nll = [1.5, 4.0] if inspo else [2.0, 3.0]
    expected = [sp(-0.15) + 0.5 * nll[0], sp(0.15) + 0.5 * nll[1]]
    check_golden(DPOLoss(beta=0.1, sft_weight=0.5), inspo, expected, [0.1, -0.1], [-0.05, 0.05])


@CONDITIONINGS
def test_robust_golden(inspo: bool) -> None:
    """beta = 0.1, eps = 0.1: L = [0.9*sp(-beta*h) - 0.1*sp(beta*h)] / 0.8 (as eps*log sigma(-z) = -eps*sp(z)).

    row 1: (0.9*0.620957 - 0.1*0.770957) / 0.8 = (0.558861 - 0.077096) / 0.8 = 0.481766 / 0.8 = 0.602207
    row 2: (0.9*0.770957 - 0.1*0.620957) / 0.8 = (0.693861 - 0.062096) / 0.8 = 0.631766 / 0.8 = 0.789707
    """
    expected = [(0.9 * sp(-0.15) - 0.1 * sp(0.15)) / 0.8, (0.9 * sp(0.15) - 0.1 * sp(-0.15)) / 0.8]
    check_golden(RobustDPOLoss(beta=0.1, label_smoothing=0.1), inspo, expected, [0.1, -0.1], [-0.05, 0.05])


@CONDITIONINGS
def test_ipo_golden(inspo: bool) -> None:
    """Default, per-token log-ratios (as TRL). beta (tau) = 0.5: target 1/(2*0.5) = 1.

    chosen ratio / |y_w|   = [1/2, -1/3]     = [0.5, -0.333333]
    rejected ratio / |y_l| = [-0.5/3, 0.5/2] = [-0.166667, 0.25]
    h = [0.5 + 1/6, -1/3 - 1/4] = [2/3, -7/12]
    L = (h - 1)^2 = [(-1/3)^2, (-19/12)^2] = [1/9, 361/144] = [0.111111, 2.506944]
    rewards, per token like h: 0.5*[0.5, -1/3] = [0.25, -0.166667] and 0.5*[-1/6, 0.25] = [-0.083333, 0.125].
    """
    check_golden(IPOLoss(beta=0.5), inspo, [1 / 9, 361 / 144], [0.25, -1 / 6], [-1 / 12, 0.125])


@CONDITIONINGS
def test_ipo_summed_golden(inspo: bool) -> None:
    """average_log_ratios=False, beta (tau) = 0.5: L = (h - 1)^2 = [(1.5 - 1)^2, (-1.5 - 1)^2] = [0.25, 6.25].

    rewards: 0.5*[1, -1] = [0.5, -0.5] and 0.5*[-0.5, 0.5] = [-0.25, 0.25].
    """
    check_golden(IPOLoss(beta=0.5, average_log_ratios=False), inspo, [0.25, 6.25], [0.5, -0.5], [-0.25, 0.25])


@CONDITIONINGS
def test_simpo_golden(inspo: bool) -> None:
    """beta = 2, gamma = 1, no reference: rewards 2*[-2, -3] = [-4, -6] and 2*[-2, -4] = [-4, -8].

    z = chosen reward - rejected reward - gamma = [-4 + 4 - 1, -6 + 8 - 1] = [-1, 1]
    L = -log sigma(z) = [sp(1), sp(-1)] = [1.313262, 0.313262]
    """
    check_golden(SimPOLoss(beta=2.0, gamma=1.0), inspo, [sp(1.0), sp(-1.0)], [-4.0, -6.0], [-4.0, -8.0])


@CONDITIONINGS
def test_rdpo_golden(inspo: bool) -> None:
    """beta = 0.1, alpha = 0.1: length gap |y_w| - |y_l| = [2 - 3, 3 - 2] = [-1, 1].

    z = beta*h + alpha*gap = [0.15 - 0.1, -0.15 + 0.1] = [0.05, -0.05]   (Park et al. 2024, eq. 9: the term is added)
    L = [sp(-0.05), sp(0.05)] = [0.668460, 0.718460]
    (the old, subtracted form gave z = [0.25, -0.25], L = [0.575939, 0.825939]). Rewards are DPO's.
    """
    check_golden(RDPOLoss(beta=0.1, alpha=0.1), inspo, [sp(-0.05), sp(0.05)], [0.1, -0.1], [-0.05, 0.05])


@CONDITIONINGS
def test_orpo_golden(inspo: bool) -> None:
    """lam = 0.1. logodds(m) = m - log(1 - e^m):

    logodds(-2) = -2 - log(1 - 0.135335) = -2 + 0.145413 = -1.854587
    logodds(-3) = -3 - log(1 - 0.049787) = -3 + 0.051069 = -2.948931
    logodds(-4) = -4 - log(1 - 0.018316) = -4 + 0.018485 = -3.981515
    odds-ratio term: row 1 -log sigma(-1.854587 + 1.854587) = log 2 = 0.693147
                     row 2 -log sigma(-2.948931 + 3.981515) = sp(-1.032584) = 0.304602
    NLL (-plain_chosen / |y_w|): standard [4/2, 9/3] = [2, 3]; InSPO [3/2, 12/3] = [1.5, 4]
    L standard = [2 + 0.0693147, 3 + 0.0304602] = [2.069315, 3.030460]
    L InSPO    = [1.5 + 0.0693147, 4 + 0.0304602] = [1.569315, 4.030460]
    rewards: 0.1 * average log-prob = [-0.2, -0.3] and [-0.2, -0.4] (conditioned, both cases).
    """

    def logodds(m: float) -> float:
        return m - math.log(1 - math.exp(m))

    odds_ratio = [sp(-(logodds(-2.0) - logodds(-2.0))), sp(-(logodds(-3.0) - logodds(-4.0)))]
    nll = [1.5, 4.0] if inspo else [2.0, 3.0]
    expected = [nll[0] + 0.1 * odds_ratio[0], nll[1] + 0.1 * odds_ratio[1]]
    check_golden(ORPOLoss(lam=0.1), inspo, expected, [-0.2, -0.3], [-0.2, -0.4])


@CONDITIONINGS
def test_hinge_golden(inspo: bool) -> None:
    """beta = 1: beta*h = [1.5, -1.5]; L = relu(1 - beta*h) = [relu(-0.5), relu(2.5)] = [0, 2.5].

    Row 1 is past the margin (zero loss, zero gradient). rewards: [1, -1] and [-0.5, 0.5].
    """
    check_golden(HingeLoss(beta=1.0), inspo, [0.0, 2.5], [1.0, -1.0], [-0.5, 0.5])


@CONDITIONINGS
def test_onesided_golden(inspo: bool) -> None:
    """beta = 0.1: rejected ratio [-0.5, 0.5]; L = -log sigma(-0.1*[-0.5, 0.5]) = [sp(-0.05), sp(0.05)].

    sp(-0.05) = log(1 + 0.951229) = 0.668460, sp(0.05) = log(1 + 1.051271) = 0.718460.
    chosen rewards (logging only) 0.1*[1, -1] = [0.1, -0.1]; rejected 0.1*[-0.5, 0.5] = [-0.05, 0.05].
    """
    check_golden(OneSidedLoss(beta=0.1), inspo, [sp(-0.05), sp(0.05)], [0.1, -0.1], [-0.05, 0.05])


# ---------------------------------------------------------------------------------------------------------------
# Contract: every registered loss
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_init_args_are_typed_with_defaults(name: str) -> None:
    """jsonargparse builds the CLI from __init__: every argument needs a type and a default, sft_weight included."""
    params = list(inspect.signature(LOSSES[name].__init__).parameters.values())[1:]
    assert "sft_weight" in [p.name for p in params]
    for p in params:
        assert p.annotation is not inspect.Parameter.empty, f"{name}.{p.name} has no type"
        assert p.default is not inspect.Parameter.empty, f"{name}.{p.name} has no default"


@pytest.mark.parametrize("name", [n for n in LOSS_NAMES if "beta" in inspect.signature(LOSSES[n]).parameters])
@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan")])
def test_beta_must_be_positive(name: str, beta: float) -> None:
    """Every loss with a beta refuses beta <= 0 and NaN in one line naming its class (BetaLoss)."""
    with pytest.raises(ConfigError) as err:
        LOSSES[name](beta=beta)
    assert str(err.value) == f"{LOSSES[name].__name__}: beta must be > 0, got {beta}"


@pytest.mark.parametrize("name", LOSS_NAMES)
@CONDITIONINGS
def test_defaults_finite_and_gradients_reach_policy(name: str, inspo: bool) -> None:
    loss = LOSSES[name]()
    policy, reference = contract_pair(inspo)
    out = run(loss, policy, reference)
    assert out.losses.shape == (3,) and torch.isfinite(out.losses).all()
    out.loss.backward()
    if name in CHOSEN_NLL_ONLY:
        read = policy.chosen_plain if inspo else policy.chosen
        assert read.grad is not None and (read.grad < 0).all() and policy.rejected.grad is None
        return
    for field in ("chosen", "rejected"):
        grad = getattr(policy, field).grad
        if field == "chosen" and name in FLAT_IN_CHOSEN:
            assert grad is None or not grad.any(), f"{name} should not depend on policy.chosen"
            continue
        assert grad is not None, f"no gradient reaches policy.{field}"
        assert torch.isfinite(grad).all() and (grad != 0).all(), f"policy.{field}.grad = {grad}"


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_reference_none_accepted_exactly_when_reference_free(name: str) -> None:
    loss = LOSSES[name]()
    policy, reference = contract_pair()
    if loss.requires_reference:
        with pytest.raises(ValueError, match="requires reference"):
            loss(policy, None)
    else:
        out = loss(policy, None)
        assert torch.isfinite(out.losses).all()
        assert_close(loss(policy, reference).losses, out.losses)  # a reference, if given, is ignored


@pytest.mark.parametrize("name", sorted(set(LOSS_NAMES) - CHOSEN_NLL_ONLY))
@CONDITIONINGS
def test_pushes_chosen_up_and_rejected_down(name: str, inspo: bool) -> None:
    """The check that catches the authors' sign errors. onesided is exactly flat in chosen, by name."""
    chosen_sign = +1 if name in LOWERS_CHOSEN else -1
    assert direction_violations(LOSSES[name](), flat_in_chosen=name in FLAT_IN_CHOSEN, inspo=inspo,
                                chosen_sign=chosen_sign) == []


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("sft_weight", [0.0, 1.0])
def test_finite_for_extreme_gaps_and_one_token_responses(name: str, sft_weight: float) -> None:
    """Gaps of +-1e4 nats in either policy or reference, a log-prob of exactly 0 (ORPO's log-odds pole), |y| = 1."""
    policy = PairLogps(
        chosen=t(-1.0, -1e4, 0.0, -1e4, -0.5, requires_grad=True),
        rejected=t(-1e4, -1.0, -1e4, 0.0, -0.5, requires_grad=True),
        chosen_tokens=t(1, 1, 1, 1, 1),
        rejected_tokens=t(1, 1, 1, 1, 1),
    )
    reference = PairLogps(
        chosen=t(-1e4, -1.0, -1.0, -1.0, -1e4),
        rejected=t(-1.0, -1e4, -1.0, -1.0, 0.0),
        chosen_tokens=policy.chosen_tokens,
        rejected_tokens=policy.rejected_tokens,
    )
    out = run(LOSSES[name](sft_weight=sft_weight), policy, reference)
    assert torch.isfinite(out.losses).all(), out.losses
    out.loss.backward()
    for field in ("chosen", "rejected"):
        grad = getattr(policy, field).grad
        if field == "chosen" and name in FLAT_IN_CHOSEN and sft_weight == 0:  # y_w enters only through the SFT term
            assert grad is None or not grad.any(), f"{name} should not depend on policy.chosen"
            continue
        if field == "rejected" and name in CHOSEN_NLL_ONLY:
            continue
        assert grad is not None, f"no gradient reaches policy.{field}"
        assert torch.isfinite(grad).all(), f"policy.{field}.grad = {grad}"


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_rewards_detached_and_fp32_from_bf16(name: str) -> None:
    policy, reference = contract_pair(inspo=True, dtype=torch.bfloat16)
    out = run(LOSSES[name](sft_weight=0.5), policy, reference)
    assert out.losses.dtype == torch.float32
    assert out.losses.requires_grad
    for rewards in (out.chosen_rewards, out.rejected_rewards):
        assert rewards.dtype == torch.float32 and not rewards.requires_grad


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (DPOLoss, {"beta": 0.0}, "beta"),
        (DPOLoss, {"label_smoothing": 0.5}, "label_smoothing"),
        (DPOLoss, {"label_smoothing": -0.1}, "label_smoothing"),
        (DPOLoss, {"sft_weight": -1.0}, "sft_weight"),
        (RobustDPOLoss, {"label_smoothing": 0.5}, "label_smoothing"),
        (IPOLoss, {"beta": -0.1}, "beta"),
        (SimPOLoss, {"beta": float("nan")}, "beta"),
        (SimPOLoss, {"gamma": -1.0}, "gamma"),
        (RDPOLoss, {"alpha": -0.01}, "alpha"),
        (ORPOLoss, {"lam": -0.1}, "lam"),
        (HingeLoss, {"beta": 0.0}, "beta"),
        (OneSidedLoss, {"beta": 0.0}, "beta"),
    ],
)
def test_bad_hyperparameters_raise(cls: type[PreferenceLoss], kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_orpo_log_odds_is_finite_at_probability_one() -> None:
    m = t(0.0, -1e-9, -1e-3, -50.0, requires_grad=True)
    out = log_odds(m)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(m.grad).all()
    assert_close(out[2], torch.tensor(-1e-3 - math.log(1 - math.exp(-1e-3))), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# The authors' bugs (PAPER.md) fail the direction checks; ours pass
# ---------------------------------------------------------------------------------------------------------------


class FlippedIPO(IPOLoss):
    """IPO optimising the wrong direction: the gap taken rejected minus chosen."""

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = logratios(policy, reference)
        losses = (rejected_ratio - chosen_ratio - 1 / (2 * self.beta)) ** 2
        return LossOutput(losses, chosen_ratio.detach(), rejected_ratio.detach())


class SwappedReferenceIPO(IPOLoss):
    """IPO with the two reference terms swapped: (a_w - r_l) - (a_l - r_w)."""

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        h = (policy.chosen - reference.rejected) - (policy.rejected - reference.chosen)
        return LossOutput((h - 1 / (2 * self.beta)) ** 2, h.detach(), h.detach())


class FlippedRDPO(RDPOLoss):
    """R-DPO rewarding the rejected response."""

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_ratio, rejected_ratio = logratios(policy, reference)
        gap = policy.chosen_tokens - policy.rejected_tokens
        losses = -F.logsigmoid(self.beta * (rejected_ratio - chosen_ratio) + self.alpha * gap)
        return LossOutput(losses, chosen_ratio.detach(), rejected_ratio.detach())


class SwappedReferenceRDPO(RDPOLoss):
    """R-DPO with the two reference terms swapped."""

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        h = (policy.chosen - reference.rejected) - (policy.rejected - reference.chosen)
        gap = policy.chosen_tokens - policy.rejected_tokens
        return LossOutput(-F.logsigmoid(self.beta * h + self.alpha * gap), h.detach(), h.detach())


class FlippedORPO(ORPOLoss):
    """ORPO with the odds ratio taken rejected over chosen."""

    def pair_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_mean = policy.chosen / policy.chosen_tokens
        rejected_mean = policy.rejected / policy.rejected_tokens
        losses = -chosen_mean + self.lam * -F.logsigmoid(log_odds(rejected_mean) - log_odds(chosen_mean))
        return LossOutput(losses, chosen_mean.detach(), rejected_mean.detach())


@pytest.mark.parametrize(
    ("ours", "buggy", "caught_by"),
    [
        (IPOLoss(), FlippedIPO(), "policy.chosen"),
        (IPOLoss(), SwappedReferenceIPO(), "reference.chosen"),
        (RDPOLoss(), FlippedRDPO(), "policy.chosen"),
        (RDPOLoss(), SwappedReferenceRDPO(), "reference.chosen"),
        (ORPOLoss(), FlippedORPO(), "policy.rejected"),
    ],
    ids=lambda x: type(x).__name__ if isinstance(x, PreferenceLoss) else x,
)
def test_authors_bugs_fail_direction_checks(ours: PreferenceLoss, buggy: PreferenceLoss, caught_by: str) -> None:
    assert direction_violations(ours) == []
    assert any(v.startswith(caught_by) for v in direction_violations(buggy)), direction_violations(buggy)


# ---------------------------------------------------------------------------------------------------------------
# Registry and configs
# ---------------------------------------------------------------------------------------------------------------


def test_register_loss_rejects_duplicate_name() -> None:
    class Impostor(PreferenceLoss):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_loss("dpo")(Impostor)
    assert LOSSES["dpo"] is DPOLoss
    assert register_loss("dpo")(DPOLoss) is DPOLoss  # the same class again (a re-import) is fine


def load_loss_config(path: Path) -> PreferenceLoss:
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load(path.read_text())["model"]["loss"]
    module_name, _, class_name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**spec.get("init_args", {}))


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_has_a_config(name: str) -> None:
    assert type(load_loss_config(CONFIG_DIR / f"{name}.yaml")) is LOSSES[name]


def test_cdpo_config_is_label_smoothed_dpo() -> None:
    loss = load_loss_config(CONFIG_DIR / "cdpo.yaml")
    assert isinstance(loss, DPOLoss) and loss.label_smoothing == 0.1

"""The f-divergence option (inspo.losses.divergence, arXiv 2309.16240): hand-derived goldens, the losses that take it,
one-line refusals. TRL 1.16 parity for every divergence x loss is in tests/test_trl_parity.py.

Golden batch (tests/test_losses.py, golden_pair): log-ratios c = [1, -1] (chosen), l = [-0.5, 0.5] (rejected).
sp(x) = log(1 + e^x), so -log sigma(z) = sp(-z).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch.testing import assert_close

from inspo.errors import ConfigError
from inspo.losses import LOSSES, DPOLoss, PairLogps
from inspo.losses.divergence import DIVERGENCES, f_score
from tests.test_losses import CONDITIONINGS, check_golden, golden_pair, sp

# TRL 1.16 takes f_divergence_type for these loss types (sigmoid = dpo); its "sft" ignores it.
TAKERS = {"dpo", "hinge", "ipo", "exo_pair", "robust", "discopop", "sigmoid_norm"}


@CONDITIONINGS
@pytest.mark.parametrize(("divergence", "coef", "expected"), [
    # forward KL, f'(t) = 1 - 1/t = 1 - e^-r: s_c = [1 - e^-1, 1 - e] = [0.632121, -1.718282],
    # s_l = [1 - e^-0.5, 1 - e^0.5]... for l = [-0.5, 0.5]: [1 - e^0.5, 1 - e^-0.5] = [-0.648721, 0.393469];
    # gap = [1.280842, -2.111751]; L = [sp(-1.280842), sp(2.111751)] = [0.245142, 2.225995]
    ("forward_kl", 0.5, [0.245142, 2.225995]),
    # JS, f'(t) = log 2 + log sigma(r): the log 2 cancels; gap = [-sp(-1) + sp(0.5), -sp(1) + sp(-0.5)]
    # = [-0.313262 + 0.974077, -1.313262 + 0.474077] = [0.660815, -0.839185]; L = [0.416359, 1.198301]
    ("js_divergence", 0.5, [0.416359, 1.198301]),
    # alpha, c = 0.5: f'(t) = (e^(-r/2) - 1) / (-1/2) = 2 (1 - e^(-r/2)): s_c = [0.786939, -1.297443],
    # s_l = [2 (1 - e^0.25), 2 (1 - e^-0.25)] = [-0.568051, 0.442398]; gap = [1.354990, -1.739841];
    # L = [sp(-1.354990), sp(1.739841)] = [0.229483, 1.901576]
    ("alpha_divergence", 0.5, [0.229483, 1.901576]),
    # alpha, c = 1: the reverse-KL limit, DPO itself: gap = h = [1.5, -1.5]; L = [sp(-1.5), sp(1.5)]
    ("alpha_divergence", 1.0, [sp(-1.5), sp(1.5)]),
])
def test_dpo_divergence_golden(inspo: bool, divergence: str, coef: float, expected: list[float]) -> None:
    """beta = 1, DPO on the scores f'(t) instead of the log-ratios; rewards stay beta * log-ratio ([1, -1], [-0.5,
    0.5]), as TRL logs them."""
    loss = DPOLoss(beta=1.0, divergence=divergence, alpha_divergence_coef=coef)
    check_golden(loss, inspo, expected, [1.0, -1.0], [-0.5, 0.5])


def test_js_gap_by_hand() -> None:
    """The JS gap of the docstring above, from the scores themselves (the log 2 cancels in the difference)."""
    c, l = torch.tensor([1.0, -1.0]), torch.tensor([-0.5, 0.5])
    gap = f_score(c, "js_divergence") - f_score(l, "js_divergence")
    assert_close(gap, torch.tensor([-sp(-1) + sp(0.5), -sp(1) + sp(-0.5)]), atol=1e-6, rtol=0)
    assert_close(f_score(torch.tensor([0.0]), "js_divergence"), torch.tensor([0.0]), atol=1e-7, rtol=0)  # t = 1


@pytest.mark.parametrize(("divergence", "slope"), [("reverse_kl", 1.0), ("forward_kl", 1.0), ("alpha_divergence", 1.0),
                                                   ("js_divergence", 0.5)])
def test_every_score_is_zero_at_the_reference(divergence: str, slope: float) -> None:
    """f'(1) = 0 for every member, and d f'(e^r)/dr at r = 0 is 1 (e^-r, e^(-0.7 r) at c = 0.3: 1) except JS's
    sigma(-r) = 1/2: at the start of training (policy = reference) each divergence gives DPO's loss and, up to that
    slope (JS acts like beta / 2 there), DPO's gradient; they part as the policy moves."""
    r = torch.zeros(1, requires_grad=True)
    score = f_score(r, divergence, 0.3)
    score.backward()
    assert_close(score.detach(), torch.zeros(1), atol=1e-7, rtol=0)
    assert_close(r.grad, torch.tensor([slope]), atol=1e-6, rtol=0)


def test_forward_kl_is_alpha_zero_and_finite_far_below_the_reference() -> None:
    """forward KL = alpha at c = 0; at r = -1000 the exponent is capped at 80: finite, where 1 - e^1000 is -inf."""
    r = torch.tensor([-1000.0, -2.0, 0.5, 30.0])
    assert_close(f_score(r, "forward_kl"), f_score(r, "alpha_divergence", 0.0), atol=0, rtol=0)
    assert torch.isfinite(f_score(r, "forward_kl")).all()
    assert_close(f_score(r, "forward_kl")[1:], 1 - torch.exp(-r[1:]), atol=1e-6, rtol=1e-6)


def test_the_losses_that_take_it_are_trls() -> None:
    """Exactly the losses whose loss reads only a reward difference take ``divergence`` (TRL 1.16's list)."""
    takers = {name for name, cls in LOSSES.items() if "divergence" in inspect.signature(cls).parameters}
    assert takers == TAKERS


@pytest.mark.parametrize("name", sorted(TAKERS))
@pytest.mark.parametrize("divergence", DIVERGENCES[1:])
def test_every_taker_changes_with_the_divergence(name: str, divergence: str) -> None:
    """Each loss that takes the option reads the scores (away from the reference the loss differs from reverse KL),
    with finite gradients, and keeps its rewards."""
    policy, reference = golden_pair(False)
    policy = PairLogps(chosen=policy.chosen.clone().requires_grad_(), rejected=policy.rejected,
                       chosen_tokens=policy.chosen_tokens, rejected_tokens=policy.rejected_tokens)
    base = LOSSES[name]()(policy, reference)
    out = LOSSES[name](divergence=divergence, alpha_divergence_coef=0.3)(policy, reference)
    assert not torch.allclose(out.losses, base.losses)
    assert_close(out.chosen_rewards, base.chosen_rewards)
    out.loss.backward()
    assert torch.isfinite(policy.chosen.grad).all() and policy.chosen.grad.abs().sum() > 0


def test_bad_divergence_and_coefficient_are_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        DPOLoss(divergence="kl")
    assert str(err.value) == ("DPOLoss: divergence must be one of reverse_kl, forward_kl, js_divergence, "
                              "alpha_divergence, got 'kl'")
    with pytest.raises(ConfigError, match=r"^HingeLoss: alpha_divergence_coef must be a finite number, got nan$"):
        LOSSES["hinge"](divergence="alpha_divergence", alpha_divergence_coef=math.nan)


def test_cli_takes_it_and_refuses_it_in_one_line(capsys, tmp_path) -> None:
    """``--model.loss dpo --model.loss.divergence js_divergence`` builds that loss; a loss without an f-divergence
    form (SimPO reads no reference, NCA a reward on its own) is refused in one line that lists the ones that take it."""
    from tests.helpers import run_main
    from tests.test_cli import build

    loss = build(tmp_path, "--model.loss", "ipo", "--model.loss.divergence", "alpha_divergence",
                 "--model.loss.alpha_divergence_coef", "0.2").model.loss
    assert (type(loss).__name__, loss.divergence, loss.alpha_divergence_coef) == ("IPOLoss", "alpha_divergence", 0.2)
    capsys.readouterr()  # the INFO lines of building that one
    for name in ("simpo", "nca_pair"):
        code, err = run_main(capsys, tmp_path, "--model.loss", name, "--model.loss.divergence", "forward_kl")
        assert code == 2 and err.strip().splitlines() == [
            ("inspo: error: option 'model.loss.divergence': this loss has no f-divergence form (the log Z(x) "
            "term of f-DPO cancels only in a difference of two rewards); the losses that take it: "
            f"{', '.join(sorted(TAKERS))}")]


def test_checkpoints_record_a_divergence_and_resume_checks_it() -> None:
    """Reverse KL is recorded as before the option existed (older checkpoints resume); another divergence is
    recorded, parses back, and resuming a reverse-KL checkpoint with it is refused."""
    from inspo.hparams import loss_hparams, resume_mismatch

    assert loss_hparams(DPOLoss()) == {"class_path": "inspo.losses.dpo.DPOLoss",
                                       "init_args": {"beta": 0.1, "label_smoothing": 0.0, "sft_weight": 0.0}}
    saved = loss_hparams(DPOLoss(divergence="js_divergence"))
    assert saved["init_args"]["divergence"] == "js_divergence"
    assert LOSSES.resolve(saved).divergence == "js_divergence"
    assert resume_mismatch({"loss": loss_hparams(DPOLoss())}, {"loss": saved})[0] == "loss"

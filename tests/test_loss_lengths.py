"""How the length-aware losses treat response length: behaviour, not just golden values.

R-DPO (Park et al. 2024, eq. 9) adds alpha * (|y_w| - |y_l|) to DPO's logit so that length stops paying: on a tie
between a long and a short answer its optimum favours the short one. IPO's default (as TRL's ``loss_type="ipo"``)
regresses the gap of *per-token* log-ratios onto 1/(2 beta), so its target does not depend on the answers' lengths.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from inspo.losses import DPOLoss, IPOLoss, PairLogps, PreferenceLoss, RDPOLoss


def tie_loss(loss: PreferenceLoss, gap: torch.Tensor) -> torch.Tensor:
    """Mean loss over a tie between a 30-token and a 10-token answer, for each advantage ``gap`` in nats.

    A tie is the same two answers once with the long one chosen and once with the short one chosen. ``gap`` is
    log-ratio(long) - log-ratio(short): the reference gives both answers -20, the policy -20 + gap/2 and -20 - gap/2.
    """
    long, short = -20.0 + gap / 2, -20.0 - gap / 2
    n = gap.numel()
    ones = torch.ones(n)
    policy = PairLogps(chosen=torch.cat([long, short]), rejected=torch.cat([short, long]),
                       chosen_tokens=torch.cat([30 * ones, 10 * ones]), rejected_tokens=torch.cat([10 * ones, 30 * ones]))
    reference = dataclasses.replace(policy, chosen=torch.full((2 * n,), -20.0), rejected=torch.full((2 * n,), -20.0))
    losses = loss(policy, reference).losses
    return (losses[:n] + losses[n:]) / 2


def tie_optimum(loss: PreferenceLoss) -> float:
    """The advantage (nats) at which the mean tie loss is minimal: where its gradient changes sign on a fine grid.

    The gradient rather than the loss: near the optimum the loss is flat to within fp32 rounding (its curvature is
    beta^2 / 8 per nat^2), while the gradient, about beta^2 / 4 * (gap - gap*), resolves it to the grid step.
    """
    gap = torch.linspace(-5, 5, 10001, requires_grad=True)  # step 0.001 nats
    tie_loss(loss, gap).sum().backward()  # the elements are independent: gap.grad is each one's derivative
    first_rising = int((gap.grad > 0).nonzero()[0])
    assert first_rising > 0 and (gap.grad[first_rising:] > 0).all() and (gap.grad[:first_rising] <= 0).all()
    return gap[first_rising].item()


def test_rdpo_optimum_of_a_tie_favours_the_short_answer() -> None:
    """R-DPO's point: on a tie, the optimum moves toward the *short* answer by 20 * alpha / beta nats.

    A tie's two rows have logits z and -z with z = beta*gap + alpha*(30 - 10), so the mean loss is
    (sp(-z) + sp(z)) / 2, minimal at z = 0: gap* = -20 * alpha / beta = -20 * 0.01 / 0.1 = -2 nats, the policy
    prefers the 10-token answer. DPO (alpha = 0) keeps the tie at gap* = 0; the old, subtracted length term put it
    at +2 (toward the long answer). At the tie itself (gap = 0, z = 0.2) the derivative is
    beta * (sigma(z) - 1/2) = 0.1 * (0.549834 - 0.5) = 0.0049834 > 0: gradient descent lowers the long answer.
    """
    assert tie_optimum(RDPOLoss(beta=0.1, alpha=0.01)) == pytest.approx(-2.0, abs=2e-3)
    assert tie_optimum(RDPOLoss(beta=0.2, alpha=0.01)) == pytest.approx(-1.0, abs=2e-3)  # -20 * 0.01 / 0.2
    assert tie_optimum(DPOLoss(beta=0.1)) == pytest.approx(0.0, abs=2e-3)
    gap = torch.zeros(1, requires_grad=True)
    tie_loss(RDPOLoss(beta=0.1, alpha=0.01), gap).sum().backward()
    assert gap.grad.item() == pytest.approx(0.1 * (torch.sigmoid(torch.tensor(0.2)).item() - 0.5), abs=1e-6)
    assert gap.grad.item() > 0


def test_ipo_target_is_per_token_by_default() -> None:
    """Pairs of 1, 10 and 100 tokens per answer whose log-ratios differ by exactly 5 nats per token.

    beta = 0.1: target 1/(2*0.1) = 5. Per token (default): h = 5*n/n - 0 = 5 for every n, so L = 0 and the gradient
    is 0. Summed: h = 5*n, L = (5n - 5)^2 = [0, 2025, 245025]; the same beta asks for a 5-nat gap per answer.
    """
    tokens = torch.tensor([1.0, 10.0, 100.0])
    policy = PairLogps(chosen=(-2.0 * tokens).requires_grad_(), rejected=-7.0 * tokens, chosen_tokens=tokens,
                       rejected_tokens=tokens)
    reference = dataclasses.replace(policy, chosen=-2.0 * tokens, rejected=-2.0 * tokens)
    per_token = IPOLoss(beta=0.1)(policy, reference)
    assert torch.equal(per_token.losses, torch.zeros(3))
    per_token.loss.backward()
    assert torch.equal(policy.chosen.grad, torch.zeros(3))
    summed = IPOLoss(beta=0.1, average_log_ratios=False)(policy, reference)
    assert summed.losses.tolist() == [0.0, 2025.0, 245025.0]
    # the logged margin is what the loss regresses: beta * h, per token by default
    assert torch.allclose(per_token.chosen_rewards - per_token.rejected_rewards, torch.full((3,), 0.5))

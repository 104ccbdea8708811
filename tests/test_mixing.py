"""The InSPO mixing weight: L = w * L(InSPO view) + (1 - w) * L(standard view) (``--model.conditioning.weight w``).

On the tiny random Llama in fp32 (same seed, so every module starts from the same weights): w = 0 gives the
standard-conditioning run's loss and gradients, w = 1 InSPO's, w = 1/2 their average, all from one policy forward.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from inspo.conditioning import CONDITIONINGS
from inspo.errors import ConfigError
from inspo.losses import DPOLoss
from tests.helpers import batch, make_module

LAYOUTS = pytest.mark.parametrize("layout", ["packed", "separate"])


def inspo_weight(w: float) -> dict:
    return {"class_path": "inspo", "init_args": {"weight": w}}


def step(conditioning: str | dict, layout: str, loss: str | DPOLoss = "dpo") -> tuple[torch.Tensor, list, int]:
    """(training loss, policy gradients, policy forwards) of one batch of 3 pairs."""
    module = make_module(conditioning=conditioning, layout=layout, loss=loss)
    calls = []
    module.policy.register_forward_hook(lambda *_: calls.append(1))
    out = module.mixed_loss(*module.pair_logps(batch(3)))
    out.loss.backward()
    return out.loss.detach(), [p.grad.clone() for p in module.policy.parameters()], len(calls)


def assert_same(a: tuple, b: tuple) -> None:
    assert_close(a[0], b[0], atol=1e-6, rtol=0)
    for got, want in zip(a[1], b[1]):
        assert_close(got, want, atol=1e-6, rtol=1e-5)


@LAYOUTS
def test_weight_zero_is_the_standard_run_and_one_is_inspo(layout: str) -> None:
    """w = 0: the standard view's loss and gradients (from the InSPO row's log pi(y|x) targets); w = 1: InSPO's,
    and then log pi(y|x) is not even scored (a default InSPO run's cost)."""
    loss = DPOLoss(beta=0.5, sft_weight=0.1)  # the SFT term reads log pi(y_w|x) in both views
    standard, inspo = step("standard", layout, loss), step("inspo", layout, loss)
    assert abs(standard[0] - inspo[0]) > 1e-4  # the two views differ, so the checks below can fail
    assert_same(step(inspo_weight(0.0), layout, loss), standard)
    assert_same(step(inspo_weight(1.0), layout, loss), inspo)


@LAYOUTS
def test_half_weight_is_the_average_from_one_forward(layout: str) -> None:
    """w = 1/2: the loss and the gradients are the mean of the two runs', from one policy forward (as InSPO's own)."""
    standard, inspo = step("standard", layout), step("inspo", layout)
    mixed = step(inspo_weight(0.5), layout)
    expected = ((standard[0] + inspo[0]) / 2, [(s + i) / 2 for s, i in zip(standard[1], inspo[1])])
    assert_same(mixed, expected)
    assert mixed[2] == inspo[2]  # the same number of policy forwards as plain InSPO


def test_weight_one_scores_no_plain_targets_and_below_one_does() -> None:
    full = make_module(conditioning="inspo")
    mixed = make_module(conditioning=inspo_weight(0.25))
    assert full.pair_logps(batch(2))[0].chosen_plain is None
    assert mixed.pair_logps(batch(2))[0].chosen_plain is not None


def test_metrics_report_the_inspo_view_and_the_mixed_loss() -> None:
    """Under mixing, the logged rewards are the InSPO view's; only ``loss`` is the mixture."""
    module = make_module(conditioning=inspo_weight(0.5))
    policy, reference = module.pair_logps(batch(3))
    out = module.mixed_loss(policy, reference)
    alone = module.loss(policy, reference)
    assert_close(out.chosen_rewards, alone.chosen_rewards, atol=0, rtol=0)
    assert not torch.allclose(out.losses, alone.losses)


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan")])
def test_bad_weight_is_one_line(weight: float) -> None:
    with pytest.raises(ConfigError) as err:
        CONDITIONINGS.resolve(inspo_weight(weight))
    assert str(err.value) == f"conditioning inspo: weight must be in [0, 1], got {weight}"


def test_cli_weight_is_one_option_and_a_bad_one_one_line(capsys, tmp_path) -> None:
    """``--model.conditioning inspo --model.conditioning.weight 0.5``; the checkpoint records it (a resume with
    another weight is refused), a default InSPO run records ``inspo`` as before."""
    from tests.helpers import run_main
    from tests.test_cli import build

    module = build(tmp_path, "--model.conditioning", "inspo", "--model.conditioning.weight", "0.5").model
    assert module.conditioning.weight == 0.5
    assert module.hparams["conditioning"] == {"class_path": "inspo.conditioning.InSPOConditioning",
                                              "init_args": {"weight": 0.5}}
    assert build(tmp_path).model.hparams["conditioning"] == "inspo"
    capsys.readouterr()
    code, err = run_main(capsys, tmp_path, "--model.conditioning.weight", "2")
    assert code == 2 and err.strip().splitlines() == [("inspo: error: conditioning inspo: weight must be in [0, 1], "
                                                      "got 2.0")]

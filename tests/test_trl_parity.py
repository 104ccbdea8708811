"""Parity with TRL's own loss code: the same per-token log-probs go to TRL's ``DPOTrainer._compute_loss`` and to ours.

Pinned to TRL 1.16.0 (``trl/trainer/dpo_trainer.py``; CI installs exactly that release through the ``test`` extra).
TRL's loss is called unchanged: a stand-in trainer carries only the attributes ``_compute_loss`` reads, and a stand-in
model returns the per-token log-probs instead of running a network. TRL sums them per row (chosen rows first, then
rejected) and takes token counts from the completion mask; ours receives the same sums and counts as ``PairLogps``.
Compared: the loss, its gradient with respect to every per-token log-prob, and the logged mean rewards.

Not compared, because TRL 1.16's ``DPOTrainer`` has no such loss: ``simpo`` (TRL's ``CPOTrainer``), ``orpo``
(``ORPOTrainer``), ``rdpo``, ``onesided``, and cDPO (TRL 1.16's ``sigmoid`` ignores ``label_smoothing``).
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.testing import assert_close

from inspo.losses import LOSSES, PairLogps, PreferenceLoss

trl = pytest.importorskip("trl", reason="TRL parity needs trl==1.16.0 (pip install -e '.[test]')")
TRL_VERSION = "1.16.0"
pytestmark = pytest.mark.skipif(trl.__version__ != TRL_VERSION,
                                reason=f"definitions pinned to trl {TRL_VERSION}, found {trl.__version__}")

B, PROMPT, T = 4, 2, 10  # pairs, prompt tokens, sequence length
# our loss (name, init args) -> TRL (loss_type, DPOTrainer attributes); beta and label smoothing mean the same
CASES: dict[str, tuple[str, dict[str, Any], str, dict[str, Any]]] = {
    "dpo": ("dpo", {"beta": 0.1}, "sigmoid", {}),
    "sigmoid (alias)": ("sigmoid", {"beta": 0.5}, "sigmoid", {}),
    "hinge": ("hinge", {"beta": 0.2}, "hinge", {}),
    "ipo": ("ipo", {"beta": 0.1}, "ipo", {}),
    "robust": ("robust", {"beta": 0.1, "label_smoothing": 0.2}, "robust", {"label_smoothing": 0.2}),
    "nca_pair": ("nca_pair", {"beta": 0.3}, "nca_pair", {}),
    "bco_pair": ("bco_pair", {"beta": 0.3}, "bco_pair", {}),
    "sppo_hard": ("sppo_hard", {"beta": 0.1}, "sppo_hard", {}),
    "apo_zero": ("apo_zero", {"beta": 0.3}, "apo_zero", {}),
    "apo_down": ("apo_down", {"beta": 0.3}, "apo_down", {}),
    "exo_pair": ("exo_pair", {"beta": 0.1}, "exo_pair", {"label_smoothing": 1e-3}),
    "exo_pair eps 0.2": ("exo_pair", {"beta": 0.3, "label_smoothing": 0.2}, "exo_pair", {"label_smoothing": 0.2}),
    "discopop": ("discopop", {"beta": 0.1}, "discopop", {"discopop_tau": 0.05}),
    "discopop tau 1": ("discopop", {"beta": 0.3, "tau": 1.0}, "discopop", {"discopop_tau": 1.0}),
    "sigmoid_norm": ("sigmoid_norm", {"beta": 2.0}, "sigmoid_norm", {}),
    "aot": ("aot", {"beta": 0.3}, "aot", {}),
    "aot eps 0.2": ("aot", {"beta": 0.3, "label_smoothing": 0.2}, "aot", {"label_smoothing": 0.2}),
    "aot_unpaired": ("aot_unpaired", {"beta": 0.3}, "aot_unpaired", {}),
    "aot_unpaired eps 0.2": ("aot_unpaired", {"beta": 0.3, "label_smoothing": 0.2}, "aot_unpaired",
                             {"label_smoothing": 0.2}),
}
# TRL logs beta * summed log-ratio as the rewards of every loss; ours follow the optimised per-token form here.
PER_TOKEN_REWARDS = {"ipo", "sigmoid_norm"}


class _Accelerator:
    device = torch.device("cpu")

    def gather_for_metrics(self, x: torch.Tensor) -> torch.Tensor:
        return x

    gather = gather_for_metrics


class _LogProbModel(torch.nn.Module):
    """Stands in for TRL's model: ``forward`` returns the given per-token log-probs (and zeros for the metrics)."""

    def __init__(self, per_token: torch.Tensor) -> None:
        super().__init__()
        self.per_token = per_token
        self.is_gradient_checkpointing = False

    def forward(self, **_: Any) -> SimpleNamespace:
        p = self.per_token
        zeros = torch.zeros_like(p.detach())
        return SimpleNamespace(log_probs=p, entropy=zeros, mean_logits=zeros, log_sum_sq_probs=zeros,
                               is_top1=torch.zeros_like(zeros, dtype=torch.bool))


def trl_compute_loss(loss_type: str, policy: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, beta: float,
                     **attributes: Any) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """TRL's ``DPOTrainer._compute_loss`` on per-token log-probs [2B, T-1] (chosen rows, then rejected) and the
    completion mask [2B, T]: (the loss, the metrics it logged)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    trainer = object.__new__(DPOTrainer)  # no __init__: no model, tokenizer or dataset
    model = _LogProbModel(policy)
    metrics: dict[str, Any] = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer.__dict__.update(
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=attributes.get("label_smoothing", 0.0),
        ld_alpha=None, f_divergence_type=attributes.get("f_divergence_type", "reverse_kl"),
        f_alpha_divergence_coef=attributes.get("f_alpha_divergence_coef", 1.0), use_weighting=False,
        precompute_ref_logps=False, aux_loss_enabled=False, _metrics=metrics, _total_train_tokens=0, _tp_size=1,
        accelerator=_Accelerator(), ref_model=_LogProbModel(reference), model=model,
        args=SimpleNamespace(discopop_tau=attributes.get("discopop_tau", 0.05), gradient_checkpointing_kwargs=None))
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask}
    return trainer._compute_loss(model, inputs, return_outputs=False), metrics["train"]


def per_token_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token policy and reference log-probs [2B, T-1], zero outside the completions, and the completion mask
    [2B, T]: B pairs with a 2-token prompt and completions of 1 to 8 tokens, log-probs in (-3, 0)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T - PROMPT + 1, (2 * B,), generator=g)
    mask = torch.zeros(2 * B, T, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        mask[row, PROMPT:PROMPT + n] = 1
    shifted = mask[:, 1:].float()  # the position predicting token t+1 carries its log-prob
    policy = (-3 * torch.rand(2 * B, T - 1, generator=g) * shifted).requires_grad_()
    reference = -3 * torch.rand(2 * B, T - 1, generator=g) * shifted
    return policy, reference, mask


def ours(loss: PreferenceLoss, policy: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> Any:
    """Our loss on the same numbers: per-row sums and token counts, split into chosen and rejected."""
    tokens = mask.sum(1).float()
    pairs = [PairLogps(*side.sum(1).chunk(2), *tokens.chunk(2)) for side in (policy, reference)]
    return loss(pairs[0], pairs[1] if loss.requires_reference else None)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_gradients_and_rewards_match_trl(case: str, seed: int) -> None:
    name, init_args, loss_type, attributes = CASES[case]
    loss = LOSSES.resolve({"class_path": name, "init_args": init_args})
    policy, reference, mask = per_token_batch(seed)
    theirs, metrics = trl_compute_loss(loss_type, policy, reference, mask, init_args["beta"], **attributes)
    (trl_grad,) = torch.autograd.grad(theirs, policy)
    out = ours(loss, policy, reference, mask)
    (our_grad,) = torch.autograd.grad(out.loss, policy)
    assert torch.isfinite(theirs) and theirs.item() != 0
    assert_close(out.loss, theirs.float(), atol=2e-6, rtol=2e-6)
    assert trl_grad.abs().sum() > 0
    assert_close(our_grad, trl_grad, atol=2e-7, rtol=1e-5)
    if LOSSES.canonical(name) not in PER_TOKEN_REWARDS:
        assert_close(out.chosen_rewards.mean().item(), metrics["rewards/chosen"][-1], atol=1e-6, rtol=1e-6)
        assert_close(out.rejected_rewards.mean().item(), metrics["rewards/rejected"][-1], atol=1e-6, rtol=1e-6)


def test_every_trl_pairwise_loss_type_is_covered() -> None:
    """TRL 1.16's pairwise loss types all have a parity case, except SFT (not yet here); a new TRL name must be added
    to CASES (or to this list, with a reason)."""
    not_yet = {"sft"}
    trl_types = {"sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                 "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"}
    from trl.trainer.dpo_config import DPOConfig

    assert trl_types <= set(DPOConfig.__doc__.replace("'", " ").replace("`", " ").split())
    assert {case[2] for case in CASES.values()} == trl_types - not_yet


# TRL 1.16 applies f_divergence_type to these loss types (and to "sft", which does not read it); ours: the same set.
DIVERGENCE_CASES = ["dpo", "hinge", "ipo", "robust", "exo_pair eps 0.2", "discopop tau 1", "sigmoid_norm"]
DIVERGENCE_SETTINGS = {  # ours (divergence, alpha_divergence_coef) -> TRL (f_divergence_type, f_alpha_divergence_coef)
    "forward_kl": ("forward_kl", 0.5, "forward_kl", 1.0),
    "js_divergence": ("js_divergence", 0.5, "js_divergence", 1.0),
    "alpha 0.5": ("alpha_divergence", 0.5, "alpha_divergence", 0.5),
    "alpha 0.2": ("alpha_divergence", 0.2, "alpha_divergence", 0.2),
}


@pytest.mark.parametrize("case", DIVERGENCE_CASES)
@pytest.mark.parametrize("setting", list(DIVERGENCE_SETTINGS))
def test_f_divergences_match_trl(case: str, setting: str) -> None:
    """Every f-divergence (arXiv 2309.16240) on every loss TRL applies it to: the loss and its gradient."""
    name, init_args, loss_type, attributes = CASES[case]
    divergence, coef, trl_type, trl_coef = DIVERGENCE_SETTINGS[setting]
    loss = LOSSES.resolve({"class_path": name, "init_args": {**init_args, "divergence": divergence,
                                                             "alpha_divergence_coef": coef}})
    policy, reference, mask = per_token_batch(0)
    theirs, _ = trl_compute_loss(loss_type, policy, reference, mask, init_args["beta"], **attributes,
                                 f_divergence_type=trl_type, f_alpha_divergence_coef=trl_coef)
    (trl_grad,) = torch.autograd.grad(theirs, policy)
    out = ours(loss, policy, reference, mask)
    (our_grad,) = torch.autograd.grad(out.loss, policy)
    reverse = ours(LOSSES.resolve({"class_path": name, "init_args": init_args}), policy, reference, mask)
    assert torch.isfinite(theirs) and not torch.allclose(out.loss, reverse.loss)  # the divergence changed the loss
    assert_close(out.loss, theirs.float(), atol=2e-6, rtol=2e-6)
    assert_close(our_grad, trl_grad, atol=2e-7, rtol=1e-5)


def test_the_losses_taking_a_divergence_are_trls() -> None:
    """TRL 1.16 refuses a non-reverse-KL divergence outside its list (read from its source); ours is the same list
    (``sigmoid`` = ``dpo``; TRL's ``sft`` reads no log-ratio, so the option would do nothing there)."""
    import inspect
    import re

    from trl.trainer.dpo_trainer import DPOTrainer

    listed = re.search(r"f_divergence_loss_types = \{([^}]*)\}", inspect.getsource(DPOTrainer.__init__))
    assert listed is not None
    trl_takers = {LOSSES.canonical(n.strip().strip('"')) for n in listed[1].split(",")} - {"sft"}
    ours_takers = {name for name, cls in LOSSES.items() if "divergence" in inspect.signature(cls).parameters}
    assert ours_takers == trl_takers == {LOSSES.canonical(CASES[case][0]) for case in DIVERGENCE_CASES}

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
    "sft": ("sft", {}, "sft", {}),
    "aot": ("aot", {"beta": 0.3}, "aot", {}),
    "aot eps 0.2": ("aot", {"beta": 0.3, "label_smoothing": 0.2}, "aot", {"label_smoothing": 0.2}),
    "aot_unpaired": ("aot_unpaired", {"beta": 0.3}, "aot_unpaired", {}),
    "aot_unpaired eps 0.2": ("aot_unpaired", {"beta": 0.3, "label_smoothing": 0.2}, "aot_unpaired",
                             {"label_smoothing": 0.2}),
}
# TRL logs beta * summed log-ratio as the rewards of every loss; ours follow the optimised per-token form here
# (sft, which has no reference: the average log-prob log pi(y|x)/|y|).
PER_TOKEN_REWARDS = {"ipo", "sigmoid_norm", "sft"}
# Weighted sums (TRL's loss_type list + loss_weights; ours model.loss list + model.loss_weights), one beta for all
# parts as in TRL: ([our parts], [TRL loss types], weights).
SUMS: dict[str, tuple[list[str], list[str], list[float] | None]] = {
    "rpo (alpha 1, TRL 0.x rpo_alpha=1)": (["dpo", "sft"], ["sigmoid", "sft"], None),
    "rpo alpha 0.5": (["dpo", "sft"], ["sigmoid", "sft"], [1.0, 0.5]),
    "mpo-like, three parts": (["dpo", "bco_pair", "sft"], ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]),
    "hinge + ipo": (["hinge", "ipo"], ["hinge", "ipo"], [2.0, 0.25]),
}


class _Accelerator:
    device = torch.device("cpu")

    def gather_for_metrics(self, x: torch.Tensor) -> torch.Tensor:
        return x

    gather = gather_for_metrics


class _LogProbModel(torch.nn.Module):
    """Stands in for TRL's model: ``forward`` returns the given per-token log-probs (and zeros for the metrics)."""

    def __init__(self, per_token: torch.Tensor, log_sum_sq: torch.Tensor | None = None) -> None:
        super().__init__()
        self.per_token = per_token
        self.log_sum_sq = log_sum_sq  # log sum_v p_v^2 per token (WPO's normaliser), zeros if not given
        self.is_gradient_checkpointing = False

    def forward(self, **_: Any) -> SimpleNamespace:
        p = self.per_token
        zeros = torch.zeros_like(p.detach())
        return SimpleNamespace(log_probs=p, entropy=zeros, mean_logits=zeros,
                               log_sum_sq_probs=zeros if self.log_sum_sq is None else self.log_sum_sq,
                               is_top1=torch.zeros_like(zeros, dtype=torch.bool))


def trl_compute_loss(loss_type: str | list[str], policy: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor,
                     beta: float, loss_weights: list[float] | None = None,
                     **attributes: Any) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """TRL's ``DPOTrainer._compute_loss`` on per-token log-probs [2B, T-1] (chosen rows, then rejected) and the
    completion mask [2B, T]: (the loss, the metrics it logged). A list of loss types is TRL's weighted sum
    (``loss_weights``; None: all 1, as ``DPOTrainer.__init__`` sets it)."""
    loss_types = [loss_type] if isinstance(loss_type, str) else loss_type
    from trl.trainer.dpo_trainer import DPOTrainer

    trainer = object.__new__(DPOTrainer)  # no __init__: no model, tokenizer or dataset
    model = _LogProbModel(policy, attributes.get("log_sum_sq"))
    metrics: dict[str, Any] = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer.__dict__.update(
        loss_types=loss_types, loss_weights=loss_weights or [1.0] * len(loss_types), beta=beta,
        label_smoothing=attributes.get("label_smoothing", 0.0), ld_alpha=attributes.get("ld_alpha"),
        f_divergence_type=attributes.get("f_divergence_type", "reverse_kl"),
        f_alpha_divergence_coef=attributes.get("f_alpha_divergence_coef", 1.0),
        use_weighting=attributes.get("use_weighting", False),
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


def completion_grads(our_grad: torch.Tensor, trl_grad: torch.Tensor, mask: torch.Tensor,
                     loss_types: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The two gradients to compare. TRL's ``sft`` term reads only the completion positions of the per-token
    log-probs, while TRL's pair losses (and our sums here) take whole rows, zeros outside the completions included;
    only completion positions hold log-probs in a real run, so with ``sft`` those are compared (and TRL's gradient
    elsewhere must come from its other terms alone)."""
    if "sft" not in loss_types:
        return our_grad, trl_grad
    keep = mask[:, 1:].bool()
    if loss_types == ["sft"]:
        assert not trl_grad[~keep].any()
    return our_grad[keep], trl_grad[keep]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_gradients_and_rewards_match_trl(case: str, seed: int) -> None:
    name, init_args, loss_type, attributes = CASES[case]
    loss = LOSSES.resolve({"class_path": name, "init_args": init_args})
    policy, reference, mask = per_token_batch(seed)
    theirs, metrics = trl_compute_loss(loss_type, policy, reference, mask, init_args.get("beta", 0.1), **attributes)
    (trl_grad,) = torch.autograd.grad(theirs, policy)
    out = ours(loss, policy, reference, mask)
    (our_grad,) = torch.autograd.grad(out.loss, policy)
    assert torch.isfinite(theirs) and theirs.item() != 0
    assert_close(out.loss, theirs.float(), atol=2e-6, rtol=2e-6)
    assert trl_grad.abs().sum() > 0
    assert_close(*completion_grads(our_grad, trl_grad, mask, [loss_type]), atol=2e-7, rtol=1e-5)
    if LOSSES.canonical(name) not in PER_TOKEN_REWARDS:
        assert_close(out.chosen_rewards.mean().item(), metrics["rewards/chosen"][-1], atol=1e-6, rtol=1e-6)
        assert_close(out.rejected_rewards.mean().item(), metrics["rewards/rejected"][-1], atol=1e-6, rtol=1e-6)


def test_every_trl_pairwise_loss_type_is_covered() -> None:
    """TRL 1.16's pairwise loss types all have a parity case; a new TRL name must be added to CASES (or to this
    list, with a reason)."""
    not_yet: set[str] = set()
    trl_types = {"sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                 "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"}
    from trl.trainer.dpo_config import DPOConfig

    assert trl_types <= set(DPOConfig.__doc__.replace("'", " ").replace("`", " ").split())
    assert {case[2] for case in CASES.values()} == trl_types - not_yet


# ---------------------------------------------------------------- options on top of the loss: WPO and LD-DPO
OPTION_CASES = {  # name: (our loss, init args, TRL loss_type, ld_alpha, use_weighting)
    "dpo ld 0.5": ("dpo", {"beta": 0.1}, "sigmoid", 0.5, False),
    "dpo ld 0": ("dpo", {"beta": 0.3}, "sigmoid", 0.0, False),
    "dpo wpo": ("dpo", {"beta": 0.1}, "sigmoid", None, True),
    "ipo ld 0.3 wpo": ("ipo", {"beta": 0.1}, "ipo", 0.3, True),
    "sigmoid_norm ld 0.7": ("sigmoid_norm", {"beta": 2.0}, "sigmoid_norm", 0.7, False),
    "robust wpo ld 0.2": ("robust", {"beta": 0.1, "label_smoothing": 0.2}, "robust", 0.2, True),
    "apo_zero wpo": ("apo_zero", {"beta": 0.3}, "apo_zero", None, True),
}


def ours_through_scoring(options: Any, loss: PreferenceLoss, policy: torch.Tensor, reference: torch.Tensor,
                         log_sum_sq: torch.Tensor, mask: torch.Tensor) -> Any:
    """Our options and loss on the same per-token numbers, through our own scoring path: every completion token of
    TRL's [chosen rows; rejected rows] becomes a target token (pair = row mod B, target chosen / rejected) of rows
    built by a stand-in layout, and ``score_pairs`` sums them (with the LD-DPO tail split and the WPO normaliser)
    exactly as the model scorer's reduction does."""
    from inspo.layout import ModelRows
    from inspo.scoring import score_pairs

    shifted = mask[:, 1:].bool()
    row = torch.arange(2 * B).unsqueeze(1).expand_as(shifted)[shifted]  # row-major: each row's tokens in order
    rows = ModelRows(*[torch.zeros(1)] * 5, slot=(row % B) * 2 + row // B, names=("chosen", "rejected"), num_pairs=B)
    layout = SimpleNamespace(build=lambda *_: rows)

    def scorer(per_token: torch.Tensor) -> Any:
        def reduce(model_rows: ModelRows, log_sum_sq: bool = False) -> torch.Tensor:
            values = per_token[shifted]
            sums = values.new_zeros(model_rows.num_slots).index_add(0, model_rows.slot, values)
            if log_sum_sq:
                sq = log_sum_sq_tokens.new_zeros(model_rows.num_slots).index_add(0, model_rows.slot, log_sum_sq_tokens)
                return torch.cat([sums.view(B, -1), sq.view(B, -1)], 1)
            return sums.view(B, -1)
        return reduce

    log_sum_sq_tokens = log_sum_sq[shifted]
    score = {"segments": [{}] * B, "sequences": {}, "layout": layout, "pad_id": 0, "device": "cpu",
             "split_tail": options.split_tail}
    ours_policy = score_pairs(scorer(policy), log_sum_sq=options.use_weighting, **score)
    ours_reference = score_pairs(scorer(reference), **score)
    return options.apply(loss, ours_policy, ours_reference)


@pytest.mark.parametrize("case", list(OPTION_CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wpo_and_ld_dpo_match_trl(case: str, seed: int) -> None:
    """TRL 1.16's ``_compute_loss`` with ``ld_alpha`` / ``use_weighting`` (it splits the per-token log-probs of
    policy and reference at min(|y_w|, |y_l|) itself, and reads the model's ``log_sum_sq_probs``) against our
    :class:`~inspo.loss_options.LossOptions` on the same per-token numbers: loss and gradient."""
    from inspo.loss_options import LossOptions

    name, init_args, loss_type, ld_alpha, use_weighting = OPTION_CASES[case]
    loss = LOSSES.resolve({"class_path": name, "init_args": init_args})
    policy, reference, mask = per_token_batch(seed)
    g = torch.Generator().manual_seed(100 + seed)
    # log sum_v p_v^2 lies in [log p_max^2, log p_max]; any values below 0 do for a parity test
    log_sum_sq = -2 * torch.rand(policy.shape, generator=g) * mask[:, 1:]
    smoothing = {"label_smoothing": init_args.get("label_smoothing", 0.0)}  # the same meaning in both
    theirs, _ = trl_compute_loss(loss_type, policy, reference, mask, init_args["beta"], ld_alpha=ld_alpha,
                                 use_weighting=use_weighting, log_sum_sq=log_sum_sq, **smoothing)
    (trl_grad,) = torch.autograd.grad(theirs, policy)
    plain, _ = trl_compute_loss(loss_type, policy, reference, mask, init_args["beta"], **smoothing)
    options = LossOptions(use_weighting=use_weighting, ld_alpha=ld_alpha)
    out = ours_through_scoring(options, loss, policy, reference, log_sum_sq, mask)
    (our_grad,) = torch.autograd.grad(out.loss, policy)
    assert torch.isfinite(theirs) and abs(theirs.item() - plain.item()) > 1e-4  # the option changes TRL's loss
    assert_close(out.loss, theirs.float(), atol=2e-6, rtol=2e-6)
    assert trl_grad.abs().sum() > 0
    # Compared on completion tokens: TRL's tail mask also covers the padding after a response (its log-probs are
    # zeroed by the fused head, so their gradient reaches no parameter); ours never reads those positions.
    completion = mask[:, 1:].bool()
    assert_close(our_grad[completion], trl_grad[completion], atol=2e-7, rtol=1e-5)
    assert not our_grad[~completion].any()


def test_wpo_per_token_normaliser_matches_trl_chunked_kernel() -> None:
    """TRL 1.16's ``ChunkedLogProbFunction`` (the fused LM head behind ``use_weighting``; its torch path on CPU) on
    the tiny model's hidden states at the target positions, against our chunked ``token_logps(..., log_sum_sq=True)``:
    the log-probs and log sum_v p_v^2 of every target token."""
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    from inspo.conditioning import REFERENCE_SEQUENCES
    from inspo.layout import make_layout
    from inspo.logprobs import token_logps
    from tests.helpers import random_pairs, tiny_model

    model = tiny_model()
    pairs = [{"x": p, "y_w": c, "y_l": r} for p, c, r in random_pairs(3, [(5, 3, 4), (2, 1, 6), (7, 2, 2)])]
    rows = make_layout("packed").build(pairs, REFERENCE_SEQUENCES, 0)
    with torch.no_grad():
        ours_both = token_logps(model, rows, chunk_size=4, log_sum_sq=True)
        hidden = model.get_decoder()(input_ids=rows.input_ids, attention_mask=rows.attention_mask,
                                     position_ids=rows.position_ids).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows.pred_index)
        logps, _, log_sum_sq, _, _ = ChunkedLogProbFunction.apply(
            hidden, model.get_output_embeddings().weight, None, rows.labels, 1.0, 4096, None, 1.0,
            ("log_sum_sq_probs",))
    assert_close(ours_both[:, 0], logps, atol=1e-5, rtol=0)
    assert_close(ours_both[:, 1], log_sum_sq, atol=1e-5, rtol=0)


def test_trl_hinge_with_wpo_fails_in_backward() -> None:
    """Why ``hinge`` with WPO has no parity case: TRL 1.16 multiplies the relu's output in place
    (``per_sequence_loss *= weights``), which relu's backward needs, so its backward raises. Ours is out of place
    (tests/test_loss_options.py). If a TRL release fixes this, this test fails: add ``hinge`` to OPTION_CASES."""
    policy, reference, mask = per_token_batch(0)
    theirs, _ = trl_compute_loss("hinge", policy, reference, mask, 0.2, use_weighting=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(theirs, policy)


@pytest.mark.parametrize("case", list(SUMS))
@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_sum_matches_trl_loss_type_list(case: str, seed: int) -> None:
    """``model.loss: [dpo, sft]`` with ``loss_weights`` against TRL's ``loss_type=["sigmoid", "sft"]`` with the
    same ``loss_weights``: loss, gradient and rewards (ours: the first part's; TRL's: beta * summed log-ratio,
    the same for a DPO-family first part). TRL 1.16 has no ``rpo_alpha`` any more: RPO with alpha is this list with
    weights [1, alpha] (the old option added alpha * the chosen tokens' mean NLL, which is ``sft``)."""
    from inspo.module import resolve_loss

    parts, loss_types, weights = SUMS[case]
    beta = 0.3
    loss = resolve_loss([{"class_path": p, "init_args": {} if p == "sft" else {"beta": beta}} for p in parts],
                        weights)
    policy, reference, mask = per_token_batch(seed)
    theirs, metrics = trl_compute_loss(loss_types, policy, reference, mask, beta, loss_weights=weights)
    (trl_grad,) = torch.autograd.grad(theirs, policy)
    out = ours(loss, policy, reference, mask)
    (our_grad,) = torch.autograd.grad(out.loss, policy)
    assert_close(out.loss, theirs.float(), atol=2e-6, rtol=2e-6)
    assert_close(*completion_grads(our_grad, trl_grad, mask, loss_types), atol=2e-7, rtol=1e-5)
    if parts[0] not in PER_TOKEN_REWARDS:
        assert_close(out.chosen_rewards.mean().item(), metrics["rewards/chosen"][-1], atol=1e-6, rtol=1e-6)
        assert_close(out.rejected_rewards.mean().item(), metrics["rewards/rejected"][-1], atol=1e-6, rtol=1e-6)


def test_rpo_config_matches_trl_sigmoid_plus_sft() -> None:
    """configs/loss/rpo.yaml is TRL's ``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1.0, 1.0]``, beta 0.1."""
    import yaml

    from inspo.module import resolve_loss
    from tests.helpers import CONFIGS

    model = yaml.safe_load((CONFIGS / "loss" / "rpo.yaml").read_text())["model"]
    loss = resolve_loss(model["loss"], model["loss_weights"])
    policy, reference, mask = per_token_batch(3)
    theirs, _ = trl_compute_loss(["sigmoid", "sft"], policy, reference, mask, 0.1, loss_weights=[1.0, 1.0])
    assert_close(ours(loss, policy, reference, mask).loss, theirs.float(), atol=2e-6, rtol=2e-6)


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

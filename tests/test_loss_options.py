"""WPO weighting and LD-DPO (``inspo.loss_options``): hand-derived goldens, exactness of the per-response quantities
they read in both layouts, the default path unchanged, refusals, and short fits under both conditionings.

TRL 1.16 parity of both options is in tests/test_trl_parity.py.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch.testing import assert_close

from inspo.cli import main
from inspo.conditioning import REFERENCE_SEQUENCES, ReflectionTemplate, make_conditioning
from inspo.errors import ConfigError
from inspo.layout import ModelRows, PackedLayout, make_layout
from inspo.logprobs import target_logps, token_logps, token_logps_full
from inspo.loss_options import LossOptions, length_desensitized, wpo_weights
from inspo.losses import LOSSES, PairLogps
from inspo.scoring import score_pairs
from tests.helpers import TINY_CONFIG, random_pairs, run_main, tiny_model

# (prompt, chosen, rejected) lengths: rejected longer, no tail, chosen longer, single tokens
LENGTHS = [(5, 3, 4), (2, 1, 6), (7, 2, 2), (3, 6, 2), (1, 1, 1)]


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# ---------------------------------------------------------------- goldens
def test_ld_dpo_weights_the_longer_tail_by_alpha_golden():
    """|y_w| = 6, |y_l| = 2, so m = 2 and only y_w has a tail (4 tokens).

    policy: log pi(y_w) = -10 with tail -4, log pi(y_l) = -3 (tail 0); alpha = 0.5:
      y_w: (-10 - -4) + 0.5 * -4 = -8;  y_l: -3.
    reference: -9 with tail -5, -2.5:  y_w: -4 + 0.5 * -5 = -6.5;  y_l: -2.5.
    DPO, beta 0.1: z = 0.1 * ((-8 - -6.5) - (-3 - -2.5)) = 0.1 * (-1.5 + 0.5) = -0.1;
      loss = -log sigmoid(-0.1) = log(1 + e^0.1) = 0.7443967.
    The plain log pi(y_w|x) (SFT / NLL terms) keeps its full -10, and the token counts stay 6 and 2.
    """
    tail = PairLogps(t(-4), t(0), t(4), t(0))
    policy = PairLogps(t(-10), t(-3), t(6), t(2), tail=tail)
    reference = PairLogps(t(-9), t(-2.5), t(6), t(2), tail=PairLogps(t(-5), t(0), t(4), t(0)))
    ld = length_desensitized(policy, 0.5)
    assert_close(ld.chosen, t(-8)) and assert_close(ld.rejected, t(-3))
    assert ld.chosen_plain.item() == -10 and ld.chosen_tokens.item() == 6
    out = LossOptions(ld_alpha=0.5).apply(LOSSES.resolve("dpo"), policy, reference)
    assert_close(out.loss, torch.tensor(0.7443967), atol=1e-6, rtol=0)
    # alpha = 1 is plain DPO: z = 0.1 * ((-10 - -9) - (-3 - -2.5)) = -0.05, loss = log(1 + e^0.05) = 0.7184596
    assert_close(LossOptions(ld_alpha=1.0).apply(LOSSES.resolve("dpo"), policy, reference).loss,
                 torch.tensor(0.7184596), atol=1e-6, rtol=0)


def test_wpo_weight_golden_and_it_carries_no_gradient():
    """w(y) = exp((log pi(y) - sum_t log sum_v p_v^2) / |y|).

    y_w: log pi = -6 over 3 tokens, normaliser sum -3: w = exp((-6 + 3) / 3) = e^-1.
    y_l: log pi = -4 over 2 tokens, normaliser sum -5: w = exp((-4 + 5) / 2) = e^0.5.  Weight e^-0.5 = 0.6065307.
    DPO, beta 0.1, reference 0: z = 0.1 * (-6 - -4) = -0.2, loss = log(1 + e^0.2) = 0.7981389;
    weighted: 0.7981389 * 0.6065307 = 0.4840958. d loss / d log pi(y_w) = weight * beta * sigmoid(-z)... with the
    weight held constant: 0.6065307 * -0.1 * sigmoid(0.2) = 0.6065307 * -0.1 * 0.5498340 = -0.0333491.
    """
    chosen = t(-6).requires_grad_()
    policy = PairLogps(chosen, t(-4), t(3), t(2), log_sum_sq=PairLogps(t(-3), t(-5), t(3), t(2)))
    reference = PairLogps(t(0), t(0), t(3), t(2))
    assert_close(wpo_weights(policy), t(math.exp(-0.5)))
    assert not wpo_weights(policy).requires_grad
    out = LossOptions(use_weighting=True).apply(LOSSES.resolve("dpo"), policy, reference)
    assert_close(out.loss, torch.tensor(0.4840958), atol=1e-6, rtol=0)
    (grad,) = torch.autograd.grad(out.loss, chosen)
    assert_close(grad, t(-0.0333491), atol=1e-6, rtol=0)


def test_options_off_call_the_loss_unchanged():
    """Default options: ``apply`` is exactly ``loss(policy, reference)`` (bit for bit), without tails or normaliser."""
    policy, reference = PairLogps(t(-6, -2), t(-4, -3), t(3, 1), t(2, 2)), PairLogps(t(-5, -1), t(-4, -2), t(3, 1),
                                                                                     t(2, 2))
    loss = LOSSES.resolve("ipo")
    assert torch.equal(LossOptions().apply(loss, policy, reference).losses, loss(policy, reference).losses)


def test_target_positions_count_within_each_target():
    """slot [0, 1, 0, 1, 1, 0] -> positions [0, 0, 1, 1, 2, 2] (each target's tokens in order)."""
    rows = ModelRows(*[torch.zeros(1)] * 5, slot=torch.tensor([0, 1, 0, 1, 1, 0]), names=("a", "b"), num_pairs=1)
    assert rows.target_positions().tolist() == [0, 0, 1, 1, 2, 2]


# ---------------------------------------------------------------- exactness in both layouts
def separately(model: torch.nn.Module, segments: dict, sequences: dict) -> dict[str, tuple[float, float, float]]:
    """Per target: (log-prob sum, tail sum beyond m = min(|y_w|, |y_l|), sum of log sum_v p_v^2), each from one
    unpadded sequence [context, target] and a plain fp32 log-softmax."""
    m = min(len(segments["y_w"]), len(segments["y_l"]))
    out = {}
    for name, keys in sequences.items():
        context, target = [t for k in keys[:-1] for t in segments[k]], segments[keys[-1]]
        with torch.no_grad():
            logps = model(torch.tensor([context + target])).logits.float().log_softmax(-1)[0]
        rows = logps[len(context) - 1: len(context) - 1 + len(target)]
        token = rows.gather(-1, torch.tensor(target).unsqueeze(-1)).squeeze(-1)
        out[name] = (token.sum().item(), token[m:].sum().item(), (2 * rows).logsumexp(-1).sum().item())
    return out


@pytest.mark.parametrize("layout", ["separate", "packed", "packed-rows"])
@pytest.mark.parametrize("conditioning", ["standard", "inspo", "inspo-template"])
def test_tail_and_log_sum_sq_equal_separately_computed_sequences(tokenizer, layout, conditioning):
    """Every target's log-prob, tail and WPO normaliser equal separate sequences to 1e-5 (fp32), for the policy's
    targets (a_w, a_l, p_w, p_l) and the reference's; ``packed-rows`` puts several pairs in one row."""
    model = tiny_model()
    template = ReflectionTemplate("Other answer:", "\nBetter answer:") if conditioning.endswith("template") else None
    cond = make_conditioning(conditioning.split("-")[0], tokenizer, template)
    segments = [cond.segments(*p) for p in random_pairs(len(LENGTHS), LENGTHS)]
    chosen_layout = PackedLayout(max_tokens_per_row=80) if layout == "packed-rows" else make_layout(layout)
    for sequences in (cond.sequences(plain=True), REFERENCE_SEQUENCES):
        if layout == "packed-rows":
            assert chosen_layout.build(segments, sequences, 0).input_ids.shape[0] < len(segments)
        with torch.no_grad():
            got = score_pairs(lambda rows, **kw: target_logps(model, rows, 5, **kw), segments, sequences,
                              chosen_layout, tokenizer.pad_token_id, "cpu", cond.conditioned, split_tail=True,
                              log_sum_sq=True)
        want = [separately(model, s, sequences) for s in segments]
        for name in sequences:
            for part, index in ((got, 0), (got.tail, 1), (got.log_sum_sq, 2)):
                assert_close(getattr(part, name), torch.tensor([w[name][index] for w in want]), atol=1e-5, rtol=0)
        m = torch.tensor([min(p[1], p[2]) for p in LENGTHS], dtype=torch.float32)
        assert torch.equal(got.tail.chosen_tokens, torch.tensor([p[1] for p in LENGTHS]) - m)
        assert torch.equal(got.tail.rejected_tokens, torch.tensor([p[2] for p in LENGTHS]) - m)


def test_log_sum_sq_chunked_equals_full_and_default_path_is_unchanged():
    """Chunked and full-logits paths agree on both columns (and on the log-prob gradient); the log-prob column is
    bit for bit the default path's output, and the normaliser column has no gradient."""
    model = tiny_model().train()
    rows = make_layout("packed").build([{"x": p, "y_w": c, "y_l": r} for p, c, r in random_pairs(3, LENGTHS)],
                                       REFERENCE_SEQUENCES, 0)
    both = token_logps(model, rows, chunk_size=3, log_sum_sq=True)
    assert_close(both, token_logps_full(model, rows, log_sum_sq=True), atol=1e-5, rtol=0)
    default = token_logps(model, rows, chunk_size=3)
    assert torch.equal(both[:, 0], default)
    grads = torch.autograd.grad(both.sum(), list(model.parameters()))
    want = torch.autograd.grad(default.sum(), list(model.parameters()))
    for got, ref in zip(grads, want):
        assert_close(got, ref, atol=1e-6, rtol=1e-5)
    sums = target_logps(model, rows, 3, log_sum_sq=True)
    assert sums.shape == (3, 4) and torch.equal(sums[:, :2], target_logps(model, rows, 3))


# ---------------------------------------------------------------- the module: no cost when off, fits, refusals
def test_module_computes_nothing_extra_with_the_options_off():
    from tests.helpers import batch, make_module

    module = make_module(loss="dpo", conditioning="inspo")
    policy, reference = module.pair_logps(batch(2))
    assert policy.tail is None and policy.log_sum_sq is None and reference.tail is None
    module = make_module(loss="dpo", conditioning="inspo", use_weighting=True, ld_alpha=0.5)
    policy, reference = module.pair_logps(batch(2))
    assert policy.tail is not None and policy.log_sum_sq is not None and reference.tail is not None
    assert reference.log_sum_sq is None  # WPO reads the policy's only


@pytest.mark.parametrize("conditioning", ["standard", "inspo"])
@pytest.mark.parametrize("options", [{"use_weighting": True}, {"ld_alpha": 0.3}])
def test_short_fit_with_each_option(tmp_path, conditioning, options):
    """Two steps and one validation batch (InSPO: also the plain view) train every policy parameter, finitely."""
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from inspo.data.datamodule import collate_pairs
    from inspo.data.tokenize import TokenizedPair
    from inspo.module import PreferenceModule
    from inspo.optim import OptimConfig

    pairs = [TokenizedPair(*p, row=i + 1) for i, p in enumerate(random_pairs(4, LENGTHS))]
    loader = DataLoader(pairs, batch_size=2, collate_fn=collate_pairs, shuffle=False)
    module = PreferenceModule(random_init=TINY_CONFIG, loss="dpo", conditioning=conditioning, export_dir=None,
                              optim=OptimConfig(lr=1e-3), **options)
    module.configure_model()
    before = [p.detach().clone() for p in module.policy.parameters()]
    trainer = Trainer(accelerator="cpu", max_steps=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    logged = trainer.callback_metrics
    assert torch.isfinite(logged["train/loss_step"]) and torch.isfinite(logged["val/loss"])
    assert ("val/plain_loss" in logged) == (conditioning == "inspo")
    assert all(not torch.equal(a, b) for a, b in zip(before, module.policy.parameters()))


@pytest.mark.parametrize(("args", "message"), [
    (["--model.ld_alpha", "2"], "model.ld_alpha must be in [0, 1] (or null to turn LD-DPO off), got 2.0"),
    (["--model.reference", "cached", "--model.ld_alpha", "0.5"],
     ("model.ld_alpha splits the reference's log-probs at min(|y_w|, |y_l|), which model.reference cached does not "
     "store: use reference copy, path or adapter")),
    (["--model.loss", "aot", "--model.use_weighting", "true"],
     ("model.use_weighting weights each pair's loss, but AOTLoss sorts the log-ratios across the batch, so its "
      "per-position losses belong to no pair: drop one of them")),
    (["--model.loss", "[dpo, aot_unpaired]", "--model.use_weighting", "true"],
     ("model.use_weighting weights each pair's loss, but AOTUnpairedLoss sorts the log-ratios across the batch, so "
      "its per-position losses belong to no pair: drop one of them")),
])
def test_options_that_cannot_apply_are_refused_in_one_line(capsys, caplog, tmp_path, args, message):
    caplog.set_level(logging.INFO, logger="inspo")  # as tests/test_config_errors.py: log records go to caplog
    # (inspo.cli is imported at the top, as there: Lightning imported inside a test logs its seed line to stderr)
    code, err = run_main(capsys, tmp_path, *args)
    assert code == 2 and err.strip() == f"inspo: error: {message}"


def test_options_round_trip_through_print_config_and_hparams(capsys):
    """``--print_config`` shows both options; the module saves them; resume compares them (a checkpoint from before
    the options existed resumes with them off, and only then)."""
    from inspo.hparams import resume_mismatch
    from tests.helpers import TINY_YAML, make_module

    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(TINY_YAML), "--model.use_weighting", "true", "--model.ld_alpha", "0.25",
              "--print_config"])
    out = capsys.readouterr().out
    assert info.value.code in (0, None) and "  use_weighting: true\n" in out and "  ld_alpha: 0.25\n" in out
    saved = dict(make_module(use_weighting=True, ld_alpha=0.25).hparams)
    assert saved["use_weighting"] is True and saved["ld_alpha"] == 0.25
    assert resume_mismatch(saved, {**saved, "ld_alpha": 0.5}) == ("ld_alpha", 0.25, 0.5)
    old = {k: v for k, v in saved.items() if k not in ("use_weighting", "ld_alpha")}  # written before the options
    assert resume_mismatch(old, {**old, "use_weighting": False, "ld_alpha": None}) is None
    assert resume_mismatch(old, {**old, "use_weighting": True, "ld_alpha": None})[0] == "use_weighting"


def test_ld_dpo_refuses_logps_without_tails():
    with pytest.raises(ValueError, match="split_tail"):
        length_desensitized(PairLogps(t(-1), t(-1), t(1), t(1)), 0.5)
    with pytest.raises(ConfigError):
        LossOptions(ld_alpha=float("nan"))


def test_fsdp2_two_processes_with_both_options_follow_one_process(tmp_path):
    """WPO's weights and LD-DPO's split are per pair, so sharding the batch over ranks changes nothing: a 2-process
    FSDP2 run (its scorer is the sharded ``LogpScorer``, which now also gets ``log_sum_sq``) follows the 1-process
    run step for step with both options on (the same global batch, as tests/test_distributed.py)."""
    from tests.fit_runs import losses, run_fit, tail
    from tests.helpers import ROOT

    options = ["--model.use_weighting", "true", "--model.ld_alpha", "0.5", "--data.loader.bucket_batches", "1",
               "--data.source.seed", "7", "--trainer.limit_train_batches", "3"]
    single = run_fit(tmp_path / "single", "--data.loader.batch_size", "4", *options)
    assert single.returncode == 0, tail(single)
    sharded = run_fit(tmp_path / "fsdp2", "--config", str(ROOT / "configs/strategy/fsdp2.yaml"),
                      "--data.loader.batch_size", "2", *options, devices=2)
    assert sharded.returncode == 0, tail(sharded)
    want, got = losses(tmp_path / "single"), losses(tmp_path / "fsdp2")
    assert sorted(want) == sorted(got) == [1, 2, 3] and len(set(want.values())) == 3
    assert_close(torch.tensor(list(got.values()), dtype=torch.float64),
                 torch.tensor(list(want.values()), dtype=torch.float64), atol=2e-5, rtol=0)

"""The worked examples in tests/examples/ (README, "Extending"): a DPO variant in one file, chosen from YAML by
class path and by short name, a conditioning and a layout each added by overriding one hook, and a reference
mode in one file. All train a step end to end."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from inspo.cli import InspoCLI, main
from inspo.conditioning import CONDITIONINGS
from inspo.data.datamodule import PreferenceDataModule
from inspo.layout import LAYOUTS
from inspo.losses import LOSSES, PairLogps
from inspo.module import PreferenceModule
from inspo.reference import REFERENCES
from tests.helpers import CONFIGS, batch, direction_violations, logp


@pytest.fixture
def examples():
    """Import the examples; their registrations are undone afterwards, so other tests see the stock registries."""
    saved = dict(LOSSES), dict(CONDITIONINGS), dict(LAYOUTS), dict(REFERENCES)
    loss = importlib.import_module("tests.examples.sigmoid_margin")
    peek = importlib.import_module("tests.examples.peek")
    concat = importlib.import_module("tests.examples.concat")
    uniform = importlib.import_module("tests.examples.uniform_reference")
    LOSSES["sigmoid_margin"] = loss.SigmoidMarginLoss  # again: a cached import does not re-run the decorator
    CONDITIONINGS["peek"] = peek.PeekConditioning
    LAYOUTS["concat"] = concat.ConcatLayout
    REFERENCES["uniform"] = uniform.UniformReference
    yield loss, peek, concat, uniform
    for registry, before in zip((LOSSES, CONDITIONINGS, LAYOUTS, REFERENCES), saved):
        registry.clear()
        registry.update(before)


def module_from_yaml(tmp_path, yaml: str) -> PreferenceModule:
    (tmp_path / "extra.yaml").write_text(yaml)
    cli = InspoCLI(PreferenceModule, PreferenceDataModule, run=False,
                   args=["--config", str(CONFIGS / "tiny.yaml"), "--config", str(tmp_path / "extra.yaml"),
                         "--trainer.default_root_dir", str(tmp_path)])
    return cli.model


def test_loss_from_yaml_by_class_path_and_by_short_name(examples, tmp_path):
    loss_module = examples[0]
    by_path = module_from_yaml(tmp_path, "model:\n  loss:\n    class_path: tests.examples.sigmoid_margin."
                                         "SigmoidMarginLoss\n    init_args: {margin: 1.0}\n")
    assert isinstance(by_path.loss, loss_module.SigmoidMarginLoss) and by_path.loss.margin == 1.0
    by_name = module_from_yaml(tmp_path, "model:\n  loss: sigmoid_margin\n")
    assert isinstance(by_name.loss, loss_module.SigmoidMarginLoss) and by_name.loss.margin == 0.5


def test_loss_golden_value_and_directions(examples):
    """beta 0.1, margin 0.5, h = (−10 − −11) − (−12 − −11) = 2: L = −log σ(0.2 − 0.5) = log(1 + e^0.3) = 0.854355."""
    loss = examples[0].SigmoidMarginLoss()
    one = torch.tensor([1.0])
    policy = PairLogps(torch.tensor([-10.0]), torch.tensor([-12.0]), one, one)
    reference = PairLogps(torch.tensor([-11.0]), torch.tensor([-11.0]), one, one)
    assert loss(policy, reference).loss.item() == pytest.approx(math.log(1 + math.exp(0.3)), abs=1e-6)
    assert direction_violations(loss) == [] and direction_violations(loss, inspo=True) == []


@pytest.mark.parametrize("layout", ["separate", "packed"])
def test_peek_conditioning_scores_the_truncated_alternative(examples, tmp_path, layout):
    """a_w = log pi(y_w | x, y_l[:K]), a_l = log pi(y_l | x, y_w[:K]); selected from YAML by its short name."""
    module = module_from_yaml(tmp_path, f"model:\n  conditioning: peek\n  layout: {layout}\n")
    module.configure_model()  # tiny.yaml: the tiny random model
    assert type(module.conditioning).__name__ == "PeekConditioning"
    k = module.conditioning.peek_tokens
    b = batch()
    policy, _ = module.pair_logps(b)
    for i, (x, yw, yl) in enumerate(zip(b.prompt, b.chosen, b.rejected)):
        assert policy.chosen[i].item() == pytest.approx(logp(module.policy, x + yl[:k], yw), abs=1e-5)
        assert policy.rejected[i].item() == pytest.approx(logp(module.policy, x + yw[:k], yl), abs=1e-5)
    plain = module.score(module.policy, b, module.conditioning.sequences(plain=True), conditioned=True)
    for i, (x, yw) in enumerate(zip(b.prompt, b.chosen)):
        assert plain.chosen_plain[i].item() == pytest.approx(logp(module.policy, x, yw), abs=1e-5)
    module.loss(*module.pair_logps(b)).loss.backward()
    assert module.policy.lm_head.weight.grad.abs().sum() > 0


def test_inspo_plugins_imports_modules_first(examples, monkeypatch, capsys, tmp_path):
    """INSPO_PLUGINS imports the listed modules before parsing (so short names resolve); a bad name is one line."""
    import sys

    monkeypatch.delitem(sys.modules, "tests.examples.peek")
    monkeypatch.setenv("INSPO_PLUGINS", "tests.examples.peek")
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path)])  # no run there: exits 2 after the plugins were imported
    assert "tests.examples.peek" in sys.modules
    monkeypatch.setenv("INSPO_PLUGINS", "tests.examples.no_such_module")
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path)])
    assert exit_info.value.code == 2 and "INSPO_PLUGINS: cannot import 'tests.examples.no_such_module'" in \
        capsys.readouterr().err


def test_uniform_reference_from_yaml_by_short_name_and_class_path(examples, tmp_path):
    """log pi_ref(y|x) = -|y| log V: for |y_w| = 3, |y_l| = 5 and V = 100, -3 ln 100 = -13.81551 and
    -5 ln 100 = -23.02585; with V from the tiny model's config (SmolLM2's 49152): -3 ln 49152 = -32.44888.
    No reference model is held, and DPO trains a step against it."""
    from inspo.data.datamodule import PairBatch

    uniform = examples[3].UniformReference
    b = PairBatch([[1, 2]], [[3, 4, 5]], [[6, 7, 8, 9, 10]], rows=[1])
    by_path = module_from_yaml(tmp_path, "model:\n  reference:\n    class_path: tests.examples.uniform_reference."
                                         "UniformReference\n    init_args: {vocab_size: 100}\n")
    assert isinstance(by_path.reference_mode, uniform) and by_path.hparams.reference["init_args"] == {"vocab_size": 100}
    reference = by_path.reference_mode.logps(b, None, None, "cpu")
    assert reference.chosen.item() == pytest.approx(-13.81551, abs=1e-4)
    assert reference.rejected.item() == pytest.approx(-23.02585, abs=1e-4)
    module = module_from_yaml(tmp_path, "model:\n  reference: uniform\n")
    module.configure_model()  # tiny.yaml: the tiny random model, loss dpo
    assert isinstance(module.reference_mode, uniform) and module.reference is None
    assert module.reference_logps(b).chosen.item() == pytest.approx(-3 * math.log(49152), abs=1e-4)
    module.loss(*module.pair_logps(batch())).loss.backward()
    assert module.policy.lm_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("source", ["concat", "tests.examples.concat.ConcatLayout"])
def test_concat_layout_from_yaml_is_exact(examples, tmp_path, source):
    """InSPO pair P=5, W=3, L=4: one row [x, y_l, y_w | x, y_w, y_l] of 2 * (5 + 4 + 3) = 24 tokens, positions 0..11
    twice, the second sequence blind to the first; a_w, a_l and log pi(y|x) equal separately built sequences."""
    module = module_from_yaml(tmp_path, f"model:\n  conditioning: inspo\n  layout: {source}\n")
    module.configure_model()
    assert isinstance(module.layout, examples[2].ConcatLayout) and module.layout.name == "concat"
    cond = module.conditioning
    rows = module.layout.build([cond.segments([1] * 5, [2] * 3, [3] * 4)], cond.sequences(), 0)
    assert rows.input_ids.shape == (1, 24) and rows.position_ids[0].tolist() == [*range(12), *range(12)]
    mask = rows.attention_mask[0, 0]
    assert not mask[12:, :12].any() and mask[12:, 12:].equal(torch.ones(12, 12, dtype=torch.bool).tril())
    b = batch()
    policy, _ = module.pair_logps(b, plain=True)
    assert module.layout.name == "concat"  # the start-up exactness check kept it
    for i, (x, yw, yl) in enumerate(zip(b.prompt, b.chosen, b.rejected)):
        assert policy.chosen[i].item() == pytest.approx(logp(module.policy, x + yl, yw), abs=1e-5)
        assert policy.rejected[i].item() == pytest.approx(logp(module.policy, x + yw, yl), abs=1e-5)
        assert policy.chosen_plain[i].item() == pytest.approx(logp(module.policy, x, yw), abs=1e-5)
    module.loss(*module.pair_logps(b)).loss.backward()
    assert module.policy.lm_head.weight.grad.abs().sum() > 0


def test_peek_conditioning_options_from_yaml(examples, tmp_path):
    """A conditioning's own option in ``init_args``, by class path; by short name the defaults (K = 4)."""
    by_path = module_from_yaml(tmp_path, "model:\n  conditioning:\n    class_path: tests.examples.peek.PeekConditioning"
                                         "\n    init_args: {peek_tokens: 2}\n")
    assert isinstance(by_path.conditioning, examples[1].PeekConditioning) and by_path.conditioning.peek_tokens == 2
    assert by_path.hparams["conditioning"] == {"class_path": "tests.examples.peek.PeekConditioning",
                                               "init_args": {"peek_tokens": 2}}
    by_name = module_from_yaml(tmp_path, "model:\n  conditioning: peek\n")
    assert by_name.conditioning.peek_tokens == 4 and by_name.hparams["conditioning"] == "peek"

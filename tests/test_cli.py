"""The ``inspo`` command end to end: real CLI, tiny random model, every YAML under configs/ parsed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from inspo.cli import InspoCLI, main
from inspo.data.datamodule import PairBatch, PreferenceDataModule
from inspo.losses import LOSSES
from inspo.models import BUNDLED_SMOLLM2, load_tokenizer
from inspo.module import PreferenceModule
from tests.helpers import CONFIGS, batch, tiny_model

# Fragments are parsed on top of the main config they are written for.
BASES = {"loss": CONFIGS / "quickstart.yaml", "reference": CONFIGS / "quickstart.yaml",
         "paper": CONFIGS / "paper" / "llama3-8b-inspo-dpo.yaml"}


def inspo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["inspo", *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def run_dir_args(tmp_path: Path) -> list[str]:
    return ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)]


NOISE = ("Tip:", "litlogger", "eval mode", "deprecated", "`Trainer.fit` stopped", "FLOPs", "Writing model shards",
         "Warning", "Traceback")
"""What the first run used to print that is not the user's business (library advertisements, warnings, bars)."""


def test_fit_tiny_end_to_end(tmp_path):
    """`inspo fit --config configs/tiny.yaml`: trains, parameters change, an HF folder is written and reloads; the
    output has none of the library noise (warnings are not silenced from outside here) and ends with a verdict
    that says where the model went and what to run next."""
    result = subprocess.run(["inspo", "fit", "--config", str(CONFIGS / "tiny.yaml"), "--trainer.default_root_dir",
                             str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert not [word for word in NOISE if word in output], output
    (run,) = tmp_path.glob("inspo/version_*")
    assert result.stdout.splitlines()[-3:] == [
        f"  trained policy: {run / 'hf_model'}", f"  next: inspo report {run}    (plots and report.md)",
        f"        inspo eval --model {run / 'hf_model'} --limit 50    (gold-reward win rate)"]
    exported = list(tmp_path.glob("inspo/version_*/hf_model"))
    assert len(exported) == 1, result.stderr[-2000:]
    trained = AutoModelForCausalLM.from_pretrained(exported[0])
    initial = tiny_model()
    changed = [not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), initial.state_dict().values())]
    assert len(changed) == len(initial.state_dict()) and all(changed)
    assert (exported[0] / "tokenizer_config.json").is_file()
    metrics = (exported[0].parent / "metrics.csv").read_text()
    assert "train/loss_step" in metrics and "val/reward_accuracy" in metrics


def recording_rows(monkeypatch) -> list[tuple[PairBatch, list[list[int]]]]:
    """Every call of ``PreferenceModule.pair_logps`` from now on, as (batch, the token ids of every row that reached
    the policy's input embedding): what the model was really shown, whatever the layout and log-prob path."""
    calls: list[tuple[PairBatch, list[list[int]]]] = []
    pair_logps = PreferenceModule.pair_logps

    def recorded(self, batch, *args, **kwargs):
        rows: list[list[int]] = []
        hook = self.policy.get_input_embeddings().register_forward_hook(
            lambda module, inputs, output: rows.extend(inputs[0].tolist()))
        try:
            return pair_logps(self, batch, *args, **kwargs)
        finally:
            hook.remove()
            calls.append((batch, rows))

    monkeypatch.setattr(PreferenceModule, "pair_logps", recorded)
    return calls


def shown(rows: list[list[int]], tokens: list[int]) -> bool:
    """Whether ``tokens`` occur contiguously in one of ``rows``."""
    n = len(tokens)
    return any(row[i:i + n] == tokens for row in rows for i in range(len(row) - n + 1))


@pytest.mark.parametrize("conditioning", ["inspo", "standard"])
def test_conditioning_on_the_command_line(tmp_path, monkeypatch, conditioning):
    """``--model.conditioning`` decides what the policy is shown. One sequence per row (``layout: separate``), so
    the rows are the sequences: under InSPO [x, y_l, y_w] and [x, y_w, y_l] (the alternative, then the target, no
    template), under standard [x, y_w] and [x, y_l]."""
    calls = recording_rows(monkeypatch)
    module = build(tmp_path, "--model.conditioning", conditioning, "--model.layout", "separate").model
    module.configure_model()
    b = batch()
    module.pair_logps(b)
    ((_, rows),) = calls
    pad = module.tokenizer.pad_token_id

    def unpadded(ids: list[int]) -> tuple[int, ...]:  # rows are right-padded to the batch's longest
        while ids and ids[-1] == pad:
            ids = ids[:-1]
        return tuple(ids)

    want = set()
    for x, chosen, rejected in zip(b.prompt, b.chosen, b.rejected):
        pair = [x + rejected + chosen, x + chosen + rejected] if conditioning == "inspo" else [x + chosen, x + rejected]
        want |= {unpadded(sequence) for sequence in pair}
    assert {unpadded(row) for row in rows} == want


def all_configs() -> list[Path]:
    return sorted(CONFIGS.rglob("*.yaml"))


@pytest.mark.parametrize("config", all_configs(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_parses(capsys, config):
    base = BASES.get(config.parent.name)
    args = ["--config", str(base)] if base is not None and config != base else []
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    assert "model:" in capsys.readouterr().out


def test_unknown_loss_lists_the_registered_names(tmp_path):
    result = inspo("fit", "--config", str(CONFIGS / "tiny.yaml"), "--model.loss", "dpoo", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown loss 'dpoo'" in result.stderr
    assert "choose one of: " + ", ".join(sorted(LOSSES)) in result.stderr
    assert "Traceback" not in result.stderr


def test_row_missing_chosen_names_file_row_and_field(tmp_path):
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}] * 3 + [{"prompt": "Say bye.", "rejected": "x"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = inspo("fit", "--config", str(CONFIGS / "tiny.yaml"), "--data.source.path", str(data),
                   *run_dir_args(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{data}: row 4: missing field 'chosen'" in result.stderr
    assert "Traceback" not in result.stderr


def test_python_dash_m_runs_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "inspo", "fit", "--help"], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0 and "--model.conditioning" in result.stdout


def test_reflection_template_from_the_command_line(tmp_path, monkeypatch):
    """The template arrives from the CLI as a dict; a one-batch run must use it (it once crashed here): in every
    training pair the policy is shown [y_l, "Better answer:", y_w] and [y_w, "Better answer:", y_l]."""
    calls = recording_rows(monkeypatch)
    main(["fit", "--config", str(CONFIGS / "tiny.yaml"), "--model.reflection_template.after_alternative",
          "Better answer:", "--trainer.fast_dev_run", "1", "--samples.every_n_steps", "0", *run_dir_args(tmp_path)])
    after = load_tokenizer(BUNDLED_SMOLLM2)("Better answer:", add_special_tokens=False).input_ids
    assert len(after) >= 2
    train_batch, rows = calls[0]  # fast_dev_run: one training batch, then one validation batch
    assert len(calls) == 2 and len(train_batch) == 4
    for chosen, rejected in zip(train_batch.chosen, train_batch.rejected):
        assert shown(rows, rejected + after + chosen) and shown(rows, chosen + after + rejected)
        assert not shown(rows, rejected + chosen)


def build(tmp_path: Path, *args: str) -> InspoCLI:
    """The CLI parsed and instantiated (model and data not loaded), on configs/tiny.yaml (``loss: dpo``)."""
    return InspoCLI(PreferenceModule, PreferenceDataModule, run=False,
                    args=["--config", str(CONFIGS / "tiny.yaml"), "--trainer.default_root_dir", str(tmp_path), *args])


@pytest.mark.parametrize("option", ["--model.loss.beta", "--model.loss.init_args.beta"])
def test_loss_init_arg_after_a_short_name_in_yaml(tmp_path, option):
    """tiny.yaml says ``loss: dpo``; both spellings used to fail with "unknown option"."""
    loss = build(tmp_path, option, "0.2").model.loss
    assert type(loss) is LOSSES["dpo"] and loss.beta == 0.2
    assert build(tmp_path).model.hparams["loss"] == {
        "class_path": "inspo.losses.dpo.DPOLoss", "init_args": {"beta": 0.1, "label_smoothing": 0.0, "sft_weight": 0.0}}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_takes_init_args_after_its_short_name(tmp_path, name):
    loss = build(tmp_path, "--model.loss", name, "--model.loss.sft_weight", "0.5").model.loss
    assert type(loss) is LOSSES[name] and loss.sft_weight == 0.5


def test_a_short_name_brings_its_own_defaults(tmp_path):
    """SimPO after DPO: gamma as given, beta SimPO's default (2.0), not DPO's 0.1 carried over."""
    loss = build(tmp_path, "--model.loss", "simpo", "--model.loss.gamma", "1.5").model.loss
    assert type(loss) is LOSSES["simpo"] and (loss.beta, loss.gamma) == (2.0, 1.5)


def test_trl_loss_name_sigmoid_is_dpo_with_its_init_args(tmp_path):
    """TRL's ``loss_type="sigmoid"`` spelled on our command line: DPO, and its arguments apply after the alias."""
    loss = build(tmp_path, "--model.loss", "sigmoid", "--model.loss.beta", "0.3").model.loss
    assert type(loss) is LOSSES["dpo"] and loss.beta == 0.3


def test_default_root_dir_moves_the_logs_unless_the_logger_folder_is_given(tmp_path):
    """The shipped configs pin no logger folder, so the run follows --trainer.default_root_dir."""
    assert build(tmp_path / "a").trainer.logger.save_dir == str(tmp_path / "a")
    explicit = build(tmp_path / "a", "--trainer.logger.init_args.save_dir", str(tmp_path / "b"))
    assert explicit.trainer.logger.save_dir == str(tmp_path / "b")

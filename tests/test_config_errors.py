"""Config mistakes through the real CLI: one line ``inspo: error: ...``, exit status 2, no usage dump, no traceback.

Most cases call :func:`inspo.cli.main` in-process (the same LightningCLI parsing and instantiation as the console
script, so a ConfigError raised inside a constructor takes the same path); one runs the ``inspo`` executable.
``tests/test_cli.py`` already checks an unknown loss name (with the registered names) in a subprocess.
"""

from __future__ import annotations

import logging
import os
import subprocess

import pytest

from inspo.cli import main
from inspo.errors import ConfigError
from tests.helpers import TINY_YAML, run_main

HELP = "; `inspo fit --help` lists every option"

CASES = [
    (["--model.los", "dpo"], "unknown option 'model.los' (did you mean 'model.loss'?)" + HELP),
    (["--trainer.max_epoch", "2"], "unknown option 'trainer.max_epoch' (did you mean 'trainer.max_epochs'?)" + HELP),
    (["--model.optim.lrr", "1e-3"], "unknown option 'model.optim.lrr' (did you mean 'model.optim.lr'?)" + HELP),
    (["--trainer.logger.init_args.save_dirr", "x"],
     "unknown option 'trainer.logger.init_args.save_dirr' (did you mean 'trainer.logger.init_args.save_dir'?)" + HELP),
    (["--model.layout", "pakced"], "unknown layout 'pakced'; choose one of: packed, separate"),
    (["--model.layout.max_tokens_per_row", "0"], "layout.max_tokens_per_row must be >= 1 or None, got 0"),
    (["--model.max_tokens_per_row", "512"], "option 'model.max_tokens_per_row' moved to model.layout.max_tokens_per_row "
     "(an option of the packed layout: --model.layout packed --model.layout.max_tokens_per_row N)" + HELP),
    (["--data.read.on_invalid", "drop"],
     "data.read.on_invalid: invalid value 'drop'; choose one of: error, skip" + HELP),
    (["--data.loader.batch_size", "abc"], "data.loader.batch_size: invalid value 'abc': expected int" + HELP),
    (["--data.read.max_pairs", "many"], "data.read.max_pairs: invalid value 'many': expected int or null" + HELP),
    (["--model.conditioning", "insp"], "unknown conditioning 'insp'; choose one of: inspo, standard"),
    (["--model.loss.sft_weight", "-1"], "DPOLoss: sft_weight must be >= 0, got -1.0"),
    (["--model.dtype", "bf17"],
     "unknown model.dtype 'bf17'; choose one of: bf16, bfloat16, float16, float32, fp16, fp32"),
    (["--model.reference", "none"],
     ("loss DPOLoss needs a reference model; set model.reference to copy or path (or choose a reference-free loss: "
      "orpo, sft, simpo)")),
    (["--model.loss", "simpo", "--model.reference", "copy"],
     ("model.loss simpo reads no reference log-probs, so model.reference copy would only cost memory and time: leave "
      "model.reference at auto (none for this loss) or set it to none")),
    (["--model.loss", "[simpo, sft]", "--model.reference", "cached"],
     ("model.loss WeightedLoss reads no reference log-probs, so model.reference cached would only cost memory and "
      "time: leave model.reference at auto (none for this loss) or set it to none")),
    (["--data.read.max_prompt_length", "300"],
     ("data.read.max_prompt_length (300) must be at most data.read.max_length - 2 (254): each response needs at "
      "least one token")),
    (["--data.read.max_length", "2", "--data.read.max_prompt_length", "1"],
     ("data.read.max_prompt_length (1) must be at most data.read.max_length - 2 (0): each response needs at least "
      "one token")),
    # issue 14: each data option group (inspo.data.options) checks itself in __post_init__, naming the field
    (["--data.loader.batch_size", "0"], "data.loader.batch_size must be at least 1, got 0"),
    (["--data.source.path", "x.jsonl", "--data.source.dataset", "y"],
     "give either data.source.path or data.source.dataset, not both"),
    # issue 12: these printed a traceback, or a line naming neither the value nor the expected type
    (["--model.optim.lr", "fast"], "model.optim.lr: invalid value 'fast': expected float" + HELP),
    (["--model.loss.beta", "0"], "DPOLoss: beta must be > 0, got 0.0"),
    # not a float: the parser then read model.loss as a list of losses and said "{'beta': 'abc'} names no loss"
    (["--model.loss.beta", "abc"], "model.loss.beta: 'abc' is not a valid value (expected float)" + HELP),
    # an option the chosen loss lacks: the parser then read model.loss as a list ("{'betax': 0.1} names no loss")
    (["--model.loss.betax", "0.1"], ("unknown option 'model.loss.betax' for model.loss DPOLoss (did you mean "
                                     "'model.loss.beta'?); its options: beta, label_smoothing, sft_weight, divergence, "
                                     "alpha_divergence_coef")),
    (["--model.loss", "simpo", "--model.loss.init_args.gamma_beta_ratio", "0.5"],
     ("unknown option 'model.loss.gamma_beta_ratio' for model.loss SimPOLoss (did you mean 'model.loss.gamma'?); its "
      "options: beta, gamma, sft_weight")),
    (["--model.layout", "packed", "--model.layout.max_tokens", "512"],
     ("unknown option 'model.layout.max_tokens' for model.layout PackedLayout (did you mean "
      "'model.layout.max_tokens_per_row'?); its options: max_tokens_per_row")),
    (["--trainer.strategy", "nonsense"],
     ("trainer.strategy 'nonsense' is not a strategy; choose one of: auto, ddp, ddp_spawn, ddp_fork, ddp_notebook, "
     "deepspeed, deepspeed_stage_1, deepspeed_stage_2, deepspeed_stage_2_offload, deepspeed_stage_3, "
     "deepspeed_stage_3_offload, deepspeed_stage_3_offload_nvme, fsdp, fsdp_cpu_offload, single_device (or add "
     "--config configs/strategy/ddp.yaml, fsdp.yaml or fsdp2.yaml)")),
    (["--ckpt_path", "no/such.ckpt"], "--ckpt_path no/such.ckpt: not found"),
    # torch's AdamW refused these with a traceback after the model had loaded; a negative decay it took silently
    (["--model.optim.betas", "[0.9, 1.5]"], "model.optim.betas must both be in [0, 1), got [0.9, 1.5]"),
    (["--model.optim.eps", "-1"], "model.optim.eps must be >= 0, got -1.0"),
    (["--model.optim.eps", "-1e-8"], "model.optim.eps must be >= 0, got -1e-08"),  # argparse took it for an option
    (["--model.optim.weight_decay", "-0.1"], "model.optim.weight_decay must be >= 0, got -0.1"),
    # Lightning divides by these (a ZeroDivisionError, after the first step for val_check_interval); -2 trained
    (["--trainer.accumulate_grad_batches", "0"], "trainer.accumulate_grad_batches must be at least 1, got 0"),
    (["--trainer.accumulate_grad_batches", "-2"], "trainer.accumulate_grad_batches must be at least 1, got -2"),
    (["--trainer.check_val_every_n_epoch", "0"], "trainer.check_val_every_n_epoch must be at least 1, got 0"),
    (["--trainer.val_check_interval", "0"], ("trainer.val_check_interval must be > 0 (training batches as an int, a "
                                             "fraction of the epoch as a float), got 0")),
    # the callbacks' own checks ended in a traceback (a ValueError; Lightning's MisconfigurationException)
    (["--samples.every_n_steps", "-1"], "samples.every_n_steps must be >= 0 (0 disables sampling), got -1"),
    (["--samples.max_new_tokens", "0"], "samples.max_new_tokens must be at least 1, got 0"),
    (["--checkpoint.every_n_train_steps", "-3"], "checkpoint: Invalid value for every_n_train_steps=-3. Must be >= 0"),
]


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(args) for args, _ in CASES])
def test_config_mistake_gives_one_clear_line_and_status_2(capsys, caplog, tmp_path, args, expected):
    caplog.set_level(logging.INFO, logger="inspo")
    code, err = run_main(capsys, tmp_path, *args)
    assert code == 2
    assert err.strip().splitlines() == [f"inspo: error: {expected}"]
    assert "Traceback" not in err and "usage:" not in err
    assert "rows read" not in caplog.text  # stopped before any data was read
    assert not any(tmp_path.iterdir())  # nothing written


def test_loss_beta_in_class_path_form_is_one_line(capsys, tmp_path):
    """The documented form (configs/loss/*.yaml): jsonargparse used to wrap the loss's ConfigError in a traceback."""
    config = tmp_path / "loss.yaml"
    config.write_text("model:\n  loss:\n    class_path: inspo.losses.IPOLoss\n    init_args:\n      beta: -1\n")
    code, err = run_main(capsys, tmp_path / "run", "--config", str(config))
    assert code == 2 and err.strip().splitlines() == ["inspo: error: IPOLoss: beta must be > 0, got -1.0"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", ["trainer.default_root_dir", "model.export_dir", "checkpoint.dirpath"])
def test_output_folder_that_is_a_file_stops_before_anything_runs(capsys, caplog, tmp_path, option):
    """``model.export_dir`` a file used to train the whole run, then crash at the export."""
    caplog.set_level(logging.INFO, logger="inspo")
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    root = ["--trainer.default_root_dir", str(taken)] if option == "trainer.default_root_dir" else []
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(TINY_YAML), "--trainer.default_root_dir", str(tmp_path), *root,
              f"--{option}", str(taken)])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and err == [(f"inspo: error: {option} {taken} is a file, not a folder; give a folder "
                                            "path")]
    assert "rows read" not in caplog.text and [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_data_path_that_is_a_folder_says_so(capsys, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for name in ("part-0.jsonl", "part-1.jsonl"):
        (shards / name).write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    code, err = run_main(capsys, tmp_path / "run", "--data.source.path", str(shards))
    assert code == 2 and err.strip().splitlines() == [
        (f"inspo: error: data.source.path {shards} is a folder, not a data file (it holds 2 data files: part-0.jsonl, "
        f"part-1.jsonl); data.source.path reads one file: for a folder of shards use --data.source.dataset {shards}")]
    for shard in shards.iterdir():
        shard.unlink()
    code, err = run_main(capsys, tmp_path / "run", "--data.source.path", str(shards))
    assert err.strip().splitlines() == [(f"inspo: error: data.source.path {shards} is a folder, not a data file, "
                                        "and holds no .jsonl, .json or .parquet file")]


@pytest.mark.parametrize("option", ["path", "val_path"])
def test_a_missing_data_file_stops_before_anything_is_built(capsys, caplog, tmp_path, option):
    """A missing ``val_path`` was found only after the training file had been read, named as a bare path."""
    missing = tmp_path / "nope.jsonl"
    code, err = run_main(capsys, tmp_path / "run", f"--data.source.{option}", str(missing))
    assert code == 2
    assert err.strip().splitlines() == [f"inspo: error: data.source.{option}: data file not found: {missing}"]
    assert "rows read" not in caplog.text and not (tmp_path / "run").exists()


def test_model_folder_without_a_tokenizer_says_so(capsys, tmp_path):
    """A folder holding only a model's config (and weights) ended in transformers' ValueError about converting a
    slow tokenizer, which named no folder."""
    from transformers import LlamaConfig

    folder = tmp_path / "model"
    LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                num_attention_heads=2).save_pretrained(folder)
    code, err = run_main(capsys, tmp_path / "run", "--model.model", str(folder))
    assert code == 2 and err.strip().splitlines() == [
        (f"inspo: error: cannot load a tokenizer from {str(folder)!r}: the folder has no tokenizer files "
         "(tokenizer.json, tokenizer_config.json); save its base model's tokenizer there: "
         "AutoTokenizer.from_pretrained(BASE).save_pretrained(FOLDER)")]


CONFIG_FILES = [
    (None, "{path}: file not found"),
    ("folder", "{path} is a folder, not a YAML file"),
    ("model:\n  optim:\n\tlr: 1.0\n",
     "{path}: invalid YAML at line 3, column 1: found character '\\t' that cannot start any token"),
    ("- model\n- data\n", "{path}: expected a mapping of options (model:, data:, trainer:, ...), got a list"),
    ("", "{path}: expected a mapping of options (model:, data:, trainer:, ...), got nothing (an empty file)"),
    ("model:\n  optim:\n    lr: 0.5\ndata:\n  loader:\n    batch_size: 2\nmodel:\n  loss: simpo\n",
     ("{path}: invalid YAML at line 7, column 1: key 'model' given twice (also on line 1): the second would "
      "silently replace the first, with every option under it")),
]


@pytest.mark.parametrize(("text", "expected"), CONFIG_FILES,
                         ids=["missing", "folder", "tab", "list", "empty", "key twice"])
def test_config_file_that_cannot_be_read_names_file_and_line(capsys, tmp_path, text, expected):
    """jsonargparse said "config: invalid value" for a missing file or a folder, named no file for a YAML error, and
    kept only the second of two ``model:`` blocks (the first's lr silently dropped)."""
    path = tmp_path / "mine.yaml"
    if text == "folder":
        path.mkdir()
    elif text is not None:
        path.write_text(text)
    code, err = run_main(capsys, tmp_path / "run", "--config", str(path))
    assert code == 2 and err.strip().splitlines() == [f"inspo: error: --config {expected.format(path=path)}"]
    assert not (tmp_path / "run").exists()


def test_misspelled_key_in_a_yaml_file(capsys, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("data:\n  batchsize: 3\nmodel:\n  loss: dpo\n")
    code, err = run_main(capsys, tmp_path, "--config", str(config))
    assert code == 2
    assert err.strip() == ("inspo: error: unknown option 'data.batchsize' (did you mean 'data.loader.batch_size'?)"
                           + HELP)


def test_debug_shows_the_traceback_and_jsonargparse_usage(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("INSPO_DEBUG", "1")
    with pytest.raises(ConfigError, match="needs a reference model"):
        main(["fit", "--config", str(TINY_YAML), "--model.reference", "none"])
    code, err = run_main(capsys, tmp_path, "--model.los", "dpo")
    assert code == 2 and "usage:" in err and "--model.los" in err


def test_console_script_misspelled_yaml_key(tmp_path):
    """The installed ``inspo`` executable: exit status 2 and exactly one line on stderr."""
    config = tmp_path / "mine.yaml"
    config.write_text("model:\n  optim:\n    lr: 1.0e-3\n    warmup_ratoi: 0.1\n")
    result = subprocess.run(["inspo", "fit", "--config", str(TINY_YAML), "--config", str(config)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "inspo: error: unknown option 'model.optim.warmup_ratoi' (did you mean 'model.optim.warmup_ratio'?)" + HELP
    ]


@pytest.mark.parametrize("args", [["--model.export_dir", "{file}"], ["--ckpt_path", "{file}"],
                                  ["--trainer.strategy", "nonsense"]], ids=["export_dir", "ckpt_path", "strategy"])
def test_console_script_stops_before_training_with_one_line(tmp_path, args):
    """The installed executable, for errors that used to train the whole run first or end in a traceback: exit
    status 2, exactly one line on stderr, nothing written under the run folder."""
    taken = tmp_path / "taken"
    taken.write_text("not a folder, not a checkpoint")
    result = subprocess.run(["inspo", "fit", "--config", str(TINY_YAML), "--trainer.default_root_dir",
                             str(tmp_path / "run"), *[a.format(file=taken) for a in args]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, check=False,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("inspo: error: "), result.stderr
    assert not (tmp_path / "run").exists()


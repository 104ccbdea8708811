"""What a run leaves behind: plain progress lines, sample tables, run stats, the exported HF folder, checkpoint
export (`inspo export`) and the report (`inspo report`). One tiny LoRA fit in-process serves every test here."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

import inspo
from inspo.cli import main
from inspo.export import EXPORT_INFO, generation_config
from tests.helpers import CONFIGS, TINY_YAML, tiny_model


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> tuple[Path, str]:
    """A 4-step LoRA fit of the tiny model with samples every 2 steps; returns (run folder, captured stdout)."""
    root = tmp_path_factory.mktemp("run")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        main(["fit", "--config", str(CONFIGS / "tiny.yaml"), "--trainer.default_root_dir", str(root),
              "--trainer.logger.init_args.save_dir", str(root), "--trainer.limit_train_batches", "4",
              "--data.loader.batch_size", "2",
              "--trainer.limit_val_batches", "1", "--model.lora.rank", "4", "--model.lora.alpha", "8",
              "--samples.every_n_steps", "2", "--samples.max_new_tokens", "8", "--progress_bar.plain", "true",
              "--progress_bar.plain_every_n_steps", "2"])
    (run,) = root.glob("inspo/version_*")
    return run, stdout.getvalue()


def test_plain_progress_lines_show_the_numbers_that_matter(lora_run):
    _, out = lora_run
    lines = [line for line in out.splitlines() if line.startswith("epoch 0 step")]
    assert [line.split()[3] for line in lines] == ["1/4", "2/4", "4/4"], out
    for name in ("loss", "acc", "margin", "lr", "tok/s"):
        assert f" {name} " in lines[-1], lines[-1]
    # configs/tiny.yaml trains InSPO: every validation line shows the conditioned and the plain (deployed) view
    for step in (0, 4):
        prefix = f"epoch 0 validation at step {step} | conditioned (x, y_alt): val_loss "
        line = next((line for line in out.splitlines() if line.startswith(prefix)), None)
        assert line is not None and " | plain (x): val_loss " in line and " val_acc " in line, out
    assert "\r" not in out


def test_fit_ends_with_a_summary(lora_run):
    """InSPO (configs/tiny.yaml): the validation metrics come as two labelled lines, conditioned and plain."""
    run, out = lora_run
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("inspo: fit done: 4 optimizer steps ("))
    assert " pairs/s, " in lines[start] and " pair tokens/s; peak memory " in lines[start]
    assert lines[start + 1].startswith("  train, mean of the last 4 steps:  loss ") and " acc " in lines[start + 1]
    assert lines[start + 2].startswith("  validation, conditioned (x, y_alt):  loss ") and " margin " in lines[start + 2]
    assert lines[start + 3].startswith("  validation, plain (x):  loss ") and " margin " in lines[start + 3]
    assert lines[start + 4:] == [f"  trained policy: {run / 'hf_model'}",
                                 f"  next: inspo report {run}    (plots and report.md)",
                                 f"        inspo eval --model {run / 'hf_model'} --limit 50    (gold-reward win rate)"]


def test_samples_and_run_stats(lora_run):
    run, _ = lora_run
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [2, 2, 2, 4, 4, 4]
    assert all(s["reference_source"] == "reference (adapter)" and s["reference"] is not None for s in samples)
    assert all(0 <= s["policy_tokens"] <= 8 for s in samples)
    stats = json.loads((run / "run_stats.json").read_text())
    assert stats["reference_mode"] == "adapter" and stats["train"]["optimizer_steps"] == 4
    assert stats["data"]["train"] > 0 and stats["train"]["pair_tokens_per_sec"] > 0
    params = stats["parameters"]
    assert params["policy_and_reference"] == params["policy"]  # the reference adds no weights
    assert 0 < params["policy"]["trainable"] < params["policy"]["total"] / 50


def test_run_folder_names_every_file_a_fit_writes(lora_run):
    """:mod:`inspo.run_folder` names each file where the fit put it. The literal names are pinned here, not imported:
    users' scripts and ``inspo report`` on an older run read these exact names."""
    from inspo import run_folder as names

    run, _ = lora_run
    pinned = {"CONFIG": "config.yaml", "HPARAMS": "hparams.yaml", "METRICS": "metrics.csv",
              "RUN_STATS": "run_stats.json", "SAMPLES": "samples.jsonl", "CHECKPOINTS": "checkpoints",
              "LAST": "last.ckpt", "HF_MODEL": "hf_model", "EXPORT_INFO": "inspo_export.json", "REPORT": "report",
              "REPORT_MD": "report.md"}
    assert {key: getattr(names, key) for key in pinned} == pinned
    for path in ("config.yaml", "hparams.yaml", "metrics.csv", "run_stats.json", "samples.jsonl",
                 "checkpoints/last.ckpt", "hf_model/inspo_export.json"):
        assert (run / path).exists(), path
    assert (run / "checkpoints" / "last.ckpt").is_symlink()


def test_fit_export_loads_with_plain_transformers(lora_run):
    run, _ = lora_run
    folder = run / "hf_model"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert not any("lora_" in k for k in model.state_dict())  # merged at the end of fit (the default)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    generation = GenerationConfig.from_pretrained(folder)
    assert generation.eos_token_id == tokenizer.eos_token_id and generation.pad_token_id == tokenizer.pad_token_id
    info = json.loads((folder / EXPORT_INFO).read_text())
    assert info["format"] == "merged" and info["global_step"] == 4
    assert info["git"] == git_checkout_state()
    assert info["config"]["model"]["lora"]["rank"] == 4 and info["data"]["stats"]["train"] > 0


def git_checkout_state() -> dict:
    """Commit and dirty flag of the checkout the imported ``inspo`` comes from, asked of git here, independently.

    Outside a git checkout (an unpacked sdist, no git installed) both are None, and the export must say so
    rather than invent a commit."""
    where = Path(inspo.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=False)
    except OSError:
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True,
                            text=True, check=True).stdout
    assert len(head.stdout.strip()) == 40
    return {"commit": head.stdout.strip(), "dirty": bool(status.strip())}


def test_generation_config_takes_the_tokenizers_eos_and_pad(tokenizer):
    model = tiny_model()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = None, 7
    config = generation_config(model, tokenizer)
    assert config.pad_token_id == tokenizer.pad_token_id and config.eos_token_id == [7, tokenizer.eos_token_id]
    assert model.generation_config.eos_token_id == 7  # the model's own config is left alone


def test_export_command_round_trip(lora_run, tmp_path):
    """`inspo export --ckpt`: the checkpoint (adapters only) rebuilt, merged or not, equals the fit-end export."""
    run, _ = lora_run
    (ckpt,) = [path for path in run.glob("checkpoints/*.ckpt") if not path.is_symlink()]  # not the last.ckpt link
    assert ckpt.stat().st_size < 1_000_000  # adapters only: the frozen base is rebuilt from its source
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "merged")])
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "adapter"), "--no-merge"])
    x = torch.tensor([[1, 200, 300, 400, 2]])
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(run / "hf_model")(input_ids=x).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(input_ids=x).logits
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=0)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    info = json.loads((tmp_path / "merged" / EXPORT_INFO).read_text())
    assert info["source"] == str(ckpt) and info["config"]["model"]["lora"]["rank"] == 4


def test_export_over_an_earlier_export_replaces_it_and_refuses_other_folders(lora_run, tmp_path, capsys):
    """A merged export into the folder of an earlier adapter export left the adapter files beside the merged
    weights, and ``from_pretrained`` then loaded base + adapter instead; a folder with other files was written
    into. Now an earlier export is replaced as a whole, and another folder is refused in one line."""
    run, _ = lora_run
    (ckpt,) = [path for path in run.glob("checkpoints/*.ckpt") if not path.is_symlink()]
    out = tmp_path / "out"
    main(["export", "--ckpt", str(ckpt), "--out", str(out), "--no-merge"])
    assert (out / "adapter_config.json").is_file()
    main(["export", "--ckpt", str(ckpt), "--out", str(out), "--merge"])
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    assert json.loads((out / EXPORT_INFO).read_text())["format"] == "merged"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt", str(ckpt), "--out", str(mine)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err == [(f"inspo: error: export folder {mine} is not empty and holds no "
                                                  f"earlier export (no {EXPORT_INFO}); give a new or empty folder")]
    with pytest.raises(SystemExit) as exit_info:  # the end-of-fit export: refused before training
        main(["fit", "--config", str(TINY_YAML), "--trainer.default_root_dir", str(tmp_path / "run"),
              "--model.export_dir", str(mine)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "model.export_dir" in err[0] and EXPORT_INFO in err[0]
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and not (tmp_path / "run").exists()


def test_export_command_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "checkpoint not found" in capsys.readouterr().err
    garbage = tmp_path / "garbage.ckpt"  # torch.load's traceback before
    garbage.write_text("not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt", str(garbage), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert err[0] == (f"inspo: error: {garbage}: not a checkpoint (not a zip archive, the format torch.save and "
                      "Lightning write)")
    assert not (tmp_path / "out").exists()


def test_report_writes_non_empty_pngs_and_a_summary(lora_run, tmp_path):
    run, _ = lora_run
    main(["report", str(run.parent.parent), "--out", str(tmp_path)])  # a parent folder finds the newest run
    pngs = {p.stem: p for p in tmp_path.glob("*.png")}
    assert set(pngs) == {"loss", "reward_accuracy", "reward_margin", "logps", "rewards", "sample_lengths",
                         "lr_throughput"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in pngs.values())
    report = (tmp_path / "report.md").read_text()
    for text in ("## Config", "## Data", "## Final metrics", "## Throughput", "tokens/s", "## Samples at step 4",
                 "![loss](loss.png)", "reference mode `adapter`"):
        assert text in report, text


@pytest.mark.parametrize(("where", "message"), [
    ("missing", "run folder not found: {path}"),
    ("a-file.csv", "{path}: not a run folder (give the folder `inspo fit` wrote"),
    ("empty", "{path}: no metrics.csv here or in a version_N folder below it"),
])
def test_report_on_a_folder_that_is_no_run_says_which_in_one_line(tmp_path, capsys, where, message):
    (tmp_path / "a-file.csv").write_text("step,loss\n")
    (tmp_path / "empty").mkdir()
    path = tmp_path / where
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert err[0].startswith("inspo: error: " + message.format(path=path))


@pytest.mark.parametrize("command", ["report", "export"])
@pytest.mark.parametrize(("out", "message"), [("taken", "{out} is a file, not a folder; give a folder path"),
                                              ("taken/x", "{out}: {taken} is a file, not a folder")])
def test_an_out_folder_that_is_or_sits_under_a_file_says_so_in_one_line(tmp_path, capsys, command, out, message):
    """Both ended in a FileExistsError / NotADirectoryError traceback (export after reading the checkpoint)."""
    (tmp_path / "taken").write_text("a file")
    args = [str(tmp_path)] if command == "report" else ["--ckpt", str(tmp_path / "any.ckpt")]
    with pytest.raises(SystemExit) as exit_info:
        main([command, *args, "--out", str(tmp_path / out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err == [
        "inspo: error: --out " + message.format(out=tmp_path / out, taken=tmp_path / "taken")]


def test_help_lists_the_extra_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "inspo export --ckpt" in out and "inspo report RUN_DIR" in out

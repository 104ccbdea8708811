"""``inspo predict``: every pair of both splits scored once, in ``pair_scores.jsonl``, by the checkpoint it was given.

The scores are checked against log-probs computed separately with the exported policy (one unpadded sequence per
target, :func:`tests.helpers.logp`) and the untrained start (the reference), under the conditioning of the run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from inspo.cli import InspoCLI
from inspo.data.datamodule import PreferenceDataModule
from inspo.module import PreferenceModule
from tests.fit_runs import fit_command, run_predict
from tests.helpers import CONFIGS, ROOT, logp, tiny_model


def splits(tmp_path: Path, *args: str) -> dict[str, list]:
    cli = InspoCLI(PreferenceModule, PreferenceDataModule, run=False,
                   args=["--config", str(CONFIGS / "tiny.yaml"), "--trainer.default_root_dir", str(tmp_path), *args])
    cli.datamodule.setup("predict")
    return {"train": cli.datamodule.train_pairs, "val": cli.datamodule.val_pairs}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A 4-step InSPO-DPO fit of configs/tiny.yaml: its last checkpoint and its exported policy."""
    root = tmp_path_factory.mktemp("fit")
    command, env = fit_command(root, "--trainer.max_steps", "4", "--model.export_dir", "auto")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "inspo/version_0/checkpoints/last.ckpt", root / "inspo/version_0/hf_model"


def test_predict_scores_every_pair_with_the_checkpoint(trained, tmp_path):
    ckpt, exported = trained
    lines = run_predict(tmp_path / "scores", "--ckpt_path", str(ckpt))
    pairs = splits(tmp_path)
    assert [(line["split"], line["row"]) for line in lines] == [
        (split, pair.row) for split in ("train", "val") for pair in sorted(pairs[split], key=lambda p: p.row)]
    assert sorted(line["row"] for line in lines) == list(range(1, 65))  # the 64 rows of the bundled pairs, once
    policy, start = AutoModelForCausalLM.from_pretrained(exported), tiny_model()
    for line in lines[:3] + lines[-2:]:  # both splits
        pair = next(p for p in pairs[line["split"]] if p.row == line["row"])
        x, w, l = pair.prompt, pair.chosen, pair.rejected
        want = {"chosen_logp": logp(policy, x + l, w), "rejected_logp": logp(policy, x + w, l),  # InSPO: [x, y_alt, y]
                "plain_chosen_logp": logp(policy, x, w), "plain_rejected_logp": logp(policy, x, l),
                "ref_chosen_logp": logp(start, x, w), "ref_rejected_logp": logp(start, x, l)}
        assert {k: line[k] for k in want} == pytest.approx(want, rel=1e-4, abs=1e-3)
        for view in ("", "plain_"):  # DPO, beta 0.1: reward = beta (log pi - log pi_ref)
            for side in ("chosen", "rejected"):
                assert line[f"{view}{side}_reward"] == pytest.approx(
                    0.1 * (line[f"{view}{side}_logp"] - line[f"ref_{side}_logp"]), rel=1e-4, abs=1e-5)
    assert any(abs(line["plain_chosen_logp"] - line["ref_chosen_logp"]) > 1e-2 for line in lines)  # it was trained


def test_reference_free_standard_run_scores_a_whole_file(tmp_path):
    """SimPO, standard, ``val_fraction 0``: no reference and no second view, so no ``ref_*`` and no ``plain_*``."""
    args = ["--model.loss", "simpo", "--model.conditioning", "standard", "--data.source.val_fraction", "0"]
    lines = run_predict(tmp_path / "scores", *args)
    assert [line["row"] for line in lines] == list(range(1, 65)) and {line["split"] for line in lines} == {"train"}
    assert set(lines[0]) == {"split", "row", "loss", "chosen_reward", "rejected_reward", "chosen_logp",
                             "rejected_logp"}


def test_a_reused_run_folder_keeps_the_earlier_scores(tmp_path):
    """Without a logger every predict writes to ``default_root_dir``: the second one goes to ``pair_scores-2.jsonl``."""
    args = ["--trainer.logger", "false", "--data.read.max_pairs", "8"]
    first, second = run_predict(tmp_path, *args), run_predict(tmp_path, *args, "--model.conditioning", "standard")
    assert sorted(p.name for p in tmp_path.glob("pair_scores*.jsonl")) == ["pair_scores-2.jsonl", "pair_scores.jsonl"]
    assert "plain_loss" in first[0] and "plain_loss" not in second[0] and len(first) == len(second) == 8

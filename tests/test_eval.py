"""The evaluator: win-rate and LC-win-rate arithmetic, bad-input messages, and `inspo eval` end to end (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inspo.cli import main as cli_main
from inspo.eval.evidence import length_reading
from inspo.eval.generate import encode_prompts, generate, left_pad
from inspo.eval.stats import crossed_mean, head_to_head, paired_difference, seeds_for_se
from inspo.eval.winrate import compare, fit_logistic, lc_win_rate, outcomes
from inspo.models import BUNDLED_SMOLLM2, load_causal_lm, load_tokenizer
from tests.helpers import TINY_CONFIG

PROMPTS = [
    {"id": "a", "prompt": "Describe the moon. Answer in at most 20 words.",
     "constraints": [{"family": "max_words", "params": {"n": 20}}]},
    {"id": "b", "prompt": "Describe frogs. Do not use any commas. End your answer with a question.",
     "constraints": [{"family": "no_commas", "params": {}}, {"family": "ends_with_question", "params": {}}]},
    {"id": "c", "prompt": "Explain tides. Include the word \"moon\" in your answer.",
     "constraints": [{"family": "include_keyword", "params": {"word": "moon"}}]},
]


def test_outcomes_count_ties_as_half() -> None:
    assert outcomes([1.0, 0.5, 0.0, 1 / 3], [0.5, 0.5, 1.0, 1 / 3]).tolist() == [1.0, 0.5, 0.0, 0.5]


def test_win_rate_and_standard_error() -> None:
    """Outcomes 1, 1, 0.5, 0: win rate 2.5 / 4 = 0.625; sample variance ((3/8)^2 * 2 + (1/8)^2 + (5/8)^2) / 3
    = (18 + 1 + 25) / 192 = 44 / 192, so the standard error is sqrt(44 / 192 / 4) = 0.2394."""
    result = compare([1, 1, 0.5, 0], [0, 0.5, 0.5, 1], [10, 10, 10, 10], [10, 10, 10, 10])
    assert (result.wins, result.ties, result.losses) == (2, 1, 1)
    assert result.win_rate == pytest.approx(0.625)
    assert result.win_rate_se == pytest.approx(np.sqrt(44 / 192 / 4), abs=1e-9)


def test_lc_win_rate_removes_a_pure_length_effect() -> None:
    """80 prompts where the model is 5 tokens longer (60 wins, 20 losses), 20 where it is 5 shorter (5 wins, 15
    losses). Raw win rate 65/100. The two-point logistic fit is saturated: sigma(a + b) = 3/4 and
    sigma(a - b) = 1/4, so a = 0 and the LC win rate at zero length difference is exactly 1/2."""
    model = [1.0] * 60 + [0.0] * 20 + [1.0] * 5 + [0.0] * 15
    lengths = [15] * 80 + [5] * 20
    result = compare(model, [0.5] * 100, lengths, [10] * 100)
    assert result.win_rate == pytest.approx(0.65)
    assert result.lc_win_rate == pytest.approx(0.5, abs=1e-6)
    assert result.length_slope > 0


def test_lc_win_rate_equals_win_rate_at_equal_lengths() -> None:
    """With every length difference 0 only the intercept is fitted: sigma(a) = mean outcome = 0.7. The sandwich
    standard error is then the empirical one of the outcomes: squared deviations 6 * 0.3^2 + 2 * 0.2^2 + 2 * 0.7^2
    = 1.6, so SE = sqrt(1.6 / 9 / 10) = 0.1333. The old model-based (Bernoulli) SE, p (1 - p) / sqrt(n p (1 - p))
    = sqrt(0.21 / 10) = 0.1449, counted the two ties as if they were coin flips."""
    outcome = np.array([1.0] * 6 + [0.5] * 2 + [0.0] * 2)
    rate, se, slope = lc_win_rate(outcome, [0] * 10)
    assert rate == pytest.approx(0.7, abs=1e-6)
    assert se == pytest.approx(np.sqrt(1.6 / 90), rel=1e-3)
    assert slope == pytest.approx(0.0, abs=1e-6)


def _simulated_outcomes(rng: np.random.Generator, n: int, tie: float = 0.58) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes in {0, 1/2, 1} whose mean given the length difference d follows the LC model exactly:
    E[o | d] = sigma(0.3 + 0.2 d / 10), with P(tie) = 0.58 everywhere (as on the verifiable benchmark)."""
    d = rng.integers(-20, 21, n).astype(float)
    mean = 1 / (1 + np.exp(-(0.3 + 0.2 * d / 10)))
    u = rng.random(n)
    return np.where(u < mean - tie / 2, 1.0, np.where(u < mean + tie / 2, 0.5, 0.0)), d


def test_lc_win_rate_se_is_calibrated_with_ties() -> None:
    """1,000 simulated benchmarks of 300 prompts with 58% ties: the sandwich 2-SE interval covers the true LC win
    rate sigma(0.3) = 0.574 in about 95% of them, and its SE matches the spread of the estimates; the old
    model-based SE (inverse Fisher information, Bernoulli variance) is about 1.5x too wide (coverage ~99.9%)."""
    rng = np.random.default_rng(0)
    truth = 1 / (1 + np.exp(-0.3))
    estimates, new_se, old_se = [], [], []
    for _ in range(1000):
        outcome, d = _simulated_outcomes(rng, 300)
        rate, se, _ = lc_win_rate(outcome, d)
        _, model_cov, _ = fit_logistic(outcome, d / np.sqrt(np.mean(d**2)))
        estimates.append(rate)
        new_se.append(se)
        old_se.append(rate * (1 - rate) * np.sqrt(model_cov[0, 0]))
    estimates, new_se, old_se = np.array(estimates), np.array(new_se), np.array(old_se)
    coverage_new = np.mean(np.abs(estimates - truth) <= 2 * new_se)
    coverage_old = np.mean(np.abs(estimates - truth) <= 2 * old_se)
    assert 0.93 <= coverage_new <= 0.975
    assert coverage_old > 0.99
    spread = estimates.std()
    assert new_se.mean() / spread == pytest.approx(1.0, abs=0.08)
    assert old_se.mean() / spread > 1.35


def test_paired_difference_golden() -> None:
    """a = 1, 2, 3, 4 and b = 1.5, 2.5, 3, 4.5 (the same prompts, so the same difficulty ordering): d = -0.5,
    -0.5, 0, -0.5, mean -0.375, std(d) = 0.25, paired SE 0.125. Unpaired: se_a = 1.291 / 2 = 0.6455,
    se_b = 1.25 / 2 = 0.625, hypot = 0.8985: seven times larger, because it ignores the shared difficulty."""
    result = paired_difference([1, 2, 3, 4], [1.5, 2.5, 3, 4.5])
    assert result.mean == pytest.approx(-0.375)
    assert result.se == pytest.approx(0.125)
    assert result.independent_se == pytest.approx(np.hypot(np.sqrt(5 / 3) / 2, 0.625))
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([1, 2], [1])


def test_paired_se_smaller_under_positive_and_larger_under_negative_correlation() -> None:
    """Two models on 500 prompts sharing a prompt difficulty (correlation +0.8): the paired SE is far below the
    unpaired one and matches the spread of the mean difference over 400 replications; with opposite difficulty
    (negative correlation) the paired SE is the larger one."""
    rng = np.random.default_rng(1)
    means, paired, unpaired, opposite = [], [], [], []
    for _ in range(400):
        difficulty = rng.normal(size=500)
        a = difficulty + 0.5 * rng.normal(size=500) + 0.05
        b = difficulty + 0.5 * rng.normal(size=500)
        result = paired_difference(a, b)
        means.append(result.mean)
        paired.append(result.se)
        unpaired.append(result.independent_se)
        flipped = paired_difference(a, -difficulty + 0.5 * rng.normal(size=500))
        opposite.append(flipped.se > flipped.independent_se)
    assert np.mean(paired) < 0.5 * np.mean(unpaired)
    assert np.mean(paired) / np.std(means) == pytest.approx(1.0, abs=0.12)
    assert all(opposite)


def test_head_to_head_se_uses_the_empirical_variance() -> None:
    """Head-to-head scores 1, 1/2, 1/2, 0 (two ties): win rate 1/2, SE std(o) / sqrt(4) = sqrt(1/6) / 2 = 0.2041
    (the Bernoulli formula sqrt(0.25 / 4) = 0.25 would treat the ties as coin flips)."""
    scores = head_to_head([1.0, 0.5, 0.5, 0.0], [0.0, 0.5, 0.5, 1.0])
    assert scores.tolist() == [1.0, 0.5, 0.5, 0.0]
    result = crossed_mean([scores])
    assert result.mean == 0.5 and result.seed_se is None
    assert result.se == pytest.approx(np.sqrt(1 / 6) / 2)


def test_crossed_mean_golden() -> None:
    """Table (seeds x prompts) [[1, 1/2, 0], [1, 1, 1/2]]: prompt means 1, 3/4, 1/4 (variance 7/48, part 7/144);
    seed means 1/2, 5/6 (variance 1/18); residuals +-1/6, +-1/12, +-1/12, MS_e = (1/12) / 2 = 1/24; seed part
    (1/18 - 1/72) / 2 = 3/144. SE = sqrt(10/144) = 0.2635."""
    result = crossed_mean([[1, 0.5, 0], [1, 1, 0.5]])
    assert result.mean == pytest.approx(2 / 3)
    assert result.prompt_se == pytest.approx(np.sqrt(7 / 144))
    assert result.seed_se == pytest.approx(np.sqrt(3 / 144))
    assert result.se == pytest.approx(np.sqrt(10) / 12)


def test_crossed_mean_se_is_unbiased_under_the_crossed_model() -> None:
    """h[s, i] = a_s + b_i + e_si with sd 0.05 (seed), 0.3 (prompt), 0.2 (noise), 3 seeds x 200 prompts: the true
    variance of the grand mean is 0.05^2 / 3 + 0.3^2 / 200 + 0.2^2 / 600 = 0.001350. The mean estimated SE^2 over
    3,000 tables is within 10% of it; the prompt-only SE^2 misses the seed part (0.000833, 62% of it)."""
    rng = np.random.default_rng(2)
    truth = 0.05**2 / 3 + 0.3**2 / 200 + 0.2**2 / 600
    estimates, se2, prompt_se2 = [], [], []
    for _ in range(3000):
        h = rng.normal(0, 0.05, (3, 1)) + rng.normal(0, 0.3, (1, 200)) + rng.normal(0, 0.2, (3, 200))
        result = crossed_mean(h)
        estimates.append(result.mean)
        se2.append(result.se**2)
        prompt_se2.append(result.prompt_se**2)
    assert np.mean(se2) / truth == pytest.approx(1.0, abs=0.1)
    assert np.var(estimates) / truth == pytest.approx(1.0, abs=0.1)
    assert np.mean(prompt_se2) < 0.5 * truth


def test_seeds_for_se_golden() -> None:
    """h[s, i] = a_s + b_i, a = (0, 0.1), b = (0, 0.06, 0, 0.06): no residual, seed means 0.03 / 0.13 (variance
    0.005: the variance of one seed), prompt means 0.05 / 0.11 / 0.05 / 0.11 (variance 0.0012, prompt part 0.0003).
    SE 0.015 needs 0.005 / S <= 0.015^2 - 0.0003 < 0: no number of seeds; SE 0.03 needs S >= 0.005 / 0.0006 = 8.3."""
    result = crossed_mean([[0, 0.06, 0, 0.06], [0.1, 0.16, 0.1, 0.16]])
    assert result.seeds * result.seed_se**2 == pytest.approx(0.005) and result.prompt_se**2 == pytest.approx(0.0003)
    assert seeds_for_se(result, 0.015) is None and seeds_for_se(result, 0.03) == 9
    assert seeds_for_se(result, 1.0) == 1  # met with fewer seeds than there are
    assert seeds_for_se(crossed_mean([[0, 0.06, 0, 0.06]]), 0.03) is None  # one seed: no seed variance


def test_length_reading_golden() -> None:
    """Seed 0: InSPO cuts prompt 2, standard prompt 1 (cut-rate difference 0); neither cut 0 and 3: InSPO wins one,
    ties one (0.75 on 2 prompts). Seed 1: InSPO cuts 3 of 4 and loses everything (difference 0.75; 0 on 1 prompt).
    Pooled (2 x 0.75 + 0) / 3 = 0.5; SE over seeds sqrt(2 x ((2 x 0.25)^2 + (1 x -0.5)^2)) / 3 = 1/3."""
    def model(rewards, cut):
        return {"sets": {"own": {"reward": rewards, "truncated": cut}}}
    inspo = [model([1, 0, 0.5, 1], [0, 0, 1, 0]), model([0, 0, 0, 0], [1, 1, 1, 0])]
    standard = [model([0, 0, 0.5, 1], [0, 1, 0, 0]), model([1, 1, 1, 1], [0, 0, 0, 0])]
    out = length_reading(inspo, standard)
    assert out["cut_rate_diff_per_seed"] == [0.0, 0.75] and out["finished_prompts_per_seed"] == [2, 1]
    assert out["finished_head_to_head_per_seed"] == [0.75, 0.0]
    assert out["finished_head_to_head"] == pytest.approx(0.5) and out["finished_head_to_head_se"] == pytest.approx(1 / 3)
    assert out["cut_diff_vs_head_to_head_r"] is None  # two seeds: no correlation worth the name


def test_lc_win_rate_stays_finite_under_separation() -> None:
    rate, se, _ = lc_win_rate(np.array([1.0, 1.0, 0.0, 0.0]), [3, 2, -2, -3])
    assert np.isfinite(rate) and np.isfinite(se) and 0.0 < rate < 1.0


def test_left_pad_right_aligns_rows() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_generate_restores_training_mode_and_encodes_without_a_chat_template(tokenizer) -> None:
    """The one generation helper serves the samples callback, which generates from the policy mid-training: the
    model must be back in training mode afterwards (dropout on), and a base model's tokenizer without a chat
    template gets its prompt as plain text (the callback's behaviour before it shared this helper)."""
    import copy

    from tests.helpers import tiny_model

    model = tiny_model().train()
    (answers,) = generate(model, tokenizer, ["Say hi."], max_new_tokens=3)
    assert model.training and 0 <= answers[0].tokens <= 3
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    assert encode_prompts(plain, ["Say hi.", "Two"]) == [plain("Say hi.").input_ids, plain("Two").input_ids]
    assert encode_prompts(tokenizer, ["Say hi."])[0] != plain("Say hi.").input_ids  # the template was applied


def test_samples_callback_answers_like_inspo_eval(tokenizer) -> None:
    """The samples table and ``inspo eval`` answer a prompt through the same function: the same greedy text and
    length (one prompt per call, as the callback generates)."""
    from types import SimpleNamespace

    from inspo.callbacks import SampleGenerations
    from tests.helpers import tiny_model

    model = tiny_model(seed=3)
    prompts = ["Give three tips for staying healthy.", "Name a colour."]
    callback = SampleGenerations(prompts=prompts, max_new_tokens=5)
    rows = callback._generate(model, SimpleNamespace(tokenizer=tokenizer))
    expected = generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=1)
    assert rows == [{"text": g.text, "tokens": g.tokens} for (g,) in expected]


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two tiny random models (trained stand-in, baseline) and one whose tokenizer lost its chat template."""
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = load_tokenizer(BUNDLED_SMOLLM2)
    folders = []
    for seed, name in ((0, "trained"), (1, "base"), (0, "no_template")):
        folder = root / name
        load_causal_lm(BUNDLED_SMOLLM2, random_init=TINY_CONFIG, seed=seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders.append(folder)
    (folders[2] / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folders[2] / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folders[2] / "tokenizer_config.json").write_text(json.dumps(config))
    return folders[0], folders[1], folders[2]


def _prompts_file(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def _eval(*args: str) -> None:
    torch.set_num_threads(1)
    cli_main(["eval", *args, "--max-new-tokens", "6", "--threads", "1"])


def test_eval_end_to_end(tiny_folders: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    trained, base, _ = tiny_folders
    prompts = _prompts_file(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "eval"
    _eval("--model", f"mine={trained}", "--baseline", str(base), "--prompts", str(prompts), "--out", str(out))
    result = json.loads((out / "winrate.json").read_text())
    model = result["models"]["mine"]
    assert result["n_prompts"] == 3 and model["n"] == 3
    assert model["wins"] + model["ties"] + model["losses"] == 3
    assert model["win_rate"] == (model["wins"] + model["ties"] / 2) / 3 and 0.0 <= model["lc_win_rate"] <= 1.0
    assert set(model["win_rate_by_family"]) == {"max_words", "no_commas", "ends_with_question", "include_keyword"}
    rows = [json.loads(line) for line in (out / "generations" / "mine.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["a", "b", "c"] and all(row["tokens"] <= 6 for row in rows)
    for name in ("winrate.md", "winrate.png", "reward_vs_length.png"):
        assert (out / name).stat().st_size > 0
    assert "| mine |" in capsys.readouterr().out
    # A second run with the same settings reuses both models' generations.
    stamp = (out / "generations" / "baseline.jsonl").stat().st_mtime_ns
    _eval("--model", f"mine={trained}", "--baseline", str(base), "--prompts", str(prompts), "--out", str(out))
    assert (out / "generations" / "baseline.jsonl").stat().st_mtime_ns == stamp


def test_a_model_against_itself_ties_every_prompt(tiny_folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """The baseline as ``--model``: greedy answers are the same text, so the same gold reward, on every prompt:
    3 ties, win rate (0 + 3/2) / 3 = 1/2 exactly with standard error 0, and (all length differences 0) the LC win
    rate sigma(a) = 1/2 too; per family likewise. A swapped or mis-aligned comparison would give wins or losses."""
    _, base, _ = tiny_folders
    prompts = _prompts_file(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "eval"
    _eval("--model", f"itself={base}", "--baseline", str(base), "--prompts", str(prompts), "--out", str(out))
    model = json.loads((out / "winrate.json").read_text())["models"]["itself"]
    assert (model["wins"], model["ties"], model["losses"]) == (0, 3, 0)
    assert model["win_rate"] == 0.5 and model["win_rate_se"] == 0.0
    assert model["lc_win_rate"] == pytest.approx(0.5, abs=1e-9) and model["length_slope"] == pytest.approx(0, abs=1e-9)
    assert {family: r["win_rate"] for family, r in model["win_rate_by_family"].items()} == {
        "max_words": 0.5, "no_commas": 0.5, "ends_with_question": 0.5, "include_keyword": 0.5}
    rows = {name: [json.loads(line) for line in (out / "generations" / f"{name}.jsonl").read_text().splitlines()]
            for name in ("itself", "baseline")}
    assert rows["itself"] == rows["baseline"]


def _error(capsys: pytest.CaptureFixture, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _eval(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("inspo: error:")
    return last


def test_missing_model_folder(tiny_folders, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    prompts = _prompts_file(tmp_path / "p.jsonl", PROMPTS)
    missing = tmp_path / "runs" / "nope" / "hf_model"
    err = _error(capsys, "--model", str(missing), "--baseline", str(tiny_folders[1]), "--prompts", str(prompts),
                 "--out", str(tmp_path / "o"))
    assert f"model folder not found: {missing}" in err


@pytest.mark.parametrize("out", ["taken", "taken/eval"])
def test_an_output_folder_under_a_file_stops_before_any_model_loads(tiny_folders, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture, monkeypatch,
                                                                   out: str) -> None:
    """It ended in a NotADirectoryError traceback, after the baseline had been loaded."""
    from inspo.eval import evaluate

    monkeypatch.setattr(evaluate, "load_causal_lm", lambda *a, **k: pytest.fail("a model was loaded"))
    (tmp_path / "taken").write_text("a file")
    prompts = _prompts_file(tmp_path / "p.jsonl", PROMPTS)
    err = _error(capsys, "--model", str(tiny_folders[0]), "--baseline", str(tiny_folders[1]), "--prompts",
                 str(prompts), "--out", str(tmp_path / out))
    assert err.startswith(f"inspo: error: --out {tmp_path / out}") and f"{tmp_path / 'taken'} is a file" in err


@pytest.mark.parametrize(("row", "expected"), [
    ('{"prompt": "Hi", "constraints": [', "line 2: invalid JSON"),
    ({"constraints": [{"family": "no_commas"}]}, "line 2: missing or empty string field 'prompt'"),
    ({"prompt": "Hi", "constraints": []}, "line 2: missing or empty list field 'constraints'"),
    ({"prompt": "Hi", "constraints": [{"family": "shout"}]}, "line 2: constraint 0: unknown constraint family"),
    ({"prompt": "Hi", "constraints": [{"family": "max_words", "params": {}}]}, "line 2: constraint 0:"),
])
def test_malformed_prompt_rows(tiny_folders, tmp_path: Path, capsys: pytest.CaptureFixture, row, expected) -> None:
    prompts = _prompts_file(tmp_path / "p.jsonl", [PROMPTS[0], row, PROMPTS[1]])
    err = _error(capsys, "--model", str(tiny_folders[0]), "--baseline", str(tiny_folders[1]), "--prompts",
                 str(prompts), "--out", str(tmp_path / "o"))
    assert f"{prompts}: {expected}" in err


def test_tokenizer_without_chat_template(tiny_folders, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    prompts = _prompts_file(tmp_path / "p.jsonl", PROMPTS)
    err = _error(capsys, "--model", str(tiny_folders[2]), "--baseline", str(tiny_folders[1]), "--prompts",
                 str(prompts), "--out", str(tmp_path / "o"))
    assert "has no chat template" in err and str(tiny_folders[2]) in err

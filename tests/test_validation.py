"""Row validation at setup (inspo.data.validate): each bad input, the report, on_invalid and min_valid_fraction."""

from __future__ import annotations

import json
import logging

import pytest
from lightning.pytorch import Trainer

from inspo import module as module_module
from inspo.data import validate
from inspo.data.datamodule import PreferenceDataModule
from inspo.data.formats import RowError, read_rows, to_record
from inspo.data.options import DataSource, ReadOptions
from inspo.data.validate import read_pairs
from inspo.errors import ConfigError, DataError
from inspo.module import PreferenceModule
from tests.helpers import TINY_CONFIG

GOOD = [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": "No idea."} for i in range(40)]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def answer(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def lines(rows: list) -> bytes:
    """JSON lines; a ``bytes`` item is written as is (a broken line)."""
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def write(tmp_path, rows: list, name: str = "pairs.jsonl"):
    path = tmp_path / name
    path.write_bytes(lines(rows))
    return path


def read(tokenizer, path, **options):
    return read_pairs(str(path), read_rows(path, keep_going=True), tokenizer, ReadOptions(**options))


# (bad row, reason, field, start of the row's message after "file: row 4: ")
BAD_ROWS = [
    ({"prompt": "p", "rejected": "r"}, "missing_field", "chosen", "missing field 'chosen' (fields present: "),
    ({"prompt": None, "chosen": "c", "rejected": "r"}, "null_field", "prompt", "field 'prompt' is null"),
    ({"prompt": "p", "chosen": 3, "rejected": "r"}, "wrong_type", "chosen",
     "field 'chosen' must be a string or a list of messages, got int"),
    ({"prompt": "p", "chosen": ["a", "b"], "rejected": "r"}, "wrong_type", "chosen",
     "field 'chosen': message 0: expected an object with 'role' and 'content', got str"),
    ({"prompt": "p", "chosen": "c", "rejected": " \n\t"}, "empty", "rejected", "field 'rejected' is an empty response"),
    # a message list with nothing in it was taken (the policy answered a blank template), a blank string was not
    ({"prompt": [system(""), user(" \n")], "chosen": "c", "rejected": "r"}, "empty", "prompt",
     "field 'prompt': every message's content is empty or whitespace"),
    ({"prompt": "p", "chosen": "Same answer.", "rejected": " Same answer.\n"}, "identical_responses",
     "chosen/rejected", "fields 'chosen' and 'rejected' are identical"),
    ({"prompt": [{"from": "human", "value": "hi"}], "chosen": "c", "rejected": "r"}, "bad_message", "prompt",
     "field 'prompt': message 0: missing key 'role'"),
    ({"prompt": [{"role": "human", "content": "hi"}], "chosen": "c", "rejected": "r"}, "unknown_role", "prompt",
     "field 'prompt': message 0: unknown role 'human' (expected one of: assistant, system, tool, user)"),
    ({"prompt": "p", "chosen": [{"role": "assistant", "content": "c"}, {"role": "user", "content": "more?"}],
      "rejected": "r"}, "last_turn_not_assistant", "chosen",
     "field 'chosen': the last message must have role 'assistant', got 'user'"),
    # rendered as a second assistant turn after the prompt's own (TRL would continue it as a prefill instead)
    ({"prompt": [user("Capital of France?"), answer("The capital")], "chosen": "is Paris.", "rejected": "is Rome."},
     "prompt_ends_with_assistant", "prompt", ("field 'prompt': the last message has role 'assistant', so each "
     "response would be a second assistant turn after it")),
    ({"prompt": "Capital of France?", "chosen": [user("Capital of France?"), answer("Paris.")],
      "rejected": [user("Capital of Italy?"), answer("Rome.")]}, "different_histories", "chosen/rejected",
     ("fields 'chosen' and 'rejected' follow different conversations: their earlier turns differ at message 0 "
     "(content 'Capital of France?' vs 'Capital of Italy?')")),
    ({"prompt": "Capital of France?", "chosen": [system("Be brief."), user("Capital of France?"), answer("Paris.")],
      "rejected": "Rome."}, "history_not_prompt", "chosen",
     ("field 'chosen': the turns before its answer are not the prompt: they differ from it at message 0 "
     "(role 'system' vs 'user')")),
    (["p", "c", "r"], "not_an_object", None, "expected an object with fields 'prompt', 'chosen', 'rejected'"),
    (b'{"prompt": "p", "chosen": ', "invalid_json", None, "invalid JSON: Expecting value (column 28)"),
    (b'{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}', "invalid_utf8", None,
     "invalid UTF-8: byte 0xe9 at column 16"),
    # valid JSON, but half of a surrogate pair has no UTF-8 form: the tokenizer's TypeError named no row
    (b'{"prompt": [{"role": "user", "content": "caf\\ud800"}], "chosen": "c", "rejected": "r"}',
     "unpaired_surrogate", "prompt", ("field 'prompt': message 0: 'content': unpaired surrogate '\\ud800' at "
     "character 4 (half of a JSON \\u escape pair), not valid Unicode")),
]


@pytest.mark.parametrize(("bad", "reason", "field", "detail"), BAD_ROWS, ids=[case[1] for case in BAD_ROWS])
def test_each_bad_row_stops_setup_by_default_and_is_dropped_under_skip(tokenizer, tmp_path, bad, reason, field,
                                                                       detail):
    path = write(tmp_path, [*GOOD[:3], bad, *GOOD[3:30]])
    unit = "line" if reason.startswith("invalid_") else "row"
    with pytest.raises(DataError) as info:
        read(tokenizer, path)
    message = str(info.value)
    assert message.startswith(f"{path}: 1 of 31 rows are invalid (data.read.on_invalid=error):\n")
    assert f"  {path}: {unit} 4: {detail}" in message
    where = f" in {field!r}" if field else ""
    assert f"      1 {unit} with {validate.REASONS[reason]}{where}: 4\n" in message
    assert "set data.read.on_invalid=skip" in message
    pairs, report = read(tokenizer, path, on_invalid="skip")
    assert report.stats() == {"rows_read": 31, "kept": 30, "invalid": 1, "duplicates": 0, "truncated": 0,
                              f"dropped_{reason}": 1}
    assert 4 not in [pair.row for pair in pairs] and len(pairs) == 30


def test_error_names_the_first_five_rows_and_the_count(tokenizer, tmp_path):
    rows = list(GOOD)
    for index in (3, 8, 11, 20, 25, 30, 33):
        rows[index] = {"prompt": "p", "rejected": "r"}
    rows[36] = {"prompt": "p", "chosen": "c", "rejected": ""}
    path = write(tmp_path, rows)
    with pytest.raises(DataError) as info:
        read(tokenizer, path)
    assert str(info.value).splitlines()[:5] == [
        f"{path}: 8 of 40 rows are invalid (data.read.on_invalid=error):",
        f"  {path}: row 4: missing field 'chosen' (fields present: 'prompt', 'rejected')",
        "      7 rows with missing field in 'chosen': 4, 9, 12, 21, 26 and 2 more",
        f"  {path}: row 37: field 'rejected' is an empty response",
        "      1 row with empty or whitespace-only text in 'rejected': 37",
    ]


def test_pairs_from_different_conversations_are_counted_like_other_invalid_rows(tokenizer, tmp_path):
    """Response lists that follow different conversations: first five row numbers, the count, dropped under skip."""
    bad = {"prompt": "What is 2 plus 2?", "chosen": [user("What is 2 plus 2?"), answer("4.")],
           "rejected": [user("What is 3 plus 3?"), answer("6.")]}
    rows = [bad if index in (3, 8, 11, 20, 25, 30, 33) else row for index, row in enumerate(GOOD)]
    path = write(tmp_path, rows)
    with pytest.raises(DataError) as info:
        read(tokenizer, path)
    assert str(info.value).splitlines()[:3] == [
        f"{path}: 7 of 40 rows are invalid (data.read.on_invalid=error):",
        (f"  {path}: row 4: fields 'chosen' and 'rejected' follow different conversations: their earlier turns "
        "differ at message 0 (content 'What is 2 plus 2?' vs 'What is 3 plus 3?')"),
        ("      7 rows with chosen and rejected following different conversations in 'chosen/rejected': "
        "4, 9, 12, 21, 26 and 2 more"),
    ]
    pairs, report = read(tokenizer, path, on_invalid="skip", min_valid_fraction=0.8)
    assert report.stats()["dropped_different_histories"] == 7 and len(pairs) == 33


CONVERSATION = [system("Be brief."), user("Capital of France?")]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        # the same conversation given three ways, with surrounding whitespace that does not count
        ({"prompt": "Capital of France? ", "chosen": [user("Capital of France?\n"), answer("Paris.")],
          "rejected": [user("Capital of France?"), answer("Rome.")]}, None),
        ({"prompt": CONVERSATION, "chosen": [*CONVERSATION, answer("Paris.")], "rejected": [answer("Rome.")]}, None),
        ({"prompt": CONVERSATION, "chosen": "Paris.", "rejected": [*CONVERSATION, answer("Rome.")]}, None),
        # different earlier turns: interior whitespace, an extra turn, a history that is not the prompt
        ({"prompt": "Capital of France?", "chosen": [user("Capital  of France?"), answer("Paris.")],
          "rejected": [user("Capital of France?"), answer("Rome.")]}, "different_histories"),
        ({"prompt": CONVERSATION, "chosen": [*CONVERSATION, answer("Paris."), user("And Italy?"), answer("Rome.")],
          "rejected": [*CONVERSATION, answer("Lyon.")]}, "different_histories"),
        ({"prompt": "And Italy?", "chosen": [*CONVERSATION, answer("Paris."), user("And Italy?"), answer("Rome.")],
          "rejected": [*CONVERSATION, answer("Paris."), user("And Italy?"), answer("Milan.")]}, "history_not_prompt"),
        ({"prompt": CONVERSATION, "chosen": [user("Capital of France?"), answer("Paris.")], "rejected": "Rome."},
         "history_not_prompt"),
    ],
    ids=["whitespace", "one-repeats-prompt", "other-repeats-prompt", "interior-whitespace", "extra-turn",
         "prompt-is-last-turn-only", "system-missing"],
)
def test_response_histories_must_be_one_conversation_and_the_prompt(row, reason):
    if reason is None:
        record = to_record(row, "mem", 1)
        assert record.prompt == row["prompt"]  # the prompt field is what gets rendered
        return
    with pytest.raises(RowError) as info:
        to_record(row, "mem", 1)
    assert info.value.reason == reason


@pytest.mark.parametrize("rejected", [[*CONVERSATION, answer("Rome.")], [answer("Rome.")], "Rome."],
                         ids=["both-repeat-it", "one-repeats-it", "string-rejected"])
def test_without_a_prompt_field_the_repeated_conversation_is_the_prompt(rejected):
    """TRL's implicit prompt (Anthropic HH): the row reads as the same pair with the conversation as its prompt."""
    explicit = to_record({"prompt": CONVERSATION, "chosen": "Paris.", "rejected": "Rome."}, "mem", 1)
    implicit = to_record({"chosen": [*CONVERSATION, answer("Paris.")], "rejected": rejected}, "mem", 1)
    assert (implicit.prompt, implicit.chosen, implicit.rejected) == (CONVERSATION, "Paris.", "Rome.")
    assert implicit == explicit


@pytest.mark.parametrize(
    ("row", "reason", "detail"),
    [
        ({"chosen": "Human: hi Assistant: hello", "rejected": "Human: hi Assistant: go"}, "missing_field",
         ("missing field 'prompt' (fields present: 'chosen', 'rejected'); without it, the responses must be message "
         "lists that repeat the conversation before their answers")),
        ({"chosen": [answer("Paris.")], "rejected": [answer("Rome.")]}, "missing_field", "missing field 'prompt'"),
        ({"chosen": [user("Capital of France?"), answer("Paris.")], "rejected": [user("Of Italy?"), answer("Rome.")]},
         "different_histories", "fields 'chosen' and 'rejected' follow different conversations"),
        ({"chosen": [user("Hi"), answer("Hello."), answer("Paris.")], "rejected": [answer("Rome.")]},
         "prompt_ends_with_assistant", ("the implicit prompt (no field 'prompt': the turns the responses repeat "
                                        "before their answers): the last message has role 'assistant'")),
    ],
    ids=["strings", "answers-only", "different-conversations", "history-ends-with-assistant"],
)
def test_an_implicit_prompt_needs_one_conversation_before_the_answers(row, reason, detail):
    with pytest.raises(RowError) as info:
        to_record(row, "mem", 1)
    assert info.value.reason == reason
    assert str(info.value).startswith(f"mem: row 1: {detail}")


def test_skip_reports_counts_and_logs_them(tokenizer, tmp_path, caplog):
    rows = [*GOOD[:20], {"prompt": "p"}, *GOOD[20:], GOOD[0], GOOD[1]]  # 1 invalid of 43, 2 duplicates
    path = write(tmp_path, rows)
    with caplog.at_level(logging.INFO, logger="inspo"):
        pairs, report = read(tokenizer, path, on_invalid="skip")
    assert (report.rows_read, report.kept, report.invalid, report.duplicates) == (43, 42, 1, 2)
    assert f"data: {path}: rows read 43, kept 42, dropped 1 (missing field 1), duplicate pairs 2 (kept)" in caplog.text
    assert "row 21: missing field 'chosen'" in caplog.text
    pairs, report = read(tokenizer, path, on_invalid="skip", duplicates="drop")
    assert report.kept == 40 and report.stats()["dropped_duplicate"] == 2 and report.invalid == 1
    assert [pair.row for pair in pairs] == [*range(1, 21), *range(22, 42)]


def test_skip_still_stops_below_min_valid_fraction(tokenizer, tmp_path):
    rows = [row if i % 5 else {"prompt": row["prompt"], "chosen": None, "rejected": "r"} for i, row in enumerate(GOOD)]
    path = write(tmp_path, rows)  # 8 of 40 invalid: 80% valid
    with pytest.raises(DataError) as info:
        read(tokenizer, path, on_invalid="skip")
    assert str(info.value).splitlines()[:3] == [
        f"{path}: only 32 of 40 rows are valid (80.0%), below data.read.min_valid_fraction=0.9:",
        f"  {path}: row 1: field 'chosen' is null",
        "      8 rows with null field in 'chosen': 1, 6, 11, 16, 21 and 3 more",
    ]
    pairs, _ = read(tokenizer, path, on_invalid="skip", min_valid_fraction=0.8)
    assert len(pairs) == 32


def test_nothing_left_stops_even_with_min_valid_fraction_zero(tokenizer, tmp_path):
    path = write(tmp_path, [{"prompt": "p", "chosen": "c", "rejected": "c"}] * 3)
    with pytest.raises(DataError, match=r"pairs.jsonl: no valid pairs \(.*rows read 3, kept 0, dropped 3 "
                                        r"\(chosen identical to rejected 3\)"):
        read(tokenizer, path, on_invalid="skip", min_valid_fraction=0.0)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty.jsonl: no valid pairs \(.*rows read 0"):
        read(tokenizer, tmp_path / "empty.jsonl")


def test_a_long_prompt_is_truncated_not_dropped(tokenizer, tmp_path):
    """'Too long' is decided after truncation: the prompt is cut from the left (down to max_prompt_length), so it
    always leaves response tokens and the pair is kept and counted as truncated."""
    path = write(tmp_path, [{"prompt": "word " * 400, "chosen": "Yes.", "rejected": "No."}, *GOOD[:9]])
    pairs, report = read(tokenizer, path, max_length=64, max_prompt_length=32)
    assert (report.kept, report.truncated, report.invalid) == (10, 1, 0)
    assert len(pairs[0].prompt) == 64 - len(pairs[0].chosen) - len(pairs[0].rejected)


def test_prompt_too_long_for_any_response_token_is_dropped(tokenizer, tmp_path, monkeypatch):
    """A valid budget cannot produce this (max_prompt_length <= max_length - 2); a stub truncation can."""
    real = validate.truncate_pair
    monkeypatch.setattr(validate, "truncate_pair",
                        lambda pair, *args, **kwargs: None if pair.row == 2 else real(pair, *args, **kwargs))
    path = write(tmp_path, GOOD[:20])
    with pytest.raises(DataError, match=r"row 2: the prompt \(\d+ tokens\) leaves fewer than 2 response tokens "
                                        r"within data.read.max_length=512"):
        read(tokenizer, path)
    pairs, report = read(tokenizer, path, on_invalid="skip")
    assert report.stats()["dropped_prompt_too_long"] == 1 and [p.row for p in pairs] == [1, *range(3, 21)]


def test_responses_identical_after_truncation_are_dropped(tokenizer, tmp_path):
    long = "The answer is a long story that starts like this and goes on. " * 10
    path = write(tmp_path, [{"prompt": "Q?", "chosen": long + "Yes.", "rejected": long + "No."}, *GOOD[:19]])
    with pytest.raises(DataError, match=r"row 1: chosen and rejected are identical after truncation to \d+ tokens"):
        read(tokenizer, path, max_length=64, max_prompt_length=16)


def test_conversational_row_without_a_chat_template_is_reported_per_row(tokenizer, tmp_path):
    conversation = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello.", "rejected": "Bye."}
    path = write(tmp_path, [*GOOD[:19], conversation])
    with pytest.raises(DataError, match=r"row 20: the prompt is a list of chat messages, which needs a chat template"
                                        r".*\n.*1 row with chat template or tokenizer cannot encode the row"):
        read(tokenizer, path, chat_template=False)


def test_json_array_errors_name_the_file_and_line(tmp_path):
    array = tmp_path / "pairs.json"
    array.write_text('[\n  {"prompt": "p", "chosen": "c", "rejected": "r"},\n  {"prompt": }\n]\n')
    with pytest.raises(DataError, match=r"pairs.json: invalid JSON: Expecting value \(line 3, column 14\)"):
        list(read_rows(array, keep_going=True))
    array.write_bytes(b'[\n{"prompt": "p", "chosen": "c", "rejected": "r"},\n{"prompt": "\xff"}]')
    with pytest.raises(DataError, match=r"pairs.json: line 3: invalid UTF-8: byte 0xff"):
        list(read_rows(array, keep_going=True))


def test_datamodule_options_and_stats(tmp_path):
    path = write(tmp_path, [*GOOD[:30], {"prompt": "p"}, GOOD[0]])
    dm = PreferenceDataModule(source=DataSource(path=str(path), val_fraction=0.0),
                              read=ReadOptions(on_invalid="skip", duplicates="drop"))
    dm.setup("fit")
    assert dm.stats == {"rows_read": 32, "kept": 30, "invalid": 1, "duplicates": 1, "truncated": 0,
                        "dropped_missing_field": 1, "dropped_duplicate": 1, "train": 30, "val": 0}
    assert [report.source for report in dm.reports] == [str(path)]
    with pytest.raises(ConfigError, match=r"data.read.min_valid_fraction must be in \[0, 1\], got 1.5"):
        PreferenceDataModule(read=ReadOptions(min_valid_fraction=1.5))


def test_bad_data_stops_the_run_before_any_model_is_loaded(tmp_path, monkeypatch):
    """Lightning runs datamodule.setup before module.configure_model (the weights) in fit."""

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was validated")

    monkeypatch.setattr(module_module, "load_causal_lm", no_model)
    path = write(tmp_path, [*GOOD[:10], {"prompt": "p", "chosen": 1, "rejected": "r"}])
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(DataError, match=r"row 11: field 'chosen' must be a string"):
        trainer.fit(PreferenceModule(random_init=TINY_CONFIG),
                    datamodule=PreferenceDataModule(source=DataSource(path=str(path))))

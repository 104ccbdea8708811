"""Tests of inspo.data: reading rows, records, the tokenisation contract, truncation and the datamodule."""

from __future__ import annotations

import copy
import gzip
import itertools
import json
import logging
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import inspo
from inspo.data import datamodule as datamodule_module
from inspo.data.datamodule import (
    BUNDLED_DATA,
    PairBatch,
    PreferenceDataModule,
    bundled_dataset,
    collate_pairs,
    shared_prompts,
    split_pairs,
)
from inspo.data.formats import PreferenceRecord, read_rows, to_record
from inspo.data.options import DataSource, LoaderOptions, ReadOptions
from inspo.data.tokenize import TokenizedPair, adds_bos, tokenize_record, truncate_pair
from inspo.errors import ConfigError, DataError
from inspo.models import BUNDLED_SMOLLM2, load_tokenizer

ROWS = [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": "No idea."} for i in range(20)]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
]


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(BUNDLED_SMOLLM2)


@pytest.fixture(scope="session")
def bos_tokenizer(tokenizer):
    """SmolLM2 changed to add a BOS (<|endoftext|>, id 0) by default AND render it from its chat template."""
    tok = copy.deepcopy(tokenizer)
    tok.bos_token = "<|endoftext|>"
    tok.add_bos_token = True
    tok.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    assert tok("a").input_ids[0] == tok.bos_token_id == 0
    return tok


def with_template(tokenizer, template: str | None):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def record(prompt="Hi", chosen="Hello there.", rejected="Go away.", row=1) -> PreferenceRecord:
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected, source="mem", row=row)


# ---------------------------------------------------------------- reading rows


def test_read_jsonl_numbers_rows_by_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert list(read_rows(path)) == [(1, {"a": 1}), (3, {"a": 2})]


def test_read_json_array_and_json_lines(tmp_path):
    array = tmp_path / "array.json"
    array.write_text(json.dumps(ROWS[:3]))
    lines = write_jsonl(tmp_path / "lines.json", ROWS[:3])
    assert list(read_rows(array)) == list(read_rows(lines)) == list(enumerate(ROWS[:3], start=1))


def test_read_parquet_with_message_lists(tmp_path):
    rows = [{"prompt": CONVERSATION, "chosen": "Paris.", "rejected": "Rome."}] * 3
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")
    assert list(read_rows(tmp_path / "x.parquet")) == list(enumerate(rows, start=1))


def test_read_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*nope.jsonl"):
        list(read_rows(tmp_path / "nope.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"x.csv: unsupported .*'.csv'.*\.jsonl, \.json, \.parquet"):
        list(read_rows(tmp_path / "x.csv"))
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match="bad.jsonl: line 2: invalid JSON"):
        list(read_rows(tmp_path / "bad.jsonl"))
    # read line by line, these were "invalid UTF-8" on every line (byte 0x8b at column 2, ...)
    (tmp_path / "x.jsonl").write_bytes(gzip.compress(b'{"a": 1}\n' * 3))
    with pytest.raises(DataError, match=r"^.*x.jsonl: the file is gzip-compressed \(decompress it: gunzip\); data "
                       "files are read as plain UTF-8 JSON$"):
        list(read_rows(tmp_path / "x.jsonl"))
    (tmp_path / "x.json").write_text('[{"a": 1}]', encoding="utf-16")
    with pytest.raises(DataError, match=r"x.json: the file is UTF-16 text \(save it as UTF-8\)"):
        list(read_rows(tmp_path / "x.json"))


# ---------------------------------------------------------------- records


def test_standard_row():
    rec = to_record({"q": "Hi", "good": "Hello", "bad": "Bye"}, "f.jsonl", 3, "q", "good", "bad")
    assert rec == PreferenceRecord("Hi", "Hello", "Bye", "f.jsonl", 3)
    assert not rec.is_conversational


def test_conversational_row_keeps_only_the_final_assistant_message():
    full = [*CONVERSATION, {"role": "assistant", "content": "Paris."}]
    rec = to_record({"prompt": CONVERSATION, "chosen": full, "rejected": [{"role": "assistant", "content": "Rome."}]},
                    "f.jsonl", 1)
    assert rec.prompt == CONVERSATION and rec.chosen == "Paris." and rec.rejected == "Rome."
    assert rec.is_conversational


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"prompt": "p", "rejected": "r"}, "missing field 'chosen'"),
        ({"prompt": None, "chosen": "c", "rejected": "r"}, "field 'prompt' is null"),
        ({"prompt": "p", "chosen": 3, "rejected": "r"}, "field 'chosen' must be a string or a list of messages, got int"),
        ({"prompt": "p", "chosen": "c", "rejected": "  \n"}, "field 'rejected' is an empty response"),
        ({"prompt": " ", "chosen": "c", "rejected": "r"}, "field 'prompt' is empty"),
        ({"prompt": [{"role": "user"}], "chosen": "c", "rejected": "r"}, "field 'prompt': message 0: missing key"),
        ({"prompt": "p", "chosen": [{"role": "user", "content": "c"}], "rejected": "r"}, "role 'assistant'"),
        (["p", "c", "r"], "expected an object"),
    ],
)
def test_bad_rows_name_file_row_and_field(raw, match):
    with pytest.raises(DataError, match=f"^data/x.jsonl: row 7: .*{match}"):
        to_record(raw, "data/x.jsonl", 7)


# ---------------------------------------------------------------- tokenisation contract


def test_chat_template_response_carries_the_end_of_turn_token(tokenizer):
    pair = tokenize_record(record(), tokenizer, chat_template=True)
    messages = [{"role": "user", "content": "Hi"}]
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert pair.prompt == tokenizer(prompt_text, add_special_tokens=False).input_ids
    assert tokenizer.decode(pair.chosen) == "Hello there.<|im_end|>\n"
    assert tokenizer.decode(pair.rejected) == "Go away.<|im_end|>\n"
    # pad == eos for SmolLM2; the EOS is still a target (nothing is derived from ids != pad_id).
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.eos_token_id in pair.chosen and tokenizer.eos_token_id in pair.rejected


def test_conversational_prompt_uses_the_message_list(tokenizer):
    pair = tokenize_record(record(prompt=CONVERSATION), tokenizer, chat_template=True)
    text = tokenizer.decode(pair.prompt)
    assert text.startswith("<|im_start|>system\nBe brief.") and text.endswith("<|im_start|>assistant\n")


def test_plain_text_response_ends_with_eos_even_though_pad_is_eos(tokenizer):
    pair = tokenize_record(record(), tokenizer, chat_template=False)
    assert pair.prompt == tokenizer("Hi", add_special_tokens=False).input_ids
    assert pair.chosen == tokenizer("Hello there.", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert pair.chosen[-1] == pair.rejected[-1] == tokenizer.pad_token_id


def test_conversational_rows_need_a_chat_template(tokenizer):
    with pytest.raises(DataError, match="mem: row 1: .*chat messages.*data.read.chat_template is false"):
        tokenize_record(record(prompt=CONVERSATION), tokenizer, chat_template=False)
    with pytest.raises(DataError, match="the tokenizer has no chat template"):
        tokenize_record(record(prompt=CONVERSATION), with_template(tokenizer, None), chat_template=True)
    # A string prompt falls back to plain text when the tokenizer has no template.
    pair = tokenize_record(record(), with_template(tokenizer, None), chat_template=True)
    assert pair.chosen[-1] == tokenizer.eos_token_id


def test_template_that_does_not_extend_the_prompt_is_rejected(tokenizer):
    template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}<asst>{% else %}<user>{% endif %}"
                "{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<gen>{% endif %}")
    with pytest.raises(DataError, match="row 1: the chat template does not extend the prompt"):
        tokenize_record(record(), with_template(tokenizer, template), chat_template=True)


def test_prompt_and_response_are_tokenised_separately_across_a_merging_boundary(tokenizer):
    """Tokenising prompt_text + response_text together merges tokens across the boundary; separately, the prompt
    ids are identical for both responses and equal the prompt's own tokens."""
    # Plain text: "Hello wor" + "ld" tokenises jointly as "Hello" " world".
    pair = tokenize_record(record(prompt="Hello wor", chosen="ld", rejected="m"), tokenizer, chat_template=False)
    joint = tokenizer("Hello world", add_special_tokens=False).input_ids
    assert joint[: len(pair.prompt)] != pair.prompt
    assert pair.prompt == tokenizer("Hello wor", add_special_tokens=False).input_ids
    assert tokenizer.decode(pair.prompt + pair.chosen) == "Hello world<|im_end|>"
    # Template whose generation prompt ends with a space: " yo" would merge into one token.
    template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")
    tok = with_template(tokenizer, template)
    pair = tokenize_record(record(prompt="hi", chosen="yo", rejected="no"), tok, chat_template=True)
    prompt_text, response_text = "user: hi\nassistant: ", "yo\n"
    joint = tok(prompt_text + response_text, add_special_tokens=False).input_ids
    assert joint[: len(pair.prompt)] != pair.prompt
    assert pair.prompt == tok(prompt_text, add_special_tokens=False).input_ids
    assert pair.chosen == tok(response_text, add_special_tokens=False).input_ids


def test_exactly_one_bos(tokenizer, bos_tokenizer):
    bos = bos_tokenizer.bos_token_id
    assert adds_bos(bos_tokenizer) and not adds_bos(tokenizer)
    # Template renders the BOS and the tokenizer adds one by default: still one.
    pair = tokenize_record(record(), bos_tokenizer, chat_template=True)
    assert pair.prompt[0] == bos and pair.prompt.count(bos) == 1
    # Template without BOS: one is prepended.
    pair = tokenize_record(record(), with_template(bos_tokenizer, tokenizer.chat_template), chat_template=True)
    assert pair.prompt[0] == bos and pair.prompt.count(bos) == 1
    # Plain text: one is prepended; responses never get one.
    pair = tokenize_record(record(), bos_tokenizer, chat_template=False)
    assert pair.prompt[0] == bos and pair.prompt.count(bos) == 1
    assert bos not in pair.chosen and bos not in pair.rejected
    # A tokenizer that adds no BOS gets none.
    assert tokenize_record(record(), tokenizer, chat_template=False).prompt[0] != tokenizer.bos_token_id


# ---------------------------------------------------------------- truncation


def make_pair(p: int, w: int, l: int) -> TokenizedPair:
    return TokenizedPair(list(range(100, 100 + p)), list(range(200, 200 + w)), list(range(300, 300 + l)), row=1)


def test_truncation_leaves_fitting_pairs_alone():
    pair = make_pair(5, 3, 3)
    assert truncate_pair(pair, 11, 4) is pair


def test_truncation_cuts_the_prompt_from_the_left_first():
    out = truncate_pair(make_pair(10, 3, 3), max_length=12, max_prompt_length=4)
    assert out.prompt == list(range(104, 110)) and len(out.chosen) == len(out.rejected) == 3


def test_truncation_cuts_the_longer_response_from_the_right():
    # new_P = min(10, max(20 - 25, 8)) = 8, R = 12, w = min(20, max(12 - 5, 6)) = 7, l = min(5, 12 - 7) = 5.
    out = truncate_pair(make_pair(10, 20, 5), max_length=20, max_prompt_length=8)
    assert out.prompt == list(range(102, 110))
    assert out.chosen == list(range(200, 207)) and out.rejected == list(range(300, 305))
    # Equal lengths: w = min(20, max(-8, 6)) = 6, l = 6.
    out = truncate_pair(make_pair(10, 20, 20), max_length=20, max_prompt_length=8)
    assert (len(out.chosen), len(out.rejected)) == (6, 6)


def test_truncation_never_leaves_an_empty_response():
    for p, w, l, max_length in itertools.product(range(1, 7), range(1, 7), range(1, 7), range(3, 12)):
        for max_prompt_length in range(1, max_length - 1):
            pair = make_pair(p, w, l)
            out = truncate_pair(pair, max_length, max_prompt_length)
            assert out is not None and out.longest <= max_length
            assert len(out.chosen) >= 1 and len(out.rejected) >= 1
            assert len(out.prompt) >= min(p, max_prompt_length)
            assert out.prompt == pair.prompt[p - len(out.prompt):]  # a suffix: cut from the left
            assert out.chosen == pair.chosen[: len(out.chosen)] and out.rejected == pair.rejected[: len(out.rejected)]


def test_truncation_can_keep_the_bos():
    pair = make_pair(10, 3, 3)
    out = truncate_pair(pair, max_length=12, max_prompt_length=4, bos_token_id=100)
    assert out.prompt == [100, 105, 106, 107, 108, 109]


def test_truncation_budget_is_validated():
    with pytest.raises(ConfigError, match="max_prompt_length .* at most data.read.max_length - 2"):
        truncate_pair(make_pair(3, 3, 3), max_length=10, max_prompt_length=9)
    with pytest.raises(ConfigError):
        PreferenceDataModule(read=ReadOptions(max_length=10, max_prompt_length=9))


# ---------------------------------------------------------------- datamodule


def numbered(prompts: list[int]) -> list[TokenizedPair]:
    """One pair per entry, prompt ``[entry]``, rows 1, 2, ..."""
    return [TokenizedPair([prompt], [200], [300], row=row) for row, prompt in enumerate(prompts, start=1)]


def test_split_is_deterministic_from_the_seed():
    pairs = numbered(list(range(50)))
    train, val = split_pairs(pairs, 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    held_out = torch.randperm(50, generator=torch.Generator().manual_seed(3))[:10]  # one pair per prompt: as before
    assert [p.row for p in val] == sorted(int(i) + 1 for i in held_out)
    assert [p.row for p in val] == sorted(p.row for p in val)
    assert split_pairs(pairs, 0.2, seed=3) == (train, val)
    assert split_pairs(pairs, 0.2, seed=4)[1] != val
    assert split_pairs(pairs[:1], 0.5, seed=3) == (pairs[:1], [])


@pytest.mark.parametrize("seed", range(6))
def test_split_keeps_every_prompt_on_one_side(seed):
    """Prompts with 1-4 pairs each (UltraFeedback-style): no prompt is in both splits, about the asked fraction is
    held out (at most one prompt's pairs over), and a file of one prompt is not split."""
    sizes = [1 + (7 * k) % 4 for k in range(40)]
    pairs = numbered([k for k, size in enumerate(sizes) for _ in range(size)])
    train, val = split_pairs(pairs, 0.2, seed=seed)
    assert {p.prompt[0] for p in train}.isdisjoint(p.prompt[0] for p in val) and len(train) + len(val) == len(pairs)
    assert round(0.2 * len(pairs)) <= len(val) < round(0.2 * len(pairs)) + 4
    assert shared_prompts(train, val) == 0 and shared_prompts(pairs, val) == len(val)
    assert split_pairs(numbered([5, 5, 5]), 0.5, seed=seed) == (numbered([5, 5, 5]), [])


def test_a_validation_file_sharing_prompts_with_training_is_flagged(tmp_path, caplog):
    train, val = write_jsonl(tmp_path / "train.jsonl", ROWS), write_jsonl(tmp_path / "val.jsonl", ROWS[3:6])
    dm = PreferenceDataModule(source=DataSource(path=str(train), val_path=str(val)))
    with caplog.at_level(logging.INFO, logger="inspo"):
        dm.setup("fit")
    assert f"data: 3 of 3 validation pairs ({val}) have a prompt of the training data ({train})" in caplog.text
    caplog.clear()
    other = write_jsonl(tmp_path / "other.jsonl", [dict(row, prompt=row["prompt"] + " (new)") for row in ROWS[:3]])
    with caplog.at_level(logging.INFO, logger="inspo"):
        PreferenceDataModule(source=DataSource(path=str(train), val_path=str(other))).setup("fit")
    assert "have a prompt of the training data" not in caplog.text


def test_datamodule_end_to_end(tmp_path, tokenizer, caplog):
    dm = PreferenceDataModule(source=DataSource(path=str(write_jsonl(tmp_path / "x.jsonl", ROWS)), val_fraction=0.25),
                              loader=LoaderOptions(batch_size=4))
    with caplog.at_level(logging.INFO, logger="inspo"):
        dm.setup("fit")
    assert dm.stats["rows_read"] == dm.stats["kept"] == 20 and dm.stats["invalid"] == 0
    assert (dm.stats["train"], dm.stats["val"]) == (15, 5)
    assert "rows read 20, kept 20, dropped 0," in caplog.text
    train_pairs = dm.train_pairs
    dm.setup("validate")  # idempotent
    assert dm.train_pairs is train_pairs
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, PairBatch) and len(batch) == 4
    first = next(p for p in dm.train_pairs if p.row == batch.rows[0])
    assert (batch.prompt[0], batch.chosen[0], batch.rejected[0]) == (first.prompt, first.chosen, first.rejected)
    assert tokenizer.decode(batch.chosen[0]).endswith("<|im_end|>\n")
    val_rows = [row for b in dm.val_dataloader() for row in b.rows]
    assert val_rows == sorted(val_rows) and len(val_rows) == 5
    assert [b.rows for b in dm.test_dataloader()] == [b.rows for b in dm.val_dataloader()]
    (fingerprint,) = dm.state_dict().values()  # all a checkpoint holds of the data: a SHA-256 of the training pairs
    assert len(fingerprint) == 64 and PreferenceDataModule().state_dict() == {}  # nothing before the data is read
    again = PreferenceDataModule(source=DataSource(path=str(tmp_path / "x.jsonl"), val_fraction=0.25))
    assert again.train_fingerprint() == fingerprint
    edited = [dict(row, chosen=row["chosen"] + " Sure.") for row in ROWS]
    other = PreferenceDataModule(source=DataSource(path=str(write_jsonl(tmp_path / "x.jsonl", edited)), val_fraction=0.25))
    assert other.train_fingerprint() != fingerprint


def test_training_order_depends_only_on_the_seed(tmp_path):
    path = str(write_jsonl(tmp_path / "x.jsonl", ROWS))

    def order(seed: int, num_workers: int) -> list[int]:
        dm = PreferenceDataModule(source=DataSource(path=path, seed=seed),
                                  loader=LoaderOptions(batch_size=3, num_workers=num_workers))
        dm.setup("fit")
        return [row for batch in dm.train_dataloader() for row in batch.rows]

    assert order(7, 0) == order(7, 0) == order(7, 1)
    assert order(7, 0) != order(8, 0)
    assert pickle.loads(pickle.dumps(collate_pairs)) is collate_pairs


def test_datamodule_reports_the_first_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [*ROWS[:3], {"prompt": "p", "rejected": "r"}, {"prompt": "q"}])
    with pytest.raises(DataError, match=r"x.jsonl: row 4: missing field 'chosen'"):
        PreferenceDataModule(source=DataSource(path=str(path))).setup("fit")


def test_datamodule_truncates_and_counts(tmp_path):
    rows = [{"prompt": "word " * 50, "chosen": "yes " * 50, "rejected": "no"}] * 3
    dm = PreferenceDataModule(source=DataSource(path=str(write_jsonl(tmp_path / "x.jsonl", rows)), val_fraction=0.0),
                              read=ReadOptions(max_length=40, max_prompt_length=20))
    dm.setup("fit")
    assert dm.stats["truncated"] == 3 and all(p.longest <= 40 for p in dm.train_pairs)


def test_val_path_and_max_pairs(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    val = tmp_path / "val.json"
    val.write_text(json.dumps(ROWS[:6]))
    dm = PreferenceDataModule(source=DataSource(path=str(train), val_path=str(val)), read=ReadOptions(max_pairs=4),
                              loader=LoaderOptions(eval_batch_size=5))
    dm.setup("fit")
    assert [p.row for p in dm.train_pairs] == [1, 2, 3, 4] and len(dm.val_pairs) == 4
    assert [len(b) for b in dm.val_dataloader()] == [4]


def test_hf_dataset_folder(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS[:6]), folder / "train.parquet")
    dm = PreferenceDataModule(source=DataSource(dataset=str(folder), val_fraction=0.0))
    dm.setup("fit")
    assert [p.row for p in dm.train_pairs] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ConfigError, match="either data.source.path or data.source.dataset"):
        PreferenceDataModule(source=DataSource(path="x.jsonl", dataset=str(folder)))


def test_default_source_is_the_bundled_file(tmp_path, monkeypatch):
    assert bundled_dataset() == Path(inspo.__file__).parent / "assets" / "prefs.jsonl"
    monkeypatch.setattr(datamodule_module, "bundled_dataset",
                        lambda name: write_jsonl(tmp_path / f"{name}.jsonl", ROWS[:4]))
    dm = PreferenceDataModule(source=DataSource(val_fraction=0.0))
    dm.setup("fit")
    assert dm.stats["kept"] == 4


@pytest.mark.parametrize("name", ["prefs", "verifiable"])
def test_bundled_file_loads(name):
    dm = PreferenceDataModule(source=DataSource(path=None if name == "prefs" else f"bundled:{name}", val_fraction=0.0))
    dm.setup("fit")
    rows = (Path(inspo.__file__).parent / "assets" / BUNDLED_DATA[name]).read_text().splitlines()
    assert dm.stats["kept"] == len(rows) == len(dm.train_pairs)


def test_unknown_bundled_dataset_is_named():
    with pytest.raises(ConfigError, match="unknown bundled dataset 'bundled:nope'.*bundled:verifiable"):
        PreferenceDataModule(source=DataSource(path="bundled:nope", val_fraction=0.0)).setup("fit")


def test_order_seed_changes_the_training_order_but_not_the_split(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{**ROWS[i % len(ROWS)], "prompt": f"p{i}"} for i in range(40)])
    orders, splits = [], []
    for order_seed in (None, 42, 7):
        dm = PreferenceDataModule(source=DataSource(path=str(path), val_fraction=0.25, seed=42),
                                  loader=LoaderOptions(order_seed=order_seed, bucket_batches=1, batch_size=4))
        dm.setup("fit")
        splits.append(sorted(p.row for p in dm.val_pairs))
        orders.append([row for batch in dm.train_dataloader() for row in batch.rows])
    assert splits[0] == splits[1] == splits[2]
    assert orders[0] == orders[1] != orders[2]
    assert sorted(orders[0]) == sorted(orders[2])

"""Tokenisation faults that silently corrupt the loss: a missing pad token, EOS masked because pad == eos, two BOS.

Covered elsewhere, not repeated here (``tests/test_data.py``): EOS in the response ids with pad == eos
(``test_chat_template_response_carries_the_end_of_turn_token``, ``test_plain_text_response_ends_with_eos...``),
exactly one BOS for a template and a tokenizer that both add one (``test_exactly_one_bos``), and prompt ids that
stay a prefix across a boundary that would merge (``test_prompt_and_response_are_tokenised_separately...``).
This file follows those ids through the layouts into the label positions, and through the datamodule.
"""

from __future__ import annotations

import copy
import json

import pytest

from inspo.conditioning import REFERENCE_SEQUENCES, make_conditioning
from inspo.data.datamodule import PreferenceDataModule
from inspo.data.formats import PreferenceRecord
from inspo.data.options import DataSource, ReadOptions
from inspo.data.tokenize import tokenize_record
from inspo.layout import make_layout
from inspo.models import load_tokenizer


def record(prompt: str = "Name a colour.", chosen: str = "Blue.", rejected: str = "Seven.") -> PreferenceRecord:
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected, source="mem", row=1)


def targets_by_slot(tokenizer, pairs, conditioning: str, layout: str, sequences=None) -> dict[tuple[int, str], list]:
    """The label ids the layout reads for every (pair, target), in order."""
    cond = make_conditioning(conditioning, tokenizer)
    sequences = sequences or cond.policy_sequences
    rows = make_layout(layout).build([cond.segments(p.prompt, p.chosen, p.rejected) for p in pairs], sequences,
                                     tokenizer.pad_token_id)
    out = {}
    for slot in range(rows.num_slots):
        pair, name = divmod(slot, len(rows.names))
        out[pair, rows.names[name]] = rows.labels[rows.slot == slot].tolist()
    return out


@pytest.mark.parametrize("layout", ["separate", "packed"])
@pytest.mark.parametrize("conditioning", ["inspo", "standard"])
@pytest.mark.parametrize("chat_template", [True, False])
def test_eos_is_a_target_when_pad_equals_eos(tokenizer, layout, conditioning, chat_template):
    """pad == eos (SmolLM2): every response's EOS / end-of-turn token is a label, in every sequence that scores it.

    Under InSPO the EOS of the alternative sits *between* the two responses (``[x, y_l, y_w]``); the authors'
    code masked it there because it derived the mask from ``ids != pad``. Pairs of different lengths make the
    separate layout pad its rows with that same id; padding must add no label.
    """
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    pairs = [tokenize_record(record(), tokenizer, chat_template),
             tokenize_record(record("Hi", "Hello, how can I help you today?", "Go."), tokenizer, chat_template)]
    for pair in pairs:
        assert eos in pair.chosen and eos in pair.rejected
    got = targets_by_slot(tokenizer, pairs, conditioning, layout)
    for (index, name), labels in got.items():  # exactly the response: its EOS included, no pad added
        response = pairs[index].chosen if name.startswith("chosen") else pairs[index].rejected
        assert labels == response, (index, name)
    reference = targets_by_slot(tokenizer, pairs, conditioning, layout, REFERENCE_SEQUENCES)
    assert [reference[i, "chosen"].count(eos) for i in range(2)] == [1, 1]


def test_tokenizer_without_pad_token_gets_eos_and_labels_do_not_change(tokenizer, tmp_path):
    """A tokenizer saved without a pad token loads with pad = eos; the labels are identical to before."""
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    no_pad.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token_id == loaded.eos_token_id is not None
    pairs = [tokenize_record(record(), loaded, True), tokenize_record(record("Hi", "Yo.", "No!"), loaded, True)]
    for layout in ("separate", "packed"):
        with_eos_pad = targets_by_slot(loaded, pairs, "inspo", layout)
        other_pad = copy.deepcopy(loaded)
        other_pad.pad_token = "<|endoftext|>"  # id 0: a pad that is not the eos
        assert other_pad.pad_token_id != loaded.pad_token_id
        assert targets_by_slot(other_pad, pairs, "inspo", layout) == with_eos_pad


def test_one_bos_survives_left_truncation_in_the_datamodule(tokenizer, tmp_path):
    """A tokenizer that adds a BOS and a template that renders one: after left truncation the prompt still
    starts with exactly one BOS, for string and for conversational prompts."""
    tok = copy.deepcopy(tokenizer)
    tok.bos_token = "<|endoftext|>"
    tok.add_bos_token = True
    tok.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    tok.save_pretrained(tmp_path / "tok")
    bos = tok.bos_token_id
    long_prompt = "Tell me everything about " + "the history of colour " * 30
    rows = [{"prompt": long_prompt, "chosen": "Blue is a colour.", "rejected": "No."},
            {"prompt": [{"role": "system", "content": long_prompt}, {"role": "user", "content": "Go on."}],
             "chosen": "Red.", "rejected": "Green?"},
            {"prompt": "Short?", "chosen": "Yes.", "rejected": "No."}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dm = PreferenceDataModule(tokenizer=str(tmp_path / "tok"), source=DataSource(path=str(path), val_fraction=0.0),
                              read=ReadOptions(max_length=48, max_prompt_length=24))
    dm.setup("fit")
    assert dm.stats["truncated"] == 2
    for pair in dm.train_pairs:
        assert pair.prompt[0] == bos and pair.prompt.count(bos) == 1, pair.row
        assert bos not in pair.chosen and bos not in pair.rejected
        assert pair.longest <= 48
        assert tok.decode(pair.prompt).endswith("<|im_start|>assistant\n")  # cut from the left

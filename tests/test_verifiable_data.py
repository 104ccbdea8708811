"""The shipped verifiable benchmark (inspo/assets/verifiable): rewards recompute, splits are disjoint, data loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import inspo
from inspo.data.datamodule import PreferenceDataModule
from inspo.data.options import DataSource, ReadOptions
from inspo.eval.constraints import RUNAWAY_PENALTY, Constraint, satisfied
from inspo.eval.evaluate import heldout_prompts_file, read_prompts
from inspo.eval.prompts import make_prompts

FOLDER = Path(inspo.__file__).parent / "assets" / "verifiable"
MIN_GAP = 0.2
"""The --min-gap the shipped pairs were selected with (scripts/make_verifiable_prefs.py)."""


@pytest.fixture(scope="module")
def train_rows() -> list[dict]:
    return [json.loads(line) for line in (FOLDER / "train.jsonl").read_text().splitlines()]


def _possible_rewards(response: str, constraints: list[Constraint]) -> set[float]:
    fraction = sum(satisfied(response, constraints)) / len(constraints)
    return {round(fraction, 6), round(max(0.0, fraction - RUNAWAY_PENALTY), 6)}  # ended / ran into the cap


def test_sizes(train_rows: list[dict]) -> None:
    assert len(train_rows) >= 1000
    assert len(read_prompts(heldout_prompts_file())) >= 200


def test_stored_rewards_recompute_and_gap(train_rows: list[dict]) -> None:
    for row in train_rows:
        constraints = [Constraint.from_dict(c) for c in row["constraints"]]
        assert round(row["chosen_reward"], 6) in _possible_rewards(row["chosen"], constraints), row["id"]
        assert round(row["rejected_reward"], 6) in _possible_rewards(row["rejected"], constraints), row["id"]
        assert row["chosen_reward"] - row["rejected_reward"] >= MIN_GAP - 1e-9
        assert row["chosen"].strip() != row["rejected"].strip()


def test_train_and_heldout_are_disjoint(train_rows: list[dict]) -> None:
    heldout = [json.loads(line) for line in heldout_prompts_file().read_text().splitlines()]
    assert not {r["prompt"] for r in train_rows} & {r["prompt"] for r in heldout}
    assert not {r["topic"] for r in train_rows} & {r["topic"] for r in heldout}
    combos = {tuple(sorted(json.dumps(c, sort_keys=True) for c in r["constraints"])) for r in heldout}
    assert not combos & {tuple(sorted(json.dumps(c, sort_keys=True) for c in r["constraints"])) for r in train_rows}


def test_shipped_prompts_are_the_seeded_ones(train_rows: list[dict]) -> None:
    heldout = make_prompts(len(read_prompts(heldout_prompts_file())), "heldout", seed=0)
    assert [p.text for p in heldout] == [r["prompt"] for r in read_prompts(heldout_prompts_file())]
    train = {p.id: p.text for p in make_prompts(int(train_rows[-1]["id"].split("-")[1]) + 1, "train", seed=0,
                                                exclude=heldout)}
    assert all(train[row["id"]] == row["prompt"] for row in train_rows)


def test_datamodule_reads_the_rows_despite_extra_fields() -> None:
    data = PreferenceDataModule(source=DataSource(path=str(FOLDER / "train.jsonl"), val_fraction=0.1),
                                read=ReadOptions(max_length=384, max_prompt_length=192))
    data.setup("fit")
    assert data.stats["invalid"] == 0
    assert data.stats["train"] + data.stats["val"] == data.stats["rows_read"]

"""Tests of inspo.data.options: the three data option groups, their checks, and how the CLI and checkpoints see them."""

from __future__ import annotations

import dataclasses
import inspect
import io

import pytest
import torch

from inspo.cli import InspoCLI
from inspo.data.datamodule import PreferenceDataModule
from inspo.data.options import DataSource, LoaderOptions, ReadOptions
from inspo.errors import ConfigError
from inspo.models import BUNDLED_SMOLLM2
from inspo.module import PreferenceModule
from tests.helpers import TINY_YAML

CHECKS = [
    (DataSource, {"path": "a.jsonl", "dataset": "b"}, "give either data.source.path or data.source.dataset, not both"),
    (DataSource, {"val_fraction": 1.0}, "data.source.val_fraction must be in [0, 1), got 1.0"),
    (DataSource, {"val_fraction": -0.1}, "data.source.val_fraction must be in [0, 1), got -0.1"),
    (ReadOptions, {"max_prompt_length": 0}, "data.read.max_prompt_length must be at least 1, got 0"),
    (ReadOptions, {"max_length": 10, "max_prompt_length": 9},
     ("data.read.max_prompt_length (9) must be at most data.read.max_length - 2 (8): each response needs at least "
      "one token")),
    (ReadOptions, {"max_pairs": 0}, "data.read.max_pairs must be at least 1, got 0"),
    (ReadOptions, {"min_valid_fraction": 1.5}, "data.read.min_valid_fraction must be in [0, 1], got 1.5"),
    (ReadOptions, {"on_invalid": "drop"}, "data.read.on_invalid: invalid value 'drop'; choose one of: error, skip"),
    (ReadOptions, {"duplicates": "merge"}, "data.read.duplicates: invalid value 'merge'; choose one of: keep, drop"),
    (LoaderOptions, {"batch_size": 0}, "data.loader.batch_size must be at least 1, got 0"),
    (LoaderOptions, {"eval_batch_size": 0}, "data.loader.eval_batch_size must be at least 1, got 0"),
    (LoaderOptions, {"num_workers": -1}, "data.loader.num_workers must be >= 0, got -1"),
    (LoaderOptions, {"bucket_batches": 0}, "data.loader.bucket_batches must be at least 1, got 0"),
]


@pytest.mark.parametrize(("group", "kwargs", "message"), CHECKS, ids=[f"{g.__name__}-{k}" for g, k, _ in CHECKS])
def test_each_group_checks_itself_in_one_line_naming_the_option(group, kwargs, message):
    with pytest.raises(ConfigError) as info:
        group(**kwargs)
    assert str(info.value) == message


def test_defaults_are_stated_once_and_valid():
    """The datamodule's only defaults are the groups themselves: no option is repeated in its signature."""
    defaults = {name: p.default for name, p in inspect.signature(PreferenceDataModule).parameters.items()}
    assert defaults == {"tokenizer": BUNDLED_SMOLLM2, "source": DataSource(), "read": ReadOptions(),
                        "loader": LoaderOptions()}


def test_cli_builds_the_groups_and_checkpoints_hold_plain_data(tmp_path):
    """tiny.yaml's ``data.read`` / ``data.loader`` sections and command-line paths reach the groups; the saved
    hyperparameters are the config's shape in plain dicts (a checkpoint loads with ``weights_only=True``), and the
    reference cache's key settings are the four values they always were."""
    cli = InspoCLI(PreferenceModule, PreferenceDataModule, run=False, args=[
        "--config", str(TINY_YAML), "--trainer.default_root_dir", str(tmp_path), "--data.read.max_length", "200",
        "--data.loader.batch_size", "3", "--data.source.seed", "7"])
    data = cli.datamodule
    # tiny.yaml: max_prompt_length 128, max_pairs 64, batch_size 4 (overridden to 3 on the command line)
    assert data.read == ReadOptions(max_length=200, max_prompt_length=128, max_pairs=64)
    assert data.loader == LoaderOptions(batch_size=3) and data.source == DataSource(seed=7)
    saved = io.BytesIO()
    torch.save(dict(data.hparams), saved)
    loaded = torch.load(io.BytesIO(saved.getvalue()), weights_only=True)
    assert loaded == {"tokenizer": data.hparams.tokenizer, "source": dataclasses.asdict(DataSource(seed=7)),
                      "read": dataclasses.asdict(data.read), "loader": dataclasses.asdict(LoaderOptions(batch_size=3))}
    assert data.token_settings() == {"tokenizer": data.hparams.tokenizer, "chat_template": True, "max_length": 200,
                                     "max_prompt_length": 128}

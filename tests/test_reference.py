"""Reference modes (auto, short names, class paths, the old spelling, resume, samples) and the reference cache:
values equal the live reference; hit, miss, invalidation of every key part, corruption."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from inspo.data.datamodule import PairBatch
from inspo.errors import ConfigError, InspoError
from inspo.module import PreferenceModule
from inspo.reference import (
    AdapterReference,
    CachedReference,
    CopyReference,
    NoReference,
    PathReference,
    load_cache,
    load_or_build,
    resolve_reference,
)
from inspo.reference import cache as reference
from tests.helpers import TINY_CONFIG, random_pairs, tiny_model

SETTINGS = {"tokenizer": "bundled", "chat_template": True, "max_length": 512, "max_prompt_length": 256}


def records(seed: int = 0) -> list[SimpleNamespace]:
    return [SimpleNamespace(prompt=p, chosen=c, rejected=r) for p, c, r in random_pairs(5, seed=seed)]


def batch_of(pairs: list[SimpleNamespace]) -> PairBatch:
    return PairBatch([p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs],
                     rows=list(range(1, len(pairs) + 1)))


@pytest.fixture
def builds(monkeypatch):
    """Counts how often the reference is actually run."""
    calls = []
    compute = reference.compute_reference_logps

    def counting(*args, **kwargs):
        calls.append(1)
        return compute(*args, **kwargs)

    monkeypatch.setattr(reference, "compute_reference_logps", counting)
    return calls


def build(tmp_path, pairs=None, model=None, settings=SETTINGS):
    return load_or_build(pairs or records(), model or tiny_model(), settings, pad_id=0, folder=tmp_path)


def test_cached_logps_equal_the_live_reference(tmp_path):
    """The live reference (copy mode) and the cache agree to 1e-5 (+1e-6 relative: sums near 60 nats), token counts
    included."""
    module = PreferenceModule(random_init=TINY_CONFIG, reference="copy")
    module.configure_model()
    pairs = records()
    cache = load_or_build(pairs, module.reference, SETTINGS, pad_id=0, folder=tmp_path)
    live, cached = module.reference_logps(batch_of(pairs)), cache.lookup(batch_of(pairs[::-1]))
    torch.testing.assert_close(cached.chosen, live.chosen.flip(0), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(cached.rejected, live.rejected.flip(0), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(cached.chosen_tokens, live.chosen_tokens.flip(0))


def test_hit_miss_and_invalidation_of_every_key_part(tmp_path, builds):
    build(tmp_path)
    assert len(builds) == 1 and len(list(tmp_path.glob("*.refcache"))) == 1
    build(tmp_path)  # hit: same data, weights and settings
    build(tmp_path, pairs=records()[::-1])  # hit: the same pairs in another order
    assert len(builds) == 1
    changed = records()
    changed[2].chosen = changed[2].chosen[:-1] + [changed[2].chosen[-1] + 1]  # one token of one pair
    other_weights = tiny_model()
    with torch.no_grad():
        other_weights.lm_head.weight[0, 0] += 1e-3
    misses = [
        {"pairs": changed},  # dataset content
        {"model": other_weights},  # reference weights
        {"model": tiny_model(dtype="bf16")},  # dtype
        {"model": tiny_model("eager")},  # attention implementation
        {"settings": {**SETTINGS, "max_length": 256}},  # truncation
        {"settings": {**SETTINGS, "chat_template": False}},  # template
        {"settings": {**SETTINGS, "tokenizer": "other"}},  # tokenizer
    ]
    for n, kwargs in enumerate(misses, start=2):
        build(tmp_path, **kwargs)
        assert len(builds) == n, kwargs
    assert len(list(tmp_path.glob("*.refcache"))) == len(misses) + 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "header", "empty"])
def test_corrupt_or_partial_cache_is_rebuilt(tmp_path, builds, caplog, damage):
    good = build(tmp_path)
    (path,) = tmp_path.glob("*.refcache")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) - 50])
    elif damage == "flip":
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "header":
        path.write_bytes(b"not json\n" + data.split(b"\n", 1)[1])
    else:
        path.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="inspo"):
        rebuilt = build(tmp_path)
    assert len(builds) == 2
    assert any("corrupt or partial" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(rebuilt.logps, good.logps)
    key = path.stem
    assert load_cache(path, key) is not None  # the rebuilt file is whole again
    assert not list(tmp_path.glob("*.tmp*"))  # the temporary file was renamed into place


def test_unknown_pair_is_an_error(tmp_path):
    cache = build(tmp_path)
    with pytest.raises(InspoError, match="data row 1 is not in the reference cache"):
        cache.lookup(batch_of(records(seed=1)[:1]))


def test_module_cached_mode_runs_without_a_reference_model(tmp_path, monkeypatch):
    """``reference: cached`` through a Trainer: the pairs come from the datamodule, no reference model is held, the
    cache file exists, and its values are the initial policy's (copy semantics) for every train and val pair."""
    from lightning.pytorch import Trainer

    from inspo.data.datamodule import PreferenceDataModule, collate_pairs
    from inspo.data.options import LoaderOptions, ReadOptions

    monkeypatch.setattr(reference, "cache_dir", lambda: tmp_path)
    module = PreferenceModule(random_init=TINY_CONFIG, reference="cached", export_dir=None)
    data = PreferenceDataModule(read=ReadOptions(max_pairs=8, max_length=96, max_prompt_length=48),
                                loader=LoaderOptions(batch_size=4))
    trainer = Trainer(accelerator="cpu", limit_val_batches=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, data, verbose=False)
    assert module.reference is None and len(module.reference_mode.cache) == 8
    assert len(list((tmp_path / "reference").glob("*.refcache"))) == 1
    batch = collate_pairs(data.train_pairs + data.val_pairs)
    with torch.no_grad():
        live = module.score(module.policy.eval(), batch, reference.REFERENCE_SEQUENCES)
    cached = module.reference_logps(batch)
    torch.testing.assert_close(cached.chosen, live.chosen, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(cached.rejected, live.rejected, atol=1e-5, rtol=1e-6)


# ---------------------------------------------------------------- reference modes (inspo.reference.base / modes)
@pytest.mark.parametrize(("spec", "requires", "lora", "expected"), [
    ("auto", True, False, CopyReference), ("auto", True, True, AdapterReference), ("auto", False, False, NoReference),
    ("auto", False, True, NoReference), ("copy", False, False, CopyReference), ("cached", True, False, CachedReference),
])
def test_auto_follows_the_loss_and_lora(spec, requires, lora, expected):
    assert type(resolve_reference(spec, requires, lora)) is expected


def test_mode_from_class_path_and_unknown_name():
    mode = resolve_reference({"class_path": "inspo.reference.PathReference", "init_args": {"model": "X"}}, True, False)
    assert isinstance(mode, PathReference) and mode.model == "X"
    with pytest.raises(ConfigError, match="unknown reference mode 'copyy'; choose one of: auto, adapter, cached, "
                                          "copy, none, path$"):
        resolve_reference("copyy", True, False)


def test_saved_hparams_rebuild_the_same_mode():
    """The module saves the resolved mode as {class_path, init_args}; building a module from it gives that mode."""
    module = PreferenceModule(random_init=TINY_CONFIG, reference=PathReference(model="some/model"))
    saved = module.hparams["reference"]
    assert saved == {"class_path": "inspo.reference.modes.PathReference", "init_args": {"model": "some/model"}}
    again = PreferenceModule(random_init=TINY_CONFIG, reference=saved)
    assert isinstance(again.reference_mode, PathReference) and again.reference_mode.model == "some/model"
    assert PreferenceModule(random_init=TINY_CONFIG).hparams["reference"]["class_path"].endswith(".CopyReference")


def test_reference_model_is_a_deprecated_alias(caplog):
    """The old spelling ``reference: path`` + ``reference_model: X`` still works, with one warning; on a mode that
    has no model it is one clear error naming the new spelling."""
    with caplog.at_level(logging.WARNING, logger="inspo"):
        module = PreferenceModule(random_init=TINY_CONFIG, reference="path", reference_model="X")
    assert isinstance(module.reference_mode, PathReference) and module.reference_mode.model == "X"
    assert any("--model.reference path --model.reference.model X" in r.getMessage() for r in caplog.records)
    assert module.hparams["reference"]["init_args"] == {"model": "X"} and "reference_model" not in module.hparams
    with pytest.raises(ConfigError, match="only read by model.reference path or cached.*--model.reference.model X"):
        PreferenceModule(random_init=TINY_CONFIG, reference="copy", reference_model="X")


@pytest.mark.parametrize("args", [["--model.reference", "path", "--model.reference.model", "some/model"],
                                  ["--model.reference", "path", "--model.reference_model", "some/model"]])
def test_cli_spellings_of_a_path_reference(args, tmp_path):
    from inspo.cli import InspoCLI
    from inspo.data.datamodule import PreferenceDataModule
    from tests.helpers import CONFIGS

    cli = InspoCLI(PreferenceModule, PreferenceDataModule, run=False,
                   args=["--config", str(CONFIGS / "tiny.yaml"), "--trainer.default_root_dir", str(tmp_path), *args])
    assert isinstance(cli.model.reference_mode, PathReference) and cli.model.reference_mode.model == "some/model"


@pytest.mark.parametrize(("saved", "current", "refused"), [
    ({"reference": "path", "reference_model": "X"}, PathReference("X"), None),  # a checkpoint of the old shape
    ({"reference": "path", "reference_model": "X"}, PathReference("Y"), ("X", "Y")),
    ({"reference": "copy", "reference_model": None}, CachedReference(), None),  # same reference, other mode
    ({"reference": "copy", "reference_model": None}, PathReference("Y"), (None, "Y")),
    ({"reference": {"class_path": "inspo.reference.modes.CachedReference", "init_args": {"model": "X"}}},
     CopyReference(), ("X", None)),
])
def test_resume_is_refused_for_another_reference_model(saved, current, refused):
    """The reference's model (None: the initial policy) must match on resume, in either saved shape; the mode alone
    (copy, cached, auto) does not change what is trained."""
    module = PreferenceModule(random_init=TINY_CONFIG, reference=current)
    checkpoint = {"hyper_parameters": {**dict(module.hparams), **saved}}
    if refused is None:
        module.check_resumable(checkpoint, "ckpt")
        return
    before, now = refused
    with pytest.raises(ConfigError, match=f"model.reference.model={before!r}, this run has "
                                          f"model.reference.model={now!r}"):
        module.check_resumable(checkpoint, "ckpt")


def test_generation_model_of_each_mode():
    """What the samples callback shows as the reference: the held copy, else the policy as training starts."""
    policy = torch.nn.Linear(2, 2)
    copy_mode = CopyReference()
    held = copy_mode.build(policy, load=lambda name: None)
    with copy_mode.generation_model(policy) as (model, label):
        assert model is held and model is not policy and label == "reference"
    for mode in (CachedReference(), NoReference()):
        with mode.generation_model(policy) as (model, label):
            assert model is policy and label == "initial policy"

"""TR-DPO (``inspo.reference.sync``): the reference after k soft updates equals their closed form, with a copied
reference, a LoRA reference adapter and a copy following a LoRA policy's merged weights; only real optimizer steps
count; the update is TRL 1.16's bit for bit; ``cached`` / ``none`` and meaningless settings are one line; a run
resumed half-way gives the uninterrupted run's losses and reference exactly.

Closed form (derived in ``inspo/reference/sync.py``): with updates after steps tau, 2 tau, ..., k tau and p_j the
policy after step j tau, ``ref(k) = (1 - a)^k ref(0) + sum_j a (1 - a)^(k - j) p_j``. For a = 0.6 and k = 3 the
weights of ref(0), p_1, p_2, p_3 are 0.4^3 = 0.064, 0.6 * 0.4^2 = 0.096, 0.6 * 0.4 = 0.24 and 0.6 (sum 1).
"""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from inspo.conditioning import REFERENCE_SEQUENCES
from inspo.data.datamodule import collate_pairs
from inspo.data.tokenize import TokenizedPair
from inspo.errors import ConfigError
from inspo.lora import REFERENCE_ADAPTER, TRAINED_ADAPTER, LoraSettings
from inspo.module import PreferenceModule
from inspo.optim import OptimConfig
from inspo.reference import AdapterReference, CopyReference, PathReference
from inspo.reference.sync import adapter_pairs, paired, soft_update
from tests.helpers import TINY_CONFIG, batch, perturb_adapters, random_pairs, run_main, tiny_model

LORA = LoraSettings(rank=4, alpha=8)


def weights(alpha: float, k: int) -> list[float]:
    """Closed-form weights of ref(0), p_1, ..., p_k after k updates (module docstring)."""
    return [(1 - alpha) ** k] + [alpha * (1 - alpha) ** (k - j) for j in range(1, k + 1)]


def test_closed_form_weights_by_hand():
    assert weights(0.6, 3) == pytest.approx([0.064, 0.096, 0.24, 0.6])
    assert weights(1.0, 2) == [0.0, 0.0, 1.0]  # hard update: the latest policy


class Snapshots(Callback):
    """After every optimizer step: copies of the policy's (``policy``) and the reference's (``reference``)
    parameters by name, and every micro-batch loss (``losses``)."""

    def __init__(self, policy, reference) -> None:
        self.get_policy, self.get_reference = policy, reference
        self.policy: dict[int, dict[str, torch.Tensor]] = {}
        self.reference: dict[int, dict[str, torch.Tensor]] = {}
        self.losses: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        step = trainer.global_step
        self.policy[step], self.reference[step] = self.get_policy(pl_module), self.get_reference(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        step = trainer.global_step
        if step not in self.policy:
            self.policy[step], self.reference[step] = self.get_policy(pl_module), self.get_reference(pl_module)


def held(module: PreferenceModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.reference.named_parameters()}


def plain_policy(module: PreferenceModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.policy.named_parameters()}


def merged_policy(module: PreferenceModule) -> dict[str, torch.Tensor]:
    """The LoRA policy merged by peft itself (an independent path from inspo.reference.sync.merged_parameters)."""
    merged = copy.deepcopy(module.policy).merge_and_unload(adapter_names=[TRAINED_ADAPTER])
    return {n: p.detach().clone() for n, p in merged.named_parameters()}


def adapter(name: str):
    def get(module: PreferenceModule) -> dict[str, torch.Tensor]:
        pairs = adapter_pairs(module.policy, TRAINED_ADAPTER, REFERENCE_ADAPTER)
        return {n: (trained if name == TRAINED_ADAPTER else ref).detach().clone() for n, ref, trained in pairs}
    return get


def loader(n: int = 4, batch_size: int = 1) -> DataLoader:
    pairs = [TokenizedPair(*p, row=i + 1) for i, p in enumerate(random_pairs(n, seed=3))]
    return DataLoader(pairs, batch_size=batch_size, collate_fn=collate_pairs, shuffle=False)


class StopAt(Callback):
    """Stops the run after optimizer step ``step`` (the run's length, hence its LR schedule, stays the same)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def fit(module: PreferenceModule, record: Snapshots, root, accumulate: int = 1, epochs: int = 1,
        ckpt_path: str | None = None, stop: int | None = None, save: str | None = None) -> None:
    callbacks = [record] + ([StopAt(stop)] if stop is not None else [])
    trainer = Trainer(accelerator="cpu", max_epochs=epochs, accumulate_grad_batches=accumulate, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, default_root_dir=root, callbacks=callbacks)
    trainer.fit(module, train_dataloaders=loader(), ckpt_path=ckpt_path, weights_only=False)  # hparams hold classes
    if save is not None:
        trainer.save_checkpoint(save)


def module_of(reference, lora: LoraSettings | None = None) -> PreferenceModule:
    return PreferenceModule(random_init=TINY_CONFIG, reference=reference, lora=lora, export_dir=None,
                            optim=OptimConfig(lr=1e-2, warmup_ratio=0.0))


def assert_closed_form(record: Snapshots, every: int, alpha: float, atol: float = 1e-6) -> None:
    """The reference after every optimizer step s equals the closed form over the syncs at tau, 2 tau, <= s."""
    steps = sorted(record.reference)
    assert steps[-1] >= 2 * every  # at least two updates
    for s in steps:
        k = s // every
        w = weights(alpha, k)
        for name, ref in record.reference[s].items():
            want = w[0] * record.reference[0][name]
            for j in range(1, k + 1):
                want = want + w[j] * record.policy[j * every][name]
            torch.testing.assert_close(ref, want, atol=atol, rtol=0, msg=f"step {s} {name}")
    last = steps[-1]
    moved = [n for n in record.reference[0] if not torch.equal(record.reference[last][n], record.reference[0][n])]
    assert moved  # the reference followed the policy ...
    assert any(not torch.equal(record.reference[last][n], record.policy[last][n]) for n in moved)  # ... not a copy


@pytest.mark.parametrize(("every", "alpha", "accumulate"), [(2, 0.6, 1), (1, 0.3, 2)])
def test_copied_reference_after_k_steps_is_the_closed_form(tmp_path, every, alpha, accumulate):
    """tau=2: updates after steps 2 and 4 of 4 (none after 1 and 3: the reference stays put there). tau=1 with
    2 micro-batches per step: 4 batches are 2 optimizer steps, so 2 updates, not 4."""
    module = module_of(CopyReference(sync_every=every, sync_alpha=alpha))
    record = Snapshots(plain_policy, held)
    fit(module, record, tmp_path, accumulate=accumulate)
    assert sorted(record.reference) == list(range(4 // accumulate + 1)) and len(record.losses) == 4
    assert_closed_form(record, every, alpha)
    if every == 2:
        for s in (1, 3):
            assert all(torch.equal(record.reference[s][n], record.reference[s - 1][n]) for n in record.reference[s])


def test_lora_reference_adapter_soft_updates_a_and_b(tmp_path):
    """``reference: adapter`` with sync: a second adapter ``reference`` starts as the trained one (B = 0: the base
    model exactly), is frozen, and A and B each follow the closed form; it is what the reference scores."""
    module = module_of(AdapterReference(sync_every=1, sync_alpha=0.5), LORA)
    module.configure_model()
    assert REFERENCE_ADAPTER in module.policy.peft_config
    frozen = [n for n, p in module.policy.named_parameters() if f".{REFERENCE_ADAPTER}." in n]
    assert frozen and not any(p.requires_grad for n, p in module.policy.named_parameters() if n in frozen)
    b = batch()
    _, reference = module.pair_logps(b)
    with torch.no_grad():
        base = module.score(tiny_model(), b, REFERENCE_SEQUENCES)
    assert torch.equal(reference.chosen, base.chosen)  # the copied fresh adapter adds exactly 0
    record = Snapshots(adapter(TRAINED_ADAPTER), adapter(REFERENCE_ADAPTER))
    fit(module, record, tmp_path)
    assert_closed_form(record, 1, 0.5)
    assert not any(p.requires_grad for n, p in module.policy.named_parameters() if n in frozen)
    # hard update (alpha = 1): the reference adapter is the trained one, so the reference scores as the policy
    module.reference_mode.sync(module.policy, 1.0)
    _, reference = module.pair_logps(b)
    with torch.no_grad():
        policy = module.score(module.policy, b, REFERENCE_SEQUENCES)
    assert torch.equal(reference.chosen, policy.chosen) and not torch.equal(reference.chosen, base.chosen)


def test_copy_follows_the_merged_weights_of_a_lora_policy(tmp_path):
    """``reference: copy`` with a LoRA policy: the full copy follows W0 + (lora_alpha / r) BA exactly (the rule on
    merged weights, which a rank-r adapter cannot hold)."""
    module = module_of(CopyReference(sync_every=1, sync_alpha=0.5), LORA)
    record = Snapshots(merged_policy, held)
    fit(module, record, tmp_path)
    assert_closed_form(record, 1, 0.5, atol=1e-5)


def test_update_is_trls_bit_for_bit():
    """TRL 1.16's ``SyncRefModelCallback._sync_target_model`` (on every parameter) and ours give equal tensors."""
    trl_callbacks = pytest.importorskip("trl.trainer.callbacks")
    torch.manual_seed(0)
    policy, reference = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    ours, theirs = copy.deepcopy(reference), copy.deepcopy(reference)
    soft_update(paired(ours, policy, "test"), 0.6)
    trl_callbacks.SyncRefModelCallback._sync_target_model(policy, theirs, 0.6)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
    assert not torch.equal(ours.weight, reference.weight)


@pytest.mark.parametrize(("args", "expected"), [
    (["--model.reference", "cached", "--model.reference.sync_every", "4"],
     ("model.reference.sync_every (TR-DPO) needs a live reference, and 'cached' stores log pi_ref of fixed weights: "
     "use model.reference copy, path or adapter")),
    (["--model.loss", "simpo", "--model.reference", "none", "--model.reference.sync_every", "4"],
     ("model.reference.sync_every (TR-DPO) moves a reference towards the policy and 'none' has no reference: use "
     "model.reference copy, path or adapter")),
    (["--model.reference", "copy", "--model.reference.sync_alpha", "0.5"],
     ("model.reference.sync_alpha=0.5 is only read with model.reference.sync_every (TR-DPO's tau): set both, or "
     "neither for a fixed reference")),
    (["--model.reference", "copy", "--model.reference.sync_every", "0"],
     "model.reference.sync_every must be an optimizer step count >= 1 (or null: a fixed reference), got 0"),
    (["--model.reference", "copy", "--model.reference.sync_every", "2", "--model.reference.sync_alpha", "0"],
     "model.reference.sync_alpha must be in (0, 1] (1: copy the policy), got 0.0"),
])
def test_refusals_are_one_line(capsys, tmp_path, args, expected):
    code, err = run_main(capsys, tmp_path, *args)
    assert code == 2 and err.strip().splitlines() == [f"inspo: error: {expected}"]


def test_merged_weights_of_a_4bit_base_are_refused_and_the_run_line_names_the_sync():
    from inspo.losses import LOSSES

    with pytest.raises(ConfigError, match="^model.reference.sync_every with model.reference copy follows the merged "
                                          "weights, which a 4-bit base cannot give: use model.reference adapter"):
        CopyReference(sync_every=2).check(LOSSES.resolve("dpo"), LoraSettings(load_in_4bit=True))
    AdapterReference(sync_every=2).check(LOSSES.resolve("dpo"), LoraSettings(load_in_4bit=True))  # its own adapter
    assert str(CopyReference(sync_every=4)) == "copy (TR-DPO: alpha 0.6 every 4 steps)"
    assert str(AdapterReference(sync_every=8, sync_alpha=1.0)) == "adapter (TR-DPO: alpha 1.0 every 8 steps)"
    assert str(CopyReference()) == "copy"


def test_path_reference_of_another_architecture_is_refused_before_training(tmp_path):
    smaller = tmp_path / "smaller"
    tiny_model().save_pretrained(smaller)  # the policy below is wider: same names, other shapes
    module = PreferenceModule(random_init={**TINY_CONFIG, "hidden_size": 128, "num_attention_heads": 8},
                              reference=PathReference(model=str(smaller), sync_every=2))
    with pytest.raises(ConfigError, match=r"^model.reference.sync_every: the reference cannot follow the policy: "
                                          r"its parameter 'model.embed_tokens.weight' of shape \(49152, 64\) is of "
                                          r"shape \(49152, 128\) in the policy"):
        module.configure_model()


def test_cli_spelling_and_saved_hparams(tmp_path):
    """``--model.reference copy --model.reference.sync_every N --model.reference.sync_alpha A``; the run's
    hyperparameters record them (a fixed reference records nothing new) and a resume with other values stops."""
    from inspo.cli import InspoCLI
    from inspo.data.datamodule import PreferenceDataModule
    from tests.helpers import TINY_YAML

    cli = InspoCLI(PreferenceModule, PreferenceDataModule, run=False,
                   args=["--config", str(TINY_YAML), "--trainer.default_root_dir", str(tmp_path), "--model.reference",
                         "copy", "--model.reference.sync_every", "3", "--model.reference.sync_alpha", "0.7"])
    mode = cli.model.reference_mode
    assert isinstance(mode, CopyReference) and (mode.sync_every, mode.sync_alpha) == (3, 0.7)
    assert cli.model.hparams["reference"]["init_args"] == {"sync_every": 3, "sync_alpha": 0.7}
    assert PreferenceModule(random_init=TINY_CONFIG).hparams["reference"]["init_args"] == {}
    checkpoint = {"hyper_parameters": dict(cli.model.hparams)}
    fixed = PreferenceModule(random_init=TINY_CONFIG, reference="copy")
    with pytest.raises(ConfigError, match="model.reference.sync_every=3, this run has model.reference.sync_every=None"):
        fixed.check_resumable(checkpoint, "ckpt")


@pytest.mark.parametrize("mode", ["copy", "adapter"])
def test_resume_half_way_is_exact(tmp_path, mode):
    """8 steps straight (2 epochs of 4 batches) vs 4 steps, a checkpoint, and 4 more from it: tau=3 puts updates
    after steps 3 and 6, so the checkpoint falls between them and must carry the reference of step 3. Losses of
    steps 5-8 and the final reference are bit-identical (it fails when checkpoints leave the reference out)."""
    lora = LORA if mode == "adapter" else None

    def make() -> PreferenceModule:
        torch.manual_seed(0)  # peft draws the fresh adapters' A from the global generator
        return module_of((CopyReference if lora is None else AdapterReference)(sync_every=3, sync_alpha=0.6), lora)

    get = held if lora is None else adapter(REFERENCE_ADAPTER)
    straight = Snapshots(plain_policy if lora is None else adapter(TRAINED_ADAPTER), get)
    fit(make(), straight, tmp_path / "a", epochs=2)
    first = Snapshots(plain_policy if lora is None else adapter(TRAINED_ADAPTER), get)
    ckpt = str(tmp_path / "half.ckpt")
    fit(make(), first, tmp_path / "b", epochs=2, stop=4, save=ckpt)
    second = Snapshots(plain_policy if lora is None else adapter(TRAINED_ADAPTER), get)
    fit(make(), second, tmp_path / "c", epochs=2, ckpt_path=ckpt)
    assert len(straight.losses) == 8 and first.losses == straight.losses[:4]
    assert second.losses == straight.losses[4:]
    assert sorted(second.reference) == [4, 5, 6, 7, 8]
    for step in (4, 8):
        assert all(torch.equal(second.reference[step][n], straight.reference[step][n]) for n in straight.reference[0])
    assert not all(torch.equal(straight.reference[4][n], straight.reference[0][n]) for n in straight.reference[0])


def test_export_of_a_checkpoint_leaves_the_reference_adapter_out():
    """``inspo export --ckpt`` rebuilds the policy from the checkpoint's adapters: the synced reference adapter is
    not the policy's (it was "unexpected keys ... lora_A.reference.weight", one error line, before)."""
    from inspo.export import rebuild_policy

    module = module_of(AdapterReference(sync_every=1), LORA)
    module.configure_model()
    perturb_adapters(module.policy)
    state = {k.removeprefix("policy."): v for k, v in module.state_dict().items()
             if k.startswith("policy.") and "lora_" in k}
    assert any(f".{REFERENCE_ADAPTER}." in k for k in state)
    policy, _ = rebuild_policy(dict(module.hparams), state)
    assert REFERENCE_ADAPTER not in policy.peft_config
    trained = dict(policy.named_parameters())
    assert all(torch.equal(trained[n], p) for n, p in module.policy.named_parameters() if f".{TRAINED_ADAPTER}." in n)
